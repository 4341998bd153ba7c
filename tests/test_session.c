/* test_session.c - a conversation through the session API: the KV cache kept
 * across turns gives the reference's multi-turn ids, a cancelled reply leaves
 * the conversation consistent, dropping old turns to fit the context gives
 * the reply a fresh conversation with the kept turns gives, /save + /load
 * restore a conversation, and failures leave the session unchanged.  The
 * dropping and saving checks run with an f16 KV cache too. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "session.h"
#include "testutil.h"

static qvl_source demo_src;
static qvl_dtype kv_type = QVL_F32;     /* the sessions' KV cache (loop tests: f16 for _i = 1) */

static qvl_session_opts base_opts(const qvl_source *src, int ctx) {
    qvl_session_opts o;
    memset(&o, 0, sizeof o);
    o.model = src;
    o.ctx = ctx;
    o.threads = 1;
    o.sampling.greedy = 1;
    o.sampling.temperature = NAN;
    o.sampling.top_p = NAN;
    o.sampling.min_p = NAN;
    o.sampling.repeat_penalty = NAN;
    o.sampling.presence_penalty = NAN;
    o.sampling.top_k = -1;
    o.kv_dtype = kv_type;
    return o;
}

static qvl_session *open_demo(int ctx) {
    demo_src = source_dir(data_path("../../assets/demo-model"));
    qvl_session_opts o = base_opts(&demo_src, ctx);
    char err[QVL_ERR_MAX];
    qvl_session *s = session_open(&o, NULL, err);
    ck_assert_msg(s != NULL, "%s", err);
    return s;
}

/* Sends a message (optional image) and returns the whole reply (malloc'd); ids into ids[] if given. */
static char *ask(qvl_session *s, const char *image, const char *text, int *ids, int *nids, int cancel_after) {
    qvl_part parts[2];
    int n = 0;
    if (image) parts[n++] = (qvl_part){ .image_path = data_path(image) };
    parts[n++] = (qvl_part){ .text = text };
    char err[QVL_ERR_MAX];
    ck_assert_msg(session_send(s, parts, n, err) == 0, "%s", err);
    qvl_token tok;
    int r, k = 0;
    while ((r = session_next(s, &tok, err)) == 1) {
        if (ids) ids[k] = tok.id;
        k++;
        if (cancel_after && k == cancel_after) session_cancel(s);
    }
    ck_assert_msg(r == 0, "%s", err);
    if (nids) *nids = k;
    return strdup(session_reply_text(s));
}

/* The golden multi-turn case: the first case's prompt, 10 greedy tokens, then a
 * second user turn appended to the live cache; 10 greedy tokens again. */
START_TEST(multiturn_matches_golden) {
    char *text = slurp(data_path("goldens/goldens.json"), NULL);
    cJSON *g = cJSON_Parse(text);
    free(text);
    const char *models[2] = { "tiny-qwen3vl", "tiny-qwen3vl-moe" };
    for (int mi = 0; mi < 2; mi++) {
        cJSON *m = cJSON_GetObjectItem(g, models[mi]);
        cJSON *mt = cJSON_GetObjectItem(m, "multiturn");
        cJSON *first = cJSON_GetObjectItem(cJSON_GetObjectItem(m, "cases"), "image");
        char with_tok[4096];
        synth_model_with_tokenizer(models[mi], with_tok);
        qvl_source src2 = source_dir(with_tok);
        qvl_session_opts o = base_opts(&src2, 256);
        o.ignore_eos = 1;
        o.max_tokens = 10;
        o.max_pixels_model = 1;
        char err[QVL_ERR_MAX];
        qvl_session *s = session_open(&o, NULL, err);
        ck_assert_msg(s != NULL, "%s", err);
        int ids[16], n;
        char image[64];
        snprintf(image, sizeof image, "images/%s", cJSON_GetArrayItem(cJSON_GetObjectItem(first, "images"), 0)->valuestring);
        free(ask(s, image, "What is in this image?", ids, &n, 0));
        cJSON *want = cJSON_GetObjectItem(first, "greedy_ids");
        ck_assert_int_eq(n, 10);
        for (int i = 0; i < 10; i++) ck_assert_int_eq(ids[i], cJSON_GetArrayItem(want, i)->valueint);
        free(ask(s, NULL, "Tell me more about the colors.", ids, &n, 0));
        want = cJSON_GetObjectItem(mt, "greedy_ids");
        ck_assert_int_eq(n, 10);
        for (int i = 0; i < 10; i++)
            ck_assert_msg(ids[i] == cJSON_GetArrayItem(want, i)->valueint, "%s second turn step %d: %d, golden %d",
                          models[mi], i, ids[i], cJSON_GetArrayItem(want, i)->valueint);
        qvl_session_stats st;
        session_stats(s, &st);
        /* the cache holds the full reference sequence plus the 10 new tokens (the last not yet fed) */
        ck_assert_int_eq(st.ctx_used, cJSON_GetArraySize(cJSON_GetObjectItem(mt, "full_input_ids")) + 9);
        session_close(s);
    }
    cJSON_Delete(g);
}
END_TEST

START_TEST(demo_answers_across_turns) {
    qvl_session *s = open_demo(2048);
    char *a = ask(s, "demo/example_0.png", "Describe the image.", NULL, NULL, 0);
    ck_assert_str_eq(a, "A blue square on a light blue background.");
    free(a);
    session_clear(s);
    a = ask(s, "demo/example_1.png", "How many shapes are there?", NULL, NULL, 0);
    ck_assert_str_eq(a, "There are two shapes.");
    free(a);
    qvl_reply_info info;
    session_reply_info(s, &info);
    ck_assert_str_eq(info.finish_reason, "stop");
    ck_assert_int_gt(info.image_tokens, 0);
    ck_assert_int_gt(info.prompt_tokens, info.image_tokens);
    session_close(s);
}
END_TEST

/* A reply cancelled after k tokens continues exactly like one limited to k tokens. */
START_TEST(cancel_keeps_conversation_consistent) {
    qvl_session *a = open_demo(2048), *b = open_demo(2048);
    int ids[64], n;
    free(ask(a, "demo/example_2.png", "Describe the image.", ids, &n, 3));
    qvl_reply_info info;
    session_reply_info(a, &info);
    ck_assert_str_eq(info.finish_reason, "cancelled");
    ck_assert_int_eq(n, 3);
    char err[QVL_ERR_MAX];
    ck_assert(session_set_param(b, "max_tokens", "3", err) == 0);
    free(ask(b, "demo/example_2.png", "Describe the image.", NULL, NULL, 0));
    session_reply_info(b, &info);
    ck_assert_str_eq(info.finish_reason, "length");
    ck_assert(session_set_param(b, "max_tokens", "0", err) == 0);
    char *ra = ask(a, NULL, "How many shapes are there?", NULL, NULL, 0);
    char *rb = ask(b, NULL, "How many shapes are there?", NULL, NULL, 0);
    ck_assert_str_eq(ra, rb);
    free(ra);
    free(rb);
    session_close(a);
    session_close(b);
}
END_TEST

static const char *turn_images[4] = { "demo/example_3.png", "demo/example_4.png", "demo/example_5.png", "demo/example_6.png" };
static const char *turn_questions[4] = { "Describe the image.", "How many shapes are there?",
                                         "What color is the background?", "Describe the image." };

/* Notices reach the hook. */
static int dropped;
static void on_notice(void *ctx, const char *msg) {
    (void)ctx;
    if (strstr(msg, "dropped")) dropped++;
}

/* A context too small for four image turns: the oldest are dropped, and the last
 * reply equals a fresh conversation that holds only the kept turns. */
START_TEST(dropping_turns_matches_fresh_conversation) {
    kv_type = _i ? QVL_F16 : QVL_F32;
    demo_src = source_dir(data_path("../../assets/demo-model"));
    qvl_session_opts o = base_opts(&demo_src, 120);
    qvl_session_hooks hooks = { .notice = on_notice };
    char err[QVL_ERR_MAX];
    qvl_session *small = session_open(&o, &hooks, err);
    ck_assert_msg(small != NULL, "%s", err);
    dropped = 0;
    char *last = NULL;
    for (int i = 0; i < 4; i++) {
        free(last);
        last = ask(small, turn_images[i], turn_questions[i], NULL, NULL, 0);
    }
    ck_assert_msg(dropped > 0, "the context of 120 tokens never filled");
    qvl_session_stats st;
    session_stats(small, &st);
    ck_assert_int_lt(st.turns, 4);
    ck_assert_int_le(st.ctx_used, 120);
    /* the fresh conversation: the kept turns, replayed from a saved copy */
    const char *dir = tmp_dir("drop");
    char path[4096];
    snprintf(path, sizeof path, "%s/kept.jsonl", dir);
    ck_assert_msg(session_save(small, path, err) == 0, "%s", err);
    /* remove the last exchange from the file: the fresh session asks it again */
    char *saved = slurp(path, NULL);
    char *cut = saved + strlen(saved) - 1;           /* the final newline */
    for (int nl = 0; cut > saved && nl < 2; cut--) nl += *cut == '\n';
    cut[2] = 0;
    write_file(path, saved, strlen(saved));
    free(saved);
    qvl_session *fresh = open_demo(4096);
    ck_assert_msg(session_load(fresh, path, err) == 0, "%s", err);
    session_stats(fresh, &st);
    int kept = st.turns;
    session_stats(small, &st);
    ck_assert_int_eq(kept + 1, st.turns);
    char *again = ask(fresh, turn_images[3], turn_questions[3], NULL, NULL, 0);
    ck_assert_str_eq(again, last);
    free(again);
    free(last);
    session_close(small);
    session_close(fresh);
}
END_TEST

START_TEST(save_and_load_continue_the_same) {
    kv_type = _i ? QVL_F16 : QVL_F32;
    qvl_session *a = open_demo(2048);
    free(ask(a, "demo/example_7.png", "Describe the image.", NULL, NULL, 0));
    char err[QVL_ERR_MAX], path[4096];
    snprintf(path, sizeof path, "%s/conv.jsonl", tmp_dir("save"));
    ck_assert_msg(session_save(a, path, err) == 0, "%s", err);
    char *file = slurp(path, NULL);
    ck_assert_msg(strstr(file, "\"role\":\"assistant\"") && strstr(file, "example_7.png"), "%s", file);
    free(file);
    qvl_session *b = open_demo(2048);
    ck_assert_msg(session_load(b, path, err) == 0, "%s", err);
    qvl_session_stats sa, sb;
    session_stats(a, &sa);
    session_stats(b, &sb);
    ck_assert_int_eq(sa.turns, sb.turns);
    char *ra = ask(a, NULL, "How many shapes are there?", NULL, NULL, 0);
    char *rb = ask(b, NULL, "How many shapes are there?", NULL, NULL, 0);
    ck_assert_str_eq(ra, rb);
    free(ra);
    free(rb);
    ck_assert(session_load(b, "/nonexistent/conv.jsonl", err) != 0);
    ck_assert_msg(strstr(err, "/nonexistent/conv.jsonl"), "%s", err);
    session_close(a);
    session_close(b);
}
END_TEST

/* The session creates its cache with the type it is given: one it cannot
 * hold is refused when the session opens. */
START_TEST(kv_cache_type_reaches_the_cache) {
    demo_src = source_dir(data_path("../../assets/demo-model"));
    qvl_session_opts o = base_opts(&demo_src, 256);
    o.kv_dtype = QVL_BF16;
    char err[QVL_ERR_MAX] = "";
    ck_assert(session_open(&o, NULL, err) == NULL);
    ck_assert_msg(strstr(err, "KV cache") != NULL, "%s", err);
}
END_TEST

START_TEST(failures_change_nothing) {
    qvl_session *s = open_demo(128);
    free(ask(s, NULL, "Describe the image.", NULL, NULL, 0));
    qvl_session_stats before, after;
    session_stats(s, &before);
    char err[QVL_ERR_MAX];
    qvl_part bad = { .image_path = "/nonexistent.png" };
    ck_assert(session_send(s, &bad, 1, err) != 0);
    ck_assert_msg(strstr(err, "/nonexistent.png"), "%s", err);
    /* a message longer than the whole context */
    char *longtext = malloc(4000);
    for (int i = 0; i < 3999; i++) longtext[i] = i % 2 ? ' ' : 'a' + i % 26;
    longtext[3999] = 0;
    qvl_part big = { .text = longtext };
    ck_assert(session_send(s, &big, 1, err) != 0);
    ck_assert_msg(strstr(err, "context"), "%s", err);
    free(longtext);
    qvl_part empty = { .text = "" };
    ck_assert(session_send(s, &empty, 1, err) != 0);
    session_stats(s, &after);
    ck_assert_int_eq(before.ctx_used, after.ctx_used);
    ck_assert_int_eq(before.turns, after.turns);
    ck_assert(session_set_param(s, "temp", "-1", err) != 0);
    ck_assert(session_set_param(s, "nonsense", "1", err) != 0);
    ck_assert_msg(strstr(err, "nonsense"), "%s", err);
    /* still works */
    char *a = ask(s, "demo/example_0.png", "What color is the background?", NULL, NULL, 0);
    ck_assert_str_eq(a, "The background is light blue.");
    free(a);
    session_close(s);
}
END_TEST

START_TEST(system_prompt_survives_clear) {
    qvl_session *s = open_demo(512);
    char err[QVL_ERR_MAX];
    ck_assert(session_set_system(s, "You describe shapes.", err) == 0);
    qvl_session_stats st;
    session_stats(s, &st);
    int sys = st.ctx_used;
    ck_assert_int_gt(sys, 3);
    free(ask(s, "demo/example_0.png", "Describe the image.", NULL, NULL, 0));
    session_clear(s);
    session_stats(s, &st);
    ck_assert_int_eq(st.ctx_used, sys);
    ck_assert_int_eq(st.turns, 0);
    session_close(s);
}
END_TEST

/* A long message prefilled in small chunks (cut inside text, never inside the
 * image) gives the same reply as one prefilled at once. */
START_TEST(chunked_prefill_gives_the_same_reply) {
    char *replies[2];
    int chunks[2] = { 7, 100000 };
    char text[2048] = "";
    for (int i = 0; i < 40; i++) strcat(text, "Look at the shapes. ");
    for (int k = 0; k < 2; k++) {
        demo_src = source_dir(data_path("../../assets/demo-model"));
        qvl_session_opts o = base_opts(&demo_src, 2048);
        o.prefill_chunk = chunks[k];
        char err[QVL_ERR_MAX];
        qvl_session *s = session_open(&o, NULL, err);
        ck_assert_msg(s != NULL, "%s", err);
        qvl_part parts[3] = { { .text = text }, { .image_path = data_path("demo/example_5.png") },
                              { .text = "Describe the image." } };
        ck_assert_msg(session_send(s, parts, 3, err) == 0, "%s", err);
        qvl_token tok;
        while (session_next(s, &tok, err) == 1) {}
        replies[k] = strdup(session_reply_text(s));
        session_close(s);
    }
    ck_assert_str_eq(replies[0], replies[1]);
    ck_assert_int_gt(strlen(replies[0]), 5);
    free(replies[0]);
    free(replies[1]);
}
END_TEST

/* Replacing a reply equals loading a conversation that holds that reply. */
START_TEST(set_reply_matches_a_loaded_conversation) {
    qvl_session *a = open_demo(2048), *b = open_demo(2048);
    char err[QVL_ERR_MAX], path[4096];
    free(ask(a, "demo/example_4.png", "Describe the image.", NULL, NULL, 0));
    ck_assert_msg(session_set_reply(a, "A red circle on a white background.", err) == 0, "%s", err);
    ck_assert_str_eq(session_reply_text(a), "A red circle on a white background.");
    snprintf(path, sizeof path, "%s/conv.jsonl", tmp_dir("reply"));
    ck_assert_msg(session_save(a, path, err) == 0, "%s", err);
    char *file = slurp(path, NULL);
    ck_assert_msg(strstr(file, "A red circle on a white background."), "%s", file);
    free(file);
    ck_assert_msg(session_load(b, path, err) == 0, "%s", err);
    char *ra = ask(a, NULL, "What color is the background?", NULL, NULL, 0);
    char *rb = ask(b, NULL, "What color is the background?", NULL, NULL, 0);
    ck_assert_str_eq(ra, rb);
    free(ra);
    free(rb);
    qvl_session *c = open_demo(2048);
    ck_assert(session_set_reply(c, "x", err) != 0);
    session_close(a);
    session_close(b);
    session_close(c);
}
END_TEST

int main(void) {
    Suite *s = suite_create("session");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, multiturn_matches_golden);
    tcase_add_test(tc, demo_answers_across_turns);
    tcase_add_test(tc, cancel_keeps_conversation_consistent);
    tcase_add_loop_test(tc, dropping_turns_matches_fresh_conversation, 0, 2);
    tcase_add_loop_test(tc, save_and_load_continue_the_same, 0, 2);
    tcase_add_test(tc, kv_cache_type_reaches_the_cache);
    tcase_add_test(tc, failures_change_nothing);
    tcase_add_test(tc, system_prompt_survives_clear);
    tcase_add_test(tc, chunked_prefill_gives_the_same_reply);
    tcase_add_test(tc, set_reply_matches_a_loaded_conversation);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
