/* tool_dump.c - `qvl dump`: run one prompt and write the intermediate tensors.
 *
 *   qvl dump -m MODEL_DIR -o OUT.safetensors --ids 1,2,3
 *            [--pixel-values FILE.safetensors:TENSOR]... [--grid T,H,W]... [-t N]
 *
 * The output holds, as float32 (ids as int64), the tensors of the reference
 * goldens under the same names: input_ids, pixel_values, position_ids [3, T],
 * vision.patch_embed, vision.block_in0, vision.block_out.<i>, vision.merged,
 * vision.deepstack.<j>, layer_out.<i>, final_norm_in, final_norm_out,
 * logits_last; so a model's numerics can be compared with transformers
 * tensor by tensor.  The pixel values of every --pixel-values are concatenated
 * in order and split into images by the --grid list (patch grids).
 *
 * Without --ids, the prompt comes from a conversation on stdin in the JSONL
 * message format of --jsonl: the system line (if any) and the first user
 * message go through the chat template, the tokenizer (the model directory's
 * tokenizer.json) and the image preprocessor (its preprocessor_config.json,
 * as transformers would use it; --alpha drop reads transparent images as the
 * transformers processor does), then through the same dump_forward(). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "chat.h"
#include "common.h"
#include "image.h"
#include "message.h"
#include "tokenizer.h"
#include "decoder.h"
#include "mrope.h"
#include "safetensors.h"
#include "threadpool.h"
#include "tools.h"
#include "vision.h"
#include "weights.h"

/* ---------------------------------------------------------------- collected tensors */

typedef struct {
    char *name;
    float *data;
    int rows, cols;
} dumped;

typedef struct {
    dumped *items;
    int n, cap;
    int failed;
} collector;

static void collect(void *ctx, const char *name, const float *data, int rows, int cols) {
    collector *c = ctx;
    if (c->failed) return;
    if (c->n == c->cap) {
        int cap = c->cap ? 2 * c->cap : 32;
        dumped *grown = realloc(c->items, sizeof(dumped) * (size_t)cap);
        if (!grown) { c->failed = 1; return; }
        c->items = grown;
        c->cap = cap;
    }
    size_t bytes = sizeof(float) * (size_t)rows * (size_t)cols;
    dumped *d = &c->items[c->n];
    d->name = strdup(name);
    d->data = malloc(bytes ? bytes : 1);
    if (!d->name || !d->data) { free(d->name); free(d->data); c->failed = 1; return; }
    memcpy(d->data, data, bytes);
    d->rows = rows;
    d->cols = cols;
    c->n++;
}

static void collector_free(collector *c) {
    for (int i = 0; i < c->n; i++) { free(c->items[i].name); free(c->items[i].data); }
    free(c->items);
}

/* ---------------------------------------------------------------- writing */

static int write_all(FILE *f, const void *p, size_t n, const char *path, char *err) {
    if (fwrite(p, 1, n, f) != n) { qvl_seterr(err, "%s: write failed: %s", path, strerror(errno)); return -1; }
    return 0;
}

static int write_int64(FILE *f, const int *v, size_t n, const char *path, char *err) {
    for (size_t i = 0; i < n; i++) {
        int64_t x = v[i];
        if (write_all(f, &x, sizeof x, path, err)) return -1;
    }
    return 0;
}

static int write_dump(const char *path, const int *ids, int n, const float *pixels, int n_patches,
                      int patch_dim, const int *pos, const collector *col, char *err) {
    size_t count = 3 + (size_t)col->n;
    st_spec *specs = calloc(count, sizeof *specs);
    if (!specs) { qvl_seterr(err, "out of memory"); return -1; }
    size_t k = 0;
    specs[k++] = (st_spec){ .name = "input_ids", .dtype = QVL_I64, .ndim = 1, .shape = { n } };
    if (n_patches > 0)
        specs[k++] = (st_spec){ .name = "pixel_values", .dtype = QVL_F32, .ndim = 2, .shape = { n_patches, patch_dim } };
    specs[k++] = (st_spec){ .name = "position_ids", .dtype = QVL_I64, .ndim = 2, .shape = { 3, n } };
    for (int i = 0; i < col->n; i++) {
        const dumped *d = &col->items[i];
        if (!strcmp(d->name, "logits_last"))      /* the goldens keep it 1-D: [vocab] */
            specs[k++] = (st_spec){ .name = d->name, .dtype = QVL_F32, .ndim = 1, .shape = { d->cols } };
        else
            specs[k++] = (st_spec){ .name = d->name, .dtype = QVL_F32, .ndim = 2, .shape = { d->rows, d->cols } };
    }
    FILE *f = fopen(path, "wb");
    if (!f) { qvl_seterr(err, "%s: cannot create: %s", path, strerror(errno)); free(specs); return -1; }
    int rc = -1;
    if (st_write_header(f, specs, k, NULL, err)) goto done;
    if (write_int64(f, ids, (size_t)n, path, err)) goto done;
    if (n_patches > 0 && write_all(f, pixels, sizeof(float) * (size_t)n_patches * patch_dim, path, err)) goto done;
    if (write_int64(f, pos, 3 * (size_t)n, path, err)) goto done;
    for (int i = 0; i < col->n; i++) {
        const dumped *d = &col->items[i];
        if (write_all(f, d->data, sizeof(float) * (size_t)d->rows * d->cols, path, err)) goto done;
    }
    rc = 0;
done:
    if (fclose(f) != 0 && rc == 0) { qvl_seterr(err, "%s: write failed: %s", path, strerror(errno)); rc = -1; }
    free(specs);
    return rc;
}

/* ---------------------------------------------------------------- the run */

/* Runs ids (+ images: pixel rows and patch grids) through the model from an
 * empty cache and writes every probed tensor to out_path. */
static int dump_forward(const qvl_model *m, const int *ids, int n, const float *pixels, int n_patches,
                        const qvl_grid *grids, int n_images, const char *out_path, char *err) {
    collector col = {0};
    qvl_probe probe = { collect, &col };
    qvl_vision_out vo = {0};
    qvl_image_input *images = NULL;
    qvl_grid *llm = NULL;
    qvl_cache *cache = NULL;
    int *pos = NULL, rc = -1, next;
    if (n < 1) { qvl_seterr(err, "dump: no token ids"); return -1; }

    if (n_images > 0) {
        if (vision_encode(m, pixels, n_patches, grids, n_images, &probe, &vo, err)) goto done;
        images = calloc((size_t)n_images, sizeof *images);
        llm = calloc((size_t)n_images, sizeof *llm);
        if (!images || !llm) { qvl_seterr(err, "out of memory"); goto done; }
        for (int i = 0, row = 0; i < n_images; i++) {
            llm[i] = vision_llm_grid(m, grids[i]);
            images[i].grid = llm[i];
            images[i].embeds = vo.merged + (size_t)row * vo.dim;
            for (int j = 0; j < vo.n_deepstack; j++) images[i].deepstack[j] = vo.deepstack[j] + (size_t)row * vo.dim;
            row += llm[i].t * llm[i].h * llm[i].w;
        }
    }
    pos = malloc(sizeof(int) * 3 * (size_t)n);
    if (!pos) { qvl_seterr(err, "out of memory"); goto done; }
    if (mrope_positions(ids, n, m->cfg.image_token_id, llm, n_images, 0, pos, &next, err)) goto done;
    if (!(cache = cache_new(m, n, err))) goto done;
    float *logits = malloc(sizeof(float) * (size_t)m->text.lm_head.out);
    if (!logits) { qvl_seterr(err, "out of memory"); goto done; }
    int frc = decoder_forward(cache, ids, n, images, n_images, logits, 0, &probe, err);
    free(logits);
    if (frc) goto done;
    if (col.failed) { qvl_seterr(err, "out of memory collecting tensors"); goto done; }
    rc = write_dump(out_path, ids, n, pixels, n_patches, m->vision.patch.in, pos, &col, err);
done:
    cache_free(cache);
    free(pos);
    free(images);
    free(llm);
    vision_out_free(&vo);
    collector_free(&col);
    return rc;
}

/* ---------------------------------------------------------------- conversation input */

typedef struct {
    int *ids;
    int n_ids;
    float *pixels;
    int n_patches;
    int patch_dim;
    qvl_grid *grids;
    int n_images;
} prompt_input;

/* Appends one image's patches to the prompt; returns its image-token count. */
static int add_image(prompt_input *p, const qvl_part *part, const qvl_preproc *pre, int alpha_drop, char *err) {
    qvl_image img;
    qvl_alpha alpha = alpha_drop ? QVL_ALPHA_DROP : QVL_ALPHA_WHITE;
    int rc = part->image_path ? image_load_file(part->image_path, alpha, &img, err)
                              : image_load_mem(part->image_data, part->image_size, "data: URL", alpha, &img, err);
    if (rc) return -1;
    qvl_pixels px;
    rc = image_preprocess(&img, pre, &px, err);
    image_free(&img);
    if (rc) return -1;
    float *grown = realloc(p->pixels, sizeof(float) * (size_t)(p->n_patches + px.n_patches) * px.patch_dim);
    qvl_grid *g = realloc(p->grids, sizeof(qvl_grid) * (size_t)(p->n_images + 1));
    if (grown) p->pixels = grown;
    if (g) p->grids = g;
    if (!grown || !g) {
        pixels_free(&px);
        qvl_seterr(err, "out of memory");
        return -1;
    }
    memcpy(p->pixels + (size_t)p->n_patches * px.patch_dim, px.pixels, sizeof(float) * (size_t)px.n_patches * px.patch_dim);
    p->n_patches += px.n_patches;
    p->patch_dim = px.patch_dim;
    p->grids[p->n_images++] = (qvl_grid){ px.grid_t, px.grid_h, px.grid_w };
    int tokens = px.n_patches / (pre->merge * pre->merge);
    pixels_free(&px);
    return tokens;
}

/* The prompt of the first user message of a JSONL conversation read from f. */
static int prompt_from_conversation(const qvl_source *src, FILE *f, int alpha_drop, prompt_input *p, char *err) {
    char line[1 << 16];
    cJSON *sys = NULL, *user = NULL;
    int lineno = 0, rc = -1;
    while (!user && fgets(line, sizeof line, f)) {
        lineno++;
        if (line[strspn(line, " \t\r\n")] == 0) continue;
        cJSON *o = cJSON_Parse(line);
        const char *role = cJSON_GetStringValue(cJSON_GetObjectItem(o, "role"));
        if (!o || !role) {
            qvl_seterr(err, "stdin line %d: not a JSON message with a \"role\"", lineno);
            cJSON_Delete(o);
            goto done;
        }
        if (!strcmp(role, "system") && !sys) sys = o;
        else if (!strcmp(role, "user")) user = o;
        else cJSON_Delete(o);
    }
    if (!user) {
        qvl_seterr(err, "stdin: no user message (give --ids, or a JSONL conversation on stdin)");
        goto done;
    }
    qvl_tokenizer *tok = tok_load_source(src, err);
    if (!tok) goto done;
    chat_format fmt;
    qvl_preproc pre;
    qvl_message m = { 0 };
    chat_part *cp = NULL;
    if (chat_format_load(src, &fmt, err) || preproc_load(src, &pre, err) ||
        message_parse(cJSON_GetObjectItem(user, "content"), &m, err))
        goto free_tok;
    cp = calloc((size_t)m.nparts + 1, sizeof *cp);
    if (!cp) { qvl_seterr(err, "out of memory"); goto free_tok; }
    for (int i = 0; i < m.nparts; i++) {
        cp[i].text = m.parts[i].text;
        if (!m.parts[i].text && (cp[i].image_tokens = add_image(p, &m.parts[i], &pre, alpha_drop, err)) < 0) goto free_tok;
    }
    chat_part sp = { cJSON_GetStringValue(cJSON_GetObjectItem(sys, "content")), 0 };
    chat_msg msgs[2] = { { CHAT_SYSTEM, &sp, 1 }, { CHAT_USER, cp, m.nparts } };
    int has_sys = sys && sp.text;
    tok_ids ids = { 0 };
    if (chat_encode(&fmt, tok, msgs + !has_sys, 1 + has_sys, 1, &ids, err) == 0) {
        p->ids = ids.v;
        p->n_ids = (int)ids.n;
        rc = 0;
    } else {
        tok_ids_free(&ids);
    }
free_tok:
    free(cp);
    message_free(&m);
    tok_free(tok);
done:
    cJSON_Delete(sys);
    cJSON_Delete(user);
    return rc;
}

/* ---------------------------------------------------------------- arguments */

static int parse_ints(const char *s, int **out, int *n, const char *what, char *err) {
    int cap = 16, cnt = 0;
    int *v = malloc(sizeof(int) * (size_t)cap);
    if (!v) { qvl_seterr(err, "out of memory"); return -1; }
    const char *p = s;
    for (;;) {
        char *end;
        errno = 0;
        long x = strtol(p, &end, 10);
        if (end == p || errno || x < -2147483647L || x > 2147483647L || (*end && *end != ',')) {
            qvl_seterr(err, "%s '%s': expected comma-separated integers", what, s);
            free(v);
            return -1;
        }
        if (cnt == cap) {
            int *g = realloc(v, sizeof(int) * (size_t)(cap *= 2));
            if (!g) { free(v); qvl_seterr(err, "out of memory"); return -1; }
            v = g;
        }
        v[cnt++] = (int)x;
        if (!*end) break;
        p = end + 1;
    }
    *out = v;
    *n = cnt;
    return 0;
}

/* Appends the rows of FILE:TENSOR (2-D, f32/f16/bf16) to *pixels as float. */
static int load_pixels(const char *spec, float **pixels, int *rows, int *cols, char *err) {
    const char *colon = strrchr(spec, ':');
    if (!colon || colon == spec || !colon[1]) {
        qvl_seterr(err, "--pixel-values '%s': expected FILE.safetensors:TENSOR", spec);
        return -1;
    }
    char *file = strndup(spec, (size_t)(colon - spec));
    if (!file) { qvl_seterr(err, "out of memory"); return -1; }
    st_set *st = st_open_file(file, err);
    int rc = -1;
    if (!st) goto done;
    const st_tensor *t = st_find(st, colon + 1);
    if (!t) { qvl_seterr(err, "%s: no tensor '%s'", file, colon + 1); goto done; }
    if (t->ndim != 2 || (t->dtype != QVL_F32 && t->dtype != QVL_F16 && t->dtype != QVL_BF16)) {
        qvl_seterr(err, "%s: tensor '%s' must be a 2-D float32/float16/bfloat16 matrix", file, colon + 1);
        goto done;
    }
    if (*rows > 0 && t->shape[1] != *cols) {
        qvl_seterr(err, "%s: tensor '%s' has rows of %lld values, earlier pixel values %d",
                   file, colon + 1, (long long)t->shape[1], *cols);
        goto done;
    }
    size_t old = (size_t)*rows * (size_t)t->shape[1];
    float *grown = realloc(*pixels, sizeof(float) * (old + (size_t)t->numel));
    if (!grown) { qvl_seterr(err, "out of memory"); goto done; }
    *pixels = grown;
    for (int64_t i = 0; i < t->numel; i++) {
        float v;
        if (t->dtype == QVL_F32) memcpy(&v, (const char *)t->data + i * 4, 4);
        else {
            uint16_t h;
            memcpy(&h, (const char *)t->data + i * 2, 2);
            v = t->dtype == QVL_F16 ? qvl_f16_to_f32(h) : qvl_bf16_to_f32(h);
        }
        grown[old + (size_t)i] = v;
    }
    *rows += (int)t->shape[0];
    *cols = (int)t->shape[1];
    rc = 0;
done:
    st_close(st);
    free(file);
    return rc;
}

static void usage(FILE *f) {
    fprintf(f, "usage: qvl dump -m MODEL_DIR -o OUT.safetensors [--alpha white|drop] [-t THREADS] < conversation.jsonl\n"
               "       qvl dump -m MODEL_DIR -o OUT.safetensors --ids 1,2,3\n"
               "                [--pixel-values FILE.safetensors:TENSOR]... [--grid T,H,W]... [-t THREADS]\n");
}

int tool_dump_main(int argc, char **argv) {
    const char *model_dir = NULL, *out = NULL;
    int *ids = NULL, n_ids = 0, n_patches = 0, patch_dim = 0, n_images = 0, threads = 0, status = 1, alpha_drop = 0;
    float *pixels = NULL;
    qvl_grid *grids = NULL;
    qvl_model *m = NULL;
    char err[QVL_ERR_MAX] = "";

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int has_value = i + 1 < argc;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); status = 0; goto done; }
        if (!has_value) { fprintf(stderr, "qvl dump: %s needs a value\n", a); usage(stderr); status = 2; goto done; }
        const char *v = argv[++i];
        if (!strcmp(a, "-m") || !strcmp(a, "--model")) model_dir = v;
        else if (!strcmp(a, "-o") || !strcmp(a, "--output")) out = v;
        else if (!strcmp(a, "--alpha")) {
            if (strcmp(v, "white") && strcmp(v, "drop")) {
                fprintf(stderr, "qvl dump: --alpha: expected white or drop, got '%s'\n", v);
                status = 2;
                goto done;
            }
            alpha_drop = !strcmp(v, "drop");
        }
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            char *end;
            threads = (int)strtol(v, &end, 10);
            if (*end || threads < 1) { fprintf(stderr, "qvl dump: -t '%s': expected a positive number\n", v); status = 2; goto done; }
        } else if (!strcmp(a, "--ids")) {
            free(ids);
            ids = NULL;
            if (parse_ints(v, &ids, &n_ids, "--ids", err)) { status = 2; goto fail; }
        } else if (!strcmp(a, "--pixel-values")) {
            if (load_pixels(v, &pixels, &n_patches, &patch_dim, err)) goto fail;
        } else if (!strcmp(a, "--grid")) {
            int *g = NULL, cnt = 0;
            if (parse_ints(v, &g, &cnt, "--grid", err)) { status = 2; goto fail; }
            if (cnt != 3) { free(g); qvl_seterr(err, "--grid '%s': expected T,H,W", v); status = 2; goto fail; }
            qvl_grid *grown = realloc(grids, sizeof(qvl_grid) * (size_t)(n_images + 1));
            if (!grown) { free(g); qvl_seterr(err, "out of memory"); goto fail; }
            grids = grown;
            grids[n_images++] = (qvl_grid){ g[0], g[1], g[2] };
            free(g);
        } else {
            fprintf(stderr, "qvl dump: unknown option '%s'\n", a);
            usage(stderr);
            status = 2;
            goto done;
        }
    }
    if (!model_dir || !out) {
        fprintf(stderr, "qvl dump: -m and -o are required\n");
        usage(stderr);
        status = 2;
        goto done;
    }
    if ((n_images > 0) != (n_patches > 0)) {
        qvl_seterr(err, "--pixel-values and --grid go together (%d pixel rows, %d grids)", n_patches, n_images);
        status = 2;
        goto fail;
    }
    if (threads) pool_set_threads(threads);
    qvl_source src = source_dir(model_dir);
    if (!ids) {
        if (n_patches || n_images) {
            qvl_seterr(err, "--pixel-values and --grid need --ids (a conversation brings its own images)");
            status = 2;
            goto fail;
        }
        prompt_input p = { 0 };
        if (prompt_from_conversation(&src, stdin, alpha_drop, &p, err)) {
            free(p.pixels);
            free(p.grids);
            goto fail;
        }
        ids = p.ids, n_ids = p.n_ids, pixels = p.pixels, n_patches = p.n_patches, grids = p.grids, n_images = p.n_images;
        patch_dim = p.patch_dim;
    }
    if (!(m = model_load(&src, err))) goto fail;
    if (n_patches > 0 && patch_dim != m->vision.patch.in) {
        qvl_seterr(err, "pixel values have rows of %d values, the model expects %d", patch_dim, m->vision.patch.in);
        goto fail;
    }
    if (dump_forward(m, ids, n_ids, pixels, n_patches, grids, n_images, out, err)) goto fail;
    status = 0;
    goto done;
fail:
    fprintf(stderr, "qvl dump: %s\n", err);
done:
    model_free(m);
    free(ids);
    free(pixels);
    free(grids);
    pool_shutdown();
    return status;
}
