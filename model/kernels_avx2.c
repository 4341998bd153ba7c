/* kernels_avx2.c - the kernel table for AVX2 + FMA + F16C.
 *
 * The same loops as the AVX-512 table at half the width, for the many CPUs
 * without AVX-512: weights widened in registers (bf16 by a shift, f16 by
 * vcvtph2ps), one row at a time with a prefetch ahead, and a Cephes exp
 * whose exponent is added to the float's bits (inputs clamped to the normal
 * range; the ends give 0 and inf as expf does). */
#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>
#include <string.h>

#include "common.h"

#define AVX2 __attribute__((target("avx2,fma,f16c")))
#define INLINE __attribute__((always_inline)) static inline

static size_t prep_size(int n) { return (size_t)n; }

static void prep_x(float *xp, const float *x, int n, qvl_dtype t) {
    (void)t;
    memcpy(xp, x, (size_t)n * sizeof(float));
}

AVX2 INLINE __m256 load8(const void *row, qvl_dtype t, int i) {
    if (t == QVL_F32) return _mm256_loadu_ps((const float *)row + i);
    const __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)row + i));
    if (t == QVL_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

static inline float stored(const void *row, qvl_dtype t, int64_t i) {
    if (t == QVL_F32) return ((const float *)row)[i];
    uint16_t h = ((const uint16_t *)row)[i];
    return t == QVL_BF16 ? qvl_bf16_to_f32(h) : qvl_f16_to_f32(h);
}

AVX2 INLINE float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

/* One row's dot product, a single stream through memory with a software
 * prefetch 2 KiB ahead; two accumulators.  On the 2B shape (2 threads, this
 * table forced on a Zen 4) 8.5-9.0 tokens/s against 6.7-7.2 for four rows
 * interleaved without a prefetch. */
#define PREFETCH_BYTES 2048

AVX2 INLINE float dot_row(const char *row, qvl_dtype t, const float *x, int n) {
    size_t es = qvl_dtype_size(t);
    __m256 acc_a = _mm256_setzero_ps(), acc_b = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        if ((i * es) % 64 == 0) _mm_prefetch(row + (size_t)i * es + PREFETCH_BYTES, _MM_HINT_T0);
        acc_a = _mm256_fmadd_ps(load8(row, t, i), _mm256_loadu_ps(x + i), acc_a);
        acc_b = _mm256_fmadd_ps(load8(row, t, i + 8), _mm256_loadu_ps(x + i + 8), acc_b);
    }
    float s = hsum(_mm256_add_ps(acc_a, acc_b));
    for (int k = i; k < n; k++) s += stored(row, t, k) * x[k];
    return s;
}

AVX2 static void dot_rows(float *y, const void *w, qvl_dtype t, int64_t ld, int rows, const float *xp, int n) {
    size_t row_bytes = (size_t)ld * qvl_dtype_size(t);
    for (int r = 0; r < rows; r++) y[r] = dot_row((const char *)w + (size_t)r * row_bytes, t, xp, n);
}

#define AXPY_VECS 8    /* outputs held in registers: 8 vectors of 8 */

/* In-major: blocks of 64 outputs in registers while the input rows stream by;
 * a lane's accumulation is one FMA per input, in input order; the last
 * partial vector goes through a zero-padded copy so that it gets the same. */
AVX2 static void axpy_rows(float *y, const float *x, const void *w, qvl_dtype t, int64_t ld, int nin, int cnt) {
    size_t es = qvl_dtype_size(t);
    int full = cnt / 8 * 8;
    for (int o0 = 0; o0 < full; o0 += 8 * AXPY_VECS) {
        int nv = (full - o0) / 8 < AXPY_VECS ? (full - o0) / 8 : AXPY_VECS;
        __m256 acc[AXPY_VECS];
#pragma GCC unroll 8
        for (int k = 0; k < AXPY_VECS; k++) acc[k] = _mm256_setzero_ps();
        for (int i = 0; i < nin; i++) {
            const char *row = (const char *)w + ((size_t)i * (size_t)ld + (size_t)o0) * es;
            __m256 a = _mm256_set1_ps(x[i]);
#pragma GCC unroll 8
            for (int k = 0; k < AXPY_VECS; k++)
                if (k < nv) acc[k] = _mm256_fmadd_ps(a, load8(row, t, 8 * k), acc[k]);
        }
#pragma GCC unroll 8
        for (int k = 0; k < AXPY_VECS; k++)
            if (k < nv) _mm256_storeu_ps(y + o0 + 8 * k, acc[k]);
    }
    if (full < cnt) {
        __m256 acc = _mm256_setzero_ps();
        for (int i = 0; i < nin; i++) {
            const char *row = (const char *)w + ((size_t)i * (size_t)ld + (size_t)full) * es;
            float tmp[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (int k = 0; k < cnt - full; k++) tmp[k] = stored(row, t, k);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(x[i]), _mm256_loadu_ps(tmp), acc);
        }
        float out[8];
        _mm256_storeu_ps(out, acc);
        memcpy(y + full, out, (size_t)(cnt - full) * sizeof(float));
    }
}

AVX2 static void widen(float *dst, const void *src, qvl_dtype t, int n) {
    if (t == QVL_F32) { memcpy(dst, src, (size_t)n * sizeof(float)); return; }
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load8(src, t, i));
    for (; i < n; i++) dst[i] = stored(src, t, i);
}

/* ---------------------------------------------------------------- exp and friends */

AVX2 INLINE __m256 exp8(__m256 x0) {
    const __m256 lo = _mm256_set1_ps(-87.3365478515625f), hi = _mm256_set1_ps(88.7228317260742f);
    __m256 x = _mm256_min_ps(_mm256_max_ps(x0, lo), hi);
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    __m256 y = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(p, r), r, r), _mm256_set1_ps(1.0f));
    /* y * 2^n: n in [-126, 128]; 2^128 is done as 2 * 2^127. */
    __m256i ni = _mm256_cvtps_epi32(n);
    __m256i big = _mm256_cmpgt_epi32(ni, _mm256_set1_epi32(127));
    ni = _mm256_sub_epi32(ni, _mm256_and_si256(big, _mm256_set1_epi32(1)));
    y = _mm256_blendv_ps(y, _mm256_add_ps(y, y), _mm256_castsi256_ps(big));
    __m256 e = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(ni, _mm256_set1_epi32(127)), 23));
    y = _mm256_mul_ps(y, e);
    y = _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x0, lo, _CMP_LT_OQ));
    return _mm256_blendv_ps(y, _mm256_set1_ps(__builtin_inff()), _mm256_cmp_ps(x0, hi, _CMP_GT_OQ));
}

AVX2 INLINE __m256 times_sigmoid(__m256 x, __m256 z) {
    return _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0f), exp8(_mm256_sub_ps(_mm256_setzero_ps(), z))));
}

/* Up to 8 floats, zero-padded, through a small buffer (tails). */
AVX2 INLINE __m256 load_part(const float *x, int n) {
    float t[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    memcpy(t, x, (size_t)n * sizeof(float));
    return _mm256_loadu_ps(t);
}
AVX2 INLINE void store_part(float *x, __m256 v, int n) {
    float t[8];
    _mm256_storeu_ps(t, v);
    memcpy(x, t, (size_t)n * sizeof(float));
}

AVX2 static void add(float *y, const float *x, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(y + i), _mm256_loadu_ps(x + i)));
    for (; i < n; i++) y[i] += x[i];
}

AVX2 static float vmax(const float *x, int n) {
    float m = x[0];
    int i = 0;
    if (n >= 8) {
        __m256 v = _mm256_loadu_ps(x);
        for (i = 8; i + 8 <= n; i += 8) v = _mm256_max_ps(v, _mm256_loadu_ps(x + i));
        float t[8];
        _mm256_storeu_ps(t, v);
        for (int k = 0; k < 8; k++) if (t[k] > m) m = t[k];
    }
    for (; i < n; i++) if (x[i] > m) m = x[i];
    return m;
}

AVX2 static float exp_sum(float *x, int n, float shift, float mul) {
    __m256 s = _mm256_setzero_ps(), sh = _mm256_set1_ps(shift), mu = _mm256_set1_ps(mul);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 e = exp8(_mm256_mul_ps(mu, _mm256_sub_ps(_mm256_loadu_ps(x + i), sh)));
        _mm256_storeu_ps(x + i, e);
        s = _mm256_add_ps(s, e);
    }
    if (i < n) {
        __m256 e = exp8(_mm256_mul_ps(mu, _mm256_sub_ps(load_part(x + i, n - i), sh)));
        store_part(x + i, e, n - i);
        float t[8];
        _mm256_storeu_ps(t, e);
        for (int k = n - i; k < 8; k++) t[k] = 0;
        s = _mm256_add_ps(s, _mm256_loadu_ps(t));
    }
    return hsum(s);
}

AVX2 static void scale(float *x, int n, float s) {
    __m256 v = _mm256_set1_ps(s);
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), v));
    for (; i < n; i++) x[i] *= s;
}

AVX2 static void silu(float *x, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        _mm256_storeu_ps(x + i, times_sigmoid(v, v));
    }
    if (i < n) {
        __m256 v = load_part(x + i, n - i);
        store_part(x + i, times_sigmoid(v, v), n - i);
    }
}

AVX2 static void silu_mul(float *g, const float *u, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(g + i);
        _mm256_storeu_ps(g + i, _mm256_mul_ps(times_sigmoid(v, v), _mm256_loadu_ps(u + i)));
    }
    if (i < n) {
        __m256 v = load_part(g + i, n - i);
        store_part(g + i, _mm256_mul_ps(times_sigmoid(v, v), load_part(u + i, n - i)), n - i);
    }
}

AVX2 INLINE __m256 gelu8(__m256 v) {
    __m256 v3 = _mm256_mul_ps(_mm256_mul_ps(v, v), v);
    __m256 u = _mm256_mul_ps(_mm256_set1_ps(2 * 0.7978845608028654f), _mm256_fmadd_ps(v3, _mm256_set1_ps(0.044715f), v));
    return times_sigmoid(v, u);
}

AVX2 static void gelu_tanh(float *x, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, gelu8(_mm256_loadu_ps(x + i)));
    if (i < n) store_part(x + i, gelu8(load_part(x + i, n - i)), n - i);
}

/* ---------------------------------------------------------------- decoding attention */

/* 8 keys or values at element i of a row of type t (QVL_F32 or QVL_F16). */
AVX2 INLINE __m256 kv8(const void *row, qvl_dtype t, size_t i) {
    if (t == QVL_F16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + i)));
    return _mm256_loadu_ps((const float *)row + i);
}

/* The loops take the type as a constant: each caller below gets its own copy. */
AVX2 INLINE void scores_of(float *scores, int ldsc, const float *q, int group, const void *k, qvl_dtype t, int n,
                           int stride, int dim, float scale) {
    for (int j = 0; j < n; j++) {
        size_t at = (size_t)j * stride;
        for (int g = 0; g < group; g++) {
            const float *qg = q + (size_t)g * dim;
            __m256 a = _mm256_setzero_ps();
            for (int d = 0; d < dim; d += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(qg + d), kv8(k, t, at + d), a);
            scores[(size_t)g * ldsc + j] = hsum(a) * scale;
        }
    }
}

AVX2 static void attn_scores(float *scores, int ldsc, const float *q, int group, const void *k, qvl_dtype t, int n,
                             int stride, int dim, float scale) {
    if (dim % 8) { kernels_portable()->attn_scores(scores, ldsc, q, group, k, t, n, stride, dim, scale); return; }
    if (t == QVL_F16) scores_of(scores, ldsc, q, group, k, QVL_F16, n, stride, dim, scale);
    else scores_of(scores, ldsc, q, group, k, QVL_F32, n, stride, dim, scale);
}

AVX2 INLINE void values_of(float *out, const float *p, int ldsc, int group, const void *v, qvl_dtype t, int n,
                           int stride, int dim) {
    memset(out, 0, (size_t)group * dim * sizeof(float));
    for (int j = 0; j < n; j++) {
        size_t at = (size_t)j * stride;
        for (int g = 0; g < group; g++) {
            __m256 a = _mm256_set1_ps(p[(size_t)g * ldsc + j]);
            float *o = out + (size_t)g * dim;
            for (int d = 0; d < dim; d += 8)
                _mm256_storeu_ps(o + d, _mm256_fmadd_ps(a, kv8(v, t, at + d), _mm256_loadu_ps(o + d)));
        }
    }
}

AVX2 static void attn_values(float *out, const float *p, int ldsc, int group, const void *v, qvl_dtype t, int n,
                             int stride, int dim) {
    if (dim % 8) { kernels_portable()->attn_values(out, p, ldsc, group, v, t, n, stride, dim); return; }
    if (t == QVL_F16) values_of(out, p, ldsc, group, v, QVL_F16, n, stride, dim);
    else values_of(out, p, ldsc, group, v, QVL_F32, n, stride, dim);
}

/* vcvtps2ph, to nearest even; the tail through a zero-padded copy. */
AVX2 static void narrow_f16(uint16_t *dst, const float *src, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    if (i < n) {
        uint16_t t[8];
        _mm_storeu_si128((__m128i *)t, _mm256_cvtps_ph(load_part(src + i, n - i), _MM_FROUND_TO_NEAREST_INT));
        memcpy(dst + i, t, (size_t)(n - i) * sizeof(uint16_t));
    }
}

static const ops_kernels table = {
    "avx2", prep_size, prep_x, dot_rows, axpy_rows, widen, 0, 0, NULL, NULL, NULL,
    add, vmax, exp_sum, scale, silu_mul, silu, gelu_tanh, attn_scores, attn_values, narrow_f16, NULL, NULL, NULL, NULL, NULL,
};

const ops_kernels *kernels_avx2(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
        return &table;
    return NULL;
}

#else

const ops_kernels *kernels_avx2(void) { return NULL; }

#endif
