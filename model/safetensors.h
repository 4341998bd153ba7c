/* safetensors.h - memory-mapped safetensors checkpoints, single file or sharded.
 *
 * A checkpoint is opened once; every tensor's bytes stay in the mapping and are
 * used in place, in their stored dtype.  Everything in the header is validated
 * before use: header length inside the file, well-formed JSON, known dtypes,
 * offsets inside the data area, non-overlapping, and equal to shape x dtype. */
#ifndef QVL_SAFETENSORS_H
#define QVL_SAFETENSORS_H

#include <stdint.h>
#include <stdio.h>
#include "source.h"

/* QVL_Q8 and QVL_Q4 are qvl's own block-quantized matrices (quant.h), never a
 * safetensors dtype: a `qvl quantize` checkpoint stores them as U8. */
typedef enum { QVL_F32, QVL_F16, QVL_BF16, QVL_I64, QVL_I32, QVL_U8, QVL_I8, QVL_Q8, QVL_Q4, QVL_DTYPE_COUNT } qvl_dtype;

#define ST_MAX_DIMS 8

typedef struct {
    char *name;
    qvl_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    int64_t numel;
    const void *data;             /* inside the mapping */
    size_t nbytes;
    int file;                     /* index of the shard holding it */
} st_tensor;

typedef struct st_set st_set;

size_t qvl_dtype_size(qvl_dtype t);
const char *qvl_dtype_name(qvl_dtype t);

/* One file on disk. */
st_set *st_open_file(const char *path, char *err);
/* One file already in memory (not copied; must outlive the set). */
st_set *st_open_mem(const void *data, size_t size, const char *label, char *err);
/* A model: model.safetensors.index.json (sharded) if present, else model.safetensors. */
st_set *st_open_source(const qvl_source *src, char *err);
void st_close(st_set *s);

const st_tensor *st_find(const st_set *s, const char *name);
size_t st_count(const st_set *s);
const st_tensor *st_at(const st_set *s, size_t i);
const char *st_label(const st_set *s);   /* for error messages */

/* Writing: describe every tensor first, then stream the data in the same order.
 * The header is written sorted as given, offsets packed, padded to 8 bytes. */
typedef struct {
    const char *name;
    qvl_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
} st_spec;

int st_write_header(FILE *f, const st_spec *specs, size_t n, const char *metadata_json, char *err);

#endif
