/* test_chat.c - the chat template against transformers' goldens: every case's
 * prompt_text and input_ids for the three models in goldens.json, the
 * multi-turn continuation built incrementally as a KV cache sees it, the
 * Thinking variant's rendering (expected strings worked out by hand from the
 * Qwen3-VL-Thinking template), template detection, the demo model's prompt,
 * and the errors. */
#include "testutil.h"
#include "chat.h"
#include "common.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static qvl_tokenizer *qwen;
static cJSON *goldens;
static const chat_format INSTRUCT = { 0, "" }, THINKING = { 1, "" };

static void setup(void) {
    char err[QVL_ERR_MAX] = "";
    qwen = tok_load_file(data_path("tokenizer/tokenizer.json"), err);
    if (!qwen) { fprintf(stderr, "%s\n", err); abort(); }
    char *g = slurp(data_path("goldens/goldens.json"), NULL);
    goldens = cJSON_Parse(g);
    free(g);
    if (!goldens) abort();
}

static void teardown(void) {
    tok_free(qwen);
    cJSON_Delete(goldens);
}

static tok_ids json_ids(const cJSON *a) {
    tok_ids v = { 0 };
    for (const cJSON *x = a->child; x; x = x->next) tok_ids_push(&v, x->valueint);
    return v;
}

static void assert_ids_eq(const tok_ids *got, const tok_ids *want, const char *what) {
    int same = got->n == want->n;
    size_t first = 0;
    for (size_t i = 0; same && i < got->n; i++)
        if (got->v[i] != want->v[i]) same = 0, first = i;
    ck_assert_msg(same, "%s: %zu ids vs %zu expected; first difference at %zu", what, got->n, want->n, first);
}

/* ------------------------------------------------------------------ goldens */

/* The conversations behind the golden cases, written from their names and
 * the reference script's messages; image token counts come from the golden
 * image_grid_thw. */
typedef struct {
    chat_part parts[3][8];
    chat_msg msgs[3];
    int n;
} conversation;

static int image_tokens(const cJSON *grid, int k, int merge) {
    const cJSON *g = cJSON_GetArrayItem(grid, k);
    return cJSON_GetArrayItem(g, 0)->valueint * cJSON_GetArrayItem(g, 1)->valueint *
           cJSON_GetArrayItem(g, 2)->valueint / (merge * merge);
}

static void build_case(conversation *c, const char *name, const cJSON *grid, int merge) {
    memset(c, 0, sizeof *c);
    chat_part *u = c->parts[1];
    if (!strcmp(name, "text")) {
        u[0].text = "Hello! Describe the weather in three words.";
        c->msgs[0] = (chat_msg){ CHAT_USER, u, 1 };
        c->n = 1;
    } else if (!strcmp(name, "image")) {
        u[0].image_tokens = image_tokens(grid, 0, merge);
        u[1].text = "What is in this image?";
        c->msgs[0] = (chat_msg){ CHAT_USER, u, 2 };
        c->n = 1;
    } else if (!strcmp(name, "two_images")) {
        c->parts[0][0].text = "You are a careful assistant.";
        c->msgs[0] = (chat_msg){ CHAT_SYSTEM, c->parts[0], 1 };
        u[0].image_tokens = image_tokens(grid, 0, merge);
        u[1].text = " and ";
        u[2].image_tokens = image_tokens(grid, 1, merge);
        u[3].text = "Compare the two pictures.";
        c->msgs[1] = (chat_msg){ CHAT_USER, u, 4 };
        c->n = 2;
    } else if (!strcmp(name, "text_then_image")) {
        u[0].text = "Look at this:";
        u[1].image_tokens = image_tokens(grid, 0, merge);
        c->msgs[0] = (chat_msg){ CHAT_USER, u, 2 };
        c->n = 1;
    } else {
        ck_abort_msg("golden case %s has no conversation in this test", name);
    }
}

static int model_merge(const char *model) {
    char rel[256];
    snprintf(rel, sizeof rel, "models/%s/config.json", model);
    char *json = slurp(data_path(rel), NULL);
    cJSON *root = cJSON_Parse(json);
    int merge = cJSON_GetObjectItem(cJSON_GetObjectItem(root, "vision_config"), "spatial_merge_size")->valueint;
    cJSON_Delete(root);
    free(json);
    return merge;
}

static const char *MODELS[] = { "tiny-qwen3vl", "tiny-qwen3vl-moe", "shape-qwen3vl-2b" };

START_TEST(test_golden_prompts) {
    const char *model = MODELS[_i];
    int merge = model_merge(model), ncases = 0;
    const cJSON *cases = cJSON_GetObjectItem(cJSON_GetObjectItem(goldens, model), "cases");
    for (const cJSON *gc = cases->child; gc; gc = gc->next, ncases++) {
        conversation c;
        build_case(&c, gc->string, cJSON_GetObjectItem(gc, "image_grid_thw"), merge);
        char err[QVL_ERR_MAX] = "", what[256];
        snprintf(what, sizeof what, "%s/%s", model, gc->string);
        char *text = chat_render(&INSTRUCT, c.msgs, c.n, 1, err);
        ck_assert_msg(text != NULL, "%s: %s", what, err);
        ck_assert_str_eq(text, cJSON_GetObjectItem(gc, "prompt_text")->valuestring);
        free(text);
        tok_ids got = { 0 }, want = json_ids(cJSON_GetObjectItem(gc, "input_ids"));
        ck_assert_msg(chat_encode(&INSTRUCT, qwen, c.msgs, c.n, 1, &got, err) == 0, "%s: %s", what, err);
        assert_ids_eq(&got, &want, what);
        tok_ids_free(&got);
        tok_ids_free(&want);
    }
    ck_assert_int_gt(ncases, 0);
}
END_TEST

/* The second user message of each model's multiturn golden. */
static const char *follow_question(const char *model) {
    return strcmp(model, "shape-qwen3vl-2b") ? "Tell me more about the colors." : "More.";
}

START_TEST(test_golden_multiturn) {
    const char *model = MODELS[_i];
    const cJSON *m = cJSON_GetObjectItem(goldens, model);
    const cJSON *mt = cJSON_GetObjectItem(m, "multiturn");
    const char *first = cJSON_GetObjectItem(mt, "first_case")->valuestring;
    const cJSON *gc = cJSON_GetObjectItem(cJSON_GetObjectItem(m, "cases"), first);
    conversation c;
    build_case(&c, first, cJSON_GetObjectItem(gc, "image_grid_thw"), model_merge(model));
    char err[QVL_ERR_MAX] = "";

    /* the cache: first prompt, then the reply's ids exactly as generated */
    tok_ids cache = { 0 };
    ck_assert_msg(chat_encode(&INSTRUCT, qwen, c.msgs, c.n, 1, &cache, err) == 0, "%s", err);
    const cJSON *greedy = cJSON_GetObjectItem(gc, "greedy_ids");
    for (const cJSON *x = greedy->child; x; x = x->next) tok_ids_push(&cache, x->valueint);

    /* the reply stopped at the token limit: <|im_end|> closes it */
    chat_part q = { follow_question(model), 0 };
    chat_msg user = { CHAT_USER, &q, 1 };
    char *text = chat_render_next_turn(&INSTRUCT, 0, &user, err);
    ck_assert_msg(text != NULL, "%s", err);
    ck_assert_str_eq(text, cJSON_GetObjectItem(mt, "follow_text")->valuestring);
    free(text);
    tok_ids follow = { 0 }, want_follow = json_ids(cJSON_GetObjectItem(mt, "follow_ids"));
    ck_assert_msg(chat_encode_next_turn(&INSTRUCT, qwen, 0, &user, &follow, err) == 0, "%s", err);
    assert_ids_eq(&follow, &want_follow, "follow_ids");
    for (size_t i = 0; i < follow.n; i++) tok_ids_push(&cache, follow.v[i]);
    tok_ids want_full = json_ids(cJSON_GetObjectItem(mt, "full_input_ids"));
    assert_ids_eq(&cache, &want_full, "full_input_ids");

    /* a reply that ended with <|im_end|> itself gets the same tokens after it */
    tok_ids closed = { 0 };
    tok_ids_push(&closed, tok_special_id(qwen, "<|im_end|>"));
    ck_assert_msg(chat_encode_next_turn(&INSTRUCT, qwen, 1, &user, &closed, err) == 0, "%s", err);
    assert_ids_eq(&closed, &want_follow, "closed reply + next turn");

    tok_ids_free(&cache);
    tok_ids_free(&follow);
    tok_ids_free(&want_follow);
    tok_ids_free(&want_full);
    tok_ids_free(&closed);
}
END_TEST

/* Many turns: appending turn by turn gives the ids of the whole conversation
 * rendered at once, when each reply is cached as the ids of its text (the
 * replies start with a letter, so the "\n" before them is a piece of its own
 * in both cases, and <|im_end|> after them splits the text anyway). */
START_TEST(test_incremental_equals_full) {
    const char *turns[][2] = {
        { "What is 2+2?", "Four." },
        { "And in French?", "Quatre, which is spelled q-u-a-t-r-e." },
        { "Thanks! 谢谢", "De rien 😀" },
    };
    chat_part img = { NULL, 7 }, sys = { "Be brief.", 0 };
    chat_part parts[6][2];
    chat_msg msgs[7];
    int n = 0;
    msgs[n++] = (chat_msg){ CHAT_SYSTEM, &sys, 1 };
    char err[QVL_ERR_MAX] = "";
    tok_ids inc = { 0 };
    for (int t = 0; t < 3; t++) {
        parts[2 * t][0] = img;
        parts[2 * t][1] = (chat_part){ turns[t][0], 0 };
        chat_msg user = { CHAT_USER, parts[2 * t], 2 };
        msgs[n++] = user;
        if (t == 0) ck_assert_msg(chat_encode(&INSTRUCT, qwen, msgs, n, 1, &inc, err) == 0, "%s", err);
        else ck_assert_msg(chat_encode_next_turn(&INSTRUCT, qwen, 0, &user, &inc, err) == 0, "%s", err);
        if (t < 2) {
            parts[2 * t + 1][0] = (chat_part){ turns[t][1], 0 };
            msgs[n++] = (chat_msg){ CHAT_ASSISTANT, parts[2 * t + 1], 1 };
            ck_assert(tok_encode(qwen, turns[t][1], strlen(turns[t][1]), &inc, err) == 0);
        }
    }
    tok_ids full = { 0 };
    ck_assert_msg(chat_encode(&INSTRUCT, qwen, msgs, n, 1, &full, err) == 0, "%s", err);
    assert_ids_eq(&inc, &full, "incremental vs full");
    int pads = 0;
    for (size_t i = 0; i < full.n; i++) pads += full.v[i] == tok_special_id(qwen, "<|image_pad|>");
    ck_assert_int_eq(pads, 21);
    tok_ids_free(&inc);
    tok_ids_free(&full);
}
END_TEST

/* ------------------------------------------------------------------ Instruct details */

START_TEST(test_instruct_rules) {
    char err[QVL_ERR_MAX] = "";
    /* images anywhere in a user message, several text parts concatenated,
     * an assistant reply, a system message that is not first (dropped by the
     * Instruct template), no generation prompt */
    chat_part u1[] = { { "A", 0 }, { NULL, 3 }, { "B", 0 }, { NULL, 1 } };
    chat_part a1[] = { { "x", 0 }, { "y", 0 } };
    chat_part s2[] = { { "late system", 0 } };
    chat_part u2[] = { { NULL, 2 } };
    chat_msg msgs[] = { { CHAT_USER, u1, 4 }, { CHAT_ASSISTANT, a1, 2 }, { CHAT_SYSTEM, s2, 1 }, { CHAT_USER, u2, 1 } };
    char *text = chat_render(&INSTRUCT, msgs, 4, 0, err);
    ck_assert_msg(text != NULL, "%s", err);
    ck_assert_str_eq(text,
                     "<|im_start|>user\nA<|vision_start|><|image_pad|><|vision_end|>B"
                     "<|vision_start|><|image_pad|><|vision_end|><|im_end|>\n"
                     "<|im_start|>assistant\nxy<|im_end|>\n"
                     "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|><|im_end|>\n");
    free(text);
    /* ids: the pads expand 3, 1, 2 in order */
    tok_ids ids = { 0 };
    ck_assert_msg(chat_encode(&INSTRUCT, qwen, msgs, 4, 0, &ids, err) == 0, "%s", err);
    int pad = tok_special_id(qwen, "<|image_pad|>"), vs = tok_special_id(qwen, "<|vision_start|>");
    int runs[3], nr = 0;
    for (size_t i = 0; i < ids.n; i++)
        if (ids.v[i] == vs) {
            int k = 0;
            while (ids.v[i + 1 + k] == pad) k++;
            ck_assert_int_lt(nr, 3);
            runs[nr++] = k;
        }
    ck_assert_int_eq(nr, 3);
    ck_assert_int_eq(runs[0], 3);
    ck_assert_int_eq(runs[1], 1);
    ck_assert_int_eq(runs[2], 2);
    tok_ids_free(&ids);
    /* an empty conversation with the generation prompt */
    text = chat_render(&INSTRUCT, NULL, 0, 1, err);
    ck_assert_str_eq(text, "<|im_start|>assistant\n");
    free(text);
    /* a reply containing </think> is plain text for Instruct */
    chat_part a2[] = { { "r</think>\n\na", 0 } };
    chat_msg m2[] = { { CHAT_ASSISTANT, a2, 1 } };
    text = chat_render(&INSTRUCT, m2, 1, 0, err);
    ck_assert_str_eq(text, "<|im_start|>assistant\nr</think>\n\na<|im_end|>\n");
    free(text);
}
END_TEST

START_TEST(test_errors) {
    char err[QVL_ERR_MAX] = "";
    tok_ids out = { 0 };
    tok_ids_push(&out, 42);
    chat_part img = { NULL, 4 }, zero = { NULL, 0 }, sneaky = { "look: <|image_pad|>", 0 };
    chat_msg bad_role = { CHAT_ASSISTANT, &img, 1 }, bad_count = { CHAT_USER, &zero, 1 };
    chat_msg pad_text = { CHAT_USER, &sneaky, 1 }, sys_img = { CHAT_SYSTEM, &img, 1 };
    ck_assert_ptr_null(chat_render(&INSTRUCT, &bad_role, 1, 1, err));
    ck_assert_msg(strstr(err, "message 1") && strstr(err, "user messages"), "%s", err);
    ck_assert_ptr_null(chat_render(&INSTRUCT, &sys_img, 1, 1, err));
    ck_assert_int_eq(chat_encode(&INSTRUCT, qwen, &bad_count, 1, 1, &out, err), -1);
    ck_assert_msg(strstr(err, "at least one token"), "%s", err);
    /* text spelling the image placeholder would shift the images */
    ck_assert_int_eq(chat_encode(&INSTRUCT, qwen, &pad_text, 1, 1, &out, err), -1);
    ck_assert_msg(strstr(err, "<|image_pad|>"), "%s", err);
    ck_assert_int_eq(chat_encode_next_turn(&INSTRUCT, qwen, 0, &pad_text, &out, err), -1);
    chat_msg two[] = { { CHAT_USER, &img, 1 }, pad_text };
    ck_assert_int_eq(chat_encode(&INSTRUCT, qwen, two, 2, 1, &out, err), -1);
    /* the next turn is a user turn */
    chat_part hi = { "hi", 0 };
    chat_msg asst = { CHAT_ASSISTANT, &hi, 1 };
    ck_assert_int_eq(chat_encode_next_turn(&INSTRUCT, qwen, 0, &asst, &out, err), -1);
    ck_assert_msg(strstr(err, "user"), "%s", err);
    ck_assert_ptr_null(chat_render_next_turn(&INSTRUCT, 0, &asst, err));
    chat_msg weird = { (chat_role)7, &hi, 1 };
    ck_assert_ptr_null(chat_render(&INSTRUCT, &weird, 1, 1, err));
    /* nothing was appended by the failures */
    ck_assert_uint_eq(out.n, 1);
    ck_assert_int_eq(out.v[0], 42);
    tok_ids_free(&out);
}
END_TEST

/* ------------------------------------------------------------------ Thinking */

START_TEST(test_thinking_render) {
    char err[QVL_ERR_MAX] = "";
    chat_part hi = { "Hi", 0 }, bye = { "Bye", 0 };
    /* as generated after "<think>\n", and with the opening tag written out */
    chat_part r1 = { "plan\n</think>\n\nHello!", 0 }, r1b = { "<think>\nplan\n</think>\n\nHello!", 0 };
    chat_msg first[] = { { CHAT_USER, &hi, 1 } };
    char *text = chat_render(&THINKING, first, 1, 1, err);
    ck_assert_str_eq(text, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n");
    free(text);
    /* an earlier reply loses its reasoning */
    const char *want = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
                       "<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n<think>\n";
    for (int k = 0; k < 2; k++) {
        chat_msg conv[] = { { CHAT_USER, &hi, 1 }, { CHAT_ASSISTANT, k ? &r1b : &r1, 1 }, { CHAT_USER, &bye, 1 } };
        text = chat_render(&THINKING, conv, 3, 1, err);
        ck_assert_str_eq(text, want);
        free(text);
    }
    /* replies after the last user message keep it; the last one always gets a block */
    chat_part a1 = { "\nr1\n</think>\n\nA1", 0 }, a2 = { "A2", 0 };
    chat_msg tail[] = { { CHAT_USER, &hi, 1 }, { CHAT_ASSISTANT, &a1, 1 }, { CHAT_ASSISTANT, &a2, 1 } };
    text = chat_render(&THINKING, tail, 3, 0, err);
    ck_assert_str_eq(text, "<|im_start|>user\nHi<|im_end|>\n"
                           "<|im_start|>assistant\n<think>\nr1\n</think>\n\nA1<|im_end|>\n"
                           "<|im_start|>assistant\n<think>\n\n</think>\n\nA2<|im_end|>\n");
    free(text);
    /* a reply without reasoning after the last query, not last: plain */
    chat_msg mid[] = { { CHAT_USER, &hi, 1 }, { CHAT_ASSISTANT, &a2, 1 }, { CHAT_ASSISTANT, &a2, 1 } };
    text = chat_render(&THINKING, mid, 3, 0, err);
    ck_assert_str_eq(text, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nA2<|im_end|>\n"
                           "<|im_start|>assistant\n<think>\n\n</think>\n\nA2<|im_end|>\n");
    free(text);
    /* a later system message is rendered where it stands */
    chat_part s = { "S", 0 };
    chat_msg sys[] = { { CHAT_USER, &hi, 1 }, { CHAT_SYSTEM, &s, 1 } };
    text = chat_render(&THINKING, sys, 2, 0, err);
    ck_assert_str_eq(text, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>system\nS<|im_end|>\n");
    free(text);
    /* the next turn opens the reasoning too */
    text = chat_render_next_turn(&THINKING, 0, first, err);
    ck_assert_str_eq(text, "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n");
    free(text);
    /* in ids the prompt ends with <think> and "\n" (golden: "<think>\n..." -> 151667, 198) */
    tok_ids ids = { 0 };
    ck_assert(chat_encode(&THINKING, qwen, first, 1, 1, &ids, err) == 0);
    ck_assert_int_eq(ids.v[ids.n - 2], tok_special_id(qwen, "<think>"));
    tok_ids nl = { 0 };
    tok_encode(qwen, "\n", 1, &nl, err);
    ck_assert_int_eq(ids.v[ids.n - 1], nl.v[0]);
    tok_ids_free(&ids);
    tok_ids_free(&nl);
}
END_TEST

static void assert_view(const char *s, size_t n, const char *want) {
    ck_assert_msg(n == strlen(want) && !memcmp(s, want, n), "got '%.*s' want '%s'", (int)n, s, want);
}

START_TEST(test_split_reply) {
    chat_reply r;
    const char *done = "The user greets me.\nI greet back.\n</think>\n\nHello!";
    chat_split_reply(&THINKING, done, strlen(done), &r);
    assert_view(r.reasoning, r.reasoning_len, "The user greets me.\nI greet back.");
    assert_view(r.answer, r.answer_len, "Hello!");
    ck_assert_int_eq(r.in_reasoning, 0);
    const char *tagged = "<think>\n\nwhy\n</think>answer\n";
    chat_split_reply(&THINKING, tagged, strlen(tagged), &r);
    assert_view(r.reasoning, r.reasoning_len, "why");
    assert_view(r.answer, r.answer_len, "answer\n");
    const char *going = "\nStill thinking about it";
    chat_split_reply(&THINKING, going, strlen(going), &r);
    assert_view(r.reasoning, r.reasoning_len, "Still thinking about it");
    ck_assert_uint_eq(r.answer_len, 0);
    ck_assert_int_eq(r.in_reasoning, 1);
    chat_split_reply(&INSTRUCT, done, strlen(done), &r);
    assert_view(r.answer, r.answer_len, done);
    ck_assert_uint_eq(r.reasoning_len, 0);
    ck_assert_int_eq(r.in_reasoning, 0);
}
END_TEST

/* ------------------------------------------------------------------ finding the template */

/* The generation prompt of Qwen3-VL-*-Thinking's chat template, as it ships. */
static const char THINKING_TAIL[] =
    "{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n<think>\\n' }}\n{%- endif %}\n";

static void put(const char *dir, const char *name, const char *text) {
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    write_file(path, text, strlen(text));
}

static char *json_with_template(const char *tpl, int as_list) {
    cJSON *root = cJSON_CreateObject();
    if (as_list) {
        cJSON *list = cJSON_AddArrayToObject(root, "chat_template");
        cJSON *tool = cJSON_CreateObject(), *def = cJSON_CreateObject();
        cJSON_AddStringToObject(tool, "name", "tool_use");
        cJSON_AddStringToObject(tool, "template", "<|im_start|>tools");
        cJSON_AddStringToObject(def, "name", "default");
        cJSON_AddStringToObject(def, "template", tpl);
        cJSON_AddItemToArray(list, tool);
        cJSON_AddItemToArray(list, def);
    } else {
        cJSON_AddStringToObject(root, "chat_template", tpl);
    }
    char *s = cJSON_Print(root);
    cJSON_Delete(root);
    return s;
}

static int load_format(const char *dir, chat_format *f, char *err) {
    qvl_source src = source_dir(dir);
    return chat_format_load(&src, f, err);
}

START_TEST(test_template_detection) {
    char err[QVL_ERR_MAX] = "";
    chat_format f;
    char *instruct = slurp(data_path("chat_template.jinja"), NULL);
    char thinking[1024];
    snprintf(thinking, sizeof thinking, "{%%- for message in messages %%}<|im_start|>...%s", THINKING_TAIL);
    ck_assert(chat_template_is_thinking(thinking));
    ck_assert(!chat_template_is_thinking(instruct));

    /* nothing: the Instruct format */
    const char *d = tmp_dir("chat-none");
    ck_assert_int_eq(load_format(d, &f, err), 0);
    ck_assert_int_eq(f.thinking, 0);
    ck_assert_str_eq(f.origin, "");
    /* chat_template.json, plain and as a list of named templates */
    for (int as_list = 0; as_list < 2; as_list++) {
        d = tmp_dir("chat-json");
        char *j = json_with_template(thinking, as_list);
        put(d, "chat_template.json", j);
        free(j);
        ck_assert_msg(load_format(d, &f, err) == 0, "%s", err);
        ck_assert_int_eq(f.thinking, 1);
        ck_assert_str_eq(f.origin, "chat_template.json");
        /* chat_template.jinja comes first */
        put(d, "chat_template.jinja", instruct);
        ck_assert_msg(load_format(d, &f, err) == 0, "%s", err);
        ck_assert_int_eq(f.thinking, 0);
        ck_assert_str_eq(f.origin, "chat_template.jinja");
    }
    /* tokenizer_config.json */
    d = tmp_dir("chat-tokcfg");
    char *j = json_with_template(thinking, 0);
    put(d, "tokenizer_config.json", j);
    free(j);
    ck_assert_msg(load_format(d, &f, err) == 0, "%s", err);
    ck_assert_int_eq(f.thinking, 1);
    ck_assert_str_eq(f.origin, "tokenizer_config.json");
    /* a tokenizer_config.json without a template */
    d = tmp_dir("chat-notpl");
    put(d, "tokenizer_config.json", "{\"eos_token\": \"<|im_end|>\"}");
    ck_assert_msg(load_format(d, &f, err) == 0, "%s", err);
    ck_assert_str_eq(f.origin, "");
    /* the Qwen3 text tokenizer's hybrid template opens no <think> by default */
    ck_assert_msg(load_format(data_path("tokenizer"), &f, err) == 0, "%s", err);
    ck_assert_int_eq(f.thinking, 0);
    ck_assert_str_eq(f.origin, "tokenizer_config.json");
    /* the demo model */
    ck_assert_msg(load_format(data_path("../../assets/demo-model"), &f, err) == 0, "%s", err);
    ck_assert_int_eq(f.thinking, 0);
    ck_assert_str_eq(f.origin, "chat_template.jinja");

    /* errors name the file */
    d = tmp_dir("chat-bad");
    put(d, "tokenizer_config.json", "{\"chat_template\": ");
    ck_assert_int_eq(load_format(d, &f, err), -1);
    ck_assert_msg(strstr(err, "tokenizer_config.json") && strstr(err, "JSON"), "%s", err);
    put(d, "tokenizer_config.json", "{\"chat_template\": 5}");
    ck_assert_int_eq(load_format(d, &f, err), -1);
    ck_assert_msg(strstr(err, "tokenizer_config.json"), "%s", err);
    put(d, "chat_template.jinja", "{{ bos_token }}{% for m in messages %}[INST] {{ m.content }}{% endfor %}");
    ck_assert_int_eq(load_format(d, &f, err), -1);
    ck_assert_msg(strstr(err, "chat_template.jinja") && strstr(err, "ChatML"), "%s", err);
    free(instruct);
}
END_TEST

/* ------------------------------------------------------------------ the demo model */

START_TEST(test_demo_prompt) {
    char err[QVL_ERR_MAX] = "";
    qvl_source src = source_dir(data_path("../../assets/demo-model"));
    qvl_tokenizer *t = tok_load_source(&src, err);
    ck_assert_msg(t != NULL, "%s", err);
    chat_format f;
    ck_assert_msg(chat_format_load(&src, &f, err) == 0, "%s", err);
    chat_part parts[] = { { NULL, 16 }, { "Describe the image.", 0 } };
    chat_msg user = { CHAT_USER, parts, 2 };
    tok_ids ids = { 0 };
    ck_assert_msg(chat_encode(&f, t, &user, 1, 1, &ids, err) == 0, "%s", err);
    int im_start = tok_special_id(t, "<|im_start|>"), im_end = tok_special_id(t, "<|im_end|>");
    int vs = tok_special_id(t, "<|vision_start|>"), ve = tok_special_id(t, "<|vision_end|>");
    int pad = tok_special_id(t, "<|image_pad|>");
    ck_assert_int_eq(ids.v[0], im_start);
    size_t at = 0;
    while (at < ids.n && ids.v[at] != vs) at++;
    ck_assert_uint_lt(at + 17, ids.n);
    for (int k = 1; k <= 16; k++) ck_assert_int_eq(ids.v[at + (size_t)k], pad);
    ck_assert_int_eq(ids.v[at + 17], ve);
    int ends = 0;
    for (size_t i = 0; i < ids.n; i++) ends += ids.v[i] == im_end;
    ck_assert_int_eq(ends, 1);
    size_t last = ids.n;                               /* ... <|im_start|>assistant\n */
    while (last > 0 && ids.v[last - 1] != im_start) last--;
    char *gen = tok_decode(t, ids.v + last, ids.n - last, 0, NULL, err);
    ck_assert_str_eq(gen, "assistant\n");
    free(gen);
    char *text = tok_decode(t, ids.v, ids.n, 1, NULL, err);
    ck_assert_str_eq(text, "user\nDescribe the image.\nassistant\n");
    free(text);
    tok_ids_free(&ids);
    tok_free(t);
}
END_TEST

int main(void) {
    Suite *s = suite_create("chat");
    TCase *tc = tcase_create("chat");
    tcase_add_unchecked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, test_golden_prompts, 0, 3);
    tcase_add_loop_test(tc, test_golden_multiturn, 0, 3);
    tcase_add_test(tc, test_incremental_equals_full);
    tcase_add_test(tc, test_instruct_rules);
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_thinking_render);
    tcase_add_test(tc, test_split_reply);
    tcase_add_test(tc, test_template_detection);
    tcase_add_test(tc, test_demo_prompt);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
