/* chat.h - Qwen3-VL's chat template, written out in C: a conversation in,
 * the prompt text and token ids out, exactly as transformers renders it with
 * the checkpoint's chat_template.jinja and tokenizes it (no tools).
 *
 *   <|im_start|>system\n{system}<|im_end|>\n            (if the first message is one)
 *   <|im_start|>user\n{text and images, in order}<|im_end|>\n
 *   <|im_start|>assistant\n{reply}<|im_end|>\n
 *   ...
 *   <|im_start|>assistant\n                              (generation prompt)
 *
 * An image renders as <|vision_start|><|image_pad|><|vision_end|>; in the ids
 * its <|image_pad|> becomes image_tokens copies (grid_t*grid_h*grid_w/merge^2).
 *
 * Thinking checkpoints (Qwen3-VL-*-Thinking) are told apart by their template:
 * its generation prompt opens the reasoning, "<|im_start|>assistant\n<think>\n",
 * and earlier replies are rendered without their reasoning.
 *
 * With a KV cache a conversation is never re-rendered: chat_encode_next_turn()
 * gives the ids to append after a reply.  (For Thinking models the cache keeps
 * the earlier reasoning, which a full re-render would drop; that is the price
 * of not recomputing the conversation, and what the model generated anyway.) */
#ifndef QVL_CHAT_H
#define QVL_CHAT_H

#include <stddef.h>
#include "source.h"
#include "tokenizer.h"

typedef enum { CHAT_SYSTEM, CHAT_USER, CHAT_ASSISTANT } chat_role;

/* One part of a message: text, or (text == NULL) an image. Images are allowed
 * in user messages only. */
typedef struct {
    const char *text;
    int image_tokens;       /* an image's <|image_pad|> count, >= 1 */
} chat_part;

typedef struct {
    chat_role role;
    const chat_part *parts;
    int nparts;
} chat_msg;

typedef struct {
    int thinking;           /* a Thinking checkpoint's template */
    char origin[64];        /* the file the template came from, "" when none was found */
} chat_format;

/* Whether a template's text is the Thinking variant's. */
int chat_template_is_thinking(const char *template_text);

/* The checkpoint's template: chat_template.jinja, else chat_template.json,
 * else tokenizer_config.json's "chat_template"; none is the Instruct format.
 * A template that is not Qwen's ChatML (no <|im_start|>) is an error. */
int chat_format_load(const qvl_source *src, chat_format *f, char *err);

/* The text the generation prompt adds. */
const char *chat_generation_prompt(const chat_format *f);

/* The whole conversation: text (malloc'd, images as one <|image_pad|> each)
 * or ids (appended to *out, images expanded). */
char *chat_render(const chat_format *f, const chat_msg *msgs, int n, int add_generation_prompt, char *err);
int chat_encode(const chat_format *f, const qvl_tokenizer *t, const chat_msg *msgs, int n,
                int add_generation_prompt, tok_ids *out, char *err);

/* What to append after a reply for the next user turn, generation prompt
 * included.  reply_closed: the reply's tokens already end with <|im_end|> (the
 * model stopped on it); otherwise (token limit, cancel, another stop token)
 * the turn is closed with <|im_end|> first. */
char *chat_render_next_turn(const chat_format *f, int reply_closed, const chat_msg *user, char *err);
int chat_encode_next_turn(const chat_format *f, const qvl_tokenizer *t, int reply_closed, const chat_msg *user,
                          tok_ids *out, char *err);

/* A reply split into reasoning and answer (views into the reply text).  For
 * Thinking formats the reply starts inside <think> (the generation prompt
 * opened it): reasoning runs up to </think>, stripped of newlines at both
 * ends as the template does, and the answer follows without its leading
 * newlines; until </think> arrives everything is reasoning (in_reasoning = 1).
 * For other formats the whole reply is the answer. */
typedef struct {
    const char *reasoning, *answer;
    size_t reasoning_len, answer_len;
    int in_reasoning;
} chat_reply;

void chat_split_reply(const chat_format *f, const char *text, size_t len, chat_reply *r);

#endif
