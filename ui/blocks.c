/* blocks.c - pictures as half-block cells and coloured text lines.
 *
 * A picture is resampled to cols x (2*rows) square pixels (picture.h), then each
 * cell takes pixel rows 2y (top) and 2y+1 (bottom).  Lines repeat an SGR colour
 * only when it changes from the previous cell of the same line, which keeps a
 * flat area cheap, and every line is self-contained (see blocks.h). */
#include "blocks.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "picture.h"

#define UPPER_HALF_BLOCK "\xe2\x96\x80"  /* U+2580 in UTF-8 */

int qvl_blocks_fit(int w, int h, int max_cols, int max_rows, int upscale,
                   int *cols, int *rows, char *err) {
    if (w <= 0 || h <= 0) { qvl_seterr(err, "blocks: bad picture size %dx%d", w, h); return -1; }
    if (max_cols <= 0 || max_rows <= 0) {
        qvl_seterr(err, "blocks: bad box %dx%d cells", max_cols, max_rows);
        return -1;
    }
    int pw, ph;
    qvl_picture_fit(w, h, max_cols, 2 * max_rows, upscale, &pw, &ph);
    *cols = pw;
    *rows = (ph + 1) / 2;
    return 0;
}

int qvl_blocks_make(const unsigned char *rgb, int w, int h, int max_cols, int max_rows,
                    int upscale, qvl_blocks *out, char *err) {
    memset(out, 0, sizeof *out);
    int cols, rows, pw, ph;
    if (qvl_picture_check(rgb, w, h, err) != 0) return -1;
    if (qvl_blocks_fit(w, h, max_cols, max_rows, upscale, &cols, &rows, err) != 0) return -1;
    /* The pixels the cells are made of; an odd height leaves the last row
     * without a bottom pixel. */
    qvl_picture_fit(w, h, max_cols, 2 * max_rows, upscale, &pw, &ph);

    unsigned char *px = malloc((size_t)pw * ph * 3);
    qvl_block_cell *cells = calloc((size_t)cols * rows, sizeof *cells);
    if (!px || !cells) {
        free(px);
        free(cells);
        qvl_seterr(err, "blocks: out of memory for %dx%d cells", cols, rows);
        return -1;
    }
    qvl_picture_resize(rgb, w, h, px, pw, ph);
    for (int y = 0; y < rows; y++) {
        for (int x = 0; x < cols; x++) {
            qvl_block_cell *c = &cells[(size_t)y * cols + x];
            memcpy(c->top, px + ((size_t)(2 * y) * pw + x) * 3, 3);
            c->has_bot = 2 * y + 1 < ph;
            if (c->has_bot) memcpy(c->bot, px + ((size_t)(2 * y + 1) * pw + x) * 3, 3);
        }
    }
    free(px);
    out->cols = cols;
    out->rows = rows;
    out->cells = cells;
    return 0;
}

void qvl_blocks_free(qvl_blocks *b) {
    if (!b) return;
    free(b->cells);
    b->cells = NULL;
    b->cols = b->rows = 0;
}

/* --- the xterm 256-colour palette ---------------------------------------- */

/* Levels of the 6x6x6 cube, and of the grey ramp 232..255 (8, 18, ..., 238). */
static const int cube_level[6] = {0, 95, 135, 175, 215, 255};

static int nearest_cube_index(int v) {
    int best = 0;
    for (int i = 1; i < 6; i++)
        if (abs(cube_level[i] - v) < abs(cube_level[best] - v)) best = i;
    return best;
}

static int dist2(int r1, int g1, int b1, int r2, int g2, int b2) {
    return (r1 - r2) * (r1 - r2) + (g1 - g2) * (g1 - g2) + (b1 - b2) * (b1 - b2);
}

int qvl_xterm256_to_rgb(int index, unsigned char rgb[3]) {
    if (index >= 16 && index < 232) {
        int i = index - 16;
        rgb[0] = (unsigned char)cube_level[i / 36];
        rgb[1] = (unsigned char)cube_level[(i / 6) % 6];
        rgb[2] = (unsigned char)cube_level[i % 6];
        return 0;
    }
    if (index >= 232 && index < 256) {
        rgb[0] = rgb[1] = rgb[2] = (unsigned char)(8 + 10 * (index - 232));
        return 0;
    }
    return -1;
}

/* The cube is separable, so its nearest entry is the nearest level per
 * channel; the grey ramp is one-dimensional, so only the greys around the
 * mean need a look.  The closer of the two candidates wins. */
int qvl_rgb_to_xterm256(int r, int g, int b) {
    int ri = nearest_cube_index(r), gi = nearest_cube_index(g), bi = nearest_cube_index(b);
    int cube = 16 + 36 * ri + 6 * gi + bi;
    int cube_d = dist2(r, g, b, cube_level[ri], cube_level[gi], cube_level[bi]);

    int mean = (r + g + b) / 3;
    int grey = 232, grey_d = -1;
    for (int k = (mean - 8) / 10 - 1; k <= (mean - 8) / 10 + 1; k++) {
        if (k < 0 || k > 23) continue;
        int v = 8 + 10 * k, d = dist2(r, g, b, v, v, v);
        if (grey_d < 0 || d < grey_d) { grey_d = d; grey = 232 + k; }
    }
    return grey_d >= 0 && grey_d < cube_d ? grey : cube;
}

/* --- lines of escapes ------------------------------------------------------ */

typedef struct { char *buf; size_t len, cap; int oom; } strbuf;

static void sb_add(strbuf *s, const char *text) {
    size_t n = strlen(text);
    if (s->oom) return;
    if (s->len + n + 1 > s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 256;
        while (cap < s->len + n + 1) cap *= 2;
        char *nb = realloc(s->buf, cap);
        if (!nb) { s->oom = 1; return; }
        s->buf = nb;
        s->cap = cap;
    }
    memcpy(s->buf + s->len, text, n + 1);
    s->len += n;
}

/* The SGR parameters that select colour rgb as foreground (layer 38) or
 * background (layer 48). */
static void sgr_colour(char *out, size_t size, int layer, const unsigned char rgb[3], int truecolor) {
    if (truecolor)
        snprintf(out, size, "\x1b[%d;2;%d;%d;%dm", layer, rgb[0], rgb[1], rgb[2]);
    else
        snprintf(out, size, "\x1b[%d;5;%dm", layer, qvl_rgb_to_xterm256(rgb[0], rgb[1], rgb[2]));
}

static char *line_of(const qvl_blocks *b, int y, int truecolor) {
    strbuf s = {0};
    char fg_prev[48] = "", bg_prev[48] = "", code[48];
    for (int x = 0; x < b->cols; x++) {
        const qvl_block_cell *c = &b->cells[(size_t)y * b->cols + x];
        sgr_colour(code, sizeof code, 38, c->top, truecolor);
        if (strcmp(code, fg_prev)) { sb_add(&s, code); strcpy(fg_prev, code); }
        if (c->has_bot) sgr_colour(code, sizeof code, 48, c->bot, truecolor);
        else strcpy(code, "\x1b[49m");  /* default background under an odd last row */
        if (strcmp(code, bg_prev)) { sb_add(&s, code); strcpy(bg_prev, code); }
        sb_add(&s, UPPER_HALF_BLOCK);
    }
    sb_add(&s, "\x1b[0m");
    if (s.oom) { free(s.buf); return NULL; }
    return s.buf;
}

char **qvl_blocks_lines(const qvl_blocks *b, int truecolor, char *err) {
    char **lines = calloc(b->rows > 0 ? (size_t)b->rows : 1, sizeof *lines);
    if (!lines) { qvl_seterr(err, "blocks: out of memory"); return NULL; }
    for (int y = 0; y < b->rows; y++) {
        lines[y] = line_of(b, y, truecolor);
        if (!lines[y]) {
            qvl_blocks_lines_free(lines, y);
            qvl_seterr(err, "blocks: out of memory for line %d", y);
            return NULL;
        }
    }
    return lines;
}

void qvl_blocks_lines_free(char **lines, int n) {
    if (!lines) return;
    for (int i = 0; i < n; i++) free(lines[i]);
    free(lines);
}

char *qvl_image_placeholder(const char *path, int w, int h, char *buf, int size) {
    const char *name = path ? path : "";
    const char *slash = strrchr(name, '/');
    if (slash && slash[1]) name = slash + 1;
    if (!*name) name = "image";
    if (size > 0) snprintf(buf, (size_t)size, "[image: %s %dx%d]", name, w, h);
    return buf;
}
