/* check_shapes.c - `make check-shapes`: the published Qwen3-VL-2B shapes
 * against transformers' golden (issue 3).
 *
 *   tests/check_shapes -m MODEL_DIR -g GOLDEN_DIR [-t THREADS] [-k f32|f16]
 *
 * MODEL_DIR is the synthetic shape-qwen3vl-2b checkpoint (`qvl synth`, seed 5,
 * about 4.3 GB); GOLDEN_DIR holds shape-qwen3vl-2b.safetensors and
 * goldens.json.  Neither fits in tests/data, so this is a program of its own,
 * run on demand, not a suite of `make check`.  It checks, with the golden
 * input ids and pixel values as inputs:
 *   - the image case's mRoPE position ids exactly, and every golden tensor
 *     (vision.block_in0, vision.merged, vision.deepstack.<j>, layer_out.<i>,
 *     final_norm_*, logits_last) within 1e-3 relative L2 error;
 *   - the 5 greedy tokens identical (vision special ids masked, no EOS stop)
 *     with the top-5 logits within 5e-3 at every step;
 *   - the multi-turn case: the same cache continues with the first answer and
 *     the follow-up question, and must give the golden's 5 tokens, which
 *     transformers computed over the whole conversation from scratch.
 * The checks run in that order on one cache (prefill, decode, second turn),
 * so the 2B prefill runs once; -k f16 makes it an f16 KV cache (qvl
 * --kv-cache f16): the same checks, with the looser logit limit below.  It prints every comparison, then the wall time
 * and the peak RSS, and exits 0 when everything matches, 1 otherwise.
 *
 * The approach is tests/test_engine.c's (a probe records the reported
 * tensors; greedy with the suppressed ids masked), written as a plain
 * program: the model is too large to load once per Check test. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "common.h"
#include "decoder.h"
#include "mrope.h"
#include "probe.h"
#include "safetensors.h"
#include "threadpool.h"
#include "vision.h"
#include "weights.h"

#define MODEL_KEY "shape-qwen3vl-2b"
#define CASE "image"
#define TENSOR_TOL 1e-3
#define LOGIT_TOL 5e-3
/* With -k f16 each key and value is rounded to a half: measured on this
 * checkpoint, the top-5 logits move up to 8.3e-3 off the golden (the same
 * greedy tokens, tensors within 3.3e-4): the limit is about twice that. */
#define F16_LOGIT_TOL 2e-2
#define MAX_RECORDS 128

static int failures;
static qvl_dtype kv_type = QVL_F32;   /* -k: the KV cache's element type */

static void verdict(int ok, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void verdict(int ok, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    printf("%s ", ok ? "ok  " : "FAIL");
    vprintf(fmt, ap);
    printf("\n");
    fflush(stdout);
    va_end(ap);
    if (!ok) failures++;
}

/* A fatal setup problem (missing file, bad golden): message and exit 2. */
static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("check_shapes: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(2);
}

/* ---------------------------------------------------------------- the golden */

typedef struct {
    cJSON *root;
    const cJSON *model;          /* goldens.json[MODEL_KEY] */
    const cJSON *suppressed;     /* meta.suppressed_ids */
    st_set *st;                  /* shape-qwen3vl-2b.safetensors */
} golden;

static const cJSON *jget(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v) die("goldens.json: missing key '%s'", key);
    return v;
}

static int *json_ints(const cJSON *arr, int *n) {
    *n = cJSON_GetArraySize(arr);
    int *v = malloc(sizeof(int) * (size_t)(*n + 1));
    if (!v) die("out of memory");
    for (int i = 0; i < *n; i++) v[i] = cJSON_GetArrayItem(arr, i)->valueint;
    return v;
}

static void golden_open(const char *dir, golden *g) {
    char path[4096], err[QVL_ERR_MAX] = "";
    snprintf(path, sizeof path, "%s/goldens.json", dir);
    char *text = qvl_read_file(path, NULL, err);
    if (!text) die("%s", err);
    g->root = cJSON_Parse(text);
    free(text);
    if (!g->root) die("%s: not valid JSON", path);
    g->model = jget(g->root, MODEL_KEY);
    g->suppressed = jget(jget(g->root, "meta"), "suppressed_ids");
    snprintf(path, sizeof path, "%s/" MODEL_KEY ".safetensors", dir);
    if (!(g->st = st_open_file(path, err))) die("%s", err);
}

static void golden_close(golden *g) {
    st_close(g->st);
    cJSON_Delete(g->root);
}

static const st_tensor *golden_tensor(const golden *g, const char *what) {
    char name[256];
    snprintf(name, sizeof name, CASE ".%s", what);
    return st_find(g->st, name);
}

/* A float copy of a golden F32 tensor (the mapping need not be aligned). */
static float *golden_f32(const st_tensor *t) {
    if (t->dtype != QVL_F32) die("golden %s is %s, expected F32", t->name, qvl_dtype_name(t->dtype));
    float *v = malloc(sizeof(float) * (size_t)t->numel);
    if (!v) die("out of memory");
    memcpy(v, t->data, sizeof(float) * (size_t)t->numel);
    return v;
}

/* ---------------------------------------------------------------- probe recorder */

/* Keeps a copy of every reported tensor the golden also holds. */
typedef struct {
    const golden *g;
    struct { char name[64]; float *data; int rows, cols; } items[MAX_RECORDS];
    int n;
} recorder;

static void record(void *ctx, const char *name, const float *data, int rows, int cols) {
    recorder *r = ctx;
    if (!golden_tensor(r->g, name)) return;
    if (r->n == MAX_RECORDS) die("more than %d probed tensors", MAX_RECORDS);
    size_t count = (size_t)rows * (size_t)cols;
    float *copy = malloc(sizeof(float) * (count ? count : 1));
    if (!copy) die("out of memory");
    memcpy(copy, data, sizeof(float) * count);
    snprintf(r->items[r->n].name, sizeof r->items[r->n].name, "%s", name);
    r->items[r->n].data = copy;
    r->items[r->n].rows = rows;
    r->items[r->n].cols = cols;
    r->n++;
}

static void recorder_free(recorder *r) {
    for (int i = 0; i < r->n; i++) free(r->items[i].data);
    r->n = 0;
}

static double rel_l2(const float *a, const float *ref, size_t n) {
    double num = 0, den = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - ref[i];
        num += d * d;
        den += (double)ref[i] * ref[i];
    }
    return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* Every golden tensor of the case (but the inputs) was reported and matches. */
static void check_tensors(const golden *g, const recorder *r) {
    size_t prefix = strlen(CASE) + 1;
    int compared = 0;
    for (size_t i = 0; i < st_count(g->st); i++) {
        const st_tensor *t = st_at(g->st, i);
        if (strncmp(t->name, CASE ".", prefix)) continue;
        const char *what = t->name + prefix;
        if (!strcmp(what, "pixel_values") || !strcmp(what, "position_ids")) continue;
        int k = 0;
        while (k < r->n && strcmp(r->items[k].name, what)) k++;
        if (k == r->n) { verdict(0, "%-28s the engine reported no such tensor", what); continue; }
        if ((int64_t)r->items[k].rows * r->items[k].cols != t->numel) {
            verdict(0, "%-28s %d x %d values, golden %lld", what, r->items[k].rows, r->items[k].cols,
                    (long long)t->numel);
            continue;
        }
        float *ref = golden_f32(t);
        double e = rel_l2(r->items[k].data, ref, (size_t)t->numel);
        free(ref);
        verdict(e < TENSOR_TOL, "%-28s relative L2 %.3g (limit %g)", what, e, TENSOR_TOL);
        compared++;
    }
    verdict(compared >= 6, "%d golden tensors compared", compared);
}

/* ---------------------------------------------------------------- greedy decoding */

static int suppressed(const golden *g, int id) {
    for (int k = 0; k < cJSON_GetArraySize(g->suppressed); k++)
        if (cJSON_GetArrayItem(g->suppressed, k)->valueint == id) return 1;
    return 0;
}

static int greedy_pick(const golden *g, const float *logits, int vocab) {
    int best = -1;
    for (int i = 0; i < vocab; i++)
        if (!suppressed(g, i) && (best < 0 || logits[i] > logits[best])) best = i;
    return best;
}

/* The 5 largest logits, descending. */
static void top5(const float *logits, int vocab, float top[5]) {
    int n = 0;
    for (int i = 0; i < vocab; i++) {
        float v = logits[i];
        if (n == 5 && v <= top[4]) continue;
        int j = n < 5 ? n++ : 4;
        while (j > 0 && top[j - 1] < v) { top[j] = top[j - 1]; j--; }
        top[j] = v;
    }
}

/* One step against the golden: the top-5 logits (by id and by rank) and the
 * chosen id. */
static void check_step(const golden *g, const float *logits, int vocab, const cJSON *step, int want,
                      const char *what, int s) {
    const cJSON *ids = jget(step, "top_ids"), *vals = jget(step, "top_logits");
    float mine[5];
    top5(logits, vocab, mine);
    double worst = 0;
    for (int k = 0; k < 5; k++) {
        int id = cJSON_GetArrayItem(ids, k)->valueint;
        double v = cJSON_GetArrayItem(vals, k)->valuedouble;
        if (id < 0 || id >= vocab) die("golden top id %d outside the vocabulary", id);
        worst = fmax(worst, fabs(logits[id] - v));
        worst = fmax(worst, fabs(mine[k] - v));
    }
    int got = greedy_pick(g, logits, vocab);
    double tol = kv_type == QVL_F16 ? F16_LOGIT_TOL : LOGIT_TOL;
    verdict(got == want && worst < tol, "%s step %d: token %d (golden %d), top-5 logits within %.2g (limit %g)",
            what, s, got, want, worst, tol);
}

/* Decodes the golden's greedy sequence from `logits` (the prompt's last
 * logits), checking every step.  The last token is left unfed. */
static void check_greedy(const golden *g, qvl_cache *c, float *logits, int vocab, const cJSON *greedy_ids,
                         const cJSON *steps, const char *what) {
    char err[QVL_ERR_MAX] = "";
    int n = cJSON_GetArraySize(greedy_ids);
    if (cJSON_GetArraySize(steps) != n) die("%s: %d greedy ids but %d steps", what, n, cJSON_GetArraySize(steps));
    for (int s = 0; s < n; s++) {
        int want = cJSON_GetArrayItem(greedy_ids, s)->valueint;
        check_step(g, logits, vocab, cJSON_GetArrayItem(steps, s), want, what, s);
        /* The golden's token goes in, so that one wrong step does not derail the rest. */
        if (s + 1 < n && decoder_step(c, want, logits, err)) die("%s: %s", what, err);
    }
}

/* ---------------------------------------------------------------- the image case */

typedef struct {
    int n, *ids;
    qvl_grid grid;               /* patch grid */
    qvl_vision_out vo;
    qvl_image_input image;
} case_input;

static void case_load(const qvl_model *m, const golden *g, const qvl_probe *probe, case_input *ci) {
    const cJSON *c = jget(jget(g->model, "cases"), CASE);
    char err[QVL_ERR_MAX] = "";
    memset(ci, 0, sizeof *ci);
    ci->ids = json_ints(jget(c, "input_ids"), &ci->n);
    const cJSON *grids = jget(c, "image_grid_thw");
    if (cJSON_GetArraySize(grids) != 1) die("case " CASE ": expected one image");
    int k, *v = json_ints(cJSON_GetArrayItem(grids, 0), &k);
    if (k != 3) die("case " CASE ": image_grid_thw entries need 3 numbers");
    ci->grid = (qvl_grid){ v[0], v[1], v[2] };
    free(v);
    const st_tensor *pv = golden_tensor(g, "pixel_values");
    if (!pv || pv->ndim != 2) die("golden has no 2-D " CASE ".pixel_values");
    if (pv->shape[1] != m->vision.patch.in)
        die("golden pixel rows have %lld values, the model's patches %d", (long long)pv->shape[1], m->vision.patch.in);
    float *pixels = golden_f32(pv);
    double t0 = qvl_now();
    int rc = vision_encode(m, pixels, (int)pv->shape[0], &ci->grid, 1, probe, &ci->vo, err);
    free(pixels);
    if (rc) die("vision_encode: %s", err);
    printf("     vision encoder: %lld patches in %.2f s\n", (long long)pv->shape[0], qvl_now() - t0);
    ci->image.grid = vision_llm_grid(m, ci->grid);
    ci->image.embeds = ci->vo.merged;
    for (int j = 0; j < ci->vo.n_deepstack; j++) ci->image.deepstack[j] = ci->vo.deepstack[j];
}

static void case_free(case_input *ci) {
    free(ci->ids);
    vision_out_free(&ci->vo);
}

/* mRoPE positions of the prompt, exactly. */
static void check_positions(const qvl_model *m, const golden *g, const case_input *ci) {
    const st_tensor *gp = golden_tensor(g, "position_ids");
    if (!gp) { verdict(0, "position_ids: not in the golden"); return; }
    if (gp->dtype != QVL_I64 || gp->numel != 3LL * ci->n) die("golden position_ids: expected I64 [3, %d]", ci->n);
    char err[QVL_ERR_MAX] = "";
    int *pos = malloc(sizeof(int) * 3 * (size_t)ci->n), next, bad = -1;
    if (!pos) die("out of memory");
    if (mrope_positions(ci->ids, ci->n, m->cfg.image_token_id, &ci->image.grid, 1, 0, pos, &next, err))
        die("mrope_positions: %s", err);
    for (int i = 0; i < 3 * ci->n && bad < 0; i++) {
        int64_t want;
        memcpy(&want, (const char *)gp->data + 8 * (size_t)i, 8);
        if (pos[i] != want) bad = i;
    }
    if (bad < 0) verdict(1, "%-28s identical (%d tokens)", "position_ids", ci->n);
    else verdict(0, "%-28s differ first at row %d, token %d", "position_ids", bad / ci->n, bad % ci->n);
    free(pos);
}

/* ---------------------------------------------------------------- the run */

static long long peak_rss_kb(void) {
    struct rusage ru;
    return getrusage(RUSAGE_SELF, &ru) ? -1 : (long long)ru.ru_maxrss;
}

static void run(const qvl_model *m, const golden *g) {
    char err[QVL_ERR_MAX] = "";
    int vocab = m->text.lm_head.out;
    recorder rec = { .g = g };
    qvl_probe probe = { record, &rec };
    case_input ci;
    const cJSON *c = jget(jget(g->model, "cases"), CASE), *mt = jget(g->model, "multiturn");
    const char *first = cJSON_GetStringValue(jget(mt, "first_case"));
    if (!first || strcmp(first, CASE))
        die("multiturn.first_case is not '" CASE "'");

    /* Turn 1: the prompt, with every intermediate tensor compared. */
    case_load(m, g, &probe, &ci);
    check_positions(m, g, &ci);
    int nf, nfull, ng;
    int *follow = json_ints(jget(mt, "follow_ids"), &nf);
    int *full = json_ints(jget(mt, "full_input_ids"), &nfull);
    int *gen = json_ints(jget(c, "greedy_ids"), &ng);
    if (ng < 1 || ci.n + ng + nf != nfull) die("multiturn: full_input_ids is not prompt + answer + follow-up");
    for (int i = 0; i < nfull; i++) {
        int want = i < ci.n ? ci.ids[i] : i < ci.n + ng ? gen[i - ci.n] : follow[i - ci.n - ng];
        if (full[i] != want) die("multiturn: full_input_ids[%d] = %d is not prompt + answer + follow-up", i, full[i]);
    }
    qvl_cache *cache = cache_new_as(m, nfull + 8, kv_type, err);
    float *logits = malloc(sizeof(float) * (size_t)vocab);
    if (!cache || !logits) die("%s", cache ? "out of memory" : err);
    double t0 = qvl_now();
    if (decoder_forward(cache, ci.ids, ci.n, &ci.image, 1, logits, 0, &probe, err)) die("prefill: %s", err);
    printf("     prefill: %d tokens in %.2f s\n", ci.n, qvl_now() - t0);
    check_tensors(g, &rec);
    recorder_free(&rec);

    /* Its greedy answer, then turn 2 on the same cache.  The answer's last
     * token has not been fed yet: it goes in with the follow-up. */
    check_greedy(g, cache, logits, vocab, jget(c, "greedy_ids"), jget(c, "greedy_steps"), "turn 1");
    int *turn2 = malloc(sizeof(int) * (size_t)(nf + 1));
    if (!turn2) die("out of memory");
    turn2[0] = gen[ng - 1];
    memcpy(turn2 + 1, follow, sizeof(int) * (size_t)nf);
    if (decoder_forward(cache, turn2, nf + 1, NULL, 0, logits, 0, NULL, err)) die("turn 2: %s", err);
    verdict(cache_len(cache) == nfull, "turn 2: the cache holds %d tokens (the conversation has %d)",
            cache_len(cache), nfull);
    check_greedy(g, cache, logits, vocab, jget(mt, "greedy_ids"), jget(mt, "greedy_steps"), "turn 2");

    free(turn2); free(follow); free(full); free(gen); free(logits);
    cache_free(cache);
    case_free(&ci);
}

static void usage(FILE *f) {
    fprintf(f, "usage: check_shapes -m MODEL_DIR -g GOLDEN_DIR [-t THREADS] [-k f32|f16]\n"
               "Checks the " MODEL_KEY " checkpoint in MODEL_DIR against GOLDEN_DIR/" MODEL_KEY
               ".safetensors and GOLDEN_DIR/goldens.json.\n");
}

int main(int argc, char **argv) {
    const char *model_dir = NULL, *golden_dir = NULL;
    int threads = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) { usage(stdout); return 0; }
        if (i + 1 >= argc) { fprintf(stderr, "check_shapes: %s needs a value\n", argv[i]); usage(stderr); return 2; }
        const char *v = argv[++i];
        if (!strcmp(argv[i - 1], "-m")) model_dir = v;
        else if (!strcmp(argv[i - 1], "-g")) golden_dir = v;
        else if (!strcmp(argv[i - 1], "-t")) {
            char *end;
            threads = (int)strtol(v, &end, 10);
            if (!*v || *end || threads < 1) { fprintf(stderr, "check_shapes: -t '%s': expected a positive number\n", v); return 2; }
        } else if (!strcmp(argv[i - 1], "-k")) {
            if (strcmp(v, "f32") && strcmp(v, "f16")) { fprintf(stderr, "check_shapes: -k '%s': expected f32 or f16\n", v); return 2; }
            kv_type = strcmp(v, "f16") ? QVL_F32 : QVL_F16;
        } else { fprintf(stderr, "check_shapes: unknown option '%s'\n", argv[i - 1]); usage(stderr); return 2; }
    }
    if (!model_dir || !golden_dir) { usage(stderr); return 2; }

    double t0 = qvl_now();
    int nthreads = pool_set_threads(threads);
    golden g = {0};
    golden_open(golden_dir, &g);
    char err[QVL_ERR_MAX] = "";
    qvl_source src = source_dir(model_dir);
    qvl_model *m = model_load(&src, err);
    if (!m) die("%s", err);
    printf("check_shapes: %s against %s, %d threads, %s KV cache\n", model_dir, golden_dir, nthreads,
           kv_type == QVL_F16 ? "f16" : "f32");
    run(m, &g);
    model_free(m);
    golden_close(&g);
    pool_shutdown();
    printf("%s: %d failure%s; %.1f s wall, peak RSS %.0f MiB\n", failures ? "FAIL" : "PASS", failures,
           failures == 1 ? "" : "s", qvl_now() - t0, peak_rss_kb() / 1024.0);
    return failures ? 1 : 0;
}
