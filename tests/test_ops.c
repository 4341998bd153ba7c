/* test_ops.c - the engine's arithmetic kernels and thread pool.
 *
 * Every kernel table this CPU can run (AVX-512, AVX2, portable C) against
 * double-precision references computed here:
 *   - matmul for f32/f16/bf16 weights, out-major and in-major, rows wider
 *     than the matrix, sizes that leave partial vectors, register tiles,
 *     input blocks and output tiles; one row (decoding) and many (prefill);
 *   - matmul_batch gives exactly what separate matmuls give;
 *   - results are bit-identical for 1, 2 and 3 threads, and (for the
 *     kernels' own matrix-matrix product) whatever rows share the call;
 *   - softmax, SiLU, SwiGLU and tanh-GELU over ordinary and extreme inputs;
 *   - decoding attention (query heads sharing a key/value head) at short and
 *     long (4096) context, head sizes on and off the vector width;
 * and the pool: every item runs exactly once, nested loops run inline, and
 * thousands of back-to-back loops (the spinning hand-off) and loops after
 * the workers fell asleep all complete. */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common.h"
#include "kernels.h"
#include "ops.h"
#include "testutil.h"
#include "threadpool.h"

static const char *const KERNELS[] = { "avx512bf16", "avx512", "avx2", "portable" };
#define NKERNELS 4

static uint32_t lcg(uint32_t *s) { *s = *s * 1664525u + 1013904223u; return *s >> 8; }
static float uniform(uint32_t *s, float lo, float hi) { return lo + (hi - lo) * (float)(lcg(s) % 1000001) / 1e6f; }

/* Selects a kernel table; 0 when this CPU cannot run it (the test skips it). */
static int use_kernel(int i) {
    if (ops_force_kernel(KERNELS[i]) == 0) return 1;
    fprintf(stderr, "kernel %s: not supported here, skipped\n", KERNELS[i]);
    return 0;
}

/* ---------------------------------------------------------------- matmul */

/* A random weight [out, in] in dtype t, stored out-major or in-major with a
 * row stride wider than the row; *ref gets the stored values as double [out][in]. */
typedef struct {
    qvl_weight w;
    void *raw;
    double *ref;
} test_weight;

/* Rows `pad` elements wider than the matrix. */
static test_weight make_weight_padded(qvl_dtype t, int out, int in, int in_major, int pad, uint32_t *seed) {
    test_weight tw;
    int rows = in_major ? in : out, cols = in_major ? out : in, ld = cols + pad;
    size_t es = qvl_dtype_size(t);
    tw.raw = calloc((size_t)rows * ld, es);
    tw.ref = calloc((size_t)out * in, sizeof(double));
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < ld; c++) {
            float v = uniform(seed, -1, 1);
            char *dst = (char *)tw.raw + ((size_t)r * ld + c) * es;
            if (t == QVL_F32) memcpy(dst, &v, 4);
            else {
                uint16_t h = t == QVL_F16 ? qvl_f32_to_f16(v) : qvl_f32_to_bf16(v);
                memcpy(dst, &h, 2);
                v = t == QVL_F16 ? qvl_f16_to_f32(h) : qvl_bf16_to_f32(h);
            }
            if (c < cols) tw.ref[in_major ? (size_t)c * in + r : (size_t)r * in + c] = v;
        }
    tw.w = (qvl_weight){ tw.raw, t, out, in, in_major, ld };
    return tw;
}

static test_weight make_weight(qvl_dtype t, int out, int in, int in_major, uint32_t *seed) {
    return make_weight_padded(t, out, in, in_major, 7, seed);
}

static void free_weight(test_weight *tw) { free(tw->raw); free(tw->ref); }

static float *random_floats(size_t n, uint32_t *seed, float lo, float hi) {
    float *x = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = uniform(seed, lo, hi);
    return x;
}

/* y against the double product; the bound scales with sum |w x| (float
 * rounding over `in` terms). */
static void check_product(const float *y, const float *x, const test_weight *tw, int n, const char *what) {
    int out = tw->w.out, in = tw->w.in;
    for (int r = 0; r < n; r++)
        for (int o = 0; o < out; o++) {
            double ref = 0, mag = 0;
            for (int i = 0; i < in; i++) {
                double p = (double)x[(size_t)r * in + i] * tw->ref[(size_t)o * in + i];
                ref += p;
                mag += fabs(p);
            }
            double got = y[(size_t)r * out + o];
            ck_assert_msg(fabs(got - ref) <= 2e-6 * mag + 1e-6, "%s: y[%d][%d] = %.7g, want %.7g", what, r, o, got, ref);
        }
}

/* Shapes: partial vectors (45, 70), several input blocks and output tiles
 * (300, 260), more outputs than one in-major accumulator block (2100), rows
 * around the 12-row register tile. */
START_TEST(matmul_matches_reference) {
    static const int shapes[][2] = { { 70, 45 }, { 33, 64 }, { 260, 300 }, { 2100, 37 } };   /* out, in */
    static const int rows[] = { 1, 2, 13, 30 };
    qvl_dtype types[3] = { QVL_F32, QVL_F16, QVL_BF16 };
    if (!use_kernel(_i)) return;
    uint32_t seed = 11;
    char what[128];
    for (int s = 0; s < 4; s++)
        for (int ti = 0; ti < 3; ti++)
            for (int in_major = 0; in_major < 2; in_major++) {
                test_weight tw = make_weight(types[ti], shapes[s][0], shapes[s][1], in_major, &seed);
                for (int ri = 0; ri < 4; ri++) {
                    int n = rows[ri];
                    float *x = random_floats((size_t)n * tw.w.in, &seed, -1, 1);
                    float *y = malloc(sizeof(float) * (size_t)n * tw.w.out);
                    matmul(y, x, &tw.w, n);
                    snprintf(what, sizeof what, "%s %dx%d dtype %d in_major %d n %d", KERNELS[_i],
                             tw.w.out, tw.w.in, ti, in_major, n);
                    check_product(y, x, &tw, n, what);
                    free(x);
                    free(y);
                }
                free_weight(&tw);
            }
    ops_force_kernel(NULL);
}
END_TEST

/* Several products in one pass: the same bits as one matmul each. */
START_TEST(batch_equals_separate_products) {
    if (!use_kernel(_i)) return;
    uint32_t seed = 5;
    for (int n = 1; n <= 20; n += 19) {
        test_weight a = make_weight(QVL_BF16, 96, 80, 0, &seed), b = make_weight(QVL_BF16, 40, 80, 0, &seed);
        test_weight c = make_weight(QVL_F16, 50, 80, 1, &seed), d = make_weight(QVL_F32, 20, 33, 0, &seed);
        float *x = random_floats((size_t)n * 80, &seed, -2, 2), *x2 = random_floats((size_t)n * 33, &seed, -2, 2);
        const test_weight *ws[4] = { &a, &b, &c, &d };
        float *sep[4], *bat[4];
        qvl_product ps[4];
        for (int k = 0; k < 4; k++) {
            size_t size = (size_t)n * ws[k]->w.out;
            sep[k] = malloc(size * sizeof(float));
            bat[k] = malloc(size * sizeof(float));
            const float *in = k == 3 ? x2 : x;
            matmul(sep[k], in, &ws[k]->w, n);
            ps[k] = (qvl_product){ bat[k], in, &ws[k]->w, n };
        }
        matmul_batch(ps, 4);
        for (int k = 0; k < 4; k++) {
            ck_assert_msg(!memcmp(sep[k], bat[k], sizeof(float) * (size_t)n * ws[k]->w.out),
                          "%s n %d: product %d differs in a batch", KERNELS[_i], n, k);
            free(sep[k]);
            free(bat[k]);
        }
        free(x); free(x2);
        free_weight(&a); free_weight(&b); free_weight(&c); free_weight(&d);
    }
    ops_force_kernel(NULL);
}
END_TEST

/* 1, 2 and 3 threads give the same bits, for one row and for many. */
START_TEST(threads_give_identical_bits) {
    if (!use_kernel(_i)) return;
    uint32_t seed = 9;
    int sizes[2] = { 1, 37 };
    for (int in_major = 0; in_major < 2; in_major++)
        for (int si = 0; si < 2; si++) {
            int n = sizes[si];
            test_weight tw = make_weight(QVL_BF16, 530, 300, in_major, &seed);
            float *x = random_floats((size_t)n * 300, &seed, -1, 1);
            float *y[3];
            for (int t = 0; t < 3; t++) {
                ck_assert_int_eq(pool_set_threads(t + 1), t + 1);
                y[t] = malloc(sizeof(float) * (size_t)n * 530);
                matmul(y[t], x, &tw.w, n);
            }
            for (int t = 1; t < 3; t++)
                ck_assert_msg(!memcmp(y[0], y[t], sizeof(float) * (size_t)n * 530),
                              "%s in_major %d n %d: %d threads differ from 1", KERNELS[_i], in_major, n, t + 1);
            for (int t = 0; t < 3; t++) free(y[t]);
            free(x);
            free_weight(&tw);
        }
    pool_set_threads(0);
    ops_force_kernel(NULL);
}
END_TEST

/* The kernels' own matrix-matrix product computes each row alone: a row's
 * bits do not depend on the other rows of the call (prefill chunking). */
START_TEST(gemm_rows_are_independent) {
    ops_force_kernel(NULL);
    if (strncmp(ops_kernel_name(), "avx512", 6)) { fprintf(stderr, "no own gemm here, skipped\n"); return; }
    uint32_t seed = 4;
    test_weight tw = make_weight(QVL_BF16, 200, 600, 0, &seed);
    enum { N = 29 };
    float *x = random_floats((size_t)N * 600, &seed, -1, 1);
    float *all = malloc(sizeof(float) * N * 200), *part = malloc(sizeof(float) * N * 200);
    matmul(all, x, &tw.w, N);
    int cuts[] = { 0, 2, 14, 15, 29 };
    for (int c = 0; c + 1 < 5; c++) {
        int r0 = cuts[c], cnt = cuts[c + 1] - r0;
        if (cnt < 2) continue;      /* one row takes the matrix-vector kernel */
        matmul(part, x + (size_t)r0 * 600, &tw.w, cnt);
        ck_assert_msg(!memcmp(part, all + (size_t)r0 * 200, sizeof(float) * (size_t)cnt * 200),
                      "rows %d..%d differ when multiplied alone", r0, r0 + cnt);
    }
    free(x); free(all); free(part);
    free_weight(&tw);
}
END_TEST

/* --matmul bf16: the activations rounded to bf16 (to nearest even), then the
 * exact products summed in float; rows with an odd length, which the bf16
 * pairs cannot take, get the float product.  Rows stay independent of the
 * call and of the thread count. */
START_TEST(bf16_matmul_matches_rounded_reference) {
    ops_force_kernel(NULL);
    if (ops_set_bf16_matmul(1)) { fprintf(stderr, "no AVX512_BF16 here, skipped\n"); return; }
    static const int shapes[][2] = { { 70, 46 }, { 33, 64 }, { 260, 300 }, { 2100, 38 } };   /* out, in */
    static const int rows[] = { 2, 13, 30 };
    uint32_t seed = 21;
    char what[128];
    for (int s = 0; s < 4; s++)
        for (int in_major = 0; in_major < 2; in_major++) {
            test_weight tw = make_weight_padded(QVL_BF16, shapes[s][0], shapes[s][1], in_major, 7 + s % 2, &seed);
            int out = tw.w.out, in = tw.w.in;
            for (int ri = 0; ri < 3; ri++) {
                int n = rows[ri];
                float *x = random_floats((size_t)n * in, &seed, -1, 1), *xr = malloc(sizeof(float) * (size_t)n * in);
                float *y = malloc(sizeof(float) * (size_t)n * out), *y2 = malloc(sizeof(float) * (size_t)n * out);
                for (size_t i = 0; i < (size_t)n * in; i++) xr[i] = qvl_bf16_to_f32(qvl_f32_to_bf16(x[i]));
                matmul(y, x, &tw.w, n);
                snprintf(what, sizeof what, "bf16 matmul %dx%d in_major %d n %d", out, in, in_major, n);
                check_product(y, xr, &tw, n, what);
                /* the last row alone, and on 2 threads: the same bits */
                matmul(y2, x + (size_t)(n - 2) * in, &tw.w, 2);
                ck_assert_msg(!memcmp(y2, y + (size_t)(n - 2) * out, sizeof(float) * 2 * (size_t)out), "%s: rows differ alone", what);
                pool_set_threads(2);
                matmul(y2, x, &tw.w, n < 2 ? n : 2);
                pool_set_threads(0);
                ck_assert_msg(!memcmp(y2, y, sizeof(float) * 2 * (size_t)out), "%s: 2 threads differ", what);
                free(x); free(xr); free(y); free(y2);
            }
            free_weight(&tw);
        }
    /* odd rows: the float product, bit for bit */
    test_weight tw = make_weight_padded(QVL_BF16, 40, 45, 0, 7, &seed);
    float *x = random_floats(5 * 45, &seed, -1, 1), *y = malloc(sizeof(float) * 5 * 40), *yf = malloc(sizeof(float) * 5 * 40);
    matmul(y, x, &tw.w, 5);
    ck_assert_int_eq(ops_bf16_matmul(), 1);
    ops_set_bf16_matmul(0);
    matmul(yf, x, &tw.w, 5);
    ck_assert_msg(!memcmp(y, yf, sizeof(float) * 5 * 40), "odd rows: not the float product");
    free(x); free(y); free(yf);
    free_weight(&tw);
}
END_TEST

/* Attention over a block of queries under --matmul bf16 (queries, keys,
 * scores and values rounded to bf16): close to the float path, with and
 * without a causal mask, for an odd key count (padded with a zero key), over
 * float keys and values and over halves (an f16 KV cache). */
START_TEST(bf16_attention_is_close_to_float) {
    ops_force_kernel(NULL);
    if (ops_set_bf16_matmul(1)) { fprintf(stderr, "no AVX512_BF16 here, skipped\n"); return; }
    ops_set_bf16_matmul(0);
    enum { NQ = 30, NK = 37, DIM = 64, LD = 70 };
    uint32_t seed = 8;
    float *q = random_floats((size_t)NQ * LD, &seed, -1, 1), *k = random_floats((size_t)NK * LD, &seed, -1, 1);
    float *v = random_floats((size_t)NK * LD, &seed, -1, 1);
    attend_scratch ws = { 0 };
    float *want = malloc(sizeof(float) * NQ * DIM), *got = malloc(sizeof(float) * NQ * DIM);
    /* the same keys and values as halves (an f16 KV cache) */
    uint16_t *kh = malloc(sizeof(uint16_t) * NK * LD), *vh = malloc(sizeof(uint16_t) * NK * LD);
    for (int i = 0; i < NK * LD; i++) {
        kh[i] = qvl_f32_to_f16(k[i]);
        vh[i] = qvl_f32_to_f16(v[i]);
    }
    int pasts[2] = { -1, NK - NQ };
    for (int half = 0; half < 2; half++)
        for (int c = 0; c < 2; c++) {
            const void *kk = half ? (const void *)kh : k, *vv = half ? (const void *)vh : v;
            qvl_dtype t = half ? QVL_F16 : QVL_F32;
            attend_block(want, DIM, q, LD, kk, vv, t, LD, NQ, NK, DIM, 0.125f, pasts[c], &ws);
            ops_set_bf16_matmul(1);
            attend_block(got, DIM, q, LD, kk, vv, t, LD, NQ, NK, DIM, 0.125f, pasts[c], &ws);
            ops_set_bf16_matmul(0);
            double worst = 0;
            for (int i = 0; i < NQ * DIM; i++) worst = fmax(worst, fabs(got[i] - want[i]));
            ck_assert_msg(worst < 1e-2 && worst > 0, "f16 %d causal_past %d: largest difference %g", half, pasts[c], worst);
        }
    free(q); free(k); free(v); free(kh); free(vh); free(want); free(got);
    attend_scratch_free(&ws);
}
END_TEST

/* The bf16 attention's softmax numerators, packed for the bf16 product:
 * each value is exp(mul (x - shift)) of its row rounded to bf16 (within a
 * bf16 step: the exponential is a polynomial good to about 2e-6), zero past
 * the row's visible columns and in the rows past `rows`; the sums are the
 * exponentials' to 1e-5, added to what was there. */
START_TEST(bf16_softmax_numerators_are_packed) {
    const ops_kernels *k = kernels_avx512_bf16();
    if (!k) { fprintf(stderr, "no AVX512_BF16 here, skipped\n"); return; }
    enum { MR = 12, KC = 70, LDA = 83, ROWS = 11, COL0 = 3 };
    ck_assert_int_eq(k->gemm_mr, MR);
    uint32_t seed = 9;
    float *x = random_floats((size_t)MR * LDA, &seed, -30, 6), shift[MR], sums[MR];
    int visible[MR] = { 73, 0, 1 + COL0, 40, 100, 2 + COL0, 69, 72, 3, 50, 60, 73 };
    for (int m = 0; m < MR; m++) {
        shift[m] = m % 3 ? 6.0f : (float)(m - 20);      /* exps below 1, and above */
        sums[m] = 0.5f;
    }
    uint32_t a[KC / 2 * MR];
    memset(a, 0xff, sizeof a);
    k->gemm_bf16_pack_exp(a, x, LDA, ROWS, KC, shift, visible, COL0, 0.125f, sums);
    for (int m = 0; m < MR; m++) {
        double sum = 0.5;
        for (int c = 0; c < KC; c++) {
            uint16_t h = (uint16_t)(a[(c / 2) * MR + m] >> (16 * (c % 2)));
            double want = m < ROWS && COL0 + c < visible[m] ? exp(0.125 * ((double)x[(size_t)m * LDA + c] - shift[m])) : 0;
            sum += m < ROWS ? want : 0;
            double got = qvl_bf16_to_f32(h);
            ck_assert_msg(fabs(got - want) <= want / 256, "row %d column %d: %g, want %g", m, c, got, want);
        }
        if (m < ROWS) ck_assert_msg(fabs(sums[m] - sum) <= 1e-5 * sum, "row %d: sum %.8g, want %.8g", m, sums[m], sum);
    }
    free(x);
}
END_TEST

START_TEST(unknown_kernel_is_refused) {
    ck_assert_int_eq(ops_force_kernel("sse9"), -1);
    ck_assert_int_eq(ops_force_kernel("portable"), 0);
    ck_assert_str_eq(ops_kernel_name(), "portable");
    ops_force_portable(0);
    ck_assert_str_ne(ops_kernel_name(), "");
    ck_assert_int_eq(ops_force_kernel(NULL), 0);
}
END_TEST

/* ---------------------------------------------------------------- elementwise */

static double silu_ref(double v) { return v / (1 + exp(-v)); }
static double gelu_ref(double v) { return 0.5 * v * (1 + tanh(0.7978845608028654 * (v + 0.044715 * v * v * v))); }

/* |got - want| within a few float ulps of want (or of tiny). */
static int close_rel(double got, double want, double rel) {
    return fabs(got - want) <= rel * fabs(want) + 1e-37;
}

START_TEST(activations_match_libm) {
    if (!use_kernel(_i)) return;
    enum { N = 1003 };     /* not a multiple of any vector width */
    uint32_t seed = 21;
    float x[N], g[N], u[N], y[N];
    for (int i = 0; i < N; i++) x[i] = uniform(&seed, -12, 12);
    /* Extremes: far beyond exp's range, zero, tiny. */
    float special[] = { -100.0f, 100.0f, -88.5f, 88.5f, 0.0f, 1e-30f, -1e-30f, -20.0f, 20.0f, -3.0f };
    memcpy(x, special, sizeof special);
    memcpy(y, x, sizeof x);
    silu(y, N);
    for (int i = 0; i < N; i++)
        ck_assert_msg(close_rel(y[i], silu_ref(x[i]), 4e-7), "%s silu(%g) = %.9g, want %.9g", KERNELS[_i], x[i], y[i], silu_ref(x[i]));
    memcpy(g, x, sizeof x);
    for (int i = 0; i < N; i++) u[i] = uniform(&seed, -3, 3);
    silu_mul(g, u, N);
    for (int i = 0; i < N; i++)
        ck_assert_msg(close_rel(g[i], silu_ref(x[i]) * u[i], 6e-7), "%s silu_mul at %g", KERNELS[_i], x[i]);
    memcpy(y, x, sizeof x);
    gelu_tanh(y, N);
    for (int i = 0; i < N; i++)
        ck_assert_msg(close_rel(y[i], gelu_ref(x[i]), 1e-6) || fabs(y[i] - gelu_ref(x[i])) < 3e-7,
                      "%s gelu_tanh(%g) = %.9g, want %.9g", KERNELS[_i], x[i], y[i], gelu_ref(x[i]));
    ops_force_kernel(NULL);
}
END_TEST

START_TEST(softmax_matches_reference) {
    if (!use_kernel(_i)) return;
    uint32_t seed = 2;
    int sizes[] = { 1, 7, 16, 100, 4099 };
    for (int s = 0; s < 5; s++) {
        int n = sizes[s];
        float *x = random_floats((size_t)n, &seed, -30, 30), *y = malloc(sizeof(float) * (size_t)n);
        if (n > 7) x[3] = -1000;        /* far below the others: exactly 0 after exp */
        memcpy(y, x, sizeof(float) * (size_t)n);
        softmax(y, n);
        double max = -INFINITY, sum = 0, total = 0;
        for (int i = 0; i < n; i++) if (x[i] > max) max = x[i];
        for (int i = 0; i < n; i++) sum += exp((double)x[i] - max);
        for (int i = 0; i < n; i++) {
            double want = exp((double)x[i] - max) / sum;
            ck_assert_msg(fabs(y[i] - want) <= 2e-6 * want + 1e-12, "%s n %d: p[%d] = %.9g, want %.9g",
                          KERNELS[_i], n, i, y[i], want);
            total += y[i];
        }
        ck_assert_msg(fabs(total - 1) < 1e-5, "%s n %d: sums to %.9g", KERNELS[_i], n, total);
        free(x);
        free(y);
    }
    ops_force_kernel(NULL);
}
END_TEST

/* ---------------------------------------------------------------- attention */

/* Query heads sharing one key/value head at 5 and 4096 cached tokens, for
 * head sizes 128 (the 2B model's), 64 and 20 (off the vector width). */
START_TEST(attention_groups_match_reference) {
    if (!use_kernel(_i)) return;
    uint32_t seed = 8;
    int dims[3] = { 128, 64, 20 }, lens[2] = { 5, 4096 }, groups[3] = { 1, 2, 3 };
    for (int di = 0; di < 3; di++)
        for (int li = 0; li < 2; li++)
            for (int gi = 0; gi < 3; gi++) {
                int dim = dims[di], n = lens[li], group = groups[gi], stride = dim + 4;
                float *q = random_floats((size_t)group * dim, &seed, -1, 1);
                float *k = random_floats((size_t)n * stride, &seed, -1, 1), *v = random_floats((size_t)n * stride, &seed, -1, 1);
                float *out = malloc(sizeof(float) * (size_t)group * dim), *scores = malloc(sizeof(float) * (size_t)group * n);
                float scale = 1.0f / sqrtf((float)dim) * 3;     /* sharper than usual */
                attend_group(out, q, group, k, v, QVL_F32, n, stride, dim, scale, scores);
                double *p = malloc(sizeof(double) * (size_t)n);
                for (int g = 0; g < group; g++) {
                    double max = -INFINITY, sum = 0;
                    for (int j = 0; j < n; j++) {
                        double s = 0;
                        for (int d = 0; d < dim; d++) s += (double)q[g * dim + d] * k[(size_t)j * stride + d];
                        p[j] = s * scale;
                        if (p[j] > max) max = p[j];
                    }
                    for (int j = 0; j < n; j++) { p[j] = exp(p[j] - max); sum += p[j]; }
                    for (int d = 0; d < dim; d++) {
                        double want = 0;
                        for (int j = 0; j < n; j++) want += p[j] / sum * v[(size_t)j * stride + d];
                        ck_assert_msg(fabs(out[g * dim + d] - want) < 2e-5, "%s dim %d n %d group %d: out[%d][%d] = %.7g, want %.7g",
                                      KERNELS[_i], dim, n, group, g, d, out[g * dim + d], want);
                    }
                }
                /* One head at a time (attend) gives the same bits as the group. */
                float *one = malloc(sizeof(float) * (size_t)dim);
                attend(one, q + (size_t)(group - 1) * dim, k, v, n, stride, dim, scale, scores);
                ck_assert_msg(!memcmp(one, out + (size_t)(group - 1) * dim, sizeof(float) * (size_t)dim),
                              "%s: attend and attend_group disagree", KERNELS[_i]);
                free(one); free(p); free(q); free(k); free(v); free(out); free(scores);
            }
    ops_force_kernel(NULL);
}
END_TEST

/* ---------------------------------------------------------------- the f16 KV cache */

static float bits_float(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static uint32_t float_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

/* qvl_f32_to_f16 itself, from the definition: every half converts back to
 * itself, a value halfway between two neighbouring halves goes to the one
 * with the even significand, and anything nearer one of them goes to it. */
START_TEST(f16_scalar_rounds_to_nearest_even) {
    for (uint32_t h = 0; h < 0x7c00; h++) {        /* the finite positive halves */
        for (uint32_t sign = 0; sign <= 0x8000; sign += 0x8000)
            ck_assert_msg(qvl_f32_to_f16(qvl_f16_to_f32((uint16_t)(h | sign))) == (h | sign), "half %04x", h | sign);
        float lo = qvl_f16_to_f32((uint16_t)h), hi = qvl_f16_to_f32((uint16_t)(h + 1));  /* h + 1: up to infinity */
        if (h + 1 == 0x7c00) hi = 65536.0f;         /* where the next half would be: overflow starts halfway */
        float mid = lo + (hi - lo) / 2;              /* exact: halves have 11 significant bits */
        uint32_t even = h & 1 ? h + 1 : h;
        ck_assert_msg(qvl_f32_to_f16(mid) == even, "halfway above %04x: %04x", h, qvl_f32_to_f16(mid));
        ck_assert_int_eq(qvl_f32_to_f16(nextafterf(mid, 0)), h);
        ck_assert_int_eq(qvl_f32_to_f16(nextafterf(mid, INFINITY)), h + 1);
        ck_assert_int_eq(qvl_f32_to_f16(-mid), even | 0x8000);
    }
    ck_assert_int_eq(qvl_f32_to_f16(INFINITY), 0x7c00);
    ck_assert_int_eq(qvl_f32_to_f16(-1e30f), 0xfc00);
    ck_assert_int_eq(qvl_f32_to_f16(1e-30f), 0);            /* far below the smallest half */
    ck_assert_int_eq(qvl_f32_to_f16(bits_float(1)), 0);     /* a float subnormal */
    /* NaN stays NaN, quiet, with the top of its payload (as vcvtps2ph). */
    ck_assert_int_eq(qvl_f32_to_f16(bits_float(0x7fc00000u)), 0x7e00);
    ck_assert_int_eq(qvl_f32_to_f16(bits_float(0xff812345u)), 0xfe00 | (0x012345u >> 13));
    ck_assert_int_eq(qvl_f32_to_f16(bits_float(0x7f800001u)), 0x7e00);
}
END_TEST

/* Every kernel table rounds to the same bits as qvl_f32_to_f16: the values
 * around every halfway point, the special values, and a sweep of bit patterns
 * (2^32 / 65521 of them, all exponents), in runs whose lengths leave partial
 * vectors. */
START_TEST(f16_rounding_matches_scalar) {
    if (!use_kernel(_i)) return;
    enum { N = 7 * 65536 + 65521 + 16 };
    float *x = malloc(sizeof(float) * N);
    uint16_t *h = malloc(sizeof(uint16_t) * N);
    size_t n = 0;
    for (uint32_t v = 0; v < 0x7c00; v++) {
        float lo = qvl_f16_to_f32((uint16_t)v), hi = v + 1 == 0x7c00 ? 65536.0f : qvl_f16_to_f32((uint16_t)(v + 1));
        float mid = lo + (hi - lo) / 2;
        x[n++] = lo;
        x[n++] = mid;
        x[n++] = nextafterf(mid, 0);
        x[n++] = nextafterf(mid, INFINITY);
        x[n++] = -mid;
        x[n++] = -nextafterf(mid, 0);
        x[n++] = -nextafterf(mid, INFINITY);
    }
    for (uint64_t u = 0; u < (1ull << 32); u += 65521) x[n++] = bits_float((uint32_t)u);
    static const uint32_t special[] = {
        0x7f800000u, 0xff800000u, 0x7fc00000u, 0xffc00001u, 0x7f800001u, 0x7fbfffffu, 0x00000001u,
        0x807fffffu, 0x00800000u, 0x33000000u, 0x33000001u, 0x477fe000u, 0x477fefffu, 0x477ff000u, 0x80000000u,
    };
    for (size_t i = 0; i < sizeof special / sizeof *special; i++) x[n++] = bits_float(special[i]);
    ck_assert(n <= N);
    size_t lens[] = { 1, 5, 8, 15, 16, 17, 31, 128, 1000 };
    for (size_t at = 0, k = 0; at < n; k++) {
        size_t len = lens[k % 9] < n - at ? lens[k % 9] : n - at;
        round_to_f16(h + at, x + at, (int)len);
        at += len;
    }
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(h[i] == qvl_f32_to_f16(x[i]), "%s: %08x -> %04x, scalar %04x", KERNELS[_i], float_bits(x[i]),
                      h[i], qvl_f32_to_f16(x[i]));
    free(x);
    free(h);
    ops_force_kernel(NULL);
}
END_TEST

/* Random keys and values, stride apart: as halves, and the same values as floats. */
typedef struct {
    uint16_t *h;
    float *f;
} kv_pair;

static kv_pair random_halves(size_t n, uint32_t *seed) {
    kv_pair p = { malloc(sizeof(uint16_t) * n), calloc(n, sizeof(float)) };
    for (size_t i = 0; i < n; i++) p.f[i] = uniform(seed, -2, 2);
    round_to_f16(p.h, p.f, (int)n);
    for (size_t i = 0; i < n; i++) p.f[i] = qvl_f16_to_f32(p.h[i]);
    return p;
}

/* Decoding attention over an f16 cache: within 2e-5 of a double-precision
 * reference computed from the halves' values, and bit for bit what the same
 * kernels give for floats holding those values (so an f16 cache is exactly
 * an f32 cache of rounded keys and values). */
START_TEST(attention_f16_matches_reference) {
    if (!use_kernel(_i)) return;
    uint32_t seed = 21;
    int dims[3] = { 128, 64, 20 }, lens[2] = { 5, 1000 }, groups[3] = { 1, 2, 3 };
    for (int di = 0; di < 3; di++)
        for (int li = 0; li < 2; li++)
            for (int gi = 0; gi < 3; gi++) {
                int dim = dims[di], n = lens[li], group = groups[gi], stride = dim + 8;
                float *q = random_floats((size_t)group * dim, &seed, -1, 1);
                kv_pair k = random_halves((size_t)n * stride, &seed), v = random_halves((size_t)n * stride, &seed);
                float *out = malloc(sizeof(float) * (size_t)group * dim), *ref = malloc(sizeof(float) * (size_t)group * dim);
                float *scores = malloc(sizeof(float) * (size_t)group * n);
                float scale = 3.0f / sqrtf((float)dim);
                attend_group(out, q, group, k.h, v.h, QVL_F16, n, stride, dim, scale, scores);
                attend_group(ref, q, group, k.f, v.f, QVL_F32, n, stride, dim, scale, scores);
                ck_assert_msg(!memcmp(out, ref, sizeof(float) * (size_t)group * dim),
                              "%s dim %d n %d group %d: f16 and f32 of the same values differ", KERNELS[_i], dim, n, group);
                double *p = malloc(sizeof(double) * (size_t)n);
                for (int g = 0; g < group; g++) {
                    double max = -INFINITY, sum = 0;
                    for (int j = 0; j < n; j++) {
                        double s = 0;
                        for (int d = 0; d < dim; d++)
                            s += (double)q[g * dim + d] * qvl_f16_to_f32(k.h[(size_t)j * stride + d]);
                        p[j] = s * scale;
                        if (p[j] > max) max = p[j];
                    }
                    for (int j = 0; j < n; j++) { p[j] = exp(p[j] - max); sum += p[j]; }
                    for (int d = 0; d < dim; d++) {
                        double want = 0;
                        for (int j = 0; j < n; j++) want += p[j] / sum * qvl_f16_to_f32(v.h[(size_t)j * stride + d]);
                        ck_assert_msg(fabs(out[g * dim + d] - want) < 2e-5, "%s dim %d n %d group %d: out[%d][%d] = %.7g, want %.7g",
                                      KERNELS[_i], dim, n, group, g, d, out[g * dim + d], want);
                    }
                }
                free(p); free(q); free(k.h); free(k.f); free(v.h); free(v.f); free(out); free(ref); free(scores);
            }
    ops_force_kernel(NULL);
}
END_TEST

/* Prefill attention (many queries, causal after cached tokens, and full)
 * over f16 keys and values: bit for bit the float path on the same values,
 * for more queries than one block and head sizes on and off the vector
 * width; and within 1e-5 of one query at a time. */
START_TEST(attention_block_f16_equals_f32) {
    if (!use_kernel(_i)) return;
    uint32_t seed = 22;
    int dims[2] = { 128, 20 };
    for (int di = 0; di < 2; di++) {
        int dim = dims[di], nq = ATTEND_QBLOCK + 37, nk = nq + 29, ld = dim + 24;
        float *q = random_floats((size_t)nq * ld, &seed, -1, 1);
        kv_pair k = random_halves((size_t)nk * ld, &seed), v = random_halves((size_t)nk * ld, &seed);
        float *out = malloc(sizeof(float) * (size_t)nq * ld), *ref = malloc(sizeof(float) * (size_t)nq * ld);
        float *scores = malloc(sizeof(float) * (size_t)nk), one[128];
        attend_scratch ws = { 0 };
        float scale = 1.0f / sqrtf((float)dim);
        for (int causal = 0; causal < 2; causal++) {
            int past = causal ? nk - nq : -1;
            memset(out, 0, sizeof(float) * (size_t)nq * ld);
            memset(ref, 0, sizeof(float) * (size_t)nq * ld);
            attend_block(out, ld, q, ld, k.h, v.h, QVL_F16, ld, nq, nk, dim, scale, past, &ws);
            attend_block(ref, ld, q, ld, k.f, v.f, QVL_F32, ld, nq, nk, dim, scale, past, &ws);
            ck_assert_msg(!memcmp(out, ref, sizeof(float) * (size_t)nq * ld), "%s dim %d causal %d: f16 and f32 differ",
                          KERNELS[_i], dim, causal);
            for (int i = 0; i < nq; i += 13) {
                attend_group(one, q + (size_t)i * ld, 1, k.h, v.h, QVL_F16, causal ? past + i + 1 : nk, ld, dim, scale,
                             scores);
                for (int d = 0; d < dim; d++)
                    ck_assert_msg(fabsf(out[(size_t)i * ld + d] - one[d]) < 1e-5, "%s dim %d causal %d query %d: %g vs %g",
                                  KERNELS[_i], dim, causal, i, out[(size_t)i * ld + d], one[d]);
            }
        }
        free(q); free(k.h); free(k.f); free(v.h); free(v.f); free(out); free(ref); free(scores);
        attend_scratch_free(&ws);
    }
    ops_force_kernel(NULL);
}
END_TEST

/* ---------------------------------------------------------------- pool */

typedef struct {
    int *hits;
    int nested;
} count_job;

static void count_items(void *arg, int begin, int end) {
    count_job *j = arg;
    for (int i = begin; i < end; i++) __atomic_fetch_add(&j->hits[i], 1, __ATOMIC_RELAXED);
    if (j->nested) {               /* runs inline on this thread */
        count_job inner = { j->hits, 0 };
        parallel_for(0, count_items, &inner);
    }
}

START_TEST(pool_runs_every_item_once) {
    int counts[4] = { 1, 2, 3, 5 }, sizes[5] = { 1, 2, 3, 17, 1000 };
    for (int c = 0; c < 4; c++) {
        ck_assert_int_eq(pool_set_threads(counts[c]), counts[c]);
        ck_assert_int_eq(pool_threads(), counts[c]);
        for (int s = 0; s < 5; s++) {
            int n = sizes[s];
            int *hits = calloc((size_t)n, sizeof(int));
            count_job j = { hits, 1 };
            parallel_for(n, count_items, &j);
            for (int i = 0; i < n; i++)
                ck_assert_msg(hits[i] == 1, "%d threads, %d items: item %d ran %d times", counts[c], n, i, hits[i]);
            free(hits);
        }
    }
    pool_set_threads(0);
}
END_TEST

/* parallel_for_dynamic: every item once, in claims of at most `chunk`. */
typedef struct {
    int *hits;
    int chunk, longest;
} chunk_job;

static void count_chunk(void *arg, int begin, int end) {
    chunk_job *j = arg;
    for (int i = begin; i < end; i++) __atomic_fetch_add(&j->hits[i], 1, __ATOMIC_RELAXED);
    int len = end - begin, seen = __atomic_load_n(&j->longest, __ATOMIC_RELAXED);
    while (len > seen && !__atomic_compare_exchange_n(&j->longest, &seen, len, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {}
}

START_TEST(dynamic_pool_runs_every_item_once) {
    int counts[4] = { 1, 2, 3, 5 }, sizes[6] = { 1, 2, 3, 17, 1000, 100000 }, chunks[3] = { 1, 3, 64 };
    for (int c = 0; c < 4; c++) {
        ck_assert_int_eq(pool_set_threads(counts[c]), counts[c]);
        for (int s = 0; s < 6; s++)
            for (int k = 0; k < 3; k++) {
                int n = sizes[s];
                chunk_job j = { calloc((size_t)n, sizeof(int)), chunks[k], 0 };
                parallel_for_dynamic(n, chunks[k], count_chunk, &j);
                for (int i = 0; i < n; i++)
                    ck_assert_msg(j.hits[i] == 1, "%d threads, %d items, chunk %d: item %d ran %d times", counts[c], n,
                                  chunks[k], i, j.hits[i]);
                /* one thread, or no more items than a chunk: a single call */
                int whole = counts[c] == 1 || n <= chunks[k];
                ck_assert_int_eq(j.longest, whole ? n : chunks[k] < n ? chunks[k] : n);
                free(j.hits);
            }
    }
    pool_set_threads(0);
}
END_TEST

/* The thread that finishes first takes items from the back of a slow
 * thread's range.  The slow item (the caller's first) lasts until another
 * thread has run one of the items after it, or 10 s (then the check below
 * fails): a fixed sleep failed on a busy machine, where the other thread
 * was not scheduled in time. */
typedef struct {
    pthread_t who[64];
    pthread_t caller;
    atomic_int taken;                    /* another thread ran one of items 1..31 */
} owner_job;

static void note_owner(void *arg, int begin, int end) {
    owner_job *j = arg;
    if (begin == 0)
        for (double until = qvl_now() + test_seconds(10); !atomic_load(&j->taken) && qvl_now() < until;)
            usleep(1000);
    for (int i = begin; i < end; i++) {
        j->who[i] = pthread_self();
        if (i > 0 && i < 32 && !pthread_equal(pthread_self(), j->caller)) atomic_store(&j->taken, 1);
    }
}

START_TEST(dynamic_pool_moves_work_off_a_slow_thread) {
    ck_assert_int_eq(pool_set_threads(2), 2);
    owner_job j = { .caller = pthread_self() };
    atomic_init(&j.taken, 0);
    parallel_for_dynamic(64, 1, note_owner, &j);
    int moved = 0;                       /* items 0..31 are the first thread's range */
    for (int i = 1; i < 32; i++) moved += !pthread_equal(j.who[i], j.who[0]);
    ck_assert_msg(moved > 0, "the other thread took none of the slow thread's items");
    pool_set_threads(0);
}
END_TEST

static void add_range(void *arg, int begin, int end) {
    long *sums = arg;
    for (int i = begin; i < end; i++) __atomic_fetch_add(&sums[i], (long)i, __ATOMIC_RELAXED);
}

/* Back-to-back loops (the spinning hand-off), then loops after the workers
 * have gone to sleep, then a restart of the pool. */
START_TEST(pool_survives_many_handoffs) {
    ck_assert_int_eq(pool_set_threads(2), 2);
    long sums[8] = { 0 };
    for (int r = 0; r < 5000; r++) parallel_for(8, add_range, sums);
    for (int i = 0; i < 8; i++) ck_assert_int_eq(sums[i], 5000L * i);
    for (int r = 0; r < 3; r++) {
        struct timespec ts = { 0, 30 * 1000 * 1000 };    /* long enough for the workers to sleep */
        nanosleep(&ts, NULL);
        parallel_for(8, add_range, sums);
    }
    for (int i = 0; i < 8; i++) ck_assert_int_eq(sums[i], 5003L * i);
    pool_shutdown();
    parallel_for(8, add_range, sums);      /* a fresh default pool */
    for (int i = 0; i < 8; i++) ck_assert_int_eq(sums[i], 5004L * i);
    pool_set_threads(0);
}
END_TEST

int main(void) {
    Suite *s = suite_create("ops");
    TCase *k = tcase_create("kernels");
    tcase_set_timeout(k, 60);
    tcase_add_loop_test(k, matmul_matches_reference, 0, NKERNELS);
    tcase_add_loop_test(k, batch_equals_separate_products, 0, NKERNELS);
    tcase_add_loop_test(k, threads_give_identical_bits, 0, NKERNELS);
    tcase_add_test(k, gemm_rows_are_independent);
    tcase_add_test(k, unknown_kernel_is_refused);
    tcase_add_test(k, bf16_matmul_matches_rounded_reference);
    tcase_add_test(k, bf16_attention_is_close_to_float);
    tcase_add_test(k, bf16_softmax_numerators_are_packed);
    tcase_add_loop_test(k, activations_match_libm, 0, NKERNELS);
    tcase_add_loop_test(k, softmax_matches_reference, 0, NKERNELS);
    tcase_add_loop_test(k, attention_groups_match_reference, 0, NKERNELS);
    tcase_add_test(k, f16_scalar_rounds_to_nearest_even);
    tcase_add_loop_test(k, f16_rounding_matches_scalar, 0, NKERNELS);
    tcase_add_loop_test(k, attention_f16_matches_reference, 0, NKERNELS);
    tcase_add_loop_test(k, attention_block_f16_equals_f32, 0, NKERNELS);
    suite_add_tcase(s, k);
    TCase *p = tcase_create("pool");
    tcase_set_timeout(p, 60);
    tcase_add_test(p, pool_runs_every_item_once);
    tcase_add_test(p, pool_survives_many_handoffs);
    tcase_add_test(p, dynamic_pool_runs_every_item_once);
    tcase_add_test(p, dynamic_pool_moves_work_off_a_slow_thread);
    suite_add_tcase(s, p);
    int rc = run_suite(s);
    pool_shutdown();
    return rc;
}
