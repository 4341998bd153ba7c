/* main.c - the qvl command: a tool subcommand, or one of the chat modes.
 *
 *   qvl synth|tokenize|dump ...   tools (tools.h)
 *   qvl [opts] -p TEXT            one-shot (batch.h)
 *   qvl [opts] --jsonl            JSONL batch (jsonl.h)
 *   qvl [opts] < script           plain batch, when stdin is not a terminal
 *   qvl [opts]                    the full-screen chat, or the line mode
 *
 * Exit status: 0 ok, 1 runtime error, 2 usage error; errors are one line
 * "qvl: ..." on stderr.  Cheap checks on the model directory and images run
 * before the model loads, so a typo fails at once and names the file. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"
#include "batch.h"
#include "demo.h"
#include "jsonl.h"
#include "lineui.h"
#include "ops.h"
#include "options.h"
#include "tools.h"
#include "tui.h"

/* The model directory exists and has a config.json. */
static int check_model_dir(const char *dir) {
    struct stat st;
    if (stat(dir, &st)) {
        fprintf(stderr, "qvl: model directory %s: %s\n", dir, strerror(errno));
        return -1;
    }
    if (!S_ISDIR(st.st_mode)) {
        fprintf(stderr, "qvl: model directory %s: not a directory\n", dir);
        return -1;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (access(path, R_OK)) {
        fprintf(stderr, "qvl: %s: %s (is %s a Qwen3-VL checkpoint directory?)\n",
                path, strerror(errno), dir);
        return -1;
    }
    return 0;
}

static int check_images(const qvl_options *o) {
    for (int i = 0; i < o->nimages; i++) {
        struct stat st;
        const char *p = o->images[i];
        if (access(p, R_OK) || stat(p, &st)) {
            fprintf(stderr, "qvl: cannot read image %s: %s\n", p, strerror(errno));
            return -1;
        }
        if (S_ISDIR(st.st_mode)) {
            fprintf(stderr, "qvl: cannot read image %s: it is a directory\n", p);
            return -1;
        }
    }
    return 0;
}

/* The interactive chat: full screen when the terminal allows, else line mode. */
static int interactive(const qvl_options *o, const qvl_source *model) {
    qvl_session_opts so;
    options_session(o, model, &so);
    tui_opts to = {
        .images = qvl_images_name(o->images_mode),
        .attach = o->images,
        .nattach = o->nimages,
    };
    char err[QVL_ERR_MAX];
    err[0] = 0;
    int r = (!o->line && tui_available()) ? tui_run(&so, &to, err) : lineui_run(&so, &to, err);
    if (r) fprintf(stderr, "qvl: %s\n", err[0] ? err : "the chat failed");
    return r ? QVL_EXIT_RUNTIME : QVL_EXIT_OK;
}

static int run(const qvl_options *o) {
    qvl_source dir;
    const qvl_source *model;
    if (o->model_dir) {
        if (check_model_dir(o->model_dir)) return QVL_EXIT_RUNTIME;
        dir = source_dir(o->model_dir);
        model = &dir;
    } else {
        model = demo_source();
    }
    if (check_images(o)) return QVL_EXIT_RUNTIME;
    if (o->prompt) return oneshot_run(o, model, stdout);
    if (o->jsonl) return jsonl_run(o, model, stdin, stdout);
    if (!isatty(STDIN_FILENO)) return batch_run(o, model, stdin, stdout, NULL);
    return interactive(o, model);
}

/* Debian's OpenBLAS 0.3.21 does not recognise recent CPUs and falls back to
 * its slowest kernels (sgemm 5x slower here) unless OPENBLAS_CORETYPE names
 * the core before the library loads, which is before main runs.  So when the
 * user has not set it, set it and exec ourselves again: the variable being
 * set is what stops a second exec.  If the exec fails we go on as we are. */
static void choose_blas_core(char **argv) {
    const char *core = ops_openblas_coretype();
    if (getenv("OPENBLAS_CORETYPE") || !core) return;
    if (setenv("OPENBLAS_CORETYPE", core, 1)) return;
    execv("/proc/self/exe", argv);
}

int main(int argc, char **argv) {
    choose_blas_core(argv);
    if (argc >= 2) {
        if (!strcmp(argv[1], "synth")) return tool_synth_main(argc - 1, argv + 1);
        if (!strcmp(argv[1], "tokenize")) return tool_tokenize_main(argc - 1, argv + 1);
        if (!strcmp(argv[1], "dump")) return tool_dump_main(argc - 1, argv + 1);
        if (!strcmp(argv[1], "bench")) return tool_bench_main(argc - 1, argv + 1);
        if (!strcmp(argv[1], "quantize")) return tool_quantize_main(argc - 1, argv + 1);
    }
    qvl_options o;
    char err[QVL_ERR_MAX];
    int action = options_parse(argc, argv, &o, err), status;
    if (action < 0) {
        fprintf(stderr, "qvl: %s\n", err);
        status = QVL_EXIT_USAGE;
    } else if (action == OPTIONS_HELP) {
        options_usage(stdout);
        status = QVL_EXIT_OK;
    } else if (action == OPTIONS_VERSION) {
        printf("qvl %s\n", PACKAGE_VERSION);
        status = QVL_EXIT_OK;
    } else {
        status = run(&o);
    }
    options_free(&o);
    return status;
}
