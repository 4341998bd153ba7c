/* vision.c - Qwen3VLVisionModel, as transformers computes it.
 *
 *   patches [np, C*T*P*P] --patch matmul + bias--> [np, vh]
 *   + learned position table, bilinearly resized to each image's grid
 *   depth x { x += proj(attn(LN1 x)) ; x += fc2(gelu_tanh(fc1(LN2 x))) }
 *       attention: full within one frame of one image, 2-D rotary on q and k
 *       after the blocks listed in deepstack_visual_indexes: a DeepStack merger
 *   merger: LN per patch, 2x2 patches concatenated, fc1, GELU (erf), fc2
 *
 * Patches arrive in merge-block order (the preprocessor emits the 2x2 patches of
 * a merged token consecutively), so "concatenate 2x2 patches" is a reshape of
 * [np, vh] to [np/4, 4vh], and the position table and rotary angles are laid
 * out in that same order here. */
#include "vision.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "ops.h"
#include "threadpool.h"

typedef struct {
    int np, vh, heads, hd, vi, merge, unit;
} vdims;

qvl_grid vision_llm_grid(const qvl_model *m, qvl_grid g) {
    int merge = m->cfg.vision.merge;
    qvl_grid r = { g.t, g.h / merge, g.w / merge };
    return r;
}

/* torch.linspace(0, end, steps) in float32: halves computed from either end. */
static float linspace_at(float end, int steps, int i) {
    if (steps == 1) return 0.0f;
    float step = end / (float)(steps - 1);
    return i < steps / 2 ? step * (float)i : end - step * (float)(steps - 1 - i);
}

/* fast_pos_embed_interpolate for one image, added to its rows of x.  Each
 * patch mixes the four nearest cells of the side x side table with bilinear
 * weights; the rows are visited in merge-block order. */
static void add_position_embedding(float *x, const float *table, int side, const vdims *d, qvl_grid g) {
    float *hpos = malloc(sizeof(float) * (size_t)g.h), *wpos = malloc(sizeof(float) * (size_t)g.w);
    if (!hpos || !wpos) abort();
    for (int i = 0; i < g.h; i++) hpos[i] = linspace_at((float)(side - 1), g.h, i);
    for (int i = 0; i < g.w; i++) wpos[i] = linspace_at((float)(side - 1), g.w, i);
    int m = d->merge;
    float *row = x;
    for (int t = 0; t < g.t; t++)
        for (int bh = 0; bh < g.h / m; bh++)
            for (int bw = 0; bw < g.w / m; bw++)
                for (int ih = 0; ih < m; ih++)
                    for (int iw = 0; iw < m; iw++, row += d->vh) {
                        int r = bh * m + ih, c = bw * m + iw;
                        int r0 = (int)hpos[r], c0 = (int)wpos[c];
                        int r1 = r0 + 1 < side ? r0 + 1 : side - 1, c1 = c0 + 1 < side ? c0 + 1 : side - 1;
                        float dh = hpos[r] - (float)r0, dw = wpos[c] - (float)c0;
                        float w00 = (1 - dh) * (1 - dw), w01 = (1 - dh) * dw;
                        float w10 = dh * (1 - dw), w11 = dh * dw;
                        const float *e00 = table + (size_t)(r0 * side + c0) * d->vh;
                        const float *e01 = table + (size_t)(r0 * side + c1) * d->vh;
                        const float *e10 = table + (size_t)(r1 * side + c0) * d->vh;
                        const float *e11 = table + (size_t)(r1 * side + c1) * d->vh;
                        for (int k = 0; k < d->vh; k++)
                            row[k] += ((e00[k] * w00 + e01[k] * w01) + e10[k] * w10) + e11[k] * w11;
                    }
    free(hpos);
    free(wpos);
}

/* rot_pos_emb: per patch, hd/4 frequencies of its row then hd/4 of its column,
 * the hd/2 angles repeated twice.  cos, sin: [np, hd]. */
static void rotary_tables(float *cos_t, float *sin_t, const vdims *d, const qvl_grid *grids, int n_images) {
    int quarter = d->hd / 4;
    float inv[QVL_MAX_HALF];
    rope_inv_freq(inv, d->hd / 2, 10000.0);
    int m = d->merge;
    size_t k = 0;
    for (int im = 0; im < n_images; im++) {
        qvl_grid g = grids[im];
        for (int t = 0; t < g.t; t++)
            for (int bh = 0; bh < g.h / m; bh++)
                for (int bw = 0; bw < g.w / m; bw++)
                    for (int ih = 0; ih < m; ih++)
                        for (int iw = 0; iw < m; iw++, k++) {
                            float pos[2] = { (float)(bh * m + ih), (float)(bw * m + iw) };
                            float *c = cos_t + k * d->hd, *s = sin_t + k * d->hd;
                            for (int axis = 0; axis < 2; axis++)
                                for (int i = 0; i < quarter; i++) {
                                    float f = pos[axis] * inv[i];
                                    int at = axis * quarter + i;
                                    c[at] = c[at + 2 * quarter] = (float)cos((double)f);
                                    s[at] = s[at + 2 * quarter] = (float)sin((double)f);
                                }
                        }
    }
}

/* ---------------------------------------------------------------- attention */

/* The queries of one frame (image, time step) and the frame they attend over:
 * a whole frame per call, so that its keys and values are prepared once. */
typedef struct { int q0, nq, k0, nk; } qblock;

typedef struct {
    const float *qkv;         /* [np, 3*vh]: q | k | v, heads of hd within each */
    float *out;               /* [np, vh] */
    const qblock *blocks;
    const vdims *d;
} vattn_job;

/* Items are (frame, head) pairs. */
static void vision_attention_items(void *p, int begin, int end) {
    vattn_job *j = p;
    const vdims *d = j->d;
    attend_scratch ws = { 0 };
    int stride = 3 * d->vh;
    float scale = 1.0f / sqrtf((float)d->hd);
    for (int item = begin; item < end; item++) {
        const qblock *b = &j->blocks[item / d->heads];
        int h = item % d->heads;
        const float *q = j->qkv + (size_t)b->q0 * stride + h * d->hd;
        const float *k = j->qkv + (size_t)b->k0 * stride + d->vh + h * d->hd;
        attend_block(j->out + (size_t)b->q0 * d->vh + h * d->hd, d->vh, q, stride, k, k + d->vh, QVL_F32, stride,
                     b->nq, b->nk, d->hd, scale, -1, &ws);
    }
    attend_scratch_free(&ws);
}

/* ---------------------------------------------------------------- mergers */

/* A patch merger: [np, vh] -> [np/unit, out_hidden].  The final merger
 * normalizes each patch (norm_dim vh) before the reshape, the DeepStack
 * mergers each merged row (norm_dim unit*vh) after it. */
static int merge_patches(const qvl_merger *mg, const float *x, const vdims *d, float *out, char *err) {
    int rows = d->np / d->unit, mh = d->vh * d->unit;
    float *buf = malloc(sizeof(float) * (size_t)rows * mh);
    float *hid = malloc(sizeof(float) * (size_t)rows * mh);
    if (!buf || !hid) { free(buf); free(hid); qvl_seterr(err, "out of memory in the vision merger"); return -1; }
    int nd = mg->norm_dim, nrows = (int)((size_t)rows * mh / nd);
    layernorm_rows(buf, x, mg->norm_w, mg->norm_b, nrows, nd, 1e-6f);
    matmul(hid, buf, &mg->fc1, rows);
    add_bias(hid, mg->fc1_b, rows, mg->fc1.out);
    gelu_erf(hid, rows * mg->fc1.out);
    matmul(out, hid, &mg->fc2, rows);
    add_bias(out, mg->fc2_b, rows, mg->fc2.out);
    free(buf);
    free(hid);
    return 0;
}

/* ---------------------------------------------------------------- blocks */

typedef struct {
    float *xn, *qkv, *att, *tmp, *mlp;   /* [np, vh], [np, 3vh], [np, vh], [np, vh], [np, vi] */
    float *cos, *sin;                    /* [np, hd] */
    qblock *blocks;                      /* query blocks, none across frames */
    int nblocks;
} vscratch;

/* The block MLP's activation: transformers' ACT2FN names.  "gelu" is the
 * exact (erf) form; gelu_pytorch_tanh and gelu_new are both the tanh form. */
static int activation_is_erf(const char *act) { return !strcmp(act, "gelu"); }
static int activation_known(const char *act) {
    return !act[0] || !strcmp(act, "gelu") || !strcmp(act, "gelu_pytorch_tanh") || !strcmp(act, "gelu_new");
}

static void apply_activation(const char *act, float *x, int n) {
    if (activation_is_erf(act)) gelu_erf(x, n);
    else gelu_tanh(x, n);
}

/* The 2-D rotary embedding on q and k of patches [begin, end). */
typedef struct {
    vscratch *s;
    const vdims *d;
} rotate_job;

static void rotate_rows(void *p, int begin, int end) {
    rotate_job *j = p;
    const vdims *d = j->d;
    for (int r = begin; r < end; r++) {
        const float *cs = j->s->cos + (size_t)r * d->hd, *sn = j->s->sin + (size_t)r * d->hd;
        for (int h = 0; h < d->heads; h++) {
            float *q = j->s->qkv + (size_t)r * 3 * d->vh + h * d->hd;
            rope_rotate_half(q, cs, sn, d->hd);
            rope_rotate_half(q + d->vh, cs, sn, d->hd);
        }
    }
}

static void vision_block(const qvl_vision_block *b, const char *act, float *x, const vdims *d, vscratch *s) {
    int np = d->np, vh = d->vh;
    layernorm_rows(s->xn, x, b->norm1_w, b->norm1_b, np, vh, 1e-6f);
    matmul(s->qkv, s->xn, &b->qkv, np);
    add_bias(s->qkv, b->qkv_b, np, 3 * vh);
    rotate_job rj = { s, d };
    parallel_for(np, rotate_rows, &rj);
    vattn_job job = { s->qkv, s->att, s->blocks, d };
    parallel_for(s->nblocks * d->heads, vision_attention_items, &job);
    matmul(s->tmp, s->att, &b->proj, np);
    add_bias(s->tmp, b->proj_b, np, vh);
    add_inplace(x, s->tmp, np * vh);

    layernorm_rows(s->xn, x, b->norm2_w, b->norm2_b, np, vh, 1e-6f);
    matmul(s->mlp, s->xn, &b->fc1, np);
    add_bias(s->mlp, b->fc1_b, np, d->vi);
    apply_activation(act, s->mlp, np * d->vi);
    matmul(s->tmp, s->mlp, &b->fc2, np);
    add_bias(s->tmp, b->fc2_b, np, vh);
    add_inplace(x, s->tmp, np * vh);
}

/* ---------------------------------------------------------------- encode */

static int check_inputs(const qvl_model *m, int n_patches, const qvl_grid *grids, int n_images, char *err) {
    const qvl_vision_config *vc = &m->cfg.vision;
    if (n_images < 1) { qvl_seterr(err, "vision: no image given"); return -1; }
    if (vc->merge < 1 || vc->heads < 1 || vc->hidden % vc->heads || (vc->hidden / vc->heads) % 4 ||
        vc->hidden / vc->heads / 2 > QVL_MAX_HALF) {
        qvl_seterr(err, "vision: hidden %d / heads %d gives no usable head size", vc->hidden, vc->heads);
        return -1;
    }
    int side = (int)lround(sqrt((double)vc->num_pos_embed));
    if (side < 1 || side * side != vc->num_pos_embed) {
        qvl_seterr(err, "vision: num_position_embeddings %d is not a square grid", vc->num_pos_embed);
        return -1;
    }
    if (!activation_known(vc->hidden_act)) {
        qvl_seterr(err, "vision: hidden_act '%s' is not supported (gelu_pytorch_tanh, gelu_new, gelu)", vc->hidden_act);
        return -1;
    }
    for (int j = 0; j < vc->n_deepstack; j++)
        if (vc->deepstack_idx[j] < 0 || vc->deepstack_idx[j] >= vc->depth) {
            qvl_seterr(err, "vision: deepstack_visual_indexes[%d] = %d is not a block (depth %d)",
                       j, vc->deepstack_idx[j], vc->depth);
            return -1;
        }
    long total = 0;
    for (int i = 0; i < n_images; i++) {
        qvl_grid g = grids[i];
        if (g.t < 1 || g.h < 1 || g.w < 1 || g.h % vc->merge || g.w % vc->merge) {
            qvl_seterr(err, "image %d: grid %dx%dx%d is not a positive multiple of the merge size %d",
                       i, g.t, g.h, g.w, vc->merge);
            return -1;
        }
        total += (long)g.t * g.h * g.w;
    }
    if (total != n_patches) {
        qvl_seterr(err, "vision: the grids cover %ld patches but %d pixel rows were given", total, n_patches);
        return -1;
    }
    return 0;
}

/* One query block per frame of every image. */
static void query_blocks(vscratch *s, const qvl_grid *grids, int n_images) {
    s->nblocks = 0;
    for (int im = 0, row = 0; im < n_images; im++) {
        int len = grids[im].h * grids[im].w;
        for (int t = 0; t < grids[im].t; t++, row += len)
            s->blocks[s->nblocks++] = (qblock){ row, len, row, len };
    }
}

static void free_scratch(vscratch *s) {
    free(s->xn); free(s->qkv); free(s->att); free(s->tmp); free(s->mlp);
    free(s->cos); free(s->sin); free(s->blocks);
}

int vision_encode(const qvl_model *m, const float *pixels, int n_patches,
                  const qvl_grid *grids, int n_images, const qvl_probe *probe,
                  qvl_vision_out *out, char *err) {
    memset(out, 0, sizeof *out);
    if (check_inputs(m, n_patches, grids, n_images, err)) return -1;
    const qvl_vision_config *vc = &m->cfg.vision;
    const qvl_vision_weights *vw = &m->vision;
    vdims d = { n_patches, vc->hidden, vc->heads, vc->hidden / vc->heads, vc->intermediate,
                vc->merge, vc->merge * vc->merge };
    int side = (int)lround(sqrt((double)vc->num_pos_embed));

    vscratch s = {0};
    float *x = malloc(sizeof(float) * (size_t)d.np * d.vh);
    s.xn = malloc(sizeof(float) * (size_t)d.np * d.vh);
    s.qkv = malloc(sizeof(float) * (size_t)d.np * 3 * d.vh);
    s.att = malloc(sizeof(float) * (size_t)d.np * d.vh);
    s.tmp = malloc(sizeof(float) * (size_t)d.np * d.vh);
    s.mlp = malloc(sizeof(float) * (size_t)d.np * d.vi);
    s.cos = malloc(sizeof(float) * (size_t)d.np * d.hd);
    s.sin = malloc(sizeof(float) * (size_t)d.np * d.hd);
    long frames = 0;
    for (int i = 0; i < n_images; i++) frames += grids[i].t;
    s.blocks = malloc(sizeof(qblock) * (size_t)frames);
    out->n_tokens = d.np / d.unit;
    out->dim = vc->out_hidden;
    out->n_deepstack = vc->n_deepstack;
    out->merged = malloc(sizeof(float) * (size_t)out->n_tokens * out->dim);
    int ok = x && s.xn && s.qkv && s.att && s.tmp && s.mlp && s.cos && s.sin && s.blocks && out->merged;
    for (int j = 0; j < vc->n_deepstack; j++)
        ok = ok && (out->deepstack[j] = malloc(sizeof(float) * (size_t)out->n_tokens * out->dim));
    if (!ok) {
        qvl_seterr(err, "vision: out of memory for %d patches", n_patches);
        goto fail;
    }

    /* Patch embedding, then the interpolated position table. */
    matmul(x, pixels, &vw->patch, d.np);
    add_bias(x, vw->patch_b, d.np, d.vh);
    probe_emit(probe, "vision.patch_embed", x, d.np, d.vh);
    for (int im = 0, row = 0; im < n_images; im++) {
        qvl_grid g = grids[im];
        add_position_embedding(x + (size_t)row * d.vh, vw->pos_embed, side, &d, g);
        row += g.t * g.h * g.w;
    }
    query_blocks(&s, grids, n_images);
    probe_emit(probe, "vision.block_in0", x, d.np, d.vh);
    rotary_tables(s.cos, s.sin, &d, grids, n_images);

    for (int i = 0; i < vc->depth; i++) {
        vision_block(&vw->blocks[i], vc->hidden_act, x, &d, &s);
        char name[64];
        snprintf(name, sizeof name, "vision.block_out.%d", i);
        probe_emit(probe, name, x, d.np, d.vh);
        for (int j = 0; j < vc->n_deepstack; j++) {
            if (vc->deepstack_idx[j] != i) continue;
            if (merge_patches(&vw->deepstack[j], x, &d, out->deepstack[j], err)) goto fail;
            snprintf(name, sizeof name, "vision.deepstack.%d", j);
            probe_emit(probe, name, out->deepstack[j], out->n_tokens, out->dim);
        }
    }
    if (merge_patches(&vw->merger, x, &d, out->merged, err)) goto fail;
    probe_emit(probe, "vision.merged", out->merged, out->n_tokens, out->dim);
    free(x);
    free_scratch(&s);
    return 0;

fail:
    free(x);
    free_scratch(&s);
    vision_out_free(out);
    return -1;
}

void vision_out_free(qvl_vision_out *out) {
    free(out->merged);
    for (int j = 0; j < QVL_MAX_DEEPSTACK; j++) free(out->deepstack[j]);
    memset(out, 0, sizeof *out);
}
