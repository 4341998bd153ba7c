/* testutil.c - path, file and process helpers for the Check suites. */
#include "testutil.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char *slot(void) {
    static char bufs[8][4096];
    static int i;
    return bufs[i++ & 7];
}

const char *data_path(const char *rel) {
    char *b = slot();
    snprintf(b, 4096, "%s/%s", TEST_DATA, rel);
    return b;
}

const char *build_path(const char *rel) {
    char *b = slot();
    snprintf(b, 4096, "%s/%s", BUILD_DIR, rel);
    return b;
}

static void mkdir_p(const char *path) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + 1; *p; p++)
        if (*p == '/') { *p = 0; mkdir(tmp, 0755); *p = '/'; }
    mkdir(tmp, 0755);
}

const char *tmp_dir(const char *tag) {
    static int counter;
    char *b = slot();
    snprintf(b, 4096, "%s/tests/tmp/%s-%d-%d", BUILD_DIR, tag, (int)getpid(), counter++);
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", b);
    if (system(cmd) != 0) { /* nothing to remove */ }
    mkdir_p(b);
    return b;
}

void synth_model_with_tokenizer(const char *name, char *out) {
    snprintf(out, 4096, "%s", tmp_dir(name));
    char cmd[16384];
    snprintf(cmd, sizeof cmd, "cp '%s/tests/models/%s'/* '%s'/ && cp '%s'/tokenizer/* '%s'/", BUILD_DIR, name, out,
             TEST_DATA, out);
    ck_assert_msg(system(cmd) == 0, "%s failed", cmd);
}

char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s: %s", path, strerror(errno));
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    ck_assert(buf != NULL);
    ck_assert(fread(buf, 1, (size_t)n, f) == (size_t)n);
    buf[n] = 0;
    fclose(f);
    if (len) *len = (size_t)n;
    return buf;
}

void write_file(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    ck_assert_msg(f != NULL, "cannot create %s", path);
    ck_assert(fwrite(data, 1, len, f) == len);
    fclose(f);
}

static char *read_all_fd(FILE *f) {
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    size_t r;
    while ((r = fread(buf + n, 1, cap - n - 1, f)) > 0) {
        n += r;
        if (cap - n < 2) buf = realloc(buf, cap *= 2);
    }
    buf[n] = 0;
    return buf;
}

int run_cmd(const char *cmd, char **out, char **err_out) {
    char errfile[4096] = "";
    char full[16384];
    if (err_out) {
        snprintf(errfile, sizeof errfile, "%s/tests/tmp/stderr-%d.txt", BUILD_DIR, (int)getpid());
        mkdir_p(build_path("tests/tmp"));
        snprintf(full, sizeof full, "%s 2>'%s'", cmd, errfile);
    } else {
        snprintf(full, sizeof full, "%s", cmd);
    }
    FILE *p = popen(full, "r");
    if (!p) return -1;
    char *o = read_all_fd(p);
    int st = pclose(p);
    if (out) *out = o; else free(o);
    if (err_out) {
        FILE *f = fopen(errfile, "rb");
        *err_out = f ? read_all_fd(f) : strdup("");
        if (f) fclose(f);
        unlink(errfile);
    }
    if (st == -1) return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

double test_seconds(double s) {
    const char *m = getenv("CK_TIMEOUT_MULTIPLIER");
    double k = m ? strtod(m, NULL) : 1.0;
    return k > 1.0 ? s * k : s;
}

int run_suite(Suite *s) {
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}
