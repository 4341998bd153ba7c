/* options.h - the qvl command line: parsed once in main, read by every mode.
 *
 * Parsing validates values and reports the first problem as one line naming
 * the option (exit code 2).  Sampling options the user did not give stay
 * "unset" (see sampling_unset in model/sampler.h): the session fills them from
 * generation_config.json and the model card with sampling_resolve. */
#ifndef QVL_OPTIONS_H
#define QVL_OPTIONS_H

#include <stdio.h>
#include "session.h"
#include "term.h"   /* qvl_images_mode */

/* Exit codes of the program. */
#define QVL_EXIT_OK 0
#define QVL_EXIT_RUNTIME 1
#define QVL_EXIT_USAGE 2

#define QVL_DEFAULT_CTX 8192
#define QVL_DEFAULT_MAX_PIXELS 1048576L   /* 1024 image tokens of 32x32 pixels (the session applies it) */


typedef struct {
    const char *model_dir;      /* -m; NULL: the built-in demo model */
    const char *system;         /* -s */
    const char **images;        /* -i, in order (argv pointers); without -p: the first message's */
    int nimages;
    const char *prompt;         /* -p; NULL: not one-shot */
    int max_tokens;             /* -n; 0: until EOS or the context is full */
    qvl_sampling_opts sampling; /* unset fields: model defaults */
    int ignore_eos;
    int ctx;                    /* -c */
    int threads;                /* -t; 0: all cores */
    qvl_quant quant;            /* --quant: QVL_QUANT_NONE (as stored), _Q8, _Q4 */
    int bf16_matmul;            /* --matmul: 1 bf16, 0 f32, QVL_MATMUL_AUTO (the default) */
    qvl_dtype kv_dtype;         /* --kv-cache: QVL_F32 (default) or QVL_F16 */
    long min_pixels;            /* 0: the model's */
    long max_pixels;            /* 0: QVL_DEFAULT_MAX_PIXELS, or the model's limit if smaller */
    int max_pixels_model;       /* --max-pixels model */
    int alpha_drop;             /* --alpha drop */
    qvl_images_mode images_mode;/* --images, else $QVL_IMAGES, else auto */
    int logprobs;               /* --logprobs N */
    int verbose, quiet;
    int jsonl;                  /* --jsonl */
    int line;                   /* --line: readline line mode instead of the TUI */
} qvl_options;

typedef enum { OPTIONS_RUN, OPTIONS_HELP, OPTIONS_VERSION } qvl_options_action;

/* Parses argv (argv[0] is the program name).  Returns the action, or -1 with
 * a one-line message in err (QVL_ERR_MAX bytes): a usage error, exit code 2.
 * Free with options_free, also after an error. */
int options_parse(int argc, char **argv, qvl_options *o, char *err);
void options_free(qvl_options *o);

/* The --help text: every option with its default, the modes and the tools. */
void options_usage(FILE *f);

/* Session settings from the options (sampling still unset where the user was
 * silent); `model` is the source the caller opened. */
void options_session(const qvl_options *o, const qvl_source *model, qvl_session_opts *so);

/* A --kv-cache value, "f32" or "f16" (qvl and qvl bench): -1 for anything
 * else; and back. */
int kv_cache_parse(const char *s, qvl_dtype *out);
const char *kv_cache_name(qvl_dtype t);
/* A --matmul value, "f32", "bf16" or "auto" (qvl and qvl bench), as *bf16 =
 * 0, 1 or QVL_MATMUL_AUTO: -1 for anything else; and back. */
int matmul_parse(const char *s, int *bf16);
const char *matmul_name(int bf16);


#endif
