/* ops.h - the arithmetic of the forward pass, in float32.
 *
 * matmul is the heavy operation: y[n, out] = x[n, in] . W^T for a weight in
 * its stored dtype (bf16, f16 or f32; out-major or in-major; any row stride),
 * then attention.  Everything else works on one row (a token's vector) at a
 * time and is cheap.  The inner loops run on the best kernels the CPU has
 * (AVX-512, AVX2 or portable C, chosen at run time); every result is
 * independent of the thread count. */
#ifndef QVL_OPS_H
#define QVL_OPS_H

#include "weights.h"

/* y[n, w->out] = x[n, w->in] . W^T  (y and x contiguous, distinct).
 * One row (decoding) runs a vectorized dot-product kernel over the stored
 * dtype; several rows convert weight tiles to float and call cblas_sgemm.
 * Both split the outputs across the thread pool in fixed tiles, so the result
 * does not depend on the thread count. */
void matmul(float *y, const float *x, const qvl_weight *w, int n);

/* Several independent products in one pass of the thread pool (q/k/v,
 * gate/up, the experts a token is routed to): p->y = p->x . p->w^T over p->n
 * rows each, every output as matmul computes it. */
typedef struct {
    float *y;
    const float *x;
    const qvl_weight *w;
    int n;
} qvl_product;
void matmul_batch(const qvl_product *p, int count);

/* y[n, cols] += b[cols] on every row. */
void add_bias(float *y, const float *b, int n, int cols);
/* y[i] += x[i] */
void add_inplace(float *y, const float *x, int n);

/* One vector of `dim` values (x and y may alias). */
void rmsnorm(float *y, const float *x, const float *w, int dim, float eps);
void layernorm(float *y, const float *x, const float *w, const float *b, int dim, float eps);
/* The same over `rows` vectors dim apart, spread over the thread pool. */
void rmsnorm_rows(float *y, const float *x, const float *w, int rows, int dim, float eps);
void layernorm_rows(float *y, const float *x, const float *w, const float *b, int rows, int dim, float eps);
void softmax(float *x, int n);

/* In place over n values (large n spread over the thread pool; add_bias and
 * add_inplace too). */
void silu(float *x, int n);
void silu_mul(float *g, const float *u, int n);   /* g = silu(g) * u (SwiGLU) */
void gelu_tanh(float *x, int n);      /* gelu_pytorch_tanh */
void gelu_erf(float *x, int n);       /* nn.GELU() */

/* Rotary embedding, rotate-half form, over one head of `dim` values:
 * x' = x * cos + rotate_half(x) * sin, rotate_half(x) = (-x[d/2:], x[:d/2]). */
void rope_rotate_half(float *x, const float *cos, const float *sin, int dim);

/* One attention head for one query: out[dim] = sum_j softmax_j(scale * q.k_j) v_j
 * over n keys/values that sit `stride` floats apart.  scores: n floats of scratch. */
void attend(float *out, const float *q, const float *k, const float *v, int n, int stride,
            int dim, float scale, float *scores);
/* The same for `group` query heads that share one key/value head (q and out:
 * group heads of dim floats, back to back), reading the keys and values once.
 * Keys and values are of type kv: QVL_F32, or QVL_F16 (the f16 KV cache;
 * stride then counts halves), which gives the same bits as floats holding the
 * same values.  scores: group*n floats of scratch. */
void attend_group(float *out, const float *q, int group, const void *k, const void *v, qvl_dtype kv, int n,
                  int stride, int dim, float scale, float *scores);
/* dst[i] = src[i] as an IEEE half, rounded to nearest even (qvl_f32_to_f16's
 * bits on every kernel table): how the f16 KV cache stores a key or value. */
void round_to_f16(uint16_t *dst, const float *src, int n);

/* One attention head for nq queries:
 *   out[i] = sum_j softmax_j(scale * q_i.k_j) v_j,  j < visible(i)
 * visible(i) = nk for full attention (causal_past < 0), else causal_past + i + 1
 * (query i sits right after causal_past cached tokens).  q, k, v, out rows
 * are ldq, ldk (k and v), ldo elements apart; k and v are of type kv, QVL_F32
 * or QVL_F16 (widened as they are prepared: the same bits as floats).  The keys and values are prepared
 * once per call, so a call should cover all of a head's queries; they are
 * scored ATTEND_QBLOCK at a time.  ws: the scratch memory (packed keys and
 * values, scores) the call reuses, grown as needed. */
#define ATTEND_QBLOCK 96
typedef struct {
    void *buf[6];
    size_t bytes[6];
} attend_scratch;      /* zero-initialize; one per thread; freed by attend_scratch_free */
void attend_block(float *out, int ldo, const float *q, int ldq, const void *k, const void *v, qvl_dtype kv, int ldk,
                  int nq, int nk, int dim, float scale, int causal_past, attend_scratch *ws);
void attend_scratch_free(attend_scratch *ws);

/* OpenBLAS: our pool parallelizes around sgemm, so the library is kept at one
 * thread (done on first use).  Debian's OpenBLAS 0.3.21 misdetects recent CPUs
 * and picks slow kernels unless OPENBLAS_CORETYPE is set before the library
 * loads: the program may setenv this value and re-exec itself early in main.
 * Returns "SkylakeX" (AVX-512), "Haswell" (AVX2) or NULL. */
const char *ops_openblas_coretype(void);
/* Which kernels run: "avx512bf16" (AVX-512 with the bf16 products),
 * "avx512", "avx2" or "portable". */
const char *ops_kernel_name(void);
/* Forces a kernel table no better than the CPU has: "avx512bf16", "avx512", "avx2",
 * "portable", or NULL for the best.  -1 if this CPU lacks it.  Tests compare
 * the paths; not to be called while a forward pass runs. */
int ops_force_kernel(const char *name);
/* ops_force_kernel("portable") when on, the best when off. */
void ops_force_portable(int on);

/* Matrix-matrix products over bf16 weights (prompts, the vision encoder) run
 * in float by default: the reference's numerics, to float rounding.  On: the
 * activations are rounded to bf16 and multiplied with the AVX512_BF16
 * dot-product instruction (llama.cpp's bf16 numerics), twice the multiplies
 * per instruction, at about 1e-3 relative error.  -1 (and nothing changes)
 * if the CPU lacks AVX512_BF16.  Not to be called while a forward pass runs. */
int ops_set_bf16_matmul(int on);
int ops_bf16_matmul(void);
/* Whether this CPU has AVX512_BF16 (ops_set_bf16_matmul(1) would succeed). */
int ops_bf16_matmul_supported(void);

#endif
