/* sampler.h - choosing the next token from the logits.
 *
 * The order follows transformers/vLLM: penalties (repetition over the whole
 * conversation, presence over the reply), the banned-id mask (vision
 * placeholders are never generated), then either the argmax (greedy, or
 * temperature 0) or temperature, top-k, top-p, min-p and a draw from a seeded
 * xoshiro256** generator, so a given seed reproduces a reply exactly.
 *
 * Log-probabilities reported for --logprobs are the log-softmax of the raw
 * logits after the mask only (no penalties, no temperature), so for greedy
 * decoding logprob differences equal logit differences.
 *
 * Parameters are the qvl_sampling_opts of session.h, fully resolved (see
 * sampler_resolve); the sampler copies them. */
#ifndef QVL_SAMPLER_H
#define QVL_SAMPLER_H

#include <stdint.h>
#include "config.h"
#include "session.h"

typedef struct {
    int id;                          /* the chosen token */
    float logprob;                   /* its log-probability (raw logits, after the mask) */
    int n_top;                       /* top-N alternatives asked for (0..QVL_MAX_LOGPROBS) */
    int top_ids[QVL_MAX_LOGPROBS];   /* most likely first */
    float top_logprobs[QVL_MAX_LOGPROBS];
} qvl_sample;

typedef struct qvl_sampler qvl_sampler;

/* All fields "unset": NAN floats, top_k -1, greedy 0, no seed (what the
 * command line starts from before options are applied). */
void sampling_unset(qvl_sampling_opts *o);

/* Fills the unset fields of `cli`: command line > generation_config.json >
 * the model card (Instruct: temperature 0.7, top-p 0.8, top-k 20, presence
 * penalty 1.5; Thinking: 1.0, 0.95, 20, 0).  generation_config's
 * do_sample=false means greedy unless the command line gives a temperature
 * above 0.  Greedy decoding (and temperature 0) keeps the repetition penalty
 * (as transformers does) but uses a presence penalty only when the command
 * line asks for one, so --greedy reproduces the plain argmax.  `g` may be NULL
 * (no generation_config.json).  The result passes sampling_check. */
void sampling_resolve(const qvl_sampling_opts *cli, const qvl_genconfig *g, int thinking,
                      qvl_sampling_opts *out);

/* Rejects out-of-range values of a resolved set (temperature < 0, top-p
 * outside (0,1], min-p outside [0,1), top-k < 0, repetition penalty <= 0, NAN). */
int sampling_check(const qvl_sampling_opts *o, char *err);

/* /set NAME VALUE for the sampling names (temp, top_k, top_p, min_p,
 * repeat_penalty, presence_penalty, seed, greedy): 0 applied, 1 not a
 * sampling name (o untouched), -1 bad value (o untouched, err says why). */
int sampling_set(qvl_sampling_opts *o, const char *name, const char *value, char *err);

/* A seed from the clock and the process id, for runs without --seed. */
uint64_t sampler_random_seed(void);

/* vocab = number of logits per step.  Without has_seed, seeds from the clock. */
qvl_sampler *sampler_new(int vocab, const qvl_sampling_opts *o, char *err);
void sampler_free(qvl_sampler *s);
/* New parameters (e.g. after /set); reseeds when o->has_seed. */
int sampler_set_opts(qvl_sampler *s, const qvl_sampling_opts *o, char *err);
const qvl_sampling_opts *sampler_opts(const qvl_sampler *s);
void sampler_seed(qvl_sampler *s, uint64_t seed);

/* Ids never to generate (vision start/end/pad, image pad, video pad); ids
 * outside the vocabulary are ignored. */
void sampler_ban(qvl_sampler *s, const int *ids, int n);

/* Penalty bookkeeping: sampler_observe adds prompt tokens (the repetition
 * penalty covers the whole conversation in the cache); sampler_sample adds
 * each chosen token by itself.  sampler_new_reply starts a reply (presence
 * penalty counts only the reply's tokens); sampler_forget clears everything
 * (new conversation, or before re-observing the kept turns after a drop). */
void sampler_observe(qvl_sampler *s, const int *ids, int n);
void sampler_new_reply(qvl_sampler *s);
void sampler_forget(qvl_sampler *s);

/* Picks the next token from logits[vocab] (not modified) and records it as
 * generated.  n_top: how many alternatives to report (clamped to
 * QVL_MAX_LOGPROBS).  -1 when every id is banned or not finite. */
int sampler_sample(qvl_sampler *s, const float *logits, int n_top, qvl_sample *out, char *err);

#endif
