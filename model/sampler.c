/* sampler.c - the next token from the logits: penalties, mask, greedy or a
 * seeded draw after temperature, top-k, top-p and min-p.
 *
 * Everything works on a private copy of the logits, so the caller's array
 * stays the raw model output (the log-probabilities reported to the user are
 * computed from it, after the mask only).  Candidates are sorted most likely
 * first with ties broken by the lower id, which makes the whole procedure a
 * pure function of (logits, parameters, generator state): the same seed gives
 * the same reply on every machine. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common.h"
#include "sampler.h"

#define SEEN_CONTEXT 1   /* in the conversation (repetition penalty) */
#define SEEN_REPLY 2     /* in the reply being generated (presence penalty) */

struct qvl_sampler {
    int vocab;
    qvl_sampling_opts o;
    uint64_t rng[4];             /* xoshiro256** state */
    unsigned char *banned;       /* [vocab] */
    unsigned char *seen;         /* [vocab] SEEN_* bits */
    int *context_ids, n_context; /* distinct ids with SEEN_CONTEXT */
    int *reply_ids, n_reply;     /* distinct ids with SEEN_REPLY */
    float *work;                 /* [vocab] penalised, masked logits */
    int *cand;                   /* [vocab] candidate ids, best first */
    double *prob;                /* [vocab] their unnormalised probabilities */
};

/* ---- parameters ---- */

void sampling_unset(qvl_sampling_opts *o) {
    memset(o, 0, sizeof *o);
    o->temperature = NAN;
    o->top_k = -1;
    o->top_p = NAN;
    o->min_p = NAN;
    o->repeat_penalty = NAN;
    o->presence_penalty = NAN;
}

/* The value the command line gave, else generation_config.json's, else the card's. */
static float pick(float cli, int has_gen, float gen, float card) {
    if (!isnan(cli)) return cli;
    return has_gen ? gen : card;
}

void sampling_resolve(const qvl_sampling_opts *cli, const qvl_genconfig *g, int thinking,
                      qvl_sampling_opts *out) {
    static const qvl_genconfig none;
    if (!g) g = &none;
    /* Qwen3-VL model card recommendations for the two variants. */
    float card_temp = thinking ? 1.0f : 0.7f;
    float card_top_p = thinking ? 0.95f : 0.8f;
    int card_top_k = 20;
    float card_presence = thinking ? 0.0f : 1.5f;

    *out = *cli;
    out->temperature = pick(cli->temperature, g->has_temperature, g->temperature, card_temp);
    out->top_p = pick(cli->top_p, g->has_top_p, g->top_p, card_top_p);
    out->min_p = pick(cli->min_p, g->has_min_p, g->min_p, 0.0f);
    out->repeat_penalty = pick(cli->repeat_penalty, g->has_repetition_penalty,
                               g->repetition_penalty, 1.0f);
    out->top_k = cli->top_k >= 0 ? cli->top_k : g->has_top_k ? g->top_k : card_top_k;

    int cli_temp = !isnan(cli->temperature);
    int greedy = cli->greedy
              || (cli_temp && cli->temperature == 0.0f)
              || (!cli_temp && g->has_do_sample && !g->do_sample)
              || out->temperature == 0.0f;
    out->greedy = greedy;
    if (greedy)
        out->presence_penalty = isnan(cli->presence_penalty) ? 0.0f : cli->presence_penalty;
    else
        out->presence_penalty = pick(cli->presence_penalty, g->has_presence_penalty,
                                     g->presence_penalty, card_presence);
    /* A generation_config with nonsense values must not make us fail later. */
    if (!(out->top_p > 0 && out->top_p <= 1)) out->top_p = 1.0f;
    if (!(out->min_p >= 0 && out->min_p < 1)) out->min_p = 0.0f;
    if (!(out->temperature >= 0) || isinf(out->temperature)) out->temperature = card_temp;
    if (!(out->repeat_penalty > 0) || isinf(out->repeat_penalty)) out->repeat_penalty = 1.0f;
    if (!isfinite(out->presence_penalty)) out->presence_penalty = 0.0f;
    if (out->top_k < 0) out->top_k = 0;
}

int sampling_check(const qvl_sampling_opts *o, char *err) {
    if (!(o->temperature >= 0) || isinf(o->temperature)) {
        qvl_seterr(err, "temperature must be a number >= 0, got %g", o->temperature);
        return -1;
    }
    if (o->top_k < 0) { qvl_seterr(err, "top-k must be >= 0 (0 = off), got %d", o->top_k); return -1; }
    if (!(o->top_p > 0 && o->top_p <= 1)) {
        qvl_seterr(err, "top-p must be in (0, 1], got %g", o->top_p);
        return -1;
    }
    if (!(o->min_p >= 0 && o->min_p < 1)) {
        qvl_seterr(err, "min-p must be in [0, 1), got %g", o->min_p);
        return -1;
    }
    if (!(o->repeat_penalty > 0) || isinf(o->repeat_penalty)) {
        qvl_seterr(err, "repetition penalty must be > 0 (1 = off), got %g", o->repeat_penalty);
        return -1;
    }
    if (!isfinite(o->presence_penalty)) {
        qvl_seterr(err, "presence penalty must be a finite number, got %g", o->presence_penalty);
        return -1;
    }
    return 0;
}

static int parse_float(const char *s, float *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end || errno || !isfinite(v)) return -1;
    *out = (float)v;
    return 0;
}

static int parse_long(const char *s, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (end == s || *end || errno) return -1;
    *out = v;
    return 0;
}

int sampling_set(qvl_sampling_opts *o, const char *name, const char *value, char *err) {
    qvl_sampling_opts n = *o;
    float f;
    long l;
    if (!strcmp(name, "temp")) {
        if (parse_float(value, &f)) goto not_number;
        n.temperature = f;
        n.greedy = f == 0.0f;
    } else if (!strcmp(name, "top_k")) {
        if (parse_long(value, &l) || l > 1000000000L) goto not_integer;
        n.top_k = (int)l;
    } else if (!strcmp(name, "top_p")) {
        if (parse_float(value, &f)) goto not_number;
        n.top_p = f;
    } else if (!strcmp(name, "min_p")) {
        if (parse_float(value, &f)) goto not_number;
        n.min_p = f;
    } else if (!strcmp(name, "repeat_penalty")) {
        if (parse_float(value, &f)) goto not_number;
        n.repeat_penalty = f;
    } else if (!strcmp(name, "presence_penalty")) {
        if (parse_float(value, &f)) goto not_number;
        n.presence_penalty = f;
    } else if (!strcmp(name, "seed")) {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(value, &end, 10);
        if (end == value || *end || errno || value[0] == '-') goto not_integer;
        n.seed = v;
        n.has_seed = 1;
    } else if (!strcmp(name, "greedy")) {
        if (strcmp(value, "0") && strcmp(value, "1")) {
            qvl_seterr(err, "greedy: expected 0 or 1, got '%s'", value);
            return -1;
        }
        n.greedy = value[0] == '1';
    } else {
        return 1;
    }
    char why[QVL_ERR_MAX];
    if (sampling_check(&n, why)) { qvl_seterr(err, "%s: %s", name, why); return -1; }
    *o = n;
    return 0;
not_number:
    qvl_seterr(err, "%s: expected a number, got '%s'", name, value);
    return -1;
not_integer:
    qvl_seterr(err, "%s: expected a non-negative integer, got '%s'", name, value);
    return -1;
}

/* ---- the generator: splitmix64 expands the seed into xoshiro256** state ---- */

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t xoshiro_next(uint64_t *s) {
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

/* Uniform in [0, 1) with 53 random bits. */
static double uniform01(uint64_t *s) { return (double)(xoshiro_next(s) >> 11) * 0x1.0p-53; }

void sampler_seed(qvl_sampler *s, uint64_t seed) {
    uint64_t x = seed;
    for (int i = 0; i < 4; i++) s->rng[i] = splitmix64(&x);
}

uint64_t sampler_random_seed(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t x = (uint64_t)ts.tv_sec * 1000000007ULL ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 32);
    return splitmix64(&x);
}

/* ---- lifetime and bookkeeping ---- */

qvl_sampler *sampler_new(int vocab, const qvl_sampling_opts *o, char *err) {
    if (vocab <= 0) { qvl_seterr(err, "sampler: vocabulary size must be positive, got %d", vocab); return NULL; }
    if (sampling_check(o, err)) return NULL;
    qvl_sampler *s = calloc(1, sizeof *s);
    if (!s) goto oom;
    s->vocab = vocab;
    s->o = *o;
    s->banned = calloc((size_t)vocab, 1);
    s->seen = calloc((size_t)vocab, 1);
    s->context_ids = malloc((size_t)vocab * sizeof(int));
    s->reply_ids = malloc((size_t)vocab * sizeof(int));
    s->work = malloc((size_t)vocab * sizeof(float));
    s->cand = malloc((size_t)vocab * sizeof(int));
    s->prob = malloc((size_t)vocab * sizeof(double));
    if (!s->banned || !s->seen || !s->context_ids || !s->reply_ids || !s->work || !s->cand || !s->prob) {
        sampler_free(s);
        goto oom;
    }
    sampler_seed(s, o->has_seed ? o->seed : sampler_random_seed());
    return s;
oom:
    qvl_seterr(err, "sampler: out of memory for a vocabulary of %d", vocab);
    return NULL;
}

void sampler_free(qvl_sampler *s) {
    if (!s) return;
    free(s->banned); free(s->seen); free(s->context_ids); free(s->reply_ids);
    free(s->work); free(s->cand); free(s->prob);
    free(s);
}

int sampler_set_opts(qvl_sampler *s, const qvl_sampling_opts *o, char *err) {
    if (sampling_check(o, err)) return -1;
    int reseed = o->has_seed && (!s->o.has_seed || o->seed != s->o.seed);
    s->o = *o;
    if (reseed) sampler_seed(s, o->seed);
    return 0;
}

const qvl_sampling_opts *sampler_opts(const qvl_sampler *s) { return &s->o; }

void sampler_ban(qvl_sampler *s, const int *ids, int n) {
    for (int i = 0; i < n; i++)
        if (ids[i] >= 0 && ids[i] < s->vocab) s->banned[ids[i]] = 1;
}

static void mark_seen(qvl_sampler *s, int id, int bit) {
    if (id < 0 || id >= s->vocab || (s->seen[id] & bit)) return;
    s->seen[id] |= (unsigned char)bit;
    if (bit == SEEN_CONTEXT) s->context_ids[s->n_context++] = id;
    else s->reply_ids[s->n_reply++] = id;
}

void sampler_observe(qvl_sampler *s, const int *ids, int n) {
    for (int i = 0; i < n; i++) mark_seen(s, ids[i], SEEN_CONTEXT);
}

void sampler_new_reply(qvl_sampler *s) {
    for (int i = 0; i < s->n_reply; i++) s->seen[s->reply_ids[i]] &= (unsigned char)~SEEN_REPLY;
    s->n_reply = 0;
}

void sampler_forget(qvl_sampler *s) {
    sampler_new_reply(s);
    for (int i = 0; i < s->n_context; i++) s->seen[s->context_ids[i]] = 0;
    s->n_context = 0;
}

/* ---- one step ---- */

/* Raw logits with banned and non-finite entries set to -inf, into s->work;
 * returns the number of usable ids. */
static int masked_logits(qvl_sampler *s, const float *logits) {
    int usable = 0;
    for (int i = 0; i < s->vocab; i++) {
        float x = logits[i];
        if (s->banned[i] || !isfinite(x)) x = -INFINITY;
        else usable++;
        s->work[i] = x;
    }
    return usable;
}

/* log(sum(exp(x))) over the finite entries, computed stably. */
static double log_sum_exp(const float *x, int n) {
    float m = -INFINITY;
    for (int i = 0; i < n; i++) if (x[i] > m) m = x[i];
    double sum = 0;
    for (int i = 0; i < n; i++) if (x[i] > -INFINITY) sum += exp((double)x[i] - m);
    return m + log(sum);
}

/* The n best entries of x (most likely first, lower id on ties) by insertion. */
static int top_n(const float *x, int vocab, int n, int *ids) {
    int have = 0;
    if (n <= 0) return 0;
    for (int i = 0; i < vocab; i++) {
        if (x[i] == -INFINITY) continue;
        if (have == n && x[i] <= x[ids[n - 1]]) continue;
        int j = have < n ? have++ : n - 1;
        while (j > 0 && x[ids[j - 1]] < x[i]) { ids[j] = ids[j - 1]; j--; }
        ids[j] = i;
    }
    return have;
}

/* HF-style repetition penalty over the conversation, then the presence
 * penalty once per distinct id of the reply (as vLLM and OpenAI define it). */
static void apply_penalties(qvl_sampler *s) {
    float rp = s->o.repeat_penalty;
    if (rp != 1.0f) {
        for (int i = 0; i < s->n_context; i++) {
            float *x = &s->work[s->context_ids[i]];
            if (*x == -INFINITY) continue;
            *x = *x > 0 ? *x / rp : *x * rp;
        }
    }
    float pp = s->o.presence_penalty;
    if (pp != 0.0f) {
        for (int i = 0; i < s->n_reply; i++) {
            float *x = &s->work[s->reply_ids[i]];
            if (*x != -INFINITY) *x -= pp;
        }
    }
}

static int argmax(const float *x, int n) {
    int best = -1;
    for (int i = 0; i < n; i++)
        if (x[i] > -INFINITY && (best < 0 || x[i] > x[best])) best = i;
    return best;
}

static const float *sort_keys;
static int by_logit_desc(const void *a, const void *b) {
    int i = *(const int *)a, j = *(const int *)b;
    if (sort_keys[i] != sort_keys[j]) return sort_keys[i] > sort_keys[j] ? -1 : 1;
    return i - j;
}

/* Candidates in s->cand, best first: the top k when k > 0, else all usable ids. */
static int sorted_candidates(qvl_sampler *s, int usable) {
    int k = s->o.top_k;
    if (k > 0 && k < usable && k <= 256) return top_n(s->work, s->vocab, k, s->cand);
    int n = 0;
    for (int i = 0; i < s->vocab; i++) if (s->work[i] > -INFINITY) s->cand[n++] = i;
    sort_keys = s->work;
    qsort(s->cand, (size_t)n, sizeof(int), by_logit_desc);
    return k > 0 && k < n ? k : n;
}

/* Temperature, top-p, min-p over the sorted candidates, then one draw. */
static int draw(qvl_sampler *s, int n) {
    double inv_t = 1.0 / s->o.temperature;
    double top = s->work[s->cand[0]];
    double total = 0;
    for (int i = 0; i < n; i++) {
        s->prob[i] = exp(((double)s->work[s->cand[i]] - top) * inv_t);
        total += s->prob[i];
    }
    /* top-p: the shortest prefix whose probability reaches top_p */
    if (s->o.top_p < 1.0f) {
        double need = s->o.top_p * total, cum = 0;
        int keep = 0;
        while (keep < n && cum < need) cum += s->prob[keep++];
        n = keep > 0 ? keep : 1;
    }
    /* min-p: tokens at least min_p times as likely as the best (prob[0] = 1) */
    if (s->o.min_p > 0) {
        int keep = 1;
        while (keep < n && s->prob[keep] >= s->o.min_p) keep++;
        n = keep;
    }
    total = 0;
    for (int i = 0; i < n; i++) total += s->prob[i];
    double r = uniform01(s->rng) * total, cum = 0;
    for (int i = 0; i < n; i++) {
        cum += s->prob[i];
        if (r < cum) return s->cand[i];
    }
    return s->cand[n - 1];
}

int sampler_sample(qvl_sampler *s, const float *logits, int n_top, qvl_sample *out, char *err) {
    int usable = masked_logits(s, logits);
    if (!usable) { qvl_seterr(err, "sampler: no token can be generated (all logits masked or not finite)"); return -1; }

    /* Reported probabilities: the raw logits after the mask only. */
    double lse = log_sum_exp(s->work, s->vocab);
    if (n_top < 0) n_top = 0;
    if (n_top > QVL_MAX_LOGPROBS) n_top = QVL_MAX_LOGPROBS;
    out->n_top = top_n(s->work, s->vocab, n_top, out->top_ids);
    for (int i = 0; i < out->n_top; i++)
        out->top_logprobs[i] = (float)(s->work[out->top_ids[i]] - lse);

    apply_penalties(s);
    int id;
    if (s->o.greedy || s->o.temperature == 0.0f) {
        id = argmax(s->work, s->vocab);
    } else {
        int n = sorted_candidates(s, usable);
        id = draw(s, n);
    }
    /* The chosen token's raw logit (the work copy holds penalised values). */
    out->id = id;
    out->logprob = (float)((double)logits[id] - lse);
    mark_seen(s, id, SEEN_CONTEXT);
    mark_seen(s, id, SEEN_REPLY);
    return 0;
}
