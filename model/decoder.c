/* decoder.c - Qwen3VLTextModel (+ lm_head) over a persistent KV cache.
 *
 * For the n new tokens of one call, with `past` tokens already cached:
 *   x = embedding rows, image tokens replaced by their vision embeddings
 *   per layer:
 *     h = RMSNorm(x); q, k, v = projections; RMSNorm per head on q and k;
 *     mRoPE on q and k at each token's (t, h, w) position;
 *     k, v appended to the cache (as floats, or rounded once to IEEE halves
 *     in an f16 cache, which attention widens back exactly as it reads
 *     them); causal attention of each new query over
 *     cache rows 0 .. past+i (grouped-query: kv head = head / (heads/kv_heads))
 *     x += o_proj(attn);  x += MLP(RMSNorm(x))   (SwiGLU, or the MoE block)
 *     after layer j < n_deepstack: x += DeepStack feature j at image tokens
 *   logits = lm_head(RMSNorm(x))
 *
 * Each new token's computation depends only on its own row and on the cache,
 * so splitting a prompt into calls changes nothing but float rounding (one
 * row goes through the matrix-vector kernel, several through sgemm). */
#include "decoder.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "ops.h"
#include "threadpool.h"

typedef struct fwd_scratch fwd_scratch;

struct qvl_cache {
    const qvl_model *m;
    int ctx, len;
    int kvd;                /* kv_heads * head_dim: one token's keys in one layer */
    qvl_dtype kv;           /* what k and v hold: QVL_F32 or QVL_F16 */
    size_t es;              /* its size */
    void *k, *v;            /* [layers][kv_heads][ctx][head_dim] */
    int *next_after;        /* [ctx]: next scalar position after token i */
    qvl_mrope rope;
    fwd_scratch *step;      /* decoding's scratch, kept between tokens */
    float *scores;          /* decoding attention: [heads][ctx] */
};

qvl_cache *cache_new(const qvl_model *m, int ctx, char *err) { return cache_new_as(m, ctx, QVL_F32, err); }

qvl_cache *cache_new_as(const qvl_model *m, int ctx, qvl_dtype kv, char *err) {
    const qvl_text_config *tc = &m->cfg.text;
    if (ctx < 1) { qvl_seterr(err, "context size %d: must be at least 1", ctx); return NULL; }
    if (kv != QVL_F32 && kv != QVL_F16) {
        qvl_seterr(err, "KV cache: keys and values are stored as F32 or F16, not %s", qvl_dtype_name(kv));
        return NULL;
    }
    if (tc->heads < 1 || tc->kv_heads < 1 || tc->heads % tc->kv_heads) {
        qvl_seterr(err, "%d attention heads cannot share %d key/value heads", tc->heads, tc->kv_heads);
        return NULL;
    }
    qvl_cache *c = calloc(1, sizeof *c);
    if (!c) { qvl_seterr(err, "out of memory for the KV cache"); return NULL; }
    if (mrope_init(&c->rope, tc, err)) { free(c); return NULL; }
    c->m = m;
    c->ctx = ctx;
    c->kvd = tc->kv_heads * tc->head_dim;
    c->kv = kv;
    c->es = qvl_dtype_size(kv);
    size_t per = (size_t)tc->layers * (size_t)ctx * (size_t)c->kvd;
    c->k = malloc(per * c->es);
    c->v = malloc(per * c->es);
    c->next_after = malloc((size_t)ctx * sizeof(int));
    c->scores = malloc((size_t)tc->heads * (size_t)ctx * sizeof(float));
    if (!c->k || !c->v || !c->next_after || !c->scores) {
        qvl_seterr(err, "out of memory for a KV cache of %d tokens (%.1f MB)", ctx,
                   2.0 * (double)per * (double)c->es / 1e6);
        cache_free(c);
        return NULL;
    }
    return c;
}

static void scratch_free(fwd_scratch *s);

void cache_free(qvl_cache *c) {
    if (!c) return;
    free(c->k);
    free(c->v);
    free(c->next_after);
    if (c->step) scratch_free(c->step);
    free(c->step);
    free(c->scores);
    free(c);
}

int cache_len(const qvl_cache *c) { return c->len; }
int cache_ctx(const qvl_cache *c) { return c->ctx; }
int cache_next_pos(const qvl_cache *c) { return c->len ? c->next_after[c->len - 1] : 0; }

int cache_truncate(qvl_cache *c, int n, char *err) {
    if (n < 0 || n > c->len) {
        qvl_seterr(err, "cannot truncate the cache to %d tokens: it holds %d", n, c->len);
        return -1;
    }
    c->len = n;
    return 0;
}

/* ---------------------------------------------------------------- scratch */

struct fwd_scratch {
    int n;
    float *x, *xn, *q, *k, *v, *att, *tmp, *gate, *up;
    float *cos, *sin;        /* [n, head_dim] */
    int *pos;                /* [3][n] */
    int *vis_img, *vis_row;  /* per new token: its image and row, or -1 */
    /* MoE: router logits [n, E]; per (token, rank): expert, weight, and the
     * slot of its row in the expert-sorted buffers xin [n*k, H], eg [n*k, Im]
     * (the SwiGLU), eu [n*k, 2*Im] (up, or gate and up side by side when
     * fused), ey [n*k, H] */
    float *logits, *probs, *wt, *xin, *eg, *eu, *ey;
    int *sel, *slot;
};

static void scratch_free(fwd_scratch *s) {
    free(s->x); free(s->xn); free(s->q); free(s->k); free(s->v); free(s->att); free(s->tmp);
    free(s->gate); free(s->up); free(s->cos); free(s->sin); free(s->pos); free(s->vis_img); free(s->vis_row);
    free(s->logits); free(s->probs); free(s->wt); free(s->xin); free(s->eg); free(s->eu); free(s->ey);
    free(s->sel); free(s->slot);
}

static int scratch_alloc(fwd_scratch *s, const qvl_text_config *tc, int n) {
    memset(s, 0, sizeof *s);
    size_t N = (size_t)n, H = (size_t)tc->hidden, qd = (size_t)tc->heads * tc->head_dim;
    size_t kvd = (size_t)tc->kv_heads * tc->head_dim;
    size_t inter = (size_t)(tc->intermediate > tc->moe_intermediate ? tc->intermediate : tc->moe_intermediate);
    s->n = n;
    s->x = malloc(N * H * sizeof(float));
    s->xn = malloc(N * H * sizeof(float));
    s->q = malloc(N * qd * sizeof(float));
    s->k = malloc(N * kvd * sizeof(float));
    s->v = malloc(N * kvd * sizeof(float));
    s->att = malloc(N * qd * sizeof(float));
    s->tmp = malloc(N * H * sizeof(float));
    s->gate = malloc(N * inter * sizeof(float));
    s->up = malloc(N * inter * sizeof(float));
    s->cos = malloc(N * (size_t)tc->head_dim * sizeof(float));
    s->sin = malloc(N * (size_t)tc->head_dim * sizeof(float));
    s->pos = malloc(3 * N * sizeof(int));
    s->vis_img = malloc(N * sizeof(int));
    s->vis_row = malloc(N * sizeof(int));
    int ok = s->x && s->xn && s->q && s->k && s->v && s->att && s->tmp && s->gate && s->up &&
             s->cos && s->sin && s->pos && s->vis_img && s->vis_row;
    if (ok && tc->num_experts > 0) {
        size_t E = (size_t)tc->num_experts, NK = N * (size_t)tc->experts_per_tok, Im = (size_t)tc->moe_intermediate;
        s->logits = malloc(N * E * sizeof(float));
        s->probs = malloc(E * sizeof(float));
        s->wt = malloc(NK * sizeof(float));
        s->xin = malloc(NK * H * sizeof(float));
        s->eg = malloc(NK * Im * sizeof(float));
        s->eu = malloc(NK * 2 * Im * sizeof(float));
        s->ey = malloc(NK * H * sizeof(float));
        s->sel = malloc(NK * sizeof(int));
        s->slot = malloc(NK * sizeof(int));
        ok = s->logits && s->probs && s->wt && s->xin && s->eg && s->eu && s->ey && s->sel && s->slot;
    }
    if (ok) return 0;
    scratch_free(s);
    return -1;
}

/* ---------------------------------------------------------------- attention */

/* The cache is head-major, [layer][kv head][ctx][head_dim]: one head's keys
 * (or values) are one contiguous run, which decoding streams through. */
static void *cache_head(const qvl_cache *c, void *base, int layer, int kvh) {
    const qvl_text_config *tc = &c->m->cfg.text;
    return (char *)base + (((size_t)layer * tc->kv_heads + (size_t)kvh) * (size_t)c->ctx) * (size_t)tc->head_dim * c->es;
}

/* Token `at`'s keys (or values) of one head from a row of the projections:
 * copied, or rounded to halves once here and never again. */
static void cache_put(const qvl_cache *c, void *head, int at, const float *src) {
    int hd = c->m->cfg.text.head_dim;
    char *dst = (char *)head + (size_t)at * (size_t)hd * c->es;
    if (c->kv == QVL_F16) round_to_f16((uint16_t *)dst, src, hd);
    else memcpy(dst, src, (size_t)hd * sizeof(float));
}

typedef struct {
    const qvl_cache *c;
    const float *q;          /* [n, heads*hd] */
    float *out;              /* [n, heads*hd] */
    int layer, past, n;
} attn_job;

/* Decoding, one new token: items are key/value heads, each with the query
 * heads that share it, so every cached key and value is read once. */
static void attention_one(void *p, int begin, int end) {
    attn_job *j = p;
    const qvl_cache *c = j->c;
    const qvl_text_config *tc = &c->m->cfg.text;
    int hd = tc->head_dim, group = tc->heads / tc->kv_heads;
    float scale = 1.0f / sqrtf((float)hd);
    for (int kvh = begin; kvh < end; kvh++) {
        size_t off = (size_t)kvh * group * hd;
        attend_group(j->out + off, j->q + off, group, cache_head(c, c->k, j->layer, kvh),
                     cache_head(c, c->v, j->layer, kvh), c->kv, j->past + 1, hd, hd, scale,
                     c->scores + (size_t)kvh * group * c->ctx);
    }
}

/* Prefill: items are query heads, each over all the new tokens at once (so
 * its keys and values are prepared once); token i of the call sees cache
 * rows 0 .. past+i. */
static void attention_heads(void *p, int begin, int end) {
    attn_job *j = p;
    const qvl_cache *c = j->c;
    const qvl_text_config *tc = &c->m->cfg.text;
    int hd = tc->head_dim, group = tc->heads / tc->kv_heads, qd = tc->heads * hd, nk = j->past + j->n;
    attend_scratch ws = { 0 };
    float scale = 1.0f / sqrtf((float)hd);
    for (int h = begin; h < end; h++) {
        int kvh = h / group;
        attend_block(j->out + (size_t)h * hd, qd, j->q + (size_t)h * hd, qd, cache_head(c, c->k, j->layer, kvh),
                     cache_head(c, c->v, j->layer, kvh), c->kv, hd, j->n, nk, hd, scale, j->past, &ws);
    }
    attend_scratch_free(&ws);
}

/* q/k RMSNorm per head and mRoPE, for new tokens [begin, end). */
typedef struct {
    const qvl_text_config *tc;
    const qvl_layer *L;
    fwd_scratch *s;
} rotate_job;

static void norm_and_rotate(void *p, int begin, int end) {
    rotate_job *j = p;
    const qvl_text_config *tc = j->tc;
    fwd_scratch *s = j->s;
    int hd = tc->head_dim, qd = tc->heads * hd, kvd = tc->kv_heads * hd;
    for (int i = begin; i < end; i++) {
        const float *cs = s->cos + (size_t)i * hd, *sn = s->sin + (size_t)i * hd;
        for (int h = 0; h < tc->heads; h++) {
            float *q = s->q + (size_t)i * qd + (size_t)h * hd;
            rmsnorm(q, q, j->L->q_norm, hd, tc->rms_eps);
            rope_rotate_half(q, cs, sn, hd);
        }
        for (int h = 0; h < tc->kv_heads; h++) {
            float *k = s->k + (size_t)i * kvd + (size_t)h * hd;
            rmsnorm(k, k, j->L->k_norm, hd, tc->rms_eps);
            rope_rotate_half(k, cs, sn, hd);
        }
    }
}

static void self_attention(qvl_cache *c, const qvl_layer *L, int layer, fwd_scratch *s) {
    const qvl_text_config *tc = &c->m->cfg.text;
    int n = s->n, hd = tc->head_dim, kvd = c->kvd;
    qvl_product qkv[3] = { { s->q, s->xn, &L->q, n }, { s->k, s->xn, &L->k, n }, { s->v, s->xn, &L->v, n } };
    matmul_batch(qkv, 3);
    rotate_job rj = { tc, L, s };
    parallel_for(n, norm_and_rotate, &rj);
    for (int h = 0; h < tc->kv_heads; h++) {
        void *kc = cache_head(c, c->k, layer, h), *vc = cache_head(c, c->v, layer, h);
        for (int i = 0; i < n; i++) {
            cache_put(c, kc, c->len + i, s->k + (size_t)i * kvd + (size_t)h * hd);
            cache_put(c, vc, c->len + i, s->v + (size_t)i * kvd + (size_t)h * hd);
        }
    }
    attn_job job = { c, s->q, s->att, layer, c->len, n };
    if (n == 1) parallel_for(tc->kv_heads, attention_one, &job);
    else parallel_for(tc->heads, attention_heads, &job);
    matmul(s->tmp, s->att, &L->o, n);
    add_inplace(s->x, s->tmp, n * tc->hidden);
}

/* ---------------------------------------------------------------- MLP */

static void dense_mlp(const qvl_layer *L, fwd_scratch *s, int hidden) {
    int n = s->n, inter = L->gate.out;
    qvl_product gate_up[2] = { { s->gate, s->xn, &L->gate, n }, { s->up, s->xn, &L->up, n } };
    matmul_batch(gate_up, 2);
    silu_mul(s->gate, s->up, n * inter);
    matmul(s->tmp, s->gate, &L->down, n);
    add_inplace(s->x, s->tmp, n * hidden);
}

/* Router: softmax over the experts, the top k (ties to the lower index),
 * weights renormalized to sum to 1. */
static void route(const float *logits, int E, int k, float *probs, int *sel, float *wt) {
    memcpy(probs, logits, (size_t)E * sizeof(float));
    softmax(probs, E);
    float sum = 0;
    for (int r = 0; r < k; r++) {
        int best = -1;
        for (int e = 0; e < E; e++) {
            int taken = 0;
            for (int q = 0; q < r; q++) taken |= sel[q] == e;
            if (!taken && (best < 0 || probs[e] > probs[best])) best = e;
        }
        sel[r] = best;
        wt[r] = probs[best];
        sum += wt[r];
    }
    for (int r = 0; r < k; r++) wt[r] /= sum;
}

/* An expert's gate and up projections as one [2*Im, H] matrix, when they
 * are the two halves of one stored tensor (the published fused gate_up_proj,
 * in-major, or its resaved out-major form): one product then reads the
 * expert's rows front to back instead of each half in a pass of its own. */
static int fused_gate_up(const qvl_weight *g, const qvl_weight *u, qvl_weight *gu) {
    if (g->dtype != QVL_BF16 && g->dtype != QVL_F16 && g->dtype != QVL_F32) return 0;
    if (g->dtype != u->dtype || g->in_major != u->in_major || g->ld != u->ld || g->in != u->in || g->out != u->out)
        return 0;
    size_t es = qvl_dtype_size(g->dtype);
    size_t step = g->in_major ? (size_t)g->out * es : (size_t)g->out * (size_t)g->ld * es;
    if ((const char *)u->data != (const char *)g->data + step) return 0;
    if (g->in_major && g->ld < 2 * (int64_t)g->out) return 0;
    *gu = *g;
    gu->out = 2 * g->out;
    return 1;
}

/* The sparse block: each expert runs once over the rows routed to it (only
 * the routed experts' weights are read), all experts' gate/up products in one
 * pass of the pool and their down products in another; each row then sums
 * its k expert outputs in rank order. */
static int moe_mlp(const qvl_layer *L, const qvl_text_config *tc, fwd_scratch *s, char *err) {
    int n = s->n, H = tc->hidden, E = tc->num_experts, k = tc->experts_per_tok, Im = tc->moe_intermediate;
    int most = k * n < E ? k * n : E;     /* experts in use */
    qvl_product *ps = malloc(sizeof(qvl_product) * 2 * (size_t)most);
    qvl_weight *gu = malloc(sizeof(qvl_weight) * (size_t)most);
    int *expert = malloc(sizeof(int) * (size_t)most), *first = malloc(sizeof(int) * (size_t)most);
    int *fused = malloc(sizeof(int) * (size_t)most);
    int rc = -1;
    if (!ps || !gu || !expert || !first || !fused) { qvl_seterr(err, "out of memory in the MoE block"); goto done; }
    matmul(s->logits, s->xn, &L->router, n);
    for (int i = 0; i < n; i++)
        route(s->logits + (size_t)i * E, E, k, s->probs, s->sel + (size_t)i * k, s->wt + (size_t)i * k);
    /* Rows sorted by expert, tokens in order within one. */
    int nx = 0, np = 0, used = 0;
    for (int e = 0; e < E; e++) {
        int start = used;
        for (int t = 0; t < n * k; t++)
            if (s->sel[t] == e) {           /* t = token * k + rank */
                s->slot[t] = used;
                if (n > 1) memcpy(s->xin + (size_t)used * H, s->xn + (size_t)(t / k) * H, (size_t)H * sizeof(float));
                used++;
            }
        int cnt = used - start;
        if (!cnt) continue;
        /* One token: every expert reads its row in place. */
        const float *x = n > 1 ? s->xin + (size_t)start * H : s->xn;
        expert[nx] = e;
        first[nx] = start;
        fused[nx] = fused_gate_up(&L->exp_gate[e], &L->exp_up[e], &gu[nx]);
        if (fused[nx]) {
            ps[np++] = (qvl_product){ s->eu + (size_t)start * 2 * Im, x, &gu[nx], cnt };
        } else {
            ps[np++] = (qvl_product){ s->eg + (size_t)start * Im, x, &L->exp_gate[e], cnt };
            ps[np++] = (qvl_product){ s->eu + (size_t)start * Im, x, &L->exp_up[e], cnt };
        }
        nx++;
    }
    matmul_batch(ps, np);
    for (int i = 0; i < nx; i++) {
        int cnt = (i + 1 < nx ? first[i + 1] : used) - first[i];
        if (fused[i])
            for (int r = first[i]; r < first[i] + cnt; r++) {
                float *g = s->eu + (size_t)r * 2 * Im;
                silu_mul(g, g + Im, Im);
                memcpy(s->eg + (size_t)r * Im, g, (size_t)Im * sizeof(float));
            }
        else
            silu_mul(s->eg + (size_t)first[i] * Im, s->eu + (size_t)first[i] * Im, cnt * Im);
        ps[i] = (qvl_product){ s->ey + (size_t)first[i] * H, s->eg + (size_t)first[i] * Im, &L->exp_down[expert[i]], cnt };
    }
    matmul_batch(ps, nx);
    for (int i = 0; i < n; i++)
        for (int r = 0; r < k; r++) {
            const float *y = s->ey + (size_t)s->slot[(size_t)i * k + r] * H;
            float w = s->wt[(size_t)i * k + r];
            float *x = s->x + (size_t)i * H;
            for (int d = 0; d < H; d++) x[d] += w * y[d];
        }
    rc = 0;
done:
    free(ps); free(gu); free(expert); free(first); free(fused);
    return rc;
}

/* ---------------------------------------------------------------- forward */

/* Checks the call and fills positions and the image-row map; no side effect
 * on the cache. */
static int prepare(qvl_cache *c, const int *ids, int n, const qvl_image_input *images, int n_images,
                   fwd_scratch *s, char *err) {
    const qvl_config *cfg = &c->m->cfg;
    if (n < 1) { qvl_seterr(err, "decoder: no tokens to add"); return -1; }
    if ((long)c->len + n > c->ctx) {
        qvl_seterr(err, "context full: %d tokens held + %d new exceed the context size %d", c->len, n, c->ctx);
        return -1;
    }
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= cfg->text.vocab) {
            qvl_seterr(err, "token id %d at position %d is outside the vocabulary (0..%d)", ids[i], i, cfg->text.vocab - 1);
            return -1;
        }
    if (n_images < 0 || (n_images > 0 && !images)) { qvl_seterr(err, "decoder: bad image list"); return -1; }
    if (n_images > 0 && cfg->vision.out_hidden != cfg->text.hidden) {
        qvl_seterr(err, "vision out_hidden_size %d differs from the text hidden_size %d",
                   cfg->vision.out_hidden, cfg->text.hidden);
        return -1;
    }
    qvl_grid *g = malloc(sizeof(qvl_grid) * (size_t)(n_images + 1));
    if (!g) { qvl_seterr(err, "out of memory"); return -1; }
    for (int i = 0; i < n_images; i++) g[i] = images[i].grid;
    int next;    /* the same running maximum the commit recomputes per token */
    int rc = mrope_positions(ids, n, cfg->image_token_id, g, n_images, cache_next_pos(c), s->pos, &next, err);
    free(g);
    if (rc) return -1;
    for (int i = 0; i < n_images; i++) {
        if (!images[i].embeds) { qvl_seterr(err, "image %d: no embeddings", i); return -1; }
        for (int j = 0; j < cfg->vision.n_deepstack; j++)
            if (!images[i].deepstack[j]) { qvl_seterr(err, "image %d: DeepStack feature %d missing", i, j); return -1; }
    }
    /* mrope_positions has checked that the runs match the grids. */
    for (int i = 0, img = 0; i < n;) {
        if (ids[i] != cfg->image_token_id) { s->vis_img[i] = s->vis_row[i] = -1; i++; continue; }
        qvl_grid gr = images[img].grid;
        int count = gr.t * gr.h * gr.w;
        for (int r = 0; r < count; r++) { s->vis_img[i + r] = img; s->vis_row[i + r] = r; }
        i += count;
        img++;
    }
    return 0;
}

int decoder_forward(qvl_cache *c, const int *ids, int n, const qvl_image_input *images, int n_images,
                    float *logits, int all_logits, const qvl_probe *probe, char *err) {
    const qvl_model *m = c->m;
    const qvl_text_config *tc = &m->cfg.text;
    int H = tc->hidden, hd = tc->head_dim;
    if (n < 1) { qvl_seterr(err, "decoder: no tokens to add"); return -1; }
    /* Decoding reuses one token's scratch; a prompt gets its own for the call. */
    fwd_scratch big, *sp = &big;
    if (n == 1 && !c->step) {
        if (!(c->step = malloc(sizeof *c->step)) || scratch_alloc(c->step, tc, 1)) {
            free(c->step);
            c->step = NULL;
            qvl_seterr(err, "out of memory for decoding");
            return -1;
        }
    }
    if (n == 1) sp = c->step;
    else if (scratch_alloc(&big, tc, n)) { qvl_seterr(err, "out of memory for %d new tokens", n); return -1; }
    fwd_scratch *const s = sp;
    int rc = -1;
    if (prepare(c, ids, n, images, n_images, s, err)) goto done;

    for (int i = 0; i < n; i++) {
        float *row = s->x + (size_t)i * H;
        if (s->vis_img[i] >= 0)
            memcpy(row, images[s->vis_img[i]].embeds + (size_t)s->vis_row[i] * H, (size_t)H * sizeof(float));
        else
            weight_row_f32(&m->text.embed, ids[i], row);
        mrope_cos_sin(&c->rope, s->pos[i], s->pos[n + i], s->pos[2 * n + i],
                      s->cos + (size_t)i * hd, s->sin + (size_t)i * hd);
    }

    char name[64];
    int n_deep = n_images > 0 ? m->cfg.vision.n_deepstack : 0;
    for (int l = 0; l < tc->layers; l++) {
        const qvl_layer *L = &m->text.layers[l];
        rmsnorm_rows(s->xn, s->x, L->attn_norm, n, H, tc->rms_eps);
        self_attention(c, L, l, s);
        rmsnorm_rows(s->xn, s->x, L->mlp_norm, n, H, tc->rms_eps);
        if (L->sparse) { if (moe_mlp(L, tc, s, err)) goto done; }
        else dense_mlp(L, s, H);
        snprintf(name, sizeof name, "layer_out.%d", l);
        probe_emit(probe, name, s->x, n, H);
        if (l < n_deep)
            for (int i = 0; i < n; i++)
                if (s->vis_img[i] >= 0)
                    add_inplace(s->x + (size_t)i * H,
                                images[s->vis_img[i]].deepstack[l] + (size_t)s->vis_row[i] * H, H);
    }
    probe_emit(probe, "final_norm_in", s->x, n, H);
    rmsnorm_rows(s->xn, s->x, m->text.final_norm, n, H, tc->rms_eps);
    probe_emit(probe, "final_norm_out", s->xn, n, H);
    if (logits) {
        int V = m->text.lm_head.out;
        if (all_logits) matmul(logits, s->xn, &m->text.lm_head, n);
        else matmul(logits, s->xn + (size_t)(n - 1) * H, &m->text.lm_head, 1);
        probe_emit(probe, "logits_last", all_logits ? logits + (size_t)(n - 1) * V : logits, 1, V);
    }

    /* Commit: the new keys/values were written past len; now they count.  The
     * position state after each token is the running maximum + 1, so that a
     * truncation inside a turn restores exactly what came before. */
    int run = cache_next_pos(c);
    for (int i = 0; i < n; i++) {
        int p = s->pos[i];
        if (s->pos[n + i] > p) p = s->pos[n + i];
        if (s->pos[2 * n + i] > p) p = s->pos[2 * n + i];
        if (p + 1 > run) run = p + 1;
        c->next_after[c->len + i] = run;
    }
    c->len += n;
    rc = 0;
done:
    if (sp == &big) scratch_free(&big);
    return rc;
}

int decoder_step(qvl_cache *c, int id, float *logits, char *err) {
    return decoder_forward(c, &id, 1, NULL, 0, logits, 0, NULL, err);
}
