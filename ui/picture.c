/* picture.c - fitting an RGB picture into a box of cells, and resampling it.
 *
 * The resampler is an area average: each destination pixel is the mean of the
 * source area it covers, with partial source pixels weighted by how much of
 * them is covered.  That is a proper box filter when shrinking (no aliasing on
 * screenshots and text) and a nearest-like enlargement with blended seams when
 * growing.  It is for display only: the model has its own preprocessing. */
#include "picture.h"

#include <stdint.h>

#include "common.h"

#define PICTURE_MAX_PIXELS (1L << 28)

int qvl_picture_check(const unsigned char *rgb, int w, int h, char *err) {
    if (!rgb) { qvl_seterr(err, "picture: no pixel data"); return -1; }
    if (w <= 0 || h <= 0) { qvl_seterr(err, "picture: bad size %dx%d", w, h); return -1; }
    if ((int64_t)w * h > PICTURE_MAX_PIXELS) {
        qvl_seterr(err, "picture: %dx%d is too large to display (over 2^28 pixels)", w, h);
        return -1;
    }
    return 0;
}

int qvl_picture_fit(int w, int h, int max_w, int max_h, int upscale, int *out_w, int *out_h) {
    if (w <= 0 || h <= 0 || max_w <= 0 || max_h <= 0) return -1;
    if (!upscale && w <= max_w && h <= max_h) { *out_w = w; *out_h = h; return 0; }
    /* Scale by the tighter of the two limits; compare w/max_w against h/max_h
     * in integers to avoid rounding the choice itself. */
    int64_t fw, fh;
    if ((int64_t)w * max_h >= (int64_t)h * max_w) {  /* width is the limit */
        fw = max_w;
        fh = ((int64_t)h * max_w + w / 2) / w;
    } else {
        fh = max_h;
        fw = ((int64_t)w * max_h + h / 2) / h;
    }
    *out_w = fw < 1 ? 1 : (int)(fw > max_w ? max_w : fw);
    *out_h = fh < 1 ? 1 : (int)(fh > max_h ? max_h : fh);
    return 0;
}

/* The source span [i*s/d, (i+1)*s/d) of destination index i, in units of
 * 1/d source pixels so that everything stays an integer. */
static void span_of(int i, int s, int64_t *lo, int64_t *hi) {
    *lo = (int64_t)i * s;
    *hi = (int64_t)(i + 1) * s;
}

/* How much of source pixel k (covering [k*d, (k+1)*d) in the same units)
 * lies inside [lo, hi). */
static int64_t overlap(int k, int d, int64_t lo, int64_t hi) {
    int64_t a = (int64_t)k * d, b = a + d;
    if (a < lo) a = lo;
    if (b > hi) b = hi;
    return b > a ? b - a : 0;
}

void qvl_picture_resize(const unsigned char *src, int sw, int sh,
                        unsigned char *dst, int dw, int dh) {
    for (int y = 0; y < dh; y++) {
        int64_t ylo, yhi;
        span_of(y, sh, &ylo, &yhi);
        int y0 = (int)(ylo / dh), y1 = (int)((yhi + dh - 1) / dh);
        if (y1 > sh) y1 = sh;
        for (int x = 0; x < dw; x++) {
            int64_t xlo, xhi;
            span_of(x, sw, &xlo, &xhi);
            int x0 = (int)(xlo / dw), x1 = (int)((xhi + dw - 1) / dw);
            if (x1 > sw) x1 = sw;
            double acc[3] = {0, 0, 0}, total = 0;
            for (int sy = y0; sy < y1; sy++) {
                double wy = (double)overlap(sy, dh, ylo, yhi);
                if (wy == 0) continue;
                const unsigned char *row = src + (size_t)sy * sw * 3;
                for (int sx = x0; sx < x1; sx++) {
                    double wgt = wy * (double)overlap(sx, dw, xlo, xhi);
                    if (wgt == 0) continue;
                    for (int c = 0; c < 3; c++) acc[c] += wgt * row[sx * 3 + c];
                    total += wgt;
                }
            }
            unsigned char *o = dst + ((size_t)y * dw + x) * 3;
            for (int c = 0; c < 3; c++) {
                double v = total > 0 ? acc[c] / total + 0.5 : 0;
                o[c] = (unsigned char)(v > 255 ? 255 : v);
            }
        }
    }
}
