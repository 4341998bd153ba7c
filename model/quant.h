/* quant.h - 8-bit and 4-bit block-quantized weight matrices.
 *
 * A quantized matrix (dtype QVL_Q8 or QVL_Q4 in a qvl_weight) is always
 * out-major: row o holds the `in` weights of output o, cut into blocks of 32
 * along the input, each block with its own float16 scale.  `ld` is the row
 * size in BYTES (quant_row_bytes), not in elements.  The byte layout is
 * described atop quant.c and in qvl(1).
 *
 * The products quantize the activations to int8 per block of 32 too, so the
 * inner loops are integer dot products (AVX-512 VNNI, AVX2, or portable C,
 * picked at run time); the float work is one multiply-add per block. */
#ifndef QVL_QUANT_H
#define QVL_QUANT_H

#include <stddef.h>
#include "ops.h"          /* qvl_product */
#include "weights.h"

typedef enum { QVL_QUANT_NONE, QVL_QUANT_Q8, QVL_QUANT_Q4 } qvl_quant;

#define QUANT_BLOCK 32     /* weights per scale */

/* "none", "q8", "q4" -> *q; -1 for anything else. */
int quant_parse(const char *s, qvl_quant *q);
const char *quant_name(qvl_quant q);
/* QVL_Q8 / QVL_Q4 for a quant type (QVL_DTYPE_COUNT for none), and back. */
qvl_dtype quant_dtype(qvl_quant q);
int quant_is_quantized(qvl_dtype t);

/* `in` rounded up to a multiple of 64: rows are padded with zero weights. */
int quant_in_padded(int in);
/* Bytes of one quantized row of `in` weights (t: QVL_Q8 or QVL_Q4). */
size_t quant_row_bytes(qvl_dtype t, int in);

/* Quantizes `in` floats into one row of quant_row_bytes(t, in) bytes. */
void quant_row(qvl_dtype t, const float *src, int in, void *dst);
/* Row `row` of a quantized weight, as `in` floats. */
void quant_dequant_row(const qvl_weight *w, int row, float *dst);

/* Quantizes a whole matrix of any stored dtype and layout (in-major ones are
 * transposed) into dst (w->out * quant_row_bytes(t, w->in) bytes), in
 * parallel over rows; *out describes the result. */
void quant_weight(const qvl_weight *w, qvl_dtype t, void *dst, qvl_weight *out);

/* Binds a stored quantized tensor (dtype U8, shape [out, quant_row_bytes]) as
 * the [out, in] matrix `name`; the shape tells q8 from q4. */
int quant_bind(const void *data, int ndim, const int64_t *shape, int out, int in, qvl_weight *w,
               const char *label, const char *name, char *err);

/* y[n, w->out] = x[n, w->in] . W^T for a quantized W (called by matmul). */
void quant_matmul(float *y, const float *x, const qvl_weight *w, int n);
/* Several such products (every w quantized; called by matmul_batch): those
 * of a few rows (decoding) go through the pool in one pass, balanced between
 * the threads, and products of the same x quantize it once.  Each output is
 * computed as quant_matmul computes it. */
void quant_matmul_batch(const qvl_product *p, int count);

/* Every matrix model_quantize converts, with its checkpoint name: the text
 * decoder's attention and MLP projections, the MoE experts (named per expert:
 * mlp.experts.<e>.{gate,up,down}_proj.weight), lm_head.weight (a separate
 * copy when the embedding is tied), then the vision encoder's block
 * projections (attn.qkv, attn.proj, mlp.linear_fc1/2) and its mergers'
 * linear_fc1/2 (model.visual.*; the small patch embedding stays as stored).
 * fn returns nonzero to stop. */
typedef int (*quant_visit)(void *ctx, const char *name, qvl_weight *w);
int quant_for_each_matrix(qvl_model *m, quant_visit fn, void *ctx);

/* Whether a name quant_for_each_matrix gives is one of the vision encoder's. */
int quant_is_vision_name(const char *name);

/* The type model_quantize gives the matrix `name` (as quant_for_each_matrix
 * names it) under q: QVL_Q8 for every matrix under q8; under q4 a mix, most
 * text matrices QVL_Q4 but attention's v and o projections and the MLP (or
 * experts) of the first eighth of the layers QVL_Q8, and the vision encoder's
 * all QVL_Q8 (why: atop quant.c). */
qvl_dtype quant_type_for(const qvl_model *m, qvl_quant q, const char *name);

/* Replaces every matrix above by a quantized copy held by the model, of the
 * type quant_type_for gives it; the embedding lookup keeps its stored dtype.
 * The mapped pages of the replaced matrices are handed back to the kernel, so
 * resident memory is about the quantized size.  Matrices already quantized (a
 * `qvl quantize` checkpoint) stay as they are if of that type (under q4, q4 is
 * taken too); another type is an error. */
int model_quantize(qvl_model *m, qvl_quant q, char *err);

/* Whether any matrix of the model is quantized (by model_quantize or as
 * stored by `qvl quantize`). */
int model_is_quantized(qvl_model *m);

/* Which integer kernel runs: "avx512vnni", "avx2" or "portable". */
const char *quant_kernel_name(void);
/* Forces a kernel no faster than the CPU allows (tests compare them):
 * "avx512vnni", "avx2", "portable", or NULL for the best.  -1 if unsupported. */
int quant_force_kernel(const char *name);

#endif
