/* safetensors.c - memory-mapped safetensors files, single or sharded.
 *
 * Format: 8-byte little-endian header length N, N bytes of JSON mapping each
 * tensor name to {dtype, shape, data_offsets: [begin, end]} (offsets relative
 * to the data area that follows the header), then the data.  We map the whole
 * file read-only and hand out pointers into it, so a 4 GB checkpoint costs no
 * copy and pages in on demand.  Since the file may come from anywhere, the
 * header is checked completely before any pointer is handed out. */
#include "safetensors.h"
#include "common.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    void *map;          /* mmap'd region (NULL for memory sets) */
    size_t size;
    char *label;        /* file path, for messages */
} st_file;

struct st_set {
    st_file *files;
    int nfiles;
    st_tensor *tensors; /* sorted by name */
    size_t ntensors;
    char *label;
};

static const struct { const char *name; qvl_dtype t; size_t size; } dtypes[] = {
    { "F32", QVL_F32, 4 }, { "F16", QVL_F16, 2 }, { "BF16", QVL_BF16, 2 },
    { "I64", QVL_I64, 8 }, { "I32", QVL_I32, 4 }, { "U8", QVL_U8, 1 }, { "I8", QVL_I8, 1 },
};

size_t qvl_dtype_size(qvl_dtype t) {
    for (size_t i = 0; i < sizeof dtypes / sizeof *dtypes; i++)
        if (dtypes[i].t == t) return dtypes[i].size;
    return 0;
}

const char *qvl_dtype_name(qvl_dtype t) {
    for (size_t i = 0; i < sizeof dtypes / sizeof *dtypes; i++)
        if (dtypes[i].t == t) return dtypes[i].name;
    return "?";
}

static int dtype_from_name(const char *s, qvl_dtype *t) {
    for (size_t i = 0; i < sizeof dtypes / sizeof *dtypes; i++)
        if (!strcmp(dtypes[i].name, s)) { *t = dtypes[i].t; return 0; }
    return -1;
}

static int cmp_tensor_name(const void *a, const void *b) {
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

static int cmp_tensor_offset(const void *a, const void *b) {
    const st_tensor *x = *(const st_tensor *const *)a, *y = *(const st_tensor *const *)b;
    const char *px = x->data, *py = y->data;
    return px < py ? -1 : px > py;
}

/* Reads a JSON integer that must be a non-negative whole number. */
static int json_uint(const cJSON *j, int64_t *out) {
    if (!cJSON_IsNumber(j)) return -1;
    double d = j->valuedouble;
    if (d < 0 || d > 9.0e15 || d != (double)(int64_t)d) return -1;
    *out = (int64_t)d;
    return 0;
}

/* Parses one file's header and appends its tensors to the set. */
static int parse_file(st_set *s, int fi, char *err) {
    const st_file *f = &s->files[fi];
    const unsigned char *base = f->map;
    const char *label = f->label;
    if (f->size < 8) {
        qvl_seterr(err, "%s: truncated safetensors file (%zu bytes, no header)", label, f->size);
        return -1;
    }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | base[i];
    if (hlen == 0 || hlen > f->size - 8) {
        qvl_seterr(err, "%s: header length %llu runs past the end of the file (%zu bytes): truncated or not a safetensors file",
                   label, (unsigned long long)hlen, f->size);
        return -1;
    }
    char *json = malloc(hlen + 1);
    if (!json) {
        qvl_seterr(err, "%s: out of memory for a %llu-byte header", label, (unsigned long long)hlen);
        return -1;
    }
    memcpy(json, base + 8, hlen);
    json[hlen] = 0;
    cJSON *root = cJSON_ParseWithLength(json, hlen);
    free(json);
    if (!root || !cJSON_IsObject(root)) {
        qvl_seterr(err, "%s: header is not a valid JSON object", label);
        cJSON_Delete(root);
        return -1;
    }
    const unsigned char *data = base + 8 + hlen;
    size_t data_size = f->size - 8 - hlen;
    size_t first = s->ntensors;
    size_t n = 0;
    for (cJSON *e = root->child; e; e = e->next) n++;
    st_tensor *grown = realloc(s->tensors, (s->ntensors + n) * sizeof *grown);
    if (!grown && n) {
        qvl_seterr(err, "%s: out of memory", label);
        cJSON_Delete(root);
        return -1;
    }
    s->tensors = grown;

    for (cJSON *e = root->child; e; e = e->next) {
        if (!strcmp(e->string, "__metadata__")) continue;
        const char *name = e->string;
        cJSON *jd = cJSON_GetObjectItemCaseSensitive(e, "dtype");
        cJSON *js = cJSON_GetObjectItemCaseSensitive(e, "shape");
        cJSON *jo = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
        if (!cJSON_IsObject(e) || !cJSON_IsString(jd) || !cJSON_IsArray(js) || !cJSON_IsArray(jo) ||
            cJSON_GetArraySize(jo) != 2) {
            qvl_seterr(err, "%s: tensor %s: entry needs dtype, shape and data_offsets [begin, end]", label, name);
            goto fail;
        }
        st_tensor t = { 0 };
        t.file = fi;
        if (dtype_from_name(jd->valuestring, &t.dtype) != 0) {
            qvl_seterr(err, "%s: tensor %s has unsupported dtype %s (supported: BF16, F16, F32)",
                       label, name, jd->valuestring);
            goto fail;
        }
        t.ndim = cJSON_GetArraySize(js);
        if (t.ndim > ST_MAX_DIMS) {
            qvl_seterr(err, "%s: tensor %s has %d dimensions (at most %d supported)", label, name, t.ndim, ST_MAX_DIMS);
            goto fail;
        }
        t.numel = 1;
        int d = 0;
        for (cJSON *x = js->child; x; x = x->next, d++) {
            if (json_uint(x, &t.shape[d]) != 0 || (t.shape[d] > 0 && t.numel > INT64_MAX / t.shape[d])) {
                qvl_seterr(err, "%s: tensor %s has an invalid shape", label, name);
                goto fail;
            }
            t.numel *= t.shape[d];
        }
        int64_t b, en;
        if (json_uint(jo->child, &b) != 0 || json_uint(jo->child->next, &en) != 0 || en < b) {
            qvl_seterr(err, "%s: tensor %s has invalid data_offsets", label, name);
            goto fail;
        }
        if ((uint64_t)en > data_size) {
            qvl_seterr(err, "%s: tensor %s data_offsets [%lld, %lld] run past the data area (%zu bytes): truncated file?",
                       label, name, (long long)b, (long long)en, data_size);
            goto fail;
        }
        t.nbytes = (size_t)(en - b);
        if ((uint64_t)t.numel * qvl_dtype_size(t.dtype) != t.nbytes) {
            qvl_seterr(err, "%s: tensor %s holds %zu bytes but its shape and dtype %s need %llu",
                       label, name, t.nbytes, qvl_dtype_name(t.dtype),
                       (unsigned long long)t.numel * qvl_dtype_size(t.dtype));
            goto fail;
        }
        t.data = data + b;
        t.name = strdup(name);
        if (!t.name) {
            qvl_seterr(err, "%s: out of memory", label);
            goto fail;
        }
        s->tensors[s->ntensors++] = t;
    }
    cJSON_Delete(root);

    /* No two tensors of this file may share bytes. */
    size_t nt = s->ntensors - first;
    const st_tensor **by_off = malloc((nt ? nt : 1) * sizeof *by_off);
    if (!by_off) {
        qvl_seterr(err, "%s: out of memory", label);
        return -1;
    }
    for (size_t i = 0; i < nt; i++) by_off[i] = &s->tensors[first + i];
    qsort(by_off, nt, sizeof *by_off, cmp_tensor_offset);
    for (size_t i = 1; i < nt; i++) {
        const char *prev_end = (const char *)by_off[i - 1]->data + by_off[i - 1]->nbytes;
        if ((const char *)by_off[i]->data < prev_end && by_off[i]->nbytes && by_off[i - 1]->nbytes) {
            qvl_seterr(err, "%s: tensors %s and %s overlap", label, by_off[i - 1]->name, by_off[i]->name);
            free(by_off);
            return -1;
        }
    }
    free(by_off);
    return 0;
fail:
    cJSON_Delete(root);
    return -1;
}

static int check_duplicates(st_set *s, char *err) {
    qsort(s->tensors, s->ntensors, sizeof *s->tensors, cmp_tensor_name);
    for (size_t i = 1; i < s->ntensors; i++)
        if (!strcmp(s->tensors[i].name, s->tensors[i - 1].name)) {
            qvl_seterr(err, "%s: tensor %s appears twice", s->label, s->tensors[i].name);
            return -1;
        }
    return 0;
}

static st_set *set_new(const char *label) {
    st_set *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->label = strdup(label);
    return s;
}

void st_close(st_set *s) {
    if (!s) return;
    for (size_t i = 0; i < s->ntensors; i++) free(s->tensors[i].name);
    free(s->tensors);
    for (int i = 0; i < s->nfiles; i++) {
        if (s->files[i].map && s->files[i].size) munmap(s->files[i].map, s->files[i].size);
        free(s->files[i].label);
    }
    free(s->files);
    free(s->label);
    free(s);
}

/* Maps one more file into the set (no parsing yet). */
static int add_mapped_file(st_set *s, const char *path, char *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        qvl_seterr(err, "%s: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        qvl_seterr(err, "%s: not a regular file", path);
        close(fd);
        return -1;
    }
    void *map = NULL;
    if (st.st_size > 0) {
        map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            qvl_seterr(err, "%s: cannot map: %s", path, strerror(errno));
            close(fd);
            return -1;
        }
    }
    close(fd);
    st_file *grown = realloc(s->files, (s->nfiles + 1) * sizeof *grown);
    if (!grown) {
        if (map) munmap(map, (size_t)st.st_size);
        qvl_seterr(err, "%s: out of memory", path);
        return -1;
    }
    s->files = grown;
    s->files[s->nfiles++] = (st_file){ .map = map, .size = (size_t)st.st_size, .label = strdup(path) };
    return 0;
}

st_set *st_open_file(const char *path, char *err) {
    st_set *s = set_new(path);
    if (!s) {
        qvl_seterr(err, "%s: out of memory", path);
        return NULL;
    }
    if (add_mapped_file(s, path, err) != 0 || parse_file(s, 0, err) != 0 || check_duplicates(s, err) != 0) {
        st_close(s);
        return NULL;
    }
    return s;
}

st_set *st_open_mem(const void *data, size_t size, const char *label, char *err) {
    st_set *s = set_new(label);
    if (s) s->files = calloc(1, sizeof *s->files);
    if (!s || !s->files) {
        qvl_seterr(err, "%s: out of memory", label);
        st_close(s);
        return NULL;
    }
    /* map == the caller's buffer; size 0 in the unmap sense is handled by map==NULL check */
    s->files[0] = (st_file){ .map = (void *)data, .size = size, .label = strdup(label) };
    s->nfiles = 1;
    int rc = parse_file(s, 0, err) != 0 || check_duplicates(s, err) != 0;
    s->files[0].map = NULL; /* not ours to unmap */
    if (rc) {
        st_close(s);
        return NULL;
    }
    return s;
}

/* Sharded checkpoint: model.safetensors.index.json names the file of every tensor. */
static st_set *open_sharded(const qvl_source *src, const char *index_json, char *err) {
    char ipath[4096];
    source_path(src, "model.safetensors.index.json", ipath, sizeof ipath);
    cJSON *root = cJSON_Parse(index_json);
    cJSON *wm = root ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL;
    if (!root || !cJSON_IsObject(wm)) {
        qvl_seterr(err, "%s: %s", ipath, root ? "missing key weight_map" : "invalid JSON");
        cJSON_Delete(root);
        return NULL;
    }
    st_set *s = set_new(src->label ? src->label : ipath);
    if (!s) {
        cJSON_Delete(root);
        qvl_seterr(err, "out of memory");
        return NULL;
    }
    /* Distinct shard names, in order of first appearance. */
    for (cJSON *e = wm->child; e; e = e->next) {
        if (!cJSON_IsString(e) || strchr(e->valuestring, '/')) {
            qvl_seterr(err, "%s: weight_map entry %s must name a file in the model directory", ipath, e->string);
            goto fail;
        }
        int seen = 0;
        for (int i = 0; i < s->nfiles && !seen; i++) {
            const char *base = strrchr(s->files[i].label, '/');
            seen = !strcmp(base ? base + 1 : s->files[i].label, e->valuestring);
        }
        if (seen) continue;
        char path[4096];
        source_path(src, e->valuestring, path, sizeof path);
        if (add_mapped_file(s, path, err) != 0 || parse_file(s, s->nfiles - 1, err) != 0) goto fail;
    }
    if (check_duplicates(s, err) != 0) goto fail;
    /* Every tensor the index names must be in the file it names. */
    for (cJSON *e = wm->child; e; e = e->next) {
        const st_tensor *t = st_find(s, e->string);
        const char *base = t ? strrchr(s->files[t->file].label, '/') : NULL;
        if (!t || strcmp(base ? base + 1 : s->files[t->file].label, e->valuestring)) {
            qvl_seterr(err, "%s: tensor %s is not in %s", ipath, e->string, e->valuestring);
            goto fail;
        }
    }
    cJSON_Delete(root);
    return s;
fail:
    cJSON_Delete(root);
    st_close(s);
    return NULL;
}

st_set *st_open_source(const qvl_source *src, char *err) {
    if (!src->dir) {
        const qvl_memfile *f = source_memfile(src, "model.safetensors");
        if (!f) {
            qvl_seterr(err, "%s: no model.safetensors", src->label ? src->label : "embedded model");
            return NULL;
        }
        return st_open_mem(f->data, f->size, src->label ? src->label : "model.safetensors", err);
    }
    char *index = NULL;
    int r = source_read(src, "model.safetensors.index.json", &index, NULL, err);
    if (r < 0) return NULL;
    if (r == 1) {
        st_set *s = open_sharded(src, index, err);
        free(index);
        return s;
    }
    char path[4096];
    source_path(src, "model.safetensors", path, sizeof path);
    if (!source_has(src, "model.safetensors")) {
        qvl_seterr(err, "%s: no model.safetensors or model.safetensors.index.json", src->dir);
        return NULL;
    }
    return st_open_file(path, err);
}

const st_tensor *st_find(const st_set *s, const char *name) {
    st_tensor key = { .name = (char *)name };
    return bsearch(&key, s->tensors, s->ntensors, sizeof key, cmp_tensor_name);
}

size_t st_count(const st_set *s) { return s->ntensors; }
const st_tensor *st_at(const st_set *s, size_t i) { return i < s->ntensors ? &s->tensors[i] : NULL; }
const char *st_label(const st_set *s) { return s->label; }

int st_write_header(FILE *f, const st_spec *specs, size_t n, const char *metadata_json, char *err) {
    cJSON *root = cJSON_CreateObject();
    size_t off = 0;
    if (metadata_json) {
        cJSON *meta = cJSON_Parse(metadata_json);
        if (meta) cJSON_AddItemToObject(root, "__metadata__", meta);
    }
    for (size_t i = 0; i < n; i++) {
        cJSON *t = cJSON_CreateObject();
        cJSON_AddStringToObject(t, "dtype", qvl_dtype_name(specs[i].dtype));
        cJSON *shape = cJSON_AddArrayToObject(t, "shape");
        size_t numel = 1;
        for (int d = 0; d < specs[i].ndim; d++) {
            cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)specs[i].shape[d]));
            numel *= (size_t)specs[i].shape[d];
        }
        size_t nbytes = numel * qvl_dtype_size(specs[i].dtype);
        cJSON *offs = cJSON_AddArrayToObject(t, "data_offsets");
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)off));
        cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)(off + nbytes)));
        off += nbytes;
        cJSON_AddItemToObject(root, specs[i].name, t);
    }
    char *json = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    if (!json) {
        qvl_seterr(err, "out of memory writing a safetensors header");
        return -1;
    }
    size_t len = strlen(json), padded = (len + 7) & ~(size_t)7;
    unsigned char hdr[8];
    for (int i = 0; i < 8; i++) hdr[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    int ok = fwrite(hdr, 1, 8, f) == 8 && fwrite(json, 1, len, f) == len;
    for (size_t i = len; i < padded && ok; i++) ok = fputc(' ', f) != EOF;
    free(json);
    if (!ok) {
        qvl_seterr(err, "write error: %s", strerror(errno));
        return -1;
    }
    return 0;
}
