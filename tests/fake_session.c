/* fake_session.c - a stand-in for model/session.c, for the UI and worker tests.
 *
 * It behaves like a session as session.h describes (loading progress, states,
 * streamed pieces, cancel within one step, a conversation that /save and /load
 * round-trip) but computes no model: the reply is made from the user's text, so
 * a test knows what must appear, and it arrives slowly, so a test can cancel it.
 *
 * Replies, by what the user's text contains:
 *   "long"   -> 400 words "w0 w1 ..." (long enough to cancel, to scroll)
 *   "think"  -> reasoning "pondering TEXT" first (reasoning = 1), then the answer
 *   anything -> "You said: TEXT." then, per image, " Image N is WxH bytes.", then
 *               a Markdown sample: **bold**, `code`, a fenced block.
 * Model directory names select behaviours: one containing "missing" fails to
 * open; "thinking" marks a Thinking checkpoint.
 * Timing (ms) from the environment: QVL_FAKE_TOKEN_MS (default 10) per token,
 * QVL_FAKE_LOAD_MS (default 100) for loading. */
#include "session.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "common.h"

typedef struct { char role[16]; char *text; char *image; } fake_msg;

struct qvl_session {
    qvl_session_hooks hooks;
    atomic_int cancel;
    int token_ms;
    int ctx_total, ctx_used, turns, max_tokens, thinking;
    char *system;
    fake_msg *msgs;
    int nmsgs;
    /* the reply in progress: pieces cut from reasoning then answer */
    char *reasoning_src, *answer_src;
    size_t pos;                 /* into reasoning_src then answer_src */
    int in_answer, produced;
    char piece[16];
    char *reply, *reply_reasoning;
    size_t reply_len, reasoning_len;
    qvl_reply_info info;
    double last_tok_s;
};

static void sleep_ms(int ms) {
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);
}

static int env_int(const char *name, int def) {
    const char *v = getenv(name);
    return v && *v ? atoi(v) : def;
}

static void state(qvl_session *s, qvl_state st, double f) {
    if (s->hooks.state) s->hooks.state(s->hooks.ctx, st, f);
}

qvl_session *session_open(const qvl_session_opts *o, const qvl_session_hooks *hooks, char *err) {
    const char *dir = o->model && o->model->dir ? o->model->dir : "";
    qvl_session *s = calloc(1, sizeof *s);
    if (hooks) s->hooks = *hooks;
    int load_ms = env_int("QVL_FAKE_LOAD_MS", 100);
    for (int i = 1; i <= 4; i++) {
        sleep_ms(load_ms / 4);
        state(s, QVL_STATE_LOADING, i / 4.0);
    }
    if (strstr(dir, "missing")) {
        qvl_seterr(err, "%s: no such model directory", dir);
        free(s);
        return NULL;
    }
    s->token_ms = env_int("QVL_FAKE_TOKEN_MS", 10);
    s->ctx_total = o->ctx > 0 ? o->ctx : 8192;
    s->max_tokens = o->max_tokens;
    s->thinking = strstr(dir, "thinking") != NULL;
    s->system = o->system ? strdup(o->system) : NULL;
    return s;
}

static void free_reply(qvl_session *s) {
    free(s->reasoning_src); free(s->answer_src); free(s->reply); free(s->reply_reasoning);
    s->reasoning_src = s->answer_src = s->reply = s->reply_reasoning = NULL;
}

static void free_msgs(qvl_session *s) {
    for (int i = 0; i < s->nmsgs; i++) { free(s->msgs[i].text); free(s->msgs[i].image); }
    free(s->msgs);
    s->msgs = NULL;
    s->nmsgs = 0;
}

void session_close(qvl_session *s) {
    if (!s) return;
    free_reply(s);
    free_msgs(s);
    free(s->system);
    free(s);
}

static void add_msg(qvl_session *s, const char *role, const char *text, const char *image) {
    s->msgs = realloc(s->msgs, (size_t)(s->nmsgs + 1) * sizeof *s->msgs);
    fake_msg *m = &s->msgs[s->nmsgs++];
    snprintf(m->role, sizeof m->role, "%s", role);
    m->text = strdup(text ? text : "");
    m->image = image ? strdup(image) : NULL;
}

static void append(char **buf, size_t *len, const char *s) {
    size_t n = strlen(s);
    *buf = realloc(*buf, *len + n + 1);
    memcpy(*buf + *len, s, n + 1);
    *len += n;
}

int session_send(qvl_session *s, const qvl_part *parts, int nparts, char *err) {
    atomic_store(&s->cancel, 0);           /* like a real session: a new reply starts uncancelled */
    char *text = calloc(1, 1), *answer = calloc(1, 1);
    size_t tlen = 0, alen = 0;
    const char *first_image = NULL;
    int nimg = 0;
    char buf[256];
    for (int i = 0; i < nparts; i++) {
        if (parts[i].text) append(&text, &tlen, parts[i].text);
        if (parts[i].image_path) {
            struct stat st;
            if (stat(parts[i].image_path, &st) != 0) {
                qvl_seterr(err, "%s: cannot open image", parts[i].image_path);
                free(text); free(answer);
                return -1;
            }
            if (!first_image) first_image = parts[i].image_path;
            state(s, QVL_STATE_ENCODING, 0);
            sleep_ms(s->token_ms);
            snprintf(buf, sizeof buf, " Image %d is %lld bytes.", ++nimg, (long long)st.st_size);
            append(&answer, &alen, buf);
        }
    }
    state(s, QVL_STATE_PREFILL, 0);
    sleep_ms(s->token_ms);
    state(s, QVL_STATE_PREFILL, 1);
    free_reply(s);
    size_t rlen = 0;
    char *reasoning = calloc(1, 1);
    if (s->thinking || strstr(text, "think")) {
        append(&reasoning, &rlen, "pondering ");
        append(&reasoning, &rlen, text);
    }
    char *full = calloc(1, 1);
    size_t flen = 0;
    if (strstr(text, "long")) {
        for (int i = 0; i < 400; i++) {
            snprintf(buf, sizeof buf, "w%d ", i);
            append(&full, &flen, buf);
        }
    } else {
        append(&full, &flen, "You said: ");
        append(&full, &flen, text);
        append(&full, &flen, ".");
        append(&full, &flen, answer);
        append(&full, &flen, " Here is **bold** and `code`:\n```\nint x = 1;\n```\nDone.");
    }
    free(answer);
    add_msg(s, "user", text, first_image);
    s->turns++;
    s->ctx_used += (int)(tlen / 4) + 8 + 64 * nimg;
    free(text);
    s->reasoning_src = reasoning;
    s->answer_src = full;
    s->pos = 0;
    s->in_answer = rlen == 0;
    s->produced = 0;
    s->reply = calloc(1, 1);
    s->reply_reasoning = calloc(1, 1);
    s->reply_len = s->reasoning_len = 0;
    memset(&s->info, 0, sizeof s->info);
    s->info.prompt_tokens = 8;
    s->info.image_tokens = 64 * nimg;
    return 0;
}

/* Ends the reply: records it in the conversation. */
static int finish(qvl_session *s, const char *why) {
    s->info.finish_reason = why;
    s->info.completion_tokens = s->produced;
    s->info.decode_tok_s = s->token_ms > 0 ? 1000.0 / s->token_ms : 1000.0;
    s->last_tok_s = s->info.decode_tok_s;
    add_msg(s, "assistant", s->reply, NULL);
    free(s->reasoning_src); free(s->answer_src);
    s->reasoning_src = s->answer_src = NULL;
    state(s, QVL_STATE_IDLE, 0);
    return 0;
}

int session_next(qvl_session *s, qvl_token *tok, char *err) {
    (void)err;
    if (!s->answer_src) return 0;          /* already finished */
    if (atomic_load(&s->cancel)) return finish(s, "cancelled");
    if (s->produced == 0) state(s, QVL_STATE_GENERATING, 0);
    sleep_ms(s->token_ms);
    if (atomic_load(&s->cancel)) return finish(s, "cancelled");
    const char *src = s->in_answer ? s->answer_src : s->reasoning_src;
    if (!src[s->pos]) {
        if (!s->in_answer) { s->in_answer = 1; s->pos = 0; src = s->answer_src; }
        if (!src[s->pos]) return finish(s, "stop");
    }
    if (s->max_tokens > 0 && s->produced >= s->max_tokens) return finish(s, "length");
    if (s->ctx_used >= s->ctx_total) return finish(s, "length");
    /* a piece: up to 3 characters, never splitting a UTF-8 sequence */
    size_t n = 0;
    for (int chars = 0; chars < 3 && src[s->pos + n]; chars++) {
        n++;
        while ((src[s->pos + n] & 0xC0) == 0x80) n++;
    }
    memcpy(s->piece, src + s->pos, n);
    s->piece[n] = 0;
    s->pos += n;
    if (s->in_answer) append(&s->reply, &s->reply_len, s->piece);
    else append(&s->reply_reasoning, &s->reasoning_len, s->piece);
    memset(tok, 0, sizeof *tok);
    tok->id = s->produced++;
    tok->piece = s->piece;
    tok->reasoning = !s->in_answer;
    s->ctx_used++;
    return 1;
}

void session_cancel(qvl_session *s) { atomic_store(&s->cancel, 1); }
const char *session_reply_text(const qvl_session *s) { return s->reply ? s->reply : ""; }
const char *session_reply_reasoning(const qvl_session *s) { return s->reply_reasoning ? s->reply_reasoning : ""; }
void session_reply_info(const qvl_session *s, qvl_reply_info *info) { *info = s->info; }

void session_clear(qvl_session *s) {
    free_reply(s);
    free_msgs(s);
    s->turns = 0;
    s->ctx_used = 0;
}

int session_set_system(qvl_session *s, const char *text, char *err) {
    (void)err;
    free(s->system);
    s->system = text && *text ? strdup(text) : NULL;
    session_clear(s);
    return 0;
}

int session_set_param(qvl_session *s, const char *name, const char *value, char *err) {
    static const char *known[] = { "temp", "top_k", "top_p", "min_p", "repeat_penalty",
                                   "presence_penalty", "seed", "max_tokens", "greedy", "ignore_eos" };
    for (size_t i = 0; i < sizeof known / sizeof *known; i++)
        if (!strcmp(name, known[i])) {
            if (!strcmp(name, "max_tokens")) s->max_tokens = atoi(value);
            return 0;
        }
    qvl_seterr(err, "/set: unknown parameter '%s'", name);
    return -1;
}

int session_save(const qvl_session *s, const char *path, char *err) {
    FILE *f = fopen(path, "w");
    if (!f) { qvl_seterr(err, "%s: cannot create", path); return -1; }
    for (int i = -1; i < s->nmsgs; i++) {
        if (i < 0 && !s->system) continue;
        cJSON *j = cJSON_CreateObject();
        cJSON_AddStringToObject(j, "role", i < 0 ? "system" : s->msgs[i].role);
        if (i >= 0 && s->msgs[i].image) {
            cJSON *arr = cJSON_AddArrayToObject(j, "content");
            cJSON *img = cJSON_CreateObject();
            cJSON_AddStringToObject(img, "type", "image");
            cJSON_AddStringToObject(img, "image", s->msgs[i].image);
            cJSON_AddItemToArray(arr, img);
            cJSON *txt = cJSON_CreateObject();
            cJSON_AddStringToObject(txt, "type", "text");
            cJSON_AddStringToObject(txt, "text", s->msgs[i].text);
            cJSON_AddItemToArray(arr, txt);
        } else {
            cJSON_AddStringToObject(j, "content", i < 0 ? s->system : s->msgs[i].text);
        }
        char *line = cJSON_PrintUnformatted(j);
        fprintf(f, "%s\n", line);
        free(line);
        cJSON_Delete(j);
    }
    fclose(f);
    return 0;
}

int session_load(qvl_session *s, const char *path, char *err) {
    FILE *f = fopen(path, "r");
    if (!f) { qvl_seterr(err, "%s: cannot open", path); return -1; }
    session_clear(s);
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, f) > 0) {
        cJSON *j = cJSON_Parse(line);
        const char *role = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "role"));
        cJSON *c = cJSON_GetObjectItemCaseSensitive(j, "content");
        if (role) {
            const char *text = cJSON_GetStringValue(c);
            const char *image = NULL;
            cJSON *part;
            if (cJSON_IsArray(c)) cJSON_ArrayForEach(part, c) {
                const char *t = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(part, "text"));
                const char *im = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(part, "image"));
                if (t) text = t;
                if (im) image = im;
            }
            if (!strcmp(role, "system")) { free(s->system); s->system = strdup(text ? text : ""); }
            else {
                add_msg(s, role, text, image);
                if (!strcmp(role, "user")) s->turns++;
                s->ctx_used += 8;
            }
        }
        cJSON_Delete(j);
    }
    free(line);
    fclose(f);
    state(s, QVL_STATE_PREFILL, 1);
    return 0;
}

void session_stats(const qvl_session *s, qvl_session_stats *st) {
    memset(st, 0, sizeof *st);
    st->ctx_used = s->ctx_used;
    st->ctx_total = s->ctx_total;
    st->turns = s->turns;
    st->last_decode_tok_s = s->last_tok_s;
    snprintf(st->model_name, sizeof st->model_name, "%s", s->thinking ? "fake-thinking" : "fake-model");
    st->thinking = s->thinking;
}
