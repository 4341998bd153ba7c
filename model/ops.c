/* ops.c - matmul over stored-dtype weights, norms, activations, attention.
 *
 * matmul has two paths.  Decoding multiplies one row by every weight matrix, a
 * pass bound by memory bandwidth: there a dot-product kernel reads the weight
 * in its stored dtype (bf16/f16/f32) and widens it in registers, so the bytes
 * read are the bytes stored, each thread streaming its own contiguous share
 * of the rows.  Prefill and the vision encoder multiply many rows: there the
 * work is compute bound.  With AVX-512 the kernels' own register-blocked
 * product runs it (x packed once per product, each tile of weights widened
 * and packed once and used for every row); elsewhere each tile is widened to
 * float in a per-thread buffer and handed to OpenBLAS sgemm, single-threaded,
 * while our pool runs the tiles.  Work is split by fixed tiles of outputs, so
 * each output is computed the same way whatever the thread count.
 * With ops_set_bf16_matmul on (--matmul bf16) and a CPU with AVX512_BF16,
 * products over bf16 weights, and attention over many queries, take a second
 * kernel instead: activations rounded to bf16 and multiplied in pairs by the
 * dot-product instruction, twice the multiplies per instruction at about
 * 1e-3 relative error; off by default, since it gives up the reference's
 * float numerics.
 * matmul_batch runs several products (q/k/v, gate/up, the routed experts) in
 * a single pass of the pool.  Attention over many queries uses the same
 * packed product (or sgemm) for its two products; an f16 KV cache's halves
 * are widened as its keys and values are packed (or before sgemm).
 *
 * The innermost loops live in kernel tables (kernels.h): AVX-512, AVX2 or
 * portable C, the best the CPU has picked at run time. */
#include "ops.h"

#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "kernels.h"
#include "threadpool.h"
#include "quant.h"

/* Outputs per work item of a matrix-matrix product: larger tiles repack the
 * activations (sgemm) less often, smaller ones spread small matrices over
 * more threads.  Fixed, so results never depend on the thread count. */
#define GEMM_TILE 128
#define VEC_UNIT 16       /* outputs per work item of a matrix-vector product */
#define XP_STACK 16384    /* prepared-x floats kept on the stack */
#define MAX_BATCH 32      /* products per pass of the pool */

void openblas_set_num_threads(int num_threads);   /* OpenBLAS extension */

/* ---------------------------------------------------------------- CPU dispatch */

static const ops_kernels *best, *forced;

static int bf16_matmul;     /* ops_set_bf16_matmul */

static const ops_kernels *kernels(void) {
    if (forced) return forced;
    if (!best) {
        const ops_kernels *k = kernels_avx512_bf16();   /* avx512's products, plus bf16 ones */
        if (!k) k = kernels_avx512();
        if (!k) k = kernels_avx2();
        if (!k) k = kernels_portable();
        best = k;
    }
    return best;
}

const char *ops_kernel_name(void) { return kernels()->name; }

int ops_force_kernel(const char *name) {
    if (!name) { forced = NULL; return 0; }
    const ops_kernels *k = !strcmp(name, "avx512bf16") ? kernels_avx512_bf16()
                         : !strcmp(name, "avx512") ? kernels_avx512()
                         : !strcmp(name, "avx2") ? kernels_avx2()
                         : !strcmp(name, "portable") ? kernels_portable() : NULL;
    if (!k) return -1;
    forced = k;
    return 0;
}

void ops_force_portable(int on) { ops_force_kernel(on ? "portable" : NULL); }

int ops_set_bf16_matmul(int on) {
    if (on && !kernels_avx512_bf16()) return -1;
    bf16_matmul = on;
    return 0;
}

int ops_bf16_matmul(void) { return bf16_matmul; }

int ops_bf16_matmul_supported(void) { return kernels_avx512_bf16() != NULL; }

const char *ops_openblas_coretype(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) return "SkylakeX";
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
#endif
    return NULL;
}

static pthread_once_t blas_once = PTHREAD_ONCE_INIT;
static void blas_single_threaded(void) { openblas_set_num_threads(1); }

static int is_float_dtype(qvl_dtype t) { return t == QVL_F32 || t == QVL_F16 || t == QVL_BF16; }

/* ---------------------------------------------------------------- products */

/* One product of a batch; work items ("units": VEC_UNIT outputs of a
 * matrix-vector product, GEMM_TILE of a matrix-matrix one) are numbered
 * across the batch in order. */
typedef struct {
    float *y;
    const float *x;          /* [n, in] */
    const float *xp;         /* n == 1, out-major: x prepared by the kernels */
    float *ap;               /* n > 1 with the kernels' gemm: x packed (pack_a) */
    const qvl_weight *w;
    int n, us, units, first;
    int bf16;                /* n > 1: the kernels' bf16 product (x packed as bf16 pairs) */
} part;

typedef struct {
    part parts[MAX_BATCH];
    int nparts;
    const ops_kernels *k;
} product_job;

/* Matrix-vector, outputs [o0, o1) of one weight. */
static void matvec_range(const ops_kernels *k, const part *p, int o0, int o1) {
    const qvl_weight *w = p->w;
    size_t es = qvl_dtype_size(w->dtype);
    if (w->in_major)
        k->axpy_rows(p->y + o0, p->x, (const char *)w->data + (size_t)o0 * es, w->dtype, w->ld, w->in, o1 - o0);
    else
        k->dot_rows(p->y + o0, (const char *)w->data + (size_t)o0 * (size_t)w->ld * es, w->dtype, w->ld,
                    o1 - o0, p->xp, w->in);
}

/* Matrix-matrix, one tile of outputs [o0, o0 + cnt) of one weight: widened
 * into buf (unless stored as float) and multiplied by every row of x. */
static void gemm_tile(const ops_kernels *k, const part *p, int o0, int cnt, float *buf) {
    const qvl_weight *w = p->w;
    int in = w->in, out = w->out;
    size_t es = qvl_dtype_size(w->dtype);
    const float *b;
    int ldb;
    if (!w->in_major) {
        if (w->dtype == QVL_F32) { b = (const float *)w->data + (size_t)o0 * (size_t)w->ld; ldb = (int)w->ld; }
        else {
            for (int o = 0; o < cnt; o++)
                k->widen(buf + (size_t)o * in, (const char *)w->data + (size_t)(o0 + o) * (size_t)w->ld * es,
                         w->dtype, in);
            b = buf; ldb = in;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, p->n, cnt, in,
                    1.0f, p->x, in, b, ldb, 0.0f, p->y + o0, out);
    } else {
        if (w->dtype == QVL_F32) { b = (const float *)w->data + o0; ldb = (int)w->ld; }
        else {
            for (int i = 0; i < in; i++)
                k->widen(buf + (size_t)i * cnt, (const char *)w->data + ((size_t)i * (size_t)w->ld + (size_t)o0) * es,
                         w->dtype, cnt);
            b = buf; ldb = cnt;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, p->n, cnt, in,
                    1.0f, p->x, in, b, ldb, 0.0f, p->y + o0, out);
    }
}

/* ---- the kernels' own matrix-matrix product (when the table has one)
 *
 * BLIS-style: x is packed once per product into groups of gemm_mr rows
 * (pack_a); each tile's weights are widened and packed into panels of gemm_nr
 * outputs (the table's pack_b); the register kernel then walks blocks of
 * GEMM_MC rows (kept in L2) by blocks of GEMM_KC inputs, panel by panel (kept
 * in L1).  Every output is one FMA chain over the inputs in order, so a row's
 * result depends neither on the thread count nor on how many rows are
 * multiplied together. */

#define GEMM_KC 256
#define GEMM_MC 192

static int padded_rows(const ops_kernels *k, int n) { return (n + k->gemm_mr - 1) / k->gemm_mr * k->gemm_mr; }

/* Row groups [g0, g1) of x [n, in] (rows lda apart) into ap: per block of
 * GEMM_KC inputs (at pc * padded rows), group g at g * mr * kcb, laid out
 * [k][mr], zero past n. */
static void pack_a(const ops_kernels *k, int bf16, float *ap, const float *x, int lda, int n, int in, int g0, int g1) {
    int mr = k->gemm_mr, mpad = (n + mr - 1) / mr * mr;
    for (int pc = 0; pc < in; pc += GEMM_KC) {
        int kcb = in - pc < GEMM_KC ? in - pc : GEMM_KC;
        for (int g = g0; g < g1; g++) {
            float *dst = ap + (size_t)pc * mpad + (size_t)g * mr * kcb;
            if (bf16) {      /* kcb/2 pairs of mr words: the first half of the float group's room */
                k->gemm_bf16_pack_a((uint32_t *)(void *)dst, x + (size_t)g * mr * lda + pc, lda,
                                    n - g * mr < mr ? n - g * mr : mr, kcb);
                continue;
            }
            if (k->gemm_pack_a) {
                k->gemm_pack_a(dst, x + (size_t)g * mr * lda + pc, lda, n - g * mr < mr ? n - g * mr : mr, kcb);
                continue;
            }
            for (int m = 0; m < mr; m++) {
                int row = g * mr + m;
                if (row < n) {
                    const float *src = x + (size_t)row * lda + pc;
                    for (int k = 0; k < kcb; k++) dst[(size_t)k * mr + m] = src[k];
                } else {
                    for (int k = 0; k < kcb; k++) dst[(size_t)k * mr + m] = 0.0f;
                }
            }
        }
    }
}

typedef struct {
    part *parts[MAX_BATCH];     /* the parts that own a packing */
    int groups[MAX_BATCH];      /* their row groups */
    int count, total;
    const ops_kernels *k;
} pack_job;

static void pack_units(void *arg, int begin, int end) {
    pack_job *j = arg;
    for (int i = 0, first = 0; i < j->count; first += j->groups[i], i++) {
        int lo = begin > first ? begin - first : 0, hi = end - first < j->groups[i] ? end - first : j->groups[i];
        if (lo < hi) pack_a(j->k, j->parts[i]->bf16, j->parts[i]->ap, j->parts[i]->x, j->parts[i]->w->in, j->parts[i]->n, j->parts[i]->w->in, lo, hi);
    }
}

/* The bf16 form of own_gemm_tile: panels of weight pairs as stored (no
 * widening; panel q at q*nr*in/2 words, input block pc at pc/2*nr), x packed
 * as bf16 pairs. */
static void own_gemm_tile_bf16(const ops_kernels *k, const part *p, int o0, int cnt, uint32_t *bt) {
    const qvl_weight *w = p->w;
    int in = w->in, out = w->out, n = p->n, mr = k->gemm_mr, nr = k->gemm_nr;
    int mpad = padded_rows(k, n), panels = (cnt + nr - 1) / nr;
    const uint16_t *data = w->data;
    for (int q = 0; q < panels; q++) {
        int o = o0 + q * nr, c = cnt - q * nr < nr ? cnt - q * nr : nr;
        for (int pc = 0; pc < in; pc += GEMM_KC) {
            int kcb = in - pc < GEMM_KC ? in - pc : GEMM_KC;
            size_t at = w->in_major ? (size_t)pc * (size_t)w->ld + (size_t)o : (size_t)o * (size_t)w->ld + (size_t)pc;
            k->gemm_bf16_pack_b(bt + (size_t)q * nr * (in / 2) + (size_t)pc / 2 * nr, data + at, w->ld, w->in_major, c, kcb);
        }
    }
    const uint32_t *ap = (const uint32_t *)(const void *)p->ap;
    for (int ic = 0; ic < mpad; ic += GEMM_MC) {
        int iend = ic + GEMM_MC < mpad ? ic + GEMM_MC : mpad;
        for (int pc = 0; pc < in; pc += GEMM_KC) {
            int kcb = in - pc < GEMM_KC ? in - pc : GEMM_KC;
            const uint32_t *ablock = ap + (size_t)pc * mpad;
            for (int q = 0; q < panels; q++) {
                int c = cnt - q * nr < nr ? cnt - q * nr : nr;
                for (int ir = ic; ir < iend; ir += mr)
                    k->gemm_bf16_kernel(kcb, ablock + (size_t)ir * kcb, bt + (size_t)q * nr * (in / 2) + (size_t)pc / 2 * nr,
                                        p->y + (size_t)ir * out + o0 + q * nr, out, pc > 0, n - ir < mr ? n - ir : mr, c);
            }
        }
    }
}

/* One tile of outputs [o0, o0 + cnt) over every row.  The tile's weights are
 * widened and packed first (bt: GEMM_TILE * in floats, panel q at q*nr*in,
 * input block pc at pc*nr within it); then each block of GEMM_MC rows walks
 * every input block, so its outputs stay in L2 until they are done. */
static void own_gemm_tile(const ops_kernels *k, const part *p, int o0, int cnt, float *bt) {
    if (p->bf16) { own_gemm_tile_bf16(k, p, o0, cnt, (uint32_t *)(void *)bt); return; }
    const qvl_weight *w = p->w;
    int in = w->in, out = w->out, n = p->n, mr = k->gemm_mr, nr = k->gemm_nr;
    int mpad = padded_rows(k, n), panels = (cnt + nr - 1) / nr;
    size_t es = qvl_dtype_size(w->dtype);
    for (int q = 0; q < panels; q++) {
        int o = o0 + q * nr, c = cnt - q * nr < nr ? cnt - q * nr : nr;
        for (int pc = 0; pc < in; pc += GEMM_KC) {
            int kcb = in - pc < GEMM_KC ? in - pc : GEMM_KC;
            size_t at = w->in_major ? (size_t)pc * (size_t)w->ld + (size_t)o : (size_t)o * (size_t)w->ld + (size_t)pc;
            k->gemm_pack_b(bt + (size_t)q * nr * in + (size_t)pc * nr, (const char *)w->data + at * es, w->dtype,
                           w->ld, w->in_major, c, kcb);
        }
    }
    for (int ic = 0; ic < mpad; ic += GEMM_MC) {
        int iend = ic + GEMM_MC < mpad ? ic + GEMM_MC : mpad;
        for (int pc = 0; pc < in; pc += GEMM_KC) {
            int kcb = in - pc < GEMM_KC ? in - pc : GEMM_KC;
            const float *ablock = p->ap + (size_t)pc * mpad;
            for (int q = 0; q < panels; q++) {
                int c = cnt - q * nr < nr ? cnt - q * nr : nr;
                for (int ir = ic; ir < iend; ir += mr)
                    k->gemm_kernel(kcb, ablock + (size_t)ir * kcb, bt + (size_t)q * nr * in + (size_t)pc * nr,
                                   p->y + (size_t)ir * out + o0 + q * nr, out, pc > 0, n - ir < mr ? n - ir : mr, c);
            }
        }
    }
}

static void product_units(void *arg, int begin, int end) {
    product_job *j = arg;
    float *buf = NULL;
    size_t cap = 0;
    for (int pi = 0; pi < j->nparts; pi++) {
        const part *p = &j->parts[pi];
        int lo = begin > p->first ? begin - p->first : 0;
        int hi = end - p->first < p->units ? end - p->first : p->units;
        if (lo >= hi) continue;
        int out = p->w->out, us = p->us;
        if (p->n == 1) {      /* one call over the whole range keeps the rows streaming */
            matvec_range(j->k, p, lo * us, hi * us < out ? hi * us : out);
            continue;
        }
        size_t need = j->k->gemm_mr ? (size_t)us * (size_t)p->w->in
                    : p->w->dtype == QVL_F32 ? 0 : (size_t)us * (size_t)p->w->in;
        if (need > cap) {
            free(buf);
            buf = malloc(need * sizeof(float));
            if (!buf) abort();           /* a few MB; nothing sane to do */
            cap = need;
        }
        for (int u = lo; u < hi; u++) {
            int cnt = out - u * us < us ? out - u * us : us;
            if (j->k->gemm_mr) own_gemm_tile(j->k, p, u * us, cnt, buf);
            else gemm_tile(j->k, p, u * us, cnt, buf);
        }
    }
    free(buf);
}

/* Up to MAX_BATCH products of float-stored weights in one parallel_for. */
static void run_batch(const qvl_product *ps, int count) {
    product_job j = { .nparts = 0, .k = kernels() };
    int total = 0, gemm = 0, in_major = 0;
    size_t prep = 0;
    for (int i = 0; i < count; i++) {
        const qvl_product *q = &ps[i];
        const qvl_weight *w = q->w;
        if (q->n <= 0 || w->out <= 0) continue;
        if (w->in <= 0) { memset(q->y, 0, (size_t)q->n * (size_t)w->out * sizeof(float)); continue; }
        part *p = &j.parts[j.nparts++];
        *p = (part){ q->y, q->x, NULL, NULL, w, q->n, q->n == 1 ? VEC_UNIT : GEMM_TILE, 0, total, 0 };
        p->units = (w->out + p->us - 1) / p->us;
        /* the bf16 product takes its inputs in pairs */
        p->bf16 = bf16_matmul && q->n > 1 && j.k->gemm_bf16_kernel && w->dtype == QVL_BF16 && w->in % 2 == 0;
        total += p->units;
        gemm |= q->n > 1;
        in_major |= w->in_major;
        if (q->n == 1 && !w->in_major) prep += j.k->prep_size(w->in);
    }
    if (!total) return;
    /* Matrix-vector products read x in the kernels' layout, prepared once per
     * distinct (x, dtype, size): q/k/v and gate/up share theirs. */
    float stack[XP_STACK], *heap = NULL, *xp = stack;
    if (prep > XP_STACK && !(xp = heap = malloc(prep * sizeof(float)))) abort();
    for (int i = 0; i < j.nparts; i++) {
        part *p = &j.parts[i];
        if (p->n != 1 || p->w->in_major) continue;
        for (int e = 0; e < i && !p->xp; e++) {
            const part *o = &j.parts[e];
            if (o->xp && o->x == p->x && o->w->dtype == p->w->dtype && o->w->in == p->w->in) p->xp = o->xp;
        }
        if (p->xp) continue;
        j.k->prep_x(xp, p->x, p->w->in, p->w->dtype);
        p->xp = xp;
        xp += j.k->prep_size(p->w->in);
    }
    float *packed = NULL;
    if (gemm && j.k->gemm_mr) {
        /* x packed once per distinct input (q/k/v share it), in parallel:
         * owner[i] is the first part with part i's input. */
        pack_job pj = { .count = 0, .total = 0, .k = j.k };
        int owner[MAX_BATCH];
        size_t size = 0;
        for (int i = 0; i < j.nparts; i++) {
            const part *p = &j.parts[i];
            owner[i] = i;
            if (p->n == 1) continue;
            for (int e = 0; e < i && owner[i] == i; e++) {
                const part *o = &j.parts[e];
                if (o->n > 1 && o->x == p->x && o->n == p->n && o->w->in == p->w->in && o->bf16 == p->bf16) owner[i] = e;
            }
            if (owner[i] == i) size += (size_t)padded_rows(j.k, p->n) * (size_t)p->w->in;
        }
        if (size && !(packed = malloc(size * sizeof(float)))) abort();
        float *at = packed;
        for (int i = 0; i < j.nparts; i++) {
            part *p = &j.parts[i];
            if (p->n == 1) continue;
            if (owner[i] != i) { p->ap = j.parts[owner[i]].ap; continue; }
            p->ap = at;
            at += (size_t)padded_rows(j.k, p->n) * (size_t)p->w->in;
            pj.parts[pj.count] = p;
            pj.groups[pj.count++] = padded_rows(j.k, p->n) / j.k->gemm_mr;
        }
        for (int i = 0; i < pj.count; i++) pj.total += pj.groups[i];
        parallel_for(pj.total, pack_units, &pj);
    } else if (gemm) {
        pthread_once(&blas_once, blas_single_threaded);   /* before any worker calls sgemm */
    }
    if (!gemm && !in_major) {
        /* Decoding: the threads claim about 64 KB of weights at a time and
         * take what is left in each other's ranges, as the quantized row
         * kernels do; each output is still one dot_row, whichever thread.
         * On the 2B shape (bf16, 2 threads, 64 tokens, 6 pairs of runs
         * alternating with the static split): 8.97-11.08 against 8.06-9.93
         * tok/s, every pair ahead, by 6-19%.  (In-major weights keep the
         * static ranges: axpy_rows wants wide blocks of outputs.) */
        size_t unit_bytes = 0;
        for (int i = 0; i < j.nparts; i++) {
            size_t b = (size_t)j.parts[i].us * (size_t)j.parts[i].w->in * qvl_dtype_size(j.parts[i].w->dtype);
            if (b > unit_bytes) unit_bytes = b;
        }
        int chunk = unit_bytes >= 65536 ? 1 : (int)(65536 / (unit_bytes ? unit_bytes : 1));
        parallel_for_dynamic(total, chunk, product_units, &j);
    } else {
        parallel_for(total, product_units, &j);
    }
    free(packed);
    free(heap);
}

void matmul(float *y, const float *x, const qvl_weight *w, int n) {
    if (w->dtype == QVL_Q8 || w->dtype == QVL_Q4) { quant_matmul(y, x, w, n); return; }
    if (n <= 0 || w->out <= 0) return;
    qvl_product p = { y, x, w, n };
    run_batch(&p, 1);
}

void matmul_batch(const qvl_product *ps, int count) {
    while (count > 0) {
        int take = 0;
        while (take < count && take < MAX_BATCH && is_float_dtype(ps[take].w->dtype)) take++;
        if (!take) {              /* a run of quantized weights goes to quant.c */
            for (take = 1; take < count && quant_is_quantized(ps[take].w->dtype);) take++;
            quant_matmul_batch(ps, take);
        } else {
            run_batch(ps, take);
        }
        ps += take;
        count -= take;
    }
}

/* ---------------------------------------------------------------- elementwise */

/* Large elementwise operations run in fixed chunks over the pool; every
 * element is computed the same way whichever thread has its chunk. */
#define ELEM_CHUNK 16384

enum { OP_ADD, OP_SILU, OP_SILU_MUL, OP_GELU_TANH, OP_GELU_ERF };

typedef struct {
    int op;
    float *y;
    const float *x;
    size_t n;
    const ops_kernels *k;
} elem_job;

static void gelu_erf_range(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.7071067811865476f));
}

static void elem_chunks(void *arg, int begin, int end) {
    elem_job *j = arg;
    size_t lo = (size_t)begin * ELEM_CHUNK, hi = (size_t)end * ELEM_CHUNK < j->n ? (size_t)end * ELEM_CHUNK : j->n;
    float *y = j->y + lo;
    const float *x = j->x ? j->x + lo : NULL;
    int cnt = (int)(hi - lo);
    switch (j->op) {
    case OP_ADD: j->k->add(y, x, cnt); break;
    case OP_SILU: j->k->silu(y, cnt); break;
    case OP_SILU_MUL: j->k->silu_mul(y, x, cnt); break;
    case OP_GELU_TANH: j->k->gelu_tanh(y, cnt); break;
    default: gelu_erf_range(y, hi - lo); break;
    }
}

static void elementwise(int op, float *y, const float *x, size_t n) {
    if (!n) return;
    elem_job j = { op, y, x, n, kernels() };
    parallel_for((int)((n + ELEM_CHUNK - 1) / ELEM_CHUNK), elem_chunks, &j);
}

typedef struct {
    float *y;
    const float *x, *w, *b;
    int dim;
    float eps;
    const ops_kernels *k;
} rows_job;

static void bias_rows(void *arg, int begin, int end) {
    rows_job *j = arg;
    for (int r = begin; r < end; r++) j->k->add(j->y + (size_t)r * j->dim, j->b, j->dim);
}

void add_bias(float *y, const float *b, int n, int cols) {
    rows_job j = { y, NULL, NULL, b, cols, 0, kernels() };
    if ((size_t)n * cols <= ELEM_CHUNK) bias_rows(&j, 0, n);
    else parallel_for(n, bias_rows, &j);
}

void add_inplace(float *y, const float *x, int n) { elementwise(OP_ADD, y, x, (size_t)n); }

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

static void rmsnorm_range(void *arg, int begin, int end) {
    rows_job *j = arg;
    for (int r = begin; r < end; r++)
        rmsnorm(j->y + (size_t)r * j->dim, j->x + (size_t)r * j->dim, j->w, j->dim, j->eps);
}

static void layernorm_range(void *arg, int begin, int end) {
    rows_job *j = arg;
    for (int r = begin; r < end; r++)
        layernorm(j->y + (size_t)r * j->dim, j->x + (size_t)r * j->dim, j->w, j->b, j->dim, j->eps);
}

void rmsnorm_rows(float *y, const float *x, const float *w, int rows, int dim, float eps) {
    rows_job j = { y, x, w, NULL, dim, eps, NULL };
    parallel_for(rows, rmsnorm_range, &j);
}

void layernorm_rows(float *y, const float *x, const float *w, const float *b, int rows, int dim, float eps) {
    rows_job j = { y, x, w, b, dim, eps, NULL };
    parallel_for(rows, layernorm_range, &j);
}

/* softmax(scale * x), scale > 0 */
static void softmax_scaled(const ops_kernels *k, float *x, int n, float scale) {
    if (n <= 0) return;
    float sum = k->exp_sum(x, n, k->max(x, n), scale);
    k->scale(x, n, 1.0f / sum);
}

static void softmax_with(const ops_kernels *k, float *x, int n) { softmax_scaled(k, x, n, 1.0f); }

void softmax(float *x, int n) { softmax_with(kernels(), x, n); }

void silu(float *x, int n) { elementwise(OP_SILU, x, NULL, (size_t)n); }
void silu_mul(float *g, const float *u, int n) { elementwise(OP_SILU_MUL, g, u, (size_t)n); }
void gelu_tanh(float *x, int n) { elementwise(OP_GELU_TANH, x, NULL, (size_t)n); }
void gelu_erf(float *x, int n) { elementwise(OP_GELU_ERF, x, NULL, (size_t)n); }

void rope_rotate_half(float *x, const float *cos, const float *sin, int dim) {
    int half = dim / 2;
    for (int i = 0; i < half; i++) {
        float a = x[i], b = x[i + half];
        x[i] = a * cos[i] - b * sin[i];
        x[i + half] = b * cos[i + half] + a * sin[i + half];
    }
}

/* ---------------------------------------------------------------- attention */

void attend_group(float *out, const float *q, int group, const void *k, const void *v, qvl_dtype kv, int n,
                  int stride, int dim, float scale, float *scores) {
    const ops_kernels *kt = kernels();
    kt->attn_scores(scores, n, q, group, k, kv, n, stride, dim, scale);
    for (int g = 0; g < group; g++) softmax_with(kt, scores + (size_t)g * n, n);
    kt->attn_values(out, scores, n, group, v, kv, n, stride, dim);
}

void attend(float *out, const float *q, const float *k, const float *v, int n, int stride,
            int dim, float scale, float *scores) {
    attend_group(out, q, 1, k, v, QVL_F32, n, stride, dim, scale, scores);
}

void round_to_f16(uint16_t *dst, const float *src, int n) { kernels()->narrow_f16(dst, src, n); }

/* ---- attention over a block of queries
 *
 * With the kernels' own matrix-matrix product, one call packs the head's keys
 * (as the B of Q.K^T) and values (as the B of P.V) once and walks the queries
 * ATTEND_QBLOCK at a time: scores for the keys the block can see, softmax,
 * then the weighted values.  Without it, two sgemm per block. */

/* Slot `slot` of the scratch, at least `bytes` long (its contents are not
 * kept when it grows).  A thread's calls over a layer's heads reuse the same
 * memory: allocating it per call cost a tenth of a picture's attention in page
 * faults. */
enum { WS_KP, WS_VP, WS_AP, WS_SCORES, WS_K16, WS_V16 };
static void *scratch(attend_scratch *ws, int slot, size_t bytes) {
    if (ws->bytes[slot] < bytes) {
        free(ws->buf[slot]);
        ws->buf[slot] = malloc(bytes);
        if (!ws->buf[slot]) abort();       /* a few MB at most */
        ws->bytes[slot] = bytes;
    }
    return ws->buf[slot];
}

void attend_scratch_free(attend_scratch *ws) {
    for (size_t i = 0; i < sizeof ws->buf / sizeof ws->buf[0]; i++) free(ws->buf[i]);
    memset(ws, 0, sizeof *ws);
}

/* c[m, 0..n) = a[m, :kdim] . B (packed B: panels of nr columns, kdim deep in
 * blocks of GEMM_KC) for m < rows; a packed by pack_a. */
static void packed_product(const ops_kernels *k, float *c, int ldc, const float *ap, int rows, const float *bp,
                           int n, int kdim) {
    int mr = k->gemm_mr, nr = k->gemm_nr, mpad = padded_rows(k, rows);
    for (int pc = 0; pc < kdim; pc += GEMM_KC) {
        int kcb = kdim - pc < GEMM_KC ? kdim - pc : GEMM_KC;
        for (int q = 0; q * nr < n; q++) {
            const float *panel = bp + (size_t)q * nr * kdim + (size_t)pc * nr;
            int cnt = n - q * nr < nr ? n - q * nr : nr;
            for (int ir = 0; ir < mpad; ir += mr)
                k->gemm_kernel(kcb, ap + (size_t)pc * mpad + (size_t)ir * kcb, panel, c + (size_t)ir * ldc + q * nr, ldc,
                               pc > 0, rows - ir < mr ? rows - ir : mr, cnt);
        }
    }
}

/* B panels of a matrix of floats or halves (t): `n` columns by kdim, column
 * j of panel q at panel q, blocks of GEMM_KC deep (see packed_product).
 * Out-major: column j is row j of m (a key); in-major: row kk of m holds the
 * columns (a value row).  Halves are widened as they are packed. */
static void pack_panels(const ops_kernels *k, float *bp, const void *m, qvl_dtype t, int ld, int in_major, int n,
                        int kdim) {
    int nr = k->gemm_nr;
    size_t es = qvl_dtype_size(t);
    for (int q = 0; q * nr < n; q++) {
        int cnt = n - q * nr < nr ? n - q * nr : nr;
        for (int pc = 0; pc < kdim; pc += GEMM_KC) {
            int kcb = kdim - pc < GEMM_KC ? kdim - pc : GEMM_KC;
            size_t at = in_major ? (size_t)pc * ld + (size_t)q * nr : (size_t)q * nr * ld + pc;
            k->gemm_pack_b(bp + (size_t)q * nr * kdim + (size_t)pc * nr, (const char *)m + at * es, t, ld, in_major,
                           cnt, kcb);
        }
    }
}

/* Rows of scores: scale, softmax over the visible prefix, zeros after it (up
 * to `width` columns). */
static void softmax_rows(const ops_kernels *kt, float *scores, int ld, int nq, int nk, int width, float scale,
                         int causal_past) {
    for (int i = 0; i < nq; i++) {
        float *row = scores + (size_t)i * ld;
        int visible = causal_past < 0 ? nk : causal_past + i + 1;
        if (visible > nk) visible = nk;
        softmax_scaled(kt, row, visible, scale);
        if (width > visible) memset(row + visible, 0, (size_t)(width - visible) * sizeof(float));
    }
}

static void attend_packed(const ops_kernels *kt, float *out, int ldo, const float *q, int ldq, const void *k,
                          const void *v, qvl_dtype kv, int ldk, int nq, int nk, int dim, float scale, int causal_past,
                          attend_scratch *ws) {
    int nr = kt->gemm_nr, qb = nq < ATTEND_QBLOCK ? nq : ATTEND_QBLOCK;
    size_t kpad = (size_t)(nk + nr - 1) / nr * nr, dpad = (size_t)(dim + nr - 1) / nr * nr;
    size_t apad = (size_t)padded_rows(kt, qb);
    float *kp = scratch(ws, WS_KP, sizeof(float) * kpad * dim), *vp = scratch(ws, WS_VP, sizeof(float) * dpad * nk);
    float *ap = scratch(ws, WS_AP, sizeof(float) * apad * (dim > nk ? dim : nk));
    float *scores = scratch(ws, WS_SCORES, sizeof(float) * (size_t)qb * nk);
    pack_panels(kt, kp, k, kv, ldk, 0, nk, dim);
    pack_panels(kt, vp, v, kv, ldk, 1, dim, nk);
    for (int i0 = 0; i0 < nq; i0 += qb) {
        int rows = nq - i0 < qb ? nq - i0 : qb;
        /* The keys this block can see: all, or up to its last query's. */
        int seen = causal_past < 0 ? nk : causal_past + i0 + rows;
        if (seen > nk) seen = nk;
        pack_a(kt, 0, ap, q + (size_t)i0 * ldq, ldq, rows, dim, 0, padded_rows(kt, rows) / kt->gemm_mr);
        packed_product(kt, scores, seen, ap, rows, kp, seen, dim);
        softmax_rows(kt, scores, seen, rows, seen, seen, scale, causal_past < 0 ? -1 : causal_past + i0);
        pack_a(kt, 0, ap, scores, seen, rows, seen, 0, padded_rows(kt, rows) / kt->gemm_mr);
        /* V's panels are packed nk deep; the first `seen` rows of each are the visible keys. */
        for (int pc = 0; pc < seen; pc += GEMM_KC) {
            int kcb = seen - pc < GEMM_KC ? seen - pc : GEMM_KC, mr = kt->gemm_mr, mpad = padded_rows(kt, rows);
            for (int qd = 0; qd * nr < dim; qd++) {
                const float *panel = vp + (size_t)qd * nr * nk + (size_t)pc * nr;
                int cnt = dim - qd * nr < nr ? dim - qd * nr : nr;
                for (int ir = 0; ir < mpad; ir += mr)
                    kt->gemm_kernel(kcb, ap + (size_t)pc * mpad + (size_t)ir * kcb, panel,
                                    out + (size_t)(i0 + ir) * ldo + qd * nr, ldo, pc > 0, rows - ir < mr ? rows - ir : mr, cnt);
            }
        }
    }
}

/* Rows j < nke of keys (or values) of type kv, ldk apart, as bf16 rows of dim
 * (rows from nk on zero). */
static void narrow_rows_bf16(const ops_kernels *kt, uint16_t *dst, const void *m, qvl_dtype kv, int ldk, int nk, int nke,
                             int dim, float *row) {
    for (int j = 0; j < nke; j++) {
        uint16_t *d = dst + (size_t)j * dim;
        if (j >= nk) { memset(d, 0, sizeof(uint16_t) * (size_t)dim); continue; }
        const float *src = (const float *)m + (size_t)j * ldk;
        if (kv == QVL_F16) {
            kt->widen(row, (const uint16_t *)m + (size_t)j * ldk, QVL_F16, dim);
            src = row;
        }
        kt->narrow_bf16(d, src, dim);
    }
}

/* attend_packed under ops_set_bf16_matmul: queries, keys, scores and values
 * rounded to bf16 for the two products, which then run on the bf16 kernel.
 * The pairs want an even key count: an odd one gets a zero key, which like
 * the keys past a query's causal limit gets a zero weight (the softmax's
 * numerators are packed only up to the visible keys). */
static void attend_packed_bf16(const ops_kernels *kt, float *out, int ldo, const float *q, int ldq, const void *k,
                               const void *v, qvl_dtype kv, int ldk, int nq, int nk, int dim, float scale,
                               int causal_past, attend_scratch *ws) {
    int nr = kt->gemm_nr, mr = kt->gemm_mr, qb = nq < ATTEND_QBLOCK ? nq : ATTEND_QBLOCK;
    int nke = nk + (nk & 1);
    size_t kpad = (size_t)(nk + nr - 1) / nr * nr, dpad = (size_t)(dim + nr - 1) / nr * nr;
    size_t apad = (size_t)padded_rows(kt, qb), widest = (size_t)(dim > nke ? dim : nke);
    uint16_t *kb = scratch(ws, WS_K16, sizeof(uint16_t) * (size_t)nke * dim);
    uint16_t *vb = scratch(ws, WS_V16, sizeof(uint16_t) * (size_t)nke * dim);
    uint32_t *kp = scratch(ws, WS_KP, sizeof(uint32_t) * kpad * dim / 2);
    uint32_t *vp = scratch(ws, WS_VP, sizeof(uint32_t) * dpad * nke / 2);
    float *ap = scratch(ws, WS_AP, sizeof(float) * apad * widest);
    float *sc = scratch(ws, WS_SCORES, sizeof(float) * ((size_t)qb * nke > (size_t)dim ? (size_t)qb * nke : (size_t)dim));
    narrow_rows_bf16(kt, kb, k, kv, ldk, nk, nke, dim, sc);      /* sc: a row's widened halves, until the scores */
    narrow_rows_bf16(kt, vb, v, kv, ldk, nk, nke, dim, sc);
    /* K^T: panels of nr keys, dim deep; V: panels of nr dims, nke deep */
    for (int c0 = 0; c0 < nk; c0 += nr)
        for (int pc = 0; pc < dim; pc += GEMM_KC)
            kt->gemm_bf16_pack_b(kp + (size_t)c0 * (dim / 2) + (size_t)pc / 2 * nr, kb + (size_t)c0 * dim + pc, dim, 0,
                                 nk - c0 < nr ? nk - c0 : nr, dim - pc < GEMM_KC ? dim - pc : GEMM_KC);
    for (int c0 = 0; c0 < dim; c0 += nr)
        for (int pc = 0; pc < nke; pc += GEMM_KC)
            kt->gemm_bf16_pack_b(vp + (size_t)c0 * (nke / 2) + (size_t)pc / 2 * nr, vb + (size_t)pc * dim + c0, dim, 1,
                                 dim - c0 < nr ? dim - c0 : nr, nke - pc < GEMM_KC ? nke - pc : GEMM_KC);
    const uint32_t *aw = (const uint32_t *)(const void *)ap;
    for (int i0 = 0; i0 < nq; i0 += qb) {
        int rows = nq - i0 < qb ? nq - i0 : qb, mpad = padded_rows(kt, rows), groups = mpad / mr;
        int seen = causal_past < 0 ? nk : causal_past + i0 + rows;
        if (seen > nk) seen = nk;
        int seen_e = seen + (seen & 1);
        pack_a(kt, 1, ap, q + (size_t)i0 * ldq, ldq, rows, dim, 0, groups);
        for (int pc = 0; pc < dim; pc += GEMM_KC) {
            int kcb = dim - pc < GEMM_KC ? dim - pc : GEMM_KC;
            for (int c0 = 0; c0 < seen; c0 += nr)
                for (int ir = 0; ir < mpad; ir += mr)
                    kt->gemm_bf16_kernel(kcb, aw + (size_t)pc * mpad + (size_t)ir * kcb,
                                         kp + (size_t)c0 * (dim / 2) + (size_t)pc / 2 * nr, sc + (size_t)ir * seen_e + c0,
                                         seen_e, pc > 0, rows - ir < mr ? rows - ir : mr, seen - c0 < nr ? seen - c0 : nr);
        }
        /* The softmax's numerators go straight into P's packing; the rows are
         * divided by their sums once P.V is done. */
        float shift[ATTEND_QBLOCK], sums[ATTEND_QBLOCK];
        int visible[ATTEND_QBLOCK];
        for (int i = 0; i < rows; i++) {
            visible[i] = causal_past < 0 ? seen : causal_past + i0 + i + 1;
            if (visible[i] > seen) visible[i] = seen;
            shift[i] = kt->max(sc + (size_t)i * seen_e, visible[i]);
            sums[i] = 0;
        }
        for (int pc = 0; pc < seen_e; pc += GEMM_KC) {
            int kcb = seen_e - pc < GEMM_KC ? seen_e - pc : GEMM_KC;
            for (int g = 0; g < groups; g++)
                kt->gemm_bf16_pack_exp((uint32_t *)(void *)(ap + (size_t)pc * mpad + (size_t)g * mr * kcb),
                                       sc + (size_t)g * mr * seen_e + pc, seen_e, rows - g * mr < mr ? rows - g * mr : mr,
                                       kcb, shift + g * mr, visible + g * mr, pc, scale, sums + g * mr);
        }
        for (int pc = 0; pc < seen_e; pc += GEMM_KC) {
            int kcb = seen_e - pc < GEMM_KC ? seen_e - pc : GEMM_KC;
            for (int c0 = 0; c0 < dim; c0 += nr)
                for (int ir = 0; ir < mpad; ir += mr)
                    kt->gemm_bf16_kernel(kcb, aw + (size_t)pc * mpad + (size_t)ir * kcb,
                                         vp + (size_t)c0 * (nke / 2) + (size_t)pc / 2 * nr, out + (size_t)(i0 + ir) * ldo + c0,
                                         ldo, pc > 0, rows - ir < mr ? rows - ir : mr, dim - c0 < nr ? dim - c0 : nr);
        }
        for (int i = 0; i < rows; i++) kt->scale(out + (size_t)(i0 + i) * ldo, dim, 1.0f / sums[i]);
    }
}

/* Rows of halves as floats, for sgemm: n rows of dim, ld apart, into f[n][dim]. */
static float *widened_rows(const ops_kernels *kt, float *f, const void *m, int ld, int n, int dim) {
    for (int j = 0; j < n; j++)
        kt->widen(f + (size_t)j * dim, (const uint16_t *)m + (size_t)j * ld, QVL_F16, dim);
    return f;
}

void attend_block(float *out, int ldo, const float *q, int ldq, const void *k, const void *v, qvl_dtype kv, int ldk,
                  int nq, int nk, int dim, float scale, int causal_past, attend_scratch *ws) {
    const ops_kernels *kt = kernels();
    if (nq <= 0 || nk <= 0) return;
    if (bf16_matmul && kt->gemm_bf16_kernel && dim % 2 == 0) {
        attend_packed_bf16(kt, out, ldo, q, ldq, k, v, kv, ldk, nq, nk, dim, scale, causal_past, ws);
        return;
    }
    if (kt->gemm_mr) {
        attend_packed(kt, out, ldo, q, ldq, k, v, kv, ldk, nq, nk, dim, scale, causal_past, ws);
        return;
    }
    pthread_once(&blas_once, blas_single_threaded);
    float *scores = scratch(ws, WS_SCORES, sizeof(float) * (size_t)(nq < ATTEND_QBLOCK ? nq : ATTEND_QBLOCK) * nk);
    if (kv == QVL_F16) {     /* sgemm wants floats: the head's keys and values widened once */
        k = widened_rows(kt, scratch(ws, WS_KP, sizeof(float) * (size_t)nk * dim), k, ldk, nk, dim);
        v = widened_rows(kt, scratch(ws, WS_VP, sizeof(float) * (size_t)nk * dim), v, ldk, nk, dim);
        ldk = dim;
    }
    for (int i0 = 0; i0 < nq; i0 += ATTEND_QBLOCK) {
        int rows = nq - i0 < ATTEND_QBLOCK ? nq - i0 : ATTEND_QBLOCK;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, nk, dim, scale, q + (size_t)i0 * ldq, ldq, k, ldk,
                    0.0f, scores, nk);
        softmax_rows(kt, scores, nk, rows, nk, nk, 1.0f, causal_past < 0 ? -1 : causal_past + i0);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, dim, nk, 1.0f, scores, nk, v, ldk, 0.0f,
                    out + (size_t)i0 * ldo, ldo);
    }
}
