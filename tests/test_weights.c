/* test_weights.c - binding a checkpoint to the model: every dtype, sharded
 * files, the three MoE expert layouts, tied embeddings, and the errors for a
 * missing tensor, a wrong shape and a wrong dtype.  The variants are built
 * here from a synthetic checkpoint. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "synth.h"
#include "testutil.h"
#include "weights.h"

static const char *synth_model(const char *name, int seed) {
    const char *dir = tmp_dir(name);
    char cfg[4096], err[QVL_ERR_MAX];
    snprintf(cfg, sizeof cfg, "%s/models/%s/config.json", TEST_DATA, name);
    ck_assert_msg(synth_write(cfg, (uint64_t)seed, dir, 2, err) == 0, "%s", err);
    return dir;
}

static float elem(const qvl_weight *w, int o, int i) {
    size_t idx = w->in_major ? (size_t)i * w->ld + o : (size_t)o * w->ld + i;
    const char *p = (const char *)w->data + idx * qvl_dtype_size(w->dtype);
    uint16_t h;
    float f;
    switch (w->dtype) {
    case QVL_F32: memcpy(&f, p, 4); return f;
    case QVL_BF16: memcpy(&h, p, 2); return qvl_bf16_to_f32(h);
    default: memcpy(&h, p, 2); return qvl_f16_to_f32(h);
    }
}

static qvl_model *load(const char *dir, char *err) {
    qvl_source src = source_dir(dir);
    return model_load(&src, err);
}

/* ---- writing variants of a checkpoint ---- */

typedef struct {
    st_spec spec;
    void *data;         /* malloc'd bytes */
} out_tensor;

typedef struct {
    out_tensor *t;
    int n, cap;
} out_list;

static void put(out_list *l, const char *name, qvl_dtype dt, int ndim, const int64_t *shape, void *data) {
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 128;
        l->t = realloc(l->t, (size_t)l->cap * sizeof *l->t);
    }
    out_tensor *o = &l->t[l->n++];
    memset(o, 0, sizeof *o);
    o->spec.name = strdup(name);
    o->spec.dtype = dt;
    o->spec.ndim = ndim;
    memcpy(o->spec.shape, shape, (size_t)ndim * sizeof *shape);
    o->data = data;
}

static size_t nbytes(const st_spec *s) {
    size_t n = qvl_dtype_size(s->dtype);
    for (int d = 0; d < s->ndim; d++) n *= (size_t)s->shape[d];
    return n;
}

static void write_list(const char *path, out_list *l, int from, int to) {
    FILE *f = fopen(path, "wb");
    ck_assert(f != NULL);
    st_spec *specs = malloc((size_t)(to - from) * sizeof *specs);
    for (int i = from; i < to; i++) specs[i - from] = l->t[i].spec;
    char err[QVL_ERR_MAX];
    ck_assert(st_write_header(f, specs, (size_t)(to - from), NULL, err) == 0);
    for (int i = from; i < to; i++) fwrite(l->t[i].data, 1, nbytes(&l->t[i].spec), f);
    fclose(f);
    free(specs);
}

static void free_list(out_list *l) {
    for (int i = 0; i < l->n; i++) {
        free((char *)l->t[i].spec.name);
        free(l->t[i].data);
    }
    free(l->t);
}

static void *copy_bytes(const st_tensor *t) {
    void *p = malloc(t->nbytes);
    memcpy(p, t->data, t->nbytes);
    return p;
}

static void copy_config(const char *from, const char *to) {
    char a[4096], b[4096];
    snprintf(a, sizeof a, "%s/config.json", from);
    snprintf(b, sizeof b, "%s/config.json", to);
    size_t len;
    char *s = slurp(a, &len);
    write_file(b, s, len);
    free(s);
}

/* The single-file checkpoint of a model directory. */
static st_set *open_checkpoint(const char *dir) {
    char path[4096], err[QVL_ERR_MAX];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    st_set *s = st_open_file(path, err);
    ck_assert_msg(s != NULL, "%s", err);
    return s;
}

/* A new model directory (tmp, named by tag): the tensors of l and dir's config. Frees l. */
static const char *write_variant(const char *dir, out_list *l, const char *tag) {
    char path[4096];
    const char *out = tmp_dir(tag);
    snprintf(path, sizeof path, "%s/model.safetensors", out);
    write_list(path, l, 0, l->n);
    copy_config(dir, out);
    free_list(l);
    return out;
}

/* Converts every tensor of a bf16 checkpoint to `dt`. */
static const char *convert_dtype(const char *dir, qvl_dtype dt, const char *tag) {
    st_set *s = open_checkpoint(dir);
    out_list l = { 0 };
    for (size_t i = 0; i < st_count(s); i++) {
        const st_tensor *t = st_at(s, i);
        void *data = malloc((size_t)t->numel * qvl_dtype_size(dt));
        for (int64_t k = 0; k < t->numel; k++) {
            float v = qvl_bf16_to_f32(((const uint16_t *)t->data)[k]);
            if (dt == QVL_F32) ((float *)data)[k] = v;
            else ((uint16_t *)data)[k] = qvl_f32_to_f16(v);
        }
        put(&l, t->name, dt, t->ndim, t->shape, data);
    }
    st_close(s);
    return write_variant(dir, &l, tag);
}

START_TEST(binds_dense_model) {
    const char *dir = synth_model("tiny-qwen3vl", 1);
    char err[QVL_ERR_MAX];
    qvl_model *m = load(dir, err);
    ck_assert_msg(m != NULL, "%s", err);
    ck_assert_int_eq(m->text.layers[0].q.out, 128);
    ck_assert_int_eq(m->text.layers[0].q.in, 64);
    ck_assert_int_eq(m->text.layers[3].sparse, 0);
    ck_assert_int_eq(m->vision.patch.in, 3 * 2 * 16 * 16);
    ck_assert_int_eq(m->vision.merger.norm_dim, 48);
    ck_assert_int_eq(m->vision.deepstack[1].norm_dim, 192);
    /* tied: lm_head is the embedding */
    ck_assert_ptr_eq(m->text.lm_head.data, m->text.embed.data);
    /* values follow the recipe: a norm gain lies in [0.8, 1.2] */
    for (int i = 0; i < 64; i++) ck_assert(m->text.final_norm[i] >= 0.8f && m->text.final_norm[i] <= 1.2f);
    float row[64];
    weight_row_f32(&m->text.embed, 151644, row);
    uint16_t expect[64];
    int64_t shape[2] = { 151936, 64 };
    synth_values_bf16("model.language_model.embed_tokens.weight", shape, 2, 1, 151644LL * 64, 64, expect);
    for (int i = 0; i < 64; i++) ck_assert_float_eq(row[i], qvl_bf16_to_f32(expect[i]));
    model_free(m);
}
END_TEST

START_TEST(binds_every_dtype) {
    const char *dir = synth_model("tiny-qwen3vl", 1);
    char err[QVL_ERR_MAX];
    qvl_model *ref = load(dir, err);
    ck_assert(ref);
    const qvl_dtype dts[2] = { QVL_F32, QVL_F16 };
    for (int k = 0; k < 2; k++) {
        qvl_model *m = load(convert_dtype(dir, dts[k], "dtype"), err);
        ck_assert_msg(m != NULL, "%s", err);
        ck_assert_int_eq(m->text.layers[1].o.dtype, dts[k]);
        const qvl_weight *a = &ref->text.layers[1].o, *b = &m->text.layers[1].o;
        for (int o = 0; o < a->out; o += 7)
            for (int i = 0; i < a->in; i += 5)
                ck_assert_float_eq_tol(elem(b, o, i), elem(a, o, i), 1e-3 * (1 + elem(a, o, i)));
        ck_assert_float_eq_tol(m->vision.blocks[2].norm2_b[3], ref->vision.blocks[2].norm2_b[3], 1e-4);
        model_free(m);
    }
    model_free(ref);
}
END_TEST

START_TEST(binds_sharded) {
    const char *dir = synth_model("tiny-qwen3vl", 1);
    char err[QVL_ERR_MAX], path[4096];
    st_set *s = open_checkpoint(dir);
    out_list l = { 0 };
    for (size_t i = 0; i < st_count(s); i++) {
        const st_tensor *t = st_at(s, i);
        put(&l, t->name, t->dtype, t->ndim, t->shape, copy_bytes(t));
    }
    const char *out = tmp_dir("sharded");
    int half = l.n / 2;
    snprintf(path, sizeof path, "%s/model-00001-of-00002.safetensors", out);
    write_list(path, &l, 0, half);
    snprintf(path, sizeof path, "%s/model-00002-of-00002.safetensors", out);
    write_list(path, &l, half, l.n);
    /* the index */
    size_t cap = 1 << 16, len = 0;
    char *idx = malloc(cap);
    len += (size_t)snprintf(idx, cap, "{\"metadata\":{\"total_size\":0},\"weight_map\":{");
    for (int i = 0; i < l.n; i++)
        len += (size_t)snprintf(idx + len, cap - len, "%s\"%s\":\"model-0000%d-of-00002.safetensors\"",
                                i ? "," : "", l.t[i].spec.name, i < half ? 1 : 2);
    len += (size_t)snprintf(idx + len, cap - len, "}}");
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", out);
    write_file(path, idx, len);
    free(idx);
    copy_config(dir, out);
    qvl_model *m = load(out, err);
    ck_assert_msg(m != NULL, "%s", err);
    qvl_model *ref = load(dir, err);
    ck_assert_float_eq(elem(&m->text.layers[3].down, 5, 7), elem(&ref->text.layers[3].down, 5, 7));
    ck_assert_float_eq(elem(&m->vision.blocks[0].qkv, 100, 9), elem(&ref->vision.blocks[0].qkv, 100, 9));
    model_free(m);
    model_free(ref);
    free_list(&l);
    st_close(s);
}
END_TEST

/* The experts of the published layout rewritten as transformers 5.x saves them
 * ([E,2I,H], [E,H,I]) or as per-expert nn.Linear tensors. */
static const char *moe_variant(const char *dir, int per_expert) {
    st_set *s = open_checkpoint(dir);
    out_list l = { 0 };
    for (size_t i = 0; i < st_count(s); i++) {
        const st_tensor *t = st_at(s, i);
        const uint16_t *src = t->data;
        int is_gu = strstr(t->name, "experts.gate_up_proj") != NULL, is_dn = strstr(t->name, "experts.down_proj") != NULL;
        if (!is_gu && !is_dn) {
            put(&l, t->name, t->dtype, t->ndim, t->shape, copy_bytes(t));
            continue;
        }
        int64_t E = t->shape[0], R = t->shape[1], C = t->shape[2]; /* [E, R, C] -> transposed [E, C, R] */
        char prefix[256];
        snprintf(prefix, sizeof prefix, "%.*s", (int)(strstr(t->name, "experts.") - t->name), t->name);
        if (!per_expert) {
            uint16_t *dst = malloc(t->nbytes);
            for (int64_t e = 0; e < E; e++)
                for (int64_t r = 0; r < R; r++)
                    for (int64_t c = 0; c < C; c++) dst[(e * C + c) * R + r] = src[(e * R + r) * C + c];
            int64_t shape[3] = { E, C, R };
            put(&l, t->name, t->dtype, 3, shape, dst);
            continue;
        }
        for (int64_t e = 0; e < E; e++) {
            char name[300];
            if (is_gu) { /* [H, 2I] -> gate [I, H], up [I, H] */
                int64_t H = R, I = C / 2;
                for (int half = 0; half < 2; half++) {
                    uint16_t *dst = malloc((size_t)(I * H) * 2);
                    for (int64_t o = 0; o < I; o++)
                        for (int64_t h = 0; h < H; h++) dst[o * H + h] = src[(e * H + h) * C + half * I + o];
                    snprintf(name, sizeof name, "%sexperts.%lld.%s_proj.weight", prefix, (long long)e, half ? "up" : "gate");
                    int64_t shape[2] = { I, H };
                    put(&l, name, t->dtype, 2, shape, dst);
                }
            } else { /* [I, H] -> down [H, I] */
                int64_t I = R, H = C;
                uint16_t *dst = malloc((size_t)(I * H) * 2);
                for (int64_t o = 0; o < H; o++)
                    for (int64_t k = 0; k < I; k++) dst[o * I + k] = src[(e * I + k) * H + o];
                snprintf(name, sizeof name, "%sexperts.%lld.down_proj.weight", prefix, (long long)e);
                int64_t shape[2] = { H, I };
                put(&l, name, t->dtype, 2, shape, dst);
            }
        }
    }
    st_close(s);
    return write_variant(dir, &l, per_expert ? "moe-per-expert" : "moe-resaved");
}

START_TEST(binds_three_moe_layouts) {
    const char *dir = synth_model("tiny-qwen3vl-moe", 2);
    char err[QVL_ERR_MAX];
    qvl_model *pub = load(dir, err);
    ck_assert_msg(pub != NULL, "%s", err);
    ck_assert(pub->text.layers[0].sparse);
    ck_assert_int_eq(pub->text.layers[0].exp_gate[0].in_major, 1);
    qvl_model *variants[2];
    for (int v = 0; v < 2; v++) {
        variants[v] = load(moe_variant(dir, v), err);
        ck_assert_msg(variants[v] != NULL, "%s", err);
        ck_assert_int_eq(variants[v]->text.layers[0].exp_gate[0].in_major, 0);
    }
    for (int layer = 0; layer < 4; layer++)
        for (int e = 0; e < 8; e += 3) {
            const qvl_layer *a = &pub->text.layers[layer];
            for (int v = 0; v < 2; v++) {
                const qvl_layer *b = &variants[v]->text.layers[layer];
                for (int o = 0; o < 48; o += 5)
                    for (int i = 0; i < 64; i += 7) {
                        ck_assert_float_eq(elem(&b->exp_gate[e], o, i), elem(&a->exp_gate[e], o, i));
                        ck_assert_float_eq(elem(&b->exp_up[e], o, i), elem(&a->exp_up[e], o, i));
                        ck_assert_float_eq(elem(&b->exp_down[e], i, o), elem(&a->exp_down[e], i, o));
                    }
            }
        }
    /* gate and up really are the two halves of gate_up_proj[e] (gate first) */
    uint16_t first[96];
    int64_t shape[3] = { 8, 64, 96 };
    synth_values_bf16("model.language_model.layers.1.mlp.experts.gate_up_proj", shape, 3, 2, 2LL * 64 * 96, 96, first);
    ck_assert_float_eq(elem(&pub->text.layers[1].exp_gate[2], 5, 0), qvl_bf16_to_f32(first[5]));
    ck_assert_float_eq(elem(&pub->text.layers[1].exp_up[2], 5, 0), qvl_bf16_to_f32(first[48 + 5]));
    model_free(pub);
    model_free(variants[0]);
    model_free(variants[1]);
}
END_TEST

/* Rewrites a checkpoint with one tensor dropped, reshaped or retyped. */
static const char *broken_variant(const char *dir, const char *victim, int mode) {
    st_set *s = open_checkpoint(dir);
    out_list l = { 0 };
    for (size_t i = 0; i < st_count(s); i++) {
        const st_tensor *t = st_at(s, i);
        if (strcmp(t->name, victim)) {
            put(&l, t->name, t->dtype, t->ndim, t->shape, copy_bytes(t));
        } else if (mode == 1) { /* wrong shape: drop the last row */
            int64_t shape[8];
            memcpy(shape, t->shape, sizeof shape);
            shape[0] -= 1;
            put(&l, t->name, t->dtype, t->ndim, shape, copy_bytes(t));
        } else if (mode == 2) { /* wrong dtype: I8 with the same element count */
            put(&l, t->name, QVL_I8, t->ndim, t->shape, calloc(1, (size_t)t->numel));
        } /* mode 0: missing */
    }
    st_close(s);
    return write_variant(dir, &l, "broken");
}

START_TEST(reports_missing_wrong_shape_wrong_dtype) {
    const char *dir = synth_model("tiny-qwen3vl", 1);
    const char *victim = "model.language_model.layers.2.mlp.up_proj.weight";
    char err[QVL_ERR_MAX];
    ck_assert(load(broken_variant(dir, victim, 0), err) == NULL);
    ck_assert_msg(strstr(err, "tensor model.language_model.layers.2.mlp.up_proj.weight is missing"), "%s", err);
    ck_assert(load(broken_variant(dir, victim, 1), err) == NULL);
    ck_assert_msg(strstr(err, "up_proj.weight has shape [159, 64], expected [160, 64]"), "%s", err);
    ck_assert(load(broken_variant(dir, victim, 2), err) == NULL);
    ck_assert_msg(strstr(err, "up_proj.weight has dtype I8"), "%s", err);
    /* untied model without lm_head */
    ck_assert(load(broken_variant(dir, "model.visual.merger.linear_fc2.bias", 0), err) == NULL);
    ck_assert_msg(strstr(err, "merger.linear_fc2.bias is missing"), "%s", err);
}
END_TEST

int main(void) {
    Suite *s = suite_create("weights");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, binds_dense_model);
    tcase_add_test(tc, binds_every_dtype);
    tcase_add_test(tc, binds_sharded);
    tcase_add_test(tc, binds_three_moe_layouts);
    tcase_add_test(tc, reports_missing_wrong_shape_wrong_dtype);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
