/* tool_quantize.c - `qvl quantize -m DIR -o OUT --quant q8|q4`: store a
 * quantized copy of a checkpoint, so that loading it needs no quantization.
 *
 * OUT becomes an ordinary model directory: every file of DIR is copied (the
 * configs, tokenizer, chat template) except the safetensors, and one
 * model.safetensors holds the tensors that model_quantize leaves unquantized,
 * exactly as stored, plus the quantized matrices as U8 [rows, row bytes]
 * (layout atop model/quant.c).  Files are written to a temporary name and
 * renamed, so OUT never holds a half-written checkpoint under the real name. */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"
#include "quant.h"
#include "safetensors.h"
#include "source.h"
#include "threadpool.h"
#include "tools.h"
#include "weights.h"

static void quantize_usage(FILE *f) {
    fprintf(f, "usage: qvl quantize -m DIR -o OUT --quant q8|q4 [-t THREADS] [-q]\n"
               "Writes OUT as a model directory whose model.safetensors holds the text decoder's\n"
               "matrices in 8-bit (q8) or mostly 4-bit (q4) blocks and the vision encoder's in\n"
               "8-bit ones; `qvl -m OUT` then loads at once.\n");
}

/* ---------------------------------------------------------------- the tensor list */

typedef struct {
    st_spec spec;
    const void *data;
    size_t nbytes;
} out_tensor;

typedef struct {
    out_tensor *t;
    int n, cap;
    char **names;          /* the quantized matrices' names (owned) */
    int nnames;
} out_list;

static int push(out_list *l, const char *name, qvl_dtype dt, int ndim, const int64_t *shape, const void *data,
                size_t nbytes) {
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 256;
        out_tensor *g = realloc(l->t, (size_t)cap * sizeof *g);
        if (!g) return -1;
        l->t = g;
        l->cap = cap;
    }
    out_tensor *o = &l->t[l->n++];
    memset(o, 0, sizeof *o);
    o->spec.name = name;
    o->spec.dtype = dt;
    o->spec.ndim = ndim;
    memcpy(o->spec.shape, shape, (size_t)ndim * sizeof *shape);
    o->data = data;
    o->nbytes = nbytes;
    return 0;
}

static int add_quantized(void *ctx, const char *name, qvl_weight *w) {
    out_list *l = ctx;
    char *copy = strdup(name);
    char **g = realloc(l->names, (size_t)(l->nnames + 1) * sizeof *g);
    if (!copy || !g) { free(copy); if (g) l->names = g; return 1; }
    l->names = g;
    l->names[l->nnames++] = copy;
    int64_t shape[2] = { w->out, w->ld };
    return push(l, copy, QVL_U8, 2, shape, w->data, (size_t)w->out * (size_t)w->ld) != 0;
}

static int is_quantized_name(const out_list *l, const char *name) {
    for (int i = 0; i < l->nnames; i++)
        if (!strcmp(l->names[i], name)) return 1;
    return 0;
}

/* Fused MoE expert tensors: their experts are written one by one instead. */
static int is_fused_experts(const char *name) {
    size_t n = strlen(name);
    static const char *const ends[] = { ".mlp.experts.gate_up_proj", ".mlp.experts.down_proj" };
    for (int i = 0; i < 2; i++) {
        size_t k = strlen(ends[i]);
        if (n >= k && !strcmp(name + n - k, ends[i])) return 1;
    }
    return 0;
}

static int by_name(const void *a, const void *b) {
    return strcmp(((const out_tensor *)a)->spec.name, ((const out_tensor *)b)->spec.name);
}

/* "qvl.quant": "q8", "qvl.quantized": "name,name,...". */
static char *metadata_json(const out_list *l, qvl_quant q) {
    size_t len = 1;
    for (int i = 0; i < l->nnames; i++) len += strlen(l->names[i]) + 1;
    char *list = malloc(len), *p = list;
    if (!list) return NULL;
    *p = 0;
    for (int i = 0; i < l->nnames; i++) p += sprintf(p, "%s%s", i ? "," : "", l->names[i]);
    cJSON *meta = cJSON_CreateObject();
    cJSON_AddStringToObject(meta, "format", "pt");
    cJSON_AddStringToObject(meta, "qvl.quant", quant_name(q));
    cJSON_AddStringToObject(meta, "qvl.quantized", list);
    char *json = cJSON_PrintUnformatted(meta);
    cJSON_Delete(meta);
    free(list);
    return json;
}

/* ---------------------------------------------------------------- files */

/* Writes `path` through path.tmp and a rename; the writer fills the open file. */
typedef int (*file_writer)(FILE *f, void *ctx, char *err);

static int write_atomic(const char *path, file_writer fn, void *ctx, char *err) {
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        qvl_seterr(err, "cannot create %s: %s", tmp, strerror(errno));
        return -1;
    }
    int rc = fn(f, ctx, err);
    if (rc == 0 && (fflush(f) != 0 || fsync(fileno(f)) != 0)) {
        qvl_seterr(err, "writing %s: %s", tmp, strerror(errno));
        rc = -1;
    }
    if (fclose(f) != 0 && rc == 0) {
        qvl_seterr(err, "writing %s: %s", tmp, strerror(errno));
        rc = -1;
    }
    if (rc == 0 && rename(tmp, path) != 0) {
        qvl_seterr(err, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
        rc = -1;
    }
    if (rc) unlink(tmp);
    return rc;
}

typedef struct {
    const out_list *l;
    const char *meta;
} st_writer;

static int write_safetensors(FILE *f, void *ctx, char *err) {
    const st_writer *w = ctx;
    const out_list *l = w->l;
    st_spec *specs = malloc((size_t)l->n * sizeof *specs);
    if (!specs) { qvl_seterr(err, "out of memory"); return -1; }
    for (int i = 0; i < l->n; i++) specs[i] = l->t[i].spec;
    int rc = st_write_header(f, specs, (size_t)l->n, w->meta, err);
    free(specs);
    for (int i = 0; i < l->n && rc == 0; i++)
        if (fwrite(l->t[i].data, 1, l->t[i].nbytes, f) != l->t[i].nbytes) {
            qvl_seterr(err, "writing tensor %s: %s", l->t[i].spec.name, strerror(errno));
            rc = -1;
        }
    return rc;
}

typedef struct {
    const char *data;
    size_t len;
} bytes;

static int write_bytes(FILE *f, void *ctx, char *err) {
    const bytes *b = ctx;
    if (fwrite(b->data, 1, b->len, f) != b->len) {
        qvl_seterr(err, "write error: %s", strerror(errno));
        return -1;
    }
    return 0;
}

static int ends_with(const char *s, const char *end) {
    size_t n = strlen(s), k = strlen(end);
    return n >= k && !strcmp(s + n - k, end);
}

/* Copies every regular file of `dir` but the weights into `out`. */
static int copy_side_files(const char *dir, const char *out, char *err) {
    DIR *d = opendir(dir);
    if (!d) {
        qvl_seterr(err, "cannot read directory %s: %s", dir, strerror(errno));
        return -1;
    }
    int rc = 0;
    struct dirent *e;
    while (rc == 0 && (e = readdir(d))) {
        const char *n = e->d_name;
        if (n[0] == '.' || ends_with(n, ".safetensors") || !strcmp(n, "model.safetensors.index.json")) continue;
        char from[4096], to[4096];
        struct stat st;
        snprintf(from, sizeof from, "%s/%s", dir, n);
        snprintf(to, sizeof to, "%s/%s", out, n);
        if (stat(from, &st) || !S_ISREG(st.st_mode)) continue;
        bytes b;
        b.data = qvl_read_file(from, &b.len, err);
        if (!b.data) { rc = -1; break; }
        rc = write_atomic(to, write_bytes, &b, err);
        free((char *)b.data);
    }
    closedir(d);
    return rc;
}

/* OUT: created if missing; not DIR itself; no sharded index that would shadow
 * the new model.safetensors. */
static int prepare_out(const char *dir, const char *out, char *err) {
    struct stat a, b;
    if (mkdir(out, 0777) != 0 && errno != EEXIST) {
        qvl_seterr(err, "cannot create %s: %s", out, strerror(errno));
        return -1;
    }
    if (stat(out, &b) != 0 || !S_ISDIR(b.st_mode)) {
        qvl_seterr(err, "output %s is not a directory", out);
        return -1;
    }
    if (stat(dir, &a) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino) {
        qvl_seterr(err, "output %s is the model directory itself; choose another -o", out);
        return -1;
    }
    char idx[4096];
    snprintf(idx, sizeof idx, "%s/model.safetensors.index.json", out);
    if (access(idx, F_OK) == 0) {
        qvl_seterr(err, "%s exists and would shadow the new model.safetensors; remove it or choose another -o", idx);
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------- the tool */

static int quantize_dir(const char *dir, const char *out, qvl_quant q, char *err) {
    struct stat st;
    if (stat(dir, &st) != 0) {
        qvl_seterr(err, "model directory %s: %s", dir, strerror(errno));
        return -1;
    }
    if (!S_ISDIR(st.st_mode)) {
        qvl_seterr(err, "model directory %s: not a directory", dir);
        return -1;
    }
    qvl_source src = source_dir(dir);
    qvl_model *m = model_load(&src, err);
    if (!m) return -1;
    out_list l = { 0 };
    char *meta = NULL;
    int rc = -1;
    if (model_quantize(m, q, err) != 0) goto done;
    if (quant_for_each_matrix(m, add_quantized, &l)) { qvl_seterr(err, "out of memory"); goto done; }
    for (size_t i = 0; i < st_count(m->st); i++) {
        const st_tensor *t = st_at(m->st, i);
        if (is_quantized_name(&l, t->name) || is_fused_experts(t->name)) continue;
        if (push(&l, t->name, t->dtype, t->ndim, t->shape, t->data, t->nbytes)) {
            qvl_seterr(err, "out of memory");
            goto done;
        }
    }
    qsort(l.t, (size_t)l.n, sizeof *l.t, by_name);
    meta = metadata_json(&l, q);
    if (!meta) { qvl_seterr(err, "out of memory"); goto done; }
    if (prepare_out(dir, out, err) || copy_side_files(dir, out, err)) goto done;
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors", out);
    st_writer w = { &l, meta };
    rc = write_atomic(path, write_safetensors, &w, err);
done:
    for (int i = 0; i < l.nnames; i++) free(l.names[i]);
    free(l.names);
    free(l.t);
    free(meta);
    model_free(m);
    return rc;
}

int tool_quantize_main(int argc, char **argv) {
    static const struct option longopts[] = {
        { "model", required_argument, 0, 'm' }, { "output", required_argument, 0, 'o' },
        { "quant", required_argument, 0, 'Q' }, { "threads", required_argument, 0, 't' },
        { "quiet", no_argument, 0, 'q' }, { "help", no_argument, 0, 'h' }, { 0, 0, 0, 0 },
    };
    const char *dir = NULL, *out = NULL;
    qvl_quant q = QVL_QUANT_NONE;
    int threads = 0, quiet = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "m:o:t:qh", longopts, NULL)) != -1) {
        char *end;
        switch (c) {
        case 'm': dir = optarg; break;
        case 'o': out = optarg; break;
        case 'Q':
            if (quant_parse(optarg, &q) || q == QVL_QUANT_NONE) {
                fprintf(stderr, "qvl quantize: --quant: '%s' is not q8 or q4\n", optarg);
                return 2;
            }
            break;
        case 't':
            threads = (int)strtol(optarg, &end, 10);
            if (!*optarg || *end || threads < 0 || threads > 4096) {
                fprintf(stderr, "qvl quantize: --threads: '%s' is not a number from 0 to 4096\n", optarg);
                return 2;
            }
            break;
        case 'q': quiet = 1; break;
        case 'h': quantize_usage(stdout); return 0;
        default: quantize_usage(stderr); return 2;
        }
    }
    if (!dir || !out || q == QVL_QUANT_NONE || optind != argc) {
        fprintf(stderr, "qvl quantize: %s\n", !dir ? "-m DIR is required" : !out ? "-o OUT is required"
                                              : q == QVL_QUANT_NONE ? "--quant q8|q4 is required"
                                              : "unexpected argument");
        quantize_usage(stderr);
        return 2;
    }
    pool_set_threads(threads);
    char err[QVL_ERR_MAX];
    double t0 = qvl_now();
    int rc = quantize_dir(dir, out, q, err);
    pool_shutdown();
    if (rc) {
        fprintf(stderr, "qvl quantize: %s\n", err);
        return 1;
    }
    if (!quiet) fprintf(stderr, "qvl quantize: wrote %s/model.safetensors (%s) in %.2f s\n", out, quant_name(q),
                        qvl_now() - t0);
    return 0;
}
