/* jsonl.c - the JSONL batch mode (format in jsonl.h).
 *
 * Each input line is parsed with cJSON into the session's qvl_part list (text
 * strings point into the parsed tree, data: URL images are decoded into
 * memory and passed as image_data), then the reply is generated and its
 * object printed on one line.  Anything wrong with a line becomes an error
 * object naming the line; nothing is half-sent, because session_send changes
 * nothing when it fails. */
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "common.h"
#include "batch.h"
#include "message.h"
#include "jsonl.h"

/* ---- output ---- */

static void print_object(FILE *out, cJSON *obj) {
    char *text = cJSON_PrintUnformatted(obj);
    if (text) { fputs(text, out); fputc('\n', out); }
    else fputs("{\"error\":\"out of memory\"}\n", out);
    fflush(out);
    free(text);
    cJSON_Delete(obj);
}

static void print_error(FILE *out, const char *msg, long line) {
    cJSON *obj = cJSON_CreateObject();
    cJSON_AddStringToObject(obj, "error", msg);
    cJSON_AddNumberToObject(obj, "line", (double)line);
    print_object(out, obj);
}

static cJSON *logprob_entry(int id, float logprob) {
    cJSON *e = cJSON_CreateObject();
    cJSON_AddNumberToObject(e, "id", id);
    cJSON_AddNumberToObject(e, "logprob", logprob);
    return e;
}

/* Generates the reply to a sent turn and prints its object. */
static int reply(qvl_session *s, const qvl_options *o, FILE *out, char *err) {
    cJSON *obj = cJSON_CreateObject();
    cJSON *ids = cJSON_CreateArray();
    cJSON *logprobs = o->logprobs > 0 ? cJSON_CreateArray() : NULL;
    qvl_token tok;
    int r;
    while ((r = session_next(s, &tok, err)) == 1) {
        cJSON_AddItemToArray(ids, cJSON_CreateNumber(tok.id));
        if (!logprobs) continue;
        cJSON *e = logprob_entry(tok.id, tok.logprob);
        cJSON *top = cJSON_AddArrayToObject(e, "top");
        for (int i = 0; i < tok.n_top; i++)
            cJSON_AddItemToArray(top, logprob_entry(tok.top_ids[i], tok.top_logprobs[i]));
        cJSON_AddItemToArray(logprobs, e);
    }
    if (r < 0) {
        cJSON_Delete(obj); cJSON_Delete(ids); cJSON_Delete(logprobs);
        return -1;
    }
    qvl_reply_info info;
    qvl_session_stats st;
    session_reply_info(s, &info);
    session_stats(s, &st);
    cJSON_AddStringToObject(obj, "content", session_reply_text(s));
    if (st.thinking) {
        const char *reasoning = session_reply_reasoning(s);
        cJSON_AddStringToObject(obj, "reasoning", reasoning ? reasoning : "");
    }
    cJSON_AddItemToObject(obj, "token_ids", ids);
    cJSON_AddStringToObject(obj, "finish_reason", info.finish_reason);
    cJSON *usage = cJSON_AddObjectToObject(obj, "usage");
    cJSON_AddNumberToObject(usage, "prompt_tokens", info.prompt_tokens);
    cJSON_AddNumberToObject(usage, "completion_tokens", info.completion_tokens);
    cJSON_AddNumberToObject(usage, "image_tokens", info.image_tokens);
    cJSON *timings = cJSON_AddObjectToObject(obj, "timings");
    cJSON_AddNumberToObject(timings, "image_ms", info.image_ms);
    cJSON_AddNumberToObject(timings, "prefill_ms", info.prefill_ms);
    cJSON_AddNumberToObject(timings, "prefill_tok_s", info.prefill_tok_s);
    cJSON_AddNumberToObject(timings, "decode_tok_s", info.decode_tok_s);
    if (logprobs) cJSON_AddItemToObject(obj, "logprobs", logprobs);
    print_object(out, obj);
    return 0;
}

/* ---- the loop ---- */

typedef struct {
    qvl_session *s;
    const qvl_options *o;
    FILE *out;
    int user_turns;         /* since the start or the last reset */
    int own_system;         /* a system line replaced the -s prompt */
} jsonl;

/* One input line: 0 handled, -1 with err set (printed as an error object). */
static int handle_line(jsonl *j, const char *line, char *err) {
    const char *end = NULL;
    cJSON *obj = cJSON_ParseWithOpts(line, &end, 1);
    if (!obj) { qvl_seterr(err, "invalid JSON"); return -1; }
    int r = -1;
    qvl_message m = { 0 };
    const cJSON *reset = cJSON_GetObjectItemCaseSensitive(obj, "reset");
    const cJSON *role = cJSON_GetObjectItemCaseSensitive(obj, "role");
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(obj, "content");
    if (!cJSON_IsObject(obj)) {
        qvl_seterr(err, "expected a JSON object");
    } else if (reset) {
        if (!cJSON_IsTrue(reset)) { qvl_seterr(err, "\"reset\" must be true"); goto done; }
        /* A new conversation, with the command line's system prompt again
         * (a system line of the last conversation must not leak into it). */
        if (j->own_system) {
            if (session_set_system(j->s, j->o->system ? j->o->system : "", err)) goto done;
            j->own_system = 0;
        } else {
            session_clear(j->s);
        }
        j->user_turns = 0;
        r = 0;
    } else if (!cJSON_IsString(role)) {
        qvl_seterr(err, "expected \"role\" (system, user or assistant) or \"reset\"");
    } else if (!content) {
        qvl_seterr(err, "missing \"content\"");
    } else if (!strcmp(role->valuestring, "system")) {
        if (j->user_turns) { qvl_seterr(err, "a system message must come before the first user message"); goto done; }
        if (!cJSON_IsString(content)) { qvl_seterr(err, "system \"content\" must be a string"); goto done; }
        r = session_set_system(j->s, content->valuestring, err);
        if (!r) j->own_system = 1;
    } else if (!strcmp(role->valuestring, "user")) {
        if (message_parse(content, &m, err)) goto done;
        if (session_send(j->s, m.parts, m.nparts, err)) goto done;
        j->user_turns++;
        r = reply(j->s, j->o, j->out, err);
    } else if (!strcmp(role->valuestring, "assistant")) {
        /* history: the reply to the user line before it is this text (a /save file replays so) */
        if (!cJSON_IsString(content)) { qvl_seterr(err, "assistant \"content\" must be a string"); goto done; }
        r = session_set_reply(j->s, content->valuestring, err);
    } else {
        qvl_seterr(err, "role \"%.40s\" is not accepted (system, user or assistant)", role->valuestring);
    }
done:
    message_free(&m);
    cJSON_Delete(obj);
    return r;
}

static int blank(const char *s) {
    for (; *s; s++) if (*s != ' ' && *s != '\t' && *s != '\r' && *s != '\n') return 0;
    return 1;
}

int jsonl_run(const qvl_options *o, const qvl_source *model, FILE *in, FILE *out) {
    jsonl j = { .o = o, .out = out };
    j.s = cli_open_session(o, model);
    if (!j.s) return QVL_EXIT_RUNTIME;
    char *line = NULL, err[QVL_ERR_MAX];
    size_t cap = 0;
    long lineno = 0;
    int failed = 0;
    while (getline(&line, &cap, in) >= 0) {
        lineno++;
        if (blank(line)) continue;
        err[0] = 0;
        if (handle_line(&j, line, err)) {
            print_error(out, err[0] ? err : "failed", lineno);
            failed = 1;
        }
    }
    free(line);
    session_close(j.s);
    return failed ? QVL_EXIT_RUNTIME : QVL_EXIT_OK;
}
