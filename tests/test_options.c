/* test_options.c - the command line parser and the slash command parser.
 *
 * Options are parsed in-process (options_parse resets getopt), so every
 * validation message can be checked for naming the option; the exit codes
 * of the real program are checked end to end in test_cli.c. */
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "common.h"
#include "commands.h"
#include "dataurl.h"
#include "options.h"

/* Parses a NULL-terminated list of arguments after "qvl". */
static int parse(qvl_options *o, char *err, ...) {
    char *argv[64];
    int argc = 0;
    va_list ap;
    va_start(ap, err);
    argv[argc++] = (char *)"qvl";
    const char *a;
    while ((a = va_arg(ap, const char *)) != NULL) argv[argc++] = (char *)a;
    va_end(ap);
    argv[argc] = NULL;
    err[0] = 0;
    return options_parse(argc, argv, o, err);
}

/* Expects a usage error whose one-line message contains `want`. */
static void expect_error(const char *want, ...) {
    char *argv[64];
    int argc = 0;
    va_list ap;
    va_start(ap, want);
    argv[argc++] = (char *)"qvl";
    const char *a;
    while ((a = va_arg(ap, const char *)) != NULL) argv[argc++] = (char *)a;
    va_end(ap);
    argv[argc] = NULL;
    qvl_options o;
    char err[QVL_ERR_MAX] = "";
    int r = options_parse(argc, argv, &o, err);
    ck_assert_msg(r == -1, "expected an error mentioning '%s' for %s", want, argv[1]);
    ck_assert_msg(strstr(err, want) != NULL, "message '%s' does not mention '%s'", err, want);
    ck_assert_msg(strchr(err, '\n') == NULL, "message is not one line: %s", err);
    options_free(&o);
}

START_TEST(defaults) {
    qvl_options o;
    char err[QVL_ERR_MAX];
    unsetenv("QVL_IMAGES");
    ck_assert_int_eq(parse(&o, err, NULL), OPTIONS_RUN);
    ck_assert_ptr_null(o.model_dir);
    ck_assert_ptr_null(o.prompt);
    ck_assert_int_eq(o.ctx, 8192);
    ck_assert_int_eq(o.max_pixels, 0);          /* the session's default budget */
    ck_assert_int_eq(o.max_pixels_model, 0);
    ck_assert_int_eq(o.min_pixels, 0);
    ck_assert_int_eq(o.threads, 0);
    ck_assert_int_eq(o.max_tokens, 0);
    ck_assert_int_eq(o.logprobs, 0);
    ck_assert_int_eq(o.images_mode, QVL_IMAGES_AUTO);
    ck_assert(isnan(o.sampling.temperature) && isnan(o.sampling.top_p) && isnan(o.sampling.min_p));
    ck_assert(isnan(o.sampling.repeat_penalty) && isnan(o.sampling.presence_penalty));
    ck_assert_int_eq(o.sampling.top_k, -1);
    ck_assert_int_eq(o.sampling.greedy, 0);
    ck_assert_int_eq(o.sampling.has_seed, 0);
    options_free(&o);
}
END_TEST

START_TEST(every_option) {
    qvl_options o;
    char err[QVL_ERR_MAX];
    int r = parse(&o, err, "-m", "/models/x", "-s", "be brief", "-i", "a.png", "--image", "b.png",
                  "-p", "what?", "-n", "33", "--temp", "0.5", "--top-k", "7", "--top-p", "0.9",
                  "--min-p", "0.05", "--repeat-penalty", "1.1", "--presence-penalty", "-0.5",
                  "--seed", "99", "--greedy", "--ignore-eos", "-c", "2048", "-t", "3",
                  "--min-pixels", "4096", "--max-pixels", "65536", "--images", "blocks",
                  "--logprobs", "5", "--line", "-v", NULL);
    ck_assert_msg(r == OPTIONS_RUN, "%s", err);
    ck_assert_str_eq(o.model_dir, "/models/x");
    ck_assert_str_eq(o.system, "be brief");
    ck_assert_int_eq(o.nimages, 2);
    ck_assert_str_eq(o.images[0], "a.png");
    ck_assert_str_eq(o.images[1], "b.png");
    ck_assert_str_eq(o.prompt, "what?");
    ck_assert_int_eq(o.max_tokens, 33);
    ck_assert_float_eq_tol(o.sampling.temperature, 0.5f, 1e-6);
    ck_assert_int_eq(o.sampling.top_k, 7);
    ck_assert_float_eq_tol(o.sampling.top_p, 0.9f, 1e-6);
    ck_assert_float_eq_tol(o.sampling.min_p, 0.05f, 1e-6);
    ck_assert_float_eq_tol(o.sampling.repeat_penalty, 1.1f, 1e-6);
    ck_assert_float_eq_tol(o.sampling.presence_penalty, -0.5f, 1e-6);
    ck_assert(o.sampling.has_seed && o.sampling.seed == 99);
    ck_assert_int_eq(o.sampling.greedy, 1);
    ck_assert_int_eq(o.ignore_eos, 1);
    ck_assert_int_eq(o.ctx, 2048);
    ck_assert_int_eq(o.threads, 3);
    ck_assert_int_eq(o.min_pixels, 4096);
    ck_assert_int_eq(o.max_pixels, 65536);
    ck_assert_int_eq(o.images_mode, QVL_IMAGES_BLOCKS);
    ck_assert_int_eq(o.logprobs, 5);
    ck_assert_int_eq(o.line, 1);
    ck_assert_int_eq(o.verbose, 1);

    qvl_session_opts so;
    qvl_source src = source_dir("/models/x");
    options_session(&o, &src, &so);
    ck_assert_ptr_eq(so.model, &src);
    ck_assert_int_eq(so.ctx, 2048);
    ck_assert_int_eq(so.max_tokens, 33);
    ck_assert_int_eq(so.logprobs, 5);
    ck_assert_int_eq(so.max_pixels, 65536);
    ck_assert_int_eq(so.sampling.top_k, 7);
    ck_assert_str_eq(so.system, "be brief");
    options_free(&o);

    ck_assert_int_eq(parse(&o, err, "--model=/m", "--jsonl", "-q", "--max-pixels", "model", NULL), OPTIONS_RUN);
    ck_assert_str_eq(o.model_dir, "/m");
    ck_assert_int_eq(o.jsonl, 1);
    ck_assert_int_eq(o.quiet, 1);
    ck_assert_int_eq(o.max_pixels_model, 1);
    options_session(&o, &src, &so);
    ck_assert_int_eq(so.max_pixels_model, 1);
    ck_assert_int_eq(so.max_pixels, 0);
    options_free(&o);
}
END_TEST

START_TEST(help_and_version) {
    qvl_options o;
    char err[QVL_ERR_MAX];
    ck_assert_int_eq(parse(&o, err, "--help", NULL), OPTIONS_HELP);
    options_free(&o);
    ck_assert_int_eq(parse(&o, err, "-h", "--temp", "0.2", NULL), OPTIONS_HELP);
    options_free(&o);
    ck_assert_int_eq(parse(&o, err, "--version", NULL), OPTIONS_VERSION);
    options_free(&o);
    /* a bad option still wins over --help: the user must learn about it */
    ck_assert_int_eq(parse(&o, err, "--help", "--bogus", NULL), -1);
    options_free(&o);
}
END_TEST

/* The options issue 4 lists, in --help with their defaults. */
START_TEST(help_lists_every_option) {
    static const char *names[] = {
        "--model", "--system", "--image", "--prompt", "--max-tokens", "--temp", "--top-k",
        "--top-p", "--min-p", "--repeat-penalty", "--presence-penalty", "--seed", "--greedy",
        "--ignore-eos", "--ctx", "--threads", "--min-pixels", "--max-pixels", "--images",
        "--logprobs", "--jsonl", "--line", "--verbose", "--quiet", "--version", "--help",
        "-m,", "-s,", "-i,", "-p,", "-n,", "-c,", "-t,", "-v,", "-q,", "-h,",
        "default: 8192", "default: 1048576", "demo model", "synth", "tokenize", "dump", NULL
    };
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    options_usage(f);
    fclose(f);
    for (int i = 0; names[i]; i++)
        ck_assert_msg(strstr(text, names[i]) != NULL, "--help does not mention %s", names[i]);
    /* and each of them is accepted by the parser */
    for (int i = 0; names[i] && names[i][1] == '-'; i++) {
        qvl_options o;
        char err[QVL_ERR_MAX];
        int r = parse(&o, err, names[i], "1", NULL);
        ck_assert_msg(r != -1 || strstr(err, "unknown option") == NULL, "%s: %s", names[i], err);
        options_free(&o);
    }
    free(text);
}
END_TEST

/* --quant: the weights' precision at load, passed on to the session. */
START_TEST(quant_option) {
    qvl_options o;
    qvl_session_opts so;
    qvl_source src = source_dir("/models/x");
    char err[QVL_ERR_MAX];
    static const struct { const char *arg; qvl_quant q; } ok[] = {
        { "q8", QVL_QUANT_Q8 }, { "q4", QVL_QUANT_Q4 }, { "none", QVL_QUANT_NONE },
    };
    ck_assert_int_eq(parse(&o, err, NULL), OPTIONS_RUN);
    ck_assert_int_eq(o.quant, QVL_QUANT_NONE);
    options_free(&o);
    for (int i = 0; i < 3; i++) {
        ck_assert_msg(parse(&o, err, "--quant", ok[i].arg, NULL) == OPTIONS_RUN, "%s", err);
        ck_assert_int_eq(o.quant, ok[i].q);
        options_session(&o, &src, &so);
        ck_assert_int_eq(so.quant, ok[i].q);
        options_free(&o);
    }
    expect_error("--quant", "--quant", "q5", NULL);
    expect_error("--quant", "--quant", "Q8", NULL);
    expect_error("--quant", "--quant", "", NULL);
    expect_error("option --quant needs a value", "--quant", NULL);
}
END_TEST

/* --matmul: auto by default (the session resolves it), f32 or bf16 on
 * request, passed on to the session; matmul_name gives the option's spelling
 * back (qvl bench reports it). */
START_TEST(matmul_option) {
    qvl_options o;
    qvl_session_opts so;
    qvl_source src = source_dir("/models/x");
    char err[QVL_ERR_MAX];
    ck_assert_int_eq(parse(&o, err, NULL), OPTIONS_RUN);
    ck_assert_int_eq(o.bf16_matmul, QVL_MATMUL_AUTO);
    options_free(&o);
    static const char *const NAMES[] = { "auto", "f32", "bf16" };
    for (int bf16 = -1; bf16 < 2; bf16++) {
        ck_assert_msg(parse(&o, err, "--matmul", NAMES[bf16 + 1], NULL) == OPTIONS_RUN, "%s", err);
        ck_assert_int_eq(o.bf16_matmul, bf16);
        options_session(&o, &src, &so);
        ck_assert_int_eq(so.bf16_matmul, bf16);
        ck_assert_str_eq(matmul_name(so.bf16_matmul), NAMES[bf16 + 1]);
        options_free(&o);
    }
    expect_error("--matmul: expected auto, f32 or bf16, got 'f16'", "--matmul", "f16", NULL);
    expect_error("option --matmul needs a value", "--matmul", NULL);
}
END_TEST

/* --kv-cache: the KV cache's element type, passed on to the session;
 * kv_cache_name gives the option's spelling back (qvl bench reports it). */
START_TEST(kv_cache_option) {
    qvl_options o;
    qvl_session_opts so;
    qvl_source src = source_dir("/models/x");
    char err[QVL_ERR_MAX];
    static const struct { const char *arg; qvl_dtype t; } ok[] = { { "f16", QVL_F16 }, { "f32", QVL_F32 } };
    ck_assert_int_eq(parse(&o, err, NULL), OPTIONS_RUN);
    ck_assert_int_eq(o.kv_dtype, QVL_F32);
    options_session(&o, &src, &so);
    ck_assert_int_eq(so.kv_dtype, QVL_F32);
    options_free(&o);
    for (int i = 0; i < 2; i++) {
        ck_assert_msg(parse(&o, err, "--kv-cache", ok[i].arg, NULL) == OPTIONS_RUN, "%s", err);
        ck_assert_int_eq(o.kv_dtype, ok[i].t);
        options_session(&o, &src, &so);
        ck_assert_int_eq(so.kv_dtype, ok[i].t);
        ck_assert_str_eq(kv_cache_name(so.kv_dtype), ok[i].arg);
        options_free(&o);
    }
    /* The last one given wins, as for every option. */
    ck_assert_int_eq(parse(&o, err, "--kv-cache=f16", "--kv-cache", "f32", NULL), OPTIONS_RUN);
    ck_assert_int_eq(o.kv_dtype, QVL_F32);
    options_free(&o);
    expect_error("--kv-cache: expected f32 or f16, got 'bf16'", "--kv-cache", "bf16", NULL);
    expect_error("--kv-cache", "--kv-cache", "F16", NULL);
    expect_error("--kv-cache", "--kv-cache", "", NULL);
    expect_error("option --kv-cache needs a value", "--kv-cache", NULL);
}
END_TEST

START_TEST(bad_values_name_the_option) {
    expect_error("--temp", "--temp", "-1", NULL);
    expect_error("--temp", "--temp", "hot", NULL);
    expect_error("--top-p", "--top-p", "0", NULL);
    expect_error("--top-p", "--top-p", "1.5", NULL);
    expect_error("--top-p", "--top-p", "nan", NULL);
    expect_error("--min-p", "--min-p", "1", NULL);
    expect_error("--top-k", "--top-k", "-1", NULL);
    expect_error("--top-k", "--top-k", "5x", NULL);
    expect_error("--repeat-penalty", "--repeat-penalty", "0", NULL);
    expect_error("--presence-penalty", "--presence-penalty", "", NULL);
    expect_error("--seed", "--seed", "-3", NULL);
    expect_error("--seed", "--seed", "99999999999999999999999", NULL);
    expect_error("--ctx", "-c", "12x", NULL);
    expect_error("--ctx", "--ctx", "0", NULL);
    expect_error("--max-tokens", "-n", "-5", NULL);
    expect_error("--threads", "-t", "many", NULL);
    expect_error("--logprobs", "--logprobs", "21", NULL);
    expect_error("--max-pixels", "--max-pixels", "huge", NULL);
    expect_error("--min-pixels", "--min-pixels", "0", NULL);
    expect_error("--images", "--images", "kitty", NULL);
    expect_error("--min-pixels", "--min-pixels", "100000", "--max-pixels", "50000", NULL);
}
END_TEST

START_TEST(bad_usage) {
    expect_error("--bogus", "--bogus", NULL);
    expect_error("--bogus=3", "--bogus=3", NULL);
    expect_error("-x", "-x", NULL);
    expect_error("-Z", "--greedy", "-vZq", NULL);       /* inside a cluster, after a long option */
    expect_error("--greedy=1", "--greedy=1", NULL);
    expect_error("-m", "-vm", NULL);
    expect_error("--model", "--model", NULL);
    expect_error("-m", "-m", NULL);
    expect_error("--temp", "--temp", NULL);
    expect_error("'stray'", "stray", NULL);
    expect_error("empty", "-p", "", NULL);
    expect_error("--jsonl", "--jsonl", "-p", "hi", NULL);
    expect_error("--image", "--jsonl", "-i", "a.png", NULL);
    expect_error("--verbose", "-v", "-q", NULL);
    expect_error("--image", "-i", "", "-p", "x", NULL);
}
END_TEST

START_TEST(empty_prompt_with_image_is_fine) {
    qvl_options o;
    char err[QVL_ERR_MAX];
    ck_assert_int_eq(parse(&o, err, "-i", "a.png", "-p", "", NULL), OPTIONS_RUN);
    options_free(&o);
}
END_TEST

START_TEST(images_mode_from_environment) {
    qvl_options o;
    char err[QVL_ERR_MAX];
    setenv("QVL_IMAGES", "none", 1);
    ck_assert_int_eq(parse(&o, err, NULL), OPTIONS_RUN);
    ck_assert_int_eq(o.images_mode, QVL_IMAGES_NONE);
    options_free(&o);
    ck_assert_int_eq(parse(&o, err, "--images", "sixel", NULL), OPTIONS_RUN);   /* the option wins */
    ck_assert_int_eq(o.images_mode, QVL_IMAGES_SIXEL);
    options_free(&o);
    setenv("QVL_IMAGES", "bogus", 1);
    ck_assert_int_eq(parse(&o, err, NULL), -1);
    ck_assert(strstr(err, "QVL_IMAGES") != NULL);
    options_free(&o);
    unsetenv("QVL_IMAGES");
}
END_TEST

/* ---- slash commands ---- */

static qvl_command cmd_ok(const char *line) {
    qvl_command c;
    char err[QVL_ERR_MAX] = "";
    int r = command_parse(line, &c, err);
    ck_assert_msg(r == 1, "'%s' did not parse: %s", line, err);
    return c;
}

static void cmd_bad(const char *line, const char *want) {
    qvl_command c;
    char err[QVL_ERR_MAX] = "";
    ck_assert_int_eq(command_parse(line, &c, err), -1);
    ck_assert_msg(strstr(err, want) != NULL, "'%s': message '%s' lacks '%s'", line, err, want);
}

START_TEST(commands_parse) {
    qvl_command c = cmd_ok("/image  my cat.png \n");
    ck_assert_int_eq(c.kind, CMD_IMAGE);
    ck_assert_str_eq(c.arg, "my cat.png");
    command_free(&c);
    c = cmd_ok("/image 'quoted name.jpg'");
    ck_assert_str_eq(c.arg, "quoted name.jpg");
    command_free(&c);
    c = cmd_ok("/system You are terse.  ");
    ck_assert_int_eq(c.kind, CMD_SYSTEM);
    ck_assert_str_eq(c.arg, "You are terse.");
    command_free(&c);
    c = cmd_ok("/set top_p 0.5\r\n");
    ck_assert_int_eq(c.kind, CMD_SET);
    ck_assert_str_eq(c.arg, "top_p");
    ck_assert_str_eq(c.value, "0.5");
    command_free(&c);
    c = cmd_ok("/save out.jsonl");
    ck_assert_int_eq(c.kind, CMD_SAVE);
    ck_assert_str_eq(c.arg, "out.jsonl");
    command_free(&c);
    c = cmd_ok("/load in.jsonl");
    ck_assert_int_eq(c.kind, CMD_LOAD);
    command_free(&c);
    const struct { const char *line; qvl_cmd_kind kind; } bare[] = {
        { "/clear", CMD_CLEAR }, { "/stats", CMD_STATS }, { "/help", CMD_HELP },
        { "/quit", CMD_QUIT }, { "/exit\n", CMD_QUIT }, { "/clear   ", CMD_CLEAR },
    };
    for (size_t i = 0; i < sizeof bare / sizeof bare[0]; i++) {
        c = cmd_ok(bare[i].line);
        ck_assert_int_eq(c.kind, bare[i].kind);
        ck_assert_ptr_null(c.arg);
        command_free(&c);
    }
}
END_TEST

START_TEST(commands_home_expansion) {
    setenv("HOME", "/home/tester", 1);
    qvl_command c = cmd_ok("/image ~/pics/a.png");
    ck_assert_str_eq(c.arg, "/home/tester/pics/a.png");
    command_free(&c);
    c = cmd_ok("/save ~notme/x");
    ck_assert_str_eq(c.arg, "~notme/x");
    command_free(&c);
}
END_TEST

START_TEST(commands_errors) {
    cmd_bad("/imagine x", "unknown command /imagine");
    cmd_bad("/image", "missing file name");
    cmd_bad("/image   ", "missing file name");
    cmd_bad("/system", "missing text");
    cmd_bad("/clear now", "takes no argument");
    cmd_bad("/set", "NAME VALUE");
    cmd_bad("/set temp", "missing value");
    cmd_bad("/set warmth 3", "unknown parameter 'warmth'");
    cmd_bad("/set temp 1 2", "one word");
    cmd_bad("/", "unknown command");
}
END_TEST

START_TEST(messages_are_not_commands) {
    qvl_command c;
    char err[QVL_ERR_MAX];
    ck_assert_int_eq(command_parse("hello /image", &c, err), 0);
    ck_assert_int_eq(command_parse(" /clear", &c, err), 0);
    ck_assert_int_eq(command_parse("//etc/passwd is a file", &c, err), 0);
    ck_assert_str_eq(command_message("//etc/passwd is a file"), "/etc/passwd is a file");
    ck_assert_str_eq(command_message("plain"), "plain");
}
END_TEST

START_TEST(help_names_every_command_and_param) {
    const char *h = command_help();
    for (int i = 0; command_names[i]; i++)
        ck_assert_msg(strstr(h, command_names[i]) != NULL, "help lacks %s", command_names[i]);
    for (int i = 0; command_set_params[i]; i++)
        ck_assert_msg(strstr(h, command_set_params[i]) != NULL, "help lacks %s", command_set_params[i]);
    /* every listed name parses */
    for (int i = 0; command_names[i]; i++) {
        qvl_command c;
        char err[QVL_ERR_MAX], line[64];
        snprintf(line, sizeof line, "%s x", command_names[i]);
        int r = command_parse(line, &c, err);
        ck_assert_msg(r == 1 || strstr(err, "unknown command") == NULL, "%s: %s", line, err);
        if (r == 1) command_free(&c);
    }
}
END_TEST


/* ---- data: URLs ---- */

static void expect_decoded(const char *url, const char *want) {
    unsigned char *data;
    size_t len;
    char err[QVL_ERR_MAX] = "";
    ck_assert_msg(data_url_decode(url, &data, &len, err) == 0, "%s: %s", url, err);
    ck_assert_uint_eq(len, strlen(want));
    ck_assert_mem_eq(data, want, len);
    free(data);
}

static void expect_rejected(const char *url, const char *want) {
    unsigned char *data = NULL;
    size_t len;
    char err[QVL_ERR_MAX] = "";
    ck_assert_int_eq(data_url_decode(url, &data, &len, err), -1);
    ck_assert_msg(strstr(err, want) != NULL, "%s: '%s' lacks '%s'", url, err, want);
}

START_TEST(data_urls_decode) {
    expect_decoded("data:text/plain;base64,aGVsbG8=", "hello");
    expect_decoded("data:text/plain;base64,aGVsbG8", "hello");          /* padding optional */
    expect_decoded("data:;base64,aGk=", "hi");
    expect_decoded("data:image/png;name=x;base64,aG Vs\nbG8=", "hello");  /* whitespace */
    expect_decoded("data:x;base64,-_8=", "\xfb\xff");                   /* URL-safe alphabet */
    expect_decoded("data:x;base64,+/8=", "\xfb\xff");
    expect_rejected("data:text/plain,hello", "not base64");
    expect_rejected("data:image/png;base64", "comma");
    expect_rejected("data:image/png;base64,", "no data");
    expect_rejected("data:image/png;base64,aGk*", "invalid base64");
    expect_rejected("data:image/png;base64,aGk=a", "invalid base64");     /* data after padding */
    expect_rejected("data:image/png;base64,aGVsb", "invalid base64");     /* a lone 6-bit group */
    expect_rejected("http://x/y.png", "not a data: URL");
}
END_TEST

/* An image file through an encoder written here, back through the decoder. */
START_TEST(data_url_round_trip) {
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t n;
    unsigned char *png = (unsigned char *)slurp(data_path("images/a_80x60.png"), &n);
    char *url = malloc(n / 3 * 4 + 64);
    size_t o = (size_t)sprintf(url, "data:image/png;base64,");
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)png[i] << 16 | (i + 1 < n ? (unsigned)png[i + 1] << 8 : 0)
                   | (i + 2 < n ? png[i + 2] : 0);
        url[o++] = abc[v >> 18 & 63];
        url[o++] = abc[v >> 12 & 63];
        url[o++] = i + 1 < n ? abc[v >> 6 & 63] : '=';
        url[o++] = i + 2 < n ? abc[v & 63] : '=';
    }
    url[o] = 0;
    unsigned char *data;
    size_t len;
    char err[QVL_ERR_MAX];
    ck_assert_msg(data_url_decode(url, &data, &len, err) == 0, "%s", err);
    ck_assert_uint_eq(len, n);
    ck_assert_mem_eq(data, png, n);
    free(data);
    free(url);
    free(png);
}
END_TEST

int main(void) {
    Suite *s = suite_create("options");
    TCase *t = tcase_create("options");
    tcase_add_test(t, defaults);
    tcase_add_test(t, every_option);
    tcase_add_test(t, help_and_version);
    tcase_add_test(t, help_lists_every_option);
    tcase_add_test(t, quant_option);
    tcase_add_test(t, matmul_option);
    tcase_add_test(t, kv_cache_option);
    tcase_add_test(t, bad_values_name_the_option);
    tcase_add_test(t, bad_usage);
    tcase_add_test(t, empty_prompt_with_image_is_fine);
    tcase_add_test(t, images_mode_from_environment);
    suite_add_tcase(s, t);
    t = tcase_create("commands");
    tcase_add_test(t, commands_parse);
    tcase_add_test(t, commands_home_expansion);
    tcase_add_test(t, commands_errors);
    tcase_add_test(t, messages_are_not_commands);
    tcase_add_test(t, help_names_every_command_and_param);
    suite_add_tcase(s, t);
    t = tcase_create("data_urls");
    tcase_add_test(t, data_urls_decode);
    tcase_add_test(t, data_url_round_trip);
    suite_add_tcase(s, t);
    return run_suite(s);
}
