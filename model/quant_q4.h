/* quant_q4.h - the q4 scale search, on Q4_LANES blocks at once.
 *
 * Not a header: quant.c includes it once per vector width, with Q4_LANES (4,
 * 8 or 16) and Q4_TARGET (the instruction set: empty, or a target attribute)
 * defined, and gets q4_blocks_<Q4_LANES>.  Each block sits in one lane of
 * GCC's generic vectors: t[j] holds element j of every block, and every lane
 * does exactly the operations, in the order, that the search below describes
 * for one block (no contraction into FMAs: ISO C's default).  So every width,
 * SSE2 (4 lanes), AVX2 (8) or AVX-512 (16), writes the same bytes; a width
 * the instruction set has as one register keeps GCC's comparisons native
 * (wider ones it splits lane by lane).  (Block by block, with the elements
 * across SSE2 lanes, most of the search was scalar: 13 s to load the 2B shape
 * with --quant q4.) */
#define Q4_JOIN2(a, b) a##b
#define Q4_JOIN(a, b) Q4_JOIN2(a, b)
#define q4f Q4_JOIN(q4f_, Q4_LANES)
#define q4i Q4_JOIN(q4i_, Q4_LANES)
#define q4u Q4_JOIN(q4u_, Q4_LANES)
#define q4_try Q4_JOIN(q4_try_, Q4_LANES)
typedef float q4f __attribute__((vector_size(4 * Q4_LANES)));
typedef int32_t q4i __attribute__((vector_size(4 * Q4_LANES)));
typedef uint32_t q4u __attribute__((vector_size(4 * Q4_LANES)));

#define Q4_SEL(mask, a, b) ((q4f)(((q4i)(a) & (mask)) | ((q4i)(b) & ~(mask))))     /* mask ? a : b */

/* f16_round on each lane, without branches: clamped to +-65504, then
 * normal float16s by the same bit rounding and the subnormal ones (|x| <
 * 2^-14, down to zero) by adding and taking away 0.75, whose float spacing is
 * float16's there (2^-24), the sign put back on zeros. */
#define Q4_F16_ROUND(out, x) do {                                                                \
        const q4f big_ = { 0 };                                                                  \
        q4f c_ = (x);                                                                            \
        c_ = Q4_SEL(c_ > 65504.0f, big_ + 65504.0f, c_);                                         \
        c_ = Q4_SEL(c_ < -65504.0f, big_ - 65504.0f, c_);                                        \
        q4u u_ = (q4u)c_;                                                                        \
        q4i e_ = (q4i)((u_ >> 23) & 0xffu);                                                      \
        q4u normal_ = (u_ + 0xfffu + ((u_ >> 13) & 1u)) & ~0x1fffu;                              \
        q4u tiny_ = ((q4u)((c_ + 0.75f) - 0.75f) & 0x7fffffffu) | (u_ & 0x80000000u);           \
        (out) = (q4f)Q4_SEL(e_ < 127 - 14, (q4f)tiny_, (q4f)normal_);                            \
    } while (0)

/* For step d (per lane): the codes round(w / d) clipped to -8..7 (to nearest
 * even by adding and taking away 1.5 * 2^23), and wq = sum(w q), qq = sum(q q)
 * added as four partial sums over elements j = l mod 4 (l = 0..3), each
 * (p0 + p4) + (p8 + p12) with p_j = w_j q_j + w_{j+16} q_{j+16}, then
 * (S0 + S2) + (S1 + S3).  (The order an SSE2 loop over a block's elements
 * added them in, when it set the format.) */
Q4_TARGET static inline __attribute__((always_inline)) void q4_try(const q4f *t, const q4f *d, q4f *c, q4f *wq, q4f *qq) {
    const q4f zero = { 0 };
    q4f id = Q4_SEL(*d != zero, 1.0f / *d, zero), s_wq[4], s_qq[4];
    for (int j = 0; j < QUANT_BLOCK; j++) {
        q4f v = (t[j] * id + 12582912.0f) - 12582912.0f;
        v = Q4_SEL(v < 7.0f, v, zero + 7.0f);
        c[j] = Q4_SEL(v > -8.0f, v, zero - 8.0f);
    }
    for (int l = 0; l < 4; l++) {
        q4f pw[4], pq[4];
        for (int k = 0; k < 4; k++) {
            int j = 4 * k + l;
            pw[k] = t[j] * c[j] + t[j + 16] * c[j + 16];
            pq[k] = c[j] * c[j] + c[j + 16] * c[j + 16];
        }
        s_wq[l] = (pw[0] + pw[1]) + (pw[2] + pw[3]);
        s_qq[l] = (pq[0] + pq[1]) + (pq[2] + pq[3]);
    }
    *wq = (s_wq[0] + s_wq[2]) + (s_wq[1] + s_wq[3]);
    *qq = (s_qq[0] + s_qq[2]) + (s_qq[1] + s_qq[3]);
}

/* Q4_0-like, with a search: m is the weight of largest magnitude (the first
 * such) and each candidate step d = m / (-8 c) (c = 1 maps m onto -8 exactly)
 * gives codes; for those codes the least-squares scale sum(wq) / sum(qq) is
 * tried too, and the pair with the smallest squared error wins (the first
 * such).  The error of scale s for codes q is (ww - 2 s wq) + s^2 qq, ww =
 * sum(w w) added in order, so a candidate costs one pass.  Steps and scales
 * are float16s (f16_round).  A block of 32 rarely spans the range its step
 * assumes, so a slightly larger or smaller step (clipping the one extreme
 * weight, or rounding the bulk more finely) often fits it better: on uniform
 * weights the search lowers the squared error by 14% against c = 1 alone (17
 * steps over +-15% gain only 0.3% more), and on the 2B shape it lifts the
 * logits' cosine from 0.965 to 0.970.  Q4_LANES blocks, w[l * 32 + j]: their
 * codes to q[l * 32 + j], their scales to d[l]. */
Q4_TARGET static void Q4_JOIN(q4_blocks_, Q4_LANES)(const float *w, int8_t *q, float *d) {
    q4f t[QUANT_BLOCK], c[QUANT_BLOCK];
    for (int j = 0; j < QUANT_BLOCK; j++)
        for (int l = 0; l < Q4_LANES; l++) t[j][l] = w[l * QUANT_BLOCK + j];
    const q4f zero = { 0 };
    q4f amax = zero, m = zero, ww = zero;
    for (int j = 0; j < QUANT_BLOCK; j++) {
        q4f a = (q4f)((q4u)t[j] & 0x7fffffffu);
        amax = Q4_SEL(a > amax, a, amax);
        ww = ww + t[j] * t[j];
    }
    for (int j = QUANT_BLOCK - 1; j >= 0; j--)              /* the first |w| == amax wins */
        m = Q4_SEL((q4f)((q4u)t[j] & 0x7fffffffu) == amax, t[j], m);
    q4f best_d = zero, best_e = zero + INFINITY, best_step = zero, wq, qq;
    for (int k = 0; k < Q4_STEPS; k++) {
        q4f step, d2;
        Q4_F16_ROUND(step, m * q4_steps[k]);
        q4_try(t, &step, c, &wq, &qq);
        q4i pos = qq > 0.0f;
        q4f ratio = Q4_SEL(pos, wq / qq, zero);      /* 0 stays +0 through the rounding */
        Q4_F16_ROUND(d2, ratio);
        q4f e1 = (ww - 2.0f * step * wq) + step * step * qq, e2 = (ww - 2.0f * d2 * wq) + d2 * d2 * qq;
        q4i lt = e2 < e1;
        q4f dk = Q4_SEL(lt, d2, step), ek = Q4_SEL(lt, e2, e1);
        q4i better = ek < best_e;
        best_e = Q4_SEL(better, ek, best_e);
        best_d = Q4_SEL(better, dk, best_d);
        best_step = Q4_SEL(better, step, best_step);
    }
    q4_try(t, &best_step, c, &wq, &qq);     /* the winners' codes */
    for (int l = 0; l < Q4_LANES; l++) {
        for (int j = 0; j < QUANT_BLOCK; j++) q[l * QUANT_BLOCK + j] = (int8_t)c[j][l];
        d[l] = best_d[l];
    }
}

#undef q4f
#undef q4i
#undef q4u
#undef q4_try
#undef Q4_SEL
#undef Q4_F16_ROUND
#undef Q4_JOIN
#undef Q4_JOIN2
