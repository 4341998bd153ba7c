/* mrope.h - positions of the Qwen3-VL text decoder (multimodal RoPE).
 *
 * Every token has three positions (t, h, w).  Text advances all three
 * together; an image's tokens take their place in the image's merged grid,
 * offset by the position the image starts at, and the text after it continues
 * from the largest position + 1.  A conversation therefore keeps one number of
 * state, the next scalar position, which is not the token count once an image
 * has been seen (that difference is transformers' rope_deltas). */
#ifndef QVL_MROPE_H
#define QVL_MROPE_H

#include "config.h"

/* An image's grid in decoder tokens: (grid_t, grid_h / merge, grid_w / merge). */
typedef struct { int t, h, w; } qvl_grid;

/* Positions of n new tokens following a sequence whose next scalar position
 * is `start`.  pos gets 3*n ints, row-major [3][n] (t row, h row, w row).
 * Each image consumes, at its first image token, the next grid: t*h*w
 * consecutive image tokens.  *next gets the next scalar position.  Errors:
 * image tokens without a grid left, an image cut short, grids left unused. */
int mrope_positions(const int *ids, int n, int image_token_id, const qvl_grid *grids, int n_grids,
                    int start, int *pos, int *next, char *err);

/* inv_freq[i] = 1 / theta^(2i/dim), i < dim/2, rounded as torch does in float32. */
void rope_inv_freq(float *inv_freq, int dim, double theta);

#define QVL_MAX_HALF 256

typedef struct {
    int half;                    /* head_dim / 2 */
    float inv_freq[QVL_MAX_HALF];
    int axis[QVL_MAX_HALF];      /* which position row (0 t, 1 h, 2 w) frequency i uses */
} qvl_mrope;

int mrope_init(qvl_mrope *r, const qvl_text_config *tc, char *err);
/* cos, sin [2*half] for one token (the half-size table repeated twice). */
void mrope_cos_sin(const qvl_mrope *r, int pt, int ph, int pw, float *cos, float *sin);

#endif
