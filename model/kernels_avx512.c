/* kernels_avx512.c - the kernel table for AVX-512 (F, BW, VL, DQ).
 *
 * Decoding is a stream of weights through one vector x, so the matrix-vector
 * kernel is built around the load: 32 bf16 weights are one 64-byte load, and
 * they become two float vectors with one shift (the even elements, whose bits
 * sit in the low halves of the 32-bit lanes) and one AND (the odd elements,
 * already in the high halves).  x is laid out once per product to match:
 * within each chunk of 32, the 16 even entries then the 16 odd ones.  Rows
 * run one after another, a single stream per thread with a software
 * prefetch 2 KiB ahead (faster here than interleaving rows).  In-major weights
 * (the published MoE experts) stream eight input rows at a time into an
 * accumulator block in L1, widened the same way.
 *
 * Prefill and the vision encoder run a 12 x 32 register-blocked product over
 * packed operands (the weights widened while they are packed), ~94% of the
 * FMA peak on its own; ops.c drives it.  With AVX512_BF16 a second table,
 * "avx512bf16", adds the same block on vdpbf16ps for --matmul bf16 (bf16
 * weights packed as stored, activations rounded to bf16).
 *
 * exp is the Cephes polynomial on [-ln2/2, ln2/2] with the exponent applied
 * by vscalefps (which also gives 0 and inf at the ends of the range): about
 * 1 ulp, fast enough for the softmaxes of long attention rows and for SiLU
 * and GELU, which are both written as x * sigmoid(.) around it.  Decoding
 * attention keeps a head's accumulators in registers and prefetches the
 * cached keys and values ahead (floats, or halves that vcvtph2ps widens:
 * an f16 cache is half the bytes to stream). */
#include "kernels.h"

#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>
#include <string.h>

#include "common.h"
#include "simd_avx512.h"

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
#define CHUNK 32               /* weights per 64-byte bf16 load */
#define PREFETCH_BYTES 2048    /* how far ahead of each row to prefetch */

static int round_up(int n, int m) { return (n + m - 1) / m * m; }

static size_t prep_size(int n) { return (size_t)round_up(n, CHUNK); }

/* x, zero-padded to whole chunks; for bf16 each chunk is split into its even
 * and odd entries (see the top of the file). */
static void prep_x(float *xp, const float *x, int n, qvl_dtype t) {
    int full = round_up(n, CHUNK);
    if (t != QVL_BF16) {
        memcpy(xp, x, (size_t)n * sizeof(float));
        memset(xp + n, 0, (size_t)(full - n) * sizeof(float));
        return;
    }
    for (int c = 0; c < full; c += CHUNK)
        for (int l = 0; l < CHUNK / 2; l++) {
            int e = c + 2 * l, o = e + 1;
            xp[c + l] = e < n ? x[e] : 0.0f;
            xp[c + CHUNK / 2 + l] = o < n ? x[o] : 0.0f;
        }
}

/* ---------------------------------------------------------------- matrix-vector */

/* The two float vectors of 32 stored weights at w (the first `valid` of them
 * loaded, the rest zero): for bf16 the even and odd elements, else the first
 * and second 16. */
AVX512 __attribute__((always_inline)) static inline void load32(const void *w, qvl_dtype t, int valid, __m512 *a, __m512 *b) {
    if (t == QVL_BF16) {
        __m512i v = valid >= CHUNK ? _mm512_loadu_si512(w)
                                   : _mm512_maskz_loadu_epi16((__mmask32)((1ull << valid) - 1), w);
        *a = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
        *b = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32((int)0xffff0000u)));
    } else if (t == QVL_F16) {
        __m512i v = valid >= CHUNK ? _mm512_loadu_si512(w)
                                   : _mm512_maskz_loadu_epi16((__mmask32)((1ull << valid) - 1), w);
        *a = _mm512_cvtph_ps(_mm512_castsi512_si256(v));
        *b = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(v, 1));
    } else {
        const float *f = w;
        if (valid >= CHUNK) {
            *a = _mm512_loadu_ps(f);
            *b = _mm512_loadu_ps(f + 16);
        } else {
            __mmask32 m = (__mmask32)((1ull << valid) - 1);
            *a = _mm512_maskz_loadu_ps((__mmask16)m, f);
            *b = _mm512_maskz_loadu_ps((__mmask16)(m >> 16), f + 16);
        }
    }
}

/* One row's dot product, a single stream through memory: reading rows one
 * after another, with a software prefetch 2 KiB ahead, keeps the hardware
 * prefetchers on one sequential stream per thread.  Measured on the 2B shape
 * (2 threads, Zen 4), 8.5-9.5 tokens/s against 7.6-8.2 for four rows
 * interleaved with a 512-byte prefetch, the earlier layout. */
AVX512 static float dot_row(const char *w, qvl_dtype t, const float *xp, int n, size_t es) {
    __m512 acc_a = _mm512_setzero_ps(), acc_b = _mm512_setzero_ps();
    int c = 0;
    for (; c + CHUNK <= n; c += CHUNK) {
        const char *p = w + (size_t)c * es;
        _mm_prefetch(p + PREFETCH_BYTES, _MM_HINT_T0);
        __m512 a, b;
        load32(p, t, CHUNK, &a, &b);
        acc_a = _mm512_fmadd_ps(a, _mm512_loadu_ps(xp + c), acc_a);
        acc_b = _mm512_fmadd_ps(b, _mm512_loadu_ps(xp + c + 16), acc_b);
    }
    if (c < n) {
        __m512 a, b;
        load32(w + (size_t)c * es, t, n - c, &a, &b);
        acc_a = _mm512_fmadd_ps(a, _mm512_loadu_ps(xp + c), acc_a);
        acc_b = _mm512_fmadd_ps(b, _mm512_loadu_ps(xp + c + 16), acc_b);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc_a, acc_b));
}

AVX512 static void dot_rows(float *y, const void *w, qvl_dtype t, int64_t ld, int rows, const float *xp, int n) {
    size_t es = qvl_dtype_size(t), row_bytes = (size_t)ld * es;
    for (int r = 0; r < rows; r++) y[r] = dot_row((const char *)w + (size_t)r * row_bytes, t, xp, n, es);
}

/* 16 stored weights at w (the first `valid`), as floats in order. */
AVX512 static inline __m512 load16(const void *w, qvl_dtype t, int valid) {
    __mmask16 m = valid >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << valid) - 1);
    if (t == QVL_F32) return _mm512_maskz_loadu_ps(m, w);
    __m256i h = _mm256_maskz_loadu_epi16(m, w);
    if (t == QVL_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

#define AXPY_ROWS 8        /* input rows streamed together */
#define AXPY_BLOCK 2048    /* outputs accumulated per pass over the rows */
#define AXPY_AHEAD 1024    /* bytes prefetched ahead in each row */

/* In-major: the outputs stay in L1 while the input rows stream by, eight at a
 * time (eight streams for the prefetchers, an eighth of the accumulator
 * traffic).  bf16 rows are widened as in dot_rows, 32 at a time into their
 * even and odd outputs, so the accumulator block is kept in that order and
 * put back in place at the end.  Each lane is one FMA per input, in input
 * order, however the rows are grouped. */
AVX512 static void axpy_rows(float *y, const float *x, const void *w, qvl_dtype t, int64_t ld, int nin, int cnt) {
    size_t es = qvl_dtype_size(t), row_bytes = (size_t)ld * es;
    float acc[AXPY_BLOCK];
    const __m512i lo_idx = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i hi_idx = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    for (int o0 = 0; o0 < cnt; o0 += AXPY_BLOCK) {
        int bc = cnt - o0 < AXPY_BLOCK ? cnt - o0 : AXPY_BLOCK;
        memset(acc, 0, sizeof(float) * (size_t)round_up(bc, CHUNK));
        const char *base = (const char *)w + (size_t)o0 * es;
        for (int i = 0; i < nin; i += AXPY_ROWS) {
            int rows = nin - i < AXPY_ROWS ? nin - i : AXPY_ROWS;
            const char *r0 = base + (size_t)i * row_bytes;
            __m512 a[AXPY_ROWS];
#pragma GCC unroll 8
            for (int r = 0; r < AXPY_ROWS; r++) a[r] = _mm512_set1_ps(r < rows ? x[i + r] : 0.0f);
            for (int c = 0; c < bc; c += CHUNK) {
                int valid = bc - c < CHUNK ? bc - c : CHUNK;
                size_t at = (size_t)c * es;
                __m512 va = _mm512_loadu_ps(acc + c), vb = _mm512_loadu_ps(acc + c + 16);
#pragma GCC unroll 8
                for (int r = 0; r < AXPY_ROWS; r++)
                    if (r < rows) {
                        const char *p = r0 + (size_t)r * row_bytes + at;
                        if ((at & 63) == 0) _mm_prefetch(p + AXPY_AHEAD, _MM_HINT_T0);
                        __m512 wa, wb;
                        load32(p, t, valid, &wa, &wb);
                        va = _mm512_fmadd_ps(a[r], wa, va);
                        vb = _mm512_fmadd_ps(a[r], wb, vb);
                    }
                _mm512_storeu_ps(acc + c, va);
                _mm512_storeu_ps(acc + c + 16, vb);
            }
        }
        /* Back in place: bf16 chunks hold (even, odd) outputs, the others (first 16, next 16). */
        for (int c = 0; c < bc; c += CHUNK) {
            __m512 va = _mm512_loadu_ps(acc + c), vb = _mm512_loadu_ps(acc + c + 16);
            __m512 first = t == QVL_BF16 ? _mm512_permutex2var_ps(va, lo_idx, vb) : va;
            __m512 second = t == QVL_BF16 ? _mm512_permutex2var_ps(va, hi_idx, vb) : vb;
            int valid = bc - c;
            __mmask16 m0 = valid >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << valid) - 1);
            __mmask16 m1 = valid >= 32 ? (__mmask16)0xffff : valid > 16 ? (__mmask16)((1u << (valid - 16)) - 1) : 0;
            _mm512_mask_storeu_ps(y + o0 + c, m0, first);
            _mm512_mask_storeu_ps(y + o0 + c + 16, m1, second);
        }
    }
}

AVX512 static void widen(float *dst, const void *src, qvl_dtype t, int n) {
    if (t == QVL_F32) { memcpy(dst, src, (size_t)n * sizeof(float)); return; }
    size_t es = qvl_dtype_size(t);
    int i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, load16((const char *)src + (size_t)i * es, t, 16));
    if (i < n)
        _mm512_mask_storeu_ps(dst + i, (__mmask16)((1u << (n - i)) - 1),
                              load16((const char *)src + (size_t)i * es, t, n - i));
}

/* ---------------------------------------------------------------- matrix-matrix */

/* A 12 x 32 block of C in 24 registers: per k, two vectors of B and twelve
 * broadcasts of A feed 24 FMAs.  Measured alone at ~94% of the FMA peak. */
#define GEMM_MR 12
#define GEMM_NR 32

/* A block's rows of C into c0 (columns 0-15) and c1 (16-31): the stored
 * values when accumulating, else zeros; m0, m1 mask the nr valid columns. */
AVX512 __attribute__((always_inline)) static inline void load_block(__m512 *c0, __m512 *c1, const float *c, int ldc,
                                                                   int accumulate, int mr, int nr, __mmask16 *m0,
                                                                   __mmask16 *m1) {
    *m0 = nr >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << nr) - 1);
    *m1 = nr >= 32 ? (__mmask16)0xffff : nr > 16 ? (__mmask16)((1u << (nr - 16)) - 1) : 0;
#pragma GCC unroll 12
    for (int m = 0; m < GEMM_MR; m++) {
        if (accumulate && m < mr) {
            c0[m] = _mm512_maskz_loadu_ps(*m0, c + (size_t)m * ldc);
            c1[m] = _mm512_maskz_loadu_ps(*m1, c + (size_t)m * ldc + 16);
        } else {
            c0[m] = c1[m] = _mm512_setzero_ps();
        }
    }
}

/* The block's mr valid rows back to C. */
AVX512 __attribute__((always_inline)) static inline void store_block(const __m512 *c0, const __m512 *c1, float *c, int ldc,
                                                                    int mr, __mmask16 m0, __mmask16 m1) {
#pragma GCC unroll 12
    for (int m = 0; m < GEMM_MR; m++)
        if (m < mr) {
            _mm512_mask_storeu_ps(c + (size_t)m * ldc, m0, c0[m]);
            _mm512_mask_storeu_ps(c + (size_t)m * ldc + 16, m1, c1[m]);
        }
}

AVX512 static void gemm_kernel(int kc, const float *a, const float *b, float *c, int ldc, int accumulate, int mr, int nr) {
    __mmask16 m0, m1;
    __m512 c0[GEMM_MR], c1[GEMM_MR];
    load_block(c0, c1, c, ldc, accumulate, mr, nr, &m0, &m1);
    for (int k = 0; k < kc; k++) {
        __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16);
#pragma GCC unroll 12
        for (int m = 0; m < GEMM_MR; m++) {
            __m512 av = _mm512_set1_ps(a[m]);
            c0[m] = _mm512_fmadd_ps(av, b0, c0[m]);
            c1[m] = _mm512_fmadd_ps(av, b1, c1[m]);
        }
        a += GEMM_MR;
        b += GEMM_NR;
    }
    store_block(c0, c1, c, ldc, mr, m0, m1);
}

static inline float stored_at(const void *w, qvl_dtype t, size_t i) {
    if (t == QVL_F32) return ((const float *)w)[i];
    uint16_t h = ((const uint16_t *)w)[i];
    return t == QVL_BF16 ? qvl_bf16_to_f32(h) : qvl_f16_to_f32(h);
}

AVX512 static void gemm_pack_b(float *panel, const void *w, qvl_dtype t, int64_t ld, int in_major, int cnt, int kc) {
    size_t es = qvl_dtype_size(t);
    const char *base = w;
    if (in_major) {      /* panel row k is the weight's row k: widen and pad */
        __mmask16 m0 = cnt >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << cnt) - 1);
        __mmask16 m1 = cnt >= 32 ? (__mmask16)0xffff : cnt > 16 ? (__mmask16)((1u << (cnt - 16)) - 1) : 0;
        for (int k = 0; k < kc; k++) {
            const char *row = base + (size_t)k * (size_t)ld * es;
            _mm512_storeu_ps(panel + (size_t)k * GEMM_NR, _mm512_maskz_mov_ps(m0, load16(row, t, cnt)));
            _mm512_storeu_ps(panel + (size_t)k * GEMM_NR + 16,
                             m1 ? _mm512_maskz_mov_ps(m1, load16(row + 16 * es, t, cnt - 16)) : _mm512_setzero_ps());
        }
        return;
    }
    /* Out-major: 16 rows x 16 inputs at a time, widened and transposed. */
    for (int h = 0; h < GEMM_NR; h += 16) {
        int rows = cnt - h < 0 ? 0 : cnt - h > 16 ? 16 : cnt - h;
        int k = 0;
        if (rows == 16)
            for (; k + 16 <= kc; k += 16) {
                __m512 r[16];
#pragma GCC unroll 16
                for (int j = 0; j < 16; j++) r[j] = load16(base + ((size_t)(h + j) * (size_t)ld + (size_t)k) * es, t, 16);
                transpose16_ps(r);
#pragma GCC unroll 16
                for (int i = 0; i < 16; i++) _mm512_storeu_ps(panel + (size_t)(k + i) * GEMM_NR + h, r[i]);
            }
        for (; k < kc; k++)
            for (int j = 0; j < 16; j++)
                panel[(size_t)k * GEMM_NR + h + j] =
                    j < rows ? stored_at(base, t, (size_t)(h + j) * (size_t)ld + (size_t)k) : 0.0f;
    }
}

/* 16 inputs of up to 12 rows at a time, transposed into 16 k-rows of 12. */
AVX512 static void gemm_pack_a(float *a, const float *x, int64_t lda, int rows, int kc) {
    const __mmask16 row_mask = (__mmask16)((1u << GEMM_MR) - 1);
    int k = 0;
    for (; k < kc; k += 16) {
        int valid = kc - k < 16 ? kc - k : 16;
        __mmask16 m = (__mmask16)((1u << valid) - 1);
        __m512 r[16];
#pragma GCC unroll 16
        for (int i = 0; i < 16; i++)
            r[i] = i < rows ? _mm512_maskz_loadu_ps(m, x + (size_t)i * (size_t)lda + k) : _mm512_setzero_ps();
        transpose16_ps(r);
#pragma GCC unroll 16
        for (int i = 0; i < 16; i++)
            if (i < valid) _mm512_mask_storeu_ps(a + (size_t)(k + i) * GEMM_MR, row_mask, r[i]);
    }
}

/* ---------------------------------------------------------------- exp and friends */

AVX512 static inline __m512 exp16(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-104.0f)), _mm512_set1_ps(89.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    __m512 y = _mm512_add_ps(_mm512_fmadd_ps(_mm512_mul_ps(p, r), r, r), _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(y, n);
}

/* x / (1 + exp(-z)) */
AVX512 static inline __m512 times_sigmoid(__m512 x, __m512 z) {
    return _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0f), exp16(_mm512_sub_ps(_mm512_setzero_ps(), z))));
}

static inline __mmask16 tail_mask(int left) { return (__mmask16)((1u << left) - 1); }

AVX512 static void add(float *y, const float *x, int n) {
    int i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, _mm512_add_ps(_mm512_loadu_ps(y + i), _mm512_loadu_ps(x + i)));
    if (i < n) {
        __mmask16 m = tail_mask(n - i);
        _mm512_mask_storeu_ps(y + i, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, y + i), _mm512_maskz_loadu_ps(m, x + i)));
    }
}

AVX512 static float vmax(const float *x, int n) {
    __m512 m = _mm512_set1_ps(-__builtin_inff());
    int i = 0;
    for (; i + 16 <= n; i += 16) m = _mm512_max_ps(m, _mm512_loadu_ps(x + i));
    if (i < n) m = _mm512_mask_max_ps(m, tail_mask(n - i), m, _mm512_maskz_loadu_ps(tail_mask(n - i), x + i));
    return _mm512_reduce_max_ps(m);
}

AVX512 static float exp_sum(float *x, int n, float shift, float mul) {
    __m512 s = _mm512_setzero_ps(), sh = _mm512_set1_ps(shift), mu = _mm512_set1_ps(mul);
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 e = exp16(_mm512_mul_ps(mu, _mm512_sub_ps(_mm512_loadu_ps(x + i), sh)));
        _mm512_storeu_ps(x + i, e);
        s = _mm512_add_ps(s, e);
    }
    if (i < n) {
        __mmask16 m = tail_mask(n - i);
        __m512 e = _mm512_maskz_mov_ps(m, exp16(_mm512_mul_ps(mu, _mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), sh))));
        _mm512_mask_storeu_ps(x + i, m, e);
        s = _mm512_add_ps(s, e);
    }
    return _mm512_reduce_add_ps(s);
}

AVX512 static void scale(float *x, int n, float s) {
    __m512 v = _mm512_set1_ps(s);
    int i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, _mm512_mul_ps(_mm512_loadu_ps(x + i), v));
    if (i < n) _mm512_mask_storeu_ps(x + i, tail_mask(n - i), _mm512_mul_ps(_mm512_maskz_loadu_ps(tail_mask(n - i), x + i), v));
}

AVX512 static void silu(float *x, int n) {
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_loadu_ps(x + i);
        _mm512_storeu_ps(x + i, times_sigmoid(v, v));
    }
    if (i < n) {
        __m512 v = _mm512_maskz_loadu_ps(tail_mask(n - i), x + i);
        _mm512_mask_storeu_ps(x + i, tail_mask(n - i), times_sigmoid(v, v));
    }
}

AVX512 static void silu_mul(float *g, const float *u, int n) {
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_loadu_ps(g + i);
        _mm512_storeu_ps(g + i, _mm512_mul_ps(times_sigmoid(v, v), _mm512_loadu_ps(u + i)));
    }
    if (i < n) {
        __mmask16 m = tail_mask(n - i);
        __m512 v = _mm512_maskz_loadu_ps(m, g + i);
        _mm512_mask_storeu_ps(g + i, m, _mm512_mul_ps(times_sigmoid(v, v), _mm512_maskz_loadu_ps(m, u + i)));
    }
}

/* 0.5 v (1 + tanh(u)) = v * sigmoid(2u), u = sqrt(2/pi) (v + 0.044715 v^3) */
AVX512 static inline __m512 gelu16(__m512 v) {
    __m512 v3 = _mm512_mul_ps(_mm512_mul_ps(v, v), v);
    __m512 u = _mm512_mul_ps(_mm512_set1_ps(2 * 0.7978845608028654f), _mm512_fmadd_ps(v3, _mm512_set1_ps(0.044715f), v));
    return times_sigmoid(v, u);
}

AVX512 static void gelu_tanh(float *x, int n) {
    int i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, gelu16(_mm512_loadu_ps(x + i)));
    if (i < n) _mm512_mask_storeu_ps(x + i, tail_mask(n - i), gelu16(_mm512_maskz_loadu_ps(tail_mask(n - i), x + i)));
}

/* ---------------------------------------------------------------- decoding attention */

#define MAX_DIM_VECS 8     /* head sizes up to 128 keep the whole head in registers */
#define ATTN_AHEAD 8       /* keys (values) prefetched ahead */

/* 16 keys or values at element i of a row of type t (QVL_F32 or QVL_F16). */
AVX512 __attribute__((always_inline)) static inline __m512 kv16(const void *row, qvl_dtype t, size_t i) {
    if (t == QVL_F16) return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)row + i)));
    return _mm512_loadu_ps((const float *)row + i);
}

/* The cache lines of the row ATTN_AHEAD rows on (halves: half as many). */
AVX512 __attribute__((always_inline)) static inline void prefetch_row(const void *row, qvl_dtype t, int stride, int dim) {
    size_t es = t == QVL_F16 ? 2 : 4;
    const char *ahead = (const char *)row + ATTN_AHEAD * (size_t)stride * es;
    for (size_t b = 0; b < (size_t)dim * es; b += 64) _mm_prefetch(ahead + b, _MM_HINT_T0);
}

/* The loops take the type as a constant: each caller below gets its own copy. */
AVX512 __attribute__((always_inline)) static inline void scores_of(float *scores, int ldsc, const float *q, int group,
                                                                  const void *k, qvl_dtype t, int n, int stride,
                                                                  int dim, float scale) {
    int nv = dim / 16;
    for (int j = 0; j < n; j++) {
        size_t at = (size_t)j * stride;
        prefetch_row((const char *)k + at * (t == QVL_F16 ? 2 : 4), t, stride, dim);
        for (int g = 0; g < group; g++) {
            const float *qg = q + (size_t)g * dim;
            __m512 a = _mm512_setzero_ps(), b = _mm512_setzero_ps();
            int v = 0;
            for (; v + 2 <= nv; v += 2) {
                a = _mm512_fmadd_ps(_mm512_loadu_ps(qg + 16 * v), kv16(k, t, at + 16 * v), a);
                b = _mm512_fmadd_ps(_mm512_loadu_ps(qg + 16 * v + 16), kv16(k, t, at + 16 * v + 16), b);
            }
            if (v < nv) a = _mm512_fmadd_ps(_mm512_loadu_ps(qg + 16 * v), kv16(k, t, at + 16 * v), a);
            scores[(size_t)g * ldsc + j] = _mm512_reduce_add_ps(_mm512_add_ps(a, b)) * scale;
        }
    }
}

AVX512 static void attn_scores(float *scores, int ldsc, const float *q, int group, const void *k, qvl_dtype t, int n,
                               int stride, int dim, float scale) {
    if (dim % 16) { kernels_portable()->attn_scores(scores, ldsc, q, group, k, t, n, stride, dim, scale); return; }
    if (t == QVL_F16) scores_of(scores, ldsc, q, group, k, QVL_F16, n, stride, dim, scale);
    else scores_of(scores, ldsc, q, group, k, QVL_F32, n, stride, dim, scale);
}

/* out_g = sum_j p_gj v_j with the heads' accumulators in registers, two query
 * heads per pass over the values. */
AVX512 __attribute__((always_inline)) static inline void values_of(float *out, const float *p, int ldsc, int group,
                                                                  const void *v, qvl_dtype t, int n, int stride,
                                                                  int dim) {
    int nv = dim / 16;
    for (int g = 0; g < group; g += 2) {
        int two = g + 1 < group;
        const float *p0 = p + (size_t)g * ldsc, *p1 = two ? p0 + ldsc : p0;
        __m512 acc0[MAX_DIM_VECS], acc1[MAX_DIM_VECS];
#pragma GCC unroll 8
        for (int k = 0; k < MAX_DIM_VECS; k++) acc0[k] = acc1[k] = _mm512_setzero_ps();
        for (int j = 0; j < n; j++) {
            size_t at = (size_t)j * stride;
            prefetch_row((const char *)v + at * (t == QVL_F16 ? 2 : 4), t, stride, dim);
            __m512 a0 = _mm512_set1_ps(p0[j]), a1 = _mm512_set1_ps(p1[j]);
#pragma GCC unroll 8
            for (int k = 0; k < MAX_DIM_VECS; k++)
                if (k < nv) {
                    __m512 vk = kv16(v, t, at + 16 * k);
                    acc0[k] = _mm512_fmadd_ps(a0, vk, acc0[k]);
                    acc1[k] = _mm512_fmadd_ps(a1, vk, acc1[k]);
                }
        }
#pragma GCC unroll 8
        for (int k = 0; k < MAX_DIM_VECS; k++)
            if (k < nv) {
                _mm512_storeu_ps(out + (size_t)g * dim + 16 * k, acc0[k]);
                if (two) _mm512_storeu_ps(out + (size_t)(g + 1) * dim + 16 * k, acc1[k]);
            }
    }
}

AVX512 static void attn_values(float *out, const float *p, int ldsc, int group, const void *v, qvl_dtype t, int n,
                               int stride, int dim) {
    if (dim % 16 || dim > 16 * MAX_DIM_VECS) {
        kernels_portable()->attn_values(out, p, ldsc, group, v, t, n, stride, dim);
        return;
    }
    if (t == QVL_F16) values_of(out, p, ldsc, group, v, QVL_F16, n, stride, dim);
    else values_of(out, p, ldsc, group, v, QVL_F32, n, stride, dim);
}

/* vcvtps2ph, to nearest even; the tail masked. */
#define TO_NEAREST (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
AVX512 static void narrow_f16(uint16_t *dst, const float *src, int n) {
    int i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(dst + i), _mm512_cvtps_ph(_mm512_loadu_ps(src + i), TO_NEAREST));
    if (i < n)
        _mm256_mask_storeu_epi16(dst + i, tail_mask(n - i),
                                 _mm512_cvtps_ph(_mm512_maskz_loadu_ps(tail_mask(n - i), src + i), TO_NEAREST));
}

/* ---------------------------------------------------------------- bf16 products
 *
 * The same 12 x 32 block fed by vdpbf16ps, which multiplies two bf16 pairs
 * per lane: per pair of inputs, two B vectors (16 outputs x 2 weights each)
 * and, for every row, a broadcast of its two activations rounded to bf16.
 * Half the instructions per input of gemm_kernel: about twice its speed where
 * the instruction runs at FMA's rate (Zen 4; measured 1 per cycle each). */

#define AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))

AVX512BF16 static void gemm_bf16_kernel(int kc, const uint32_t *a, const uint32_t *b, float *c, int ldc,
                                        int accumulate, int mr, int nr) {
    __mmask16 m0, m1;
    __m512 c0[GEMM_MR], c1[GEMM_MR];
    load_block(c0, c1, c, ldc, accumulate, mr, nr, &m0, &m1);
    for (int p = 0; p < kc; p += 2) {
        __m512bh b0 = (__m512bh)_mm512_loadu_si512(b), b1 = (__m512bh)_mm512_loadu_si512(b + 16);
#pragma GCC unroll 12
        for (int m = 0; m < GEMM_MR; m++) {
            __m512bh pair = (__m512bh)_mm512_set1_epi32((int)a[m]);   /* row m's x[k], x[k+1] */
            c0[m] = _mm512_dpbf16_ps(c0[m], pair, b0);
            c1[m] = _mm512_dpbf16_ps(c1[m], pair, b1);
        }
        a += GEMM_MR;
        b += GEMM_NR;
    }
    store_block(c0, c1, c, ldc, mr, m0, m1);
}

/* Out-major weights are already in pairs: the 32-bit word p of row o is
 * (w[o][2p], w[o][2p+1]), so packing is a transpose of 32-bit words, 16 rows
 * by 16 pairs at a time.  In-major rows 2p and 2p+1 are interleaved. */
AVX512BF16 static void gemm_bf16_pack_b(uint32_t *panel, const uint16_t *w, int64_t ld, int in_major, int cnt, int kc) {
    if (in_major) {
        __mmask32 m = cnt >= 32 ? (__mmask32)0xffffffffu : (__mmask32)((1ull << cnt) - 1);
        const __m512i lo_idx = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8,
                                                39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
        const __m512i hi_idx = _mm512_add_epi16(lo_idx, _mm512_set1_epi16(16));
        for (int p = 0; p < kc; p += 2) {
            __m512i r0 = _mm512_maskz_loadu_epi16(m, w + (size_t)p * (size_t)ld);
            __m512i r1 = _mm512_maskz_loadu_epi16(m, w + (size_t)(p + 1) * (size_t)ld);
            _mm512_storeu_si512(panel + (size_t)p / 2 * GEMM_NR, _mm512_permutex2var_epi16(r0, lo_idx, r1));
            _mm512_storeu_si512(panel + (size_t)p / 2 * GEMM_NR + 16, _mm512_permutex2var_epi16(r0, hi_idx, r1));
        }
        return;
    }
    int pairs = kc / 2;
    for (int h = 0; h < GEMM_NR; h += 16) {
        int rows = cnt - h < 0 ? 0 : cnt - h > 16 ? 16 : cnt - h;
        int p = 0;
        if (rows == 16)
            for (; p + 16 <= pairs; p += 16) {
                __m512i r[16];
#pragma GCC unroll 16
                for (int j = 0; j < 16; j++) r[j] = _mm512_loadu_si512(w + (size_t)(h + j) * (size_t)ld + 2 * (size_t)p);
                transpose16(r);
#pragma GCC unroll 16
                for (int i = 0; i < 16; i++) _mm512_storeu_si512(panel + (size_t)(p + i) * GEMM_NR + h, r[i]);
            }
        for (; p < pairs; p++)
            for (int j = 0; j < 16; j++) {
                uint32_t v = 0;
                if (j < rows) memcpy(&v, w + (size_t)(h + j) * (size_t)ld + 2 * (size_t)p, sizeof v);
                panel[(size_t)p * GEMM_NR + h + j] = v;
            }
    }
}

/* Each row's inputs rounded to bf16 (to nearest even, vcvtneps2bf16), then
 * scattered into the pair layout. */
/* x [rows, kc] (lda apart) as bf16 pairs [kc/2][GEMM_MR], zero past rows and
 * kc.  32 inputs of a row round to 16 pair words in one instruction (pairs
 * are consecutive bf16s); the 12 rows' words are then transposed in
 * registers, so each pair row is one store.  (Packing attention's scores
 * word by word cost 10% of a picture's time.) */
AVX512BF16 static void gemm_bf16_pack_a(uint32_t *a, const float *x, int64_t lda, int rows, int kc) {
    for (int k = 0; k < kc; k += 32) {
        int valid = kc - k < 32 ? kc - k : 32, pairs = (valid + 1) / 2;
        __m512i r[16];
        for (int m = 0; m < 16; m++) {
            if (m >= rows || m >= GEMM_MR) { r[m] = _mm512_setzero_si512(); continue; }
            const float *src = x + (size_t)m * (size_t)lda + k;
            int lo = valid < 16 ? valid : 16, hi = valid - 16 > 0 ? valid - 16 : 0;
            __m512 a0 = _mm512_maskz_loadu_ps((__mmask16)((1u << lo) - 1), src);
            __m512 a1 = _mm512_maskz_loadu_ps((__mmask16)((1u << hi) - 1), src + 16);
            r[m] = (__m512i)_mm512_cvtne2ps_pbh(a1, a0);     /* a0's halves low, a1's high */
        }
        transpose16(r);
        for (int j = 0; j < pairs; j++)
            _mm512_mask_storeu_epi32(a + (size_t)(k / 2 + j) * GEMM_MR, (__mmask16)((1u << GEMM_MR) - 1), r[j]);
    }
}

/* 2^t for t <= 0, to about 2e-6 relative (2^round(t) times a degree-5
 * Taylor polynomial of 2^f, |f| <= 1/2): enough for exponentials rounded to
 * bf16 next, and half exp16's work. */
AVX512 static inline __m512 exp2_bf16(__m512 t) {
    __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(t, n);
    __m512 p = _mm512_set1_ps(1.3333558e-3f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504109e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022651e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/* gemm_bf16_pack_a with the exponentials computed on the way: attention's
 * scores go from its product to the next one's operand in one pass, and the
 * caller divides the output rows by the sums (one division per value of
 * the output instead of one per score).  exp(mul (x - shift)) is taken as
 * 2^(x c - shift c), c = mul log2(e). */
AVX512BF16 static void gemm_bf16_pack_exp(uint32_t *a, const float *x, int64_t lda, int rows, int kc, const float *shift,
                                          const int *visible, int col0, float mul, float *sums) {
    __m512 acc[GEMM_MR];
    const float c = mul * 1.44269504088896341f;
    const __m512 mu = _mm512_set1_ps(c);
    for (int m = 0; m < GEMM_MR; m++) acc[m] = _mm512_setzero_ps();
    for (int k = 0; k < kc; k += 32) {
        int valid = kc - k < 32 ? kc - k : 32, pairs = (valid + 1) / 2;
        __m512i r[16];
        for (int m = 0; m < 16; m++) {
            if (m >= rows || m >= GEMM_MR) { r[m] = _mm512_setzero_si512(); continue; }
            int live = visible[m] - col0 - k;        /* inputs of this chunk that are exps */
            if (live > valid) live = valid;
            if (live <= 0) { r[m] = _mm512_setzero_si512(); continue; }
            const float *src = x + (size_t)m * (size_t)lda + k;
            int lo = live < 16 ? live : 16, hi = live - 16 > 0 ? live - 16 : 0;
            __mmask16 m0 = (__mmask16)((1u << lo) - 1), m1 = (__mmask16)((1u << hi) - 1);
            __m512 sh = _mm512_set1_ps(shift[m] * c);
            __m512 e0 = _mm512_maskz_mov_ps(m0, exp2_bf16(_mm512_fmsub_ps(_mm512_maskz_loadu_ps(m0, src), mu, sh)));
            __m512 e1 = _mm512_maskz_mov_ps(m1, exp2_bf16(_mm512_fmsub_ps(_mm512_maskz_loadu_ps(m1, src + 16), mu, sh)));
            acc[m] = _mm512_add_ps(acc[m], _mm512_add_ps(e0, e1));
            r[m] = (__m512i)_mm512_cvtne2ps_pbh(e1, e0);     /* e0's halves low, e1's high */
        }
        transpose16(r);
        for (int j = 0; j < pairs; j++)
            _mm512_mask_storeu_epi32(a + (size_t)(k / 2 + j) * GEMM_MR, (__mmask16)((1u << GEMM_MR) - 1), r[j]);
    }
    for (int m = 0; m < rows && m < GEMM_MR; m++) sums[m] += _mm512_reduce_add_ps(acc[m]);
}

AVX512BF16 static void narrow_bf16(uint16_t *dst, const float *src, int n) {
    int i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(dst + i), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(src + i)));
    if (i < n)
        _mm256_mask_storeu_epi16(dst + i, tail_mask(n - i), (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(tail_mask(n - i), src + i)));
}

static int has_avx512_bf16(void) {
    __builtin_cpu_init();
    return kernels_avx512() && __builtin_cpu_supports("avx512bf16");
}

static const ops_kernels table = {
    "avx512", prep_size, prep_x, dot_rows, axpy_rows, widen, GEMM_MR, GEMM_NR, gemm_kernel, gemm_pack_b, gemm_pack_a,
    add, vmax, exp_sum, scale, silu_mul, silu, gelu_tanh, attn_scores, attn_values, narrow_f16, NULL, NULL, NULL, NULL, NULL,
};

static const ops_kernels table_bf16 = {
    "avx512bf16", prep_size, prep_x, dot_rows, axpy_rows, widen, GEMM_MR, GEMM_NR, gemm_kernel, gemm_pack_b, gemm_pack_a,
    add, vmax, exp_sum, scale, silu_mul, silu, gelu_tanh, attn_scores, attn_values, narrow_f16,
    gemm_bf16_kernel, gemm_bf16_pack_b, gemm_bf16_pack_a, narrow_bf16, gemm_bf16_pack_exp,
};

const ops_kernels *kernels_avx512(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        return &table;
    return NULL;
}

const ops_kernels *kernels_avx512_bf16(void) { return has_avx512_bf16() ? &table_bf16 : NULL; }

#else

const ops_kernels *kernels_avx512(void) { return NULL; }
const ops_kernels *kernels_avx512_bf16(void) { return NULL; }

#endif
