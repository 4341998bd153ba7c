/* test_sampler.c - the token sampler on hand-made logits.
 *
 * Expected values are derived here from first principles (softmax of the
 * logits written in the test), never read back from the sampler: the top-p
 * and min-p sets are worked out by hand for probabilities 0.4/0.3/0.2/0.1,
 * and sampled frequencies must match the renormalised probabilities over many
 * seeded draws (deterministic, so the tolerances cannot flake). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "testutil.h"
#include "common.h"
#include "sampler.h"

#define DRAWS 20000

static qvl_sampling_opts plain(void) {
    qvl_sampling_opts o;
    sampling_unset(&o);
    o.temperature = 1.0f;
    o.top_k = 0;
    o.top_p = 1.0f;
    o.min_p = 0.0f;
    o.repeat_penalty = 1.0f;
    o.presence_penalty = 0.0f;
    o.has_seed = 1;
    o.seed = 42;
    return o;
}

static qvl_sampling_opts greedy(void) {
    qvl_sampling_opts o = plain();
    o.greedy = 1;
    return o;
}

static qvl_sampler *make(int vocab, qvl_sampling_opts o) {
    char err[QVL_ERR_MAX];
    qvl_sampler *s = sampler_new(vocab, &o, err);
    ck_assert_msg(s != NULL, "%s", err);
    return s;
}

static int pick(qvl_sampler *s, const float *logits) {
    qvl_sample out;
    char err[QVL_ERR_MAX];
    ck_assert_msg(sampler_sample(s, logits, 0, &out, err) == 0, "%s", err);
    return out.id;
}

/* Frequencies of DRAWS samples, each from a fresh reply (no penalties matter). */
static void frequencies(qvl_sampler *s, const float *logits, int vocab, double *freq) {
    int count[16] = { 0 };
    for (int i = 0; i < DRAWS; i++) {
        sampler_new_reply(s);
        count[pick(s, logits)]++;
    }
    for (int i = 0; i < vocab; i++) freq[i] = (double)count[i] / DRAWS;
}

/* log of probabilities 0.4 0.3 0.2 0.1, shifted by a constant (softmax ignores it) */
static void four_logits(float *l) {
    const double p[4] = { 0.4, 0.3, 0.2, 0.1 };
    for (int i = 0; i < 4; i++) l[i] = (float)(log(p[i]) + 3.0);
}

static void assert_freq(const double *freq, const double *want, int n, double tol) {
    for (int i = 0; i < n; i++)
        ck_assert_msg(fabs(freq[i] - want[i]) < tol, "id %d: frequency %.4f, expected %.4f",
                      i, freq[i], want[i]);
}

START_TEST(greedy_takes_argmax_lowest_id_on_ties) {
    float l[6] = { 0.5f, 3.0f, -1.0f, 3.0f, 2.9f, 0.0f };
    qvl_sampler *s = make(6, greedy());
    ck_assert_int_eq(pick(s, l), 1);
    sampler_free(s);
    /* temperature 0 without the greedy flag is greedy too */
    qvl_sampling_opts o = plain();
    o.temperature = 0;
    s = make(6, o);
    for (int i = 0; i < 10; i++) ck_assert_int_eq(pick(s, l), 1);
    sampler_free(s);
}
END_TEST

START_TEST(banned_ids_are_never_chosen) {
    float l[5] = { 1.0f, 5.0f, 4.0f, 0.0f, 0.5f };
    int ban[] = { 1, 2, 99, -3 };   /* out-of-range ids are ignored */
    qvl_sampler *s = make(5, plain());
    sampler_ban(s, ban, 4);
    for (int i = 0; i < 2000; i++) {
        sampler_new_reply(s);
        int id = pick(s, l);
        ck_assert(id != 1 && id != 2);
    }
    sampler_free(s);
    s = make(5, greedy());
    sampler_ban(s, ban, 2);
    ck_assert_int_eq(pick(s, l), 0);
    int all[] = { 0, 3, 4 };
    sampler_ban(s, all, 3);
    qvl_sample out;
    char err[QVL_ERR_MAX];
    ck_assert_int_eq(sampler_sample(s, l, 0, &out, err), -1);
    ck_assert(strstr(err, "no token") != NULL);
    sampler_free(s);
}
END_TEST

START_TEST(non_finite_logits_are_skipped) {
    float l[4] = { NAN, INFINITY, 1.0f, 2.0f };
    qvl_sampler *s = make(4, plain());
    for (int i = 0; i < 500; i++) {
        int id = pick(s, l);
        ck_assert(id == 2 || id == 3);
    }
    sampler_free(s);
}
END_TEST

START_TEST(logprobs_are_log_softmax_of_raw_masked_logits) {
    float l[5] = { 1.5f, -0.25f, 3.0f, 2.0f, 0.75f };
    int ban[] = { 3 };
    /* independent log-sum-exp over ids 0,1,2,4 (3 is masked) */
    double lse = log(exp(1.5) + exp(-0.25) + exp(3.0) + exp(0.75));
    qvl_sampling_opts o = greedy();
    o.repeat_penalty = 3.0f;            /* penalties must not change reported logprobs */
    qvl_sampler *s = make(5, o);
    sampler_ban(s, ban, 1);
    int seen[] = { 2 };
    sampler_observe(s, seen, 1);        /* id 2: 3.0 / 3 = 1.0, so greedy picks id 0 */
    qvl_sample out;
    char err[QVL_ERR_MAX];
    ck_assert_int_eq(sampler_sample(s, l, 3, &out, err), 0);
    ck_assert_int_eq(out.id, 0);
    ck_assert_double_eq_tol(out.logprob, 1.5 - lse, 1e-6);
    ck_assert_int_eq(out.n_top, 3);
    int want_ids[3] = { 2, 0, 4 };
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(out.top_ids[i], want_ids[i]);
        ck_assert_double_eq_tol(out.top_logprobs[i], l[want_ids[i]] - lse, 1e-6);
    }
    /* logprob differences equal logit differences */
    ck_assert_double_eq_tol(out.top_logprobs[0] - out.top_logprobs[1], 3.0 - 1.5, 1e-6);
    /* asking for more than exist / more than the maximum */
    ck_assert_int_eq(sampler_sample(s, l, 1000, &out, err), 0);
    ck_assert_int_eq(out.n_top, 4);
    sampler_free(s);
}
END_TEST

START_TEST(plain_sampling_follows_softmax) {
    float l[4];
    four_logits(l);
    double want[4] = { 0.4, 0.3, 0.2, 0.1 }, freq[4];
    qvl_sampler *s = make(4, plain());
    frequencies(s, l, 4, freq);
    assert_freq(freq, want, 4, 0.015);
    sampler_free(s);
}
END_TEST

START_TEST(temperature_sharpens_and_flattens) {
    float l[4];
    four_logits(l);
    double freq[4];
    for (int k = 0; k < 2; k++) {
        double t = k ? 2.0 : 0.5, want[4], z = 0;
        const double p[4] = { 0.4, 0.3, 0.2, 0.1 };
        for (int i = 0; i < 4; i++) z += want[i] = pow(p[i], 1.0 / t);
        for (int i = 0; i < 4; i++) want[i] /= z;
        qvl_sampling_opts o = plain();
        o.temperature = (float)t;
        qvl_sampler *s = make(4, o);
        frequencies(s, l, 4, freq);
        assert_freq(freq, want, 4, 0.015);
        sampler_free(s);
    }
}
END_TEST

START_TEST(top_k_one_equals_greedy) {
    float l[64];
    srand(7);
    for (int i = 0; i < 64; i++) l[i] = (float)rand() / RAND_MAX * 4.0f;
    int best = 0;
    for (int i = 1; i < 64; i++) if (l[i] > l[best]) best = i;
    qvl_sampling_opts o = plain();
    o.top_k = 1;
    o.temperature = 1.5f;
    for (unsigned long long seed = 1; seed <= 50; seed++) {
        o.seed = seed;
        qvl_sampler *s = make(64, o);
        ck_assert_int_eq(pick(s, l), best);
        sampler_free(s);
    }
}
END_TEST

START_TEST(top_k_keeps_the_k_best) {
    float l[4];
    four_logits(l);
    double freq[4], want[4] = { 0.4 / 0.7, 0.3 / 0.7, 0, 0 };
    qvl_sampling_opts o = plain();
    o.top_k = 2;
    qvl_sampler *s = make(4, o);
    frequencies(s, l, 4, freq);
    assert_freq(freq, want, 4, 0.015);
    sampler_free(s);
}
END_TEST

/* top-p over 0.4 0.3 0.2 0.1: the shortest prefix reaching p, worked by hand. */
START_TEST(top_p_cutoffs) {
    float l[4];
    four_logits(l);
    struct { float p; int keep; } cases[] = { { 0.35f, 1 }, { 0.45f, 2 }, { 0.65f, 2 },
                                              { 0.75f, 3 }, { 0.85f, 3 }, { 0.95f, 4 } };
    const double p[4] = { 0.4, 0.3, 0.2, 0.1 };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        double want[4] = { 0 }, z = 0, freq[4];
        for (int i = 0; i < cases[c].keep; i++) z += p[i];
        for (int i = 0; i < cases[c].keep; i++) want[i] = p[i] / z;
        qvl_sampling_opts o = plain();
        o.top_p = cases[c].p;
        qvl_sampler *s = make(4, o);
        frequencies(s, l, 4, freq);
        assert_freq(freq, want, 4, 0.015);
        sampler_free(s);
    }
}
END_TEST

/* min-p keeps tokens at least min_p times as likely as the best (0.4). */
START_TEST(min_p_cutoffs) {
    float l[4];
    four_logits(l);
    struct { float m; int keep; } cases[] = { { 0.9f, 1 }, { 0.6f, 2 }, { 0.3f, 3 }, { 0.2f, 4 } };
    const double p[4] = { 0.4, 0.3, 0.2, 0.1 };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        double want[4] = { 0 }, z = 0, freq[4];
        for (int i = 0; i < cases[c].keep; i++) z += p[i];
        for (int i = 0; i < cases[c].keep; i++) want[i] = p[i] / z;
        qvl_sampling_opts o = plain();
        o.min_p = cases[c].m;
        qvl_sampler *s = make(4, o);
        frequencies(s, l, 4, freq);
        assert_freq(freq, want, 4, 0.015);
        sampler_free(s);
    }
}
END_TEST

START_TEST(repetition_penalty_divides_positive_multiplies_negative) {
    float l[4] = { 2.0f, 1.9f, -1.0f, -0.9f };
    qvl_sampling_opts o = greedy();
    o.repeat_penalty = 2.0f;
    qvl_sampler *s = make(4, o);
    int seen0[] = { 0 };
    sampler_observe(s, seen0, 1);           /* 2.0 -> 1.0 < 1.9 */
    ck_assert_int_eq(pick(s, l), 1);
    sampler_free(s);

    s = make(4, o);
    int ban[] = { 0, 1 }, seen3[] = { 3, 3, 3 };
    sampler_ban(s, ban, 2);
    sampler_observe(s, seen3, 3);           /* -0.9 -> -1.8 < -1.0, once however often seen */
    ck_assert_int_eq(pick(s, l), 2);
    sampler_forget(s);                      /* forgotten: -0.9 wins again */
    ck_assert_int_eq(pick(s, l), 3);
    sampler_free(s);
}
END_TEST

START_TEST(presence_penalty_once_per_distinct_reply_token) {
    float l[2] = { 1.0f, 0.5f };
    qvl_sampling_opts o = greedy();
    o.presence_penalty = 0.6f;
    qvl_sampler *s = make(2, o);
    int prompt[] = { 0, 0 };
    sampler_observe(s, prompt, 2);          /* prompt tokens do not count */
    ck_assert_int_eq(pick(s, l), 0);        /* 1.0 vs 0.5 */
    ck_assert_int_eq(pick(s, l), 1);        /* 0.4 vs 0.5 */
    ck_assert_int_eq(pick(s, l), 0);        /* 0.4 vs -0.1 */
    ck_assert_int_eq(pick(s, l), 0);        /* still 0.4: not per occurrence */
    sampler_new_reply(s);
    ck_assert_int_eq(pick(s, l), 0);
    ck_assert_int_eq(pick(s, l), 1);
    sampler_free(s);
}
END_TEST

static void draw_sequence(unsigned long long seed, int *ids, int n) {
    float l[32];
    for (int i = 0; i < 32; i++) l[i] = 0.1f * (float)(i % 7);
    qvl_sampling_opts o = plain();
    o.seed = seed;
    qvl_sampler *s = make(32, o);
    for (int i = 0; i < n; i++) ids[i] = pick(s, l);
    sampler_free(s);
}

START_TEST(same_seed_same_draws) {
    int a[64], b[64], c[64];
    draw_sequence(1234, a, 64);
    draw_sequence(1234, b, 64);
    draw_sequence(1235, c, 64);
    ck_assert_mem_eq(a, b, sizeof a);
    ck_assert(memcmp(a, c, sizeof a) != 0);
}
END_TEST

START_TEST(set_opts_reseeds_only_on_a_new_seed) {
    float l[32];
    for (int i = 0; i < 32; i++) l[i] = 0.0f;
    qvl_sampling_opts o = plain();
    o.seed = 9;
    qvl_sampler *s = make(32, o);
    int first[16], again[16];
    for (int i = 0; i < 16; i++) first[i] = pick(s, l);
    char err[QVL_ERR_MAX];
    o.seed = 10;
    ck_assert_int_eq(sampler_set_opts(s, &o, err), 0);
    o.seed = 9;
    ck_assert_int_eq(sampler_set_opts(s, &o, err), 0);   /* back to 9: restarts the stream */
    for (int i = 0; i < 16; i++) again[i] = pick(s, l);
    ck_assert_mem_eq(first, again, sizeof first);
    o.top_p = 0;
    ck_assert_int_eq(sampler_set_opts(s, &o, err), -1);
    ck_assert(strstr(err, "top-p") != NULL);
    sampler_free(s);
}
END_TEST

START_TEST(resolve_uses_model_card_defaults) {
    qvl_sampling_opts cli, r;
    sampling_unset(&cli);
    sampling_resolve(&cli, NULL, 0, &r);
    ck_assert_float_eq_tol(r.temperature, 0.7f, 1e-6);
    ck_assert_float_eq_tol(r.top_p, 0.8f, 1e-6);
    ck_assert_int_eq(r.top_k, 20);
    ck_assert_float_eq_tol(r.presence_penalty, 1.5f, 1e-6);
    ck_assert_float_eq_tol(r.min_p, 0.0f, 1e-6);
    ck_assert_float_eq_tol(r.repeat_penalty, 1.0f, 1e-6);
    ck_assert_int_eq(r.greedy, 0);
    sampling_resolve(&cli, NULL, 1, &r);
    ck_assert_float_eq_tol(r.temperature, 1.0f, 1e-6);
    ck_assert_float_eq_tol(r.top_p, 0.95f, 1e-6);
    ck_assert_int_eq(r.top_k, 20);
    ck_assert_float_eq_tol(r.presence_penalty, 0.0f, 1e-6);
}
END_TEST

START_TEST(resolve_command_line_over_genconfig_over_card) {
    qvl_genconfig g;
    memset(&g, 0, sizeof g);
    g.has_temperature = 1; g.temperature = 0.6f;
    g.has_top_k = 1; g.top_k = 50;
    g.has_repetition_penalty = 1; g.repetition_penalty = 1.05f;
    g.has_do_sample = 1; g.do_sample = 1;
    qvl_sampling_opts cli, r;
    sampling_unset(&cli);
    cli.top_k = 5;
    sampling_resolve(&cli, &g, 0, &r);
    ck_assert_float_eq_tol(r.temperature, 0.6f, 1e-6);     /* genconfig */
    ck_assert_int_eq(r.top_k, 5);                            /* command line */
    ck_assert_float_eq_tol(r.top_p, 0.8f, 1e-6);           /* card */
    ck_assert_float_eq_tol(r.repeat_penalty, 1.05f, 1e-6);
    char err[QVL_ERR_MAX];
    ck_assert_int_eq(sampling_check(&r, err), 0);
}
END_TEST

START_TEST(resolve_greedy_rules) {
    qvl_genconfig g;
    memset(&g, 0, sizeof g);
    g.has_do_sample = 1; g.do_sample = 0;      /* the demo model's generation_config */
    g.has_repetition_penalty = 1; g.repetition_penalty = 1.1f;
    qvl_sampling_opts cli, r;
    sampling_unset(&cli);
    sampling_resolve(&cli, &g, 0, &r);
    ck_assert_int_eq(r.greedy, 1);
    ck_assert_float_eq_tol(r.presence_penalty, 0.0f, 1e-6);   /* card's 1.5 is for sampling */
    ck_assert_float_eq_tol(r.repeat_penalty, 1.1f, 1e-6);     /* kept, as transformers does */
    cli.temperature = 0.9f;                                    /* asking for a temperature samples */
    sampling_resolve(&cli, &g, 0, &r);
    ck_assert_int_eq(r.greedy, 0);
    ck_assert_float_eq_tol(r.presence_penalty, 1.5f, 1e-6);
    sampling_unset(&cli);
    cli.greedy = 1;
    cli.presence_penalty = 0.25f;
    sampling_resolve(&cli, NULL, 0, &r);
    ck_assert_int_eq(r.greedy, 1);
    ck_assert_float_eq_tol(r.presence_penalty, 0.25f, 1e-6);
    sampling_unset(&cli);
    cli.temperature = 0;
    sampling_resolve(&cli, NULL, 0, &r);
    ck_assert_int_eq(r.greedy, 1);
}
END_TEST

START_TEST(set_validates_values) {
    qvl_sampling_opts o = plain();
    char err[QVL_ERR_MAX];
    ck_assert_int_eq(sampling_set(&o, "temp", "0.3", err), 0);
    ck_assert_float_eq_tol(o.temperature, 0.3f, 1e-6);
    ck_assert_int_eq(o.greedy, 0);
    ck_assert_int_eq(sampling_set(&o, "temp", "-1", err), -1);
    ck_assert(strstr(err, "temp") != NULL);
    ck_assert_float_eq_tol(o.temperature, 0.3f, 1e-6);          /* unchanged on error */
    ck_assert_int_eq(sampling_set(&o, "top_p", "1.5", err), -1);
    ck_assert_int_eq(sampling_set(&o, "top_p", "abc", err), -1);
    ck_assert(strstr(err, "abc") != NULL);
    ck_assert_int_eq(sampling_set(&o, "top_k", "-2", err), -1);
    ck_assert_int_eq(sampling_set(&o, "min_p", "1", err), -1);
    ck_assert_int_eq(sampling_set(&o, "repeat_penalty", "0", err), -1);
    ck_assert_int_eq(sampling_set(&o, "greedy", "2", err), -1);
    ck_assert_int_eq(sampling_set(&o, "greedy", "1", err), 0);
    ck_assert_int_eq(o.greedy, 1);
    ck_assert_int_eq(sampling_set(&o, "seed", "18446744073709551615", err), 0);
    ck_assert(o.has_seed && o.seed == 18446744073709551615ULL);
    ck_assert_int_eq(sampling_set(&o, "seed", "-5", err), -1);
    ck_assert_int_eq(sampling_set(&o, "max_tokens", "5", err), 1);   /* not a sampling name */
}
END_TEST

int main(void) {
    Suite *s = suite_create("sampler");
    TCase *t = tcase_create("pick");
    tcase_add_test(t, greedy_takes_argmax_lowest_id_on_ties);
    tcase_add_test(t, banned_ids_are_never_chosen);
    tcase_add_test(t, non_finite_logits_are_skipped);
    tcase_add_test(t, logprobs_are_log_softmax_of_raw_masked_logits);
    tcase_add_test(t, repetition_penalty_divides_positive_multiplies_negative);
    tcase_add_test(t, presence_penalty_once_per_distinct_reply_token);
    suite_add_tcase(s, t);
    t = tcase_create("distribution");
    tcase_add_test(t, plain_sampling_follows_softmax);
    tcase_add_test(t, temperature_sharpens_and_flattens);
    tcase_add_test(t, top_k_one_equals_greedy);
    tcase_add_test(t, top_k_keeps_the_k_best);
    tcase_add_test(t, top_p_cutoffs);
    tcase_add_test(t, min_p_cutoffs);
    tcase_add_test(t, same_seed_same_draws);
    tcase_add_test(t, set_opts_reseeds_only_on_a_new_seed);
    suite_add_tcase(s, t);
    t = tcase_create("params");
    tcase_add_test(t, resolve_uses_model_card_defaults);
    tcase_add_test(t, resolve_command_line_over_genconfig_over_card);
    tcase_add_test(t, resolve_greedy_rules);
    tcase_add_test(t, set_validates_values);
    suite_add_tcase(s, t);
    return run_suite(s);
}
