/* test_synth.c - `qvl synth` writes exactly the checkpoints of the recipe: every
 * tensor's SHA-256 equals the manifest made by the Python reference. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "safetensors.h"
#include "sha256.h"
#include "testutil.h"

static void check_against_manifest(const char *model, int seed) {
    const char *out = tmp_dir(model);
    char cmd[8192], *o = NULL, *e = NULL;
    snprintf(cmd, sizeof cmd, "%s synth -c %s/models/%s/config.json --seed %d -o %s", build_path("qvl"),
             TEST_DATA, model, seed, out);
    int rc = run_cmd(cmd, &o, &e);
    ck_assert_msg(rc == 0, "qvl synth failed (%d): %s", rc, e);
    ck_assert_msg(strstr(e, "wrote") && strstr(e, " s\n"), "no timing printed: %s", e);
    free(o);
    free(e);

    char path[4096], err[QVL_ERR_MAX];
    snprintf(path, sizeof path, "%s/models/%s/synth_manifest.json", TEST_DATA, model);
    char *json = slurp(path, NULL);
    cJSON *man = cJSON_Parse(json);
    free(json);
    cJSON *hashes = cJSON_GetObjectItem(man, "tensor_sha256_bf16");
    ck_assert(cJSON_IsObject(hashes));
    snprintf(path, sizeof path, "%s/model.safetensors", out);
    st_set *s = st_open_file(path, err);
    ck_assert_msg(s != NULL, "%s", err);
    ck_assert_int_eq((int)st_count(s), cJSON_GetArraySize(hashes));
    for (cJSON *h = hashes->child; h; h = h->next) {
        const st_tensor *t = st_find(s, h->string);
        ck_assert_msg(t != NULL, "tensor %s not written", h->string);
        ck_assert_int_eq(t->dtype, QVL_BF16);
        char hex[65];
        sha256_hex(t->data, t->nbytes, hex);
        ck_assert_msg(!strcmp(hex, h->valuestring), "%s: sha256 %s, manifest %s", h->string, hex, h->valuestring);
    }
    st_close(s);
    cJSON_Delete(man);
    /* the preprocessor config beside the config is copied */
    snprintf(path, sizeof path, "%s/preprocessor_config.json", out);
    free(slurp(path, NULL));
}

START_TEST(sha256_known_answers) {
    char hex[65];
    sha256_hex("", 0, hex);
    ck_assert_str_eq(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    sha256_hex("abc", 3, hex);
    ck_assert_str_eq(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    const char *m = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    sha256_hex(m, strlen(m), hex);
    ck_assert_str_eq(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}
END_TEST

START_TEST(dense_matches_manifest) { check_against_manifest("tiny-qwen3vl", 1); }
END_TEST

START_TEST(moe_matches_manifest) { check_against_manifest("tiny-qwen3vl-moe", 2); }
END_TEST

START_TEST(usage_and_runtime_errors) {
    char cmd[8192], *o, *e;
    snprintf(cmd, sizeof cmd, "%s synth -c x.json -o /tmp/x", build_path("qvl"));
    ck_assert_int_eq(run_cmd(cmd, &o, &e), 2);
    ck_assert_msg(strstr(e, "--seed N is required"), "%s", e);
    free(o); free(e);
    snprintf(cmd, sizeof cmd, "%s synth -c /nonexistent/config.json --seed 1 -o %s", build_path("qvl"), tmp_dir("bad"));
    ck_assert_int_eq(run_cmd(cmd, &o, &e), 1);
    ck_assert_msg(strstr(e, "/nonexistent/config.json") && !strchr(strchr(e, '\n') + 1, '\n'), "%s", e);
    free(o); free(e);
    snprintf(cmd, sizeof cmd, "%s synth -c %s/models/tiny-qwen3vl/config.json --seed -3 -o /tmp/x", build_path("qvl"), TEST_DATA);
    ck_assert_int_eq(run_cmd(cmd, &o, &e), 2);
    ck_assert_msg(strstr(e, "--seed"), "%s", e);
    free(o); free(e);
}
END_TEST

int main(void) {
    Suite *s = suite_create("synth");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, sha256_known_answers);
    tcase_add_test(tc, dense_matches_manifest);
    tcase_add_test(tc, moe_matches_manifest);
    tcase_add_test(tc, usage_and_runtime_errors);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
