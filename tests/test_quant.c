/* test_quant.c - q8/q4 block quantization: formats, kernels, models, `qvl quantize`.
 *
 *   - round trips: values a format represents exactly come back exactly; any
 *     row comes back within the format's error (half a step for q8); q4's
 *     scale search beats the plain step on uniform weights;
 *   - quant_matmul on every kernel the CPU has (portable, AVX2, AVX-512 VNNI)
 *     agrees with the others and stays within the bound the int8 activations
 *     allow around the exact product of the dequantized weights; one row ==
 *     a row of many; 1 thread == 2 threads; in-major weights quantize like
 *     their out-major transpose;
 *   - the tiny models (dense and MoE) quantized at load: last-position logits
 *     against the float32 goldens (cosine >= 0.999 for q8), the 10 greedy
 *     tokens for q8, and against the same weights' values in float32; every
 *     matrix of the type the q4 mix rule gives it, the rule itself, and the
 *     mix closer to the goldens than all q4;
 *   - `qvl quantize` writes a directory that loads without quantizing and gives
 *     bit-identical logits to quantizing at load; bad inputs are clear errors.
 *
 * Opt-in measurement on the 2B shape (not part of make check): set
 * QVL_QUANT_2B to the generated model directory and QVL_SHAPE_GOLDEN to
 * shape-qwen3vl-2b.safetensors; it prints cosine, greedy ids and the matrices'
 * size per type, and holds q8 and q4 to issue 6 (cosine >= 0.999 and 0.99,
 * the 5 greedy ids identical). */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "decoder.h"
#include "ops.h"
#include "quant.h"
#include "safetensors.h"
#include "testutil.h"
#include "threadpool.h"
#include "vision.h"
#include "weights.h"

/* ---------------------------------------------------------------- helpers */

static uint64_t rng_state = 88172645463325252ull;
static float frand(void) {            /* uniform in [-1, 1) */
    rng_state ^= rng_state << 13; rng_state ^= rng_state >> 7; rng_state ^= rng_state << 17;
    return (float)((rng_state >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}
/* Roughly normal, with a few large values as real weights have. */
static float wrand(void) {
    float s = frand() + frand() + frand();
    return frand() > 0.98f ? 4 * s : s;
}

static double cosine(const float *a, const float *b, size_t n) {
    double ab = 0, aa = 0, bb = 0;
    for (size_t i = 0; i < n; i++) { ab += (double)a[i] * b[i]; aa += (double)a[i] * a[i]; bb += (double)b[i] * b[i]; }
    return ab / sqrt(aa * bb);
}

static qvl_weight f32_weight(const float *w, int out, int in) {
    return (qvl_weight){ .data = w, .dtype = QVL_F32, .out = out, .in = in, .in_major = 0, .ld = in };
}

static qvl_weight quantized(const qvl_weight *src, qvl_dtype t, void **buf) {
    *buf = malloc((size_t)src->out * quant_row_bytes(t, src->in));
    qvl_weight q;
    quant_weight(src, t, *buf, &q);
    return q;
}

static const qvl_dtype TYPES[] = { QVL_Q8, QVL_Q4 };
static const char *const KERNELS[] = { "portable", "avx2", "avx512vnni" };

/* ---------------------------------------------------------------- formats */

START_TEST(row_sizes) {
    /* 8.5 and 4.5 bits per weight, rows padded to 64 weights */
    ck_assert_uint_eq(quant_row_bytes(QVL_Q8, 2048), 2048 + 2 * 64);
    ck_assert_uint_eq(quant_row_bytes(QVL_Q4, 2048), 1024 + 2 * 64);
    ck_assert_uint_eq(quant_row_bytes(QVL_Q8, 48), 64 + 2 * 2);
    ck_assert_uint_eq(quant_row_bytes(QVL_Q4, 160), 96 + 2 * 6);
    qvl_quant q;
    ck_assert_int_eq(quant_parse("q8", &q), 0); ck_assert_int_eq(q, QVL_QUANT_Q8);
    ck_assert_int_eq(quant_parse("q4", &q), 0); ck_assert_int_eq(q, QVL_QUANT_Q4);
    ck_assert_int_eq(quant_parse("none", &q), 0); ck_assert_int_eq(q, QVL_QUANT_NONE);
    ck_assert_int_eq(quant_parse("q5", &q), -1);
    ck_assert_int_eq(quant_parse("", &q), -1);
}
END_TEST

/* Blocks of d * integer with d a power of two and the extreme code present
 * (127 for q8, -8 for q4) are exactly representable. */
START_TEST(exact_values_round_trip) {
    int in = 160;
    float w[160], back[160];
    for (int t = 0; t < 2; t++) {
        int lo = TYPES[t] == QVL_Q8 ? -127 : -8, hi = TYPES[t] == QVL_Q8 ? 127 : 7;
        for (int i = 0; i < in; i++) {
            float d = ldexpf(1.0f, (i / 32) - 3);
            int q = i % 32 == 0 ? (TYPES[t] == QVL_Q8 ? 127 : -8) : lo + (int)((i * 37u) % (unsigned)(hi - lo + 1));
            w[i] = d * (float)q;
        }
        unsigned char row[256];
        quant_row(TYPES[t], w, in, row);
        qvl_weight qw = { .data = row, .dtype = TYPES[t], .out = 1, .in = in, .ld = (int64_t)quant_row_bytes(TYPES[t], in) };
        quant_dequant_row(&qw, 0, back);
        for (int i = 0; i < in; i++)
            ck_assert_msg(back[i] == w[i], "%s: weight %d is %g, stored %g", t ? "q4" : "q8", i, back[i], w[i]);
    }
}
END_TEST

/* q8 codes are exactly round(w / d), ties to even, with d = the block's
 * max |w| / 127 rounded to float16: random blocks over 20 octaves, and
 * blocks where d = 1/16 exactly and every other weight is a tie. */
START_TEST(q8_codes_follow_the_formula) {
    enum { IN = 32 * 40 };
    static float w[IN];
    for (int i = 0; i < IN; i++) {
        int b = i / 32, j = i % 32;
        int n = (j * 37 + b * 11) % 254 - 127;                  /* -127 .. 126 */
        w[i] = b < 20 ? wrand() * ldexpf(1.0f, b - 10)
             : j == 0 ? 127.0f / 16 : ((float)n + 0.5f) / 16;    /* |w| / d = |n + 1/2| < 127 */
    }
    static unsigned char row[IN + 2 * IN / 32];
    quant_row(QVL_Q8, w, IN, row);
    for (int b = 0; b < IN / 32; b++) {
        float amax = 0;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(w[b * 32 + j]));
        float d = qvl_f16_to_f32(qvl_f32_to_f16(amax / 127.0f));
        uint16_t h = (uint16_t)(row[IN + 2 * b] | row[IN + 2 * b + 1] << 8);
        ck_assert_msg(qvl_f16_to_f32(h) == d, "block %d: scale %g, want %g", b, qvl_f16_to_f32(h), d);
        for (int j = 0; j < 32; j++) {
            float v = nearbyintf(w[b * 32 + j] * (1.0f / d));
            int want = v > 127 ? 127 : v < -127 ? -127 : (int)v;
            ck_assert_msg((int8_t)row[b * 32 + j] == want, "block %d weight %d (%g): code %d, want %d", b, j,
                          w[b * 32 + j], (int8_t)row[b * 32 + j], want);
        }
    }
}
END_TEST

START_TEST(random_round_trip_error) {
    static const int INS[] = { 32, 48, 64, 100, 160, 2048 };
    for (int k = 0; k < 6; k++) {
        int in = INS[k];
        float *w = malloc(sizeof(float) * in), *back = malloc(sizeof(float) * in);
        unsigned char *row = malloc(quant_row_bytes(QVL_Q8, in));
        for (int t = 0; t < 2; t++) {
            for (int i = 0; i < in; i++) w[i] = wrand();
            quant_row(TYPES[t], w, in, row);
            qvl_weight qw = { .data = row, .dtype = TYPES[t], .out = 1, .in = in, .ld = (int64_t)quant_row_bytes(TYPES[t], in) };
            quant_dequant_row(&qw, 0, back);
            double e2 = 0, w2 = 0;
            for (int b = 0; b * 32 < in; b++) {
                float amax = 0;
                for (int i = b * 32; i < in && i < b * 32 + 32; i++) amax = fmaxf(amax, fabsf(w[i]));
                for (int i = b * 32; i < in && i < b * 32 + 32; i++) {
                    double e = fabs((double)back[i] - w[i]);
                    /* q8: half a step of amax/127, the step itself within f16 rounding */
                    if (TYPES[t] == QVL_Q8)
                        ck_assert_msg(e <= 0.5 * amax / 127 * 1.002 + 1e-9, "q8 in=%d weight %d: error %g", in, i, e);
                    else   /* q4: never more than a step of amax/8 (the refit keeps the codes) */
                        ck_assert_msg(e <= amax / 8 * 1.01 + 1e-9, "q4 in=%d weight %d: error %g", in, i, e);
                    e2 += e * e;
                    w2 += (double)w[i] * w[i];
                }
            }
            double rel = sqrt(e2 / w2);
            /* uniform rounding noise: step/sqrt(12) against the weights' spread */
            ck_assert_msg(rel < (TYPES[t] == QVL_Q8 ? 0.01 : 0.15), "%s in=%d: relative RMS error %g",
                          t ? "q4" : "q8", in, rel);
        }
        free(w); free(back); free(row);
    }
}
END_TEST

/* The q4 search of quant.c's header, block by block in plain C: steps
 * m / (-8 c) for c = 0.88, 0.91, ... 1.12 rounded to float16 (within
 * +-65504), codes round(w / s) in -8..7, the least-squares scale for those
 * codes, the least squared error winning (the first on ties), the sums added
 * in the format's order. */
static float f16_clamped(float x) {
    x = x > 65504.0f ? 65504.0f : x < -65504.0f ? -65504.0f : x;
    return qvl_f16_to_f32(qvl_f32_to_f16(x));
}

static void q4_sums(const float *w, float step, int8_t *q, float *wq, float *qq) {
    float id = step != 0 ? 1.0f / step : 0, c[32], S[4], Q[4];
    for (int j = 0; j < 32; j++) c[j] = fmaxf(fminf(nearbyintf(w[j] * id), 7.0f), -8.0f);
    for (int l = 0; l < 4; l++) {
        float pw[4], pq[4];
        for (int k = 0; k < 4; k++) {
            int j = 4 * k + l;
            pw[k] = w[j] * c[j] + w[j + 16] * c[j + 16];
            pq[k] = c[j] * c[j] + c[j + 16] * c[j + 16];
        }
        S[l] = (pw[0] + pw[1]) + (pw[2] + pw[3]);
        Q[l] = (pq[0] + pq[1]) + (pq[2] + pq[3]);
    }
    *wq = (S[0] + S[2]) + (S[1] + S[3]);
    *qq = (Q[0] + Q[2]) + (Q[1] + Q[3]);
    if (q) for (int j = 0; j < 32; j++) q[j] = (int8_t)c[j];
}

static float q4_reference_block(const float *w, int8_t *q) {
    static const float eight_c[9] = { 7.04f, 7.28f, 7.52f, 7.76f, 8.0f, 8.24f, 8.48f, 8.72f, 8.96f };
    float amax = 0, m = 0, ww = 0, wq, qq;
    for (int j = 0; j < 32; j++) if (fabsf(w[j]) > amax) amax = fabsf(w[j]);
    for (int j = 0; j < 32; j++) if (fabsf(w[j]) == amax) { m = w[j]; break; }
    for (int j = 0; j < 32; j++) ww += w[j] * w[j];
    float best_e = INFINITY, best_d = 0, best_step = 0;
    for (int k = 0; k < 9; k++) {
        float step = f16_clamped(m * (-1 / eight_c[k]));
        q4_sums(w, step, NULL, &wq, &qq);
        float d2 = qq > 0 ? f16_clamped(wq / qq) : 0;
        float e1 = ww - 2 * step * wq + step * step * qq, e2 = ww - 2 * d2 * wq + d2 * d2 * qq;
        float d = e2 < e1 ? d2 : step, e = e2 < e1 ? e2 : e1;
        if (e < best_e) { best_e = e; best_d = d; best_step = step; }
    }
    q4_sums(w, best_step, q, &wq, &qq);
    return best_d;
}

/* Every kernel the CPU has quantizes q4 rows to the bytes of the reference:
 * rows with a short last group and a padded tail, blocks of every magnitude
 * (float16 scales that are subnormal, or clamped at 65504), a zero block, and
 * ties for the largest magnitude. */
START_TEST(q4_codes_follow_the_search) {
    static const int INS[] = { 4160, 100, 1000, 512, 131072 };
    for (int ii = 0; ii < 5; ii++) {
        int in = INS[ii], in_pad = (in + 63) / 64 * 64, nb = in_pad / 32;
        float *w = calloc((size_t)in_pad, sizeof *w);
        for (int i = 0; i < in; i++) {
            int b = i / 32;
            w[i] = b % 7 == 3 ? 0.0f : wrand() * ldexpf(1.0f, b % 37 - 24);
            if (b % 11 == 5) w[i] = (i % 32 == 4 ? -1.0f : i % 32 == 9 ? 1.0f : 0.5f * frand()) * 3.0f;
            if (b == 8) w[i] = 1e6f * frand();
        }
        size_t bytes = quant_row_bytes(QVL_Q4, in);
        unsigned char *want = calloc(bytes, 1), *got = malloc(bytes);
        int8_t q[32];
        for (int b = 0; b < nb; b++) {      /* packed as the header says */
            uint16_t h = qvl_f32_to_f16(q4_reference_block(w + 32 * b, q));
            want[in_pad / 2 + 2 * b] = (unsigned char)h;
            want[in_pad / 2 + 2 * b + 1] = (unsigned char)(h >> 8);
            for (int j = 0; j < 32; j++) {
                int i = 32 * b + j, g0 = i & ~127, G = in_pad - g0 < 128 ? in_pad - g0 : 128, k = i - g0;
                want[g0 / 2 + (k < G / 2 ? k : k - G / 2)] |= (unsigned char)((q[j] + 8) << (k < G / 2 ? 0 : 4));
            }
        }
        for (int k = 0; k < 3; k++) {
            if (quant_force_kernel(KERNELS[k]) != 0) continue;
            memset(got, 0xAA, bytes);
            quant_row(QVL_Q4, w, in, got);
            for (size_t i = 0; i < bytes; i++)
                ck_assert_msg(got[i] == want[i], "%s, in %d: byte %zu is %02x, want %02x", KERNELS[k], in, i,
                              got[i], want[i]);
        }
        quant_force_kernel(NULL);
        free(w); free(want); free(got);
    }
}
END_TEST

/* Uniform weights (what the synthetic checkpoints hold) span no block's
 * range exactly: the plain step max/8 leaves a relative RMS error of 6.4%,
 * the best of the searched steps about 5.9% (1/16 = 6.25% is the best any
 * fixed 16-level grid does for the whole range). */
START_TEST(q4_search_fits_uniform_blocks) {
    int in = 4096, rows = 32;
    float *w = malloc(sizeof(float) * in), *back = malloc(sizeof(float) * in);
    unsigned char *row = malloc(quant_row_bytes(QVL_Q4, in));
    qvl_weight qw = { .data = row, .dtype = QVL_Q4, .out = 1, .in = in, .ld = (int64_t)quant_row_bytes(QVL_Q4, in) };
    double e2 = 0, w2 = 0;
    for (int r = 0; r < rows; r++) {
        for (int i = 0; i < in; i++) w[i] = frand();
        quant_row(QVL_Q4, w, in, row);
        quant_dequant_row(&qw, 0, back);
        for (int i = 0; i < in; i++) { e2 += ((double)back[i] - w[i]) * ((double)back[i] - w[i]); w2 += (double)w[i] * w[i]; }
    }
    double rel = sqrt(e2 / w2);
    fprintf(stderr, "q4 on uniform weights: relative RMS error %.4f\n", rel);
    ck_assert_msg(rel < 0.061, "q4 on uniform weights: relative RMS error %.4f", rel);
    free(w); free(back); free(row);
}
END_TEST

START_TEST(bind_checks_the_shape) {
    char err[QVL_ERR_MAX] = "";
    qvl_weight w;
    static const unsigned char data[1] = { 0 };
    int64_t good8[2] = { 4, (int64_t)quant_row_bytes(QVL_Q8, 100) }, good4[2] = { 4, (int64_t)quant_row_bytes(QVL_Q4, 100) };
    ck_assert_int_eq(quant_bind(data, 2, good8, 4, 100, &w, "f", "a.weight", err), 0);
    ck_assert_int_eq(w.dtype, QVL_Q8);
    ck_assert_int_eq(w.ld, good8[1]);
    ck_assert_int_eq(quant_bind(data, 2, good4, 4, 100, &w, "f", "a.weight", err), 0);
    ck_assert_int_eq(w.dtype, QVL_Q4);
    int64_t bad[2] = { 4, 100 }, rows[2] = { 5, good8[1] };
    ck_assert_int_eq(quant_bind(data, 2, bad, 4, 100, &w, "f.safetensors", "a.weight", err), -1);
    ck_assert_msg(strstr(err, "f.safetensors") && strstr(err, "a.weight") && strstr(err, "[4, 136]"), "%s", err);
    ck_assert_int_eq(quant_bind(data, 2, rows, 4, 100, &w, "f", "a.weight", err), -1);
    ck_assert_int_eq(quant_bind(data, 1, good8, 4, 100, &w, "f", "a.weight", err), -1);
}
END_TEST

/* ---------------------------------------------------------------- kernels */

/* |y - W^ x| <= sum_i |W^_i| * (x's rounding step)/2 in each block, plus float slack. */
static double activation_bound(const float *wrow, const float *x, int in) {
    double s = 0;
    for (int b = 0; b * 32 < in; b++) {
        float amax = 0;
        for (int i = b * 32; i < in && i < b * 32 + 32; i++) amax = fmaxf(amax, fabsf(x[i]));
        for (int i = b * 32; i < in && i < b * 32 + 32; i++) s += fabs(wrow[i]) * amax / 127 / 2;
    }
    return s;
}

START_TEST(kernels_agree) {
    static const int INS[] = { 64, 96, 160, 192, 512, 2048 };
    int out = 37, n = 11;      /* AVX-512: 8 rows a step, 3 more, against each row alone */
    int nk = 0;
    for (int k = 0; k < 3; k++) if (quant_force_kernel(KERNELS[k]) == 0) nk = k + 1;
    quant_force_kernel(NULL);
    fprintf(stderr, "quant kernels: %d tested, best %s\n", nk, quant_kernel_name());
    for (int ii = 0; ii < 6; ii++) {
        int in = INS[ii];
        float *w = malloc(sizeof(float) * out * in), *x = malloc(sizeof(float) * n * in);
        float *deq = malloc(sizeof(float) * out * in);
        for (int i = 0; i < out * in; i++) w[i] = wrand() * 0.05f;
        for (int i = 0; i < n * in; i++) x[i] = wrand();
        qvl_weight fw = f32_weight(w, out, in);
        for (int t = 0; t < 2; t++) {
            void *buf;
            qvl_weight qw = quantized(&fw, TYPES[t], &buf);
            for (int o = 0; o < out; o++) quant_dequant_row(&qw, o, deq + (size_t)o * in);
            float y[3][11 * 37], y1[37];
            for (int k = 0; k < nk; k++) {
                ck_assert_int_eq(quant_force_kernel(KERNELS[k]), 0);
                matmul(y[k], x, &qw, n);
                for (int r = 0; r < n; r++) {
                    matmul(y1, x + (size_t)r * in, &qw, 1);
                    for (int o = 0; o < out; o++) {
                        ck_assert_msg(y1[o] == y[k][r * out + o], "%s %s in=%d: one row differs from many",
                                      KERNELS[k], t ? "q4" : "q8", in);
                        double exact = 0;
                        for (int i = 0; i < in; i++) exact += (double)deq[(size_t)o * in + i] * x[(size_t)r * in + i];
                        double bound = activation_bound(deq + (size_t)o * in, x + (size_t)r * in, in) + 1e-4;
                        ck_assert_msg(fabs(y[k][r * out + o] - exact) <= bound, "%s %s in=%d row %d out %d: %g, exact %g, bound %g",
                                      KERNELS[k], t ? "q4" : "q8", in, r, o, y[k][r * out + o], exact, bound);
                        /* the kernels differ only in float summation order */
                        double ref = y[0][r * out + o];
                        ck_assert_msg(fabs(y[k][r * out + o] - ref) <= 1e-5 * (fabs(ref) + 1), "%s vs portable %s in=%d: %g vs %g",
                                      KERNELS[k], t ? "q4" : "q8", in, y[k][r * out + o], ref);
                    }
                }
            }
            quant_force_kernel(NULL);
            free(buf);
        }
        free(w); free(x); free(deq);
    }
}
END_TEST

START_TEST(threads_agree) {
    int out = 301, in = 640, n = 13;
    float *w = malloc(sizeof(float) * out * in), *x = malloc(sizeof(float) * n * in);
    float *y1 = malloc(sizeof(float) * n * out), *y2 = malloc(sizeof(float) * n * out);
    for (int i = 0; i < out * in; i++) w[i] = wrand();
    for (int i = 0; i < n * in; i++) x[i] = wrand();
    qvl_weight fw = f32_weight(w, out, in);
    for (int t = 0; t < 2; t++) {
        void *b1, *b2;
        pool_set_threads(1);
        qvl_weight q1 = quantized(&fw, TYPES[t], &b1);
        matmul(y1, x, &q1, n);
        pool_set_threads(2);
        qvl_weight q2 = quantized(&fw, TYPES[t], &b2);
        matmul(y2, x, &q2, n);
        ck_assert(memcmp(b1, b2, (size_t)out * quant_row_bytes(TYPES[t], in)) == 0);
        ck_assert(memcmp(y1, y2, sizeof(float) * n * out) == 0);
        free(b1); free(b2);
    }
    free(w); free(x); free(y1); free(y2);
}
END_TEST

/* matmul_batch over quantized weights (one pass of the pool for the row
 * kernels, shared input quantization) gives each product the bits of
 * matmul alone, on every kernel and thread count: q8 and q4 mixed, inputs
 * shared or not, one row (decoding), two (row kernels) and five (AVX-512:
 * the tiled product). */
START_TEST(batch_equals_separate_products) {
    enum { P = 6 };
    static const int OUT[P] = { 37, 53, 29, 300, 41, 17 }, IN[P] = { 96, 96, 160, 96, 96, 160 }, N[P] = { 1, 1, 1, 1, 5, 2 };
    static const int XS[P] = { 0, 0, 1, 0, 2, 3 };        /* which input: products 0, 1 and 3 share one */
    static const qvl_dtype T[P] = { QVL_Q8, QVL_Q4, QVL_Q8, QVL_Q4, QVL_Q4, QVL_Q8 };
    float *x[4], *y1[P], *y2[P];
    void *buf[P];
    qvl_weight qw[P];
    qvl_product ps[P];
    for (int k = 0; k < 4; k++) {
        x[k] = malloc(sizeof(float) * 5 * 160);
        for (int i = 0; i < 5 * 160; i++) x[k][i] = wrand();
    }
    for (int i = 0; i < P; i++) {
        float *w = malloc(sizeof(float) * OUT[i] * IN[i]);
        for (int e = 0; e < OUT[i] * IN[i]; e++) w[e] = wrand() * 0.05f;
        qvl_weight fw = f32_weight(w, OUT[i], IN[i]);
        qw[i] = quantized(&fw, T[i], &buf[i]);
        free(w);
        y1[i] = malloc(sizeof(float) * N[i] * OUT[i]);
        y2[i] = malloc(sizeof(float) * N[i] * OUT[i]);
        ps[i] = (qvl_product){ y2[i], x[XS[i]], &qw[i], N[i] };
    }
    for (int k = 0; k < 3; k++) {
        if (quant_force_kernel(KERNELS[k])) continue;
        for (int threads = 1; threads <= 3; threads++) {
            pool_set_threads(threads);
            for (int i = 0; i < P; i++) matmul(y1[i], x[XS[i]], &qw[i], N[i]);
            for (int i = 0; i < P; i++) memset(y2[i], 0xff, sizeof(float) * N[i] * OUT[i]);
            matmul_batch(ps, P);
            for (int i = 0; i < P; i++)
                ck_assert_msg(memcmp(y1[i], y2[i], sizeof(float) * N[i] * OUT[i]) == 0, "%s, %d threads: product %d differs",
                              KERNELS[k], threads, i);
        }
    }
    quant_force_kernel(NULL);
    pool_set_threads(0);
    for (int i = 0; i < P; i++) { free(buf[i]); free(y1[i]); free(y2[i]); }
    for (int k = 0; k < 4; k++) free(x[k]);
}
END_TEST

/* An in-major bf16 weight quantizes to the same bytes as its out-major transpose. */
START_TEST(in_major_is_transposed) {
    int out = 70, in = 96;
    uint16_t *om = malloc(2u * out * in), *im = malloc(2u * out * 2 * in);
    for (int o = 0; o < out; o++)
        for (int i = 0; i < in; i++) {
            uint16_t h = qvl_f32_to_bf16(wrand());
            om[o * in + i] = h;
            im[i * 2 * out + o] = h;       /* ld 2*out: a slice of a wider tensor */
        }
    qvl_weight a = { om, QVL_BF16, out, in, 0, in }, b = { im, QVL_BF16, out, in, 1, 2 * out };
    for (int t = 0; t < 2; t++) {
        void *ba, *bb;
        quantized(&a, TYPES[t], &ba);
        quantized(&b, TYPES[t], &bb);
        ck_assert(memcmp(ba, bb, (size_t)out * quant_row_bytes(TYPES[t], in)) == 0);
        free(ba); free(bb);
    }
    free(om); free(im);
}
END_TEST

/* ---------------------------------------------------------------- models */

static const char *const MODELS[] = { "tiny-qwen3vl", "tiny-qwen3vl-moe" };

static cJSON *goldens(void) {
    static cJSON *root;
    if (!root) {
        char *text = slurp(data_path("goldens/goldens.json"), NULL);
        root = cJSON_Parse(text);
        free(text);
        ck_assert(root != NULL);
    }
    return root;
}

static int *json_ints(const cJSON *arr, int *n) {
    *n = cJSON_GetArraySize(arr);
    int *v = malloc(sizeof(int) * (size_t)(*n + 1));
    for (int i = 0; i < *n; i++) v[i] = cJSON_GetArrayItem(arr, i)->valueint;
    return v;
}

static qvl_model *load(const char *dir, qvl_quant q) {
    char err[QVL_ERR_MAX] = "";
    qvl_source src = source_dir(dir);
    qvl_model *m = model_load(&src, err);
    ck_assert_msg(m != NULL, "loading %s: %s", dir, err);
    ck_assert_msg(model_quantize(m, q, err) == 0, "quantizing %s: %s", dir, err);
    return m;
}

static const char *model_dir(const char *name) {
    static char dir[4096];
    snprintf(dir, sizeof dir, "%s/%s", build_path("tests/models"), name);
    return dir;
}

/* Every matrix model_quantize converts has the type quant_type_for gives it;
 * the vision encoder's are all there, at q8 under either mode. */
typedef struct {
    const qvl_model *m;
    qvl_quant quant;
    int n[2];            /* text matrices seen at q8, q4 */
    int vision;          /* vision matrices seen (each q8) */
} type_check;

static int check_type(void *ctx, const char *name, qvl_weight *w) {
    type_check *c = ctx;
    qvl_dtype t = quant_type_for(c->m, c->quant, name);
    ck_assert_msg(w->dtype == t, "%s: dtype %d, the %s rule says %d", name, w->dtype, quant_name(c->quant), t);
    if (quant_is_vision_name(name)) {
        ck_assert_msg(t == QVL_Q8, "%s: vision matrices stay 8-bit", name);
        c->vision++;
        return 0;
    }
    c->n[t == QVL_Q4]++;
    return 0;
}

static void check_types(qvl_model *m, qvl_quant q) {
    type_check c = { m, q, { 0, 0 }, 0 };
    quant_for_each_matrix(m, check_type, &c);
    const qvl_vision_config *vc = &m->cfg.vision;
    ck_assert_int_eq(c.vision, 4 * vc->depth + 2 + 2 * vc->n_deepstack);
    if (q == QVL_QUANT_Q8) ck_assert_int_eq(c.n[1], 0);
    else ck_assert_msg(c.n[0] > 0 && c.n[1] > c.n[0], "q4: %d text matrices at q8, %d at q4", c.n[0], c.n[1]);
}

/* Greedy choice with the vision ids masked, as the goldens do. */
static int greedy_pick(const float *logits, int vocab) {
    int best = -1;
    for (int i = 0; i < vocab; i++) {
        if (i >= 151652 && i <= 151656) continue;
        if (best < 0 || logits[i] > logits[best]) best = i;
    }
    return best;
}

typedef struct {
    double cos;          /* last prompt position vs the golden float32 logits */
    double max_diff;     /* and the largest difference there */
    int greedy[16], n_greedy;
    float *logits;       /* the prompt's last logits (caller frees) */
} case_result;

static const cJSON *golden_case(const char *model, const char *cname) {
    const cJSON *c = cJSON_GetObjectItem(cJSON_GetObjectItem(cJSON_GetObjectItem(goldens(), model), "cases"), cname);
    ck_assert_msg(c != NULL, "goldens.json: no %s case %s", model, cname);
    return c;
}

/* Runs a golden case (vision on the golden pixel values) and n_greedy greedy
 * steps.  The steps feed the golden's tokens (teacher forcing), so that each
 * step's pick can be held against the golden's top logits at that step. */
static case_result run_case(const qvl_model *m, const char *model, st_set *g, const char *cname, int n_greedy) {
    char err[QVL_ERR_MAX] = "", tname[128];
    const cJSON *c = golden_case(model, cname);
    int n, n_want;
    int *ids = json_ints(cJSON_GetObjectItem(c, "input_ids"), &n);
    int *want = json_ints(cJSON_GetObjectItem(c, "greedy_ids"), &n_want);
    ck_assert(n_greedy <= n_want && n_greedy <= 16);
    const cJSON *grids = cJSON_GetObjectItem(c, "image_grid_thw");
    int n_images = grids ? cJSON_GetArraySize(grids) : 0;
    qvl_grid pg[4];
    qvl_image_input images[4];
    qvl_vision_out vo = { 0 };
    ck_assert(n_images <= 4);
    if (n_images) {
        for (int i = 0; i < n_images; i++) {
            int k, *v = json_ints(cJSON_GetArrayItem(grids, i), &k);
            pg[i] = (qvl_grid){ v[0], v[1], v[2] };
            free(v);
        }
        snprintf(tname, sizeof tname, "%s.pixel_values", cname);
        const st_tensor *pv = st_find(g, tname);
        ck_assert(pv && pv->dtype == QVL_F32);
        float *pixels = malloc(pv->nbytes);
        memcpy(pixels, pv->data, pv->nbytes);
        ck_assert_msg(vision_encode(m, pixels, (int)pv->shape[0], pg, n_images, NULL, &vo, err) == 0, "%s", err);
        free(pixels);
        for (int i = 0, row = 0; i < n_images; i++) {
            qvl_grid lg = vision_llm_grid(m, pg[i]);
            images[i].grid = lg;
            images[i].embeds = vo.merged + (size_t)row * vo.dim;
            for (int j = 0; j < vo.n_deepstack; j++) images[i].deepstack[j] = vo.deepstack[j] + (size_t)row * vo.dim;
            row += lg.t * lg.h * lg.w;
        }
    }
    int V = m->text.lm_head.out;
    case_result r = { .n_greedy = n_greedy };
    r.logits = malloc(sizeof(float) * V);
    float *step = malloc(sizeof(float) * V);
    qvl_cache *cache = cache_new(m, n + n_greedy + 1, err);
    ck_assert_msg(cache != NULL, "%s", err);
    ck_assert_msg(decoder_forward(cache, ids, n, images, n_images, r.logits, 0, NULL, err) == 0, "%s", err);
    snprintf(tname, sizeof tname, "%s.logits_last", cname);
    const st_tensor *gl = st_find(g, tname);
    ck_assert(gl && gl->numel == V);
    float *golden = malloc(gl->nbytes);
    memcpy(golden, gl->data, gl->nbytes);
    r.cos = cosine(r.logits, golden, (size_t)V);
    for (int i = 0; i < V; i++) r.max_diff = fmax(r.max_diff, fabs((double)r.logits[i] - golden[i]));
    memcpy(step, r.logits, sizeof(float) * V);
    for (int s = 0; s < n_greedy; s++) {
        r.greedy[s] = greedy_pick(step, V);
        if (s + 1 < n_greedy) ck_assert_msg(decoder_step(cache, want[s], step, err) == 0, "%s", err);
    }
    cache_free(cache);
    free(golden); free(step); free(ids); free(want);
    vision_out_free(&vo);
    return r;
}

static st_set *open_golden(const char *model) {
    char rel[256], err[QVL_ERR_MAX] = "";
    snprintf(rel, sizeof rel, "goldens/%s.safetensors", model);
    st_set *g = st_open_file(data_path(rel), err);
    ck_assert_msg(g != NULL, "%s", err);
    return g;
}

/* The greedy picks equal the golden's wherever its lead over the runner-up
 * is larger than `margin` (the synthetic tiny models have near-ties that no
 * quantized model can be expected to resolve).  Returns the steps checked. */
static int check_greedy(const case_result *r, const char *model, const char *cname, const char *what, double margin) {
    const cJSON *c = golden_case(model, cname), *steps = cJSON_GetObjectItem(c, "greedy_steps");
    int n, checked = 0, *want = json_ints(cJSON_GetObjectItem(c, "greedy_ids"), &n);
    for (int s = 0; s < r->n_greedy && s < n; s++) {
        const cJSON *top = cJSON_GetObjectItem(cJSON_GetArrayItem(steps, s), "top_logits");
        double lead = cJSON_GetArrayItem(top, 0)->valuedouble - cJSON_GetArrayItem(top, 1)->valuedouble;
        if (lead <= margin) continue;
        checked++;
        ck_assert_msg(r->greedy[s] == want[s], "%s %s %s: greedy step %d is %d, golden %d (lead %.3f)", model, cname,
                      what, s, r->greedy[s], want[s], lead);
    }
    free(want);
    return checked;
}

/* A float32 model holding exactly the values of the q4/q8 weights: running it
 * leaves only the int8 activations as the difference to the quantized model. */
typedef struct {
    const qvl_model *m;
    qvl_quant quant;
    float **bufs;
    int n;
} dequantizer;

static int dequantize_matrix(void *ctx, const char *name, qvl_weight *w) {
    dequantizer *d = ctx;
    void *qbuf;
    qvl_weight q = quantized(w, quant_type_for(d->m, d->quant, name), &qbuf);
    float *f = malloc(sizeof(float) * (size_t)w->out * w->in);
    for (int o = 0; o < w->out; o++) quant_dequant_row(&q, o, f + (size_t)o * w->in);
    free(qbuf);
    d->bufs = realloc(d->bufs, sizeof *d->bufs * (size_t)(d->n + 1));
    d->bufs[d->n++] = f;
    *w = f32_weight(f, w->out, w->in);
    return 0;
}

/* Every case of both tiny models, quantized at load.
 *   q8 against the float32 goldens: cosine >= 0.999 and the greedy picks.
 *   q4 and q8 against the same model with the quantized weights' values in
 *   float32: cosine >= 0.999, i.e. the integer kernels compute what the stored
 *   blocks mean.  (How close 4-bit weights keep a model is a property of the
 *   format and the model; it is measured on the 2B shape, see shape_2b_quality.)
 * The MoE model may miss on one case: its random router has near-ties that a
 * perturbation as small as q8's flips, changing that token's experts (each of
 * attention, experts and lm_head quantized alone keeps its text case above
 * 0.9996; all together flip one routing choice). */
START_TEST(tiny_models_quantized_at_load) {
    static const char *const CASES[] = { "text", "image", "two_images", "text_then_image" };
    const char *model = MODELS[_i];
    st_set *g = open_golden(model);
    for (int t = 0; t < 2; t++) {
        qvl_quant q = t ? QVL_QUANT_Q4 : QVL_QUANT_Q8;
        qvl_model *m = load(model_dir(model), q), *ref = load(model_dir(model), QVL_QUANT_NONE);
        dequantizer dq = { ref, q, NULL, 0 };
        quant_for_each_matrix(ref, dequantize_matrix, &dq);
        check_types(m, q);
        ck_assert_int_eq(m->text.embed.dtype, QVL_BF16);          /* the lookup keeps the stored rows */
        int sparse = m->text.layers[0].sparse, below = 0, checked = 0;
        for (int k = 0; k < 4; k++) {
            case_result r = run_case(m, model, g, CASES[k], 10), f = run_case(ref, model, g, CASES[k], 0);
            double vs_values = cosine(r.logits, f.logits, (size_t)m->text.lm_head.out);
            fprintf(stderr, "%s %-15s %s: cosine %.6f vs float32 goldens (max logit error %.3f), %.6f vs its "
                    "values in float32\n", model, CASES[k], quant_name(q), r.cos, r.max_diff, vs_values);
            int ok = vs_values >= 0.999 && (q == QVL_QUANT_Q4 || r.cos >= 0.999);
            if (ok && q == QVL_QUANT_Q8) checked += check_greedy(&r, model, CASES[k], "q8", 2 * r.max_diff);
            below += !ok;
            ck_assert_msg(ok || (sparse && below <= 1), "%s %s %s: cosine %.6f vs goldens, %.6f vs its values",
                          model, CASES[k], quant_name(q), r.cos, vs_values);
            free(r.logits);
            free(f.logits);
        }
        if (q == QVL_QUANT_Q8) ck_assert_msg(checked >= 10, "%s: only %d greedy steps had a clear winner", model, checked);
        for (int i = 0; i < dq.n; i++) free(dq.bufs[i]);
        free(dq.bufs);
        model_free(m);
        model_free(ref);
    }
    st_close(g);
}
END_TEST

/* The q4 mix (quant.c): attention's v and o, and the MLP or experts of the
 * first eighth of the layers (at least layer 0) at 8 bits, the rest at 4. */
START_TEST(q4_mix_rule) {
    static const struct { const char *name; qvl_dtype q4, q4_28; } cases[] = {
        { "model.language_model.layers.0.self_attn.q_proj.weight", QVL_Q4, QVL_Q4 },
        { "model.language_model.layers.3.self_attn.k_proj.weight", QVL_Q4, QVL_Q4 },
        { "model.language_model.layers.2.self_attn.v_proj.weight", QVL_Q8, QVL_Q8 },
        { "model.language_model.layers.3.self_attn.o_proj.weight", QVL_Q8, QVL_Q8 },
        { "model.language_model.layers.0.mlp.down_proj.weight", QVL_Q8, QVL_Q8 },
        { "model.language_model.layers.1.mlp.gate_proj.weight", QVL_Q4, QVL_Q8 },
        { "model.language_model.layers.3.mlp.up_proj.weight", QVL_Q4, QVL_Q8 },
        { "model.language_model.layers.4.mlp.up_proj.weight", QVL_Q4, QVL_Q4 },
        { "model.language_model.layers.0.mlp.experts.5.up_proj.weight", QVL_Q8, QVL_Q8 },
        { "model.language_model.layers.1.mlp.experts.5.up_proj.weight", QVL_Q4, QVL_Q8 },
        { "model.language_model.layers.27.mlp.down_proj.weight", QVL_Q4, QVL_Q4 },
        { "lm_head.weight", QVL_Q4, QVL_Q4 },
    };
    qvl_model *m = load(model_dir("tiny-qwen3vl-moe"), QVL_QUANT_NONE);
    ck_assert_int_eq(m->cfg.text.layers, 4);
    for (int pass = 0; pass < 2; pass++) {      /* 4 layers, then as if 28 (the 2B: layers 0-3 at q8) */
        if (pass) m->cfg.text.layers = 28;
        for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
            const char *name = cases[i].name;
            ck_assert_int_eq(quant_type_for(m, QVL_QUANT_Q8, name), QVL_Q8);
            ck_assert_msg(quant_type_for(m, QVL_QUANT_Q4, name) == (pass ? cases[i].q4_28 : cases[i].q4),
                          "%d layers: %s", m->cfg.text.layers, name);
        }
    }
    m->cfg.text.layers = 4;
    model_free(m);
}
END_TEST

/* Quantizes every matrix to t, whatever the rule says (a q4 checkpoint
 * written before the mix). */
typedef struct {
    qvl_dtype t;
    void *bufs[256];
    int n;
} all_of;

static int quantize_all_to(void *ctx, const char *name, qvl_weight *w) {
    (void)name;
    all_of *a = ctx;
    ck_assert(a->n < 256);
    *w = quantized(w, a->t, &a->bufs[a->n++]);
    return 0;
}

/* On the dense tiny model the q4 mix is closer to the float32 goldens than
 * every matrix at q4, in every case. */
START_TEST(q4_mix_beats_all_q4) {
    static const char *const CASES[] = { "text", "image", "two_images", "text_then_image" };
    const char *model = MODELS[0];
    st_set *g = open_golden(model);
    qvl_model *mix = load(model_dir(model), QVL_QUANT_Q4), *all = load(model_dir(model), QVL_QUANT_NONE);
    all_of a = { .t = QVL_Q4 };
    quant_for_each_matrix(all, quantize_all_to, &a);
    for (int k = 0; k < 4; k++) {
        case_result r = run_case(mix, model, g, CASES[k], 0), f = run_case(all, model, g, CASES[k], 0);
        fprintf(stderr, "%s %-15s q4 mix: cosine %.6f vs float32 goldens, all q4 %.6f\n", model, CASES[k], r.cos, f.cos);
        ck_assert_msg(r.cos > f.cos, "%s %s: q4 mix %.6f, all q4 %.6f", model, CASES[k], r.cos, f.cos);
        free(r.logits);
        free(f.logits);
    }
    model_free(mix);
    model_free(all);
    for (int i = 0; i < a.n; i++) free(a.bufs[i]);
    st_close(g);
}
END_TEST

START_TEST(requantizing_another_type_is_an_error) {
    char err[QVL_ERR_MAX] = "";
    qvl_model *m = load(model_dir("tiny-qwen3vl"), QVL_QUANT_Q8);
    ck_assert_int_eq(model_quantize(m, QVL_QUANT_Q8, err), 0);          /* already so: nothing to do */
    ck_assert_int_eq(model_quantize(m, QVL_QUANT_Q4, err), -1);
    ck_assert_msg(strstr(err, "already quantized to q8"), "%s", err);
    ck_assert_int_eq(model_quantize(m, QVL_QUANT_NONE, err), 0);
    model_free(m);

    /* q4's mix holds q8 matrices, but is not a q8 model */
    m = load(model_dir("tiny-qwen3vl"), QVL_QUANT_Q4);
    ck_assert_int_eq(model_quantize(m, QVL_QUANT_Q4, err), 0);
    ck_assert_int_eq(model_quantize(m, QVL_QUANT_Q8, err), -1);
    ck_assert_msg(strstr(err, "already quantized to q4"), "%s", err);
    model_free(m);

    /* all q4 (before the mix) is taken as q4, as it is */
    m = load(model_dir("tiny-qwen3vl"), QVL_QUANT_NONE);
    all_of a = { .t = QVL_Q4 };
    quant_for_each_matrix(m, quantize_all_to, &a);
    ck_assert_int_eq(model_quantize(m, QVL_QUANT_Q4, err), 0);
    ck_assert_ptr_null(m->quant_data);
    ck_assert_int_eq(m->text.layers[0].v.dtype, QVL_Q4);
    ck_assert_int_eq(model_quantize(m, QVL_QUANT_Q8, err), -1);
    model_free(m);
    for (int i = 0; i < a.n; i++) free(a.bufs[i]);
}
END_TEST

/* ---------------------------------------------------------------- qvl quantize */

static int run_qvl(const char *args, char **err_out) {
    const char *qvl = build_path("qvl");
    size_t len = strlen(qvl) + strlen(args) + 2;
    char *cmd = malloc(len), *out = NULL;
    snprintf(cmd, len, "%s %s", qvl, args);
    int rc = run_cmd(cmd, &out, err_out);
    free(cmd);
    free(out);
    return rc;
}

/* The __metadata__ of a safetensors file, parsed. */
static cJSON *file_metadata(const char *path) {
    size_t len;
    char *data = slurp(path, &len);
    ck_assert(len >= 8);
    uint64_t h = 0;
    for (int i = 7; i >= 0; i--) h = (h << 8) | (unsigned char)data[i];
    ck_assert(h <= len - 8);
    cJSON *root = cJSON_ParseWithLength(data + 8, h);
    free(data);
    ck_assert(root != NULL);
    cJSON *meta = cJSON_DetachItemFromObject(root, "__metadata__");
    cJSON_Delete(root);
    ck_assert(meta != NULL);
    return meta;
}

START_TEST(quantize_tool_output_loads_in_place) {
    const char *model = MODELS[_i / 2];
    qvl_quant q = _i % 2 ? QVL_QUANT_Q4 : QVL_QUANT_Q8;
    const char *out = tmp_dir("quantized");
    char args[8192], *err = NULL, path[4200];
    snprintf(args, sizeof args, "quantize -q -m %s -o %s --quant %s -t 2", model_dir(model), out, quant_name(q));
    int rc = run_qvl(args, &err);
    ck_assert_msg(rc == 0, "qvl %s: exit %d: %s", args, rc, err);
    free(err);
    snprintf(path, sizeof path, "%s/config.json", out);
    free(slurp(path, NULL));
    snprintf(path, sizeof path, "%s/preprocessor_config.json", out);
    free(slurp(path, NULL));
    snprintf(path, sizeof path, "%s/model.safetensors", out);
    cJSON *meta = file_metadata(path);
    ck_assert_str_eq(cJSON_GetObjectItem(meta, "qvl.quant")->valuestring, quant_name(q));
    ck_assert(strstr(cJSON_GetObjectItem(meta, "qvl.quantized")->valuestring, "model.language_model.layers.3.mlp."));
    cJSON_Delete(meta);

    /* Loaded as stored: nothing to quantize, the matrices point into the mapping. */
    qvl_model *stored = load(out, QVL_QUANT_NONE), *at_load = load(model_dir(model), q);
    ck_assert_ptr_null(stored->quant_data);
    check_types(stored, q);
    ck_assert_int_eq(stored->text.embed.dtype, QVL_BF16);
    char err2[QVL_ERR_MAX] = "";
    ck_assert_int_eq(model_quantize(stored, q, err2), 0);
    ck_assert_ptr_null(stored->quant_data);
    st_set *g = open_golden(model);
    case_result a = run_case(stored, model, g, "image", 3), b = run_case(at_load, model, g, "image", 3);
    ck_assert(memcmp(a.logits, b.logits, sizeof(float) * stored->text.lm_head.out) == 0);
    ck_assert(memcmp(a.greedy, b.greedy, sizeof a.greedy) == 0);
    free(a.logits); free(b.logits);
    st_close(g);
    model_free(stored);
    model_free(at_load);

    /* Quantizing it again to the other type is refused, naming the reason. */
    char args2[8192];
    snprintf(args2, sizeof args2, "quantize -m %s -o %s --quant %s", out, tmp_dir("again"), q == QVL_QUANT_Q8 ? "q4" : "q8");
    rc = run_qvl(args2, &err);
    ck_assert_int_eq(rc, 1);
    ck_assert_msg(strstr(err, "already quantized"), "%s", err);
    free(err);
}
END_TEST

START_TEST(quantize_tool_bad_input) {
    static const struct { const char *args; int rc; const char *msg; } cases[] = {
        { "quantize -o /tmp/x --quant q8", 2, "-m DIR is required" },
        { "quantize -m /nonexistent", 2, "-o OUT is required" },
        { "quantize -m /nonexistent -o /tmp/x", 2, "--quant q8|q4 is required" },
        { "quantize -m /nonexistent -o /tmp/x --quant q5", 2, "'q5' is not q8 or q4" },
        { "quantize -m /nonexistent -o /tmp/x --quant none", 2, "'none' is not q8 or q4" },
        { "quantize -m /nonexistent/model -o /tmp/x --quant q8", 1, "/nonexistent/model" },
        { "quantize -m %s -o %s --quant q8", 1, "is the model directory itself" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char args[8192], *err = NULL;
        snprintf(args, sizeof args, cases[i].args, model_dir("tiny-qwen3vl"), model_dir("tiny-qwen3vl"));
        int rc = run_qvl(args, &err);
        ck_assert_msg(rc == cases[i].rc, "qvl %s: exit %d, expected %d (%s)", args, rc, cases[i].rc, err);
        ck_assert_msg(strstr(err, cases[i].msg), "qvl %s: stderr '%s' lacks '%s'", args, err, cases[i].msg);
        ck_assert_msg(strncmp(err, "qvl quantize: ", 14) == 0, "qvl %s: '%s'", args, err);
        free(err);
    }
    /* an output that is a file */
    const char *dir = tmp_dir("file-out");
    char file[4200], args[16384], *err = NULL;
    snprintf(file, sizeof file, "%s/f", dir);
    write_file(file, "x", 1);
    snprintf(args, sizeof args, "quantize -m %s -o %s --quant q4", model_dir("tiny-qwen3vl"), file);
    ck_assert_int_eq(run_qvl(args, &err), 1);
    ck_assert_msg(strstr(err, "not a directory"), "%s", err);
    free(err);
}
END_TEST

/* ---------------------------------------------------------------- the 2B shape (opt-in) */

/* GB of the matrices quant_for_each_matrix visits, as stored (what decoding
 * one token reads, less the embedding row and the norms). */
static int add_gb(void *ctx, const char *name, qvl_weight *w) {
    (void)name;
    *(double *)ctx += (quant_is_quantized(w->dtype) ? (double)w->out * (double)w->ld
                                                    : (double)w->out * w->in * (double)qvl_dtype_size(w->dtype)) / 1e9;
    return 0;
}

static double matrix_gb(qvl_model *m) {
    double gb = 0;
    quant_for_each_matrix(m, add_gb, &gb);
    return gb;
}

START_TEST(shape_2b_quality) {
    const char *dir = getenv("QVL_QUANT_2B"), *golden = getenv("QVL_SHAPE_GOLDEN");
    if (!dir || !golden) return;
    char err[QVL_ERR_MAX] = "";
    st_set *g = st_open_file(golden, err);
    ck_assert_msg(g != NULL, "%s", err);
    int n, *want = json_ints(cJSON_GetObjectItem(golden_case("shape-qwen3vl-2b", "image"), "greedy_ids"), &n);
    /* none, q8, q4 with float products, then q8 and q4 with the bf16 products
     * the chat's --matmul default gives quantized weights */
    for (int t = 0; t < 5; t++) {
        qvl_quant q = t == 0 ? QVL_QUANT_NONE : t % 2 ? QVL_QUANT_Q8 : QVL_QUANT_Q4;
        if (ops_set_bf16_matmul(t >= 3)) break;
        double t0 = qvl_now();
        qvl_model *m = load(dir, q);
        double t1 = qvl_now();
        case_result r = run_case(m, "shape-qwen3vl-2b", g, "image", n);
        int same = 1;
        for (int s = 0; s < n; s++) same &= r.greedy[s] == want[s];
        fprintf(stderr, "shape-qwen3vl-2b %-4s, matmul %-4s: cosine %.6f, greedy ids %s (", quant_name(q),
                t >= 3 ? "bf16" : "f32", r.cos, same ? "identical" : "DIFFER");
        for (int s = 0; s < n; s++) fprintf(stderr, "%s%d", s ? " " : "", r.greedy[s]);
        fprintf(stderr, "); matrices %.3f GB; load+quantize %.1f s, case %.1f s\n", matrix_gb(m), t1 - t0, qvl_now() - t1);
        if (q != QVL_QUANT_NONE) {
            ck_assert_msg(r.cos >= (q == QVL_QUANT_Q8 ? 0.999 : 0.99), "%s cosine %.6f", quant_name(q), r.cos);
            ck_assert_msg(same, "%s greedy ids differ", quant_name(q));
        }
        free(r.logits);
        model_free(m);
    }
    ops_set_bf16_matmul(0);
    free(want);
    st_close(g);
}
END_TEST

static Suite *quant_suite(void) {
    Suite *s = suite_create("quant");
    TCase *f = tcase_create("formats");
    tcase_add_test(f, row_sizes);
    tcase_add_test(f, exact_values_round_trip);
    tcase_add_test(f, q8_codes_follow_the_formula);
    tcase_add_test(f, random_round_trip_error);
    tcase_add_test(f, q4_codes_follow_the_search);
    tcase_add_test(f, q4_search_fits_uniform_blocks);
    tcase_add_test(f, bind_checks_the_shape);
    suite_add_tcase(s, f);
    TCase *k = tcase_create("kernels");
    tcase_add_test(k, kernels_agree);
    tcase_add_test(k, threads_agree);
    tcase_add_test(k, batch_equals_separate_products);
    tcase_add_test(k, in_major_is_transposed);
    suite_add_tcase(s, k);
    TCase *m = tcase_create("models");
    tcase_set_timeout(m, 120);
    tcase_add_loop_test(m, tiny_models_quantized_at_load, 0, 2);
    tcase_add_test(m, q4_mix_rule);
    tcase_add_test(m, q4_mix_beats_all_q4);
    tcase_add_test(m, requantizing_another_type_is_an_error);
    tcase_add_loop_test(m, quantize_tool_output_loads_in_place, 0, 4);
    tcase_add_test(m, quantize_tool_bad_input);
    suite_add_tcase(s, m);
    TCase *big = tcase_create("shape_2b");
    tcase_set_timeout(big, 3600);
    tcase_add_test(big, shape_2b_quality);
    suite_add_tcase(s, big);
    return s;
}

int main(void) {
    return run_suite(quant_suite());
}
