/* tool_bench.c - `qvl bench`: how fast a model runs on this machine.
 *
 *   qvl bench [-m DIR] [-t N] [--quant q8|q4] [--matmul auto|f32|bf16] [--kv-cache f32|f16]
 *             [--pp N] [--tg N] [--reps N] [--no-images] [--json-only]
 *
 * A CPU user's experience comes down to a few numbers, and this measures them
 * the way llama.cpp's llama-bench does, so that the two can be put side by side:
 *   - load time (mapping and binding the checkpoint), and with --quant the
 *     time model_quantize takes to convert the text matrices;
 *   - prompt processing: --pp text tokens (512) prefilled into an empty cache;
 *   - generation: --tg tokens (128) decoded greedily after that prompt, and
 *     the limit memory bandwidth sets on it (the bytes a token reads);
 *   - image encoding of a 448x448 and a 1024x768 synthetic picture with the
 *     model's preprocessing under the default 1 MP budget (as the chat uses);
 *   - time to first token of a question about the 1024x768 picture:
 *     preprocessing + vision encoder + prefill of the whole prompt + argmax;
 *   - the weights' size, the KV cache's element type (--kv-cache, as the
 *     chat's) and size, and the process's peak RSS.
 * A human table goes to stdout, then one JSON line with every figure; what
 * was skipped (--pp 0, --tg 0, --no-images) is null there.
 *
 * Prompts are token ids, not text: a checkpoint needs no tokenizer.json to be
 * measured (the synthetic 2B shape has none), and the time of a forward pass
 * does not depend on which ids it sees.  Text ids are taken from the middle of
 * the vocabulary (1000, 1001, ... for the Qwen vocabulary), away from the
 * special tokens; the image prompt has the chat template's layout around the
 * picture (see image_prompt).  Greedy decoding masks the vision special ids,
 * which a model may not be fed without a picture.
 *
 * Each measurement runs --reps times and reports the mean and the standard
 * deviation, after one untimed warm-up pass (a decoding step and an image
 * encoding) that brings the memory-mapped weights into memory, so that the
 * first repetition does not pay for reading them from disk. */
#include <cblas.h>
#include <cjson/cJSON.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>

#include "common.h"
#include "config.h"
#include "decoder.h"
#include "demo.h"
#include "image.h"
#include "ops.h"
#include "options.h"
#include "quant.h"
#include "safetensors.h"
#include "threadpool.h"
#include "tools.h"
#include "vision.h"
#include "weights.h"

/* The chat's image budget when the checkpoint allows more (session.c). */
#define BENCH_MAX_PIXELS 1048576L
#define MAX_REPS 1000
#define MAX_TOKENS 1000000

typedef struct {
    const char *model_dir;      /* NULL: the built-in demo model */
    int threads;                /* 0: all cores */
    int pp, tg, reps;
    int json_only;
    int no_images;              /* text only: no image encoding, no time to first token */
    qvl_quant quant;
    int bf16_matmul;            /* --matmul: 1 bf16, 0 f32, QVL_MATMUL_AUTO (the default) */
    qvl_dtype kv;               /* the KV cache's element type */
} bench_opts;

/* Mean and standard deviation of repeated measurements. */
typedef struct {
    double mean, sd;
    int n;
} stat;

typedef struct {
    int width, height;          /* the synthetic picture */
    int seen_w, seen_h;         /* after smart_resize */
    int tokens;                 /* image tokens in the prompt */
    stat preprocess_ms, encode_ms;
} image_result;

typedef struct {
    const char *label;
    const char *dtype;          /* of the largest share of the weights */
    int threads;
    const char *kernel, *blas_core, *blas_env;
    const char *quant, *quant_kernel;   /* quant_kernel: NULL when not quantized */
    const char *matmul;                 /* "f32" or "bf16" (--matmul, auto resolved as the chat does) */
    long long params, text_params, vision_params;
    long long weights_bytes;
    double load_s, quantize_s, warmup_s;
    int pp, tg, ctx, images;
    stat pp_tok_s, tg_tok_s;
    image_result img[2];
    int ttft_tokens;
    stat ttft_ms;
    const char *kv_dtype;       /* "f32" or "f16" */
    long long kv_bytes, kv_bytes_per_token;
    long long peak_rss_bytes;
    double read_gb_s;               /* memory read bandwidth with the run's threads */
    long long decode_bytes;         /* weight bytes one generated token reads */
} bench_result;

/* A running mean and standard deviation. */
typedef struct {
    stat s;
    double sum, sumsq;
} stat_acc;

static void acc_add(stat_acc *a, double x) {
    a->sum += x;
    a->sumsq += x * x;
    int n = ++a->s.n;
    a->s.mean = a->sum / n;
    double var = n > 1 ? (a->sumsq - a->sum * a->sum / n) / (n - 1) : 0;
    a->s.sd = var > 0 ? sqrt(var) : 0;
}

static void progress(const bench_opts *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void progress(const bench_opts *o, const char *fmt, ...) {
    if (o->json_only) return;
    va_list ap;
    va_start(ap, fmt);
    fputs("qvl bench: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* ---------------------------------------------------------------- inputs */

static int is_vision_id(const qvl_config *c, int id) {
    return id == c->image_token_id || id == c->video_token_id || id == c->vision_start_id ||
           id == c->vision_end_id;
}

/* The i-th text token of a synthetic prompt: ids from the middle of the
 * vocabulary (1000.. for Qwen's 151k, vocab/4.. for a small one), stepping
 * over the vision special ids. */
static int text_id(const qvl_config *c, int vocab, int i) {
    int first = vocab >= 4000 ? 1000 : vocab / 4;
    int span = vocab / 2 > 1 ? vocab / 2 : 1;
    int id = first + i % span;
    while (is_vision_id(c, id)) id = (id + 1) % vocab;
    return id;
}

/* The greedy choice, never a vision special id (feeding one without its
 * picture is an error, and the goldens mask them the same way). */
static int greedy_id(const qvl_config *c, const float *logits, int vocab) {
    int best = -1;
    for (int i = 0; i < vocab; i++)
        if (!is_vision_id(c, i) && (best < 0 || logits[i] > logits[best])) best = i;
    return best;
}

/* A deterministic picture with smooth gradients and hard edges, so that the
 * resampling filters have something to do. */
static int synthetic_picture(int w, int h, qvl_image *img, char *err) {
    img->width = w;
    img->height = h;
    img->rgb = malloc((size_t)w * h * 3);
    if (!img->rgb) { qvl_seterr(err, "out of memory for a %dx%d picture", w, h); return -1; }
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            uint8_t *p = img->rgb + ((size_t)y * w + x) * 3;
            p[0] = (uint8_t)(255 * x / (w > 1 ? w - 1 : 1));
            p[1] = (uint8_t)(255 * y / (h > 1 ? h - 1 : 1));
            p[2] = ((x / 37 + y / 23) & 1) ? 220 : 30;
        }
    return 0;
}

/* The checkpoint's preprocessing with the chat's default budget: at most
 * 1 MP, or less when the checkpoint's own limit is lower. */
static int bench_preproc(const qvl_source *src, qvl_preproc *p, char *err) {
    if (preproc_load(src, p, err)) return -1;
    if (p->max_pixels > BENCH_MAX_PIXELS) p->max_pixels = BENCH_MAX_PIXELS;
    if (p->min_pixels > p->max_pixels) p->min_pixels = p->max_pixels;
    return 0;
}

/* ---------------------------------------------------------------- model facts */

static int is_vision_tensor(const char *name) {
    return strstr(name, "visual.") != NULL;
}

/* Parameter counts, stored bytes and the dtype holding most of the bytes. */
static void weights_facts(const qvl_model *m, bench_result *r) {
    long long by_dtype[QVL_DTYPE_COUNT] = {0};
    for (size_t i = 0; i < st_count(m->st); i++) {
        const st_tensor *t = st_at(m->st, i);
        r->params += t->numel;
        if (is_vision_tensor(t->name)) r->vision_params += t->numel;
        else r->text_params += t->numel;
        r->weights_bytes += (long long)t->nbytes;
        by_dtype[t->dtype] += (long long)t->nbytes;
    }
    int top = 0;
    for (int d = 1; d < QVL_DTYPE_COUNT; d++) if (by_dtype[d] > by_dtype[top]) top = d;
    r->dtype = qvl_dtype_name((qvl_dtype)top);
}

/* A `qvl quantize` checkpoint stores its quantized matrices as U8 tensors of
 * [out, row bytes], which weights_facts counted as that many parameters:
 * counted again as out x in here.  Returns the checkpoint's quantization
 * (q4 if any matrix is 4-bit: the q4 mix keeps some at 8), or none. */
typedef struct {
    bench_result *r;
    int tied;
    int q8, q4;
} stored_scan;

static int scan_stored(void *ctx, const char *name, qvl_weight *w) {
    stored_scan *s = ctx;
    if (!quant_is_quantized(w->dtype)) return 0;
    /* a tied lm_head's copy adds no parameters of its own */
    int tied_copy = !strcmp(name, "lm_head.weight") && s->tied;
    long long fix = (tied_copy ? 0 : (long long)w->out * w->in) - (long long)w->out * w->ld;
    s->r->params += fix;
    if (quant_is_vision_name(name)) s->r->vision_params += fix;
    else s->r->text_params += fix;
    if (w->dtype == QVL_Q4) s->q4 = 1;
    else s->q8 = 1;
    return 0;
}

static qvl_quant stored_quant(qvl_model *m, bench_result *r) {
    stored_scan s = { r, m->cfg.text.tie_embeddings, 0, 0 };
    quant_for_each_matrix(m, scan_stored, &s);
    return s.q4 ? QVL_QUANT_Q4 : s.q8 ? QVL_QUANT_Q8 : QVL_QUANT_NONE;
}

/* Bytes of a matrix as the products read it. */
static long long matrix_bytes(const qvl_weight *w) {
    if (quant_is_quantized(w->dtype)) return (long long)w->out * w->ld;
    return (long long)w->out * w->in * (long long)qvl_dtype_size(w->dtype);
}

/* Sums the matrices model_quantize converts; the lm_head tied to the
 * embedding is counted only when it has a copy of its own (the embedding
 * itself stays for the lookup). */
typedef struct {
    const qvl_model *m;
    long long bytes;
} matrix_sum;

static int add_matrix(void *ctx, const char *name, qvl_weight *w) {
    (void)name;
    matrix_sum *s = ctx;
    if (w->data != s->m->text.embed.data) s->bytes += matrix_bytes(w);
    return 0;
}

static long long quantizable_bytes(qvl_model *m) {
    matrix_sum s = { m, 0 };
    quant_for_each_matrix(m, add_matrix, &s);
    return s.bytes;
}

/* The weight bytes one generated token reads: every text matrix (the tied
 * lm_head included: it is the embedding, read whole), of a MoE layer's
 * experts only the routed share; plus one embedding row. */
typedef struct {
    long long dense, experts;
} decode_sum;

static int add_decoded(void *ctx, const char *name, qvl_weight *w) {
    decode_sum *s = ctx;
    if (quant_is_vision_name(name)) return 0;      /* pictures only */
    if (strstr(name, ".experts.")) s->experts += matrix_bytes(w);
    else s->dense += matrix_bytes(w);
    return 0;
}

static long long decode_bytes(qvl_model *m) {
    decode_sum s = { 0, 0 };
    quant_for_each_matrix(m, add_decoded, &s);
    const qvl_text_config *tc = &m->cfg.text;
    long long routed = tc->num_experts ? s.experts * tc->experts_per_tok / tc->num_experts : 0;
    return s.dense + routed + (long long)tc->hidden * (long long)qvl_dtype_size(m->text.embed.dtype);
}

/* Memory read bandwidth: the pool's threads stream a buffer far larger than
 * the caches, each its share; the median of five passes (a best-of would
 * keep the odd pass that a neighbour's idle moment sped up).  Decoding reads
 * every weight once per token, so bandwidth over decode_bytes is its speed
 * limit. */
#define BW_BYTES (1024u << 20)
#define BW_ITEMS 1024
#define BW_PASSES 5

typedef struct {
    const uint64_t *words;
    uint64_t sums[BW_ITEMS];
} bw_job;

static void bw_read(void *arg, int begin, int end) {
    bw_job *j = arg;
    size_t per = BW_BYTES / sizeof(uint64_t) / BW_ITEMS;
    for (int i = begin; i < end; i++) {
        const uint64_t *w = j->words + (size_t)i * per;
        uint64_t a = 0, b = 0, c = 0, d = 0;
        for (size_t k = 0; k < per; k += 4) { a += w[k]; b += w[k + 1]; c += w[k + 2]; d += w[k + 3]; }
        j->sums[i] = a + b + c + d;
    }
}

static double read_bandwidth(void) {
    bw_job *j = malloc(sizeof *j);
    uint64_t *words = malloc(BW_BYTES);
    double gb_s[BW_PASSES] = {0};
    if (j && words) {
        memset(words, 1, BW_BYTES);
        j->words = words;
        for (int r = 0; r < BW_PASSES; r++) {
            double t0 = qvl_now();
            parallel_for(BW_ITEMS, bw_read, j);
            gb_s[r] = BW_BYTES / (qvl_now() - t0) / 1e9;
            for (int k = r; k > 0 && gb_s[k] < gb_s[k - 1]; k--) {   /* kept sorted */
                double t = gb_s[k];
                gb_s[k] = gb_s[k - 1];
                gb_s[k - 1] = t;
            }
        }
    }
    free(words);
    free(j);
    return gb_s[BW_PASSES / 2];
}

/* The decoder's cache holds keys and values of type kv for every layer
 * (decoder.c): 2 * layers * kv_heads * head_dim of them per token. */
static long long kv_bytes_per_token(const qvl_config *c, qvl_dtype kv) {
    return 2LL * c->text.layers * c->text.kv_heads * c->text.head_dim * (long long)qvl_dtype_size(kv);
}

static long long peak_rss_bytes(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru)) return -1;
    return (long long)ru.ru_maxrss * 1024;    /* Linux reports kilobytes */
}

/* ---------------------------------------------------------------- measurements */

/* Brings the weights in: one decoding step (every text matrix) and one image
 * encoding (every vision matrix; px may be NULL), both untimed. */
static int warm_up(const qvl_model *m, qvl_cache *c, float *logits, const qvl_pixels *px, char *err) {
    if (decoder_step(c, text_id(&m->cfg, m->text.lm_head.out, 0), logits, err)) return -1;
    if (cache_truncate(c, 0, err)) return -1;
    if (!px) return 0;
    qvl_grid g = { px->grid_t, px->grid_h, px->grid_w };
    qvl_vision_out vo = {0};
    int rc = vision_encode(m, px->pixels, px->n_patches, &g, 1, NULL, &vo, err);
    vision_out_free(&vo);
    return rc;
}

/* Prompt processing: pp text tokens into an empty cache, reps times.
 * Leaves the cache holding the prompt and `logits` its last logits. */
static int measure_prompt(const qvl_model *m, qvl_cache *c, int pp, int reps, float *logits,
                          stat *out, char *err) {
    int vocab = m->text.lm_head.out;
    int *ids = malloc(sizeof(int) * (size_t)pp);
    if (!ids) { qvl_seterr(err, "out of memory"); return -1; }
    for (int i = 0; i < pp; i++) ids[i] = text_id(&m->cfg, vocab, i);
    stat_acc a = {0};
    int rc = 0;
    for (int r = 0; r < reps && !rc; r++) {
        if ((rc = cache_truncate(c, 0, err))) break;
        double t0 = qvl_now();
        rc = decoder_forward(c, ids, pp, NULL, 0, logits, 0, NULL, err);
        if (!rc) acc_add(&a, pp / (qvl_now() - t0));
    }
    free(ids);
    *out = a.s;
    return rc;
}

/* Generation: tg greedy tokens after the prompt the cache holds (whose last
 * logits are in `logits`), reps times from the same point. */
static int measure_generation(const qvl_model *m, qvl_cache *c, int tg, int reps, const float *prompt_logits,
                              stat *out, char *err) {
    int vocab = m->text.lm_head.out, start = cache_len(c);
    float *logits = malloc(sizeof(float) * (size_t)vocab);
    if (!logits) { qvl_seterr(err, "out of memory"); return -1; }
    stat_acc a = {0};
    int rc = 0;
    for (int r = 0; r < reps && !rc; r++) {
        if ((rc = cache_truncate(c, start, err))) break;
        memcpy(logits, prompt_logits, sizeof(float) * (size_t)vocab);
        double t0 = qvl_now();
        for (int i = 0; i < tg && !rc; i++)
            rc = decoder_step(c, greedy_id(&m->cfg, logits, vocab), logits, err);
        if (!rc) acc_add(&a, tg / (qvl_now() - t0));
    }
    free(logits);
    *out = a.s;
    return rc;
}

/* One picture through preprocessing and the vision encoder, reps times. */
static int measure_image(const qvl_model *m, const qvl_preproc *pp, const qvl_image *img, int reps,
                         image_result *out, char *err) {
    stat_acc prep = {0}, enc = {0};
    for (int r = 0; r < reps; r++) {
        qvl_pixels px = {0};
        double t0 = qvl_now();
        if (image_preprocess(img, pp, &px, err)) return -1;
        double t1 = qvl_now();
        qvl_grid g = { px.grid_t, px.grid_h, px.grid_w };
        qvl_vision_out vo = {0};
        int rc = vision_encode(m, px.pixels, px.n_patches, &g, 1, NULL, &vo, err);
        double t2 = qvl_now();
        out->seen_w = px.resized.width;
        out->seen_h = px.resized.height;
        out->tokens = vo.n_tokens;
        vision_out_free(&vo);
        pixels_free(&px);
        if (rc) return -1;
        acc_add(&prep, 1e3 * (t1 - t0));
        acc_add(&enc, 1e3 * (t2 - t1));
    }
    out->width = img->width;
    out->height = img->height;
    out->preprocess_ms = prep.s;
    out->encode_ms = enc.s;
    return 0;
}

/* The ids of a one-picture question as the chat template lays it out:
 *   <|im_start|> user \n <|vision_start|> <|image_pad|> x tokens <|vision_end|>
 *   (a 4-token question) <|im_end|> \n <|im_start|> assistant \n
 * The 12 text tokens are synthetic ids; the vision ones are the config's. */
#define PROMPT_TEXT_BEFORE 3
#define PROMPT_TEXT_AFTER 9
static int *image_prompt(const qvl_model *m, int tokens, int *n) {
    const qvl_config *c = &m->cfg;
    int vocab = m->text.lm_head.out, k = 0, t = 0;
    *n = PROMPT_TEXT_BEFORE + 2 + tokens + PROMPT_TEXT_AFTER;
    int *ids = malloc(sizeof(int) * (size_t)*n);
    if (!ids) return NULL;
    for (int i = 0; i < PROMPT_TEXT_BEFORE; i++) ids[k++] = text_id(c, vocab, t++);
    ids[k++] = c->vision_start_id;
    for (int i = 0; i < tokens; i++) ids[k++] = c->image_token_id;
    ids[k++] = c->vision_end_id;
    for (int i = 0; i < PROMPT_TEXT_AFTER; i++) ids[k++] = text_id(c, vocab, t++);
    return ids;
}

/* Time to first token: picture in, first answer id out. */
static int measure_ttft(const qvl_model *m, qvl_dtype kv, const qvl_preproc *pp, const qvl_image *img, int reps,
                        float *logits, int *prompt_tokens, stat *out, char *err) {
    stat_acc a = {0};
    int rc = 0;
    for (int r = 0; r < reps && !rc; r++) {
        qvl_pixels px = {0};
        qvl_vision_out vo = {0};
        qvl_cache *c = NULL;
        int *ids = NULL, n = 0;
        double t0 = qvl_now();
        rc = -1;
        if (image_preprocess(img, pp, &px, err)) goto next;
        qvl_grid g = { px.grid_t, px.grid_h, px.grid_w };
        if (vision_encode(m, px.pixels, px.n_patches, &g, 1, NULL, &vo, err)) goto next;
        qvl_image_input in = { .embeds = vo.merged, .grid = vision_llm_grid(m, g) };
        for (int j = 0; j < vo.n_deepstack; j++) in.deepstack[j] = vo.deepstack[j];
        if (!(ids = image_prompt(m, vo.n_tokens, &n))) { qvl_seterr(err, "out of memory"); goto next; }
        if (!(c = cache_new_as(m, n + 1, kv, err))) goto next;
        if (decoder_forward(c, ids, n, &in, 1, logits, 0, NULL, err)) goto next;
        if (greedy_id(&m->cfg, logits, m->text.lm_head.out) < 0) { qvl_seterr(err, "no token to choose"); goto next; }
        acc_add(&a, 1e3 * (qvl_now() - t0));
        *prompt_tokens = n;
        rc = 0;
    next:
        cache_free(c);
        free(ids);
        vision_out_free(&vo);
        pixels_free(&px);
    }
    *out = a.s;
    return rc;
}

/* ---------------------------------------------------------------- the run */

static void openblas_facts(bench_result *r) {
    r->blas_core = openblas_get_corename();
    r->blas_env = getenv("OPENBLAS_CORETYPE");
    r->kernel = ops_kernel_name();
}

static int bench_run(const bench_opts *o, bench_result *r, char *err) {
    qvl_source dir;
    const qvl_source *src = o->model_dir ? (dir = source_dir(o->model_dir), &dir) : demo_source();
    qvl_model *m = NULL;
    qvl_cache *c = NULL;
    float *logits = NULL;
    qvl_image pics[2] = {{0}};
    qvl_pixels warm = {0};
    qvl_preproc pp;
    int rc = -1;

    r->label = src->label ? src->label : o->model_dir;
    r->threads = pool_set_threads(o->threads);
    if (ops_set_bf16_matmul(o->bf16_matmul == 1)) {
        qvl_seterr(err, "--matmul bf16: this CPU lacks AVX512_BF16");
        return -1;
    }
    openblas_facts(r);
    r->pp = o->pp;
    r->tg = o->tg;
    r->images = !o->no_images;

    progress(o, "loading %s", r->label);
    double t0 = qvl_now();
    if (!(m = model_load(src, err))) goto done;
    r->load_s = qvl_now() - t0;
    weights_facts(m, r);
    qvl_quant stored = stored_quant(m, r);
    r->quant = quant_name(o->quant != QVL_QUANT_NONE ? o->quant : stored);
    if (stored != QVL_QUANT_NONE) r->quant_kernel = quant_kernel_name();
    if (o->quant != QVL_QUANT_NONE) {
        progress(o, "quantizing to %s", r->quant);
        long long before = quantizable_bytes(m);
        t0 = qvl_now();
        if (model_quantize(m, o->quant, err)) goto done;
        r->quantize_s = qvl_now() - t0;
        r->weights_bytes += quantizable_bytes(m) - before;
        r->quant_kernel = quant_kernel_name();
    }
    if (o->bf16_matmul == QVL_MATMUL_AUTO)      /* as session_open decides it */
        ops_set_bf16_matmul(model_is_quantized(m) && ops_bf16_matmul_supported());
    r->matmul = matmul_name(ops_bf16_matmul());
    if (bench_preproc(src, &pp, err)) goto done;

    int vocab = m->text.lm_head.out;
    r->ctx = o->pp + o->tg;
    r->kv_dtype = kv_cache_name(o->kv);
    r->kv_bytes_per_token = kv_bytes_per_token(&m->cfg, o->kv);
    r->kv_bytes = r->kv_bytes_per_token * r->ctx;
    if (!(logits = malloc(sizeof(float) * (size_t)vocab))) { qvl_seterr(err, "out of memory"); goto done; }
    /* + 1: with --pp 0, generation follows a single token. */
    if (!(c = cache_new_as(m, r->ctx + 1, o->kv, err))) goto done;
    if (synthetic_picture(448, 448, &pics[0], err) || synthetic_picture(1024, 768, &pics[1], err)) goto done;

    progress(o, "warming up (reading the weights in)");
    t0 = qvl_now();
    if (r->images && image_preprocess(&pics[0], &pp, &warm, err)) goto done;
    if (warm_up(m, c, logits, r->images ? &warm : NULL, err)) goto done;
    r->warmup_s = qvl_now() - t0;

    if (o->pp > 0) {
        progress(o, "prompt processing: %d tokens x %d", o->pp, o->reps);
        if (measure_prompt(m, c, o->pp, o->reps, logits, &r->pp_tok_s, err)) goto done;
    } else {
        /* Generation still needs something to follow: one token. */
        if (decoder_step(c, text_id(&m->cfg, vocab, 0), logits, err)) goto done;
    }
    if (o->tg > 0) {
        progress(o, "generation: %d tokens after %d x %d", o->tg, cache_len(c), o->reps);
        if (measure_generation(m, c, o->tg, o->reps, logits, &r->tg_tok_s, err)) goto done;
    }
    for (int i = 0; i < 2 && r->images; i++) {
        progress(o, "image encoding: %dx%d x %d", pics[i].width, pics[i].height, o->reps);
        if (measure_image(m, &pp, &pics[i], o->reps, &r->img[i], err)) goto done;
    }
    if (r->images) {
        progress(o, "time to first token: a question about the %dx%d picture x %d", pics[1].width,
                 pics[1].height, o->reps);
        if (measure_ttft(m, o->kv, &pp, &pics[1], o->reps, logits, &r->ttft_tokens, &r->ttft_ms, err)) goto done;
    }
    r->peak_rss_bytes = peak_rss_bytes();
    r->decode_bytes = decode_bytes(m);
    if (o->tg > 0) {            /* after peak RSS, which the buffer would count */
        progress(o, "memory read bandwidth");
        r->read_gb_s = read_bandwidth();
    }
    rc = 0;
done:
    pixels_free(&warm);
    image_free(&pics[0]);
    image_free(&pics[1]);
    free(logits);
    cache_free(c);
    model_free(m);
    return rc;
}

/* ---------------------------------------------------------------- reporting */

/* "mean ± sd unit" (just the mean for a single repetition). */
static const char *plus_minus(const stat *s, const char *fmt, const char *unit, char *buf, size_t n) {
    char v[32], d[32];
    snprintf(v, sizeof v, fmt, s->mean);
    snprintf(d, sizeof d, fmt, s->sd);
    if (s->n > 1) snprintf(buf, n, "%s ± %s %s", v, d, unit);
    else snprintf(buf, n, "%s %s", v, unit);
    return buf;
}

/* Columns are counted in characters, not bytes ("±" takes two). */
static int display_width(const char *s) {
    int n = 0;
    for (; *s; s++) n += ((unsigned char)*s & 0xc0) != 0x80;
    return n;
}

static void row(FILE *f, const char *what, const char *value) {
    fprintf(f, "| %-44s | %*s%s |\n", what, 24 - display_width(value), "", value);
}

/* 1.5 GiB, 140.0 MiB, 36.0 KiB */
static const char *human_bytes(long long b, char *buf, size_t n) {
    if (b >= 1LL << 30) snprintf(buf, n, "%.2f GiB", b / (double)(1LL << 30));
    else if (b >= 1LL << 20) snprintf(buf, n, "%.1f MiB", b / (double)(1LL << 20));
    else snprintf(buf, n, "%.1f KiB", b / 1024.0);
    return buf;
}

/* 2.13 B, 3.7 M */
static const char *human_count(long long c, char *buf, size_t n) {
    if (c >= 1000000000LL) snprintf(buf, n, "%.2f B", c / 1e9);
    else snprintf(buf, n, "%.1f M", c / 1e6);
    return buf;
}

static void print_table(FILE *f, const bench_result *r) {
    char what[128], v[128], p1[32], p2[32], p3[32];
    fprintf(f, "model      %s\n", r->label);
    fprintf(f, "weights    %s parameters (text %s, vision %s), %s, %s\n", human_count(r->params, p1, sizeof p1),
            human_count(r->text_params, p2, sizeof p2), human_count(r->vision_params, p3, sizeof p3), r->dtype,
            human_bytes(r->weights_bytes, v, sizeof v));
    fprintf(f, "cpu        %d threads, %s kernels, %s matrix products, OpenBLAS core %s (OPENBLAS_CORETYPE %s)\n",
            r->threads, r->kernel, r->matmul, r->blas_core ? r->blas_core : "?", r->blas_env ? r->blas_env : "unset");
    if (r->quant_kernel)
        fprintf(f, "quant      %s text matrices (%s kernels), %s in all\n", r->quant, r->quant_kernel,
                human_bytes(r->weights_bytes, v, sizeof v));
    const char *want = ops_openblas_coretype();
    if (!r->blas_env && want && r->blas_core && strcasecmp(r->blas_core, want))
        fprintf(f, "note       OpenBLAS chose its %s kernels; OPENBLAS_CORETYPE=%s set before qvl starts "
                   "selects faster ones\n", r->blas_core, want);
    fprintf(f, "\n");
    row(f, "measure", "result");
    fprintf(f, "|----------------------------------------------|--------------------------|\n");
    snprintf(v, sizeof v, "%.2f s", r->load_s);
    row(f, "load", v);
    if (r->quant_kernel) {
        snprintf(v, sizeof v, "%.2f s", r->quantize_s);
        row(f, "quantization", v);
    }
    snprintf(v, sizeof v, "%.2f s", r->warmup_s);
    row(f, "warm-up (weights read in)", v);
    if (r->pp > 0) {
        snprintf(what, sizeof what, "prompt processing (pp%d)", r->pp);
        row(f, what, plus_minus(&r->pp_tok_s, "%.2f", "tok/s", v, sizeof v));
    }
    if (r->tg > 0) {
        snprintf(what, sizeof what, "generation (tg%d after %d tokens)", r->tg, r->pp > 0 ? r->pp : 1);
        row(f, what, plus_minus(&r->tg_tok_s, "%.2f", "tok/s", v, sizeof v));
        snprintf(v, sizeof v, "%.1f GB/s", r->read_gb_s);
        row(f, "  memory read bandwidth", v);
        if (r->read_gb_s > 0) {
            double limit = r->read_gb_s * 1e9 / (double)r->decode_bytes;
            snprintf(what, sizeof what, "  its limit (%s per token)", human_bytes(r->decode_bytes, p1, sizeof p1));
            snprintf(v, sizeof v, "%.2f tok/s (at %.0f%%)", limit, 100 * r->tg_tok_s.mean / limit);
            row(f, what, v);
        }
    }
    for (int i = 0; i < 2 && r->images; i++) {
        const image_result *im = &r->img[i];
        snprintf(what, sizeof what, "image %dx%d -> %dx%d, %d tokens", im->width, im->height, im->seen_w,
                 im->seen_h, im->tokens);
        row(f, what, plus_minus(&im->encode_ms, "%.1f", "ms", v, sizeof v));
        row(f, "  its preprocessing", plus_minus(&im->preprocess_ms, "%.1f", "ms", v, sizeof v));
    }
    if (r->images) {
        snprintf(what, sizeof what, "time to first token (%dx%d, %d tokens)", r->img[1].width,
                 r->img[1].height, r->ttft_tokens);
        row(f, what, plus_minus(&r->ttft_ms, "%.0f", "ms", v, sizeof v));
    }
    snprintf(what, sizeof what, "KV cache (%s, %d tokens)", r->kv_dtype, r->ctx);
    row(f, what, human_bytes(r->kv_bytes, v, sizeof v));
    row(f, "peak RSS", human_bytes(r->peak_rss_bytes, v, sizeof v));
    fprintf(f, "\n");
}

static double rounded(double x, double unit) { return round(x / unit) * unit; }

static void add_stat(cJSON *o, const char *key, const stat *s, int measured, double unit) {
    char k[64];
    snprintf(k, sizeof k, "%s_sd", key);
    if (!measured) {
        cJSON_AddNullToObject(o, key);
        cJSON_AddNullToObject(o, k);
        return;
    }
    cJSON_AddNumberToObject(o, key, rounded(s->mean, unit));
    cJSON_AddNumberToObject(o, k, rounded(s->sd, unit));
}

/* A string, or null. */
static void add_string(cJSON *o, const char *key, const char *s) {
    if (s) cJSON_AddStringToObject(o, key, s);
    else cJSON_AddNullToObject(o, key);
}

static void add_count(cJSON *o, const char *key, long long n, int measured) {
    if (measured) cJSON_AddNumberToObject(o, key, (double)n);
    else cJSON_AddNullToObject(o, key);
}

/* Every figure, one line. */
static char *result_json(const bench_result *r, int reps) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddStringToObject(o, "model", r->label);
    cJSON_AddStringToObject(o, "dtype", r->dtype);
    cJSON_AddNumberToObject(o, "params", (double)r->params);
    cJSON_AddNumberToObject(o, "text_params", (double)r->text_params);
    cJSON_AddNumberToObject(o, "vision_params", (double)r->vision_params);
    cJSON_AddNumberToObject(o, "weights_bytes", (double)r->weights_bytes);
    cJSON_AddNumberToObject(o, "threads", r->threads);
    cJSON_AddStringToObject(o, "kernel", r->kernel);
    cJSON_AddStringToObject(o, "matmul", r->matmul);
    add_string(o, "openblas_core", r->blas_core);
    cJSON_AddStringToObject(o, "quant", r->quant);
    add_string(o, "quant_kernel", r->quant_kernel);
    cJSON_AddNumberToObject(o, "reps", reps);
    cJSON_AddNumberToObject(o, "load_s", rounded(r->load_s, 1e-4));
    cJSON_AddNumberToObject(o, "quantize_s", rounded(r->quantize_s, 1e-4));
    cJSON_AddNumberToObject(o, "warmup_s", rounded(r->warmup_s, 1e-4));
    cJSON_AddNumberToObject(o, "pp_tokens", r->pp);
    add_stat(o, "pp_tok_s", &r->pp_tok_s, r->pp > 0, 1e-3);
    cJSON_AddNumberToObject(o, "tg_tokens", r->tg);
    add_stat(o, "tg_tok_s", &r->tg_tok_s, r->tg > 0, 1e-3);
    cJSON_AddNumberToObject(o, "decode_bytes_per_token", (double)r->decode_bytes);
    if (r->tg > 0 && r->read_gb_s > 0) {
        cJSON_AddNumberToObject(o, "read_gb_s", rounded(r->read_gb_s, 1e-2));
        cJSON_AddNumberToObject(o, "tg_limit_tok_s", rounded(r->read_gb_s * 1e9 / (double)r->decode_bytes, 1e-3));
    } else {
        cJSON_AddNullToObject(o, "read_gb_s");
        cJSON_AddNullToObject(o, "tg_limit_tok_s");
    }
    for (int i = 0; i < 2; i++) {
        const image_result *im = &r->img[i];
        char k[64];
        const char *tag = i ? "img1024x768" : "img448x448";
        char size[32];
        snprintf(size, sizeof size, "%dx%d", im->seen_w, im->seen_h);
        snprintf(k, sizeof k, "%s_size", tag);
        add_string(o, k, r->images ? size : NULL);
        snprintf(k, sizeof k, "%s_tokens", tag);
        add_count(o, k, im->tokens, r->images);
        snprintf(k, sizeof k, "%s_preprocess_ms", tag);
        add_stat(o, k, &im->preprocess_ms, r->images, 1e-3);
        snprintf(k, sizeof k, "%s_encode_ms", tag);
        add_stat(o, k, &im->encode_ms, r->images, 1e-3);
    }
    add_count(o, "ttft_prompt_tokens", r->ttft_tokens, r->images);
    add_stat(o, "ttft_ms", &r->ttft_ms, r->images, 1e-3);
    cJSON_AddNumberToObject(o, "ctx", r->ctx);
    cJSON_AddStringToObject(o, "kv_dtype", r->kv_dtype);
    cJSON_AddNumberToObject(o, "kv_bytes_per_token", (double)r->kv_bytes_per_token);
    cJSON_AddNumberToObject(o, "kv_bytes", (double)r->kv_bytes);
    cJSON_AddNumberToObject(o, "peak_rss_bytes", (double)r->peak_rss_bytes);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

/* ---------------------------------------------------------------- arguments */

static void usage(FILE *f) {
    fprintf(f, "usage: qvl bench [-m DIR] [-t THREADS] [--quant q8|q4] [--matmul auto|f32|bf16]\n"
               "                 [--kv-cache f32|f16] [--pp N] [--tg N] [--reps N] [--no-images] [--json-only]\n"
               "Measures load time, prompt processing (--pp tokens, default 512), generation (--tg\n"
               "tokens after the prompt, default 128), image encoding (448x448 and 1024x768), time to\n"
               "first token of a question about an image, weights, KV cache and peak memory.  Each\n"
               "measurement is repeated --reps times (default 3).  Without -m: the built-in demo model.\n"
               "--quant converts the matrices at load, as the chat's --quant does; --kv-cache\n"
               "stores the keys and values as the chat's --kv-cache does (default f32); --matmul bf16\n"
               "runs prompts and the vision encoder with bf16 activations, as the chat's --matmul does\n"
               "(auto, the default: bf16 with quantized weights, else f32);\n"
               "--no-images skips the image encoding and the time to first token.\n"
               "Prints a table, then one JSON line with every figure (--json-only: just that line).\n");
}

static int parse_count(const char *opt, const char *v, int min, int max, int *out) {
    char *end;
    long x = strtol(v, &end, 10);
    if (!*v || *end || x < min || x > max) {
        fprintf(stderr, "qvl bench: %s '%s': expected a whole number from %d to %d\n", opt, v, min, max);
        return -1;
    }
    *out = (int)x;
    return 0;
}

/* 0: run, 1: help printed, -1: usage error (message printed). */
static int parse_args(int argc, char **argv, bench_opts *o) {
    enum { OPT_PP = 256, OPT_TG, OPT_REPS, OPT_JSON, OPT_QUANT, OPT_NO_IMAGES, OPT_MATMUL, OPT_KV };
    static const struct option longopts[] = {
        { "model", required_argument, 0, 'm' }, { "threads", required_argument, 0, 't' },
        { "pp", required_argument, 0, OPT_PP }, { "tg", required_argument, 0, OPT_TG },
        { "reps", required_argument, 0, OPT_REPS }, { "json-only", no_argument, 0, OPT_JSON },
        { "quant", required_argument, 0, OPT_QUANT }, { "no-images", no_argument, 0, OPT_NO_IMAGES },
        { "matmul", required_argument, 0, OPT_MATMUL },
        { "kv-cache", required_argument, 0, OPT_KV },
        { "help", no_argument, 0, 'h' }, { 0, 0, 0, 0 },
    };
    *o = (bench_opts){ .pp = 512, .tg = 128, .reps = 3, .bf16_matmul = QVL_MATMUL_AUTO };
    int c;
    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":m:t:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'm': o->model_dir = optarg; break;
        case 't': if (parse_count("-t", optarg, 1, QVL_MAX_THREADS, &o->threads)) return -1; break;
        case OPT_PP: if (parse_count("--pp", optarg, 0, MAX_TOKENS, &o->pp)) return -1; break;
        case OPT_TG: if (parse_count("--tg", optarg, 0, MAX_TOKENS, &o->tg)) return -1; break;
        case OPT_REPS: if (parse_count("--reps", optarg, 1, MAX_REPS, &o->reps)) return -1; break;
        case OPT_JSON: o->json_only = 1; break;
        case OPT_NO_IMAGES: o->no_images = 1; break;
        case OPT_QUANT:
            if (quant_parse(optarg, &o->quant)) {
                fprintf(stderr, "qvl bench: --quant '%s': expected none, q8 or q4\n", optarg);
                return -1;
            }
            break;
        case OPT_MATMUL:
            if (matmul_parse(optarg, &o->bf16_matmul)) {
                fprintf(stderr, "qvl bench: --matmul '%s': expected auto, f32 or bf16\n", optarg);
                return -1;
            }
            break;
        case OPT_KV:
            if (kv_cache_parse(optarg, &o->kv)) {
                fprintf(stderr, "qvl bench: --kv-cache '%s': expected f32 or f16\n", optarg);
                return -1;
            }
            break;
        case 'h': usage(stdout); return 1;
        case ':':
            fprintf(stderr, "qvl bench: %s needs a value\n", argv[optind - 1]);
            usage(stderr);
            return -1;
        default:
            fprintf(stderr, "qvl bench: unknown option '%s'\n", argv[optind - 1]);
            usage(stderr);
            return -1;
        }
    }
    if (optind != argc) {
        fprintf(stderr, "qvl bench: unexpected argument '%s'\n", argv[optind]);
        usage(stderr);
        return -1;
    }
    return 0;
}

int tool_bench_main(int argc, char **argv) {
    bench_opts o;
    int a = parse_args(argc, argv, &o);
    if (a) return a > 0 ? 0 : 2;
    bench_result r = {0};
    char err[QVL_ERR_MAX] = "";
    int status = 0;
    if (bench_run(&o, &r, err)) {
        fprintf(stderr, "qvl bench: %s\n", err[0] ? err : "failed");
        status = 1;
    } else {
        if (!o.json_only) print_table(stdout, &r);
        char *line = result_json(&r, o.reps);
        if (line) printf("%s\n", line);
        else { fprintf(stderr, "qvl bench: out of memory\n"); status = 1; }
        free(line);
    }
    pool_shutdown();
    return status;
}
