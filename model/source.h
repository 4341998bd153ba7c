/* source.h - where a model's files come from: a directory on disk, or a table
 * of files embedded in the binary (the built-in demo model).  Everything that
 * loads a model reads its files through this, so the demo model needs no
 * temporary files. */
#ifndef QVL_SOURCE_H
#define QVL_SOURCE_H

#include <stddef.h>

typedef struct {
    const char *name;             /* file name inside the model, e.g. "config.json" */
    const unsigned char *data;
    size_t size;
} qvl_memfile;

typedef struct {
    const char *dir;              /* model directory, or NULL when embedded */
    const qvl_memfile *files;     /* embedded files (when dir is NULL) */
    int nfiles;
    const char *label;            /* how errors name the model ("built-in demo model" or dir) */
} qvl_source;

qvl_source source_dir(const char *dir);

/* Full path of a file inside a directory source (for messages), into buf. */
const char *source_path(const qvl_source *src, const char *name, char *buf, size_t bufsize);

/* Returns 1 and a NUL-terminated malloc'd copy when the file exists, 0 when it
 * does not (nothing written to err), -1 on a read error. */
int source_read(const qvl_source *src, const char *name, char **out, size_t *len, char *err);

/* Whether a file exists in the source. */
int source_has(const qvl_source *src, const char *name);

/* Embedded file lookup: pointer and size, or NULL. */
const qvl_memfile *source_memfile(const qvl_source *src, const char *name);

#endif
