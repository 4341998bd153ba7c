/* test_config.c - config.json in both the transformers 4.x and 5.x forms, and
 * the errors for missing or invalid keys; preprocessor and generation configs. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "config.h"
#include "testutil.h"

static qvl_config load(const char *rel) {
    qvl_source src = source_dir(data_path(rel));
    qvl_config c;
    char err[QVL_ERR_MAX];
    ck_assert_msg(config_load(&src, &c, err) == 0, "%s", err);
    return c;
}

START_TEST(reads_4x_form) {
    qvl_config c = load("models/tiny-qwen3vl");
    ck_assert_str_eq(c.model_type, "qwen3_vl");
    ck_assert_int_eq(c.is_moe, 0);
    ck_assert_int_eq(c.text.hidden, 64);
    ck_assert_int_eq(c.text.head_dim, 32);
    ck_assert_int_eq(c.text.heads, 4);
    ck_assert_int_eq(c.text.kv_heads, 2);
    ck_assert_int_eq(c.text.vocab, 151936);
    ck_assert(c.text.rope_theta == 5000000.0);
    ck_assert_int_eq(c.text.mrope_section[0], 6);
    ck_assert_int_eq(c.text.mrope_section[2], 5);
    ck_assert_int_eq(c.text.mrope_interleaved, 1);
    ck_assert_int_eq(c.text.tie_embeddings, 1);
    ck_assert_int_eq(c.vision.depth, 3);
    ck_assert_int_eq(c.vision.n_deepstack, 2);
    ck_assert_int_eq(c.vision.deepstack_idx[1], 2);
    ck_assert_int_eq(c.vision.num_pos_embed, 64);
    ck_assert_int_eq(c.image_token_id, 151655);
    ck_assert_int_eq(c.vision_start_id, 151652);
}
END_TEST

START_TEST(reads_5x_form) {
    /* the demo model uses rope_parameters */
    qvl_source src = source_dir(BUILD_DIR "/../assets/demo-model");
    qvl_config c;
    char err[QVL_ERR_MAX];
    char *json = slurp(data_path("../../assets/demo-model/config.json"), NULL);
    ck_assert_msg(config_parse(json, "demo/config.json", &c, err) == 0, "%s", err);
    free(json);
    (void)src;
    ck_assert_int_eq(c.text.hidden, 192);
    ck_assert_int_eq(c.text.head_dim, 48);
    ck_assert_int_eq(c.text.mrope_section[1], 8);
    ck_assert(c.text.rope_theta == 5000000.0);
    ck_assert_int_eq(c.image_token_id, 6);
    ck_assert_int_eq(c.vision.deepstack_idx[0], 1);
}
END_TEST

START_TEST(reads_moe) {
    qvl_config c = load("models/tiny-qwen3vl-moe");
    ck_assert_int_eq(c.is_moe, 1);
    ck_assert_int_eq(c.text.num_experts, 8);
    ck_assert_int_eq(c.text.experts_per_tok, 2);
    ck_assert_int_eq(c.text.moe_intermediate, 48);
    for (int i = 0; i < 4; i++) ck_assert(config_layer_is_sparse(&c, i));
    c.text.mlp_only_layers[0] = 2;
    c.text.n_mlp_only = 1;
    ck_assert(!config_layer_is_sparse(&c, 2));
    c.text.decoder_sparse_step = 2;
    ck_assert(config_layer_is_sparse(&c, 1) && !config_layer_is_sparse(&c, 0));
}
END_TEST

/* Removes the first occurrence of `key` (a "key": value pair, value without commas) from the text. */
static char *without(const char *json, const char *key) {
    char *s = strdup(json);
    char pat[128];
    snprintf(pat, sizeof pat, "\"%s\":", key);
    char *p = strstr(s, pat);
    ck_assert_msg(p != NULL, "no %s in config", key);
    char *end = p + strlen(pat);
    int depth = 0;
    while (*end && (depth > 0 || (*end != ',' && *end != '}'))) {
        if (*end == '[' || *end == '{') depth++;
        if (*end == ']' || *end == '}') depth--;
        end++;
    }
    if (*end == ',') end++;
    memmove(p, end, strlen(end) + 1);
    return s;
}

static void expect_error(const char *json, const char *needle) {
    qvl_config c;
    char err[QVL_ERR_MAX] = "";
    ck_assert_msg(config_parse(json, "x/config.json", &c, err) != 0, "parsed but should fail (%s)", needle);
    ck_assert_msg(strstr(err, needle) != NULL, "error '%s' lacks '%s'", err, needle);
    ck_assert_msg(strstr(err, "x/config.json") != NULL, "error '%s' does not name the file", err);
}

START_TEST(missing_keys_are_named) {
    char *json = slurp(data_path("models/tiny-qwen3vl/config.json"), NULL);
    const char *keys[] = { "hidden_size", "num_hidden_layers", "vocab_size", "rms_norm_eps", "mrope_section",
                           "depth", "image_token_id" };
    const char *named[] = { "text_config.hidden_size", "text_config.num_hidden_layers", "text_config.vocab_size",
                            "text_config.rms_norm_eps", "rope_scaling.mrope_section", "vision_config.depth",
                            "image_token_id" };
    for (size_t i = 0; i < sizeof keys / sizeof *keys; i++) {
        char *cut = without(json, keys[i]);
        expect_error(cut, named[i]);
        free(cut);
    }
    char *no_theta = without(json, "rope_theta");
    expect_error(no_theta, "rope_theta");
    free(no_theta);
    free(json);
}
END_TEST

START_TEST(invalid_values) {
    expect_error("{", "not a valid JSON");
    expect_error("{\"model_type\":\"llama\"}", "supported: qwen3_vl, qwen3_vl_moe");
    char *json = slurp(data_path("models/tiny-qwen3vl/config.json"), NULL);
    char *p = strstr(json, "\"hidden_size\": 64,");
    ck_assert(p);
    memcpy(p, "\"hidden_size\":\"x\",", 18); /* same length: "hidden_size": 64, */
    expect_error(json, "text_config.hidden_size must be an integer");
    free(json);
}
END_TEST

START_TEST(missing_config_file) {
    qvl_source src = source_dir(tmp_dir("noconfig"));
    qvl_config c;
    char err[QVL_ERR_MAX];
    ck_assert(config_load(&src, &c, err) != 0);
    ck_assert_msg(strstr(err, "config.json: no such file"), "%s", err);
}
END_TEST

START_TEST(preprocessor_forms) {
    qvl_preproc p;
    char err[QVL_ERR_MAX];
    qvl_source src = source_dir(data_path("models/tiny-qwen3vl"));
    ck_assert(preproc_load(&src, &p, err) == 0);
    ck_assert_int_eq(p.min_pixels, 4096);
    ck_assert_int_eq(p.max_pixels, 16384);
    ck_assert_int_eq(p.patch, 16);
    ck_assert_float_eq(p.mean[1], 0.5f);
    ck_assert(preproc_parse("{\"min_pixels\": 3136, \"max_pixels\": 12845056, \"image_std\":[0.2,0.3,0.4]}", "p", &p, err) == 0);
    ck_assert_int_eq(p.min_pixels, 3136);
    ck_assert_int_eq(p.max_pixels, 12845056);
    ck_assert_float_eq_tol(p.std[2], 0.4f, 1e-7);
    ck_assert(preproc_parse("{\"min_pixels\": 9, \"max_pixels\": 4}", "p.json", &p, err) != 0);
    ck_assert_msg(strstr(err, "p.json") && strstr(err, "min_pixels"), "%s", err);
    qvl_source none = source_dir(tmp_dir("nopre"));
    ck_assert(preproc_load(&none, &p, err) == 0);
    ck_assert_int_eq(p.max_pixels, 16777216);
}
END_TEST

START_TEST(generation_config) {
    qvl_genconfig g;
    char err[QVL_ERR_MAX];
    ck_assert(genconfig_parse("{\"eos_token_id\":[2,0],\"do_sample\":false}", "g", &g, err) == 0);
    ck_assert_int_eq(g.n_eos, 2);
    ck_assert_int_eq(g.eos[1], 0);
    ck_assert(g.has_do_sample && !g.do_sample && !g.has_temperature);
    ck_assert(genconfig_parse("{\"eos_token_id\":151645,\"temperature\":0.7,\"top_k\":20,\"top_p\":0.8}", "g", &g, err) == 0);
    ck_assert_int_eq(g.eos[0], 151645);
    ck_assert(g.has_top_k && g.top_k == 20 && g.has_temperature);
    ck_assert_float_eq_tol(g.top_p, 0.8f, 1e-7);
    /* absent file: the Qwen eos ids */
    qvl_config c = load("models/tiny-qwen3vl");
    qvl_source none = source_dir(tmp_dir("nogen"));
    ck_assert(genconfig_load(&none, &c, &g, err) == 0);
    ck_assert_int_eq(g.n_eos, 2);
    ck_assert_int_eq(g.eos[0], 151645);
}
END_TEST

int main(void) {
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, reads_4x_form);
    tcase_add_test(tc, reads_5x_form);
    tcase_add_test(tc, reads_moe);
    tcase_add_test(tc, missing_keys_are_named);
    tcase_add_test(tc, invalid_values);
    tcase_add_test(tc, missing_config_file);
    tcase_add_test(tc, preprocessor_forms);
    tcase_add_test(tc, generation_config);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
