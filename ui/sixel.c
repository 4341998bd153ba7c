/* sixel.c - encode an RGB picture as sixel with libsixel, sized in cells.
 *
 * Sizing first (qvl_sixel_fit): the pixel box is max_cols*cell_w wide and
 * max_rows*cell_h tall, narrowed to the terminal's sixel limit, and its height
 * is cut to a whole number of 6-pixel sixel bands so that a terminal that
 * paints the full last band still stays inside the reserved rows.  Then the
 * picture is resampled (picture.h), a palette is built from it (libsixel's
 * median cut, exact when it has no more colours than the palette) and
 * libsixel writes the DCS string through a callback into a growing buffer. */
#include "sixel.h"

#include <stdlib.h>
#include <string.h>

/* libsixel's header is also called sixel.h, and ui/ comes first on the include
 * path; Debian installs it as /usr/include/sixel/sixel.h, so name it by that. */
#include <sixel/sixel.h>

#include "common.h"
#include "picture.h"

#define SIXEL_BAND 6

static int box_ok(const qvl_sixel_box *box, char *err) {
    if (!box || box->cell_w <= 0 || box->cell_h <= 0) {
        qvl_seterr(err, "sixel: cell size in pixels unknown or bad (%dx%d)",
                   box ? box->cell_w : 0, box ? box->cell_h : 0);
        return -1;
    }
    if (box->max_cols <= 0 || box->max_rows <= 0) {
        qvl_seterr(err, "sixel: bad box of %dx%d cells", box->max_cols, box->max_rows);
        return -1;
    }
    if (box->colors < 0 || box->colors == 1 || box->colors > 256) {
        qvl_seterr(err, "sixel: palette size %d outside 2..256", box->colors);
        return -1;
    }
    return 0;
}

static int ceil_div(int a, int b) { return (a + b - 1) / b; }

int qvl_sixel_fit(int w, int h, const qvl_sixel_box *box, qvl_sixel *out, char *err) {
    memset(out, 0, sizeof *out);
    if (w <= 0 || h <= 0) { qvl_seterr(err, "sixel: bad picture size %dx%d", w, h); return -1; }
    if (box_ok(box, err) != 0) return -1;
    int max_w = box->max_cols * box->cell_w, max_h = box->max_rows * box->cell_h;
    if (box->max_px_w > 0 && box->max_px_w < max_w) max_w = box->max_px_w;
    if (box->max_px_h > 0 && box->max_px_h < max_h) max_h = box->max_px_h;
    if (max_h >= SIXEL_BAND) max_h -= max_h % SIXEL_BAND;  /* else under one band: keep it */
    if (max_h <= 0 || max_w <= 0) {
        qvl_seterr(err, "sixel: box of %dx%d pixels is too small", max_w, max_h);
        return -1;
    }
    qvl_picture_fit(w, h, max_w, max_h, box->upscale, &out->px_w, &out->px_h);
    out->cols = ceil_div(out->px_w, box->cell_w);
    out->rows = ceil_div(ceil_div(out->px_h, SIXEL_BAND) * SIXEL_BAND, box->cell_h);
    return 0;
}

/* libsixel's write callback: append to the growing buffer. */
typedef struct { char *buf; size_t len, cap; int oom; } membuf;

static int membuf_write(char *data, int size, void *priv) {
    membuf *m = priv;
    if (m->oom || size <= 0) return size;
    size_t need = m->len + (size_t)size + 1;
    if (need > m->cap) {
        size_t cap = m->cap ? m->cap : 4096;
        while (cap < need) cap *= 2;
        char *nb = realloc(m->buf, cap);
        if (!nb) { m->oom = 1; return size; }
        m->buf = nb;
        m->cap = cap;
    }
    memcpy(m->buf + m->len, data, (size_t)size);
    m->len += (size_t)size;
    m->buf[m->len] = 0;
    return size;
}

/* Quantise px (w x h RGB) and encode it into *m.  0, or -1 with err set. */
static int encode_pixels(unsigned char *px, int w, int h, int colors, membuf *m, char *err) {
    sixel_output_t *output = NULL;
    sixel_dither_t *dither = NULL;
    SIXELSTATUS st = sixel_output_new(&output, membuf_write, m, NULL);
    if (SIXEL_FAILED(st)) goto fail;
    sixel_output_set_8bit_availability(output, 0);  /* ESC P ... ESC \, safe everywhere */
    st = sixel_dither_new(&dither, colors, NULL);
    if (SIXEL_FAILED(st)) goto fail;
    st = sixel_dither_initialize(dither, px, w, h, SIXEL_PIXELFORMAT_RGB888,
                                 SIXEL_LARGE_AUTO, SIXEL_REP_AUTO, SIXEL_QUALITY_AUTO);
    if (SIXEL_FAILED(st)) goto fail;
    st = sixel_encode(px, w, h, 3, dither, output);
    if (SIXEL_FAILED(st)) goto fail;
    sixel_dither_unref(dither);
    sixel_output_unref(output);
    if (m->oom) { qvl_seterr(err, "sixel: out of memory for the encoded picture"); return -1; }
    return 0;
fail:
    qvl_seterr(err, "sixel: libsixel: %s", sixel_helper_format_error(st));
    if (dither) sixel_dither_unref(dither);
    if (output) sixel_output_unref(output);
    return -1;
}

int qvl_sixel_encode(const unsigned char *rgb, int w, int h, const qvl_sixel_box *box,
                     qvl_sixel *out, char *err) {
    memset(out, 0, sizeof *out);
    if (qvl_picture_check(rgb, w, h, err) != 0) return -1;
    qvl_sixel fit;
    if (qvl_sixel_fit(w, h, box, &fit, err) != 0) return -1;

    /* Always a private copy: libsixel takes the pixels as non-const. */
    unsigned char *px = malloc((size_t)fit.px_w * fit.px_h * 3);
    if (!px) {
        qvl_seterr(err, "sixel: out of memory for %dx%d pixels", fit.px_w, fit.px_h);
        return -1;
    }
    qvl_picture_resize(rgb, w, h, px, fit.px_w, fit.px_h);
    membuf m = {0};
    int rc = encode_pixels(px, fit.px_w, fit.px_h, box->colors ? box->colors : 256, &m, err);
    free(px);
    if (rc != 0 || !m.buf) {
        if (rc == 0) qvl_seterr(err, "sixel: libsixel wrote nothing");
        free(m.buf);
        return -1;
    }
    *out = fit;
    out->data = m.buf;
    out->len = m.len;
    return 0;
}

void qvl_sixel_free(qvl_sixel *s) {
    if (!s) return;
    free(s->data);
    memset(s, 0, sizeof *s);
}
