/* complete.c - /image path completion and pasted-path detection (complete.h). */
#include "complete.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* "~/x" -> "$HOME/x" for the file system; the user's text keeps the tilde. */
static char *expand_home(const char *path) {
    const char *home = getenv("HOME");
    if (path[0] == '~' && (path[1] == '/' || !path[1]) && home) {
        size_t n = strlen(home) + strlen(path);
        char *out = malloc(n + 1);
        if (out) { strcpy(out, home); strcat(out, path + 1); }
        return out;
    }
    return strdup(path);
}

static int is_dir(const char *dir_fs, const char *name) {
    size_t n = strlen(dir_fs) + strlen(name) + 2;
    char *p = malloc(n);
    if (!p) return 0;
    snprintf(p, n, "%s%s", dir_fs, name);
    struct stat st;
    int d = stat(p, &st) == 0 && S_ISDIR(st.st_mode);
    free(p);
    return d;
}

int complete_path(const char *prefix, path_completion *out) {
    memset(out, 0, sizeof *out);
    const char *slash = strrchr(prefix, '/');
    size_t dir_len = slash ? (size_t)(slash - prefix + 1) : 0;
    const char *base = prefix + dir_len;
    size_t base_len = strlen(base);
    char *dir_typed = strndup(prefix, dir_len);
    char *dir_fs = dir_typed ? expand_home(dir_len ? dir_typed : "./") : NULL;
    DIR *d = dir_fs ? opendir(dir_fs) : NULL;
    if (!d) { free(dir_typed); free(dir_fs); return -1; }
    int cap = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        if (strncmp(e->d_name, base, base_len)) continue;
        if (e->d_name[0] == '.' && base[0] != '.') continue; /* hidden unless asked for */
        if (out->nmatches == cap) {
            cap = cap ? cap * 2 : 16;
            char **m = realloc(out->matches, (size_t)cap * sizeof *m);
            if (!m) break;
            out->matches = m;
        }
        out->matches[out->nmatches++] = strdup(e->d_name);
    }
    closedir(d);
    if (out->nmatches == 0) { free(dir_typed); free(dir_fs); path_completion_free(out); return -1; }
    qsort(out->matches, (size_t)out->nmatches, sizeof *out->matches, cmp_str);
    /* the longest common prefix of all names */
    size_t common = strlen(out->matches[0]);
    for (int i = 1; i < out->nmatches; i++) {
        size_t k = 0;
        while (k < common && out->matches[i][k] == out->matches[0][k]) k++;
        common = k;
    }
    int single_dir = out->nmatches == 1 && is_dir(dir_fs, out->matches[0]);
    size_t n = dir_len + common + 2;
    out->completed = malloc(n);
    if (out->completed)
        snprintf(out->completed, n, "%s%.*s%s", dir_typed, (int)common, out->matches[0], single_dir ? "/" : "");
    free(dir_typed);
    free(dir_fs);
    if (out->nmatches == 1) {           /* nothing to list */
        free(out->matches[0]);
        free(out->matches);
        out->matches = NULL;
    }
    return out->completed ? 0 : -1;
}

void path_completion_free(path_completion *c) {
    if (c->matches) for (int i = 0; i < c->nmatches; i++) free(c->matches[i]);
    free(c->matches);
    free(c->completed);
    memset(c, 0, sizeof *c);
}

int has_image_extension(const char *path) {
    static const char *ext[] = { "png", "jpg", "jpeg", "gif", "bmp", "tga", "pnm", "ppm", "pgm", "psd", "pic" };
    const char *dot = strrchr(path, '.');
    if (!dot || strchr(dot, '/')) return 0;
    for (size_t i = 0; i < sizeof ext / sizeof *ext; i++)
        if (!strcasecmp(dot + 1, ext[i])) return 1;
    return 0;
}

static int hexval(int c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

char *pasted_image_path(const char *input) {
    while (*input == ' ' || *input == '\t' || *input == '\n' || *input == '\r') input++;
    size_t len = strlen(input);
    while (len && (input[len - 1] == ' ' || input[len - 1] == '\t' || input[len - 1] == '\n' || input[len - 1] == '\r')) len--;
    if (len >= 2 && (input[0] == '\'' || input[0] == '"') && input[len - 1] == input[0]) { input++; len -= 2; }
    if (len == 0 || memchr(input, '\n', len)) return NULL;
    int url = len > 7 && !strncmp(input, "file://", 7);
    if (url) { input += 7; len -= 7; }
    char *path = malloc(len + 1), *o = path;
    if (!path) return NULL;
    for (size_t i = 0; i < len; i++) {
        if (url && input[i] == '%' && i + 2 < len && hexval(input[i + 1]) >= 0 && hexval(input[i + 2]) >= 0) {
            *o++ = (char)(hexval(input[i + 1]) * 16 + hexval(input[i + 2]));
            i += 2;
        } else if (!url && input[i] == '\\' && i + 1 < len) {
            *o++ = input[++i];
        } else {
            *o++ = input[i];
        }
    }
    *o = 0;
    char *fs = expand_home(path);
    free(path);
    struct stat st;
    if (fs && has_image_extension(fs) && stat(fs, &st) == 0 && S_ISREG(st.st_mode)) return fs;
    free(fs);
    return NULL;
}
