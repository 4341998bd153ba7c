/* session.c - one conversation with a loaded model (see session.h).
 *
 * The KV cache holds, in order: the system prompt, then for every turn the
 * user's tokens (ending in the generation prompt), the reply's tokens, and the
 * <|im_end|>\n that closes the reply (appended lazily, with the next turn).
 * Each turn keeps its token ids and its images' vision outputs, so that when
 * the context is full the oldest turns can be dropped and the kept ones
 * re-prefilled without decoding any image again. */
#include "session.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat.h"
#include "common.h"
#include "config.h"
#include "dataurl.h"
#include "decoder.h"
#include "image.h"
#include "message.h"
#include "ops.h"
#include "quant.h"
#include "sampler.h"
#include "threadpool.h"
#include "tokenizer.h"
#include "vision.h"
#include "weights.h"

/* The default image budget: 1024 image tokens (the checkpoints allow 16384,
 * which takes minutes per photo on a CPU). */
#define DEFAULT_MAX_PIXELS 1048576L

typedef struct {
    char *text;             /* a text part, or NULL */
    char *image_label;      /* an image part: its path, or a data: URL for in-memory images */
} saved_part;

typedef struct {
    saved_part *parts;      /* the user message as given (for /save) */
    int nparts;
    int *user_ids;          /* <|im_start|>user ... <|im_start|>assistant\n */
    int n_user;
    int *reply_ids;         /* generated tokens (the stop token excluded) */
    int n_reply, cap_reply;
    char *reply_text;       /* the whole reply text, reasoning included */
    qvl_vision_out *vision; /* one per image */
    qvl_grid *grids;        /* decoder grids */
    int n_images;
    int image_tokens;
} turn;

struct qvl_session {
    qvl_session_opts opts;
    qvl_session_hooks hooks;
    qvl_model *model;
    qvl_tokenizer *tok;
    chat_format fmt;
    qvl_preproc preproc;
    qvl_genconfig gen;
    qvl_cache *cache;
    qvl_sampler *sampler;
    qvl_sampling_opts sampling;       /* resolved */
    char model_name[128];
    char *system;
    int system_len;                   /* tokens of the system prompt in the cache */
    int *closure_ids;                 /* <|im_end|>\n */
    int n_closure;

    turn *turns;
    int nturns, capturns;
    int last_closed;                  /* the last turn's closure is in the cache */
    int pending;                      /* the reply's last sampled token is not in the cache yet */

    /* the reply in progress */
    int generating;
    float *logits;                    /* [vocab] after the last token fed */
    int have_logits;
    tok_stream stream;
    char *text;                       /* the reply's text so far */
    size_t text_len, text_cap;
    char *answer_copy, *reasoning_copy;
    int think_end_id;
    int in_reasoning;
    atomic_int cancel;
    qvl_reply_info info;
    double t_decode_start;
    double last_decode_tok_s;
};

static void emit_state(qvl_session *s, qvl_state st, double f) {
    if (s->hooks.state) s->hooks.state(s->hooks.ctx, st, f);
}

static void notice(qvl_session *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void notice(qvl_session *s, const char *fmt, ...) {
    if (!s->hooks.notice) return;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    s->hooks.notice(s->hooks.ctx, msg);
}

/* ---- turns ---- */

static void turn_free(turn *t) {
    for (int i = 0; i < t->nparts; i++) {
        free(t->parts[i].text);
        free(t->parts[i].image_label);
    }
    free(t->parts);
    free(t->user_ids);
    free(t->reply_ids);
    free(t->reply_text);
    for (int i = 0; i < t->n_images; i++) vision_out_free(&t->vision[i]);
    free(t->vision);
    free(t->grids);
    memset(t, 0, sizeof *t);
}

static void drop_turns(qvl_session *s, int k) {
    if (k <= 0) return;
    for (int i = 0; i < k; i++) turn_free(&s->turns[i]);
    memmove(s->turns, s->turns + k, (size_t)(s->nturns - k) * sizeof *s->turns);
    s->nturns -= k;
}

static int ids_dup(const tok_ids *a, int **out, int *n) {
    *n = (int)a->n;
    *out = malloc((a->n ? a->n : 1) * sizeof **out);
    if (!*out) return -1;
    memcpy(*out, a->v, a->n * sizeof **out);
    return 0;
}

/* ---- feeding the cache ---- */

static int turn_images(const turn *t, qvl_image_input *in) {
    for (int i = 0; i < t->n_images; i++) {
        memset(&in[i], 0, sizeof in[i]);
        in[i].embeds = t->vision[i].merged;
        for (int j = 0; j < t->vision[i].n_deepstack; j++) in[i].deepstack[j] = t->vision[i].deepstack[j];
        in[i].grid = t->grids[i];
    }
    return t->n_images;
}

/* Prompts are prefilled in chunks of about this many tokens, so that the
 * decoder's scratch memory stays bounded for long messages; a chunk never
 * splits an image's run of tokens (the decoder needs each image whole). */
#define PREFILL_CHUNK 256 /* default of qvl_session_opts.prefill_chunk */

/* Feeds ids (with the images of their image runs); logits of the last one into s->logits when want_logits.
 * On error the cache is left as it was. */
static int feed(qvl_session *s, const int *ids, int n, const qvl_image_input *imgs, int nimgs, int want_logits,
                char *err) {
    if (n == 0) return 0;
    int image_id = s->model->cfg.image_token_id, len0 = cache_len(s->cache), used_imgs = 0;
    int chunk = s->opts.prefill_chunk > 0 ? s->opts.prefill_chunk : PREFILL_CHUNK;
    for (int start = 0; start < n;) {
        int end = start + chunk < n ? start + chunk : n;
        while (end < n && ids[end] == image_id && ids[end - 1] == image_id) end++; /* finish the image run */
        int chunk_imgs = 0;
        for (int i = start; i < end; i++) chunk_imgs += ids[i] == image_id && (i == 0 || ids[i - 1] != image_id);
        if (used_imgs + chunk_imgs > nimgs) chunk_imgs = nimgs - used_imgs; /* the decoder reports the mismatch */
        int last = end == n;
        if (decoder_forward(s->cache, ids + start, end - start, imgs + used_imgs, chunk_imgs,
                            last && want_logits ? s->logits : NULL, 0, NULL, err) != 0) {
            char e2[QVL_ERR_MAX];
            cache_truncate(s->cache, len0, e2);
            return -1;
        }
        used_imgs += chunk_imgs;
        start = end;
    }
    sampler_observe(s->sampler, ids, n);
    if (want_logits) s->have_logits = 1;
    return 0;
}

/* Tokens a kept turn occupies when re-prefilled: user, reply, closure. */
static int turn_cost(const qvl_session *s, const turn *t) {
    return t->n_user + t->n_reply + s->n_closure;
}

/* Truncates the cache to the system prompt and re-feeds every kept turn, closed. */
static int rebuild(qvl_session *s, char *err) {
    if (cache_truncate(s->cache, s->system_len, err) != 0) return -1;
    sampler_forget(s->sampler);
    int rc = 0;
    if (s->system_len) {
        /* the system prompt's ids are the cache's first tokens: re-observe them for the penalties */
        tok_ids sys = { 0 };
        chat_part p = { s->system, 0 };
        chat_msg m = { CHAT_SYSTEM, &p, 1 };
        if (chat_encode(&s->fmt, s->tok, &m, 1, 0, &sys, err) == 0) sampler_observe(s->sampler, sys.v, (int)sys.n);
        tok_ids_free(&sys);
    }
    for (int i = 0; i < s->nturns && !rc; i++) {
        turn *t = &s->turns[i];
        qvl_image_input imgs[16];
        int ni = turn_images(t, imgs);
        rc = feed(s, t->user_ids, t->n_user, imgs, ni, 0, err) || feed(s, t->reply_ids, t->n_reply, NULL, 0, 0, err) ||
             feed(s, s->closure_ids, s->n_closure, NULL, 0, 0, err);
    }
    s->last_closed = 1;
    s->pending = 0;
    s->have_logits = 0;
    return rc ? -1 : 0;
}

/* ---- opening ---- */

static int encode_text(qvl_session *s, const char *text, int **ids, int *n, char *err) {
    tok_ids a = { 0 };
    if (tok_encode(s->tok, text, strlen(text), &a, err) != 0) return -1;
    int rc = ids_dup(&a, ids, n);
    tok_ids_free(&a);
    return rc;
}

static int start_system(qvl_session *s, char *err) {
    s->system_len = 0;
    if (!s->system || !*s->system) return 0;
    tok_ids sys = { 0 };
    chat_part p = { s->system, 0 };
    chat_msg m = { CHAT_SYSTEM, &p, 1 };
    int rc = chat_encode(&s->fmt, s->tok, &m, 1, 0, &sys, err);
    if (!rc && (int)sys.n >= cache_ctx(s->cache)) {
        qvl_seterr(err, "the system prompt (%zu tokens) does not fit the context of %d tokens", sys.n, cache_ctx(s->cache));
        rc = -1;
    }
    if (!rc) rc = feed(s, sys.v, (int)sys.n, NULL, 0, 0, err);
    if (!rc) s->system_len = (int)sys.n;
    tok_ids_free(&sys);
    return rc;
}

static void model_name_of(const qvl_source *src, char *out, size_t n) {
    if (!src->dir) {
        snprintf(out, n, "demo");
        return;
    }
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s", src->dir);
    size_t len = strlen(tmp);
    while (len > 1 && tmp[len - 1] == '/') tmp[--len] = 0;
    const char *base = strrchr(tmp, '/');
    snprintf(out, n, "%s", base ? base + 1 : tmp);
}

qvl_session *session_open(const qvl_session_opts *o, const qvl_session_hooks *hooks, char *err) {
    qvl_session *s = calloc(1, sizeof *s);
    if (!s) {
        qvl_seterr(err, "out of memory");
        return NULL;
    }
    s->opts = *o;
    if (hooks) s->hooks = *hooks;
    if (s->opts.ctx <= 0) s->opts.ctx = 8192;
    pool_set_threads(o->threads);
    if (ops_set_bf16_matmul(o->bf16_matmul == 1)) {
        qvl_seterr(err, "--matmul bf16: this CPU lacks AVX512_BF16");
        free(s);
        return NULL;
    }
    model_name_of(o->model, s->model_name, sizeof s->model_name);
    emit_state(s, QVL_STATE_LOADING, 0);
    s->model = model_load(o->model, err);
    if (!s->model) goto fail;
    if (model_quantize(s->model, o->quant, err) != 0) goto fail;
    /* Quantized weights already trade exactness for speed, so by default the
     * products they leave in float (attention's, the vision encoder's above
     * all) take bf16 activations too. */
    if (o->bf16_matmul == QVL_MATMUL_AUTO) {
        s->opts.bf16_matmul = model_is_quantized(s->model) && ops_bf16_matmul_supported();
        ops_set_bf16_matmul(s->opts.bf16_matmul);
    }
    emit_state(s, QVL_STATE_LOADING, 0.6);
    s->tok = tok_load_source(o->model, err);
    if (!s->tok) goto fail;
    if (chat_format_load(o->model, &s->fmt, err) != 0) goto fail;
    if (preproc_load(o->model, &s->preproc, err) != 0) goto fail;
    if (genconfig_load(o->model, &s->model->cfg, &s->gen, err) != 0) goto fail;
    if (!o->max_pixels_model) {
        /* an explicit --max-pixels wins; the default budget never exceeds the model's own limit */
        if (o->max_pixels > 0) s->preproc.max_pixels = o->max_pixels;
        else if (s->preproc.max_pixels > DEFAULT_MAX_PIXELS) s->preproc.max_pixels = DEFAULT_MAX_PIXELS;
        if (o->min_pixels > 0) s->preproc.min_pixels = o->min_pixels;
        if (s->preproc.min_pixels > s->preproc.max_pixels) s->preproc.min_pixels = s->preproc.max_pixels;
    }
    sampling_resolve(&o->sampling, &s->gen, s->fmt.thinking, &s->sampling);
    if (sampling_check(&s->sampling, err) != 0) goto fail;
    int vocab = s->model->cfg.text.vocab;
    s->sampler = sampler_new(vocab, &s->sampling, err);
    if (!s->sampler) goto fail;
    const qvl_config *c = &s->model->cfg;
    /* The vision placeholders are never generated: start, end, pad (which the config
     * does not name: looked up in the vocabulary), image pad, video pad. */
    int vision_pad = tok_special_id(s->tok, "<|vision_pad|>");
    int banned[5] = { c->vision_start_id, c->vision_end_id, vision_pad >= 0 ? vision_pad : c->image_token_id,
                      c->image_token_id, c->video_token_id };
    sampler_ban(s->sampler, banned, 5);
    s->logits = malloc((size_t)vocab * sizeof *s->logits);
    if (!s->logits) {
        qvl_seterr(err, "out of memory");
        goto fail;
    }
    s->cache = cache_new_as(s->model, s->opts.ctx, o->kv_dtype, err);
    if (!s->cache) goto fail;
    if (encode_text(s, "<|im_end|>\n", &s->closure_ids, &s->n_closure, err) != 0) goto fail;
    s->think_end_id = tok_special_id(s->tok, "</think>");
    s->system = o->system ? strdup(o->system) : NULL;
    if (start_system(s, err) != 0) goto fail;
    s->last_closed = 1;
    emit_state(s, QVL_STATE_IDLE, 1);
    return s;
fail:
    session_close(s);
    return NULL;
}

void session_close(qvl_session *s) {
    if (!s) return;
    drop_turns(s, s->nturns);
    free(s->turns);
    if (s->stream.tok) tok_stream_free(&s->stream);
    free(s->text);
    free(s->answer_copy);
    free(s->reasoning_copy);
    free(s->closure_ids);
    free(s->system);
    free(s->logits);
    cache_free(s->cache);
    sampler_free(s->sampler);
    tok_free(s->tok);
    model_free(s->model);
    free(s);
}

/* ---- a user turn ---- */

/* Decodes, resizes and encodes one image part. */
static int encode_image(qvl_session *s, const qvl_part *p, qvl_vision_out *out, qvl_grid *grid, char *err) {
    qvl_image img;
    char label[64];
    int rc;
    qvl_alpha alpha = s->opts.alpha_drop ? QVL_ALPHA_DROP : QVL_ALPHA_WHITE;
    if (p->image_path) {
        rc = image_load_file(p->image_path, alpha, &img, err);
    } else {
        snprintf(label, sizeof label, "image data (%zu bytes)", p->image_size);
        rc = image_load_mem(p->image_data, p->image_size, label, alpha, &img, err);
    }
    if (rc) return -1;
    qvl_pixels px;
    rc = image_preprocess(&img, &s->preproc, &px, err);
    if (!rc && s->opts.verbose && (long)img.width * img.height > (long)px.resized.width * px.resized.height)
        notice(s, "image %s scaled down from %dx%d to %dx%d (%d image tokens; --max-pixels raises the budget)",
               p->image_path ? p->image_path : "data", img.width, img.height, px.resized.width, px.resized.height,
               px.n_patches / (s->preproc.merge * s->preproc.merge));
    image_free(&img);
    if (rc) return -1;
    qvl_grid pg = { px.grid_t, px.grid_h, px.grid_w };
    rc = vision_encode(s->model, px.pixels, px.n_patches, &pg, 1, NULL, out, err);
    pixels_free(&px);
    if (rc) return -1;
    *grid = vision_llm_grid(s->model, pg);
    return 0;
}

/* An in-memory image, kept as a data: URL for /save. */
static char *data_url_of(const unsigned char *data, size_t n) {
    return data_url_encode(n > 3 && data[0] == 0xff && data[1] == 0xd8 ? "image/jpeg" : "image/png", data, n);
}

/* Builds a turn from the message parts: encodes the images and the ids. */
static int build_turn(qvl_session *s, const qvl_part *parts, int nparts, turn *t, char *err) {
    memset(t, 0, sizeof *t);
    int nimg = 0;
    for (int i = 0; i < nparts; i++) nimg += !parts[i].text;
    if (nimg > 16) {
        qvl_seterr(err, "at most 16 images per message");
        return -1;
    }
    t->parts = calloc((size_t)nparts + 1, sizeof *t->parts);
    t->vision = calloc((size_t)nimg + 1, sizeof *t->vision);
    t->grids = calloc((size_t)nimg + 1, sizeof *t->grids);
    chat_part *cp = calloc((size_t)nparts + 1, sizeof *cp);
    if (!t->parts || !t->vision || !t->grids || !cp) {
        free(cp);
        qvl_seterr(err, "out of memory");
        return -1;
    }
    t->nparts = nparts;
    int rc = 0;
    double t0 = qvl_now();
    for (int i = 0; i < nparts && !rc; i++) {
        if (parts[i].text) {
            t->parts[i].text = strdup(parts[i].text);
            cp[i].text = parts[i].text;
            continue;
        }
        emit_state(s, QVL_STATE_ENCODING, (double)t->n_images / nimg);
        /* kept for /save: an absolute path, so the saved conversation loads from anywhere */
        char *abs = parts[i].image_path ? realpath(parts[i].image_path, NULL) : NULL;
        t->parts[i].image_label = abs              ? abs
                                  : parts[i].image_path ? strdup(parts[i].image_path)
                                                        : data_url_of(parts[i].image_data, parts[i].image_size);
        rc = encode_image(s, &parts[i], &t->vision[t->n_images], &t->grids[t->n_images], err);
        if (rc) break;
        qvl_grid g = t->grids[t->n_images];
        cp[i].image_tokens = g.t * g.h * g.w;
        t->image_tokens += cp[i].image_tokens;
        t->n_images++;
    }
    s->info.image_ms = (qvl_now() - t0) * 1000;
    if (!rc) {
        tok_ids ids = { 0 };
        chat_msg m = { CHAT_USER, cp, nparts };
        rc = chat_encode(&s->fmt, s->tok, &m, 1, 1, &ids, err);
        if (!rc) rc = ids_dup(&ids, &t->user_ids, &t->n_user);
        tok_ids_free(&ids);
    }
    free(cp);
    if (rc) turn_free(t);
    return rc;
}

static int push_turn(qvl_session *s, turn *t) {
    if (s->nturns == s->capturns) {
        int cap = s->capturns ? 2 * s->capturns : 8;
        turn *grown = realloc(s->turns, (size_t)cap * sizeof *grown);
        if (!grown) return -1;
        s->turns = grown;
        s->capturns = cap;
    }
    s->turns[s->nturns++] = *t;
    return 0;
}

/* Makes room for `need` more tokens (plus one to generate), dropping the oldest turns. */
static int make_room(qvl_session *s, int need, char *err) {
    int ctx = cache_ctx(s->cache);
    if (cache_len(s->cache) + need < ctx) return 0;
    if (s->system_len + need >= ctx) {
        qvl_seterr(err, "the message needs %d tokens but the context holds %d (%d used by the system prompt); raise --ctx",
                   need, ctx, s->system_len);
        return -1;
    }
    int total = s->system_len, k = s->nturns;
    while (k > 0 && total + turn_cost(s, &s->turns[k - 1]) + need < ctx) total += turn_cost(s, &s->turns[--k]);
    /* turns [k, nturns) are kept */
    drop_turns(s, k);
    notice(s, "context full: dropped the %d oldest turn%s to fit (%d of %d tokens kept)", k, k == 1 ? "" : "s",
           total, ctx);
    return rebuild(s, err);
}

static void reply_reset(qvl_session *s) {
    if (s->stream.tok) tok_stream_free(&s->stream);
    tok_stream_init(&s->stream, s->tok, 1);
    s->text_len = 0;
    if (s->text) s->text[0] = 0;
    s->in_reasoning = s->fmt.thinking;
    atomic_store(&s->cancel, 0);
}

int session_send(qvl_session *s, const qvl_part *parts, int nparts, char *err) {
    if (nparts <= 0) {
        qvl_seterr(err, "empty message");
        return -1;
    }
    int any = 0;
    for (int i = 0; i < nparts; i++) any |= !parts[i].text || parts[i].text[0];
    if (!any) {
        qvl_seterr(err, "empty message");
        return -1;
    }
    memset(&s->info, 0, sizeof s->info);
    turn t;
    if (build_turn(s, parts, nparts, &t, err) != 0) {
        emit_state(s, QVL_STATE_IDLE, 1);
        return -1;
    }
    int need = t.n_user + (s->last_closed ? 0 : s->n_closure) + s->pending;
    if (make_room(s, need, err) != 0 || push_turn(s, &t) != 0) {
        turn_free(&t);
        emit_state(s, QVL_STATE_IDLE, 1);
        return -1;
    }
    turn *cur = &s->turns[s->nturns - 1];
    emit_state(s, QVL_STATE_PREFILL, 0);
    double t0 = qvl_now();
    int len0 = cache_len(s->cache);
    int rc = 0;
    if (s->pending && s->nturns >= 2) {
        /* the previous reply's last token (stopped by the limit or a cancel) */
        const turn *prev = &s->turns[s->nturns - 2];
        rc = feed(s, &prev->reply_ids[prev->n_reply - 1], 1, NULL, 0, 0, err);
    }
    if (!rc && !s->last_closed) rc = feed(s, s->closure_ids, s->n_closure, NULL, 0, 0, err);
    qvl_image_input imgs[16];
    int ni = turn_images(cur, imgs);
    if (!rc) rc = feed(s, cur->user_ids, cur->n_user, imgs, ni, 1, err);
    if (rc) {
        /* leave the cache as it was before this turn */
        char e2[QVL_ERR_MAX];
        cache_truncate(s->cache, len0, e2);
        turn_free(cur);
        s->nturns--;
        emit_state(s, QVL_STATE_IDLE, 1);
        return -1;
    }
    s->pending = 0;
    s->last_closed = 1; /* the previous reply is closed now; this one is open */
    double dt = qvl_now() - t0;
    s->info.prompt_tokens = cache_len(s->cache) - len0;
    s->info.image_tokens = cur->image_tokens;
    s->info.prefill_ms = dt * 1000;
    s->info.prefill_tok_s = dt > 0 ? s->info.prompt_tokens / dt : 0;
    sampler_new_reply(s->sampler);
    reply_reset(s);
    s->generating = 1;
    s->last_closed = 0;
    s->t_decode_start = qvl_now();
    emit_state(s, QVL_STATE_GENERATING, 0);
    return 0;
}

static int append_text(qvl_session *s, const char *p, size_t n) {
    if (s->text_len + n + 1 > s->text_cap) {
        size_t cap = (s->text_len + n + 1) * 2;
        char *grown = realloc(s->text, cap);
        if (!grown) return -1;
        s->text = grown;
        s->text_cap = cap;
    }
    memcpy(s->text + s->text_len, p, n);
    s->text_len += n;
    s->text[s->text_len] = 0;
    return 0;
}

static int is_eos(const qvl_session *s, int id) {
    for (int i = 0; i < s->gen.n_eos; i++)
        if (s->gen.eos[i] == id) return 1;
    return 0;
}

/* The finished reply's answer and reasoning, kept for session_reply_text/_reasoning. */
static void split_reply(qvl_session *s) {
    const char *text = s->text ? s->text : "";
    chat_reply r;
    chat_split_reply(&s->fmt, text, strlen(text), &r);
    free(s->answer_copy);
    free(s->reasoning_copy);
    s->answer_copy = strndup(r.answer ? r.answer : "", r.answer_len);
    s->reasoning_copy = strndup(r.reasoning ? r.reasoning : "", r.reasoning_len);
}

static int finish(qvl_session *s, const char *reason) {
    turn *cur = &s->turns[s->nturns - 1];
    size_t n;
    const char *rest = tok_stream_flush(&s->stream, &n);
    if (rest && n) append_text(s, rest, n);
    free(cur->reply_text);
    cur->reply_text = strdup(s->text ? s->text : "");
    split_reply(s);
    s->info.finish_reason = reason;
    s->info.completion_tokens = cur->n_reply;
    double dt = qvl_now() - s->t_decode_start;
    s->info.decode_tok_s = dt > 0 && cur->n_reply > 1 ? (cur->n_reply - 1) / dt : 0;
    if (cur->n_reply > 1) s->last_decode_tok_s = s->info.decode_tok_s;
    s->generating = 0;
    emit_state(s, QVL_STATE_IDLE, 1);
    return 0;
}

int session_next(qvl_session *s, qvl_token *tok, char *err) {
    if (!s->generating) return 0;
    turn *cur = &s->turns[s->nturns - 1];
    if (atomic_load(&s->cancel)) return finish(s, "cancelled");
    if (s->opts.max_tokens > 0 && cur->n_reply >= s->opts.max_tokens) return finish(s, "length");
    if (!s->have_logits) {
        /* the last token sampled has not been fed yet */
        if (cache_len(s->cache) >= cache_ctx(s->cache)) return finish(s, "length");
        if (decoder_step(s->cache, cur->reply_ids[cur->n_reply - 1], s->logits, err) != 0) return -1;
        s->have_logits = 1;
        s->pending = 0;
        if (atomic_load(&s->cancel)) return finish(s, "cancelled");
    }
    qvl_sample smp;
    int n_top = s->opts.logprobs > 0 ? s->opts.logprobs : 0;
    if (sampler_sample(s->sampler, s->logits, n_top, &smp, err) < 0) return -1;
    s->have_logits = 0;
    if (!s->opts.ignore_eos && is_eos(s, smp.id)) return finish(s, "stop");
    if (cur->n_reply == cur->cap_reply) {
        int cap = cur->cap_reply ? 2 * cur->cap_reply : 64;
        int *grown = realloc(cur->reply_ids, (size_t)cap * sizeof *grown);
        if (!grown) {
            qvl_seterr(err, "out of memory");
            return -1;
        }
        cur->reply_ids = grown;
        cur->cap_reply = cap;
    }
    cur->reply_ids[cur->n_reply++] = smp.id;
    s->pending = 1;
    memset(tok, 0, sizeof *tok);
    tok->id = smp.id;
    tok->reasoning = s->in_reasoning;
    if (smp.id == s->think_end_id && s->think_end_id >= 0) s->in_reasoning = 0;
    size_t n;
    const char *piece = tok_stream_push(&s->stream, smp.id, &n);
    /* the raw text keeps <think> markers so that the reply can be split later */
    if (smp.id == s->think_end_id && s->think_end_id >= 0) append_text(s, "</think>", 8);
    else if (piece && n) append_text(s, piece, n);
    tok->piece = piece ? piece : "";
    tok->logprob = smp.logprob;
    tok->n_top = smp.n_top;
    memcpy(tok->top_ids, smp.top_ids, sizeof tok->top_ids);
    memcpy(tok->top_logprobs, smp.top_logprobs, sizeof tok->top_logprobs);
    return 1;
}

void session_cancel(qvl_session *s) { atomic_store(&s->cancel, 1); }

const char *session_reply_text(const qvl_session *s) { return s->answer_copy ? s->answer_copy : ""; }

const char *session_reply_reasoning(const qvl_session *s) { return s->reasoning_copy ? s->reasoning_copy : ""; }

void session_reply_info(const qvl_session *s, qvl_reply_info *info) { *info = s->info; }

/* ---- conversation control ---- */

void session_clear(qvl_session *s) {
    char err[QVL_ERR_MAX];
    s->generating = 0;
    drop_turns(s, s->nturns);
    cache_truncate(s->cache, s->system_len, err);
    sampler_forget(s->sampler);
    s->last_closed = 1;
    s->pending = 0;
    s->have_logits = 0;
    if (s->system_len) rebuild(s, err);
}

int session_set_system(qvl_session *s, const char *text, char *err) {
    char *copy = text && *text ? strdup(text) : NULL;
    s->generating = 0;
    drop_turns(s, s->nturns);
    free(s->system);
    s->system = copy;
    sampler_forget(s->sampler);
    if (cache_truncate(s->cache, 0, err) != 0) return -1;
    s->last_closed = 1;
    s->pending = 0;
    s->have_logits = 0;
    return start_system(s, err);
}

int session_set_param(qvl_session *s, const char *name, const char *value, char *err) {
    char *end;
    if (!strcmp(name, "max_tokens") || !strcmp(name, "ignore_eos") || !strcmp(name, "logprobs")) {
        long v = strtol(value, &end, 10);
        if (!*value || *end || v < 0 || v > 1000000) {
            qvl_seterr(err, "/set %s: '%s' is not a non-negative integer", name, value);
            return -1;
        }
        if (!strcmp(name, "max_tokens")) s->opts.max_tokens = (int)v;
        else if (!strcmp(name, "ignore_eos")) s->opts.ignore_eos = v != 0;
        else s->opts.logprobs = v > QVL_MAX_LOGPROBS ? QVL_MAX_LOGPROBS : (int)v;
        return 0;
    }
    qvl_sampling_opts o = s->sampling;
    int r = sampling_set(&o, name, value, err);
    if (r == 1) {
        qvl_seterr(err, "/set: unknown parameter '%s' (temp, top_k, top_p, min_p, repeat_penalty, "
                        "presence_penalty, seed, greedy, max_tokens, ignore_eos, logprobs)", name);
        return -1;
    }
    if (r < 0) return -1;
    if (sampler_set_opts(s->sampler, &o, err) != 0) return -1;
    s->sampling = o;
    return 0;
}

void session_stats(const qvl_session *s, qvl_session_stats *st) {
    memset(st, 0, sizeof *st);
    st->ctx_used = cache_len(s->cache);
    st->ctx_total = cache_ctx(s->cache);
    st->turns = s->nturns;
    st->last_decode_tok_s = s->last_decode_tok_s;
    snprintf(st->model_name, sizeof st->model_name, "%s", s->model_name);
    st->thinking = s->fmt.thinking;
    snprintf(st->precision, sizeof st->precision, "weights %s, KV cache %s, matmul %s",
             s->opts.quant != QVL_QUANT_NONE ? quant_name(s->opts.quant) : "as stored",
             s->opts.kv_dtype == QVL_F16 ? "f16" : "f32", s->opts.bf16_matmul ? "bf16" : "f32");
}

/* ---- /save and /load ---- */

static cJSON *user_json(const turn *t) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "role", "user");
    if (t->nparts == 1 && t->parts[0].text) {
        cJSON_AddStringToObject(o, "content", t->parts[0].text);
        return o;
    }
    cJSON *arr = cJSON_AddArrayToObject(o, "content");
    for (int i = 0; i < t->nparts; i++) {
        cJSON *p = cJSON_CreateObject();
        if (t->parts[i].text) {
            cJSON_AddStringToObject(p, "type", "text");
            cJSON_AddStringToObject(p, "text", t->parts[i].text);
        } else if (!strncmp(t->parts[i].image_label, "data:", 5)) {
            cJSON_AddStringToObject(p, "type", "image_url");
            cJSON *u = cJSON_AddObjectToObject(p, "image_url");
            cJSON_AddStringToObject(u, "url", t->parts[i].image_label);
        } else {
            cJSON_AddStringToObject(p, "type", "image");
            cJSON_AddStringToObject(p, "image", t->parts[i].image_label);
        }
        cJSON_AddItemToArray(arr, p);
    }
    return o;
}

static int write_line(FILE *f, cJSON *o) {
    char *line = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!line) return -1;
    int ok = fprintf(f, "%s\n", line) > 0;
    free(line);
    return ok ? 0 : -1;
}

int session_save(const qvl_session *s, const char *path, char *err) {
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) {
        qvl_seterr(err, "%s: %s", path, strerror(errno));
        return -1;
    }
    int rc = 0;
    if (s->system) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "role", "system");
        cJSON_AddStringToObject(o, "content", s->system);
        rc |= write_line(f, o);
    }
    for (int i = 0; i < s->nturns; i++) {
        const turn *t = &s->turns[i];
        rc |= write_line(f, user_json(t));
        if (!t->reply_text) continue;
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "role", "assistant");
        cJSON_AddStringToObject(o, "content", t->reply_text);
        rc |= write_line(f, o);
    }
    if (fclose(f) != 0) rc = -1;
    if (!rc && rename(tmp, path) != 0) rc = -1;
    if (rc) {
        qvl_seterr(err, "%s: cannot write: %s", path, strerror(errno));
        remove(tmp);
    }
    return rc;
}

int session_set_reply(qvl_session *s, const char *reply, char *err) {
    if (s->nturns == 0) {
        qvl_seterr(err, "an assistant message needs a user message before it");
        return -1;
    }
    turn *cur = &s->turns[s->nturns - 1];
    int *ids = NULL, n = 0;
    if (encode_text(s, reply, &ids, &n, err) != 0) return -1;
    /* rewind the cache to the end of the user's tokens: the reply so far goes */
    int start = cache_len(s->cache) - (cur->n_reply - s->pending);
    char e2[QVL_ERR_MAX];
    if (start < 0 || cache_truncate(s->cache, start, e2) != 0) {
        free(ids);
        qvl_seterr(err, "cannot replace the reply: %s", e2);
        return -1;
    }
    if (start + n >= cache_ctx(s->cache)) n = cache_ctx(s->cache) - start - 1;
    if (n < 0) n = 0;
    int rc = feed(s, ids, n, NULL, 0, 0, err);
    if (rc) {
        free(ids);
        return -1;
    }
    free(cur->reply_ids);
    cur->reply_ids = ids;
    cur->n_reply = cur->cap_reply = n;
    free(cur->reply_text);
    cur->reply_text = strdup(reply);
    s->generating = 0;
    s->pending = 0;
    s->have_logits = 0;
    s->last_closed = 0;
    s->text_len = 0;
    append_text(s, reply, strlen(reply));
    split_reply(s);
    emit_state(s, QVL_STATE_IDLE, 1);
    return 0;
}

/* Adds a finished exchange (user message + the reply text) without generating. */
static int add_exchange(qvl_session *s, const qvl_part *parts, int nparts, const char *reply, char *err) {
    if (session_send(s, parts, nparts, err) != 0) return -1;
    s->generating = 0;
    return session_set_reply(s, reply, err);
}

int session_load(qvl_session *s, const char *path, char *err) {
    size_t len;
    char *buf = qvl_read_file(path, &len, err);
    if (!buf) return -1;
    int rc = 0, lineno = 0;
    char *save = NULL;
    cJSON *pending_user = NULL;
    session_set_system(s, NULL, err);
    for (char *line = strtok_r(buf, "\n", &save); line && !rc; line = strtok_r(NULL, "\n", &save)) {
        lineno++;
        if (!*line) continue;
        cJSON *o = cJSON_Parse(line);
        const char *role = cJSON_GetStringValue(cJSON_GetObjectItem(o, "role"));
        cJSON *content = cJSON_GetObjectItem(o, "content");
        if (!o || !role) {
            qvl_seterr(err, "%s:%d: not a conversation line", path, lineno);
            rc = -1;
        } else if (!strcmp(role, "system")) {
            rc = session_set_system(s, cJSON_GetStringValue(content), err);
        } else if (!strcmp(role, "user")) {
            cJSON_Delete(pending_user);
            pending_user = o;
            continue;
        } else if (!strcmp(role, "assistant") && pending_user) {
            qvl_message m = { 0 };
            const char *reply = cJSON_GetStringValue(content);
            rc = message_parse(cJSON_GetObjectItem(pending_user, "content"), &m, err);
            if (!rc) rc = add_exchange(s, m.parts, m.nparts, reply ? reply : "", err);
            message_free(&m);
            cJSON_Delete(pending_user);
            pending_user = NULL;
        } else {
            qvl_seterr(err, "%s:%d: unexpected role %s", path, lineno, role);
            rc = -1;
        }
        cJSON_Delete(o);
    }
    cJSON_Delete(pending_user);
    free(buf);
    if (rc && !strchr(err, ':')) {
        char msg[QVL_ERR_MAX];
        snprintf(msg, sizeof msg, "%s:%d: %s", path, lineno, err);
        memcpy(err, msg, QVL_ERR_MAX);
    }
    return rc;
}
