/* sixel.h - an RGB picture as a sixel string, sized in terminal cells.
 *
 * The picture is scaled to fit at most max_cols x max_rows cells of
 * cell_w x cell_h pixels (and the terminal's sixel limit), keeping its aspect
 * ratio, then quantised and encoded by libsixel into a 7-bit DCS string
 * (ESC P ... q ... ESC \).  The result says which cells it covers: the TUI keeps
 * those cells out of curses' redraws and clears them by writing spaces, since
 * most terminals do not erase sixel pixels with ED/EL.  A sixel band is 6 pixels
 * tall, so `rows` counts the cells under the last band, padded or not.
 *
 * Drawing: move the cursor to the top-left cell, write `data`.  Most terminals
 * (sixel scrolling on) leave the cursor below the picture and scroll when the
 * picture touches the last screen row, so keep it off that row. */
#ifndef QVL_SIXEL_H
#define QVL_SIXEL_H

#include <stddef.h>

typedef struct {
    int cell_w, cell_h;     /* one cell in pixels (> 0) */
    int max_cols, max_rows; /* the box the picture may cover (> 0) */
    int max_px_w, max_px_h; /* the terminal's sixel limit (XTSMGRAPHICS); 0: none */
    int colors;             /* palette size, 2..256; 0: 256 */
    int upscale;            /* enlarge small pictures to fill the box */
} qvl_sixel_box;

typedef struct {
    char *data;             /* the sixel string, NUL-terminated */
    size_t len;
    int px_w, px_h;         /* the picture as encoded, in pixels */
    int cols, rows;         /* the cells it covers */
} qvl_sixel;

/* Sizes only: what qvl_sixel_encode would produce (px_*, cols, rows), no data. */
int qvl_sixel_fit(int w, int h, const qvl_sixel_box *box, qvl_sixel *out, char *err);

/* Encodes rgb (w x h, 3 bytes per pixel).  Returns 0, or -1 with err set (bad
 * sizes, bad box, libsixel failure); *out is then empty.  A large picture
 * takes ~0.1 s (1200x900 down to 800x600): keep the result per picture and
 * box rather than encoding on every redraw. */
int qvl_sixel_encode(const unsigned char *rgb, int w, int h, const qvl_sixel_box *box,
                     qvl_sixel *out, char *err);

void qvl_sixel_free(qvl_sixel *s);

#endif
