/* test_bench.c - `qvl bench` end to end, through the built binary.
 *
 * A benchmark's figures cannot be checked against fixed values, so this checks
 * what can be known without running it: that it runs on the built-in demo
 * model and on a synthetic checkpoint without a tokenizer (tiny --pp/--tg),
 * that the last line of stdout is one JSON object holding every figure, and
 * that the figures which follow from the model's files are the ones those
 * files imply (image tokens, KV cache bytes, weight bytes, prompt length).
 * Also: bad arguments are usage errors (exit 2), a bad model directory is a
 * one-line runtime error (exit 1). */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ops.h"
#include "testutil.h"

/* Runs `qvl bench ARGS`; returns the exit status. */
static int bench(const char *args, char **out, char **err) {
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "%s bench %s < /dev/null", build_path("qvl"), args);
    return run_cmd(cmd, out, err);
}

/* The last non-empty line of s, parsed. */
static cJSON *last_line_json(const char *s) {
    const char *end = s + strlen(s);
    while (end > s && end[-1] == '\n') end--;
    const char *start = end;
    while (start > s && start[-1] != '\n') start--;
    char *line = strndup(start, (size_t)(end - start));
    cJSON *j = cJSON_Parse(line);
    ck_assert_msg(j != NULL, "the last line is not JSON: %s", line);
    free(line);
    return j;
}

static int count_lines(const char *s) {
    int n = 0;
    for (; *s; s++) n += *s == '\n';
    return n;
}

/* Every field the JSON line must have, and its kind. */
enum { STRING, NUMBER, STRING_OR_NULL };
static const struct { const char *key; int kind; } FIELDS[] = {
    { "model", 0 }, { "dtype", 0 }, { "params", 1 }, { "text_params", 1 }, { "vision_params", 1 },
    { "weights_bytes", 1 }, { "threads", 1 }, { "kernel", 0 }, { "matmul", 0 }, { "openblas_core", 0 }, { "quant", 0 },
    { "quant_kernel", STRING_OR_NULL }, { "reps", 1 }, { "load_s", 1 }, { "quantize_s", 1 }, { "warmup_s", 1 }, { "pp_tokens", 1 }, { "pp_tok_s", 1 }, { "pp_tok_s_sd", 1 },
    { "tg_tokens", 1 }, { "tg_tok_s", 1 }, { "tg_tok_s_sd", 1 },
    { "decode_bytes_per_token", 1 }, { "read_gb_s", 1 }, { "tg_limit_tok_s", 1 },
    { "img448x448_size", 0 }, { "img448x448_tokens", 1 }, { "img448x448_preprocess_ms", 1 },
    { "img448x448_preprocess_ms_sd", 1 }, { "img448x448_encode_ms", 1 }, { "img448x448_encode_ms_sd", 1 },
    { "img1024x768_size", 0 }, { "img1024x768_tokens", 1 }, { "img1024x768_preprocess_ms", 1 },
    { "img1024x768_preprocess_ms_sd", 1 }, { "img1024x768_encode_ms", 1 }, { "img1024x768_encode_ms_sd", 1 },
    { "ttft_prompt_tokens", 1 }, { "ttft_ms", 1 }, { "ttft_ms_sd", 1 }, { "ctx", 1 }, { "kv_dtype", 0 },
    { "kv_bytes_per_token", 1 }, { "kv_bytes", 1 }, { "peak_rss_bytes", 1 },
};

static double num(const cJSON *j, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    ck_assert_msg(cJSON_IsNumber(v), "%s is not a number", key);
    return v->valuedouble;
}

static const char *str(const cJSON *j, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, key);
    ck_assert_msg(cJSON_IsString(v), "%s is not a string", key);
    return v->valuestring;
}

static void check_fields(const cJSON *j) {
    size_t n = sizeof FIELDS / sizeof *FIELDS;
    for (size_t i = 0; i < n; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(j, FIELDS[i].key);
        if (FIELDS[i].kind == NUMBER) num(j, FIELDS[i].key);
        else if (FIELDS[i].kind == STRING || !cJSON_IsNull(v)) str(j, FIELDS[i].key);
    }
    ck_assert_int_eq(cJSON_GetArraySize(j), (int)n);   /* and nothing unexpected */
}

/* Times and rates are positive; the peak RSS covers at least the weights
 * (the built-in model is linked into the program, a directory's is mapped
 * and read during the warm-up). */
static void check_measured(const cJSON *j) {
    static const char *const positive[] = {
        "load_s", "pp_tok_s", "tg_tok_s", "img448x448_encode_ms", "img1024x768_encode_ms", "ttft_ms",
        "img448x448_preprocess_ms", "img1024x768_preprocess_ms",
    };
    for (size_t i = 0; i < sizeof positive / sizeof *positive; i++)
        ck_assert_msg(num(j, positive[i]) > 0, "%s = %g", positive[i], num(j, positive[i]));
    ck_assert_msg(num(j, "pp_tok_s_sd") >= 0 && num(j, "tg_tok_s_sd") >= 0, "negative deviation");
    ck_assert(num(j, "peak_rss_bytes") >= num(j, "weights_bytes"));
    /* a token reads most of the text weights, never more than all weights */
    ck_assert(num(j, "decode_bytes_per_token") > 0 && num(j, "decode_bytes_per_token") < num(j, "weights_bytes"));
    ck_assert(num(j, "read_gb_s") > 0);
    ck_assert(fabs(num(j, "tg_limit_tok_s") - num(j, "read_gb_s") * 1e9 / num(j, "decode_bytes_per_token")) <
              1e-3 * num(j, "tg_limit_tok_s") + 1e-3);
}

/* Both the demo model and the tiny synthetic ones allow at most 16384 pixels
 * per image (preprocessor_config.json), with 16-pixel patches merged 2x2, so
 * smart_resize works in steps of 32:
 *   448x448:  448^2 > 16384, beta = 448/128 = 3.5, each side floor(448/3.5/32)*32
 *             = 128 -> 128x128, 8x8 patches, 16 tokens;
 *   1024x768: beta = sqrt(1024*768/16384) = sqrt(48) = 6.93; width
 *             floor(1024/6.93/32) = 4 -> 128, height floor(768/6.93/32) = 3 -> 96
 *             -> 128x96, 8x6 patches, 12 tokens.
 * The question about the 1024x768 picture: 12 text tokens + vision start/end
 * + 12 image tokens = 26. */
static void check_images(const cJSON *j) {
    ck_assert_str_eq(str(j, "img448x448_size"), "128x128");
    ck_assert_int_eq((int)num(j, "img448x448_tokens"), 16);
    ck_assert_str_eq(str(j, "img1024x768_size"), "128x96");
    ck_assert_int_eq((int)num(j, "img1024x768_tokens"), 12);
    ck_assert_int_eq((int)num(j, "ttft_prompt_tokens"), 26);
}

START_TEST(demo_model_json_only) {
    char *out, *err;
    int st = bench("--pp 8 --tg 4 --reps 2 -t 1 --json-only", &out, &err);
    ck_assert_msg(st == 0, "exit %d: %s", st, err);
    ck_assert_int_eq(count_lines(out), 1);
    ck_assert_str_eq(err, "");          /* --json-only: no progress either */
    cJSON *j = last_line_json(out);
    check_fields(j);
    check_measured(j);
    check_images(j);
    ck_assert_str_eq(str(j, "model"), "built-in demo model");
    ck_assert_str_eq(str(j, "quant"), "none");
    ck_assert_str_eq(str(j, "matmul"), "f32");
    ck_assert(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(j, "quant_kernel")));
    ck_assert_int_eq((int)num(j, "pp_tokens"), 8);
    ck_assert_int_eq((int)num(j, "tg_tokens"), 4);
    ck_assert_int_eq((int)num(j, "reps"), 2);
    ck_assert_int_eq((int)num(j, "threads"), 1);
    /* assets/demo-model/config.json: 4 layers, 2 KV heads of 48, float32
     * keys and values: 2 * 4 * 2 * 48 * 4 bytes per token; 8 + 4 tokens. */
    ck_assert_str_eq(str(j, "kv_dtype"), "f32");
    ck_assert_int_eq((long long)num(j, "kv_bytes_per_token"), 3072);
    ck_assert_int_eq((int)num(j, "ctx"), 12);
    ck_assert_int_eq((long long)num(j, "kv_bytes"), 12 * 3072);
    ck_assert_str_eq(str(j, "dtype"), "BF16");
    ck_assert_int_eq((long long)num(j, "weights_bytes"), 2 * (long long)num(j, "params"));
    ck_assert_int_eq((long long)num(j, "params"),
                     (long long)num(j, "text_params") + (long long)num(j, "vision_params"));
    cJSON_Delete(j);
    free(out);
    free(err);
}
END_TEST

/* The human table comes first, the JSON line last; progress goes to stderr. */
START_TEST(demo_model_table) {
    char *out, *err;
    int st = bench("--pp 6 --tg 3 --reps 1", &out, &err);
    ck_assert_msg(st == 0, "exit %d: %s", st, err);
    ck_assert_msg(strstr(out, "prompt processing (pp6)") != NULL, "no pp row in:\n%s", out);
    ck_assert_msg(strstr(out, "generation (tg3 after 6 tokens)") != NULL, "no tg row in:\n%s", out);
    ck_assert_msg(strstr(out, "time to first token") != NULL, "no ttft row in:\n%s", out);
    ck_assert_msg(strstr(out, "peak RSS") != NULL, "no RSS row in:\n%s", out);
    ck_assert_msg(strstr(err, "qvl bench: prompt processing") != NULL, "no progress on stderr: %s", err);
    cJSON *j = last_line_json(out);
    check_fields(j);
    ck_assert_int_eq((int)num(j, "pp_tokens"), 6);
    cJSON_Delete(j);
    free(out);
    free(err);
}
END_TEST

static int is_null(const cJSON *j, const char *key) {
    return cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(j, key));
}

/* A skipped measurement is null, not zero; the others are still there. */
START_TEST(skipped_measurements_are_null) {
    char *out, *err;
    int st = bench("--pp 0 --tg 0 --reps 1 --json-only", &out, &err);
    ck_assert_msg(st == 0, "exit %d: %s", st, err);
    cJSON *j = last_line_json(out);
    ck_assert(is_null(j, "pp_tok_s") && is_null(j, "pp_tok_s_sd"));
    ck_assert(is_null(j, "tg_tok_s") && is_null(j, "tg_tok_s_sd"));
    ck_assert(is_null(j, "read_gb_s") && is_null(j, "tg_limit_tok_s"));
    ck_assert(num(j, "img448x448_encode_ms") > 0);
    cJSON_Delete(j);
    free(out);
    free(err);

    static const char *const image_fields[] = {
        "img448x448_size", "img448x448_tokens", "img448x448_preprocess_ms", "img448x448_encode_ms",
        "img1024x768_size", "img1024x768_tokens", "img1024x768_preprocess_ms", "img1024x768_encode_ms",
        "ttft_prompt_tokens", "ttft_ms", "ttft_ms_sd",
    };
    st = bench("--pp 3 --tg 2 --reps 1 --no-images --json-only", &out, &err);
    ck_assert_msg(st == 0, "exit %d: %s", st, err);
    j = last_line_json(out);
    for (size_t i = 0; i < sizeof image_fields / sizeof *image_fields; i++)
        ck_assert_msg(is_null(j, image_fields[i]), "--no-images: %s is not null", image_fields[i]);
    ck_assert(num(j, "pp_tok_s") > 0 && num(j, "tg_tok_s") > 0);
    ck_assert_int_eq(cJSON_GetArraySize(j), (int)(sizeof FIELDS / sizeof *FIELDS));
    cJSON_Delete(j);
    free(out);
    free(err);
}
END_TEST

/* Bytes after a safetensors file's header: the tensors' data. */
static long long safetensors_data_bytes(const char *path) {
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "%s missing (run `make check` to generate it)", path);
    unsigned char b[8];
    ck_assert_int_eq(fread(b, 1, 8, f), 8);
    fclose(f);
    unsigned long long hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | b[i];
    struct stat st;
    ck_assert_int_eq(stat(path, &st), 0);
    return (long long)st.st_size - 8 - (long long)hlen;
}

/* A synthetic checkpoint: no tokenizer.json, prompts go in as ids. */
START_TEST(synthetic_model_without_tokenizer) {
    char dir[4096], file[4200], tok[4200], args[4400];
    snprintf(dir, sizeof dir, "%s", build_path("tests/models/tiny-qwen3vl"));
    snprintf(file, sizeof file, "%s/model.safetensors", dir);
    snprintf(tok, sizeof tok, "%s/tokenizer.json", dir);
    struct stat sb;
    ck_assert_msg(stat(tok, &sb) != 0, "%s has a tokenizer; this test wants one without", dir);
    snprintf(args, sizeof args, "-m '%s' --pp 5 --tg 3 --reps 1 -t 2 --json-only", dir);
    char *out, *err;
    int st = bench(args, &out, &err);
    ck_assert_msg(st == 0, "exit %d: %s", st, err);
    cJSON *j = last_line_json(out);
    check_fields(j);
    check_measured(j);
    check_images(j);
    ck_assert_str_eq(str(j, "model"), dir);
    /* tests/data/models/tiny-qwen3vl/config.json: 4 layers, 2 KV heads of 32. */
    ck_assert_int_eq((long long)num(j, "kv_bytes_per_token"), 2 * 4 * 2 * 32 * 4);
    ck_assert_int_eq((long long)num(j, "weights_bytes"), safetensors_data_bytes(file));
    ck_assert_int_eq((int)num(j, "threads"), 2);
    cJSON_Delete(j);
    free(out);
    free(err);
}
END_TEST

/* --quant: the matrices are converted at load, and --matmul's default then
 * runs the products left in float with bf16 activations (where the CPU has
 * AVX512_BF16), as the chat does.  q4 stores half the
 * bytes per weight of q8, so its total is smaller; both differ from the
 * stored checkpoint.  (Whether they are below it depends on the model: the
 * tiny one is mostly its tied embedding, which keeps its bf16 rows for the
 * lookup and gains a quantized copy as lm_head.) */
START_TEST(quantized_weights_shrink) {
    char args[4400], *out, *err;
    double bytes[3], decoded[3];
    static const char *const q[] = { "none", "q8", "q4" };
    for (int i = 0; i < 3; i++) {
        snprintf(args, sizeof args, "-m '%s' --quant %s --pp 4 --tg 2 --reps 1 --json-only",
                 build_path("tests/models/tiny-qwen3vl"), q[i]);
        int st = bench(args, &out, &err);
        ck_assert_msg(st == 0, "--quant %s: exit %d: %s", q[i], st, err);
        cJSON *j = last_line_json(out);
        check_fields(j);
        ck_assert_str_eq(str(j, "quant"), q[i]);
        ck_assert_int_eq(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(j, "quant_kernel")), i == 0);
        ck_assert_str_eq(str(j, "matmul"), i && ops_bf16_matmul_supported() ? "bf16" : "f32");
        ck_assert(num(j, "tg_tok_s") > 0);
        bytes[i] = num(j, "weights_bytes");
        decoded[i] = num(j, "decode_bytes_per_token");
        cJSON_Delete(j);
        free(out);
        free(err);
    }
    ck_assert_msg(bytes[2] < bytes[1] && bytes[1] != bytes[0], "weights: bf16 %.0f, q8 %.0f, q4 %.0f bytes",
                  bytes[0], bytes[1], bytes[2]);
    /* tests/data/models/tiny-qwen3vl/config.json: 4 layers of hidden 64, 4
     * query and 2 KV heads of 32, MLP 160; the tied lm_head of 151936 rows,
     * one embedding row; all bf16.  The vision encoder's matrices are read
     * by pictures only, so they are not counted. */
    long long per_layer = 128 * 64 + 2 * (64 * 64) + 64 * 128 + 3 * (160 * 64);
    ck_assert_int_eq((long long)decoded[0], 2 * (4 * per_layer + 151936LL * 64 + 64));
    /* a generated token reads the quantized matrices: fewer bytes at fewer bits */
    ck_assert_msg(decoded[1] < 0.6 * decoded[0] && decoded[2] < decoded[1],
                  "bytes per token: bf16 %.0f, q8 %.0f, q4 %.0f", decoded[0], decoded[1], decoded[2]);
}
END_TEST

/* A checkpoint written by `qvl quantize` is reported as what it is: its
 * quantization, and the parameters of the matrices (not their bytes); it
 * takes --matmul's quantized default as one quantized at load does. */
START_TEST(quantized_checkpoint_is_reported) {
    char cmd[8192], args[4400], *out, *err;
    const char *dir = tmp_dir("bench-q4");
    snprintf(cmd, sizeof cmd, "%s quantize -m '%s' -o '%s' --quant q4", build_path("qvl"),
             build_path("tests/models/tiny-qwen3vl"), dir);
    ck_assert_msg(run_cmd(cmd, &out, &err) == 0, "qvl quantize: %s", err);
    free(out); free(err);
    double params[2], text[2], vision[2];
    const char *models[2] = { build_path("tests/models/tiny-qwen3vl"), dir };
    for (int i = 0; i < 2; i++) {
        snprintf(args, sizeof args, "-m '%s' --pp 4 --tg 2 --reps 1 --no-images --json-only", models[i]);
        ck_assert_msg(bench(args, &out, &err) == 0, "%s", err);
        cJSON *j = last_line_json(out);
        params[i] = num(j, "params");
        text[i] = num(j, "text_params");
        vision[i] = num(j, "vision_params");
        ck_assert_str_eq(str(j, "quant"), i ? "q4" : "none");
        ck_assert_int_eq(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(j, "quant_kernel")), i == 0);
        ck_assert_str_eq(str(j, "matmul"), i && ops_bf16_matmul_supported() ? "bf16" : "f32");
        cJSON_Delete(j);
        free(out); free(err);
    }
    ck_assert_msg(params[0] == params[1], "params: as stored %.0f, quantized checkpoint %.0f", params[0], params[1]);
    /* the vision encoder's matrices are quantized too, and still counted as vision */
    ck_assert_msg(text[0] == text[1] && vision[0] == vision[1], "text %.0f / %.0f, vision %.0f / %.0f params",
                  text[0], text[1], vision[0], vision[1]);
}
END_TEST

/* --matmul bf16 is reported, and runs where the CPU has AVX512_BF16 (an
 * error naming the option elsewhere). */
START_TEST(bf16_matmul_is_reported) {
    char *out, *err;
    int st = bench("--pp 8 --tg 2 --reps 1 --no-images --matmul bf16 --json-only", &out, &err);
    if (st == 1) {
        ck_assert_str_eq(err, "qvl bench: --matmul bf16: this CPU lacks AVX512_BF16\n");
    } else {
        ck_assert_msg(st == 0, "exit %d: %s", st, err);
        cJSON *j = last_line_json(out);
        ck_assert_str_eq(str(j, "matmul"), "bf16");
        ck_assert(num(j, "pp_tok_s") > 0);
        cJSON_Delete(j);
    }
    free(out);
    free(err);
}
END_TEST

/* --kv-cache f16: keys and values as halves, half the bytes per token (the
 * demo model's 2 * 4 layers * 2 heads * 48 values, 2 bytes each), in the
 * JSON line and the table; generation still runs. */
START_TEST(kv_cache_f16_halves_the_bytes) {
    char *out, *err;
    int st = bench("--kv-cache f16 --pp 8 --tg 4 --reps 1", &out, &err);
    ck_assert_msg(st == 0, "exit %d: %s", st, err);
    cJSON *j = last_line_json(out);
    check_fields(j);
    ck_assert_str_eq(str(j, "kv_dtype"), "f16");
    ck_assert_int_eq((long long)num(j, "kv_bytes_per_token"), 2 * 4 * 2 * 48 * 2);
    ck_assert_int_eq((long long)num(j, "kv_bytes"), 12 * 1536);
    ck_assert(num(j, "pp_tok_s") > 0 && num(j, "tg_tok_s") > 0);
    ck_assert_msg(strstr(out, "KV cache (f16, 12 tokens)") != NULL, "no f16 KV row in:\n%s", out);
    cJSON_Delete(j);
    free(out);
    free(err);
}
END_TEST

START_TEST(usage_errors) {
    static const char *const bad[] = {
        "--quant q5", "--quant", "--matmul f16", "--matmul", "--kv-cache q8", "--kv-cache",
        "--pp x", "--pp -1", "--tg 1.5", "--reps 0", "-t 0", "--bogus", "--pp", "stray",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char *out, *err;
        int st = bench(bad[i], &out, &err);
        ck_assert_msg(st == 2, "`qvl bench %s`: exit %d, want 2", bad[i], st);
        ck_assert_msg(strncmp(err, "qvl bench: ", 11) == 0, "`qvl bench %s`: stderr %s", bad[i], err);
        ck_assert_str_eq(out, "");
        free(out);
        free(err);
    }
    char *out, *err;
    ck_assert_int_eq(bench("--help", &out, &err), 0);
    ck_assert(strstr(out, "usage: qvl bench") != NULL);
    free(out);
    free(err);
}
END_TEST

/* A directory that is not a checkpoint: one line naming it, exit 1. */
START_TEST(bad_model_dir) {
    char *out, *err;
    int st = bench("-m /nonexistent/qvl-model --json-only", &out, &err);
    ck_assert_int_eq(st, 1);
    ck_assert_int_eq(count_lines(err), 1);
    ck_assert_msg(strstr(err, "/nonexistent/qvl-model") != NULL, "stderr does not name the directory: %s", err);
    ck_assert_str_eq(out, "");
    free(out);
    free(err);
}
END_TEST

int main(void) {
    Suite *s = suite_create("bench");
    TCase *tc = tcase_create("bench");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, demo_model_json_only);
    tcase_add_test(tc, demo_model_table);
    tcase_add_test(tc, skipped_measurements_are_null);
    tcase_add_test(tc, synthetic_model_without_tokenizer);
    tcase_add_test(tc, quantized_weights_shrink);
    tcase_add_test(tc, kv_cache_f16_halves_the_bytes);
    tcase_add_test(tc, usage_errors);
    tcase_add_test(tc, bf16_matmul_is_reported);
    tcase_add_test(tc, quantized_checkpoint_is_reported);
    tcase_add_test(tc, bad_model_dir);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
