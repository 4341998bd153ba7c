/* picture.h - fitting an RGB picture into terminal cells, and resampling it.
 *
 * Both renderers (sixel.h, blocks.h) need the same two things: a target size
 * that keeps the aspect ratio inside a box of cells, and a resampler.  Pictures
 * are plain RGB: width*height*3 bytes, rows top to bottom, no padding. */
#ifndef QVL_PICTURE_H
#define QVL_PICTURE_H

/* Largest size that keeps w:h inside max_w x max_h (both in the same units),
 * at least 1x1; never larger than w x h unless upscale is set.  -1 when an
 * argument is not positive. */
int qvl_picture_fit(int w, int h, int max_w, int max_h, int upscale, int *out_w, int *out_h);

/* Area-average resampling (a box filter with fractional coverage: for display;
 * exact copy when the sizes match).  dst holds dw*dh*3 bytes. */
void qvl_picture_resize(const unsigned char *src, int sw, int sh,
                        unsigned char *dst, int dw, int dh);

/* Refuses pictures whose byte size would overflow or exceed 2^28 pixels;
 * returns 0 or -1 with err set. */
int qvl_picture_check(const unsigned char *rgb, int w, int h, char *err);

#endif
