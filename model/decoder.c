/* decoder.c - Qwen3VLTextModel (+ lm_head) over a persistent KV cache.
 *
 * For the n new tokens of one call, with `past` tokens already cached:
 *   x = embedding rows, image tokens replaced by their vision embeddings
 *   per layer:
 *     h = RMSNorm(x); q, k, v = projections; RMSNorm per head on q and k;
 *     mRoPE on q and k at each token's (t, h, w) position;
 *     k, v appended to the cache; causal attention of each new query over
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

struct qvl_cache {
    const qvl_model *m;
    int ctx, len;
    int kvd;                /* kv_heads * head_dim: one token's keys in one layer */
    float *k, *v;           /* [layers][ctx][kvd] */
    int *next_after;        /* [ctx]: next scalar position after token i */
    qvl_mrope rope;
};

qvl_cache *cache_new(const qvl_model *m, int ctx, char *err) {
    const qvl_text_config *tc = &m->cfg.text;
    if (ctx < 1) { qvl_seterr(err, "context size %d: must be at least 1", ctx); return NULL; }
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
    size_t per = (size_t)tc->layers * (size_t)ctx * (size_t)c->kvd;
    c->k = malloc(per * sizeof(float));
    c->v = malloc(per * sizeof(float));
    c->next_after = malloc((size_t)ctx * sizeof(int));
    if (!c->k || !c->v || !c->next_after) {
        qvl_seterr(err, "out of memory for a KV cache of %d tokens (%.1f MB)", ctx,
                   2.0 * (double)per * sizeof(float) / 1e6);
        cache_free(c);
        return NULL;
    }
    return c;
}

void cache_free(qvl_cache *c) {
    if (!c) return;
    free(c->k);
    free(c->v);
    free(c->next_after);
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

typedef struct {
    int n;
    float *x, *xn, *q, *k, *v, *att, *tmp, *gate, *up;
    float *cos, *sin;        /* [n, head_dim] */
    int *pos;                /* [3][n] */
    int *vis_img, *vis_row;  /* per new token: its image and row, or -1 */
} fwd_scratch;

static void scratch_free(fwd_scratch *s) {
    free(s->x); free(s->xn); free(s->q); free(s->k); free(s->v); free(s->att); free(s->tmp);
    free(s->gate); free(s->up); free(s->cos); free(s->sin); free(s->pos); free(s->vis_img); free(s->vis_row);
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
    if (s->x && s->xn && s->q && s->k && s->v && s->att && s->tmp && s->gate && s->up &&
        s->cos && s->sin && s->pos && s->vis_img && s->vis_row) return 0;
    scratch_free(s);
    return -1;
}

/* ---------------------------------------------------------------- attention */

typedef struct {
    const qvl_text_config *tc;
    const float *q;          /* [n, heads*hd] */
    const float *kc, *vc;    /* this layer's cache [ctx][kvd] */
    float *out;              /* [n, heads*hd] */
    int past, n, kvd;
} attn_job;

#define QBLOCK 64     /* new tokens per sgemm attention block */

/* Decoding, one new token: items are heads, a dot product per cached key. */
static void attention_one(void *p, int begin, int end) {
    attn_job *j = p;
    const qvl_text_config *tc = j->tc;
    int hd = tc->head_dim, group = tc->heads / tc->kv_heads;
    float *scores = malloc(sizeof(float) * (size_t)(j->past + 1));
    if (!scores) abort();
    float scale = 1.0f / sqrtf((float)hd);
    for (int h = begin; h < end; h++) {
        int kvh = h / group;
        attend(j->out + (size_t)h * hd, j->q + (size_t)h * hd, j->kc + (size_t)kvh * hd,
               j->vc + (size_t)kvh * hd, j->past + 1, j->kvd, hd, scale, scores);
    }
    free(scores);
}

/* Prefill: items are (block of QBLOCK new tokens, head) pairs, two sgemm each;
 * token i of the call sees cache rows 0 .. past+i. */
static void attention_blocks(void *p, int begin, int end) {
    attn_job *j = p;
    const qvl_text_config *tc = j->tc;
    int hd = tc->head_dim, group = tc->heads / tc->kv_heads, qd = tc->heads * hd;
    float *scores = malloc(sizeof(float) * (size_t)QBLOCK * (size_t)(j->past + j->n));
    if (!scores) abort();
    float scale = 1.0f / sqrtf((float)hd);
    for (int item = begin; item < end; item++) {
        int i0 = item / tc->heads * QBLOCK, h = item % tc->heads, kvh = h / group;
        int nq = j->n - i0 < QBLOCK ? j->n - i0 : QBLOCK;
        size_t off = (size_t)i0 * qd + (size_t)h * hd;
        attend_block(j->out + off, qd, j->q + off, qd, j->kc + (size_t)kvh * hd, j->vc + (size_t)kvh * hd,
                     j->kvd, nq, j->past + i0 + nq, hd, scale, j->past + i0, scores);
    }
    free(scores);
}

static void self_attention(qvl_cache *c, const qvl_layer *L, int layer, fwd_scratch *s) {
    const qvl_text_config *tc = &c->m->cfg.text;
    int n = s->n, hd = tc->head_dim, kvd = c->kvd, qd = tc->heads * hd;
    matmul(s->q, s->xn, &L->q, n);
    matmul(s->k, s->xn, &L->k, n);
    matmul(s->v, s->xn, &L->v, n);
    for (int i = 0; i < n; i++) {
        const float *cs = s->cos + (size_t)i * hd, *sn = s->sin + (size_t)i * hd;
        for (int h = 0; h < tc->heads; h++) {
            float *q = s->q + (size_t)i * qd + (size_t)h * hd;
            rmsnorm(q, q, L->q_norm, hd, tc->rms_eps);
            rope_rotate_half(q, cs, sn, hd);
        }
        for (int h = 0; h < tc->kv_heads; h++) {
            float *k = s->k + (size_t)i * kvd + (size_t)h * hd;
            rmsnorm(k, k, L->k_norm, hd, tc->rms_eps);
            rope_rotate_half(k, cs, sn, hd);
        }
    }
    float *kc = c->k + (size_t)layer * c->ctx * kvd, *vc = c->v + (size_t)layer * c->ctx * kvd;
    memcpy(kc + (size_t)c->len * kvd, s->k, (size_t)n * kvd * sizeof(float));
    memcpy(vc + (size_t)c->len * kvd, s->v, (size_t)n * kvd * sizeof(float));
    attn_job job = { tc, s->q, kc, vc, s->att, c->len, n, kvd };
    if (n == 1) parallel_for(tc->heads, attention_one, &job);
    else parallel_for((n + QBLOCK - 1) / QBLOCK * tc->heads, attention_blocks, &job);
    matmul(s->tmp, s->att, &L->o, n);
    add_inplace(s->x, s->tmp, n * tc->hidden);
}

/* ---------------------------------------------------------------- MLP */

static void swiglu(float *gate, const float *up, int n) {
    silu(gate, n);
    for (int i = 0; i < n; i++) gate[i] *= up[i];
}

static void dense_mlp(const qvl_layer *L, fwd_scratch *s, int hidden) {
    int n = s->n, inter = L->gate.out;
    matmul(s->gate, s->xn, &L->gate, n);
    matmul(s->up, s->xn, &L->up, n);
    swiglu(s->gate, s->up, n * inter);
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

/* The sparse block: each expert runs once over the rows routed to it; each
 * row then sums its k expert outputs in rank order. */
static int moe_mlp(const qvl_layer *L, const qvl_text_config *tc, fwd_scratch *s, char *err) {
    int n = s->n, H = tc->hidden, E = tc->num_experts, k = tc->experts_per_tok, Im = tc->moe_intermediate;
    float *logits = malloc(sizeof(float) * (size_t)n * E), *probs = malloc(sizeof(float) * (size_t)E);
    int *sel = malloc(sizeof(int) * (size_t)n * k), *rows = malloc(sizeof(int) * (size_t)n * k);
    float *wt = malloc(sizeof(float) * (size_t)n * k);
    float *xin = malloc(sizeof(float) * (size_t)n * H), *yout = malloc(sizeof(float) * (size_t)n * H);
    float *ys = malloc(sizeof(float) * (size_t)n * k * H);
    int rc = -1;
    if (!logits || !probs || !sel || !rows || !wt || !xin || !yout || !ys) {
        qvl_seterr(err, "out of memory in the MoE block");
        goto done;
    }
    matmul(logits, s->xn, &L->router, n);
    for (int i = 0; i < n; i++) route(logits + (size_t)i * E, E, k, probs, sel + (size_t)i * k, wt + (size_t)i * k);
    for (int e = 0; e < E; e++) {
        int cnt = 0;
        for (int t = 0; t < n * k; t++)
            if (sel[t] == e) rows[cnt++] = t;     /* t = token * k + rank */
        if (!cnt) continue;
        for (int r = 0; r < cnt; r++)
            memcpy(xin + (size_t)r * H, s->xn + (size_t)(rows[r] / k) * H, (size_t)H * sizeof(float));
        matmul(s->gate, xin, &L->exp_gate[e], cnt);
        matmul(s->up, xin, &L->exp_up[e], cnt);
        swiglu(s->gate, s->up, cnt * Im);
        matmul(yout, s->gate, &L->exp_down[e], cnt);
        for (int r = 0; r < cnt; r++)
            memcpy(ys + (size_t)rows[r] * H, yout + (size_t)r * H, (size_t)H * sizeof(float));
    }
    for (int i = 0; i < n; i++)
        for (int r = 0; r < k; r++) {
            const float *y = ys + ((size_t)i * k + r) * H;
            float w = wt[(size_t)i * k + r];
            float *x = s->x + (size_t)i * H;
            for (int d = 0; d < H; d++) x[d] += w * y[d];
        }
    rc = 0;
done:
    free(logits); free(probs); free(sel); free(rows); free(wt); free(xin); free(yout); free(ys);
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
    fwd_scratch s;
    if (n < 1) { qvl_seterr(err, "decoder: no tokens to add"); return -1; }
    if (scratch_alloc(&s, tc, n)) { qvl_seterr(err, "out of memory for %d new tokens", n); return -1; }
    int rc = -1;
    if (prepare(c, ids, n, images, n_images, &s, err)) goto done;

    for (int i = 0; i < n; i++) {
        float *row = s.x + (size_t)i * H;
        if (s.vis_img[i] >= 0)
            memcpy(row, images[s.vis_img[i]].embeds + (size_t)s.vis_row[i] * H, (size_t)H * sizeof(float));
        else
            weight_row_f32(&m->text.embed, ids[i], row);
        mrope_cos_sin(&c->rope, s.pos[i], s.pos[n + i], s.pos[2 * n + i],
                      s.cos + (size_t)i * hd, s.sin + (size_t)i * hd);
    }

    char name[64];
    int n_deep = n_images > 0 ? m->cfg.vision.n_deepstack : 0;
    for (int l = 0; l < tc->layers; l++) {
        const qvl_layer *L = &m->text.layers[l];
        for (int i = 0; i < n; i++)
            rmsnorm(s.xn + (size_t)i * H, s.x + (size_t)i * H, L->attn_norm, H, tc->rms_eps);
        self_attention(c, L, l, &s);
        for (int i = 0; i < n; i++)
            rmsnorm(s.xn + (size_t)i * H, s.x + (size_t)i * H, L->mlp_norm, H, tc->rms_eps);
        if (L->sparse) { if (moe_mlp(L, tc, &s, err)) goto done; }
        else dense_mlp(L, &s, H);
        snprintf(name, sizeof name, "layer_out.%d", l);
        probe_emit(probe, name, s.x, n, H);
        if (l < n_deep)
            for (int i = 0; i < n; i++)
                if (s.vis_img[i] >= 0)
                    add_inplace(s.x + (size_t)i * H,
                                images[s.vis_img[i]].deepstack[l] + (size_t)s.vis_row[i] * H, H);
    }
    probe_emit(probe, "final_norm_in", s.x, n, H);
    for (int i = 0; i < n; i++)
        rmsnorm(s.xn + (size_t)i * H, s.x + (size_t)i * H, m->text.final_norm, H, tc->rms_eps);
    probe_emit(probe, "final_norm_out", s.xn, n, H);
    if (logits) {
        int V = m->text.lm_head.out;
        if (all_logits) matmul(logits, s.xn, &m->text.lm_head, n);
        else matmul(logits, s.xn + (size_t)(n - 1) * H, &m->text.lm_head, 1);
        probe_emit(probe, "logits_last", all_logits ? logits + (size_t)(n - 1) * V : logits, 1, V);
    }

    /* Commit: the new keys/values were written past len; now they count.  The
     * position state after each token is the running maximum + 1, so that a
     * truncation inside a turn restores exactly what came before. */
    int run = cache_next_pos(c);
    for (int i = 0; i < n; i++) {
        int p = s.pos[i];
        if (s.pos[n + i] > p) p = s.pos[n + i];
        if (s.pos[2 * n + i] > p) p = s.pos[2 * n + i];
        if (p + 1 > run) run = p + 1;
        c->next_after[c->len + i] = run;
    }
    c->len += n;
    rc = 0;
done:
    scratch_free(&s);
    return rc;
}

int decoder_step(qvl_cache *c, int id, float *logits, char *err) {
    return decoder_forward(c, &id, 1, NULL, 0, logits, 0, NULL, err);
}
