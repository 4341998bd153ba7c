/* test_safetensors.c - reading single and sharded safetensors files, and
 * rejecting every kind of malformed file with its own message. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "safetensors.h"
#include "testutil.h"

/* Writes a file made of an 8-byte length, the given header text and `datalen` data bytes
 * (value i & 0xff). hdrlen_override >= 0 replaces the length field. */
static void write_raw(const char *path, const char *header, size_t datalen, long long hdrlen_override) {
    size_t hl = strlen(header);
    uint64_t field = hdrlen_override >= 0 ? (uint64_t)hdrlen_override : hl;
    FILE *f = fopen(path, "wb");
    ck_assert(f != NULL);
    for (int i = 0; i < 8; i++) fputc((int)((field >> (8 * i)) & 0xff), f);
    fwrite(header, 1, hl, f);
    for (size_t i = 0; i < datalen; i++) fputc((int)(i & 0xff), f);
    fclose(f);
}

static const char *file_in(const char *dir, const char *name) {
    static char buf[4][4096];
    static int k;
    char *b = buf[k++ & 3];
    snprintf(b, 4096, "%s/%s", dir, name);
    return b;
}

/* Opening must fail and the message must contain `needle`. */
static void expect_open_error(const char *path, const char *needle) {
    char err[QVL_ERR_MAX] = "";
    st_set *s = st_open_file(path, err);
    ck_assert_msg(s == NULL, "%s opened but should not", path);
    ck_assert_msg(strstr(err, needle) != NULL, "error '%s' lacks '%s'", err, needle);
}

START_TEST(reads_dtypes_and_values) {
    const char *d = tmp_dir("st");
    const char *p = file_in(d, "ok.safetensors");
    /* f32 [2], f16 [2], bf16 [1,2] */
    float f32[2] = { 1.5f, -2.25f };
    uint16_t f16[2] = { qvl_f32_to_f16(0.5f), qvl_f32_to_f16(-3.0f) };
    uint16_t bf[2] = { qvl_f32_to_bf16(7.0f), qvl_f32_to_bf16(-0.125f) };
    st_spec specs[3] = {
        { "a", QVL_F32, 1, { 2 } }, { "b", QVL_F16, 1, { 2 } }, { "c", QVL_BF16, 2, { 1, 2 } },
    };
    FILE *f = fopen(p, "wb");
    char err[QVL_ERR_MAX];
    ck_assert_int_eq(st_write_header(f, specs, 3, "{\"format\":\"pt\"}", err), 0);
    fwrite(f32, 4, 2, f); fwrite(f16, 2, 2, f); fwrite(bf, 2, 2, f);
    fclose(f);
    st_set *s = st_open_file(p, err);
    ck_assert_msg(s != NULL, "%s", err);
    ck_assert_int_eq(st_count(s), 3);
    const st_tensor *a = st_find(s, "a"), *b = st_find(s, "b"), *c = st_find(s, "c");
    ck_assert(a && b && c && !st_find(s, "__metadata__") && !st_find(s, "zz"));
    ck_assert_int_eq(a->dtype, QVL_F32);
    ck_assert_int_eq(c->ndim, 2);
    ck_assert_int_eq(c->shape[1], 2);
    ck_assert_float_eq(((const float *)a->data)[1], -2.25f);
    ck_assert_float_eq(qvl_f16_to_f32(((const uint16_t *)b->data)[1]), -3.0f);
    ck_assert_float_eq(qvl_bf16_to_f32(((const uint16_t *)c->data)[0]), 7.0f);
    st_close(s);
}
END_TEST

START_TEST(rejects_truncated_file) {
    const char *d = tmp_dir("st");
    const char *p = file_in(d, "short.safetensors");
    write_file(p, "abc", 3);
    expect_open_error(p, "truncated");
    /* header fine, data cut short */
    const char *q = file_in(d, "cut.safetensors");
    write_raw(q, "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8, -1);
    expect_open_error(q, "run past the data area");
}
END_TEST

START_TEST(rejects_header_past_eof) {
    const char *p = file_in(tmp_dir("st"), "hlen.safetensors");
    write_raw(p, "{}", 0, 1000000);
    expect_open_error(p, "header length");
}
END_TEST

START_TEST(rejects_invalid_json) {
    const char *p = file_in(tmp_dir("st"), "json.safetensors");
    write_raw(p, "{\"w\":{\"dtype\":", 0, -1);
    expect_open_error(p, "not a valid JSON");
}
END_TEST

START_TEST(rejects_overlap_and_range) {
    const char *d = tmp_dir("st");
    const char *p = file_in(d, "overlap.safetensors");
    write_raw(p, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                 "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, -1);
    expect_open_error(p, "overlap");
    const char *q = file_in(d, "range.safetensors");
    write_raw(q, "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8, -1);
    expect_open_error(q, "invalid data_offsets");
    const char *r = file_in(d, "size.safetensors");
    write_raw(r, "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, -1);
    expect_open_error(r, "need 12");
}
END_TEST

START_TEST(rejects_unknown_dtype) {
    const char *p = file_in(tmp_dir("st"), "dtype.safetensors");
    write_raw(p, "{\"layer.w\":{\"dtype\":\"F8_E4M3\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2, -1);
    expect_open_error(p, "layer.w has unsupported dtype F8_E4M3");
}
END_TEST

START_TEST(rejects_missing_file) {
    expect_open_error("/nonexistent/x.safetensors", "/nonexistent/x.safetensors");
}
END_TEST

/* Two shards plus an index: tensors from both, looked up through one set. */
START_TEST(opens_sharded) {
    const char *d = tmp_dir("shard");
    write_raw(file_in(d, "model-00001-of-00002.safetensors"),
              "{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}", 4, -1);
    write_raw(file_in(d, "model-00002-of-00002.safetensors"),
              "{\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2, -1);
    const char *idx = "{\"metadata\":{},\"weight_map\":{\"a\":\"model-00001-of-00002.safetensors\","
                      "\"b\":\"model-00002-of-00002.safetensors\"}}";
    write_file(file_in(d, "model.safetensors.index.json"), idx, strlen(idx));
    qvl_source src = source_dir(d);
    char err[QVL_ERR_MAX];
    st_set *s = st_open_source(&src, err);
    ck_assert_msg(s != NULL, "%s", err);
    ck_assert_int_eq(st_count(s), 2);
    ck_assert_int_eq(st_find(s, "b")->shape[0], 2);
    ck_assert_int_eq(((const unsigned char *)st_find(s, "a")->data)[3], 3);
    st_close(s);
    /* An index naming a tensor its shard lacks. */
    const char *bad = "{\"weight_map\":{\"a\":\"model-00002-of-00002.safetensors\"}}";
    write_file(file_in(d, "model.safetensors.index.json"), bad, strlen(bad));
    ck_assert(st_open_source(&src, err) == NULL);
    ck_assert_msg(strstr(err, "tensor a is not in model-00002-of-00002.safetensors"), "%s", err);
    /* An index naming a shard that is not there. */
    const char *gone = "{\"weight_map\":{\"a\":\"model-00009.safetensors\"}}";
    write_file(file_in(d, "model.safetensors.index.json"), gone, strlen(gone));
    ck_assert(st_open_source(&src, err) == NULL);
    ck_assert_msg(strstr(err, "model-00009.safetensors"), "%s", err);
}
END_TEST

START_TEST(directory_without_weights) {
    qvl_source src = source_dir(tmp_dir("empty"));
    char err[QVL_ERR_MAX];
    ck_assert(st_open_source(&src, err) == NULL);
    ck_assert_msg(strstr(err, "no model.safetensors"), "%s", err);
}
END_TEST

START_TEST(opens_from_memory) {
    size_t len;
    char *buf = slurp(data_path("goldens/tiny-qwen3vl.safetensors"), &len);
    char err[QVL_ERR_MAX];
    st_set *s = st_open_mem(buf, len, "mem", err);
    ck_assert_msg(s != NULL, "%s", err);
    const st_tensor *t = st_find(s, "image.position_ids");
    ck_assert(t && t->dtype == QVL_I64 && t->shape[0] == 3);
    st_close(s);
    free(buf);
}
END_TEST

int main(void) {
    Suite *s = suite_create("safetensors");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, reads_dtypes_and_values);
    tcase_add_test(tc, rejects_truncated_file);
    tcase_add_test(tc, rejects_header_past_eof);
    tcase_add_test(tc, rejects_invalid_json);
    tcase_add_test(tc, rejects_overlap_and_range);
    tcase_add_test(tc, rejects_unknown_dtype);
    tcase_add_test(tc, rejects_missing_file);
    tcase_add_test(tc, opens_sharded);
    tcase_add_test(tc, directory_without_weights);
    tcase_add_test(tc, opens_from_memory);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
