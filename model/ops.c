/* ops.c - matmul over stored-dtype weights, norms, activations, rotary.
 *
 * matmul has two paths.  Decoding multiplies one row by every weight matrix, a
 * pass that is bound by memory bandwidth: there a dot-product kernel reads the
 * weight in its stored dtype (bf16/f16/f32) and widens it in registers, so the
 * bytes read are the bytes stored.  Prefill and the vision encoder multiply
 * many rows: there the work is compute bound, so the weight is widened to
 * float one tile of GEMM_TILE outputs at a time (a small per-thread buffer, never a
 * float copy of the model) and handed to OpenBLAS sgemm, single-threaded,
 * while our pool runs the tiles in parallel.  Tiles have a fixed size, so each
 * output comes from the same sgemm call whatever the thread count.
 *
 * The vector kernels exist twice: AVX2+FMA (+F16C) chosen at run time with
 * __builtin_cpu_supports, and portable C. */
#include "ops.h"

#include <cblas.h>
#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "threadpool.h"
#include "quant.h"

/* Outputs per sgemm call: larger tiles repack the activations less often,
 * smaller ones spread small matrices over more threads.  Fixed, so results
 * never depend on the thread count. */
#define GEMM_TILE 128
#define COL_TILE 64     /* outputs per in-major matrix-vector task */

void openblas_set_num_threads(int num_threads);   /* OpenBLAS extension */

/* ---------------------------------------------------------------- CPU dispatch */

static int use_avx2 = -1;       /* -1: not yet probed */
static int portable_forced;

static int have_avx2(void) {
    if (use_avx2 < 0) {
        __builtin_cpu_init();
        use_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                   __builtin_cpu_supports("f16c");
    }
    return use_avx2 && !portable_forced;
}

const char *ops_kernel_name(void) { return have_avx2() ? "avx2" : "portable"; }
void ops_force_portable(int on) { portable_forced = on; }

const char *ops_openblas_coretype(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) return "SkylakeX";
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
    return NULL;
}

static pthread_once_t blas_once = PTHREAD_ONCE_INIT;
static void blas_single_threaded(void) { openblas_set_num_threads(1); }

/* ---------------------------------------------------------------- widening */

static void widen_portable(float *dst, const void *src, qvl_dtype t, int n) {
    if (t == QVL_F32) { memcpy(dst, src, (size_t)n * sizeof(float)); return; }
    const uint16_t *h = src;
    if (t == QVL_BF16) for (int i = 0; i < n; i++) dst[i] = qvl_bf16_to_f32(h[i]);
    else for (int i = 0; i < n; i++) dst[i] = qvl_f16_to_f32(h[i]);
}

__attribute__((target("avx2,fma,f16c")))
static void widen_avx2(float *dst, const void *src, qvl_dtype t, int n) {
    const uint16_t *h = src;
    int i = 0;
    if (t == QVL_BF16) {
        for (; i + 8 <= n; i += 8) {
            __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(h + i)));
            _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(u, 16)));
        }
        for (; i < n; i++) dst[i] = qvl_bf16_to_f32(h[i]);
    } else if (t == QVL_F16) {
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
        for (; i < n; i++) dst[i] = qvl_f16_to_f32(h[i]);
    } else {
        memcpy(dst, src, (size_t)n * sizeof(float));
    }
}

/* n consecutive stored values starting at element `at` of a weight, as float. */
static void widen(float *dst, const qvl_weight *w, int64_t at, int n, int avx2) {
    const char *src = (const char *)w->data + at * (int64_t)qvl_dtype_size(w->dtype);
    if (avx2) widen_avx2(dst, src, w->dtype, n);
    else widen_portable(dst, src, w->dtype, n);
}

/* ---------------------------------------------------------------- vector kernels */

/* dot(x, row) over n stored values; four partial sums combined in a fixed order. */
static float dot_portable(const void *row, qvl_dtype t, const float *x, int n) {
    float s[4] = {0, 0, 0, 0};
    int i = 0;
    if (t == QVL_F32) {
        const float *r = row;
        for (; i + 4 <= n; i += 4)
            for (int j = 0; j < 4; j++) s[j] += r[i + j] * x[i + j];
        for (; i < n; i++) s[0] += r[i] * x[i];
    } else {
        const uint16_t *r = row;
        int bf = t == QVL_BF16;
        for (; i + 4 <= n; i += 4)
            for (int j = 0; j < 4; j++)
                s[j] += (bf ? qvl_bf16_to_f32(r[i + j]) : qvl_f16_to_f32(r[i + j])) * x[i + j];
        for (; i < n; i++) s[0] += (bf ? qvl_bf16_to_f32(r[i]) : qvl_f16_to_f32(r[i])) * x[i];
    }
    return (s[0] + s[1]) + (s[2] + s[3]);
}

__attribute__((target("avx2,fma,f16c")))
static inline __m256 load8_avx2(const void *row, qvl_dtype t, int i) {
    if (t == QVL_F32) return _mm256_loadu_ps((const float *)row + i);
    const __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)row + i));
    if (t == QVL_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

__attribute__((target("avx2,fma,f16c")))
static inline float hsum_avx2(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

__attribute__((target("avx2,fma,f16c")))
static float dot_avx2(const void *row, qvl_dtype t, const float *x, int n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(load8_avx2(row, t, i), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(load8_avx2(row, t, i + 8), _mm256_loadu_ps(x + i + 8), a1);
        a2 = _mm256_fmadd_ps(load8_avx2(row, t, i + 16), _mm256_loadu_ps(x + i + 16), a2);
        a3 = _mm256_fmadd_ps(load8_avx2(row, t, i + 24), _mm256_loadu_ps(x + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(load8_avx2(row, t, i), _mm256_loadu_ps(x + i), a0);
    float s = hsum_avx2(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < n; i++) {
        float wv = t == QVL_F32 ? ((const float *)row)[i]
                 : t == QVL_BF16 ? qvl_bf16_to_f32(((const uint16_t *)row)[i])
                 : qvl_f16_to_f32(((const uint16_t *)row)[i]);
        s += wv * x[i];
    }
    return s;
}

/* y[0..n) += a * row[0..n) */
static void axpy_portable(float *y, float a, const void *row, qvl_dtype t, int n) {
    if (t == QVL_F32) { const float *r = row; for (int i = 0; i < n; i++) y[i] += a * r[i]; }
    else if (t == QVL_BF16) { const uint16_t *r = row; for (int i = 0; i < n; i++) y[i] += a * qvl_bf16_to_f32(r[i]); }
    else { const uint16_t *r = row; for (int i = 0; i < n; i++) y[i] += a * qvl_f16_to_f32(r[i]); }
}

__attribute__((target("avx2,fma,f16c")))
static void axpy_avx2(float *y, float a, const void *row, qvl_dtype t, int n) {
    __m256 va = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, load8_avx2(row, t, i), _mm256_loadu_ps(y + i)));
    if (i < n) axpy_portable(y + i, a, (const char *)row + (size_t)i * qvl_dtype_size(t), t, n - i);
}

/* ---------------------------------------------------------------- matrix-vector */

typedef struct {
    float *y;
    const float *x;
    const qvl_weight *w;
    int avx2;
} matvec_job;

/* Out-major: one dot product per output row. */
static void matvec_rows(void *p, int begin, int end) {
    matvec_job *j = p;
    const qvl_weight *w = j->w;
    size_t es = qvl_dtype_size(w->dtype);
    for (int o = begin; o < end; o++) {
        const void *row = (const char *)w->data + (size_t)o * (size_t)w->ld * es;
        j->y[o] = j->avx2 ? dot_avx2(row, w->dtype, j->x, w->in) : dot_portable(row, w->dtype, j->x, w->in);
    }
}

/* In-major: each task owns COL_TILE outputs and sweeps every input row over them. */
static void matvec_cols(void *p, int begin, int end) {
    matvec_job *j = p;
    const qvl_weight *w = j->w;
    size_t es = qvl_dtype_size(w->dtype);
    for (int tile = begin; tile < end; tile++) {
        int o0 = tile * COL_TILE, cnt = w->out - o0 < COL_TILE ? w->out - o0 : COL_TILE;
        float *y = j->y + o0;
        memset(y, 0, (size_t)cnt * sizeof(float));
        for (int i = 0; i < w->in; i++) {
            const void *row = (const char *)w->data + ((size_t)i * (size_t)w->ld + (size_t)o0) * es;
            if (j->avx2) axpy_avx2(y, j->x[i], row, w->dtype, cnt);
            else axpy_portable(y, j->x[i], row, w->dtype, cnt);
        }
    }
}

static void matvec(float *y, const float *x, const qvl_weight *w) {
    matvec_job j = { y, x, w, have_avx2() };
    if (w->in_major) parallel_for((w->out + COL_TILE - 1) / COL_TILE, matvec_cols, &j);
    else parallel_for(w->out, matvec_rows, &j);
}

/* ---------------------------------------------------------------- matrix-matrix */

typedef struct {
    float *y;
    const float *x;
    const qvl_weight *w;
    int n;
    int avx2;
} gemm_job;

/* Tiles [begin, end): widen GEMM_TILE outputs' weights, then one sgemm per tile. */
static void gemm_tiles(void *p, int begin, int end) {
    gemm_job *j = p;
    const qvl_weight *w = j->w;
    int in = w->in, out = w->out;
    int direct = w->dtype == QVL_F32;        /* float weights are used in place */
    float *buf = direct ? NULL : malloc((size_t)GEMM_TILE * (size_t)in * sizeof(float));
    if (!direct && !buf) abort();            /* a few hundred KB; nothing sane to do */
    for (int tile = begin; tile < end; tile++) {
        int o0 = tile * GEMM_TILE, cnt = out - o0 < GEMM_TILE ? out - o0 : GEMM_TILE;
        float *y = j->y + o0;
        if (!w->in_major) {
            const float *b;
            int ldb;
            if (direct) { b = (const float *)w->data + (size_t)o0 * (size_t)w->ld; ldb = (int)w->ld; }
            else {
                for (int o = 0; o < cnt; o++) widen(buf + (size_t)o * in, w, (int64_t)(o0 + o) * w->ld, in, j->avx2);
                b = buf; ldb = in;
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, j->n, cnt, in,
                        1.0f, j->x, in, b, ldb, 0.0f, y, out);
        } else {
            const float *b;
            int ldb;
            if (direct) { b = (const float *)w->data + o0; ldb = (int)w->ld; }
            else {
                for (int i = 0; i < in; i++) widen(buf + (size_t)i * cnt, w, (int64_t)i * w->ld + o0, cnt, j->avx2);
                b = buf; ldb = cnt;
            }
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, j->n, cnt, in,
                        1.0f, j->x, in, b, ldb, 0.0f, y, out);
        }
    }
    free(buf);
}

void matmul(float *y, const float *x, const qvl_weight *w, int n) {
    if (w->dtype == QVL_Q8 || w->dtype == QVL_Q4) { quant_matmul(y, x, w, n); return; }
    if (n <= 0 || w->out <= 0) return;
    if (w->in <= 0) { memset(y, 0, (size_t)n * (size_t)w->out * sizeof(float)); return; }
    if (n == 1) { matvec(y, x, w); return; }
    pthread_once(&blas_once, blas_single_threaded);   /* before any worker calls sgemm */
    gemm_job j = { y, x, w, n, have_avx2() };
    parallel_for((w->out + GEMM_TILE - 1) / GEMM_TILE, gemm_tiles, &j);
}

/* ---------------------------------------------------------------- elementwise */

void add_bias(float *y, const float *b, int n, int cols) {
    for (int r = 0; r < n; r++)
        for (int c = 0; c < cols; c++) y[(size_t)r * cols + c] += b[c];
}

void add_inplace(float *y, const float *x, int n) {
    for (int i = 0; i < n; i++) y[i] += x[i];
}

/* The reductions are summed in double: cheap at these sizes, and it keeps us
 * at the exact value rather than at one particular float rounding of it. */
void rmsnorm(float *y, const float *x, const float *w, int dim, float eps) {
    double ss = 0;
    for (int i = 0; i < dim; i++) ss += (double)x[i] * x[i];
    float scale = (float)(1.0 / sqrt(ss / dim + eps));
    for (int i = 0; i < dim; i++) y[i] = w[i] * (x[i] * scale);
}

void layernorm(float *y, const float *x, const float *w, const float *b, int dim, float eps) {
    double mean = 0, var = 0;
    for (int i = 0; i < dim; i++) mean += x[i];
    mean /= dim;
    for (int i = 0; i < dim; i++) var += (x[i] - mean) * (x[i] - mean);
    var /= dim;
    float inv = (float)(1.0 / sqrt(var + eps)), m = (float)mean;
    for (int i = 0; i < dim; i++) y[i] = (x[i] - m) * inv * w[i] + b[i];
}

void softmax(float *x, int n) {
    if (n <= 0) return;
    float max = x[0];
    for (int i = 1; i < n; i++) if (x[i] > max) max = x[i];
    double sum = 0;
    for (int i = 0; i < n; i++) { x[i] = expf(x[i] - max); sum += x[i]; }
    float inv = (float)(1.0 / sum);
    for (int i = 0; i < n; i++) x[i] *= inv;
}

void silu(float *x, int n) {
    for (int i = 0; i < n; i++) x[i] = x[i] / (1.0f + expf(-x[i]));
}

void gelu_tanh(float *x, int n) {
    const float k = 0.7978845608028654f;   /* sqrt(2/pi) */
    for (int i = 0; i < n; i++) {
        float v = x[i];
        x[i] = 0.5f * v * (1.0f + tanhf(k * (v + 0.044715f * v * v * v)));
    }
}

void gelu_erf(float *x, int n) {
    for (int i = 0; i < n; i++) x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.7071067811865476f));
}

void rope_rotate_half(float *x, const float *cos, const float *sin, int dim) {
    int half = dim / 2;
    for (int i = 0; i < half; i++) {
        float a = x[i], b = x[i + half];
        x[i] = a * cos[i] - b * sin[i];
        x[i + half] = b * cos[i + half] + a * sin[i + half];
    }
}

void attend(float *out, const float *q, const float *k, const float *v, int n, int stride,
            int dim, float scale, float *scores) {
    for (int j = 0; j < n; j++) {
        const float *kj = k + (size_t)j * stride;
        float s = 0;
        for (int d = 0; d < dim; d++) s += q[d] * kj[d];
        scores[j] = s * scale;
    }
    softmax(scores, n);
    memset(out, 0, (size_t)dim * sizeof(float));
    for (int j = 0; j < n; j++) {
        const float *vj = v + (size_t)j * stride;
        float a = scores[j];
        for (int d = 0; d < dim; d++) out[d] += a * vj[d];
    }
}

void attend_block(float *out, int ldo, const float *q, int ldq, const float *k, const float *v, int ldk,
                  int nq, int nk, int dim, float scale, int causal_past, float *scores) {
    pthread_once(&blas_once, blas_single_threaded);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, nk, dim, scale, q, ldq, k, ldk, 0.0f, scores, nk);
    for (int i = 0; i < nq; i++) {
        float *row = scores + (size_t)i * nk;
        int visible = causal_past < 0 ? nk : causal_past + i + 1;
        if (visible > nk) visible = nk;
        softmax(row, visible);
        memset(row + visible, 0, (size_t)(nk - visible) * sizeof(float));
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, nq, dim, nk, 1.0f, scores, nk, v, ldk, 0.0f, out, ldo);
}
