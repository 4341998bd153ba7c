/* tool_tokenize.c - `qvl tokenize`: text to ids and back, with the model's own
 * tokenizer.json, for checking the tokenizer against transformers from a shell:
 *
 *   qvl tokenize -m MODEL_DIR < text.txt          prints [id, id, ...]
 *   qvl tokenize --tokenizer tokenizer.json --decode < ids.json
 *
 * All of stdin is one text (so a trailing newline is part of it).  Decoding
 * prints the text's bytes exactly, without adding a newline, so that encoding
 * then decoding gives the input back.  --time reports the load and encode
 * speed on stderr (the tokenizer's benchmark). */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "tokenizer.h"
#include "tools.h"

static void usage(FILE *f) {
    fprintf(f, "usage: qvl tokenize (-m MODEL_DIR | --tokenizer tokenizer.json) [--decode] [--skip-special] [--time]\n"
               "  reads all of stdin: text to encode, or with --decode a JSON array of ids\n");
}

static char *read_stdin(size_t *len) {
    size_t cap = 1 << 16, n = 0, r;
    char *buf = malloc(cap);
    if (!buf) return NULL;
    while ((r = fread(buf + n, 1, cap - n - 1, stdin)) > 0) {
        n += r;
        if (cap - n < 2) {
            char *b = realloc(buf, cap *= 2);
            if (!b) { free(buf); return NULL; }
            buf = b;
        }
    }
    if (ferror(stdin)) { free(buf); return NULL; }
    buf[n] = 0;
    *len = n;
    return buf;
}

static int print_ids(const tok_ids *v) {
    putchar('[');
    for (size_t i = 0; i < v->n; i++) printf(i ? ", %d" : "%d", v->v[i]);
    puts("]");
    return 0;
}

/* Parses a JSON array of integer ids. */
static int parse_ids(const char *text, size_t len, tok_ids *out, char *err) {
    cJSON *root = cJSON_ParseWithLength(text, len);
    if (!cJSON_IsArray(root)) {
        qvl_seterr(err, "stdin: expected a JSON array of token ids");
        cJSON_Delete(root);
        return -1;
    }
    int i = 0;
    for (const cJSON *x = root->child; x; x = x->next, i++) {
        if (!cJSON_IsNumber(x) || x->valuedouble != (double)x->valueint) {
            qvl_seterr(err, "stdin: element %d of the array is not an integer token id", i);
            cJSON_Delete(root);
            return -1;
        }
        if (tok_ids_push(out, x->valueint)) {
            qvl_seterr(err, "stdin: out of memory");
            cJSON_Delete(root);
            return -1;
        }
    }
    cJSON_Delete(root);
    return 0;
}

int tool_tokenize_main(int argc, char **argv) {
    const char *model = NULL, *file = NULL;
    int decode = 0, skip_special = 0, timing = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if ((!strcmp(a, "-m") || !strcmp(a, "--model") || !strcmp(a, "--tokenizer")) && i + 1 >= argc) {
            fprintf(stderr, "qvl tokenize: %s needs an argument\n", a);
            return 2;
        }
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) model = argv[++i];
        else if (!strcmp(a, "--tokenizer")) file = argv[++i];
        else if (!strcmp(a, "--decode")) decode = 1;
        else if (!strcmp(a, "--skip-special")) skip_special = 1;
        else if (!strcmp(a, "--time")) timing = 1;
        else if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        else {
            fprintf(stderr, "qvl tokenize: unknown option %s\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!model == !file) {
        fprintf(stderr, "qvl tokenize: give one of -m MODEL_DIR or --tokenizer FILE\n");
        usage(stderr);
        return 2;
    }

    char err[QVL_ERR_MAX] = "";
    double t0 = qvl_now();
    qvl_tokenizer *tok;
    if (model) {
        qvl_source src = source_dir(model);
        tok = tok_load_source(&src, err);
    } else {
        tok = tok_load_file(file, err);
    }
    if (!tok) {
        fprintf(stderr, "qvl tokenize: %s\n", err);
        return 1;
    }
    double t_load = qvl_now() - t0;

    size_t len;
    char *input = read_stdin(&len);
    if (!input) {
        fprintf(stderr, "qvl tokenize: cannot read stdin\n");
        tok_free(tok);
        return 1;
    }
    int rc = 0;
    tok_ids ids = { 0 };
    t0 = qvl_now();
    if (decode) {
        size_t n;
        char *text = parse_ids(input, len, &ids, err) ? NULL : tok_decode(tok, ids.v, ids.n, skip_special, &n, err);
        if (text) {
            fwrite(text, 1, n, stdout);
            free(text);
        } else rc = 1;
    } else {
        rc = tok_encode(tok, input, len, &ids, err) ? 1 : print_ids(&ids);
    }
    double t_run = qvl_now() - t0;
    if (rc) fprintf(stderr, "qvl tokenize: %s\n", err);
    else if (timing)
        fprintf(stderr, "qvl tokenize: load %.3f s, %s %zu bytes / %zu tokens in %.3f s (%.2f MB/s)\n", t_load,
                decode ? "decode" : "encode", len, ids.n, t_run, t_run > 0 ? len / t_run / 1e6 : 0.0);
    if (fflush(stdout) != 0 && !rc) {
        fprintf(stderr, "qvl tokenize: cannot write stdout\n");
        rc = 1;
    }
    tok_ids_free(&ids);
    free(input);
    tok_free(tok);
    return rc;
}
