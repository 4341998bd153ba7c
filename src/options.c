/* options.c - parsing and validating the qvl command line.
 *
 * getopt_long does the scanning with its own messages turned off, so that
 * every mistake becomes exactly one line naming the option and the reason;
 * main prints it after "qvl: " and exits with status 2.  Numbers must be
 * numbers in full ("12x" is rejected) and inside their documented range. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "options.h"
#include "sampler.h"

enum {
    OPT_TEMP = 256, OPT_TOP_K, OPT_TOP_P, OPT_MIN_P, OPT_REPEAT_PENALTY, OPT_PRESENCE_PENALTY,
    OPT_SEED, OPT_GREEDY, OPT_IGNORE_EOS, OPT_MIN_PIXELS, OPT_MAX_PIXELS, OPT_IMAGES,
    OPT_LOGPROBS, OPT_JSONL, OPT_LINE, OPT_VERSION, OPT_ALPHA, OPT_QUANT, OPT_MATMUL, OPT_KV_CACHE
};

static const struct option long_options[] = {
    { "model", required_argument, NULL, 'm' },
    { "system", required_argument, NULL, 's' },
    { "image", required_argument, NULL, 'i' },
    { "prompt", required_argument, NULL, 'p' },
    { "max-tokens", required_argument, NULL, 'n' },
    { "temp", required_argument, NULL, OPT_TEMP },
    { "top-k", required_argument, NULL, OPT_TOP_K },
    { "top-p", required_argument, NULL, OPT_TOP_P },
    { "min-p", required_argument, NULL, OPT_MIN_P },
    { "repeat-penalty", required_argument, NULL, OPT_REPEAT_PENALTY },
    { "presence-penalty", required_argument, NULL, OPT_PRESENCE_PENALTY },
    { "seed", required_argument, NULL, OPT_SEED },
    { "greedy", no_argument, NULL, OPT_GREEDY },
    { "ignore-eos", no_argument, NULL, OPT_IGNORE_EOS },
    { "ctx", required_argument, NULL, 'c' },
    { "threads", required_argument, NULL, 't' },
    { "quant", required_argument, NULL, OPT_QUANT },
    { "matmul", required_argument, NULL, OPT_MATMUL },
    { "kv-cache", required_argument, NULL, OPT_KV_CACHE },
    { "min-pixels", required_argument, NULL, OPT_MIN_PIXELS },
    { "max-pixels", required_argument, NULL, OPT_MAX_PIXELS },
    { "images", required_argument, NULL, OPT_IMAGES },
    { "alpha", required_argument, NULL, OPT_ALPHA },
    { "logprobs", required_argument, NULL, OPT_LOGPROBS },
    { "jsonl", no_argument, NULL, OPT_JSONL },
    { "line", no_argument, NULL, OPT_LINE },
    { "verbose", no_argument, NULL, 'v' },
    { "quiet", no_argument, NULL, 'q' },
    { "version", no_argument, NULL, OPT_VERSION },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 }
};
/* Leading ':' makes a missing argument return ':' instead of '?'. */
static const char short_options[] = ":m:s:i:p:n:c:t:vqh";

void options_usage(FILE *f) {
    fprintf(f,
"usage: qvl [options]                       chat (full-screen; --line for a plain prompt)\n"
"       qvl [options] -p TEXT [-i IMAGE]...  one-shot: print the answer and exit\n"
"       qvl [options] < script.txt           batch: one message per line, /commands\n"
"       qvl [options] --jsonl < conv.jsonl   JSONL batch (OpenAI-style messages)\n"
"       qvl synth | tokenize | dump | quantize ...  tools (qvl TOOL --help)\n"
"\n"
"Without -m, qvl runs its built-in demo model: a 3.7M-parameter Qwen3-VL that\n"
"only knows about pictures of coloured circles, squares and triangles.\n"
"\n"
"Model and conversation:\n"
"  -m, --model DIR           Qwen3-VL checkpoint directory (default: built-in demo model)\n"
"  -s, --system TEXT         system prompt (default: none)\n"
"  -i, --image PATH          attach an image before the text; repeatable\n"
"  -p, --prompt TEXT         one-shot question\n"
"  -n, --max-tokens N        reply length limit (default: 0 = until end of turn)\n"
"  -c, --ctx N               context size in tokens (default: %d)\n"
"  -t, --threads N           worker threads (default: 0 = all cores)\n"
"      --quant q8|q4|none    quantize the weights at load to 8 or 4 bits: faster\n"
"                            and smaller, slightly less exact (default: none)\n"
"      --matmul auto|f32|bf16\n"
"                            prompt and image arithmetic: f32 (exact) or bf16\n"
"                            activations (AVX512_BF16 CPUs: ~1.7x faster, ~1e-3 error);\n"
"                            auto (default): bf16 with quantized weights, else f32\n"
"      --kv-cache f32|f16    how the context's keys and values are stored: f16 takes\n"
"                            half the memory, slightly less exact (default: f32)\n"
"      --min-pixels N        smallest image area in pixels (default: the model's)\n"
"      --max-pixels N|model  largest image area in pixels (default: %ld, or the\n"
"                            model's limit if smaller; 'model': the model's limit)\n"
"      --alpha white|drop    transparent images: composite over white (default), or\n"
"                            drop the alpha channel as the transformers processor does\n"
"Sampling (defaults: generation_config.json, else the model card):\n"
"      --temp T              temperature, >= 0 (default: 0.7 Instruct, 1.0 Thinking)\n"
"      --top-k N             keep the N most likely tokens, 0 = off (default: 20)\n"
"      --top-p P             nucleus sampling, in (0,1] (default: 0.8 / 0.95)\n"
"      --min-p P             drop tokens below P x the best, in [0,1) (default: 0)\n"
"      --repeat-penalty R    repetition penalty, > 0, 1 = off (default: 1)\n"
"      --presence-penalty P  presence penalty (default: 1.5 Instruct, 0 Thinking;\n"
"                            0 with --greedy)\n"
"      --seed N              random seed for a reproducible reply (default: from the clock)\n"
"      --greedy              always take the most likely token (same as --temp 0)\n"
"      --ignore-eos          do not stop at end-of-turn tokens (default: stop)\n"
"Output:\n"
"      --jsonl               JSONL mode: read messages, write one JSON object per reply\n"
"      --logprobs N          JSONL: log-probabilities of the top N tokens, N <= %d (default: 0)\n"
"      --line                line mode (readline) instead of the full-screen chat\n"
"      --images MODE         how the chat shows pictures: auto, sixel, blocks, none\n"
"                            (default: $QVL_IMAGES, else auto)\n"
"  -v, --verbose             timings, image scaling and other details on stderr\n"
"  -q, --quiet               no progress or notices on stderr\n"
"      --version             print the version and exit\n"
"  -h, --help                print this help and exit\n"
"\n"
"Exit status: 0 ok, 1 runtime error, 2 usage error.  See qvl(1).\n",
        QVL_DEFAULT_CTX, QVL_DEFAULT_MAX_PIXELS, QVL_MAX_LOGPROBS);
}

/* A whole-string integer in [lo, hi]. */
static int parse_int_in(const char *opt, const char *s, long lo, long hi, long *out, char *err) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (end == s || *end || errno == ERANGE) {
        qvl_seterr(err, "%s: expected an integer, got '%s'", opt, s);
        return -1;
    }
    if (v < lo || v > hi) {
        qvl_seterr(err, "%s: %ld is out of range [%ld, %ld]", opt, v, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_float(const char *opt, const char *s, float *out, char *err) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end || errno == ERANGE || !isfinite(v)) {
        qvl_seterr(err, "%s: expected a number, got '%s'", opt, s);
        return -1;
    }
    *out = (float)v;
    return 0;
}

/* Sampling values: checked here, with the command line's option names. */
static int parse_sampling(int c, const char *arg, qvl_sampling_opts *s, char *err) {
    float f;
    long l;
    switch (c) {
    case OPT_TEMP:
        if (parse_float("--temp", arg, &f, err)) return -1;
        if (f < 0) { qvl_seterr(err, "--temp: must be >= 0, got %s", arg); return -1; }
        s->temperature = f;
        return 0;
    case OPT_TOP_K:
        if (parse_int_in("--top-k", arg, 0, INT_MAX, &l, err)) return -1;
        s->top_k = (int)l;
        return 0;
    case OPT_TOP_P:
        if (parse_float("--top-p", arg, &f, err)) return -1;
        if (!(f > 0 && f <= 1)) { qvl_seterr(err, "--top-p: must be in (0, 1], got %s", arg); return -1; }
        s->top_p = f;
        return 0;
    case OPT_MIN_P:
        if (parse_float("--min-p", arg, &f, err)) return -1;
        if (!(f >= 0 && f < 1)) { qvl_seterr(err, "--min-p: must be in [0, 1), got %s", arg); return -1; }
        s->min_p = f;
        return 0;
    case OPT_REPEAT_PENALTY:
        if (parse_float("--repeat-penalty", arg, &f, err)) return -1;
        if (!(f > 0)) { qvl_seterr(err, "--repeat-penalty: must be > 0 (1 = off), got %s", arg); return -1; }
        s->repeat_penalty = f;
        return 0;
    case OPT_PRESENCE_PENALTY:
        if (parse_float("--presence-penalty", arg, &f, err)) return -1;
        s->presence_penalty = f;
        return 0;
    case OPT_SEED: {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(arg, &end, 10);
        if (end == arg || *end || errno == ERANGE || arg[0] == '-') {
            qvl_seterr(err, "--seed: expected a non-negative integer, got '%s'", arg);
            return -1;
        }
        s->seed = v;
        s->has_seed = 1;
        return 0;
    }
    case OPT_GREEDY:
        s->greedy = 1;
        return 0;
    }
    return 1;
}

static int parse_pixels(const char *opt, const char *arg, long *out, char *err) {
    return parse_int_in(opt, arg, 1, 1L << 30, out, err);
}

/* How getopt's '?' and ':' become one line naming the option.  A long
 * option has used up its argv element, so argv[optind - 1] is it; a short
 * one may sit inside a cluster like -vZ, so it is named by optopt. */
static void option_error(int c, char **argv, char *err) {
    const char *word = argv[optind - 1];
    int is_short = optopt > 0 && optopt < 256 && strncmp(word, "--", 2) != 0;
    if (c == ':') {
        if (is_short) qvl_seterr(err, "option -%c needs a value", optopt);
        else qvl_seterr(err, "option %s needs a value", word);
    } else if (optopt > 0 && optopt < 256 && !strchr(short_options + 1, optopt)) {
        qvl_seterr(err, "unknown option -%c (see qvl --help)", optopt);
    } else if (optopt) {
        qvl_seterr(err, "option %s takes no value", word);
    } else {
        qvl_seterr(err, "unknown option %s (see qvl --help)", word);
    }
}

static void options_defaults(qvl_options *o) {
    memset(o, 0, sizeof *o);
    sampling_unset(&o->sampling);
    o->ctx = QVL_DEFAULT_CTX;
    o->images_mode = QVL_IMAGES_AUTO;
    o->bf16_matmul = QVL_MATMUL_AUTO;
}

static int add_image(qvl_options *o, const char *path, char *err) {
    const char **grown = realloc(o->images, (size_t)(o->nimages + 1) * sizeof *grown);
    if (!grown) { qvl_seterr(err, "out of memory"); return -1; }
    o->images = grown;
    o->images[o->nimages++] = path;
    return 0;
}

/* One option (c, optarg) into o; 0 ok, -1 usage error. */
static int apply_option(qvl_options *o, int c, const char *arg, char *err) {
    long l;
    int r = parse_sampling(c, arg, &o->sampling, err);
    if (r <= 0) return r;
    switch (c) {
    case 'm': o->model_dir = arg; return 0;
    case 's': o->system = arg; return 0;
    case 'i':
        if (!*arg) { qvl_seterr(err, "--image: empty file name"); return -1; }
        return add_image(o, arg, err);
    case 'p': o->prompt = arg; return 0;
    case 'n':
        if (parse_int_in("--max-tokens", arg, 0, INT_MAX, &l, err)) return -1;
        o->max_tokens = (int)l;
        return 0;
    case 'c':
        if (parse_int_in("--ctx", arg, 16, 1L << 22, &l, err)) return -1;
        o->ctx = (int)l;
        return 0;
    case 't':
        if (parse_int_in("--threads", arg, 0, 4096, &l, err)) return -1;
        o->threads = (int)l;
        return 0;
    case OPT_IGNORE_EOS: o->ignore_eos = 1; return 0;
    case OPT_QUANT:
        if (quant_parse(arg, &o->quant)) {
            qvl_seterr(err, "--quant: expected q8, q4 or none, got '%s'", arg);
            return -1;
        }
        return 0;
    case OPT_MATMUL:
        if (matmul_parse(arg, &o->bf16_matmul)) {
            qvl_seterr(err, "--matmul: expected auto, f32 or bf16, got '%s'", arg);
            return -1;
        }
        return 0;
    case OPT_KV_CACHE:
        if (kv_cache_parse(arg, &o->kv_dtype)) {
            qvl_seterr(err, "--kv-cache: expected f32 or f16, got '%s'", arg);
            return -1;
        }
        return 0;
    case OPT_MIN_PIXELS: return parse_pixels("--min-pixels", arg, &o->min_pixels, err);
    case OPT_MAX_PIXELS:
        if (!strcmp(arg, "model")) { o->max_pixels_model = 1; o->max_pixels = 0; return 0; }
        o->max_pixels_model = 0;
        return parse_pixels("--max-pixels", arg, &o->max_pixels, err);
    case OPT_IMAGES:
        if (qvl_images_parse(arg, "--images", &o->images_mode, NULL)) {
            qvl_seterr(err, "--images: expected auto, sixel, blocks or none, got '%s'", arg);
            return -1;
        }
        return 0;
    case OPT_LOGPROBS:
        if (parse_int_in("--logprobs", arg, 0, QVL_MAX_LOGPROBS, &l, err)) return -1;
        o->logprobs = (int)l;
        return 0;
    case OPT_ALPHA:
        if (strcmp(arg, "white") && strcmp(arg, "drop")) {
            qvl_seterr(err, "--alpha: expected white or drop, got '%s'", arg);
            return -1;
        }
        o->alpha_drop = !strcmp(arg, "drop");
        return 0;
    case OPT_JSONL: o->jsonl = 1; return 0;
    case OPT_LINE: o->line = 1; return 0;
    case 'v': o->verbose = 1; return 0;
    case 'q': o->quiet = 1; return 0;
    }
    qvl_seterr(err, "internal error: option %d not handled", c);
    return -1;
}

/* Checks that need all options: combinations and the environment. */
static int check_combination(qvl_options *o, int images_given, char *err) {
    if (o->min_pixels && o->max_pixels && o->min_pixels > o->max_pixels) {
        qvl_seterr(err, "--min-pixels %ld is larger than --max-pixels %ld", o->min_pixels, o->max_pixels);
        return -1;
    }
    if (o->prompt && !*o->prompt && o->nimages == 0) {
        qvl_seterr(err, "--prompt: the prompt is empty (give a question or an image)");
        return -1;
    }
    if (o->prompt && o->jsonl) {
        qvl_seterr(err, "--prompt and --jsonl cannot be used together");
        return -1;
    }
    if (o->nimages && o->jsonl) {
        qvl_seterr(err, "--image cannot be used with --jsonl (put images in the messages)");
        return -1;
    }
    if (o->verbose && o->quiet) {
        qvl_seterr(err, "--verbose and --quiet cannot be used together");
        return -1;
    }
    if (!images_given) {
        const char *env = getenv("QVL_IMAGES");
        if (env && *env && qvl_images_parse(env, "QVL_IMAGES", &o->images_mode, NULL)) {
            qvl_seterr(err, "QVL_IMAGES: expected auto, sixel, blocks or none, got '%s'", env);
            return -1;
        }
    }
    return 0;
}

int options_parse(int argc, char **argv, qvl_options *o, char *err) {
    options_defaults(o);
    int action = OPTIONS_RUN, images_given = 0, c;
    optind = 0;      /* GNU: full reinitialisation, so parsing can run more than once */
    opterr = 0;
    while ((c = getopt_long(argc, argv, short_options, long_options, NULL)) != -1) {
        if (c == '?' || c == ':') { option_error(c, argv, err); return -1; }
        if (c == 'h') { action = OPTIONS_HELP; continue; }
        if (c == OPT_VERSION) { if (action == OPTIONS_RUN) action = OPTIONS_VERSION; continue; }
        if (c == OPT_IMAGES) images_given = 1;
        if (apply_option(o, c, optarg, err)) return -1;
    }
    if (optind < argc) {
        qvl_seterr(err, "unexpected argument '%s' (a question goes after -p; see qvl --help)", argv[optind]);
        return -1;
    }
    if (action != OPTIONS_RUN) return action;
    if (check_combination(o, images_given, err)) return -1;
    return OPTIONS_RUN;
}

void options_free(qvl_options *o) {
    free(o->images);
    o->images = NULL;
    o->nimages = 0;
}

void options_session(const qvl_options *o, const qvl_source *model, qvl_session_opts *so) {
    memset(so, 0, sizeof *so);
    so->model = model;
    so->ctx = o->ctx;
    so->threads = o->threads;
    so->min_pixels = o->min_pixels;
    so->max_pixels = o->max_pixels;
    so->max_pixels_model = o->max_pixels_model;
    so->alpha_drop = o->alpha_drop;
    so->max_tokens = o->max_tokens;
    so->ignore_eos = o->ignore_eos;
    so->logprobs = o->logprobs;
    so->sampling = o->sampling;
    so->system = o->system;
    so->verbose = o->verbose;
    so->quant = o->quant;
    so->bf16_matmul = o->bf16_matmul;
    so->kv_dtype = o->kv_dtype;
}

int kv_cache_parse(const char *s, qvl_dtype *out) {
    if (!strcmp(s, "f32")) *out = QVL_F32;
    else if (!strcmp(s, "f16")) *out = QVL_F16;
    else return -1;
    return 0;
}

const char *kv_cache_name(qvl_dtype t) { return t == QVL_F16 ? "f16" : "f32"; }

int matmul_parse(const char *s, int *bf16) {
    if (!strcmp(s, "f32")) *bf16 = 0;
    else if (!strcmp(s, "bf16")) *bf16 = 1;
    else if (!strcmp(s, "auto")) *bf16 = QVL_MATMUL_AUTO;
    else return -1;
    return 0;
}

const char *matmul_name(int bf16) { return bf16 == QVL_MATMUL_AUTO ? "auto" : bf16 ? "bf16" : "f32"; }
