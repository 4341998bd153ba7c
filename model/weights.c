/* weights.c - bind a checkpoint's tensors to the model structure.
 *
 * Names follow the published Qwen3-VL checkpoints (model.visual.*,
 * model.language_model.*, lm_head.weight).  Every tensor is looked up, its
 * dtype and shape checked against the config, and then used in place in the
 * mapping.  MoE experts come in three layouts that all load:
 *   published:  mlp.experts.gate_up_proj [E, H, 2I] (gate half first), down_proj [E, I, H]
 *   resaved:    gate_up_proj [E, 2I, H], down_proj [E, H, I]  (what transformers 5.x writes)
 *   per expert: mlp.experts.<e>.{gate,up,down}_proj.weight   (nn.Linear each)
 * The published layout is input-major (x @ W), which qvl_weight expresses with
 * in_major, so no expert is ever transposed or copied. */
#include "weights.h"
#include "common.h"
#include "quant.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const st_set *st;
    char *err;
    int failed;
    float **owned;          /* float copies to free */
    int nowned, capowned;
} binder;

static const st_tensor *find(binder *b, const char *name) {
    if (b->failed) return NULL;
    const st_tensor *t = st_find(b->st, name);
    if (!t) {
        qvl_seterr(b->err, "%s: tensor %s is missing", st_label(b->st), name);
        b->failed = 1;
        return NULL;
    }
    if (t->dtype != QVL_F32 && t->dtype != QVL_F16 && t->dtype != QVL_BF16) {
        qvl_seterr(b->err, "%s: tensor %s has dtype %s (supported: BF16, F16, F32)",
                   st_label(b->st), name, qvl_dtype_name(t->dtype));
        b->failed = 1;
        return NULL;
    }
    return t;
}

static void shape_str(const int64_t *shape, int ndim, char *buf, size_t n) {
    size_t o = 0;
    o += (size_t)snprintf(buf + o, n - o, "[");
    for (int i = 0; i < ndim && o < n; i++)
        o += (size_t)snprintf(buf + o, n - o, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (o < n) snprintf(buf + o, n - o, "]");
}

static int shape_is(const st_tensor *t, int ndim, const int64_t *want) {
    if (t->ndim != ndim) return 0;
    for (int i = 0; i < ndim; i++)
        if (t->shape[i] != want[i]) return 0;
    return 1;
}

static void shape_error(binder *b, const st_tensor *t, int ndim, const int64_t *want) {
    char got[128], exp[128];
    shape_str(t->shape, t->ndim, got, sizeof got);
    shape_str(want, ndim, exp, sizeof exp);
    qvl_seterr(b->err, "%s: tensor %s has shape %s, expected %s from config.json",
               st_label(b->st), t->name, got, exp);
    b->failed = 1;
}

/* Finds a tensor and checks its shape (ndim entries of `shape`). */
static const st_tensor *find_shaped(binder *b, const char *name, int ndim, const int64_t *shape) {
    const st_tensor *t = find(b, name);
    if (t && !shape_is(t, ndim, shape)) {
        shape_error(b, t, ndim, shape);
        return NULL;
    }
    return t;
}

static qvl_weight matrix(binder *b, const char *name, int out, int in) {
    qvl_weight w = { 0 };
    /* A `qvl quantize` checkpoint: U8 rows of q8/q4 blocks (quant.h), used in place. */
    const st_tensor *qt = b->failed ? NULL : st_find(b->st, name);
    if (qt && qt->dtype == QVL_U8) {
        if (quant_bind(qt->data, qt->ndim, qt->shape, out, in, &w, st_label(b->st), name, b->err)) b->failed = 1;
        return w;
    }
    const st_tensor *t = find(b, name);
    if (!t) return w;
    int64_t want[2] = { out, in };
    if (t->numel != (int64_t)out * in || t->ndim < 2 || t->shape[0] != out) {
        shape_error(b, t, 2, want);
        return w;
    }
    w = (qvl_weight){ .data = t->data, .dtype = t->dtype, .out = out, .in = in, .in_major = 0, .ld = in };
    return w;
}

static float *to_f32(binder *b, const st_tensor *t) {
    float *v = malloc((size_t)t->numel * sizeof *v);
    if (!v) {
        qvl_seterr(b->err, "out of memory converting %s", t->name);
        b->failed = 1;
        return NULL;
    }
    for (int64_t i = 0; i < t->numel; i++) {
        switch (t->dtype) {
        case QVL_F32: memcpy(&v[i], (const char *)t->data + 4 * i, 4); break;
        case QVL_BF16: { uint16_t h; memcpy(&h, (const char *)t->data + 2 * i, 2); v[i] = qvl_bf16_to_f32(h); } break;
        default: { uint16_t h; memcpy(&h, (const char *)t->data + 2 * i, 2); v[i] = qvl_f16_to_f32(h); } break;
        }
    }
    if (b->nowned == b->capowned) {
        b->capowned = b->capowned ? 2 * b->capowned : 64;
        float **grown = realloc(b->owned, (size_t)b->capowned * sizeof *grown);
        if (!grown) { free(v); b->failed = 1; qvl_seterr(b->err, "out of memory"); return NULL; }
        b->owned = grown;
    }
    b->owned[b->nowned++] = v;
    return v;
}

/* A float copy of a tensor holding exactly n values (any shape). */
static float *vector(binder *b, const char *name, int64_t n) {
    const st_tensor *t = find(b, name);
    if (!t) return NULL;
    if (t->numel != n) {
        int64_t want[1] = { n };
        shape_error(b, t, 1, want);
        return NULL;
    }
    return to_f32(b, t);
}

static void bind_merger(binder *b, const char *prefix_in, qvl_merger *m, int norm_dim, int merged, int out) {
    char n[256], prefix[128];
    snprintf(prefix, sizeof prefix, "%s", prefix_in);
    m->norm_dim = norm_dim;
    snprintf(n, sizeof n, "%snorm.weight", prefix);       m->norm_w = vector(b, n, norm_dim);
    snprintf(n, sizeof n, "%snorm.bias", prefix);         m->norm_b = vector(b, n, norm_dim);
    snprintf(n, sizeof n, "%slinear_fc1.weight", prefix); m->fc1 = matrix(b, n, merged, merged);
    snprintf(n, sizeof n, "%slinear_fc1.bias", prefix);   m->fc1_b = vector(b, n, merged);
    snprintf(n, sizeof n, "%slinear_fc2.weight", prefix); m->fc2 = matrix(b, n, out, merged);
    snprintf(n, sizeof n, "%slinear_fc2.bias", prefix);   m->fc2_b = vector(b, n, out);
}

static void bind_vision(binder *b, const qvl_config *c, qvl_vision_weights *v) {
    const qvl_vision_config *vc = &c->vision;
    int vh = vc->hidden, vi = vc->intermediate;
    int patch_in = vc->in_channels * vc->temporal_patch * vc->patch * vc->patch;
    int merged = vh * vc->merge * vc->merge;
    char n[256];
    int64_t pshape[5] = { vh, vc->in_channels, vc->temporal_patch, vc->patch, vc->patch };
    const st_tensor *pt = find_shaped(b, "model.visual.patch_embed.proj.weight", 5, pshape);
    if (pt) v->patch = (qvl_weight){ .data = pt->data, .dtype = pt->dtype, .out = vh, .in = patch_in, .ld = patch_in };
    v->patch_b = vector(b, "model.visual.patch_embed.proj.bias", vh);
    int64_t peshape[2] = { vc->num_pos_embed, vh };
    const st_tensor *pe = find_shaped(b, "model.visual.pos_embed.weight", 2, peshape);
    if (pe) v->pos_embed = to_f32(b, pe);
    v->blocks = calloc((size_t)vc->depth, sizeof *v->blocks);
    if (!v->blocks) { b->failed = 1; qvl_seterr(b->err, "out of memory"); return; }
    for (int i = 0; i < vc->depth && !b->failed; i++) {
        qvl_vision_block *k = &v->blocks[i];
#define VB(field, suffix) (snprintf(n, sizeof n, "model.visual.blocks.%d.%s", i, suffix), n)
        k->norm1_w = vector(b, VB(norm1_w, "norm1.weight"), vh);
        k->norm1_b = vector(b, VB(norm1_b, "norm1.bias"), vh);
        k->norm2_w = vector(b, VB(norm2_w, "norm2.weight"), vh);
        k->norm2_b = vector(b, VB(norm2_b, "norm2.bias"), vh);
        k->qkv = matrix(b, VB(qkv, "attn.qkv.weight"), 3 * vh, vh);
        k->qkv_b = vector(b, VB(qkv_b, "attn.qkv.bias"), 3 * vh);
        k->proj = matrix(b, VB(proj, "attn.proj.weight"), vh, vh);
        k->proj_b = vector(b, VB(proj_b, "attn.proj.bias"), vh);
        k->fc1 = matrix(b, VB(fc1, "mlp.linear_fc1.weight"), vi, vh);
        k->fc1_b = vector(b, VB(fc1_b, "mlp.linear_fc1.bias"), vi);
        k->fc2 = matrix(b, VB(fc2, "mlp.linear_fc2.weight"), vh, vi);
        k->fc2_b = vector(b, VB(fc2_b, "mlp.linear_fc2.bias"), vh);
#undef VB
    }
    bind_merger(b, "model.visual.merger.", &v->merger, vh, merged, vc->out_hidden);
    for (int j = 0; j < vc->n_deepstack; j++) {
        snprintf(n, sizeof n, "model.visual.deepstack_merger_list.%d.", j);
        bind_merger(b, n, &v->deepstack[j], merged, merged, vc->out_hidden);
    }
}

/* Experts of one sparse layer, in whichever of the three layouts the file uses. */
static void bind_experts(binder *b, const qvl_text_config *tc, int layer, qvl_layer *l) {
    int E = tc->num_experts, H = tc->hidden, I = tc->moe_intermediate;
    char n[256];
    l->exp_gate = calloc((size_t)E, sizeof *l->exp_gate);
    l->exp_up = calloc((size_t)E, sizeof *l->exp_up);
    l->exp_down = calloc((size_t)E, sizeof *l->exp_down);
    if (!l->exp_gate || !l->exp_up || !l->exp_down) { b->failed = 1; qvl_seterr(b->err, "out of memory"); return; }
    snprintf(n, sizeof n, "model.language_model.layers.%d.mlp.experts.gate_up_proj", layer);
    const st_tensor *gu = st_find(b->st, n);
    if (!gu) {
        /* Per-expert nn.Linear tensors. */
        for (int e = 0; e < E && !b->failed; e++) {
            snprintf(n, sizeof n, "model.language_model.layers.%d.mlp.experts.%d.gate_proj.weight", layer, e);
            l->exp_gate[e] = matrix(b, n, I, H);
            snprintf(n, sizeof n, "model.language_model.layers.%d.mlp.experts.%d.up_proj.weight", layer, e);
            l->exp_up[e] = matrix(b, n, I, H);
            snprintf(n, sizeof n, "model.language_model.layers.%d.mlp.experts.%d.down_proj.weight", layer, e);
            l->exp_down[e] = matrix(b, n, H, I);
        }
        return;
    }
    gu = find(b, n); /* dtype check */
    if (!gu) return;
    snprintf(n, sizeof n, "model.language_model.layers.%d.mlp.experts.down_proj", layer);
    const st_tensor *dn = find(b, n);
    if (!dn) return;
    int64_t pub_gu[3] = { E, H, 2 * I }, res_gu[3] = { E, 2 * I, H };
    int64_t pub_dn[3] = { E, I, H }, res_dn[3] = { E, H, I };
    int gu_pub = shape_is(gu, 3, pub_gu), dn_pub = shape_is(dn, 3, pub_dn);
    if (!gu_pub && !shape_is(gu, 3, res_gu)) { shape_error(b, gu, 3, pub_gu); return; }
    if (!dn_pub && !shape_is(dn, 3, res_dn)) { shape_error(b, dn, 3, pub_dn); return; }
    size_t es = qvl_dtype_size(gu->dtype), ds = qvl_dtype_size(dn->dtype);
    for (int e = 0; e < E; e++) {
        const char *g0 = (const char *)gu->data + (size_t)e * H * 2 * I * es;
        const char *d0 = (const char *)dn->data + (size_t)e * H * I * ds;
        if (gu_pub) { /* [H, 2I]: row i = input i; columns 0..I-1 gate, I..2I-1 up */
            l->exp_gate[e] = (qvl_weight){ g0, gu->dtype, I, H, 1, 2 * I };
            l->exp_up[e] = (qvl_weight){ g0 + (size_t)I * es, gu->dtype, I, H, 1, 2 * I };
        } else {      /* [2I, H]: rows 0..I-1 gate, I..2I-1 up */
            l->exp_gate[e] = (qvl_weight){ g0, gu->dtype, I, H, 0, H };
            l->exp_up[e] = (qvl_weight){ g0 + (size_t)I * H * es, gu->dtype, I, H, 0, H };
        }
        if (dn_pub) l->exp_down[e] = (qvl_weight){ d0, dn->dtype, H, I, 1, H };  /* [I, H] */
        else        l->exp_down[e] = (qvl_weight){ d0, dn->dtype, H, I, 0, I };  /* [H, I] */
    }
}

static void bind_text(binder *b, const qvl_config *c, qvl_text_weights *t) {
    const qvl_text_config *tc = &c->text;
    int H = tc->hidden, hd = tc->head_dim;
    char n[256];
    t->embed = matrix(b, "model.language_model.embed_tokens.weight", tc->vocab, H);
    t->layers = calloc((size_t)tc->layers, sizeof *t->layers);
    if (!t->layers) { b->failed = 1; qvl_seterr(b->err, "out of memory"); return; }
    for (int i = 0; i < tc->layers && !b->failed; i++) {
        qvl_layer *l = &t->layers[i];
#define TL(suffix) (snprintf(n, sizeof n, "model.language_model.layers.%d.%s", i, suffix), n)
        l->attn_norm = vector(b, TL("input_layernorm.weight"), H);
        l->mlp_norm = vector(b, TL("post_attention_layernorm.weight"), H);
        l->q = matrix(b, TL("self_attn.q_proj.weight"), tc->heads * hd, H);
        l->k = matrix(b, TL("self_attn.k_proj.weight"), tc->kv_heads * hd, H);
        l->v = matrix(b, TL("self_attn.v_proj.weight"), tc->kv_heads * hd, H);
        l->o = matrix(b, TL("self_attn.o_proj.weight"), H, tc->heads * hd);
        l->q_norm = vector(b, TL("self_attn.q_norm.weight"), hd);
        l->k_norm = vector(b, TL("self_attn.k_norm.weight"), hd);
        l->sparse = config_layer_is_sparse(c, i);
        if (l->sparse) {
            l->router = matrix(b, TL("mlp.gate.weight"), tc->num_experts, H);
            if (!b->failed) bind_experts(b, tc, i, l);
        } else {
            l->gate = matrix(b, TL("mlp.gate_proj.weight"), tc->intermediate, H);
            l->up = matrix(b, TL("mlp.up_proj.weight"), tc->intermediate, H);
            l->down = matrix(b, TL("mlp.down_proj.weight"), H, tc->intermediate);
        }
#undef TL
    }
    t->final_norm = vector(b, "model.language_model.norm.weight", H);
    if (tc->tie_embeddings && !st_find(b->st, "lm_head.weight"))
        t->lm_head = t->embed;
    else
        t->lm_head = matrix(b, "lm_head.weight", tc->vocab, H);
}

static void free_layers(qvl_model *m) {
    if (m->text.layers)
        for (int i = 0; i < m->cfg.text.layers; i++) {
            free(m->text.layers[i].exp_gate);
            free(m->text.layers[i].exp_up);
            free(m->text.layers[i].exp_down);
        }
    free(m->text.layers);
    free(m->vision.blocks);
}

qvl_model *model_bind(st_set *st, const qvl_config *cfg, char *err) {
    qvl_model *m = calloc(1, sizeof *m);
    if (!m) {
        qvl_seterr(err, "out of memory");
        return NULL;
    }
    m->cfg = *cfg;
    binder b = { .st = st, .err = err };
    bind_vision(&b, cfg, &m->vision);
    if (!b.failed) bind_text(&b, cfg, &m->text);
    m->owned = b.owned;
    m->n_owned = b.nowned;
    if (b.failed) {
        model_free(m);
        return NULL;
    }
    m->st = st;
    return m;
}

qvl_model *model_load(const qvl_source *src, char *err) {
    qvl_config cfg;
    if (config_load(src, &cfg, err) != 0) return NULL;
    st_set *st = st_open_source(src, err);
    if (!st) return NULL;
    qvl_model *m = model_bind(st, &cfg, err);
    if (!m) st_close(st);
    else m->file_mapped = src->dir != NULL;
    return m;
}

void model_free(qvl_model *m) {
    if (!m) return;
    for (int i = 0; i < m->n_owned; i++) free(m->owned[i]);
    free(m->owned);
    free_layers(m);
    free(m->quant_data);
    st_close(m->st);
    free(m);
}

void weight_row_f32(const qvl_weight *w, int row, float *dst) {
    if (quant_is_quantized(w->dtype)) { quant_dequant_row(w, row, dst); return; }
    const char *base = w->data;
    size_t es = qvl_dtype_size(w->dtype);
    for (int i = 0; i < w->in; i++) {
        const char *p = w->in_major ? base + ((size_t)i * w->ld + row) * es : base + ((size_t)row * w->ld + i) * es;
        uint16_t h;
        switch (w->dtype) {
        case QVL_F32: memcpy(&dst[i], p, 4); break;
        case QVL_BF16: memcpy(&h, p, 2); dst[i] = qvl_bf16_to_f32(h); break;
        default: memcpy(&h, p, 2); dst[i] = qvl_f16_to_f32(h); break;
        }
    }
}
