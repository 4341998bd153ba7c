/* chat.c - the Qwen3-VL chat templates (Instruct and Thinking) as code.
 *
 * A Jinja interpreter would be a large dependency for two templates whose
 * behaviour without tools fits in a page, so the rules are written out here,
 * following the templates line by line:
 *
 * Instruct (chat_template.jinja of Qwen3-VL-*-Instruct):
 *   - a system message is rendered only when it comes first, text parts only;
 *   - user messages render text and images in order;
 *   - assistant messages render their text parts.
 * Thinking (Qwen3-VL-*-Thinking):
 *   - the same, plus a system message later on is rendered where it stands;
 *   - an assistant message is split at </think> into reasoning and answer;
 *     replies before the last user query keep only the answer, replies after
 *     it get "<think>\n{reasoning}\n</think>\n\n{answer}" (when they have
 *     reasoning, or are the last message);
 *   - the generation prompt is "<|im_start|>assistant\n<think>\n".
 *
 * Ids are made the way transformers' processor makes them: the rendered text
 * is tokenized as a whole (so text that spells a special token becomes that
 * token, as in Python), then every <|image_pad|> is replaced by its image's
 * count of copies.  A text that spells <|image_pad|> itself would shift the
 * images, so it is refused. */
#include "chat.h"
#include "common.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char IMAGE_PLACEHOLDER[] = "<|vision_start|><|image_pad|><|vision_end|>";

/* ---------------------------------------------------------------- string builder */

typedef struct {
    char *s;
    size_t n, cap;
    int oom;
} sbuf;

static void sb_add(sbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->s, cap);
        if (!p) { b->oom = 1; return; }
        b->s = p;
        b->cap = cap;
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
}

static void sb_puts(sbuf *b, const char *s) { sb_add(b, s, strlen(s)); }

/* ---------------------------------------------------------------- Python string helpers */

/* A view of a string, for the template's split/strip chains. */
typedef struct {
    const char *s;
    size_t n;
} view;

static const char *find_last(view v, const char *needle) {
    size_t k = strlen(needle);
    for (size_t i = v.n >= k ? v.n - k + 1 : 0; i-- > 0;)
        if (!memcmp(v.s + i, needle, k)) return v.s + i;
    return NULL;
}

static const char *find_first(view v, const char *needle) {
    size_t k = strlen(needle);
    for (size_t i = 0; i + k <= v.n; i++)
        if (!memcmp(v.s + i, needle, k)) return v.s + i;
    return NULL;
}

static view lstrip_nl(view v) {
    while (v.n && v.s[0] == '\n') v.s++, v.n--;
    return v;
}

static view rstrip_nl(view v) {
    while (v.n && v.s[v.n - 1] == '\n') v.n--;
    return v;
}

/* content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') */
static view reasoning_of(view content) {
    const char *end = find_first(content, "</think>");
    view r = { content.s, end ? (size_t)(end - content.s) : content.n };
    r = rstrip_nl(r);
    const char *open = find_last(r, "<think>");
    if (open) {
        size_t skip = (size_t)(open - r.s) + strlen("<think>");
        r.s += skip, r.n -= skip;
    }
    return lstrip_nl(r);
}

/* content.split('</think>')[-1].lstrip('\n') */
static view answer_of(view content) {
    const char *end = find_last(content, "</think>");
    size_t skip = (size_t)(end - content.s) + strlen("</think>");
    view a = { content.s + skip, content.n - skip };
    return lstrip_nl(a);
}

/* ---------------------------------------------------------------- rendering */

static int check_messages(const chat_msg *msgs, int n, char *err) {
    for (int i = 0; i < n; i++) {
        const chat_msg *m = &msgs[i];
        if (m->role != CHAT_SYSTEM && m->role != CHAT_USER && m->role != CHAT_ASSISTANT) {
            qvl_seterr(err, "chat: message %d has an unknown role", i + 1);
            return -1;
        }
        if (m->nparts < 0 || (m->nparts > 0 && !m->parts)) {
            qvl_seterr(err, "chat: message %d has no parts array", i + 1);
            return -1;
        }
        for (int j = 0; j < m->nparts; j++) {
            if (m->parts[j].text) continue;
            if (m->role != CHAT_USER) {
                qvl_seterr(err, "chat: message %d: images are only supported in user messages", i + 1);
                return -1;
            }
            if (m->parts[j].image_tokens < 1) {
                qvl_seterr(err, "chat: message %d part %d: an image needs at least one token (has %d)", i + 1,
                           j + 1, m->parts[j].image_tokens);
                return -1;
            }
        }
    }
    return 0;
}

/* A message's content: text parts, and images when with_images (their token
 * counts appended to *images, in order, when images is not NULL). */
static void render_content(sbuf *b, const chat_msg *m, int with_images, tok_ids *images, int *oom) {
    for (int j = 0; j < m->nparts; j++) {
        const chat_part *p = &m->parts[j];
        if (p->text) sb_puts(b, p->text);
        else if (with_images) {
            sb_puts(b, IMAGE_PLACEHOLDER);
            if (images && tok_ids_push(images, p->image_tokens)) *oom = 1;
        }
    }
}

static void render_user(sbuf *b, const chat_msg *m, tok_ids *images, int *oom) {
    sb_puts(b, "<|im_start|>user\n");
    render_content(b, m, 1, images, oom);
    sb_puts(b, "<|im_end|>\n");
}

/* The Thinking template's last_query_index: the last user message that is not
 * a tool response, or the last message when there is none. */
static int last_query_index(const chat_msg *msgs, int n, int *oom) {
    for (int i = n - 1; i >= 0; i--) {
        if (msgs[i].role != CHAT_USER) continue;
        sbuf c = { 0 };
        render_content(&c, &msgs[i], 1, NULL, oom);
        view v = { c.s ? c.s : "", c.n };
        int tool = v.n >= 15 && !memcmp(v.s, "<tool_response>", 15) && v.n >= 16 &&
                   !memcmp(v.s + v.n - 16, "</tool_response>", 16);
        *oom |= c.oom;
        free(c.s);
        if (!tool) return i;
    }
    return n - 1;
}

static void render_assistant_thinking(sbuf *b, const chat_msg *m, int after_last_query, int is_last, int *oom) {
    sbuf c = { 0 };
    render_content(&c, m, 0, NULL, oom);
    *oom |= c.oom;
    view content = { c.s ? c.s : "", c.n }, reasoning = { "", 0 };
    if (find_first(content, "</think>")) {
        reasoning = reasoning_of(content);
        content = answer_of(content);
    }
    sb_puts(b, "<|im_start|>assistant\n");
    if (after_last_query && (is_last || reasoning.n)) {
        sb_puts(b, "<think>\n");
        view r = lstrip_nl(rstrip_nl(reasoning));
        sb_add(b, r.s, r.n);
        sb_puts(b, "\n</think>\n\n");
        content = lstrip_nl(content);
    }
    sb_add(b, content.s, content.n);
    sb_puts(b, "<|im_end|>\n");
    free(c.s);
}

static void render_conversation(sbuf *b, const chat_format *f, const chat_msg *msgs, int n, int add_gen,
                                tok_ids *images, int *oom) {
    if (n > 0 && msgs[0].role == CHAT_SYSTEM) {
        sb_puts(b, "<|im_start|>system\n");
        render_content(b, &msgs[0], 0, NULL, oom);
        sb_puts(b, "<|im_end|>\n");
    }
    int last_query = f->thinking ? last_query_index(msgs, n, oom) : -1;
    for (int i = 0; i < n; i++) {
        const chat_msg *m = &msgs[i];
        if (m->role == CHAT_USER) {
            render_user(b, m, images, oom);
        } else if (m->role == CHAT_ASSISTANT && f->thinking) {
            render_assistant_thinking(b, m, i > last_query, i == n - 1, oom);
        } else if (m->role == CHAT_ASSISTANT) {
            sb_puts(b, "<|im_start|>assistant\n");
            render_content(b, m, 0, NULL, oom);
            sb_puts(b, "<|im_end|>\n");
        } else if (i > 0 && f->thinking) {   /* a later system message; Instruct drops it */
            sb_puts(b, "<|im_start|>system\n");
            render_content(b, m, 0, NULL, oom);
            sb_puts(b, "<|im_end|>\n");
        }
    }
    if (add_gen) sb_puts(b, chat_generation_prompt(f));
}

static void render_next_turn(sbuf *b, const chat_format *f, int reply_closed, const chat_msg *user,
                             tok_ids *images, int *oom) {
    if (!reply_closed) sb_puts(b, "<|im_end|>");
    sb_puts(b, "\n");
    render_user(b, user, images, oom);
    sb_puts(b, chat_generation_prompt(f));
}

const char *chat_generation_prompt(const chat_format *f) {
    return f->thinking ? "<|im_start|>assistant\n<think>\n" : "<|im_start|>assistant\n";
}

static char *finish_text(sbuf *b, int oom, char *err) {
    if (oom || b->oom) {
        free(b->s);
        qvl_seterr(err, "chat: out of memory rendering the conversation");
        return NULL;
    }
    if (!b->s) b->s = calloc(1, 1);
    if (!b->s) qvl_seterr(err, "chat: out of memory rendering the conversation");
    return b->s;
}

char *chat_render(const chat_format *f, const chat_msg *msgs, int n, int add_generation_prompt, char *err) {
    if (check_messages(msgs, n, err)) return NULL;
    sbuf b = { 0 };
    int oom = 0;
    render_conversation(&b, f, msgs, n, add_generation_prompt, NULL, &oom);
    return finish_text(&b, oom, err);
}

static int check_next_turn(const chat_msg *user, char *err) {
    if (check_messages(user, 1, err)) return -1;
    if (user->role != CHAT_USER) {
        qvl_seterr(err, "chat: the next turn must be a user message");
        return -1;
    }
    return 0;
}

char *chat_render_next_turn(const chat_format *f, int reply_closed, const chat_msg *user, char *err) {
    if (check_next_turn(user, err)) return NULL;
    sbuf b = { 0 };
    int oom = 0;
    render_next_turn(&b, f, reply_closed, user, NULL, &oom);
    return finish_text(&b, oom, err);
}

/* ---------------------------------------------------------------- ids */

/* Tokenizes text and expands each <|image_pad|> to its image's count. */
static int encode_with_images(const qvl_tokenizer *t, const char *text, size_t len, const tok_ids *images,
                              tok_ids *out, char *err) {
    tok_ids ids = { 0 };
    if (tok_encode(t, text, len, &ids, err)) return -1;
    int pad = tok_special_id(t, "<|image_pad|>"), rc = 0;
    size_t k = 0;
    if (images->n && pad < 0) {
        qvl_seterr(err, "chat: the tokenizer has no <|image_pad|> token, so it cannot take images");
        rc = -1;
    }
    for (size_t i = 0; i < ids.n && !rc; i++) {
        if (ids.v[i] != pad) {
            if (tok_ids_push(out, ids.v[i])) goto oom;
            continue;
        }
        if (k == images->n) {
            qvl_seterr(err, "chat: the message text contains <|image_pad|>, which stands for an image");
            rc = -1;
            break;
        }
        for (int c = 0; c < images->v[k]; c++)
            if (tok_ids_push(out, pad)) goto oom;
        k++;
    }
    if (!rc && k != images->n) {
        qvl_seterr(err, "chat: %zu images but %zu <|image_pad|> tokens in the prompt", images->n, k);
        rc = -1;
    }
    tok_ids_free(&ids);
    return rc;
oom:
    qvl_seterr(err, "chat: out of memory encoding the conversation");
    tok_ids_free(&ids);
    return -1;
}

static int encode_rendered(const qvl_tokenizer *t, sbuf *b, tok_ids *images, int oom, tok_ids *out, char *err) {
    int rc;
    size_t n0 = out->n;
    if (oom || b->oom) {
        qvl_seterr(err, "chat: out of memory rendering the conversation");
        rc = -1;
    } else {
        rc = encode_with_images(t, b->s ? b->s : "", b->n, images, out, err);
    }
    if (rc) out->n = n0;            /* nothing appended on error */
    free(b->s);
    tok_ids_free(images);
    return rc;
}

int chat_encode(const chat_format *f, const qvl_tokenizer *t, const chat_msg *msgs, int n,
                int add_generation_prompt, tok_ids *out, char *err) {
    if (check_messages(msgs, n, err)) return -1;
    sbuf b = { 0 };
    tok_ids images = { 0 };
    int oom = 0;
    render_conversation(&b, f, msgs, n, add_generation_prompt, &images, &oom);
    return encode_rendered(t, &b, &images, oom, out, err);
}

int chat_encode_next_turn(const chat_format *f, const qvl_tokenizer *t, int reply_closed, const chat_msg *user,
                          tok_ids *out, char *err) {
    if (check_next_turn(user, err)) return -1;
    sbuf b = { 0 };
    tok_ids images = { 0 };
    int oom = 0;
    render_next_turn(&b, f, reply_closed, user, &images, &oom);
    return encode_rendered(t, &b, &images, oom, out, err);
}

/* ---------------------------------------------------------------- replies */

void chat_split_reply(const chat_format *f, const char *text, size_t len, chat_reply *r) {
    view all = { text, len };
    memset(r, 0, sizeof *r);
    r->reasoning = r->answer = text;
    if (!f->thinking) {
        r->answer_len = len;
        return;
    }
    if (!find_first(all, "</think>")) {
        view v = lstrip_nl(all);            /* still thinking */
        r->reasoning = v.s;
        r->reasoning_len = v.n;
        r->answer = text + len;
        r->in_reasoning = 1;
        return;
    }
    view reasoning = lstrip_nl(rstrip_nl(reasoning_of(all))), answer = answer_of(all);
    r->reasoning = reasoning.s;
    r->reasoning_len = reasoning.n;
    r->answer = answer.s;
    r->answer_len = answer.n;
}

/* ---------------------------------------------------------------- which template */

int chat_template_is_thinking(const char *tpl) {
    /* as written inside a Jinja string literal, or already unescaped */
    return strstr(tpl, "<|im_start|>assistant\\n<think>\\n") != NULL ||
           strstr(tpl, "<|im_start|>assistant\n<think>\n") != NULL;
}

/* The "chat_template" of a JSON file: a string, or a list of named templates
 * ({"name": "default", "template": ...}), of which the default one.
 * 1: *tpl set; 0: the file has none; -1: error. */
static int template_from_json(const char *json, size_t len, const char *label, char **tpl, char *err) {
    cJSON *root = cJSON_ParseWithLength(json, len);
    if (!root) {
        qvl_seterr(err, "%s: not valid JSON", label);
        return -1;
    }
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(root, "chat_template");
    if (cJSON_IsArray(t)) {
        const cJSON *pick = NULL;
        for (const cJSON *e = t->child; e; e = e->next) {
            const cJSON *name = cJSON_GetObjectItemCaseSensitive(e, "name");
            if (!pick || (cJSON_IsString(name) && !strcmp(name->valuestring, "default"))) pick = e;
        }
        t = cJSON_GetObjectItemCaseSensitive(pick, "template");
    }
    int rc = 0;
    if (cJSON_IsString(t)) {
        *tpl = strdup(t->valuestring);
        rc = *tpl ? 1 : -1;
        if (!*tpl) qvl_seterr(err, "%s: out of memory", label);
    } else if (t && !cJSON_IsNull(t)) {
        qvl_seterr(err, "%s: \"chat_template\" is neither a string nor a list of templates", label);
        rc = -1;
    }
    cJSON_Delete(root);
    return rc;
}

/* Reads one candidate file: 1 with *tpl set, 0 when it holds no template, -1 on error. */
static int read_template(const qvl_source *src, const char *name, char **tpl, char *label, size_t lsize,
                         char *err) {
    char *text;
    size_t len;
    int rc = source_read(src, name, &text, &len, err);
    if (rc <= 0) return rc;
    source_path(src, name, label, lsize);
    if (!strcmp(name, "chat_template.jinja")) {
        *tpl = text;
        return 1;
    }
    rc = template_from_json(text, len, label, tpl, err);
    free(text);
    return rc;
}

int chat_format_load(const qvl_source *src, chat_format *f, char *err) {
    static const char *files[] = { "chat_template.jinja", "chat_template.json", "tokenizer_config.json" };
    memset(f, 0, sizeof *f);
    for (int i = 0; i < 3; i++) {
        char *tpl = NULL, label[1024];
        int rc = read_template(src, files[i], &tpl, label, sizeof label, err);
        if (rc < 0) return -1;
        if (rc == 0) continue;
        if (!strstr(tpl, "<|im_start|>")) {
            qvl_seterr(err, "%s: the chat template is not Qwen's ChatML format (no <|im_start|>)", label);
            free(tpl);
            return -1;
        }
        f->thinking = chat_template_is_thinking(tpl);
        snprintf(f->origin, sizeof f->origin, "%s", files[i]);
        free(tpl);
        return 0;
    }
    return 0;
}
