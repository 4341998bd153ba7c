/* synth.c - write a synthetic checkpoint per the recipe in SYNTH.md.
 *
 * value(name, i) = c + w * (2u - 1), u from splitmix64 over a key that hashes
 * the tensor name (FNV-1a 64) with the seed; (c, w) depend on the tensor's
 * role (bias, norm gain, embedding, or fan-in scaled weight).  The output must
 * be byte-identical to the Python reference, so the arithmetic is done in
 * double exactly as numpy does and rounded to bf16 (nearest, ties to even). */
#include "synth.h"
#include "common.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static uint64_t fnv1a64(const char *s) {
    uint64_t h = 0xCBF29CE484222325ull;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 0x100000001B3ull;
    }
    return h;
}

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

/* Centre and half-width of the uniform distribution a tensor's values follow. */
static void tensor_role(const char *name, const int64_t *shape, int ndim, double *c, double *w) {
    *c = 0;
    if (ends_with(name, ".bias")) { *w = 0.1; return; }
    if (ends_with(name, ".weight")) {
        /* the path component before ".weight" */
        size_t len = strlen(name) - strlen(".weight");
        const char *start = name;
        for (size_t i = 0; i < len; i++)
            if (name[i] == '.') start = name + i + 1;
        if (memmem(start, (size_t)(name + len - start), "norm", 4)) { *c = 1; *w = 0.2; return; }
    }
    if (ends_with(name, "embed_tokens.weight") || ends_with(name, "pos_embed.weight")) { *w = 0.5; return; }
    double fan_in = 1;
    if (ends_with(name, "experts.gate_up_proj") || ends_with(name, "experts.down_proj"))
        fan_in = (double)shape[1];
    else
        for (int d = 1; d < ndim; d++) fan_in *= (double)shape[d];
    *w = sqrt(3.0 / fan_in);
}

void synth_values_bf16(const char *name, const int64_t *shape, int ndim, uint64_t seed,
                       int64_t start, int64_t n, uint16_t *out) {
    uint64_t key = fnv1a64(name) ^ seed;
    double c, w;
    tensor_role(name, shape, ndim, &c, &w);
    for (int64_t i = 0; i < n; i++) {
        uint64_t z = key + (uint64_t)(start + i + 1) * 0x9E3779B97F4A7C15ull;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z = z ^ (z >> 31);
        double u = (double)(z >> 40) * (1.0 / 16777216.0);
        out[i] = qvl_f32_to_bf16((float)(c + w * (2.0 * u - 1.0)));
    }
}

typedef struct { st_spec *v; int n, cap; } spec_list;

static void add(spec_list *l, int ndim, const int64_t *shape, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void add(spec_list *l, int ndim, const int64_t *shape, const char *fmt, ...) {
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 256;
        st_spec *grown = realloc(l->v, (size_t)l->cap * sizeof *grown);
        if (!grown) abort(); /* a few hundred small entries */
        l->v = grown;
    }
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    st_spec *s = &l->v[l->n++];
    memset(s, 0, sizeof *s);
    s->name = strdup(name);
    s->dtype = QVL_BF16;
    s->ndim = ndim;
    memcpy(s->shape, shape, (size_t)ndim * sizeof *shape);
}

#define SHAPE(...) (sizeof((int64_t[]){ __VA_ARGS__ }) / sizeof(int64_t)), (int64_t[]){ __VA_ARGS__ }

static void add_merger(spec_list *l, const char *prefix, int64_t norm_dim, int64_t mh, int64_t out) {
    add(l, SHAPE(norm_dim), "%snorm.weight", prefix);
    add(l, SHAPE(norm_dim), "%snorm.bias", prefix);
    add(l, SHAPE(mh, mh), "%slinear_fc1.weight", prefix);
    add(l, SHAPE(mh), "%slinear_fc1.bias", prefix);
    add(l, SHAPE(out, mh), "%slinear_fc2.weight", prefix);
    add(l, SHAPE(out), "%slinear_fc2.bias", prefix);
}

static int cmp_spec(const void *a, const void *b) {
    return strcmp(((const st_spec *)a)->name, ((const st_spec *)b)->name);
}

int synth_tensor_specs(const qvl_config *c, st_spec **specs) {
    spec_list l = { 0 };
    const qvl_vision_config *v = &c->vision;
    const qvl_text_config *t = &c->text;
    int64_t vh = v->hidden, vi = v->intermediate, mh = vh * v->merge * v->merge;
    add(&l, SHAPE(vh, v->in_channels, v->temporal_patch, v->patch, v->patch), "model.visual.patch_embed.proj.weight");
    add(&l, SHAPE(vh), "model.visual.patch_embed.proj.bias");
    add(&l, SHAPE(v->num_pos_embed, vh), "model.visual.pos_embed.weight");
    for (int i = 0; i < v->depth; i++) {
        const char *p = "model.visual.blocks";
        add(&l, SHAPE(vh), "%s.%d.norm1.weight", p, i);
        add(&l, SHAPE(vh), "%s.%d.norm1.bias", p, i);
        add(&l, SHAPE(vh), "%s.%d.norm2.weight", p, i);
        add(&l, SHAPE(vh), "%s.%d.norm2.bias", p, i);
        add(&l, SHAPE(3 * vh, vh), "%s.%d.attn.qkv.weight", p, i);
        add(&l, SHAPE(3 * vh), "%s.%d.attn.qkv.bias", p, i);
        add(&l, SHAPE(vh, vh), "%s.%d.attn.proj.weight", p, i);
        add(&l, SHAPE(vh), "%s.%d.attn.proj.bias", p, i);
        add(&l, SHAPE(vi, vh), "%s.%d.mlp.linear_fc1.weight", p, i);
        add(&l, SHAPE(vi), "%s.%d.mlp.linear_fc1.bias", p, i);
        add(&l, SHAPE(vh, vi), "%s.%d.mlp.linear_fc2.weight", p, i);
        add(&l, SHAPE(vh), "%s.%d.mlp.linear_fc2.bias", p, i);
    }
    add_merger(&l, "model.visual.merger.", vh, mh, v->out_hidden);
    for (int j = 0; j < v->n_deepstack; j++) {
        char prefix[96];
        snprintf(prefix, sizeof prefix, "model.visual.deepstack_merger_list.%d.", j);
        add_merger(&l, prefix, mh, mh, v->out_hidden);
    }
    int64_t H = t->hidden, hd = t->head_dim;
    const char *p = "model.language_model";
    add(&l, SHAPE(t->vocab, H), "%s.embed_tokens.weight", p);
    for (int i = 0; i < t->layers; i++) {
        add(&l, SHAPE(H), "%s.layers.%d.input_layernorm.weight", p, i);
        add(&l, SHAPE(H), "%s.layers.%d.post_attention_layernorm.weight", p, i);
        add(&l, SHAPE(t->heads * hd, H), "%s.layers.%d.self_attn.q_proj.weight", p, i);
        add(&l, SHAPE(t->kv_heads * hd, H), "%s.layers.%d.self_attn.k_proj.weight", p, i);
        add(&l, SHAPE(t->kv_heads * hd, H), "%s.layers.%d.self_attn.v_proj.weight", p, i);
        add(&l, SHAPE(H, t->heads * hd), "%s.layers.%d.self_attn.o_proj.weight", p, i);
        add(&l, SHAPE(hd), "%s.layers.%d.self_attn.q_norm.weight", p, i);
        add(&l, SHAPE(hd), "%s.layers.%d.self_attn.k_norm.weight", p, i);
        if (config_layer_is_sparse(c, i)) {
            int64_t E = t->num_experts, I = t->moe_intermediate;
            add(&l, SHAPE(E, H), "%s.layers.%d.mlp.gate.weight", p, i);
            add(&l, SHAPE(E, H, 2 * I), "%s.layers.%d.mlp.experts.gate_up_proj", p, i);
            add(&l, SHAPE(E, I, H), "%s.layers.%d.mlp.experts.down_proj", p, i);
        } else {
            int64_t I = t->intermediate;
            add(&l, SHAPE(I, H), "%s.layers.%d.mlp.gate_proj.weight", p, i);
            add(&l, SHAPE(I, H), "%s.layers.%d.mlp.up_proj.weight", p, i);
            add(&l, SHAPE(H, I), "%s.layers.%d.mlp.down_proj.weight", p, i);
        }
    }
    add(&l, SHAPE(H), "%s.norm.weight", p);
    if (!t->tie_embeddings) add(&l, SHAPE(t->vocab, H), "lm_head.weight");
    qsort(l.v, (size_t)l.n, sizeof *l.v, cmp_spec);
    *specs = l.v;
    return l.n;
}

void synth_free_specs(st_spec *specs, int n) {
    for (int i = 0; i < n; i++) free((char *)specs[i].name);
    free(specs);
}

/* Generation of one chunk is split across threads by element range. */
typedef struct {
    const st_spec *spec;
    uint64_t seed;
    int64_t start, n;
    uint16_t *out;
} chunk_job;

static void *chunk_worker(void *arg) {
    chunk_job *j = arg;
    synth_values_bf16(j->spec->name, j->spec->shape, j->spec->ndim, j->seed, j->start, j->n, j->out);
    return NULL;
}

static void fill_parallel(const st_spec *s, uint64_t seed, int64_t start, int64_t n, uint16_t *out, int threads) {
    if (threads <= 1 || n < 65536) {
        synth_values_bf16(s->name, s->shape, s->ndim, seed, start, n, out);
        return;
    }
    pthread_t tid[16];
    chunk_job jobs[16];
    if (threads > 16) threads = 16;
    int64_t per = (n + threads - 1) / threads;
    int started = 0;
    for (int k = 0; k < threads; k++) {
        int64_t a = k * per, b = a + per < n ? a + per : n;
        if (a >= b) break;
        jobs[k] = (chunk_job){ s, seed, start + a, b - a, out + a };
        if (pthread_create(&tid[k], NULL, chunk_worker, &jobs[k]) != 0) chunk_worker(&jobs[k]);
        else started |= 1 << k;
    }
    for (int k = 0; k < threads; k++)
        if (started & (1 << k)) pthread_join(tid[k], NULL);
}

static int copy_file(const char *from, const char *to, char *err) {
    size_t len;
    char *buf = qvl_read_file(from, &len, err);
    if (!buf) return -1;
    FILE *f = fopen(to, "wb");
    int ok = f && fwrite(buf, 1, len, f) == len;
    if (f && fclose(f) != 0) ok = 0;
    free(buf);
    if (!ok) qvl_seterr(err, "%s: cannot write: %s", to, strerror(errno));
    return ok ? 0 : -1;
}

int synth_write(const char *config_path, uint64_t seed, const char *outdir, int threads, char *err) {
    size_t len;
    char *json = qvl_read_file(config_path, &len, err);
    if (!json) return -1;
    qvl_config cfg;
    int rc = config_parse(json, config_path, &cfg, err);
    free(json);
    if (rc) return -1;
    if (mkdir(outdir, 0755) != 0 && errno != EEXIST) {
        qvl_seterr(err, "%s: cannot create directory: %s", outdir, strerror(errno));
        return -1;
    }
    char path[4096], tmp[4200];
    snprintf(path, sizeof path, "%s/config.json", outdir);
    if (copy_file(config_path, path, err)) return -1;
    char pre[4096];
    snprintf(pre, sizeof pre, "%s", config_path);
    char *slash = strrchr(pre, '/');
    snprintf(slash ? slash + 1 : pre, sizeof pre - (size_t)(slash ? slash + 1 - pre : 0), "preprocessor_config.json");
    if (access(pre, R_OK) == 0) {
        snprintf(path, sizeof path, "%s/preprocessor_config.json", outdir);
        if (copy_file(pre, path, err)) return -1;
    }

    st_spec *specs;
    int n = synth_tensor_specs(&cfg, &specs);
    snprintf(path, sizeof path, "%s/model.safetensors", outdir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        qvl_seterr(err, "%s: cannot create: %s", tmp, strerror(errno));
        synth_free_specs(specs, n);
        return -1;
    }
    rc = st_write_header(f, specs, (size_t)n, "{\"format\":\"pt\"}", err);
    const int64_t CH = 1 << 22;
    uint16_t *buf = rc ? NULL : malloc((size_t)CH * sizeof *buf);
    if (!rc && !buf) { qvl_seterr(err, "out of memory"); rc = -1; }
    if (threads <= 0) threads = 2;
    for (int i = 0; i < n && !rc; i++) {
        int64_t numel = 1;
        for (int d = 0; d < specs[i].ndim; d++) numel *= specs[i].shape[d];
        for (int64_t s = 0; s < numel && !rc; s += CH) {
            int64_t m = numel - s < CH ? numel - s : CH;
            fill_parallel(&specs[i], seed, s, m, buf, threads);
            if (fwrite(buf, 2, (size_t)m, f) != (size_t)m) {
                qvl_seterr(err, "%s: write error: %s", tmp, strerror(errno));
                rc = -1;
            }
        }
    }
    free(buf);
    if (fclose(f) != 0 && !rc) {
        qvl_seterr(err, "%s: write error: %s", tmp, strerror(errno));
        rc = -1;
    }
    synth_free_specs(specs, n);
    if (!rc && rename(tmp, path) != 0) {
        qvl_seterr(err, "%s: cannot rename: %s", path, strerror(errno));
        rc = -1;
    }
    if (rc) unlink(tmp);
    return rc;
}
