/* session.h - a conversation with a loaded model: the one API every front end
 * (TUI, line mode, plain batch, JSONL) talks to.
 *
 * A session owns the model, tokenizer, preprocessing settings and one KV cache.
 * Turns are appended to the cache, never re-rendered: a user turn is rendered
 * with the chat template, its images are decoded, resized and encoded, the new
 * tokens are prefilled, and the reply is generated one token at a time by
 * session_next().  When the next turn does not fit in the context, the oldest
 * whole turns are dropped (the system prompt is kept) and the cache is rebuilt,
 * so the reply equals what a fresh conversation holding the kept turns gives.
 *
 * Not thread-safe: one thread drives a session (the model thread in the TUI);
 * session_cancel() alone may be called from another thread. */
#ifndef QVL_SESSION_H
#define QVL_SESSION_H

#include <stddef.h>
#include "source.h"
#include "quant.h"

#define QVL_MAX_LOGPROBS 20

/* Sampling parameters (see sampler.h); negative / NAN fields mean "use the
 * model's generation_config.json or the model card's defaults". */
typedef struct {
    int greedy;                 /* 1: argmax (after penalties and the vision-id mask) */
    float temperature;          /* >= 0 */
    int top_k;                  /* 0 = off */
    float top_p;                /* (0, 1] */
    float min_p;                /* [0, 1) */
    float repeat_penalty;       /* 1 = off */
    float presence_penalty;     /* 0 = off */
    unsigned long long seed;
    int has_seed;
} qvl_sampling_opts;

typedef struct {
    const qvl_source *model;    /* directory or the embedded demo model */
    int ctx;                    /* KV cache size in tokens (default 8192) */
    int threads;                /* 0 = all cores */
    long min_pixels, max_pixels;/* image budget; <= 0: defaults (max 1048576; "model": preprocessor_config) */
    int max_pixels_model;       /* 1: use the checkpoint's preprocessor_config.json limits */
    int alpha_drop;             /* transparent images: 0 composite over white, 1 drop alpha (as transformers) */
    int max_tokens;             /* per reply; <= 0: until EOS or context end */
    int ignore_eos;
    int logprobs;               /* top-N per generated token (0 = off) */
    qvl_sampling_opts sampling; /* already merged with the command line */
    const char *system;         /* system prompt or NULL */
    int verbose;
    int prefill_chunk;          /* tokens per prefill step (0: 256); images are never split */
    qvl_quant quant;            /* weights quantized at load (q8, q4) or as stored (none) */
    int bf16_matmul;            /* many-row products with bf16 activations (ops_set_bf16_matmul): 1 on,
                                   0 off, QVL_MATMUL_AUTO on where the loaded matrices are quantized
                                   and the CPU has AVX512_BF16 (session_open resolves it to 0 or 1) */
    qvl_dtype kv_dtype;         /* KV cache values: QVL_F32 (0, the default) or QVL_F16 (half the memory) */
} qvl_session_opts;

#define QVL_MATMUL_AUTO (-1)

typedef enum {
    QVL_STATE_IDLE, QVL_STATE_LOADING, QVL_STATE_ENCODING, QVL_STATE_PREFILL, QVL_STATE_GENERATING
} qvl_state;

/* Progress reports (may be NULL): state changes, loading/prefill fraction in [0,1],
 * and notices for the user (e.g. "dropped 2 oldest turns to fit the context",
 * "image cat.png scaled from 4000x3000 to 1184x888"). Called on the driving thread. */
typedef struct {
    void (*state)(void *ctx, qvl_state st, double fraction);
    void (*notice)(void *ctx, const char *msg);
    void *ctx;
} qvl_session_hooks;

/* One part of a user message, in order. */
typedef struct {
    const char *text;               /* a text part, or NULL */
    const char *image_path;         /* an image file, or NULL */
    const unsigned char *image_data;/* an image in memory (data: URL), or NULL */
    size_t image_size;
} qvl_part;

typedef struct {
    int id;
    const char *piece;              /* UTF-8 text this token completes ("" mid-character); valid until next call */
    int reasoning;                  /* 1 while inside the <think> ... </think> part of thinking models */
    float logprob;                  /* of the chosen token (after the vision-id mask) */
    int n_top;
    int top_ids[QVL_MAX_LOGPROBS];
    float top_logprobs[QVL_MAX_LOGPROBS];
} qvl_token;

typedef struct {
    const char *finish_reason;      /* "stop", "length" or "cancelled" */
    int prompt_tokens;              /* tokens prefilled for this turn (incl. image tokens) */
    int completion_tokens;
    int image_tokens;
    double image_ms, prefill_ms, prefill_tok_s, decode_tok_s;
} qvl_reply_info;

typedef struct {
    int ctx_used, ctx_total;
    int turns;                      /* user turns in the conversation */
    double last_decode_tok_s;
    char model_name[128];
    int thinking;                   /* the checkpoint is a Thinking variant */
    char precision[96];             /* e.g. "weights q4, KV cache f16, matmul bf16" */
} qvl_session_stats;

typedef struct qvl_session qvl_session;

qvl_session *session_open(const qvl_session_opts *o, const qvl_session_hooks *hooks, char *err);
void session_close(qvl_session *s);

/* Appends a user turn: renders, encodes images, prefills. Nothing changes on error. */
int session_send(qvl_session *s, const qvl_part *parts, int nparts, char *err);
/* Generates the next token of the reply: 1 = *tok filled, 0 = reply finished, -1 = error. */
int session_next(qvl_session *s, qvl_token *tok, char *err);
/* Asks the reply in progress to end at the next step (thread-safe). */
void session_cancel(qvl_session *s);
/* The last reply's text (answer part only for thinking models) and reasoning, and its info. */
const char *session_reply_text(const qvl_session *s);
const char *session_reply_reasoning(const qvl_session *s);
void session_reply_info(const qvl_session *s, qvl_reply_info *info);
/* Replaces the last reply (finished or not) with the given text, as if the
 * model had said it: how a saved conversation brings back its own replies. */
int session_set_reply(qvl_session *s, const char *reply, char *err);

/* Conversation control. */
void session_clear(qvl_session *s);                                   /* new conversation, same system prompt */
int session_set_system(qvl_session *s, const char *text, char *err);  /* clears the conversation */
/* /set NAME VALUE: temp, top_k, top_p, min_p, repeat_penalty, presence_penalty, seed, max_tokens, greedy, ignore_eos */
int session_set_param(qvl_session *s, const char *name, const char *value, char *err);
/* /save and /load: the JSONL message format of --jsonl (system, user and assistant lines). */
int session_save(const qvl_session *s, const char *path, char *err);
int session_load(qvl_session *s, const char *path, char *err);
void session_stats(const qvl_session *s, qvl_session_stats *st);

#endif
