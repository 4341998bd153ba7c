/* quant.c - block quantization of weight matrices and integer dot products.
 *
 * Decoding one token reads every weight once, so its speed is memory
 * bandwidth divided by bytes per weight: 8.5 bits (q8) or 4.5 bits (q4)
 * instead of 16 makes it about 2x or 3.5x faster, and the model smaller.
 * `--quant q4` is a mix, as llama.cpp's Q4_K_M is: the matrices whose error
 * costs most per byte stay q8 (quant_type_for, about 5.3 bits on average for
 * the 2B shape), which keeps its logits at cosine 0.993 where all-q4 reaches
 * 0.969.
 *
 * Formats.  A row of `in` weights is padded with zeros to in_pad (a multiple
 * of 64) and cut into nb = in_pad/32 blocks of 32; block b has one scale d[b]
 * and 32 small integers q, weight = d[b] * q.  A row is stored as
 *
 *   q8:  in_pad int8 q (-127..127), then nb float16 scales (little endian).
 *        d = max|w| / 127, q = round(w / d).             in_pad + 2*nb bytes
 *   q4:  in_pad/2 bytes of 4-bit codes, then nb float16 scales.
 *        q in -8..7, stored as the nibble q + 8, q = round(w / s) clipped,
 *        for the step s among m / (-8 c), c in 0.88..1.12 (m the weight of
 *        largest magnitude: c = 1 maps it onto -8), and d = s or, for those
 *        codes, the least-squares d = sum wq / sum qq: whichever pair has the
 *        least squared error (quant_block_q4).
 *        Codes go in groups of 128 weights (the last group has 64 when in_pad
 *        is not a multiple of 128): in a group of G weights, byte j of the
 *        group's G/2 bytes holds weight j in its low nibble and weight j + G/2
 *        in its high nibble.                              in_pad/2 + 2*nb bytes
 *
 * In a checkpoint written by `qvl quantize` such a matrix is a tensor of dtype
 * U8 and shape [out, row bytes]; the row size tells q8 from q4 (in_pad*17/16
 * against in_pad*9/16), so each tensor of q4's mix loads as what it is, and
 * __metadata__ carries "qvl.quant" ("q8"/"q4": what was asked) and
 * "qvl.quantized" (the tensor names, comma-separated).  model_load maps them in
 * place.  MoE experts are stored per expert (mlp.experts.<e>.gate_proj.weight
 * ...), out-major, and a tied lm_head as its own lm_head.weight.
 *
 * Products.  Each activation row is quantized the same way (int8, 32 per
 * block, float scale) so a block's dot product is exact integer arithmetic:
 *   AVX-512 VNNI: vpdpbusd multiplies unsigned by signed bytes, so the weights
 *     enter unsigned (q8: q + 128 by flipping the top bit; q4: the nibble
 *     q + 8) and the offset times the block's activation sum is taken off;
 *   AVX2: vpmaddubsw on |x| and sign(x)*q (q8) or on the nibbles (q4);
 *   portable C: plain int32 sums.
 * A block then adds d_w * d_x * dot to a float sum.  Every output is one such
 * row dot product on one thread (AVX-512: or the same operations in a tiled
 * product for many rows, see dot_vnni), so prefill (many rows) and decoding
 * (one) give the same value for a token, whatever the thread count. */
#include "quant.h"

#include <immintrin.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common.h"
#include "ops.h"
#include "simd_avx512.h"
#include "threadpool.h"

/* ---------------------------------------------------------------- names and sizes */

int quant_parse(const char *s, qvl_quant *q) {
    if (!strcmp(s, "none")) *q = QVL_QUANT_NONE;
    else if (!strcmp(s, "q8")) *q = QVL_QUANT_Q8;
    else if (!strcmp(s, "q4")) *q = QVL_QUANT_Q4;
    else return -1;
    return 0;
}

const char *quant_name(qvl_quant q) {
    return q == QVL_QUANT_Q8 ? "q8" : q == QVL_QUANT_Q4 ? "q4" : "none";
}

qvl_dtype quant_dtype(qvl_quant q) {
    return q == QVL_QUANT_Q8 ? QVL_Q8 : q == QVL_QUANT_Q4 ? QVL_Q4 : QVL_DTYPE_COUNT;
}

int quant_is_quantized(qvl_dtype t) { return t == QVL_Q8 || t == QVL_Q4; }

int quant_in_padded(int in) { return (in + 63) & ~63; }

size_t quant_row_bytes(qvl_dtype t, int in) {
    size_t pad = (size_t)quant_in_padded(in), nb = pad / QUANT_BLOCK;
    return (t == QVL_Q8 ? pad : pad / 2) + 2 * nb;
}

/* Where the scales of a row start. */
static size_t scales_offset(qvl_dtype t, int in_pad) {
    return t == QVL_Q8 ? (size_t)in_pad : (size_t)in_pad / 2;
}

static float load_f16(const uint8_t *p) {
    return qvl_f16_to_f32((uint16_t)(p[0] | p[1] << 8));
}

static void store_f16(uint8_t *p, float v) {
    uint16_t h = qvl_f32_to_f16(v);
    p[0] = (uint8_t)h;
    p[1] = (uint8_t)(h >> 8);
}

/* The byte and shift of weight i's code in a q4 row of in_pad weights. */
static void q4_code_at(int i, int in_pad, int *byte, int *shift) {
    int g0 = i & ~127, G = in_pad - g0 < 128 ? in_pad - g0 : 128, j = i - g0;
    *byte = g0 / 2 + (j < G / 2 ? j : j - G / 2);
    *shift = j < G / 2 ? 0 : 4;
}

/* ---------------------------------------------------------------- quantizing */

/* A float16 scale that the quantizer then uses exactly as the kernels will. */
static inline __attribute__((always_inline)) float f16_round(float d) {
    uint32_t u;
    memcpy(&u, &d, 4);
    uint32_t e = (u >> 23) & 0xff;
    if (e >= 127 - 14 && e < 127 + 15) {    /* a normal float16: round the mantissa to 10 bits, ties to even */
        u = (u + 0xfff + ((u >> 13) & 1)) & ~0x1fffu;
        memcpy(&d, &u, 4);
        return d;
    }
    if (d > 65504.0f) d = 65504.0f;
    if (d < -65504.0f) d = -65504.0f;
    return qvl_f16_to_f32(qvl_f32_to_f16(d));
}

/* One block of 32 floats to int8 codes: d = max|x| / 127 (rounded to a
 * float16 when f16_scale: the stored weights' scale), codes round(x / d),
 * to nearest even by adding and taking away 1.5 * 2^23 (|x / d| <= 127.5
 * here), within +-127; returns d, and the codes' sum in *sum when not NULL.
 * In SSE2, which every x86-64 has, so the same bytes on every CPU.  (For the
 * weights this was a scalar loop, 2.7 s of the 6.6 s --quant q8 took to load
 * the 2B shape; it writes the same 2.3 GB byte for byte.) */
static float block_to_int8(const float *x, int8_t *q, int f16_scale, int *sum) {
    const __m128 sign = _mm_set1_ps(-0.0f), magic = _mm_set1_ps(12582912.0f);
    const __m128 hi = _mm_set1_ps(127.0f), lo = _mm_set1_ps(-127.0f);
    __m128 v[8], m = _mm_setzero_ps();
    for (int k = 0; k < 8; k++) {
        v[k] = _mm_loadu_ps(x + 4 * k);
        m = _mm_max_ps(m, _mm_andnot_ps(sign, v[k]));
    }
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
    float d = _mm_cvtss_f32(m) / 127.0f;
    if (f16_scale) d = f16_round(d);
    const __m128 vid = _mm_set1_ps(d != 0 ? 1.0f / d : 0);
    __m128i s = _mm_setzero_si128(), c[8];
    for (int k = 0; k < 8; k++) {
        __m128 r = _mm_sub_ps(_mm_add_ps(_mm_mul_ps(v[k], vid), magic), magic);      /* to nearest even */
        c[k] = _mm_cvttps_epi32(_mm_max_ps(_mm_min_ps(r, hi), lo));
        s = _mm_add_epi32(s, c[k]);
    }
    for (int k = 0; k < 8; k += 4)
        _mm_storeu_si128((__m128i *)(q + 4 * k),
                         _mm_packs_epi16(_mm_packs_epi32(c[k], c[k + 1]), _mm_packs_epi32(c[k + 2], c[k + 3])));
    if (sum) {
        s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
        s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
        *sum = _mm_cvtsi128_si32(s);
    }
    return d;
}

static void quant_block_q8(const float *w, int8_t *q, uint8_t *scale) { store_f16(scale, block_to_int8(w, q, 1, NULL)); }

/* The q4 scale search: steps m / (-8 c) for Q4_STEPS values of c spread
 * evenly over [0.88, 1.12]. */
#define Q4_STEPS 9
static const float q4_steps[Q4_STEPS] = {      /* 1 / (-8 c), c = 0.88, 0.91, ... 1.12 */
    -1 / 7.04f, -1 / 7.28f, -1 / 7.52f, -1 / 7.76f, -1 / 8.0f, -1 / 8.24f, -1 / 8.48f, -1 / 8.72f, -1 / 8.96f,
};

#define Q4_LANES 4
#define Q4_TARGET
#include "quant_q4.h"
#undef Q4_LANES
#undef Q4_TARGET
#define Q4_LANES 8
#define Q4_TARGET __attribute__((target("avx2")))
#include "quant_q4.h"
#undef Q4_LANES
#undef Q4_TARGET
#define Q4_LANES 16
#define Q4_TARGET __attribute__((target("avx512f")))
#include "quant_q4.h"
#undef Q4_LANES
#undef Q4_TARGET
#define Q4_MAX_LANES 16

static int cpu_kernel(void);
enum { K_PORTABLE, K_AVX2, K_VNNI };

/* The blocks of a q4 row, as many at a time as the CPU's search has lanes
 * (16, 8 or 4: whole groups of 128 weights; zeros past `in`, and the lanes
 * past in_pad dropped), then packed group by group (the format at the top). */
static void quant_row_q4(const float *src, int in, uint8_t *row) {
    int in_pad = quant_in_padded(in), nb = in_pad / QUANT_BLOCK;
    uint8_t *scales = row + scales_offset(QVL_Q4, in_pad);
    static void (*const search[])(const float *, int8_t *, float *) = { q4_blocks_4, q4_blocks_8, q4_blocks_16 };
    static const int width[] = { 4, 8, 16 };
    int k = cpu_kernel(), lanes = width[k];
    float grp[Q4_MAX_LANES * QUANT_BLOCK], d[Q4_MAX_LANES];
    int8_t q[Q4_MAX_LANES * QUANT_BLOCK];
    for (int b0 = 0; b0 < nb; b0 += lanes) {
        int i0 = b0 * QUANT_BLOCK, n = lanes * QUANT_BLOCK;
        const float *w = src + i0;
        if (i0 + n > in) {
            for (int j = 0; j < n; j++) grp[j] = i0 + j < in ? src[i0 + j] : 0.0f;
            w = grp;
        }
        search[k](w, q, d);
        for (int b = b0; b < nb && b < b0 + lanes; b++) store_f16(scales + 2 * b, d[b - b0]);
        for (int g0 = i0; g0 < in_pad && g0 < i0 + n; g0 += 128) {
            int G = in_pad - g0 < 128 ? in_pad - g0 : 128;
            const int8_t *qg = q + (g0 - i0);
            for (int j = 0; j < G / 2; j++)
                row[g0 / 2 + j] = (uint8_t)((qg[j] + 8) | (qg[j + G / 2] + 8) << 4);
        }
    }
}

void quant_row(qvl_dtype t, const float *src, int in, void *dst) {
    if (t == QVL_Q4) { quant_row_q4(src, in, dst); return; }
    int in_pad = quant_in_padded(in);
    uint8_t *row = dst, *scales = row + scales_offset(t, in_pad);
    float blk[QUANT_BLOCK];
    for (int b = 0; b < in_pad / QUANT_BLOCK; b++) {
        int i0 = b * QUANT_BLOCK;
        const float *w = src + i0;
        if (i0 + QUANT_BLOCK > in) {            /* the padded tail */
            for (int j = 0; j < QUANT_BLOCK; j++) blk[j] = i0 + j < in ? src[i0 + j] : 0.0f;
            w = blk;
        }
        quant_block_q8(w, (int8_t *)row + i0, scales + 2 * b);
    }
}

void quant_dequant_row(const qvl_weight *w, int r, float *dst) {
    int in_pad = quant_in_padded(w->in);
    const uint8_t *row = (const uint8_t *)w->data + (size_t)r * (size_t)w->ld;
    const uint8_t *scales = row + scales_offset(w->dtype, in_pad);
    for (int i = 0; i < w->in; i++) {
        float d = load_f16(scales + 2 * (i / QUANT_BLOCK));
        int q;
        if (w->dtype == QVL_Q8) q = (int8_t)row[i];
        else {
            int byte, shift;
            q4_code_at(i, in_pad, &byte, &shift);
            q = ((row[byte] >> shift) & 0xF) - 8;
        }
        dst[i] = d * (float)q;
    }
}

/* One stored element as float (any unquantized dtype). */
static float element(const void *base, qvl_dtype t, size_t at) {
    const char *p = (const char *)base;
    uint16_t h;
    float f;
    switch (t) {
    case QVL_F32: memcpy(&f, p + 4 * at, 4); return f;
    case QVL_BF16: memcpy(&h, p + 2 * at, 2); return qvl_bf16_to_f32(h);
    default: memcpy(&h, p + 2 * at, 2); return qvl_f16_to_f32(h);
    }
}

/* 8 rows of 8 bf16s (src, rows `stride` bytes apart) transposed and widened:
 * column k to dst[k * ld .. + 7] as floats.  SSE2 unpacks, the widening
 * putting each half in the high word.  (Element by element, the in-major
 * experts of a MoE model took 13 s to quantize for 4 layers.) */
static void transpose_bf16_8x8(const uint8_t *src, size_t stride, float *dst, int ld) {
    __m128i r[8], a[8], b[8];
    for (int k = 0; k < 8; k++) r[k] = _mm_loadu_si128((const __m128i *)(const void *)(src + (size_t)k * stride));
    for (int k = 0; k < 8; k += 2) {
        a[k] = _mm_unpacklo_epi16(r[k], r[k + 1]);         /* columns 0-3 of rows k, k+1, interleaved */
        a[k + 1] = _mm_unpackhi_epi16(r[k], r[k + 1]);     /* columns 4-7 */
    }
    for (int h = 0; h < 2; h++)                              /* h: the columns 0-3 or 4-7 */
        for (int q = 0; q < 8; q += 4) {                     /* q: rows 0-3 or 4-7 */
            b[q / 2 + 4 * h] = _mm_unpacklo_epi32(a[q + h], a[q + 2 + h]);
            b[q / 2 + 4 * h + 1] = _mm_unpackhi_epi32(a[q + h], a[q + 2 + h]);
        }
    /* b[4h + 2m + j]: rows 4m..4m+3 of columns 4h + 2j, 4h + 2j + 1 */
    for (int k = 0; k < 8; k++) {
        int h = k / 4, j = (k % 4) / 2;
        __m128i lo = b[4 * h + j], hi = b[4 * h + 2 + j];
        __m128i col = k % 2 ? _mm_unpackhi_epi64(lo, hi) : _mm_unpacklo_epi64(lo, hi);
        _mm_storeu_si128((__m128i *)(void *)(dst + (size_t)k * (size_t)ld), _mm_unpacklo_epi16(_mm_setzero_si128(), col));
        _mm_storeu_si128((__m128i *)(void *)(dst + (size_t)k * (size_t)ld + 4), _mm_unpackhi_epi16(_mm_setzero_si128(), col));
    }
}

/* Rows o0 .. o0+cnt-1 of a weight as floats, dst[c * in + i].  In-major
 * weights are read input row by input row, so the transpose streams. */
static void rows_f32(const qvl_weight *w, int o0, int cnt, float *dst) {
    if (quant_is_quantized(w->dtype)) {
        for (int c = 0; c < cnt; c++) quant_dequant_row(w, o0 + c, dst + (size_t)c * w->in);
    } else if (!w->in_major && w->dtype == QVL_BF16) {
        for (int c = 0; c < cnt; c++) {
            const uint8_t *p = (const uint8_t *)w->data + (size_t)(o0 + c) * (size_t)w->ld * 2;
            float *d = dst + (size_t)c * w->in;
            int i = 0;
            for (; i + 8 <= w->in; i += 8) {         /* 8 at a time, the halves into the high words */
                __m128i h = _mm_loadu_si128((const __m128i *)(p + 2 * i));
                _mm_storeu_si128((__m128i *)(d + i), _mm_unpacklo_epi16(_mm_setzero_si128(), h));
                _mm_storeu_si128((__m128i *)(d + i + 4), _mm_unpackhi_epi16(_mm_setzero_si128(), h));
            }
            for (; i < w->in; i++) {
                uint32_t u = (uint32_t)(p[2 * i] | p[2 * i + 1] << 8) << 16;
                memcpy(&d[i], &u, 4);
            }
        }
    } else if (!w->in_major) {
        for (int c = 0; c < cnt; c++)
            for (int i = 0; i < w->in; i++)
                dst[(size_t)c * w->in + i] = element(w->data, w->dtype, (size_t)(o0 + c) * (size_t)w->ld + i);
    } else if (w->dtype == QVL_BF16 && cnt % 8 == 0 && w->in % 8 == 0) {
        for (int i = 0; i < w->in; i += 8)
            for (int c = 0; c < cnt; c += 8) {
                const uint8_t *p = (const uint8_t *)w->data + ((size_t)i * (size_t)w->ld + (size_t)(o0 + c)) * 2;
                transpose_bf16_8x8(p, (size_t)w->ld * 2, dst + (size_t)c * w->in + i, w->in);
            }
    } else {
        for (int i = 0; i < w->in; i++)
            for (int c = 0; c < cnt; c++)
                dst[(size_t)c * w->in + i] = element(w->data, w->dtype, (size_t)i * (size_t)w->ld + o0 + c);
    }
}

#define QUANT_TILE 32      /* rows converted per task step */

typedef struct {
    const qvl_weight *w;
    qvl_dtype t;
    uint8_t *dst;
    size_t row_bytes;
    int page_out;           /* release each tile's source pages once read */
} quant_job;

static void page_out(const char *begin, const char *end);

static void quant_tiles(void *p, int begin, int end) {
    quant_job *j = p;
    const qvl_weight *w = j->w;
    float *buf = malloc((size_t)QUANT_TILE * (size_t)w->in * sizeof *buf);
    if (!buf) abort();     /* a few hundred KB; nothing sane to do */
    for (int tile = begin; tile < end; tile++) {
        int o0 = tile * QUANT_TILE, cnt = w->out - o0 < QUANT_TILE ? w->out - o0 : QUANT_TILE;
        rows_f32(w, o0, cnt, buf);
        for (int c = 0; c < cnt; c++)
            quant_row(j->t, buf + (size_t)c * w->in, w->in, j->dst + (size_t)(o0 + c) * j->row_bytes);
        if (j->page_out && !w->in_major) {   /* so that a big matrix never is resident twice */
            size_t es = qvl_dtype_size(w->dtype);
            const char *b = (const char *)w->data + (size_t)o0 * (size_t)w->ld * es;
            page_out(b, b + (size_t)cnt * (size_t)w->ld * es);
        }
    }
    free(buf);
}

/* quant_weight, optionally handing the source's pages back as it goes. */
static void quant_weight_paging(const qvl_weight *w, qvl_dtype t, void *dst, qvl_weight *out, int paging) {
    quant_job j = { w, t, dst, quant_row_bytes(t, w->in), paging };
    parallel_for((w->out + QUANT_TILE - 1) / QUANT_TILE, quant_tiles, &j);
    *out = (qvl_weight){ .data = dst, .dtype = t, .out = w->out, .in = w->in, .in_major = 0,
                         .ld = (int64_t)j.row_bytes };
}

void quant_weight(const qvl_weight *w, qvl_dtype t, void *dst, qvl_weight *out) {
    quant_weight_paging(w, t, dst, out, 0);
}

int quant_bind(const void *data, int ndim, const int64_t *shape, int out, int in, qvl_weight *w,
               const char *label, const char *name, char *err) {
    int64_t q8 = (int64_t)quant_row_bytes(QVL_Q8, in), q4 = (int64_t)quant_row_bytes(QVL_Q4, in);
    if (ndim != 2 || shape[0] != out || (shape[1] != q8 && shape[1] != q4)) {
        qvl_seterr(err, "%s: tensor %s is U8 but not a quantized [%d, %d] matrix (expected shape [%d, %lld] for q8 "
                   "or [%d, %lld] for q4)", label, name, out, in, out, (long long)q8, out, (long long)q4);
        return -1;
    }
    *w = (qvl_weight){ .data = data, .dtype = shape[1] == q8 ? QVL_Q8 : QVL_Q4, .out = out, .in = in,
                       .in_major = 0, .ld = shape[1] };
    return 0;
}

/* ---------------------------------------------------------------- activations */

/* Activation rows quantized for the dot products: per row in_pad int8 codes,
 * and per block the scale d, the sum s of the block's codes and d * s, the
 * latter two for the kernels that add an offset to the weights. */
typedef struct {
    int n, in, in_pad, nb;
    int grouped;      /* the layout for the AVX-512 VNNI tiles, below */
    const float *x;
    int8_t *q;        /* [n][in_pad] */
    float *d, *ds;    /* [n][nb] */
    int32_t *s;       /* [n][nb] */
} qact;

/* The grouped layout (prefill on AVX-512 VNNI): rows in groups of
 * GEMM_ROWS (the last one padded with zero rows), each group one stream in
 * the order the tile kernel reads it: the blocks b in visiting order (b mod
 * 16, then b / 16: see gemm_group), each block 8 quarters of 8 rows' 4 codes,
 * 256 bytes; d and s likewise per group, block, row.  q is then [groups][nb]
 * [8][GEMM_ROWS][4], d and s [groups][nb][GEMM_ROWS], and ds unused; s holds
 * -128 times the sums, where the q8 products start (q4's -8 times is that
 * shifted right by 4), so the kernel broadcasts it straight from memory.  Every
 * tile reads the whole of the activations, and read as rows (8 streams, each
 * jumping 16 blocks ahead) they came from L2 and L3 without the prefetcher's
 * help: a 1024 -> 4096 product of 784 rows, one thread, took 32.2 ms read
 * as rows and 28.1 ms grouped. */
#define GEMM_ROWS 8

/* Position of block b in a group's visiting order: the blocks of residues
 * below b mod 16 first, k * (nb / 16) + min(k, nb % 16) of them. */
static inline int visit_pos(int nb, int b) {
    int k = b % 16, rem = nb % 16;
    return k * (nb / 16) + (k < rem ? k : rem) + b / 16;
}

/* One block of 32 activations to int8 codes (d = max|x| / 127, q =
 * round(x / d)); returns d, *sum = the codes' sum.  Vectorized: prefill
 * quantizes every matmul's input, and in scalar C that was a tenth of the
 * product's time. */
static float qact_block(const float *x, int8_t *q, int *sum) { return block_to_int8(x, q, 0, sum); }

/* Block b of row r: its codes to q (32 bytes), and d, s. */
static void qact_row_block(const qact *a, int r, int b, int8_t *q, float *d, int32_t *s) {
    int in = a->in, i0 = b * QUANT_BLOCK, sum;
    const float *xr = a->x + (size_t)r * in, *x = xr + i0;
    float blk[QUANT_BLOCK];
    if (i0 + QUANT_BLOCK > in) {            /* the padded tail */
        for (int j = 0; j < QUANT_BLOCK; j++) blk[j] = i0 + j < in ? xr[i0 + j] : 0.0f;
        x = blk;
    }
    *d = qact_block(x, q, &sum);
    *s = sum;
}

static void qact_rows(void *p, int begin, int end) {
    qact *a = p;
    for (int r = begin; r < end; r++)
        for (int b = 0; b < a->nb; b++) {
            size_t rb = (size_t)r * a->nb + b;
            qact_row_block(a, r, b, a->q + (size_t)r * a->in_pad + b * QUANT_BLOCK, &a->d[rb], &a->s[rb]);
            a->ds[rb] = a->d[rb] * (float)a->s[rb];
        }
}

/* parallel_for task over the groups of the grouped layout. */
static void qact_groups(void *p, int begin, int end) {
    qact *a = p;
    int nb = a->nb;
    for (int g = begin; g < end; g++)
        for (int b = 0; b < nb; b++) {
            size_t at = (size_t)g * nb + visit_pos(nb, b);
            int8_t *q = a->q + at * 8 * GEMM_ROWS * 4;
            for (int rr = 0; rr < GEMM_ROWS; rr++) {
                int8_t codes[QUANT_BLOCK] = { 0 };
                float d = 0;
                int32_t s = 0;
                if (g * GEMM_ROWS + rr < a->n) qact_row_block(a, g * GEMM_ROWS + rr, b, codes, &d, &s);
                for (int i = 0; i < 8; i++) memcpy(q + (i * GEMM_ROWS + rr) * 4, codes + 4 * i, 4);
                a->d[at * GEMM_ROWS + rr] = d;
                a->s[at * GEMM_ROWS + rr] = -128 * s;
            }
        }
}

/* Quantizes x[n][in]; grouped: in the grouped layout. */
static int qact_new(qact *a, const float *x, int n, int in, int grouped) {
    a->in = in;
    a->n = n;
    a->x = x;
    a->in_pad = quant_in_padded(in);
    a->nb = a->in_pad / QUANT_BLOCK;
    a->grouped = grouped;
    size_t rows = grouped ? (size_t)(n + GEMM_ROWS - 1) / GEMM_ROWS * GEMM_ROWS : (size_t)n;
    a->q = malloc(rows * (size_t)a->in_pad);
    a->d = malloc(rows * (size_t)a->nb * sizeof(float));
    a->ds = grouped ? NULL : malloc(rows * (size_t)a->nb * sizeof(float));
    a->s = malloc(rows * (size_t)a->nb * sizeof(int32_t));
    if (!a->q || !a->d || (!grouped && !a->ds) || !a->s) return -1;
    if (grouped) parallel_for((int)(rows / GEMM_ROWS), qact_groups, a);
    else parallel_for(n, qact_rows, a);     /* each row alone: the same codes on any thread */
    return 0;
}

static void qact_free(qact *a) {
    free(a->q);
    free(a->d);
    free(a->ds);
    free(a->s);
}

/* dot(weight row, activation row); row points at the row's codes, nb blocks. */
typedef float (*row_dot)(const uint8_t *row, int nb, const int8_t *xq, const float *xd, const float *xds,
                        const int32_t *xs);

/* One matmul: y[n][w->out] from the quantized activations. */
typedef struct {
    float *y;
    const qvl_weight *w;
    const qact *a;
    int n;
    row_dot dot;        /* the row kernel */
} qmm_job;

/* ---------------------------------------------------------------- row dot products */

static float dot_q8_portable(const uint8_t *row, int nb, const int8_t *xq, const float *xd, const float *xds,
                             const int32_t *xs) {
    (void)xs;
    (void)xds;
    const int8_t *wq = (const int8_t *)row;
    const uint8_t *sc = row + (size_t)nb * QUANT_BLOCK;
    float acc = 0;
    for (int b = 0; b < nb; b++) {
        int32_t s = 0;
        for (int j = 0; j < QUANT_BLOCK; j++) s += wq[b * QUANT_BLOCK + j] * xq[b * QUANT_BLOCK + j];
        acc += load_f16(sc + 2 * b) * xd[b] * (float)s;
    }
    return acc;
}

static float dot_q4_portable(const uint8_t *row, int nb, const int8_t *xq, const float *xd, const float *xds,
                             const int32_t *xs) {
    (void)xs;
    (void)xds;
    int in_pad = nb * QUANT_BLOCK;
    const uint8_t *sc = row + in_pad / 2;
    float acc = 0;
    for (int g0 = 0; g0 < in_pad; g0 += 128) {
        int G = in_pad - g0 < 128 ? in_pad - g0 : 128, half = G / 2;
        const uint8_t *codes = row + g0 / 2;
        for (int k = 0; k < G / QUANT_BLOCK; k++) {      /* blocks of the group */
            int j0 = k * QUANT_BLOCK, b = (g0 + j0) / QUANT_BLOCK;
            int32_t s = 0;
            for (int j = j0; j < j0 + QUANT_BLOCK; j++) {
                int q = (j < half ? codes[j] & 0xF : codes[j - half] >> 4) - 8;
                s += q * xq[g0 + j];
            }
            acc += load_f16(sc + 2 * b) * xd[b] * (float)s;
        }
    }
    return acc;
}

__attribute__((target("avx2,fma,f16c")))
static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

/* A float16 scale, converted by the F16C instruction. */
__attribute__((target("avx2,fma,f16c")))
static inline float f16_avx2(const uint8_t *p) {
    return _cvtsh_ss((unsigned short)(p[0] | p[1] << 8));
}

/* Eight int32 partial sums of unsigned u[32] x signed x[32] (u*x pairs < 2^15). */
__attribute__((target("avx2,fma,f16c")))
static inline __m256 dot32_avx2(__m256i u, __m256i x) {
    __m256i p = _mm256_maddubs_epi16(u, x);
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(p, _mm256_set1_epi16(1)));
}

__attribute__((target("avx2,fma,f16c")))
static float dot_q8_avx2(const uint8_t *row, int nb, const int8_t *xq, const float *xd, const float *xds,
                         const int32_t *xs) {
    (void)xs;
    (void)xds;
    const uint8_t *sc = row + (size_t)nb * QUANT_BLOCK;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = acc0;
    for (int b = 0; b < nb; b += 2) {       /* nb is even */
        __m256i w0 = _mm256_loadu_si256((const __m256i *)(row + b * QUANT_BLOCK));
        __m256i x0 = _mm256_loadu_si256((const __m256i *)(xq + b * QUANT_BLOCK));
        __m256i w1 = _mm256_loadu_si256((const __m256i *)(row + (b + 1) * QUANT_BLOCK));
        __m256i x1 = _mm256_loadu_si256((const __m256i *)(xq + (b + 1) * QUANT_BLOCK));
        /* |x| is unsigned, q carries x's sign: |x| * sign(x) q = x q, pairs within 2 * 127 * 127. */
        __m256 p0 = dot32_avx2(_mm256_abs_epi8(x0), _mm256_sign_epi8(w0, x0));
        __m256 p1 = dot32_avx2(_mm256_abs_epi8(x1), _mm256_sign_epi8(w1, x1));
        acc0 = _mm256_fmadd_ps(p0, _mm256_set1_ps(f16_avx2(sc + 2 * b) * xd[b]), acc0);
        acc1 = _mm256_fmadd_ps(p1, _mm256_set1_ps(f16_avx2(sc + 2 * b + 2) * xd[b + 1]), acc1);
    }
    return hsum256(_mm256_add_ps(acc0, acc1));
}

__attribute__((target("avx2,fma,f16c")))
static float dot_q4_avx2(const uint8_t *row, int nb, const int8_t *xq, const float *xd, const float *xds,
                         const int32_t *xs) {
    (void)xs;
    int in_pad = nb * QUANT_BLOCK;
    const uint8_t *sc = row + in_pad / 2;
    const __m256i low = _mm256_set1_epi8(0xF);
    __m256 acc = _mm256_setzero_ps();
    float off = 0;      /* sum of d_w * d_x * sum(x): the codes are q + 8 */
    for (int b = 0; b < nb; b++) off += f16_avx2(sc + 2 * b) * xds[b];
    int g0 = 0;
    for (; g0 + 128 <= in_pad; g0 += 128) {
        int b = g0 / QUANT_BLOCK;
        __m256i v0 = _mm256_loadu_si256((const __m256i *)(row + g0 / 2));
        __m256i v1 = _mm256_loadu_si256((const __m256i *)(row + g0 / 2 + 32));
        __m256i u[4] = { _mm256_and_si256(v0, low), _mm256_and_si256(v1, low),
                         _mm256_and_si256(_mm256_srli_epi16(v0, 4), low),
                         _mm256_and_si256(_mm256_srli_epi16(v1, 4), low) };
        for (int k = 0; k < 4; k++) {
            __m256i x = _mm256_loadu_si256((const __m256i *)(xq + g0 + k * QUANT_BLOCK));
            acc = _mm256_fmadd_ps(dot32_avx2(u[k], x), _mm256_set1_ps(f16_avx2(sc + 2 * (b + k)) * xd[b + k]), acc);
        }
    }
    if (g0 < in_pad) {      /* the last group of 64 */
        int b = g0 / QUANT_BLOCK;
        __m256i v = _mm256_loadu_si256((const __m256i *)(row + g0 / 2));
        __m256i u0 = _mm256_and_si256(v, low), u1 = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
        __m256i x0 = _mm256_loadu_si256((const __m256i *)(xq + g0));
        __m256i x1 = _mm256_loadu_si256((const __m256i *)(xq + g0 + QUANT_BLOCK));
        acc = _mm256_fmadd_ps(dot32_avx2(u0, x0), _mm256_set1_ps(f16_avx2(sc + 2 * b) * xd[b]), acc);
        acc = _mm256_fmadd_ps(dot32_avx2(u1, x1), _mm256_set1_ps(f16_avx2(sc + 2 * b + 2) * xd[b + 1]), acc);
    }
    return hsum256(acc) - 8.0f * off;
}

/* Bytes prefetched ahead in a weight row as decoding streams it.  Measured
 * on the 2B shape (2 threads, Zen 4, alternating runs): q8 15.3-18.0 tok/s
 * at 1 KiB against 13.5-15.1 at 4 KiB; q4 (the mix) 24.0-24.4 at 2 KiB
 * against 22.5-25.1 at 4 KiB and 23.0-23.9 at 1 KiB.  Since dot_vnni sums
 * each chunk as it loads, q8 is best at 512 bytes (tokens alternating in one
 * process: 46.5 ms at 512 against 52.5 at 1 KiB; 256 as 512, 768 1-2%
 * slower); q4 stays best at 2 KiB (3 KiB the same, 1.5 KiB 1% slower, 1 KiB
 * 3%). */
#define QUANT_PREFETCH_Q8 512
#define QUANT_PREFETCH_Q4 2048

#define VNNI_TARGET "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c"

/* AVX-512 VNNI computes, for activation row r and output o,
 *
 *   S[b]    = the exact integer dot product of block b
 *   part[k] = sum over the blocks b = k, k+16, k+32, ... in that order of
 *             fma((float)S[b], d_w[b] * d_x[b], part[k])        (k = 0..15)
 *   y[r][o] = part[0..15] added in tree16's fixed tree
 *
 * The weights enter vpdpbusd unsigned (q8: q + 128 by flipping the top bit;
 * q4: the nibble q + 8), so S is the instruction's sum less 128 (or 8) times
 * the activation block's sum of codes, still exact.  Two ways to the same
 * operations, hence to the same bits:
 *   decoding (n < GEMM_MIN_ROWS): dot_vnni reads a weight row as stored, one
 *     stream; vpdpbusd sums 64 inputs (two blocks) at a time, and every 16
 *     blocks a reduction tree turns 8 such sums into S of 16 blocks, lanes =
 *     blocks, so part[k] is lane k;
 *   prefill: a tile of TILE_O = 16 outputs is repacked once per matmul, four
 *     inputs of the 16 outputs per 64-byte vector, so one vpdpbusd with four
 *     activation bytes broadcast adds a quarter block to 16 outputs; up to
 *     GEMM_ROWS = 8 activation rows share each weight load (a register-blocked
 *     GEMM) and sum a whole block in integers before its float step, lanes =
 *     outputs.  On the 2B shape's 2048 x 2048 that is 2.5x the row kernel's
 *     multiply-adds per second.
 * One row alone and the same row among many thus give identical values, and
 * each output is computed by one thread whatever the thread count. */
#define TILE_O 16
#define GEMM_MIN_ROWS 4

/* The 64 unsigned weight bytes of blocks b and b+1 (b even) of a row. */
__attribute__((target(VNNI_TARGET)))
static inline __m512i pair_u8(const uint8_t *row, qvl_dtype t, int b, int in_pad) {
    const __m512i low = _mm512_set1_epi8(0xF);
    if (t == QVL_Q8) return _mm512_xor_si512(_mm512_loadu_si512(row + b * QUANT_BLOCK), _mm512_set1_epi8((char)0x80));
    int i = b * QUANT_BLOCK, g0 = i & ~127;
    if (g0 + 128 <= in_pad) {            /* a group of 128: low nibbles 0..63, high 64..127 */
        __m512i v = _mm512_loadu_si512(row + g0 / 2);
        return i == g0 ? _mm512_and_si512(v, low) : _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
    }
    __m256i v = _mm256_loadu_si256((const __m256i *)(row + g0 / 2));     /* the last group, of 64 */
    __m256i lo = _mm256_and_si256(v, _mm512_castsi512_si256(low));
    __m256i hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), _mm512_castsi512_si256(low));
    return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

/* The weight scales of blocks b0 .. b0+15 (those below nb) of the tile's 16
 * rows, as 16 vectors, lanes = outputs.  (A tile of fewer outputs repeats its
 * first row: every lane is computed, the stores keep the tile's.) */
__attribute__((target(VNNI_TARGET)))
static inline void tile_scales(const uint8_t *const *rows, size_t sc_off, int b0, int nb, __m512 d[16]) {
    __mmask16 m = (__mmask16)(nb - b0 < 16 ? (1u << (nb - b0)) - 1 : 0xFFFF);
    __m512i r[16];
    _Pragma("GCC unroll 16") for (int o = 0; o < 16; o++)
        r[o] = _mm512_castps_si512(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, rows[o] + sc_off + 2 * b0)));
    transpose16(r);
    _Pragma("GCC unroll 16") for (int j = 0; j < 16; j++) d[j] = _mm512_castsi512_ps(r[j]);
}

/* The float step of block b for one row: acc += S * (d_w * d_x). */
__attribute__((target(VNNI_TARGET)))
static inline __m512 block_step(__m512 acc, __m512i sum, int off_sum, __m512 dw, float dx) {
    __m512i s = _mm512_sub_epi32(sum, _mm512_set1_epi32(off_sum));
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(dw, _mm512_set1_ps(dx)), acc);
}

/* The 16 block sums of blocks b0 .. b0+15 of one weight row: p[i] is vpdpbusd's
 * result for the pair b0+2i, b0+2i+1 (lanes 0-7 the first block's partial
 * sums, 8-15 the second's).  Three levels of adds, then lanes in block order. */
__attribute__((target(VNNI_TARGET)))
static inline __m512i block_sums16(const __m512i p[8]) {
    __m512i t[4], u[2];
    _Pragma("GCC unroll 16") for (int k = 0; k < 4; k++)
        t[k] = _mm512_add_epi32(_mm512_unpacklo_epi32(p[2 * k], p[2 * k + 1]), _mm512_unpackhi_epi32(p[2 * k], p[2 * k + 1]));
    _Pragma("GCC unroll 16") for (int m = 0; m < 2; m++)       /* 128-bit chunk c of u[m]: pairs 4m..4m+3, summed over chunk c of each */
        u[m] = _mm512_add_epi32(_mm512_unpacklo_epi64(t[2 * m], t[2 * m + 1]), _mm512_unpackhi_epi64(t[2 * m], t[2 * m + 1]));
    __m512i v = _mm512_add_epi32(_mm512_shuffle_i32x4(u[0], u[1], 0x88), _mm512_shuffle_i32x4(u[0], u[1], 0xDD));
    /* v holds blocks 0 2 4 6 1 3 5 7 8 10 12 14 9 11 13 15 */
    const __m512i order = _mm512_set_epi32(15, 11, 14, 10, 13, 9, 12, 8, 7, 3, 6, 2, 5, 1, 4, 0);
    return _mm512_permutexvar_epi32(order, v);
}

/* The float sums by block index mod 16 (lanes), added up in a fixed tree:
 * lanes i and i+8, then i and i+4, i and i+2, i and i+1.  gemm_rows adds its
 * 16 partial vectors in the same tree. */
__attribute__((target(VNNI_TARGET)))
static inline float tree16(__m512 v) {
    v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, 0x4E));
    v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, 0xB1));
    v = _mm512_add_ps(v, _mm512_permute_ps(v, 0x4E));
    v = _mm512_add_ps(v, _mm512_permute_ps(v, 0xB1));
    return _mm512_cvtss_f32(v);
}

/* vpdpbusd's sums of the 8 block pairs b0, b0+1 .. b0+14, b0+15 of a row (the
 * last chunk of a row may be short: missing pairs are 0). */
__attribute__((target(VNNI_TARGET), always_inline))
static inline void chunk_sums(const uint8_t *row, int nb, int b0, const int8_t *xq, const qvl_dtype t, __m512i p[8]) {
    int in_pad = nb * QUANT_BLOCK;
    const int8_t *x = xq + b0 * QUANT_BLOCK;
    if (nb - b0 >= 16 && t == QVL_Q8) {
        const uint8_t *wr = row + b0 * QUANT_BLOCK;
        _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++) {
            _mm_prefetch((const char *)wr + 64 * i + QUANT_PREFETCH_Q8, _MM_HINT_T0);
            __m512i u = _mm512_xor_si512(_mm512_loadu_si512(wr + 64 * i), _mm512_set1_epi8((char)0x80));
            p[i] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, _mm512_loadu_si512(x + 64 * i));
        }
    } else if (nb - b0 >= 16) {
        const uint8_t *wr = row + b0 * QUANT_BLOCK / 2;
        const __m512i low = _mm512_set1_epi8(0xF);
        _Pragma("GCC unroll 4") for (int g = 0; g < 4; g++) {
            _mm_prefetch((const char *)wr + 64 * g + QUANT_PREFETCH_Q4, _MM_HINT_T0);
            __m512i v = _mm512_loadu_si512(wr + 64 * g);
            p[2 * g] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(v, low), _mm512_loadu_si512(x + 128 * g));
            p[2 * g + 1] = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(_mm512_srli_epi16(v, 4), low),
                                               _mm512_loadu_si512(x + 128 * g + 64));
        }
    } else {
        for (int i = 0; i < 8; i++) {
            int b = b0 + 2 * i;
            p[i] = b < nb ? _mm512_dpbusd_epi32(_mm512_setzero_si512(), pair_u8(row, t, b, in_pad),
                                                _mm512_loadu_si512(xq + b * QUANT_BLOCK))
                          : _mm512_setzero_si512();
        }
    }
}

/* Decoding: one weight row as stored (one stream, as the DRAM likes it),
 * 16 blocks at a time: their exact sums S in lanes = blocks, then the float
 * step of each block in the lane of its index mod 16.  Each chunk is summed
 * as soon as it is loaded: issuing the next chunk's loads first (as this
 * loop once did) kept 16 vectors live, which the compiler spilled to the
 * stack, and that cost more than it hid now that the prefetch brings rows
 * in ahead: one thread with the rows in L2 (1024 x 2048) went from 66 to 44
 * ns a row, and decoding on the 2B shape (2 threads, tokens alternating
 * between the loops in one process) from 56.9 to 47.6 ms a token in q8
 * (another run 59.5 to 51.7) and 40.2 to 36.4 in q4.  In q8 that takes the
 * shorter prefetch below too: at 1 KiB this loop was no faster than the old
 * one, and the old one no faster at 512 bytes. */
__attribute__((target(VNNI_TARGET), always_inline))
static inline float dot_vnni(const uint8_t *row, int nb, const int8_t *xq, const float *xd, const int32_t *xs,
                             const qvl_dtype t) {
    int in_pad = nb * QUANT_BLOCK, shift = t == QVL_Q8 ? 7 : 3;
    const uint8_t *sc = row + (t == QVL_Q8 ? (size_t)in_pad : (size_t)in_pad / 2);
    __m512 acc = _mm512_setzero_ps();
    for (int b0 = 0; b0 < nb; b0 += 16) {
        __m512i p[8];
        chunk_sums(row, nb, b0, xq, t, p);
        __m512i sum = block_sums16(p);
        if (nb - b0 >= 16) {
            sum = _mm512_sub_epi32(sum, _mm512_slli_epi32(_mm512_loadu_si512(xs + b0), shift));
            __m512 d = _mm512_mul_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(sc + 2 * b0))), _mm512_loadu_ps(xd + b0));
            acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), d, acc);
        } else {
            __mmask16 m = (__mmask16)((1u << (nb - b0)) - 1);
            sum = _mm512_sub_epi32(sum, _mm512_slli_epi32(_mm512_maskz_loadu_epi32(m, xs + b0), shift));
            __m512 d = _mm512_mul_ps(_mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, sc + 2 * b0)), _mm512_maskz_loadu_ps(m, xd + b0));
            acc = _mm512_mask3_fmadd_ps(_mm512_cvtepi32_ps(sum), d, acc, m);
        }
    }
    return tree16(acc);
}

__attribute__((target(VNNI_TARGET)))
static float dot_q8_vnni(const uint8_t *row, int nb, const int8_t *xq, const float *xd, const float *xds,
                         const int32_t *xs) {
    (void)xds;
    return dot_vnni(row, nb, xq, xd, xs, QVL_Q8);
}

__attribute__((target(VNNI_TARGET)))
static float dot_q4_vnni(const uint8_t *row, int nb, const int8_t *xq, const float *xd, const float *xds,
                         const int32_t *xs) {
    (void)xds;
    return dot_vnni(row, nb, xq, xd, xs, QVL_Q4);
}

/* Prefill: the tile repacked (pw: per block pair 16 vectors, vector q holding
 * inputs 4q..4q+3 of the pair for the 16 outputs; ps: per block the 16
 * outputs' scales), then the activations a group of GEMM_ROWS rows at a
 * time, read in one stream (the grouped layout).  The blocks of index k mod
 * 16 go to partial sum k, and the 16 partials are added in tree16's tree, so
 * each output gets exactly dot_vnni's operations. */
__attribute__((target(VNNI_TARGET)))
static void gemm_group(const qmm_job *j, const __m512i *pw, const __m512 *ps, int o0, int cnt, int g) {
    const qact *a = j->a;
    int nb = a->nb, shift = j->w->dtype == QVL_Q8 ? 0 : 4;
    const int8_t *xg = a->q + (size_t)g * nb * 8 * GEMM_ROWS * 4;
    const float *dg = a->d + (size_t)g * nb * GEMM_ROWS;
    const int32_t *sg = a->s + (size_t)g * nb * GEMM_ROWS;
    __m512 part[16][GEMM_ROWS];
    /* The next group's output lines, so that its stores find them in cache:
     * each store is 64 bytes of a different row, and without this they
     * waited on memory (784 rows, 1024 -> 4096, one thread: 28.1 ms without,
     * 22.8-24.8 with; two threads 11.8 ms, 16.2 before the grouped layout). */
    int next = (g + 1) * GEMM_ROWS;
    for (int r = next; r < next + GEMM_ROWS && r < j->n; r++)
        _mm_prefetch((const char *)(j->y + (size_t)r * j->w->out + o0), _MM_HINT_ET0);
    for (int k = 0; k < 16; k++) {
        __m512 acc[GEMM_ROWS];
        _Pragma("GCC unroll 8") for (int r = 0; r < GEMM_ROWS; r++) acc[r] = _mm512_setzero_ps();
        for (int b = k; b < nb; b += 16) {
            __m512i s[GEMM_ROWS];       /* start at -offset * (sum of x): the sums come out exact */
            _Pragma("GCC unroll 8") for (int r = 0; r < GEMM_ROWS; r++)
                s[r] = shift ? _mm512_srai_epi32(_mm512_set1_epi32(sg[r]), 4) : _mm512_set1_epi32(sg[r]);
            const __m512i *wb = pw + (size_t)b * 8;          /* block b: 8 vectors of the pair's 16 */
            _Pragma("GCC unroll 8") for (int q = 0; q < 8; q++) {
                __m512i wv = _mm512_load_si512(wb + q);
                _Pragma("GCC unroll 8") for (int r = 0; r < GEMM_ROWS; r++) {
                    int32_t x4;
                    memcpy(&x4, xg + (q * GEMM_ROWS + r) * 4, 4);
                    s[r] = _mm512_dpbusd_epi32(s[r], wv, _mm512_set1_epi32(x4));
                }
            }
            _Pragma("GCC unroll 8") for (int r = 0; r < GEMM_ROWS; r++)
                acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[r]), _mm512_mul_ps(ps[b], _mm512_set1_ps(dg[r])), acc[r]);
            xg += 8 * GEMM_ROWS * 4;
            dg += GEMM_ROWS;
            sg += GEMM_ROWS;
        }
        _Pragma("GCC unroll 8") for (int r = 0; r < GEMM_ROWS; r++) part[k][r] = acc[r];
    }
    __mmask16 store = (__mmask16)((1u << cnt) - 1);
    int rows = j->n - g * GEMM_ROWS < GEMM_ROWS ? j->n - g * GEMM_ROWS : GEMM_ROWS;
    for (int r = 0; r < rows; r++) {
        __m512 t[8];
        _Pragma("GCC unroll 8") for (int i = 0; i < 8; i++) t[i] = _mm512_add_ps(part[i][r], part[i + 8][r]);
        _Pragma("GCC unroll 4") for (int i = 0; i < 4; i++) t[i] = _mm512_add_ps(t[i], t[i + 4]);
        _Pragma("GCC unroll 2") for (int i = 0; i < 2; i++) t[i] = _mm512_add_ps(t[i], t[i + 2]);
        _mm512_mask_storeu_ps(j->y + (size_t)(g * GEMM_ROWS + r) * j->w->out + o0, store, _mm512_add_ps(t[0], t[1]));
    }
}

/* A tile repacked for gemm_group: its first output o0, its count cnt (16
 * but at the matrix's end), pw and ps as gemm_group reads them. */
typedef struct {
    int o0, cnt;
    __m512i *pw;
    __m512 *ps;
} qtile;

__attribute__((target(VNNI_TARGET)))
static void tile_pack(const qmm_job *j, qtile *t) {
    const qvl_weight *w = j->w;
    int nb = j->a->nb, in_pad = j->a->in_pad;
    size_t sc_off = w->dtype == QVL_Q8 ? (size_t)in_pad : (size_t)in_pad / 2;
    const uint8_t *rows[TILE_O];
    for (int o = 0; o < TILE_O; o++) rows[o] = (const uint8_t *)w->data + (size_t)(t->o0 + (o < t->cnt ? o : 0)) * (size_t)w->ld;
    for (int b = 0; b < nb; b += 2) {
        __m512i r[16];
        for (int o = 0; o < 16; o++) r[o] = pair_u8(rows[o], w->dtype, b, in_pad);
        transpose16(r);
        for (int q = 0; q < 16; q++) _mm512_store_si512(t->pw + (size_t)b * 8 + q, r[q]);
    }
    for (int b0 = 0; b0 < nb; b0 += 16) {
        __m512 d[16];
        tile_scales(rows, sc_off, b0, nb, d);
        for (int k = 0; k < 16 && b0 + k < nb; k++) t->ps[b0 + k] = d[k];
    }
}

/* Tiles a thread packs before it sweeps the row groups across them: a
 * group's activations then serve them all from L1, and its output rows get
 * TILE_RUN * 64 contiguous bytes.  784 rows, 1024 -> 4096: one thread
 * 22.8-23.9 ms with 1 tile a sweep, 21.9-22.2 with 4; two threads 11.8 and
 * 10.7-11.1 (2 and 8 tiles: within 3% of 4). */
#define TILE_RUN 4

/* parallel_for task: tiles begin .. end-1 of TILE_O outputs. */
static void qmm_tiles_vnni(void *p, int begin, int end) {
    const qmm_job *j = p;
    const qvl_weight *w = j->w;
    int nb = j->a->nb;
    /* a packed tile: 576 bytes a block, 72 KB for a row of 4096 inputs */
    size_t tile_bytes = (size_t)nb * 8 * 64 + (size_t)nb * 64;
    char *buf = aligned_alloc(64, TILE_RUN * tile_bytes);
    if (!buf) abort();
    for (int t0 = begin; t0 < end; t0 += TILE_RUN) {
        qtile run[TILE_RUN];
        int count = end - t0 < TILE_RUN ? end - t0 : TILE_RUN;
        for (int t = 0; t < count; t++) {
            int o0 = (t0 + t) * TILE_O;
            run[t] = (qtile){ o0, w->out - o0 < TILE_O ? w->out - o0 : TILE_O, (__m512i *)(buf + t * tile_bytes),
                              (__m512 *)(buf + t * tile_bytes + (size_t)nb * 8 * 64) };
            tile_pack(j, &run[t]);
        }
        for (int g = 0; g * GEMM_ROWS < j->n; g++)
            for (int t = 0; t < count; t++) gemm_group(j, run[t].pw, run[t].ps, run[t].o0, run[t].cnt, g);
    }
    free(buf);
}

/* ---------------------------------------------------------------- dispatch */

static int best_kernel = -1, forced_kernel = -1;

static int cpu_kernel(void) {
    if (best_kernel < 0) {
        __builtin_cpu_init();
        int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
        int vnni = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                   __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
        best_kernel = vnni ? K_VNNI : avx2 ? K_AVX2 : K_PORTABLE;
    }
    return forced_kernel >= 0 ? forced_kernel : best_kernel;
}

static const char *const kernel_names[] = { "portable", "avx2", "avx512vnni" };

const char *quant_kernel_name(void) { return kernel_names[cpu_kernel()]; }

int quant_force_kernel(const char *name) {
    forced_kernel = -1;
    if (!name) return 0;
    int best = cpu_kernel();
    for (int k = 0; k <= best; k++)
        if (!strcmp(name, kernel_names[k])) { forced_kernel = k; return 0; }
    return -1;
}

static row_dot pick_dot(qvl_dtype t) {
    static const row_dot q8[] = { dot_q8_portable, dot_q8_avx2, dot_q8_vnni };
    static const row_dot q4[] = { dot_q4_portable, dot_q4_avx2, dot_q4_vnni };
    return t == QVL_Q8 ? q8[cpu_kernel()] : q4[cpu_kernel()];
}

/* ---------------------------------------------------------------- matmul */

#define ROW_TILE 16     /* output rows whose weights stay in L1 while every token passes */

static void qmm_rows(const qmm_job *j, int begin, int end) {
    const qvl_weight *w = j->w;
    const qact *a = j->a;
    for (int o0 = begin; o0 < end; o0 += ROW_TILE) {
        int o1 = o0 + ROW_TILE < end ? o0 + ROW_TILE : end;
        for (int r = 0; r < j->n; r++) {
            const int8_t *xq = a->q + (size_t)r * a->in_pad;
            const float *xd = a->d + (size_t)r * a->nb, *xds = a->ds + (size_t)r * a->nb;
            const int32_t *xs = a->s + (size_t)r * a->nb;
            float *y = j->y + (size_t)r * w->out;
            for (int o = o0; o < o1; o++)
                y[o] = j->dot((const uint8_t *)w->data + (size_t)o * (size_t)w->ld, a->nb, xq, xd, xds, xs);
        }
    }
}

/* Products run by the row kernels in one pass of the pool: their output rows
 * end to end, product i's being items first[i] .. first[i+1]-1.  Decoding
 * thus waits once for q/k/v and once for gate/up instead of five times, and
 * parallel_for_dynamic evens out the threads.  Measured on the 2B shape (2
 * threads, tokens alternating between the ways in one process): with the
 * machine busy, q8 71.0 ms a token against 77.9 split statically and 75.6
 * against 81.8, q4 50.5 against 54.1; when quiet 0-2% (one pass instead of
 * several: 0-3%). */
#define QMM_BATCH 32
typedef struct {
    qmm_job parts[QMM_BATCH];
    int first[QMM_BATCH + 1];
    int count;
} qmm_batch;

static void qmm_batch_rows(void *p, int begin, int end) {
    const qmm_batch *b = p;
    for (int i = 0; i < b->count; i++) {
        int lo = begin > b->first[i] ? begin : b->first[i], hi = end < b->first[i + 1] ? end : b->first[i + 1];
        if (lo < hi) qmm_rows(&b->parts[i], lo - b->first[i], hi - b->first[i]);
    }
}

/* Rows a thread claims at a time in the row kernels' parallel_for_dynamic:
 * about QMM_CHUNK_BYTES of weights (of the batch's widest rows), so that
 * claiming (one uncontended compare-and-swap) costs next to nothing against
 * streaming them, and the threads end at most that far apart. */
#define QMM_CHUNK_BYTES 32768

static void qmm_batch_run(qmm_batch *b) {
    int64_t ld = 1;
    for (int i = 0; i < b->count; i++) ld = b->parts[i].w->ld > ld ? b->parts[i].w->ld : ld;
    int64_t chunk = QMM_CHUNK_BYTES / ld;
    parallel_for_dynamic(b->first[b->count], chunk < 1 ? 1 : (int)chunk, qmm_batch_rows, b);
}

/* Up to QMM_BATCH products: the VNNI product for those of GEMM_MIN_ROWS rows
 * or more, one row-kernel pass of the pool for the others.  Products of the
 * same input rows (q/k/v, gate/up) share one quantization of them. */
static void quant_batch(const qvl_product *ps, int count) {
    qact acts[QMM_BATCH];
    const qact *act[QMM_BATCH];     /* product i's quantized input: its own acts[i] or an earlier one */
    qmm_batch b = { .count = 0, .first = { 0 } };
    for (int i = 0; i < count; i++) {
        const qvl_product *p = &ps[i];
        act[i] = NULL;
        if (p->n <= 0 || p->w->out <= 0) continue;
        int tiles = cpu_kernel() == K_VNNI && p->n >= GEMM_MIN_ROWS;
        for (int e = 0; e < i && !act[i]; e++)
            if (act[e] && ps[e].x == p->x && ps[e].n == p->n && ps[e].w->in == p->w->in) act[i] = act[e];
        if (!act[i]) {
            if (qact_new(&acts[i], p->x, p->n, p->w->in, tiles)) abort();    /* n * in bytes: as small as the activations */
            act[i] = &acts[i];
        }
        qmm_job j = { p->y, p->w, act[i], p->n, pick_dot(p->w->dtype) };
        if (tiles) {
            parallel_for((p->w->out + TILE_O - 1) / TILE_O, qmm_tiles_vnni, &j);
            continue;
        }
        b.parts[b.count] = j;
        b.first[b.count + 1] = b.first[b.count] + p->w->out;
        b.count++;
    }
    if (b.count) qmm_batch_run(&b);
    for (int i = 0; i < count; i++) if (act[i] == &acts[i]) qact_free(&acts[i]);
}

void quant_matmul_batch(const qvl_product *ps, int count) {
    for (int i = 0; i < count; i += QMM_BATCH) quant_batch(ps + i, count - i < QMM_BATCH ? count - i : QMM_BATCH);
}

void quant_matmul(float *y, const float *x, const qvl_weight *w, int n) {
    qvl_product p = { y, x, w, n };
    quant_matmul_batch(&p, 1);
}

/* ---------------------------------------------------------------- the model */

#define VISION_PREFIX "model.visual."

int quant_is_vision_name(const char *name) { return !strncmp(name, VISION_PREFIX, sizeof VISION_PREFIX - 1); }

/* The vision encoder's matrices: its prompt-sized products (every patch
 * through every block) are where pictures spend their time, and at q8 they
 * run on the integer kernels.  Measured on the 2B shape (2 threads): a
 * 448x448 picture 3.2 s -> 1.8 s, 1024x768 18.0 s -> 12.3 s; the image
 * golden's logit cosine q8 0.99973 -> 0.99947, q4 mix 0.99341 -> 0.99302. */
static int visit_vision(qvl_model *m, quant_visit fn, void *ctx) {
    if (!m->vision.blocks) return 0;
    qvl_vision_weights *v = &m->vision;
    char name[256];
    static const char *const blk[] = { "attn.qkv", "attn.proj", "mlp.linear_fc1", "mlp.linear_fc2" };
    for (int l = 0; l < m->cfg.vision.depth; l++) {
        qvl_weight *bw[] = { &v->blocks[l].qkv, &v->blocks[l].proj, &v->blocks[l].fc1, &v->blocks[l].fc2 };
        for (int k = 0; k < 4; k++) {
            snprintf(name, sizeof name, VISION_PREFIX "blocks.%d.%s.weight", l, blk[k]);
            if (fn(ctx, name, bw[k])) return 1;
        }
    }
    if (fn(ctx, VISION_PREFIX "merger.linear_fc1.weight", &v->merger.fc1)) return 1;
    if (fn(ctx, VISION_PREFIX "merger.linear_fc2.weight", &v->merger.fc2)) return 1;
    for (int d = 0; d < m->cfg.vision.n_deepstack; d++) {
        snprintf(name, sizeof name, VISION_PREFIX "deepstack_merger_list.%d.linear_fc1.weight", d);
        if (fn(ctx, name, &v->deepstack[d].fc1)) return 1;
        snprintf(name, sizeof name, VISION_PREFIX "deepstack_merger_list.%d.linear_fc2.weight", d);
        if (fn(ctx, name, &v->deepstack[d].fc2)) return 1;
    }
    return 0;
}

static int stop_at_quantized(void *ctx, const char *name, qvl_weight *w) {
    (void)ctx;
    (void)name;
    return quant_is_quantized(w->dtype);
}

int model_is_quantized(qvl_model *m) { return quant_for_each_matrix(m, stop_at_quantized, NULL); }

int quant_for_each_matrix(qvl_model *m, quant_visit fn, void *ctx) {
    const qvl_text_config *tc = &m->cfg.text;
    static const char *const mlp[] = { "gate", "up", "down" };
    char name[256];
    for (int l = 0; l < tc->layers; l++) {
        qvl_layer *L = &m->text.layers[l];
        qvl_weight *attn[] = { &L->q, &L->k, &L->v, &L->o };
        for (int k = 0; k < 4; k++) {
            snprintf(name, sizeof name, "model.language_model.layers.%d.self_attn.%c_proj.weight", l, "qkvo"[k]);
            if (fn(ctx, name, attn[k])) return 1;
        }
        if (!L->sparse) {
            qvl_weight *dense[] = { &L->gate, &L->up, &L->down };
            for (int k = 0; k < 3; k++) {
                snprintf(name, sizeof name, "model.language_model.layers.%d.mlp.%s_proj.weight", l, mlp[k]);
                if (fn(ctx, name, dense[k])) return 1;
            }
            continue;
        }
        for (int e = 0; e < tc->num_experts; e++) {
            qvl_weight *expert[] = { &L->exp_gate[e], &L->exp_up[e], &L->exp_down[e] };
            for (int k = 0; k < 3; k++) {
                snprintf(name, sizeof name, "model.language_model.layers.%d.mlp.experts.%d.%s_proj.weight", l, e, mlp[k]);
                if (fn(ctx, name, expert[k])) return 1;
            }
        }
    }
    if (fn(ctx, "lm_head.weight", &m->text.lm_head)) return 1;
    return visit_vision(m, fn, ctx);
}

/* The q4 mix.  Measured on the 2B shape (28 layers; cosine of the image
 * case's last logits against float32): all q8 0.9997, all q4 0.969.  With
 * everything else q8, each kind alone at q4 costs, in 1 - cosine beyond q8's:
 * v 0.0097 and o 0.0088 (3% and 7% of the weights), gate 0.0032, up 0.0031,
 * down 0.0029 (20% each), lm_head 0.0018 (18%), q and k 0.0004 each; and the
 * costs add up (0.030 against all q4's 0.031).  They fall with depth: the
 * first quarter of the layers carries three quarters of v and o's cost and
 * 70% of the MLP's, layer 0 alone a third (an error there passes through
 * every later layer).  So q4 keeps at 8 bits what costs most per byte: v and
 * o everywhere (+9% bytes: 0.988) and the MLP of the first eighth of the
 * layers (+7%: 0.9934; only layers 0-1 of the 28 would give 0.9921).  That is
 * 1.13 GB of matrices read per token, against 0.97 all q4 and 1.83 q8.
 * llama.cpp's Q4_K_M likewise keeps attn_v and part of ffn_down at 6 bits.
 * The names are quant_for_each_matrix's. */
qvl_dtype quant_type_for(const qvl_model *m, qvl_quant q, const char *name) {
    if (q != QVL_QUANT_Q4) return quant_dtype(q);
    if (quant_is_vision_name(name)) return QVL_Q8;     /* pictures keep 8 bits */
    const char *l = strstr(name, ".layers.");
    if (!l) return QVL_Q4;                              /* lm_head */
    if (strstr(name, ".self_attn.v_proj.") || strstr(name, ".self_attn.o_proj.")) return QVL_Q8;
    if (strstr(name, ".mlp.") && atoi(l + 8) * 8 < m->cfg.text.layers) return QVL_Q8;
    return QVL_Q4;
}

typedef struct {
    qvl_model *m;
    qvl_quant quant;
    char *err;
    size_t total;           /* bytes of the copies (each 64-byte aligned) */
    uint8_t *buf;
    size_t used;
    int page_out;           /* hand the mapped pages back */
} quantizer;

static size_t align64(size_t n) { return (n + 63) & ~(size_t)63; }

/* Pass 1: checks and sizes.  A matrix stored quantized is taken as it is
 * when it has the type the rule gives it, or, under q4, is q4 (a checkpoint
 * quantized before q4 kept some matrices at 8 bits). */
static int plan_matrix(void *p, const char *name, qvl_weight *w) {
    quantizer *q = p;
    qvl_dtype t = quant_type_for(q->m, q->quant, name);
    if (quant_is_quantized(w->dtype)) {
        if (w->dtype == t || w->dtype == quant_dtype(q->quant)) return 0;
        qvl_seterr(q->err, "%s is already quantized to %s; quantize from the original checkpoint instead",
                   name, w->dtype == QVL_Q8 ? "q8" : "q4");
        return 1;
    }
    q->total += align64((size_t)w->out * quant_row_bytes(t, w->in));
    return 0;
}

/* The bytes a weight spans in its storage. */
static void weight_extent(const qvl_weight *w, const char **begin, const char **end) {
    size_t es = qvl_dtype_size(w->dtype);
    size_t rows = (size_t)(w->in_major ? w->in : w->out), cols = (size_t)(w->in_major ? w->out : w->in);
    *begin = w->data;
    *end = (const char *)w->data + ((rows - 1) * (size_t)w->ld + cols) * es;
}

/* Tells the kernel the mapped pages wholly inside [begin, end) are not needed:
 * they leave the resident set, and a read-only file mapping refaults them
 * from the file if they are ever read again (only used on file mappings). */
static void page_out(const char *begin, const char *end) {
    uintptr_t ps = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t b = ((uintptr_t)begin + ps - 1) & ~(ps - 1), e = (uintptr_t)end & ~(ps - 1);
    if (e > b) madvise((void *)b, e - b, MADV_DONTNEED);
}

/* Pass 2: quantize into the buffer and replace the weight. */
static int apply_matrix(void *p, const char *name, qvl_weight *w) {
    quantizer *q = p;
    if (quant_is_quantized(w->dtype)) return 0;
    qvl_dtype t = quant_type_for(q->m, q->quant, name);
    qvl_weight src = *w;
    quant_weight_paging(&src, t, q->buf + q->used, w, q->page_out);
    q->used += align64((size_t)src.out * quant_row_bytes(t, src.in));
    /* Also when lm_head is tied to the embedding: a lookup reads back only the
     * few rows it needs (the pages refault from the file). */
    if (q->page_out) {
        const char *b, *e;
        weight_extent(&src, &b, &e);
        page_out(b, e);
    }
    return 0;
}

/* Decoding streams every quantized weight once a token: in 4 KiB pages that
 * is a TLB miss every 4 KiB, and the hardware prefetchers stop at each page
 * end.  So the copies get 2 MiB pages where the kernel gives them on request
 * (transparent huge pages in "madvise" mode, as on the project machine; a
 * `qvl quantize` checkpoint's mapped file already came in large folios
 * there).  The size is rounded up to whole huge pages; free() takes it back
 * as any aligned_alloc block. */
#define HUGE_PAGE ((size_t)2 << 20)

static void *huge_alloc(size_t size) {
    size_t whole = (size + HUGE_PAGE - 1) & ~(HUGE_PAGE - 1);
    void *p = aligned_alloc(HUGE_PAGE, whole);
    if (p) madvise(p, whole, MADV_HUGEPAGE);   /* a hint: without it, 4 KiB pages */
    return p;
}

int model_quantize(qvl_model *m, qvl_quant quant, char *err) {
    if (quant == QVL_QUANT_NONE) return 0;
    quantizer q = { .m = m, .quant = quant, .err = err, .page_out = m->file_mapped };
    if (quant_for_each_matrix(m, plan_matrix, &q)) return -1;
    if (q.total == 0) return 0;
    if (m->quant_data) {
        qvl_seterr(err, "model is already partly quantized; quantize from the original checkpoint instead");
        return -1;
    }
    q.buf = huge_alloc(q.total);
    if (!q.buf) {
        qvl_seterr(err, "out of memory for the %s weights (%.1f MB)", quant_name(quant), (double)q.total / 1e6);
        return -1;
    }
    m->quant_data = q.buf;
    quant_for_each_matrix(m, apply_matrix, &q);
    return 0;
}
