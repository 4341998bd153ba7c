/* kernels.h - the inner loops of ops.c, once per instruction set.
 *
 * ops.c decides what to compute (which rows, which tiles, which thread); a
 * kernel table says how the innermost loop runs on this CPU.  There are
 * three tables: AVX-512 (F/BW/VL/DQ), AVX2 (+FMA, F16C) and portable C;
 * ops.c picks the best the CPU supports at run time.  A table's functions
 * are pure: the same inputs give the same bits whichever thread calls them,
 * which is what keeps the results independent of the thread count.
 *
 * This header is private to the engine's arithmetic (ops.c and the
 * kernels_*.c files). */
#ifndef QVL_KERNELS_H
#define QVL_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "safetensors.h"   /* qvl_dtype */

typedef struct {
    const char *name;
    /* Floats of scratch prep_x needs for an input of n values. */
    size_t (*prep_size)(int n);
    /* Lays x out for dot_rows over weights of dtype t (xp: prep_size floats). */
    void (*prep_x)(float *xp, const float *x, int n, qvl_dtype t);
    /* y[r] = sum_i W[r][i] x[i] for `rows` rows of n stored values, ld
     * elements apart; xp from prep_x.  Each row's sum is computed in the same
     * order however many rows a call covers. */
    void (*dot_rows)(float *y, const void *w, qvl_dtype t, int64_t ld, int rows, const float *xp, int n);
    /* y[0..cnt) = sum_i x[i] W[i][0..cnt) over nin rows ld elements apart
     * (in-major weights); every output lane accumulates in input order. */
    void (*axpy_rows)(float *y, const float *x, const void *w, qvl_dtype t, int64_t ld, int nin, int cnt);
    /* dst[0..n) = src[0..n) as float. */
    void (*widen)(float *dst, const void *src, qvl_dtype t, int n);

    /* Matrix-matrix products (gemm_mr = 0: none, ops.c uses OpenBLAS).
     * C[mr, nr] = (accumulate ? C : 0) + A . B over kc, with A packed as
     * [kc][gemm_mr] (one value per row of C for each k) and B as [kc][gemm_nr]
     * (one per column); mr <= gemm_mr, nr <= gemm_nr are the valid rows and
     * columns, C's rows ldc floats apart.  Each C value is one chain of FMAs
     * in k order, so it does not depend on how the product is tiled. */
    int gemm_mr, gemm_nr;
    void (*gemm_kernel)(int kc, const float *a, const float *b, float *c, int ldc, int accumulate, int mr, int nr);
    /* Packs B for gemm_kernel from cnt (<= gemm_nr) outputs by kc inputs of a
     * weight starting at w: out-major rows (output o, input k at w[o*ld + k])
     * or in-major ones (w[k*ld + o]); outputs past cnt are zero. */
    void (*gemm_pack_b)(float *panel, const void *w, qvl_dtype t, int64_t ld, int in_major, int cnt, int kc);
    /* Packs A for gemm_kernel: `rows` (<= gemm_mr) rows of kc floats, lda
     * apart, as [kc][gemm_mr]; rows past `rows` are zero. */
    void (*gemm_pack_a)(float *a, const float *x, int64_t lda, int rows, int kc);

    /* Elementwise, in place over n floats. */
    void (*add)(float *y, const float *x, int n);       /* y += x */
    float (*max)(const float *x, int n);
    float (*exp_sum)(float *x, int n, float shift, float mul);   /* x = exp(mul * (x - shift)); returns the sum */
    void (*scale)(float *x, int n, float s);
    void (*silu_mul)(float *g, const float *u, int n);  /* g = silu(g) * u */
    void (*silu)(float *x, int n);
    void (*gelu_tanh)(float *x, int n);

    /* Decoding attention for `group` query heads sharing one key/value head:
     * scores[g*ldsc + j] = scale * q_g . k_j, j < n (q heads dim apart, keys
     * `stride` elements apart); then out_g = sum_j p[g*ldsc + j] v_j.  Keys
     * and values are of type t, QVL_F32 or QVL_F16 (widened in registers):
     * halves give the same bits as floats holding the same values. */
    void (*attn_scores)(float *scores, int ldsc, const float *q, int group, const void *k, qvl_dtype t, int n,
                        int stride, int dim, float scale);
    void (*attn_values)(float *out, const float *p, int ldsc, int group, const void *v, qvl_dtype t, int n,
                        int stride, int dim);
    /* dst[0..n) = src[0..n) as IEEE halves, rounded to nearest even: the
     * same bits in every table (qvl_f32_to_f16). */
    void (*narrow_f16)(uint16_t *dst, const float *src, int n);

    /* Matrix-matrix products over bf16 weights with the activations rounded
     * to bf16 and the AVX512_BF16 dot-product instruction (NULL: none; same
     * gemm_mr x gemm_nr blocking; used only when ops_set_bf16_matmul is on).
     * Operands come in k pairs (kc even):
     *   A: per pair, gemm_mr words (bf16(x[k]), bf16(x[k+1])), one per row;
     *   B: per pair, gemm_nr words (w[o][k], w[o][k+1]), one per output.
     * Each C value is one accumulation chain in k order, as gemm_kernel's. */
    void (*gemm_bf16_kernel)(int kc, const uint32_t *a, const uint32_t *b, float *c, int ldc, int accumulate,
                             int mr, int nr);
    void (*gemm_bf16_pack_b)(uint32_t *panel, const uint16_t *w, int64_t ld, int in_major, int cnt, int kc);
    void (*gemm_bf16_pack_a)(uint32_t *a, const float *x, int64_t lda, int rows, int kc);
    /* dst[0..n) = src[0..n) as bf16, rounded to nearest even (vcvtneps2bf16:
     * denormals to zero); NULL where gemm_bf16_kernel is. */
    void (*narrow_bf16)(uint16_t *dst, const float *src, int n);
    /* gemm_bf16_pack_a of a softmax's numerators: row m's inputs are
     * exp(mul * (x[m][k] - shift[m])) while col0 + k < visible[m], else 0;
     * sums[m] += their sum (in float, before the rounding to bf16).  NULL
     * where gemm_bf16_kernel is. */
    void (*gemm_bf16_pack_exp)(uint32_t *a, const float *x, int64_t lda, int rows, int kc, const float *shift,
                               const int *visible, int col0, float mul, float *sums);
} ops_kernels;

/* NULL when the CPU (or the compiler's target) lacks the instructions.
 * kernels_avx512_bf16 is the AVX-512 table plus the bf16 products, for CPUs
 * with AVX512_BF16. */
const ops_kernels *kernels_avx512(void);
const ops_kernels *kernels_avx512_bf16(void);
const ops_kernels *kernels_avx2(void);
const ops_kernels *kernels_portable(void);

#endif
