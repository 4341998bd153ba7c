/* testutil.h - shared helpers for the Check suites. */
#ifndef QVL_TESTUTIL_H
#define QVL_TESTUTIL_H

#include <check.h>
#include <stddef.h>

/* tests/data in the source tree (read-only fixtures). */
#define TEST_DATA QVL_TEST_DATA
/* The build directory: ./qvl and the generated tests/models live here. */
#define BUILD_DIR QVL_BUILD_DIR

/* Path helpers: return a static buffer (rotating, 8 slots). */
const char *data_path(const char *rel);      /* TEST_DATA "/" rel */
const char *build_path(const char *rel);     /* BUILD_DIR "/" rel */
/* A fresh empty directory under BUILD_DIR/tests/tmp (unique per call). */
const char *tmp_dir(const char *tag);

/* A copy of the generated synthetic model BUILD_DIR/tests/models/<name> with the
 * Qwen tokenizer added (the synthetic checkpoints have none), in a fresh tmp
 * directory; the path is written into out (4096 bytes). */
void synth_model_with_tokenizer(const char *name, char *out);

/* Reads a whole file (aborts the test on failure); *len optional. */
char *slurp(const char *path, size_t *len);
void write_file(const char *path, const void *data, size_t len);

/* Runs a shell command, capturing stdout (and stderr into *err_out when non-NULL).
 * Returns the exit status (or -1). Captured strings are malloc'd. */
int run_cmd(const char *cmd, char **out, char **err_out);

/* A test's waiting time: s seconds times CK_TIMEOUT_MULTIPLIER when that is
 * set (Check scales its own per-test limits by it; the sanitizer builds set
 * it, see Makefile.am), so a slow build on a busy machine waits longer
 * instead of failing. */
double test_seconds(double s);

/* Runs a suite and returns the process exit status. */
int run_suite(Suite *s);

#endif
