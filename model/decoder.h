/* decoder.h - the Qwen3-VL text decoder and its KV cache.
 *
 * A qvl_cache is one conversation: the keys and values of every token seen so
 * far, and the next mRoPE position.  decoder_forward appends tokens to it (a
 * whole prompt, a new turn with images, or one decoded token) and returns the
 * logits that follow.  Nothing already in the cache is ever recomputed. */
#ifndef QVL_DECODER_H
#define QVL_DECODER_H

#include "mrope.h"
#include "probe.h"
#include "weights.h"

typedef struct qvl_cache qvl_cache;

/* One image among the new tokens, in order of appearance: its run of
 * grid.t*grid.h*grid.w image_token_id tokens takes these embeddings
 * (vision_encode's output rows for that image). */
typedef struct {
    const float *embeds;                         /* [tokens, hidden] */
    const float *deepstack[QVL_MAX_DEEPSTACK];   /* cfg.vision.n_deepstack of [tokens, hidden] */
    qvl_grid grid;                               /* decoder grid (vision_llm_grid) */
} qvl_image_input;

/* A cache for up to ctx tokens (memory is reserved, pages are touched only as
 * the conversation grows).  The model must outlive the cache.  Keys and
 * values are stored as floats (cache_new), or with cache_new_as(..., QVL_F16)
 * as IEEE halves: half the memory, each value rounded to nearest once when it
 * is written, read back exactly. */
qvl_cache *cache_new(const qvl_model *m, int ctx, char *err);
qvl_cache *cache_new_as(const qvl_model *m, int ctx, qvl_dtype kv, char *err);
void cache_free(qvl_cache *c);
int cache_len(const qvl_cache *c);        /* tokens held */
int cache_ctx(const qvl_cache *c);        /* capacity */
int cache_next_pos(const qvl_cache *c);   /* the scalar position the next text token gets */
/* Forgets every token from n on (0 <= n <= len), restoring the position state
 * the cache had after its first n tokens. */
int cache_truncate(qvl_cache *c, int n, char *err);

/* Appends n >= 1 tokens.  Each image's tokens must all be in this call.
 * logits: NULL, [vocab] for the last position, or [n, vocab] when
 * all_logits.  On error (bad id, images not matching the image tokens, the
 * context full) nothing is appended and err says why. */
int decoder_forward(qvl_cache *c, const int *ids, int n, const qvl_image_input *images, int n_images,
                    float *logits, int all_logits, const qvl_probe *probe, char *err);

/* Decoding: one token, the next logits [vocab]. */
int decoder_step(qvl_cache *c, int id, float *logits, char *err);

#endif
