/* source.c - read a model's files from a directory or from the embedded table. */
#include "source.h"
#include "common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

qvl_source source_dir(const char *dir) {
    qvl_source s = { .dir = dir, .files = NULL, .nfiles = 0, .label = dir };
    return s;
}

const char *source_path(const qvl_source *src, const char *name, char *buf, size_t bufsize) {
    if (src->dir)
        snprintf(buf, bufsize, "%s/%s", src->dir, name);
    else
        snprintf(buf, bufsize, "%s: %s", src->label ? src->label : "embedded model", name);
    return buf;
}

const qvl_memfile *source_memfile(const qvl_source *src, const char *name) {
    for (int i = 0; i < src->nfiles; i++)
        if (!strcmp(src->files[i].name, name)) return &src->files[i];
    return NULL;
}

int source_has(const qvl_source *src, const char *name) {
    if (!src->dir) return source_memfile(src, name) != NULL;
    char path[4096];
    struct stat st;
    source_path(src, name, path, sizeof path);
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

int source_read(const qvl_source *src, const char *name, char **out, size_t *len, char *err) {
    if (!src->dir) {
        const qvl_memfile *f = source_memfile(src, name);
        if (!f) return 0;
        char *buf = malloc(f->size + 1);
        if (!buf) {
            qvl_seterr(err, "%s: out of memory", name);
            return -1;
        }
        memcpy(buf, f->data, f->size);
        buf[f->size] = 0;
        *out = buf;
        if (len) *len = f->size;
        return 1;
    }
    if (!source_has(src, name)) return 0;
    char path[4096];
    source_path(src, name, path, sizeof path);
    *out = qvl_read_file(path, len, err);
    return *out ? 1 : -1;
}
