/* kernels_portable.c - the kernel table in plain C.
 *
 * The reference for the vector tables and the path on CPUs without AVX2:
 * straightforward loops, libm's expf and tanhf.  Dot products keep four
 * partial sums so that the compiler can pipeline them. */
#include <math.h>
#include <string.h>

#include "common.h"
#include "kernels.h"

static inline float stored(const void *row, qvl_dtype t, int64_t i) {
    if (t == QVL_F32) return ((const float *)row)[i];
    uint16_t h = ((const uint16_t *)row)[i];
    return t == QVL_BF16 ? qvl_bf16_to_f32(h) : qvl_f16_to_f32(h);
}

static size_t prep_size(int n) { return (size_t)n; }

static void prep_x(float *xp, const float *x, int n, qvl_dtype t) {
    (void)t;
    memcpy(xp, x, (size_t)n * sizeof(float));
}

static float dot(const void *row, qvl_dtype t, const float *x, int n) {
    float s[4] = {0, 0, 0, 0};
    int i = 0;
    for (; i + 4 <= n; i += 4)
        for (int j = 0; j < 4; j++) s[j] += stored(row, t, i + j) * x[i + j];
    for (; i < n; i++) s[0] += stored(row, t, i) * x[i];
    return (s[0] + s[1]) + (s[2] + s[3]);
}

static void dot_rows(float *y, const void *w, qvl_dtype t, int64_t ld, int rows, const float *xp, int n) {
    size_t es = qvl_dtype_size(t);
    for (int r = 0; r < rows; r++) y[r] = dot((const char *)w + (size_t)r * (size_t)ld * es, t, xp, n);
}

static void axpy_rows(float *y, const float *x, const void *w, qvl_dtype t, int64_t ld, int nin, int cnt) {
    size_t es = qvl_dtype_size(t);
    memset(y, 0, (size_t)cnt * sizeof(float));
    for (int i = 0; i < nin; i++) {
        const void *row = (const char *)w + (size_t)i * (size_t)ld * es;
        for (int o = 0; o < cnt; o++) y[o] += x[i] * stored(row, t, o);
    }
}

static void widen(float *dst, const void *src, qvl_dtype t, int n) {
    if (t == QVL_F32) { memcpy(dst, src, (size_t)n * sizeof(float)); return; }
    for (int i = 0; i < n; i++) dst[i] = stored(src, t, i);
}

static void add(float *y, const float *x, int n) {
    for (int i = 0; i < n; i++) y[i] += x[i];
}

static float vmax(const float *x, int n) {
    float m = x[0];
    for (int i = 1; i < n; i++) if (x[i] > m) m = x[i];
    return m;
}

static float exp_sum(float *x, int n, float shift, float mul) {
    float s = 0;
    for (int i = 0; i < n; i++) { x[i] = expf(mul * (x[i] - shift)); s += x[i]; }
    return s;
}

static void scale(float *x, int n, float s) {
    for (int i = 0; i < n; i++) x[i] *= s;
}

static void silu(float *x, int n) {
    for (int i = 0; i < n; i++) x[i] = x[i] / (1.0f + expf(-x[i]));
}

static void silu_mul(float *g, const float *u, int n) {
    for (int i = 0; i < n; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

static void gelu_tanh(float *x, int n) {
    const float k = 0.7978845608028654f;   /* sqrt(2/pi) */
    for (int i = 0; i < n; i++) {
        float v = x[i];
        x[i] = 0.5f * v * (1.0f + tanhf(k * (v + 0.044715f * v * v * v)));
    }
}

/* The attention loops take the key/value type as a constant, so that each
 * caller below gets a copy with the conversion resolved at compile time. */
__attribute__((always_inline)) static inline void scores_of(float *scores, int ldsc, const float *q, int group,
                                                            const void *k, qvl_dtype t, int n, int stride, int dim,
                                                            float scale) {
    for (int g = 0; g < group; g++)
        for (int j = 0; j < n; j++) {
            const float *qg = q + (size_t)g * dim;
            int64_t at = (int64_t)j * stride;
            float s = 0;
            for (int d = 0; d < dim; d++) s += qg[d] * stored(k, t, at + d);
            scores[(size_t)g * ldsc + j] = s * scale;
        }
}

static void attn_scores(float *scores, int ldsc, const float *q, int group, const void *k, qvl_dtype t, int n,
                        int stride, int dim, float scale) {
    if (t == QVL_F16) scores_of(scores, ldsc, q, group, k, QVL_F16, n, stride, dim, scale);
    else scores_of(scores, ldsc, q, group, k, QVL_F32, n, stride, dim, scale);
}

__attribute__((always_inline)) static inline void values_of(float *out, const float *p, int ldsc, int group,
                                                            const void *v, qvl_dtype t, int n, int stride, int dim) {
    memset(out, 0, (size_t)group * dim * sizeof(float));
    for (int j = 0; j < n; j++) {
        int64_t at = (int64_t)j * stride;
        for (int g = 0; g < group; g++) {
            float a = p[(size_t)g * ldsc + j], *o = out + (size_t)g * dim;
            for (int d = 0; d < dim; d++) o[d] += a * stored(v, t, at + d);
        }
    }
}

static void attn_values(float *out, const float *p, int ldsc, int group, const void *v, qvl_dtype t, int n,
                        int stride, int dim) {
    if (t == QVL_F16) values_of(out, p, ldsc, group, v, QVL_F16, n, stride, dim);
    else values_of(out, p, ldsc, group, v, QVL_F32, n, stride, dim);
}

static void narrow_f16(uint16_t *dst, const float *src, int n) {
    for (int i = 0; i < n; i++) dst[i] = qvl_f32_to_f16(src[i]);
}

static const ops_kernels table = {
    "portable", prep_size, prep_x, dot_rows, axpy_rows, widen, 0, 0, NULL, NULL, NULL,
    add, vmax, exp_sum, scale, silu_mul, silu, gelu_tanh, attn_scores, attn_values, narrow_f16, NULL, NULL, NULL, NULL, NULL,
};

const ops_kernels *kernels_portable(void) { return &table; }
