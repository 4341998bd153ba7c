/* vision.h - the Qwen3-VL vision encoder: preprocessed patches in, one
 * embedding per merged 2x2 patch block out (plus the DeepStack features the
 * decoder adds to its first layers). */
#ifndef QVL_VISION_H
#define QVL_VISION_H

#include "mrope.h"
#include "probe.h"
#include "weights.h"

typedef struct {
    int n_tokens;                         /* merged tokens over all images */
    int dim;                              /* out_hidden (the decoder's hidden size) */
    int n_deepstack;
    float *merged;                        /* [n_tokens, dim] */
    float *deepstack[QVL_MAX_DEEPSTACK];  /* [n_tokens, dim] each */
} qvl_vision_out;

/* Encodes n_images images at once (attention never crosses images, nor the
 * frames of one image).  pixels: [n_patches, C*T*P*P] rows as the image
 * preprocessor lays them out (merge-block order); grids: each image's patch
 * grid (t, h, w), h and w multiples of the merge size, sum of t*h*w =
 * n_patches.  Image i's tokens are rows [sum of the earlier images' t*h*w/merge^2,
 * ...) of every output.  probe may be NULL.  Returns 0, or -1 with err set. */
int vision_encode(const qvl_model *m, const float *pixels, int n_patches,
                  const qvl_grid *grids, int n_images, const qvl_probe *probe,
                  qvl_vision_out *out, char *err);
void vision_out_free(qvl_vision_out *out);

/* The decoder grid of an image: (t, h / merge, w / merge). */
qvl_grid vision_llm_grid(const qvl_model *m, qvl_grid patch_grid);

#endif
