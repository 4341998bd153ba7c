/* test_tokenizer.c - the byte-level BPE tokenizer against the transformers
 * goldens (tests/data/goldens/goldens.json, "tokenizer": 40 texts with their
 * ids and decoded text), the demo model's own 518-token vocabulary, small
 * hand-made tokenizers whose merges can be followed by hand, invalid UTF-8,
 * streaming decode, speed, and the `qvl tokenize` tool end to end. */
#include "testutil.h"
#include "tokenizer.h"
#include "common.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static qvl_tokenizer *qwen;      /* the real Qwen3 tokenizer, loaded once before the tests fork */
static cJSON *goldens;

static void load_qwen(void) {
    char err[QVL_ERR_MAX] = "";
    qwen = tok_load_file(data_path("tokenizer/tokenizer.json"), err);
    if (!qwen) { fprintf(stderr, "%s\n", err); abort(); }
    char *g = slurp(data_path("goldens/goldens.json"), NULL);
    goldens = cJSON_Parse(g);
    free(g);
    if (!goldens) abort();
}

static void free_qwen(void) {
    tok_free(qwen);
    cJSON_Delete(goldens);
}

static const char *demo_tokenizer_path(void) {
    return data_path("../../assets/demo-model/tokenizer.json");
}

/* ids of a JSON array */
static tok_ids json_ids(const cJSON *a) {
    tok_ids v = { 0 };
    for (const cJSON *x = a->child; x; x = x->next) tok_ids_push(&v, x->valueint);
    return v;
}

static tok_ids encode(const qvl_tokenizer *t, const char *s, size_t n) {
    char err[QVL_ERR_MAX] = "";
    tok_ids v = { 0 };
    ck_assert_msg(tok_encode(t, s, n, &v, err) == 0, "%s", err);
    return v;
}

static void assert_ids_eq(const tok_ids *got, const tok_ids *want, const char *what) {
    int same = got->n == want->n;
    for (size_t i = 0; same && i < got->n; i++) same = got->v[i] == want->v[i];
    if (!same) {
        char g[4096] = "", w[4096] = "";
        for (size_t i = 0; i < got->n && strlen(g) < 4000; i++) snprintf(g + strlen(g), 4096 - strlen(g), "%d ", got->v[i]);
        for (size_t i = 0; i < want->n && strlen(w) < 4000; i++) snprintf(w + strlen(w), 4096 - strlen(w), "%d ", want->v[i]);
        ck_abort_msg("%s: got [%s] want [%s]", what, g, w);
    }
}

static char *decode(const qvl_tokenizer *t, const tok_ids *v, int skip, size_t *len) {
    char err[QVL_ERR_MAX] = "";
    char *s = tok_decode(t, v->v, v->n, skip, len, err);
    ck_assert_msg(s != NULL, "%s", err);
    return s;
}

/* ------------------------------------------------------------------ goldens */

START_TEST(test_golden_encode) {
    const cJSON *cases = cJSON_GetObjectItem(goldens, "tokenizer");
    ck_assert_int_eq(cJSON_GetArraySize(cases), 40);
    for (const cJSON *c = cases->child; c; c = c->next) {
        const char *text = cJSON_GetObjectItem(c, "text")->valuestring;
        tok_ids want = json_ids(cJSON_GetObjectItem(c, "ids"));
        tok_ids got = encode(qwen, text, strlen(text));
        assert_ids_eq(&got, &want, text);
        tok_ids_free(&got);
        tok_ids_free(&want);
    }
}
END_TEST

START_TEST(test_golden_decode) {
    const cJSON *cases = cJSON_GetObjectItem(goldens, "tokenizer");
    for (const cJSON *c = cases->child; c; c = c->next) {
        tok_ids ids = json_ids(cJSON_GetObjectItem(c, "ids"));
        const char *want = cJSON_GetObjectItem(c, "decoded")->valuestring;
        size_t len;
        char *got = decode(qwen, &ids, 0, &len);
        ck_assert_uint_eq(len, strlen(want));
        ck_assert_str_eq(got, want);
        /* and the round trip from the text itself: NFC(text) */
        const char *text = cJSON_GetObjectItem(c, "text")->valuestring;
        tok_ids again = encode(qwen, text, strlen(text));
        char *round = decode(qwen, &again, 0, NULL);
        ck_assert_str_eq(round, want);
        free(round);
        free(got);
        tok_ids_free(&again);
        tok_ids_free(&ids);
    }
}
END_TEST

/* Ids, specials and lookups agree with tokenizer_config.json's own table. */
START_TEST(test_added_tokens_match_config) {
    char *cfg = slurp(data_path("tokenizer/tokenizer_config.json"), NULL);
    cJSON *root = cJSON_Parse(cfg);
    const cJSON *dec = cJSON_GetObjectItem(root, "added_tokens_decoder");
    int n = 0, maxid = -1;
    for (const cJSON *e = dec->child; e; e = e->next, n++) {
        int id = atoi(e->string);
        const char *content = cJSON_GetObjectItem(e, "content")->valuestring;
        int special = cJSON_IsTrue(cJSON_GetObjectItem(e, "special"));
        ck_assert_int_eq(tok_special_id(qwen, content), id);
        ck_assert_int_eq(tok_piece_to_id(qwen, content), id);
        ck_assert_str_eq(tok_id_to_piece(qwen, id), content);
        ck_assert_int_eq(tok_is_special(qwen, id), special);
        /* an added token alone in the text is that one id */
        tok_ids v = encode(qwen, content, strlen(content));
        ck_assert_uint_eq(v.n, 1);
        ck_assert_int_eq(v.v[0], id);
        tok_ids_free(&v);
        if (id > maxid) maxid = id;
    }
    ck_assert_int_eq(n, 26);                           /* shared/README: 26 added tokens */
    ck_assert_int_eq(tok_vocab_size(qwen), maxid + 1);
    ck_assert_int_eq(tok_vocab_size(qwen), 151643 + 26);
    cJSON_Delete(root);
    free(cfg);
}
END_TEST

START_TEST(test_lookups) {
    /* "Hello world" -> [9707, 1879] (golden): the second token is " world",
     * which byte-level BPE spells with U+0120 (Ġ) for the space. */
    ck_assert_str_eq(tok_id_to_piece(qwen, 1879), "\xC4\xA0world");
    ck_assert_int_eq(tok_piece_to_id(qwen, "\xC4\xA0world"), 1879);
    size_t n;
    const char *b = tok_token_bytes(qwen, 1879, &n);
    ck_assert_uint_eq(n, 6);
    ck_assert_mem_eq(b, " world", 6);
    ck_assert_int_eq(tok_is_special(qwen, 1879), 0);
    ck_assert_int_eq(tok_special_id(qwen, "world"), -1);
    ck_assert_int_eq(tok_piece_to_id(qwen, "no such token at all"), -1);
    ck_assert_ptr_null(tok_id_to_piece(qwen, -1));
    ck_assert_ptr_null(tok_id_to_piece(qwen, tok_vocab_size(qwen)));
    ck_assert_ptr_null(tok_token_bytes(qwen, 1 << 30, &n));
    ck_assert_uint_eq(n, 0);
}
END_TEST

START_TEST(test_decode_skip_special_and_unknown) {
    /* golden: "<|im_start|>user\nhi<|im_end|>\n" */
    int ids[] = { 151644, 872, 198, 6023, 151645, 198 };
    tok_ids v = { ids, 6, 6 };
    char *s = decode(qwen, &v, 1, NULL);
    ck_assert_str_eq(s, "user\nhi\n");
    free(s);
    /* <think> is added but not special: kept */
    int think[] = { 151667, 198, 151668 };
    tok_ids t = { think, 3, 3 };
    s = decode(qwen, &t, 1, NULL);
    ck_assert_str_eq(s, "<think>\n</think>");
    free(s);
    /* ids that name no token are skipped, as transformers does */
    int odd[] = { 9707, -5, 151700, 1 << 30, 1879 };
    tok_ids o = { odd, 5, 5 };
    s = decode(qwen, &o, 0, NULL);
    ck_assert_str_eq(s, "Hello world");
    free(s);
}
END_TEST

/* Added tokens are matched before anything else, longest first, and split the
 * text around them exactly as if each stretch were encoded alone. */
START_TEST(test_added_tokens_split_text) {
    const char *a = "Look:", *b = " and then\nmore";
    char joined[256];
    snprintf(joined, sizeof joined, "%s<|vision_start|><|image_pad|><|vision_end|>%s<|im_end|>", a, b);
    tok_ids got = encode(qwen, joined, strlen(joined));
    tok_ids want = encode(qwen, a, strlen(a));
    tok_ids_push(&want, tok_special_id(qwen, "<|vision_start|>"));
    tok_ids_push(&want, tok_special_id(qwen, "<|image_pad|>"));
    tok_ids_push(&want, tok_special_id(qwen, "<|vision_end|>"));
    tok_ids tail = encode(qwen, b, strlen(b));
    for (size_t i = 0; i < tail.n; i++) tok_ids_push(&want, tail.v[i]);
    tok_ids_push(&want, tok_special_id(qwen, "<|im_end|>"));
    assert_ids_eq(&got, &want, joined);
    tok_ids_free(&got);
    tok_ids_free(&want);
    tok_ids_free(&tail);
    /* a near miss is plain text */
    tok_ids near = encode(qwen, "<|im_end|", 9);
    for (size_t i = 0; i < near.n; i++) ck_assert(!tok_is_special(qwen, near.v[i]));
    tok_ids_free(&near);
}
END_TEST

/* ------------------------------------------------------------------ invalid UTF-8 */

/* The id of the token standing for the single byte b. */
static int byte_token(const qvl_tokenizer *t, unsigned b) {
    for (int id = 0; id < tok_vocab_size(t); id++) {
        size_t n;
        const char *s = tok_token_bytes(t, id, &n);
        if (s && n == 1 && (unsigned char)s[0] == b && !tok_is_special(t, id)) return id;
    }
    return -1;
}

START_TEST(test_invalid_utf8) {
    /* Invalid bytes pass through the byte-level mapping and come back unchanged. */
    const char *bad[] = { "\xff", "ab\xff\xfe" "cd", "\xe4\xb8", "tail \xe4\xb8", "\xc0\xaf overlong",
                          "\xed\xa0\x80 surrogate", "\x80\x80\x80", "mixed \xe4\xb8\xad\xe6 text \xf0\x9f\x98" };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        tok_ids v = encode(qwen, bad[i], strlen(bad[i]));
        ck_assert(v.n > 0);
        size_t len;
        char *s = decode(qwen, &v, 0, &len);
        ck_assert_uint_eq(len, strlen(bad[i]));
        ck_assert_mem_eq(s, bad[i], len);
        free(s);
        tok_ids_free(&v);
    }
    /* A lone 0xFF is the byte token for 0xFF. */
    tok_ids v = encode(qwen, "\xff", 1);
    ck_assert_uint_eq(v.n, 1);
    ck_assert_int_eq(v.v[0], byte_token(qwen, 0xff));
    tok_ids_free(&v);
    /* Invalid bytes never join the valid text around them: "ab\xffcd" is
     * "ab", then the byte, then "cd", each encoded alone. */
    tok_ids got = encode(qwen, "ab\xff" "cd", 5);
    tok_ids want = encode(qwen, "ab", 2);
    tok_ids_push(&want, byte_token(qwen, 0xff));
    tok_ids cd = encode(qwen, "cd", 2);
    for (size_t i = 0; i < cd.n; i++) tok_ids_push(&want, cd.v[i]);
    assert_ids_eq(&got, &want, "ab\\xffcd");
    tok_ids_free(&got);
    tok_ids_free(&want);
    tok_ids_free(&cd);
    /* NUL bytes are ordinary bytes */
    tok_ids z = encode(qwen, "a\0b", 3);
    size_t zl;
    char *zs = decode(qwen, &z, 0, &zl);
    ck_assert_uint_eq(zl, 3);
    ck_assert_mem_eq(zs, "a\0b", 3);
    free(zs);
    tok_ids_free(&z);
}
END_TEST

/* ------------------------------------------------------------------ streaming */

static int valid_utf8(const char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        unsigned c = (unsigned char)s[i];
        int k = c < 0x80 ? 1 : c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
        if (!k || i + (size_t)k > n) return 0;
        for (int j = 1; j < k; j++) if (((unsigned char)s[i + j] & 0xC0) != 0x80) return 0;
        i += (size_t)k;
    }
    return 1;
}

START_TEST(test_stream_golden_emoji) {
    /* golden: the emoji case's ids split characters between tokens */
    const char *text = NULL, *decoded = NULL;
    tok_ids ids = { 0 };
    for (const cJSON *c = cJSON_GetObjectItem(goldens, "tokenizer")->child; c; c = c->next)
        if (strstr(cJSON_GetObjectItem(c, "text")->valuestring, "family")) {
            text = cJSON_GetObjectItem(c, "text")->valuestring;
            decoded = cJSON_GetObjectItem(c, "decoded")->valuestring;
            ids = json_ids(cJSON_GetObjectItem(c, "ids"));
        }
    ck_assert_ptr_nonnull(text);
    tok_stream st;
    tok_stream_init(&st, qwen, 0);
    char out[1024] = "";
    int empty = 0;
    for (size_t i = 0; i < ids.n; i++) {
        size_t n;
        const char *piece = tok_stream_push(&st, ids.v[i], &n);
        ck_assert_ptr_nonnull(piece);
        ck_assert_msg(valid_utf8(piece, n), "piece %zu is not whole UTF-8", i);
        empty += n == 0;
        strncat(out, piece, n);
    }
    size_t n;
    tok_stream_flush(&st, &n);
    ck_assert_uint_eq(n, 0);
    ck_assert_str_eq(out, decoded);
    ck_assert_int_gt(empty, 0);        /* some token ended mid-character */
    tok_stream_free(&st);
    tok_ids_free(&ids);
}
END_TEST

START_TEST(test_stream_split_character) {
    /* U+1F600 is F0 9F 98 80: feed it one byte token at a time */
    const unsigned char smile[] = { 0xF0, 0x9F, 0x98, 0x80 };
    tok_stream st;
    tok_stream_init(&st, qwen, 1);
    size_t n;
    for (int i = 0; i < 3; i++) {
        const char *p = tok_stream_push(&st, byte_token(qwen, smile[i]), &n);
        ck_assert_uint_eq(n, 0);
        ck_assert_str_eq(p, "");
    }
    const char *p = tok_stream_push(&st, byte_token(qwen, smile[3]), &n);
    ck_assert_uint_eq(n, 4);
    ck_assert_mem_eq(p, smile, 4);
    /* skip_special drops <|im_end|> */
    p = tok_stream_push(&st, tok_special_id(qwen, "<|im_end|>"), &n);
    ck_assert_uint_eq(n, 0);
    /* an invalid byte becomes U+FFFD at once; an unfinished start at flush */
    p = tok_stream_push(&st, byte_token(qwen, 0xFF), &n);
    ck_assert_str_eq(p, "\xEF\xBF\xBD");
    tok_stream_push(&st, byte_token(qwen, 0xF0), &n);
    ck_assert_uint_eq(n, 0);
    p = tok_stream_push(&st, byte_token(qwen, 0x9F), &n);
    ck_assert_uint_eq(n, 0);
    /* a character cut short by an ASCII byte: U+FFFD, then the byte */
    int a = tok_piece_to_id(qwen, "a");
    p = tok_stream_push(&st, a, &n);
    ck_assert_str_eq(p, "\xEF\xBF\xBD" "a");
    tok_stream_push(&st, byte_token(qwen, 0xE4), &n);
    p = tok_stream_flush(&st, &n);
    ck_assert_str_eq(p, "\xEF\xBF\xBD");
    p = tok_stream_flush(&st, &n);
    ck_assert_uint_eq(n, 0);
    tok_stream_free(&st);
}
END_TEST

/* ------------------------------------------------------------------ hand-made tokenizers */

/* A tokenizer over the letters a, b, c with merges whose order we pick. */
static qvl_tokenizer *mini(const char *merges, char *err) {
    char json[2048];
    snprintf(json, sizeof json,
             "{\"added_tokens\": [{\"id\": 9, \"content\": \"<s>\", \"special\": true}],"
             " \"normalizer\": null,"
             " \"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"use_regex\": true},"
             " \"decoder\": {\"type\": \"ByteLevel\"},"
             " \"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0, \"b\": 1, \"c\": 2, \"ab\": 3, \"bc\": 4,"
             " \"abc\": 5, \"\\u0120\": 6, \"\\u0120a\": 7}, \"merges\": [%s]}}", merges);
    return tok_load_json(json, strlen(json), "mini.json", err);
}

static void assert_encodes(qvl_tokenizer *t, const char *text, const int *want, size_t n) {
    tok_ids got = encode(t, text, strlen(text));
    tok_ids w = { (int *)want, n, n };
    assert_ids_eq(&got, &w, text);
    tok_ids_free(&got);
}

START_TEST(test_merge_order_and_formats) {
    char err[QVL_ERR_MAX] = "";
    /* "b c" first: abc -> a + bc -> (no merge a,bc) */
    qvl_tokenizer *t = mini("\"b c\", \"a b\"", err);
    ck_assert_msg(t != NULL, "%s", err);
    assert_encodes(t, "abc", (int[]){ 0, 4 }, 2);
    tok_free(t);
    /* "a b" first: abc -> ab + c -> abc via "ab c"; pair-array format */
    t = mini("[\"a\", \"b\"], [\"b\", \"c\"], [\"ab\", \"c\"]", err);
    ck_assert_msg(t != NULL, "%s", err);
    assert_encodes(t, "abc", (int[]){ 5 }, 1);
    assert_encodes(t, "cab", (int[]){ 2, 3 }, 2);
    /* the split regex keeps " a" together; the space byte maps to U+0120 */
    assert_encodes(t, "ab a", (int[]){ 3, 6, 0 }, 3);
    /* <s> is an added token: matched first, even inside a word */
    assert_encodes(t, "a<s>b", (int[]){ 0, 9, 1 }, 3);
    /* a byte with no token (and no unk_token) is dropped, as tokenizers does;
     * its neighbours then meet and merge */
    assert_encodes(t, "axb", (int[]){ 3 }, 1);
    tok_free(t);
    /* same merges written as strings */
    t = mini("\"a b\", \"b c\", \"ab c\"", err);
    ck_assert_msg(t != NULL, "%s", err);
    assert_encodes(t, "abc", (int[]){ 5 }, 1);
    tok_free(t);
    /* " a" merges only when asked */
    t = mini("\"\\u0120 a\"", err);
    ck_assert_msg(t != NULL, "%s", err);
    assert_encodes(t, "ab a", (int[]){ 0, 1, 7 }, 3);
    tok_free(t);
}
END_TEST

START_TEST(test_load_errors) {
    char err[QVL_ERR_MAX];
    struct { const char *json, *expect; } cases[] = {
        { "{\"model\": ", "not valid JSON" },
        { "[]", "no BPE model" },
        { "{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}, \"merges\": []}}", "WordPiece" },
        { "{\"model\": {\"vocab\": {\"a\": -1}, \"merges\": []}}", "not a token id" },
        { "{\"model\": {\"vocab\": {\"a\": 0, \"b\": 0}, \"merges\": []}}", "two tokens have id 0" },
        { "{\"model\": {\"vocab\": {\"a\": 0}, \"merges\": [\"a q\"]}, \"pre_tokenizer\": {\"type\": \"ByteLevel\"}}",
          "token \"q\" is not in the vocab" },
        { "{\"model\": {\"vocab\": {\"a\": 0}, \"merges\": [\"abc\"]}}", "merges[0] is not a pair" },
        { "{\"model\": {\"vocab\": {\"a\": 0}, \"merges\": [[\"a\"]]}}", "merges[0] is not a pair" },
        { "{\"model\": {\"vocab\": {\"a\": 0}, \"merges\": []}}", "no pre_tokenizer" },
        { "{\"model\": {\"vocab\": {\"a\": 0}, \"merges\": []}, \"pre_tokenizer\": {\"type\": \"Sequence\","
          " \"pretokenizers\": [{\"type\": \"Split\", \"pattern\": {\"Regex\": \"(\"}, \"behavior\": \"Isolated\"},"
          " {\"type\": \"ByteLevel\"}]}}", "does not compile" },
        { "{\"model\": {\"vocab\": {\"a\": 0}, \"merges\": []}, \"pre_tokenizer\": {\"type\": \"Sequence\","
          " \"pretokenizers\": [{\"type\": \"Split\", \"pattern\": {\"Regex\": \"a\"}, \"behavior\": \"Removed\"},"
          " {\"type\": \"ByteLevel\"}]}}", "Isolated" },
        { "{\"model\": {\"vocab\": {\"a\": 0}, \"merges\": []}, \"pre_tokenizer\": {\"type\": \"Split\","
          " \"pattern\": {\"Regex\": \"a\"}, \"behavior\": \"Isolated\"}}", "Split" },
        { "{\"model\": {\"vocab\": {\"a\": 0}, \"merges\": []}, \"pre_tokenizer\": {\"type\": \"Metaspace\"}}",
          "Metaspace" },
        { "{\"model\": {\"vocab\": {\"a\": 0}, \"merges\": []}, \"normalizer\": {\"type\": \"NFKC\"},"
          " \"pre_tokenizer\": {\"type\": \"ByteLevel\"}}", "NFKC" },
        { "{\"model\": {\"vocab\": {\"a\": 0}, \"merges\": []}, \"added_tokens\": [{\"id\": 1, \"content\": \"<x>\","
          " \"lstrip\": true}], \"pre_tokenizer\": {\"type\": \"ByteLevel\"}}", "lstrip is not supported" },
        { "{\"model\": {\"vocab\": {\"a\": 0}, \"merges\": []}, \"added_tokens\": [{\"id\": 1}],"
          " \"pre_tokenizer\": {\"type\": \"ByteLevel\"}}", "added_tokens" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        err[0] = 0;
        qvl_tokenizer *t = tok_load_json(cases[i].json, strlen(cases[i].json), "bad.json", err);
        ck_assert_msg(t == NULL, "case %zu loaded", i);
        ck_assert_msg(strstr(err, "bad.json") && strstr(err, cases[i].expect), "case %zu: %s", i, err);
        ck_assert_msg(!strchr(err, '\n'), "case %zu: more than one line", i);
    }
    ck_assert_ptr_null(tok_load_file("/nonexistent/tokenizer.json", err));
    ck_assert(strstr(err, "/nonexistent/tokenizer.json") != NULL);
    /* every truncation of a real file fails cleanly */
    size_t len;
    char *demo = slurp(demo_tokenizer_path(), &len);
    for (size_t cut = 0; cut < len; cut += len / 37 + 1) {
        qvl_tokenizer *t = tok_load_json(demo, cut, "cut.json", err);
        ck_assert_msg(t == NULL, "truncated at %zu loaded", cut);
    }
    free(demo);
}
END_TEST

/* ------------------------------------------------------------------ the demo model's tokenizer */

START_TEST(test_demo_tokenizer) {
    char err[QVL_ERR_MAX] = "";
    qvl_tokenizer *t = tok_load_file(demo_tokenizer_path(), err);
    ck_assert_msg(t != NULL, "%s", err);
    ck_assert_int_eq(tok_vocab_size(t), 518);
    int im_start = tok_special_id(t, "<|im_start|>"), im_end = tok_special_id(t, "<|im_end|>");
    ck_assert(im_start >= 0 && im_end >= 0 && tok_is_special(t, im_end));
    ck_assert(tok_special_id(t, "<|image_pad|>") >= 0);
    char *json = slurp(data_path("demo/demo_answers.json"), NULL);
    cJSON *root = cJSON_Parse(json);
    int n = 0;
    for (const cJSON *a = cJSON_GetObjectItem(root, "answers")->child; a; a = a->next) {
        const char *fields[] = { "question", "answer" };
        for (int f = 0; f < 2; f++, n++) {
            const char *s = cJSON_GetObjectItem(a, fields[f])->valuestring;
            tok_ids v = encode(t, s, strlen(s));
            ck_assert(v.n > 0 && v.n < strlen(s));        /* merges happened */
            for (size_t i = 0; i < v.n; i++) {
                ck_assert(v.v[i] >= 0 && v.v[i] < 518);
                ck_assert(!tok_is_special(t, v.v[i]));
            }
            char *back = decode(t, &v, 0, NULL);
            ck_assert_str_eq(back, s);
            free(back);
            tok_ids_free(&v);
        }
    }
    ck_assert_int_gt(n, 0);
    /* a chat turn: the special tokens come out as their ids, in place */
    const char *turn = "<|im_start|>user\nDescribe the image.<|im_end|>\n<|im_start|>assistant\n";
    tok_ids v = encode(t, turn, strlen(turn));
    ck_assert_int_eq(v.v[0], im_start);
    int ends = 0, starts = 0;
    for (size_t i = 0; i < v.n; i++) ends += v.v[i] == im_end, starts += v.v[i] == im_start;
    ck_assert_int_eq(ends, 1);
    ck_assert_int_eq(starts, 2);
    char *back = decode(t, &v, 1, NULL);
    ck_assert_str_eq(back, "user\nDescribe the image.\nassistant\n");
    free(back);
    tok_ids_free(&v);
    cJSON_Delete(root);
    free(json);
    tok_free(t);
}
END_TEST

/* ------------------------------------------------------------------ speed and hard inputs */

/* Speed is measured and printed (and by `qvl tokenize --time`); the bound
 * here only catches a pathological slowdown (a quadratic merge loop, say),
 * with room for a loaded CI machine and the sanitizers' 5-20x. */
#define TIME_LIMIT 30.0

START_TEST(test_speed_load) {
    char err[QVL_ERR_MAX] = "";
    double t0 = qvl_now();
    qvl_tokenizer *t = tok_load_file(data_path("tokenizer/tokenizer.json"), err);
    double dt = qvl_now() - t0;
    ck_assert_msg(t != NULL, "%s", err);
    fprintf(stderr, "tokenizer: loaded the 11 MB tokenizer.json in %.3f s\n", dt);
    ck_assert_msg(dt < TIME_LIMIT, "loading took %.3f s", dt);
    tok_free(t);
}
END_TEST

START_TEST(test_speed_encode_1mb) {
    /* 1 MB of the golden texts: English, code, CJK, Korean, Cyrillic, Arabic, emoji */
    size_t cap = 1 << 20, len = 0;
    char *text = malloc(cap + 1024);
    while (len < cap)
        for (const cJSON *c = cJSON_GetObjectItem(goldens, "tokenizer")->child; c && len < cap; c = c->next) {
            const char *s = cJSON_GetObjectItem(c, "text")->valuestring;
            size_t n = strlen(s);
            memcpy(text + len, s, n);
            len += n;
            text[len++] = ' ';
        }
    double t0 = qvl_now();
    tok_ids v = encode(qwen, text, len);
    double dt = qvl_now() - t0;
    fprintf(stderr, "tokenizer: encoded %zu bytes of mixed text into %zu tokens in %.3f s (%.1f MB/s)\n",
            len, v.n, dt, len / dt / 1e6);
    ck_assert_msg(dt < TIME_LIMIT, "encoding 1 MB took %.3f s", dt);
    size_t back_len;
    char *back = decode(qwen, &v, 0, &back_len);
    ck_assert(back_len > len / 2);
    free(back);
    tok_ids_free(&v);
    free(text);
}
END_TEST

/* Long runs that the regex or BPE could handle in quadratic time. */
START_TEST(test_long_runs) {
    const char unit[][4] = { "a", " ", "\n", "\xff", "7", "!", "\xe4\xb8\xad" };
    size_t n = 200000;
    char *s = malloc(n * 3 + 1);
    for (size_t u = 0; u < sizeof unit / sizeof *unit; u++) {
        size_t k = strlen(unit[u]), len = 0;
        for (size_t i = 0; i < n; i++, len += k) memcpy(s + len, unit[u], k);
        double t0 = qvl_now();
        tok_ids v = encode(qwen, s, len);
        double dt = qvl_now() - t0;
        ck_assert_msg(dt < TIME_LIMIT, "run of %zu x '%s' took %.3f s", n, unit[u], dt);
        size_t back_len;
        char *back = decode(qwen, &v, 0, &back_len);
        ck_assert_uint_eq(back_len, len);
        ck_assert(memcmp(back, s, len) == 0);
        free(back);
        tok_ids_free(&v);
    }
    free(s);
}
END_TEST

/* Random strings over pieces that stress the split, the added-token matcher
 * and the byte mapping: encoding never fails and decoding gives them back
 * (every piece is already NFC, so normalization changes nothing). */
START_TEST(test_random_round_trips) {
    const char *pieces[] = { "a", "Z", "7", " ", "  ", "\n", "\r\n", "\t", "'s", "'LL", "!", "...", "<|im_end|>", "<|im_",
                             "<think>", "|>", "\xc3\xa9", "\xe4\xb8\xad", "\xf0\x9f\x98\x80", "\xd0\x96", "\xe2\x80\x8b",
                             "\xc2\xa0", "\xff", "\xe4\xb8", "\x80", "\0" };
    const int np = sizeof pieces / sizeof *pieces;
    unsigned long long x = 88172645463325252ull;           /* xorshift64 */
    char s[512];
    for (int iter = 0; iter < 3000; iter++) {
        size_t len = 0;
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        int count = (int)(x % 40);
        for (int k = 0; k < count; k++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            const char *p = pieces[x % (unsigned)np];
            size_t n = *p ? strlen(p) : 1;                 /* "\0" is one NUL byte */
            memcpy(s + len, p, n);
            len += n;
        }
        tok_ids v = encode(qwen, s, len);
        size_t back_len;
        char *back = decode(qwen, &v, 0, &back_len);
        ck_assert_msg(back_len == len && !memcmp(back, s, len), "round trip failed at iteration %d", iter);
        free(back);
        tok_ids_free(&v);
    }
}
END_TEST

/* ------------------------------------------------------------------ qvl tokenize */

static int run_tool(const char *args, const char *input, char **out, char **errout) {
    const char *dir = tmp_dir("tokenize");
    char in[4200], cmd[16384];
    snprintf(in, sizeof in, "%s/stdin", dir);
    write_file(in, input, strlen(input));
    snprintf(cmd, sizeof cmd, "'%s' tokenize %s < '%s'", build_path("qvl"), args, in);
    return run_cmd(cmd, out, errout);
}

START_TEST(test_tool) {
    char args[4400], *out, *errout;
    snprintf(args, sizeof args, "--tokenizer '%s'", data_path("tokenizer/tokenizer.json"));
    /* golden: "Hello, world! How are you today?" */
    int rc = run_tool(args, "Hello, world! How are you today?", &out, &errout);
    ck_assert_msg(rc == 0, "rc %d: %s", rc, errout);
    ck_assert_str_eq(out, "[9707, 11, 1879, 0, 2585, 525, 498, 3351, 30]\n");
    free(out), free(errout);
    /* empty input: an empty array */
    snprintf(args, sizeof args, "--tokenizer '%s'", demo_tokenizer_path());
    rc = run_tool(args, "", &out, &errout);
    ck_assert_int_eq(rc, 0);
    ck_assert_str_eq(out, "[]\n");
    free(out), free(errout);
    /* decode, exact bytes (no newline added) */
    snprintf(args, sizeof args, "--tokenizer '%s' --decode", data_path("tokenizer/tokenizer.json"));
    rc = run_tool(args, " [151644, 872, 198, 6023, 151645, 198]\n", &out, &errout);
    ck_assert_msg(rc == 0, "rc %d: %s", rc, errout);
    ck_assert_str_eq(out, "<|im_start|>user\nhi<|im_end|>\n");
    free(out), free(errout);
    /* -m MODEL_DIR reads the model's tokenizer.json */
    snprintf(args, sizeof args, "-m '%s'", data_path("../../assets/demo-model"));
    rc = run_tool(args, "Describe the image.", &out, &errout);
    ck_assert_msg(rc == 0, "rc %d: %s", rc, errout);
    ck_assert(out[0] == '[' && strstr(out, "]\n"));
    free(out), free(errout);
}
END_TEST

START_TEST(test_tool_errors) {
    char args[4400], *out, *errout;
    struct { const char *args; int rc; const char *msg; } cases[] = {
        { "", 2, "usage" },
        { "--bogus", 2, "--bogus" },
        { "--tokenizer", 2, "--tokenizer" },
        { "--tokenizer /nonexistent.json", 1, "/nonexistent.json" },
        { "-m /nonexistent-dir", 1, "/nonexistent-dir" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int rc = run_tool(cases[i].args, "x", &out, &errout);
        ck_assert_msg(rc == cases[i].rc, "'%s': rc %d", cases[i].args, rc);
        ck_assert_msg(strstr(errout, cases[i].msg), "'%s': %s", cases[i].args, errout);
        ck_assert_str_eq(out, "");
        free(out), free(errout);
    }
    /* --decode wants a JSON array of integer ids */
    const char *bad[] = { "not json", "[1, 2", "{\"a\": 1}", "[1, \"x\"]", "[1.5]" };
    snprintf(args, sizeof args, "--tokenizer '%s' --decode", demo_tokenizer_path());
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        int rc = run_tool(args, bad[i], &out, &errout);
        ck_assert_msg(rc == 1, "'%s': rc %d", bad[i], rc);
        ck_assert_msg(strchr(errout, '\n') == errout + strlen(errout) - 1, "'%s': not one line: %s", bad[i], errout);
        free(out), free(errout);
    }
}
END_TEST

int main(void) {
    Suite *s = suite_create("tokenizer");
    TCase *tc = tcase_create("qwen");
    tcase_add_unchecked_fixture(tc, load_qwen, free_qwen);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_golden_encode);
    tcase_add_test(tc, test_golden_decode);
    tcase_add_test(tc, test_added_tokens_match_config);
    tcase_add_test(tc, test_lookups);
    tcase_add_test(tc, test_decode_skip_special_and_unknown);
    tcase_add_test(tc, test_added_tokens_split_text);
    tcase_add_test(tc, test_invalid_utf8);
    tcase_add_test(tc, test_stream_golden_emoji);
    tcase_add_test(tc, test_stream_split_character);
    tcase_add_test(tc, test_speed_load);
    tcase_add_test(tc, test_speed_encode_1mb);
    tcase_add_test(tc, test_long_runs);
    tcase_add_test(tc, test_random_round_trips);
    suite_add_tcase(s, tc);
    TCase *small = tcase_create("small");
    tcase_set_timeout(small, 60);
    tcase_add_test(small, test_merge_order_and_formats);
    tcase_add_test(small, test_load_errors);
    tcase_add_test(small, test_demo_tokenizer);
    tcase_add_test(small, test_tool);
    tcase_add_test(small, test_tool_errors);
    suite_add_tcase(s, small);
    return run_suite(s);
}
