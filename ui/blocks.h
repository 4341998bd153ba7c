/* blocks.h - pictures as Unicode half blocks, for terminals without sixel.
 *
 * Each cell shows two pixels stacked: U+2580 UPPER HALF BLOCK with the top
 * pixel as foreground and the bottom pixel as background.  A cell being about
 * twice as tall as wide, the two halves are square pixels, so the picture is
 * fitted into max_cols x (2*max_rows) pixels keeping its aspect ratio.
 *
 * Two forms: the cells themselves (top and bottom RGB, for curses to draw with
 * its own colour pairs), and ready lines of SGR escapes + glyphs, in 24-bit
 * colour (`ESC[38;2;R;G;Bm`, `ESC[48;2;R;G;Bm`) or, when the terminal does not
 * announce truecolor, the nearest colour of the xterm 256 palette (6x6x6 cube
 * and grey ramp; the 16 system colours are skipped since themes change them).
 * Every line starts from the default colours and ends with `ESC[0m`, so any
 * line can be printed alone (a transcript scrolled half-way over a picture). */
#ifndef QVL_BLOCKS_H
#define QVL_BLOCKS_H

typedef struct {
    unsigned char top[3];   /* RGB of the upper pixel */
    unsigned char bot[3];   /* RGB of the lower pixel, when has_bot */
    int has_bot;            /* 0 on the last row of an odd-height picture */
} qvl_block_cell;

typedef struct {
    int cols, rows;
    qvl_block_cell *cells;  /* rows*cols, row by row */
} qvl_blocks;

/* The cell size (cols x rows) a w x h picture takes in a max_cols x max_rows
 * box; never enlarged unless upscale.  -1 with err set on bad sizes. */
int qvl_blocks_fit(int w, int h, int max_cols, int max_rows, int upscale,
                   int *cols, int *rows, char *err);

/* Scales rgb (w x h, 3 bytes per pixel) into cells.  0, or -1 with err set. */
int qvl_blocks_make(const unsigned char *rgb, int w, int h, int max_cols, int max_rows,
                    int upscale, qvl_blocks *out, char *err);
void qvl_blocks_free(qvl_blocks *b);

/* The cells as b->rows printable lines (NUL-terminated, malloc'd; free with
 * qvl_blocks_lines_free).  NULL with err set when out of memory. */
char **qvl_blocks_lines(const qvl_blocks *b, int truecolor, char *err);
void qvl_blocks_lines_free(char **text, int n);

/* Nearest xterm-256 colour (16..255) to an RGB colour. */
int qvl_rgb_to_xterm256(int r, int g, int b);
/* The RGB value of an xterm-256 colour 16..255 (-1 outside). */
int qvl_xterm256_to_rgb(int index, unsigned char rgb[3]);

/* The `--images none` form: "[image: NAME WxH]" with the file's base name,
 * written into buf (always NUL-terminated); returns buf. */
char *qvl_image_placeholder(const char *path, int w, int h, char *buf, int size);

#endif
