/* main.c - the qvl command: dispatch to a tool subcommand or to a chat mode. */
#include <stdio.h>
#include <string.h>

#include "tools.h"

static void usage(FILE *f) {
    fprintf(f,
        "usage: qvl [options]                 chat with a Qwen3-VL model\n"
        "       qvl synth -c CONFIG.json --seed N -o DIR\n"
        "       qvl tokenize [-m DIR | --tokenizer FILE] [--decode]\n"
        "       qvl dump -m DIR -o OUT.safetensors < conversation.jsonl\n");
}

int main(int argc, char **argv) {
    if (argc >= 2) {
        if (!strcmp(argv[1], "synth")) return tool_synth_main(argc - 1, argv + 1);
        if (!strcmp(argv[1], "tokenize")) return tool_tokenize_main(argc - 1, argv + 1);
        if (!strcmp(argv[1], "dump")) return tool_dump_main(argc - 1, argv + 1);
        if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) { usage(stdout); return 0; }
        if (!strcmp(argv[1], "--version")) { printf("qvl %s\n", PACKAGE_VERSION); return 0; }
    }
    usage(stderr);
    return 2;
}
