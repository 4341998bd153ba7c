/* mrope.c - get_rope_index and the interleaved mRoPE tables of Qwen3-VL.
 *
 * Matches transformers' Qwen3VLModel.get_rope_index (images; videos are not
 * supported by qvl) and Qwen3VLTextRotaryEmbedding with apply_interleaved_mrope:
 * the frequencies are float32 products inv_freq * position, as there, so the
 * angles round the same way at large positions. */
#include "mrope.h"

#include <math.h>

#include "common.h"

static int imax(int a, int b) { return a > b ? a : b; }

int mrope_positions(const int *ids, int n, int image_token_id, const qvl_grid *grids, int n_grids,
                    int start, int *pos, int *next, char *err) {
    int p = start, g = 0;
    for (int i = 0; i < n;) {
        if (ids[i] != image_token_id) {
            pos[i] = pos[n + i] = pos[2 * n + i] = p++;
            i++;
            continue;
        }
        if (g == n_grids) {
            qvl_seterr(err, "image token at position %d but no image left (%d given)", i, n_grids);
            return -1;
        }
        const qvl_grid *gr = &grids[g];
        if (gr->t < 1 || gr->h < 1 || gr->w < 1) {
            qvl_seterr(err, "image %d: bad grid %dx%dx%d", g, gr->t, gr->h, gr->w);
            return -1;
        }
        long count = (long)gr->t * gr->h * gr->w;
        for (long k = 0; k < count; k++) {
            if (i + k >= n || ids[i + k] != image_token_id) {
                qvl_seterr(err, "image %d needs %ld image tokens from position %d, found %ld", g, count, i, k);
                return -1;
            }
            int ti = (int)(k / ((long)gr->h * gr->w));
            int hi = (int)(k / gr->w % gr->h);
            int wi = (int)(k % gr->w);
            pos[i + k] = p + ti;
            pos[n + i + k] = p + hi;
            pos[2 * n + i + k] = p + wi;
        }
        p += imax(gr->t, imax(gr->h, gr->w));
        i += (int)count;
        g++;
    }
    if (g != n_grids) {
        qvl_seterr(err, "%d images given but the ids hold image tokens for %d", n_grids, g);
        return -1;
    }
    *next = p;
    return 0;
}

void rope_inv_freq(float *inv_freq, int dim, double theta) {
    for (int i = 0; i < dim / 2; i++) {
        float e = (float)(2 * i) / (float)dim;
        float pw = (float)pow((double)(float)theta, (double)e);
        inv_freq[i] = 1.0f / pw;
    }
}

int mrope_init(qvl_mrope *r, const qvl_text_config *tc, char *err) {
    int half = tc->head_dim / 2;
    if (tc->head_dim <= 0 || tc->head_dim % 2 || half > QVL_MAX_HALF) {
        qvl_seterr(err, "head_dim %d: must be even and at most %d", tc->head_dim, 2 * QVL_MAX_HALF);
        return -1;
    }
    const int *s = tc->mrope_section;
    if (s[0] < 0 || s[1] < 0 || s[2] < 0 || s[0] + s[1] + s[2] != half) {
        qvl_seterr(err, "mrope_section [%d, %d, %d] does not sum to head_dim/2 = %d", s[0], s[1], s[2], half);
        return -1;
    }
    r->half = half;
    rope_inv_freq(r->inv_freq, tc->head_dim, tc->rope_theta);
    for (int i = 0; i < half; i++) {
        if (tc->mrope_interleaved)     /* t h w t h w ... then t for the rest */
            r->axis[i] = (i % 3 == 1 && i < 3 * s[1]) ? 1 : (i % 3 == 2 && i < 3 * s[2]) ? 2 : 0;
        else                           /* Qwen2-VL layout: t block, h block, w block */
            r->axis[i] = i < s[0] ? 0 : i < s[0] + s[1] ? 1 : 2;
    }
    return 0;
}

void mrope_cos_sin(const qvl_mrope *r, int pt, int ph, int pw, float *cos_out, float *sin_out) {
    const float p[3] = { (float)pt, (float)ph, (float)pw };
    for (int i = 0; i < r->half; i++) {
        float f = r->inv_freq[i] * p[r->axis[i]];
        cos_out[i] = cos_out[i + r->half] = (float)cos((double)f);
        sin_out[i] = sin_out[i + r->half] = (float)sin((double)f);
    }
}
