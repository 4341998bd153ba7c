/* tui.c - the full-screen chat (see tui.h).
 *
 * The screen, top to bottom: the transcript, a status line, the input area
 * (one to a few rows, growing with the message).  Everything is redrawn from
 * the model of the conversation each frame (curses sends only what changed):
 * the transcript is a list of entries (user message, attached picture, reply,
 * notice), each laid out at the current width into rows and cached until the
 * width or its text changes, so a resize is a plain relayout.
 *
 * Pictures are the tricky part.  Curses knows nothing about them, so the cells
 * under a picture stay blank in curses' idea of the screen (it then never
 * writes there) and the picture is written straight to the terminal after
 * curses' update: sixel data, or lines of half blocks with 24-bit or 256-colour
 * escapes.  Whenever the set of picture positions changes (scroll, resize, a
 * reply that pushes the transcript up) the old cells are first overwritten with
 * spaces - most terminals do not erase sixel pixels with ED/EL - and only then
 * does curses draw; the pictures go on last.  A picture only partly visible is
 * drawn partly: half-block lines are cut per row, sixel is re-encoded cropped.
 *
 * The model runs on the worker thread (src/worker.h).  The loop polls the
 * keyboard and the worker's event descriptor together, so typing and
 * scrolling go on while the model loads or generates. */
#define NCURSES_WIDECHAR 1
#include "tui.h"

#include <curses.h>
#include <errno.h>
#include <langinfo.h>
#include <locale.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include "blocks.h"
#include "commands.h"
#include "common.h"
#include "complete.h"
#include "image.h"
#include "markdown.h"
#include "picture.h"
#include "sixel.h"
#include "term.h"
#include "worker.h"

#define GUTTER 2                /* cells left of every transcript row: "> ", "* ", ... */
#define MAX_INPUT_ROWS 5
#define MAX_PICTURE_ROWS 16
#define MAX_PICTURE_COLS 80
#define DISPLAY_MAX_SIDE 1024   /* decoded pictures are kept at most this large */
#define HISTORY_MAX 200
#define CTRL_C_WINDOW 2.0       /* seconds in which a second Ctrl-C at idle quits */

/* Keys curses learns through define_key(). */
#define KEY_PASTE_BEGIN (KEY_MAX + 1)
#define KEY_PASTE_END (KEY_MAX + 2)
#define KEY_ALT_ENTER (KEY_MAX + 3)

enum { P_USER = 1, P_CODE, P_NOTICE, P_ERROR, P_STATUS, P_PICTURE };

typedef enum { E_USER, E_IMAGE, E_ASSISTANT, E_NOTICE, E_ERROR, E_HELP } entry_kind;

typedef struct {
    char *s;
    size_t len, cap;
} strbuf;

typedef struct {
    int id;
    entry_kind kind;
    strbuf text;                /* message, answer, notice */
    strbuf think;               /* reasoning of thinking models */
    char *footer;               /* "[stopped]", ... */
    /* a picture (E_IMAGE) */
    char *path;
    qvl_image img;              /* downscaled for display; rgb NULL when it failed */
    int orig_w, orig_h;
    /* layout at lay_width */
    int lay_width, dirty;
    md_lines lines;
    int think_rows;             /* the first lines are reasoning */
    int sep;                    /* 1: a blank row above */
    int pic_rows, pic_cols;
    int nrows;
    /* picture caches */
    char **block_lines;
    int nblock_lines;
    unsigned char *scaled;      /* sixel: the picture at its display size */
    int scaled_w, scaled_h;
    qvl_sixel sx;               /* sixel: the last crop encoded */
    int sx_r0, sx_r1, sx_valid;
} entry;

typedef struct {
    int id;                     /* entry id */
    int y, x, r0, r1, cols;     /* screen row of picture row r0; rows r0..r1-1 */
} pic_spot;

typedef struct {
    worker *w;
    qvl_images_mode mode;
    qvl_term_caps caps;
    /* transcript */
    entry **entries;
    int n, cap, next_id;
    entry *reply;               /* the reply being streamed, or NULL */
    int scroll_back;            /* rows above the bottom; 0 follows the end */
    int show_top_of;            /* entry id whose first row the next frame brings into view */
    int last_total;
    pic_spot *ov, *ov_new;
    int nov, nov_new, ov_cap;
    int force_clear;            /* next frame: clear pictures and repaint everything */
    /* input */
    strbuf in;
    size_t cur;                 /* byte offset of the cursor */
    char *history[HISTORY_MAX];
    int nhist, hist_pos;        /* hist_pos == nhist: the draft */
    char *draft;
    int pasting;
    char **attach;              /* image paths waiting for the next message */
    int nattach;
    /* model state for the status line */
    qvl_state state;
    double fraction;
    qvl_session_stats stats;
    int loaded, pending, want_stats;
    double ctrl_c_at;
    int quit, failed;
    char err[QVL_ERR_MAX];
} tui;

/* ------------------------------------------------------------ small helpers */

static int sb_append(strbuf *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = realloc(b->s, cap);
        if (!p) return -1;
        b->s = p;
        b->cap = cap;
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = 0;
    return 0;
}

static int sb_set(strbuf *b, const char *s) { b->len = 0; return sb_append(b, s, strlen(s)); }

static const char *sb_str(const strbuf *b) { return b->s ? b->s : ""; }

static int utf8_encode(uint32_t cp, char out[4]) {
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) { out[0] = (char)(0xC0 | cp >> 6); out[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | cp >> 12); out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | cp >> 18); out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Writes to the terminal behind curses' back (pictures, their erasure). */
static void tty_write(const char *s, size_t n) {
    while (n > 0) {
        ssize_t w = write(STDOUT_FILENO, s, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) { poll(NULL, 0, 1); continue; }
            return;
        }
        s += w;
        n -= (size_t)w;
    }
}

static void tty_puts(const char *s) { tty_write(s, strlen(s)); }

static void tty_move(int y, int x) {
    char buf[32];
    snprintf(buf, sizeof buf, "\033[%d;%dH", y + 1, x + 1);
    tty_puts(buf);
}

/* ------------------------------------------------------------ terminal restore */

/* Undoes what curses and we switched on; used at exit and from fatal signals,
 * so only async-signal-safe calls. */
static struct termios saved_termios;
static int have_saved_termios;
static const char reset_seq[] = "\033[?2004l\033[?1006l\033[?1000l\033[0m\033[?25h\033[?1049l\r\n";
static const int fatal_signals[] = { SIGHUP, SIGTERM, SIGQUIT, SIGABRT, SIGSEGV, SIGBUS, SIGFPE, SIGILL };
static struct sigaction old_actions[sizeof fatal_signals / sizeof *fatal_signals];

static void on_fatal_signal(int sig) {
    if (write(STDOUT_FILENO, reset_seq, sizeof reset_seq - 1) < 0) { /* nothing else to try */ }
    if (have_saved_termios) tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved_termios);
    signal(sig, SIG_DFL);
    raise(sig);
}

static void install_signal_handlers(void) {
    have_saved_termios = tcgetattr(STDIN_FILENO, &saved_termios) == 0;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_fatal_signal;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof fatal_signals / sizeof *fatal_signals; i++)
        sigaction(fatal_signals[i], &sa, &old_actions[i]);
}

static void remove_signal_handlers(void) {
    for (size_t i = 0; i < sizeof fatal_signals / sizeof *fatal_signals; i++)
        sigaction(fatal_signals[i], &old_actions[i], NULL);
}

/* Curses needs a UTF-8 locale to draw anything beyond ASCII. */
static void use_utf8_locale(void) {
    setlocale(LC_CTYPE, "");
    const char *cs = nl_langinfo(CODESET);
    if (!cs || strcmp(cs, "UTF-8")) setlocale(LC_CTYPE, "C.UTF-8");
}

/* From curses' <term.h>, which cannot be included here: its macros (lines,
 * columns, ...) clash with ordinary names, and "term.h" is ours. */
extern int setupterm(const char *term, int fd, int *errret);
struct term;
extern struct term *set_curterm(struct term *t);
extern int del_curterm(struct term *t);

int tui_available(void) {
    if (!isatty(STDIN_FILENO) || !isatty(STDOUT_FILENO)) return 0;
    const char *t = getenv("TERM");
    if (!t || !*t || !strcmp(t, "dumb")) return 0;
    int errret = 0;
    if (setupterm(NULL, STDOUT_FILENO, &errret) != OK) return 0;
    const char *cup = tigetstr("cup");
    int ok = cup && cup != (char *)-1;
    del_curterm(set_curterm(NULL));    /* newterm loads its own */
    return ok;
}

/* ------------------------------------------------------------ entries */

static void entry_free_pictures(entry *e) {
    qvl_blocks_lines_free(e->block_lines, e->nblock_lines);
    e->block_lines = NULL;
    e->nblock_lines = 0;
    free(e->scaled);
    e->scaled = NULL;
    qvl_sixel_free(&e->sx);
    e->sx_valid = 0;
}

static void entry_free(entry *e) {
    free(e->text.s);
    free(e->think.s);
    free(e->footer);
    free(e->path);
    image_free(&e->img);
    md_lines_free(&e->lines);
    entry_free_pictures(e);
    free(e);
}

static entry *add_entry(tui *T, entry_kind kind, const char *text) {
    if (T->n == T->cap) {
        int cap = T->cap ? T->cap * 2 : 32;
        entry **p = realloc(T->entries, (size_t)cap * sizeof *p);
        if (!p) return NULL;
        T->entries = p;
        T->cap = cap;
    }
    entry *e = calloc(1, sizeof *e);
    if (!e) return NULL;
    e->id = ++T->next_id;
    e->kind = kind;
    e->dirty = 1;
    if (text) sb_set(&e->text, text);
    T->entries[T->n++] = e;
    return e;
}

static void notice(tui *T, entry_kind kind, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void notice(tui *T, entry_kind kind, const char *fmt, ...) {
    char buf[QVL_ERR_MAX + 256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    add_entry(T, kind, buf);
}

static void clear_transcript(tui *T) {
    for (int i = 0; i < T->n; i++) entry_free(T->entries[i]);
    T->n = 0;
    T->reply = NULL;
    T->scroll_back = 0;
}

/* Decodes a picture for display, kept at most DISPLAY_MAX_SIDE on a side. */
static int load_picture(entry *e, const char *path, char *err) {
    qvl_image full = { 0 };
    if (image_load_file(path, QVL_ALPHA_WHITE, &full, err) != 0) return -1;
    e->orig_w = full.width;
    e->orig_h = full.height;
    int w = full.width, h = full.height;
    if (qvl_picture_fit(w, h, DISPLAY_MAX_SIDE, DISPLAY_MAX_SIDE, 0, &w, &h) == 0 &&
        (w != full.width || h != full.height)) {
        unsigned char *small = malloc((size_t)w * h * 3);
        if (small) {
            qvl_picture_resize(full.rgb, full.width, full.height, small, w, h);
            image_free(&full);
            full.rgb = small;
            full.width = w;
            full.height = h;
        }
    }
    e->img = full;
    return 0;
}

/* ------------------------------------------------------------ layout */

static int transcript_rows(void) { return LINES - 2 > 1 ? LINES - 2 : 1; }

static int picture_box_rows(void) {
    int r = transcript_rows() - 1;
    return r < 1 ? 1 : r > MAX_PICTURE_ROWS ? MAX_PICTURE_ROWS : r;
}

static int picture_box_cols(int width) {
    return width > MAX_PICTURE_COLS ? MAX_PICTURE_COLS : width < 1 ? 1 : width;
}

static qvl_sixel_box sixel_box(const tui *T, int cols, int rows) {
    qvl_sixel_box b = { .cell_w = T->caps.cell_w, .cell_h = T->caps.cell_h,
                        .max_cols = cols, .max_rows = rows,
                        .max_px_w = T->caps.sixel_max_w, .max_px_h = T->caps.sixel_max_h };
    return b;
}

/* Picture size in cells at this text width, by the display mode. */
static void fit_picture(const tui *T, entry *e, int width) {
    e->pic_rows = e->pic_cols = 0;
    if (!e->img.rgb || T->mode == QVL_IMAGES_NONE) return;
    int cols = picture_box_cols(width), rows = picture_box_rows();
    char err[QVL_ERR_MAX];
    if (T->mode == QVL_IMAGES_SIXEL) {
        qvl_sixel fit;
        qvl_sixel_box box = sixel_box(T, cols, rows);
        if (qvl_sixel_fit(e->img.width, e->img.height, &box, &fit, err) == 0) {
            e->pic_rows = fit.rows;
            e->pic_cols = fit.cols;
        }
    } else if (qvl_blocks_fit(e->img.width, e->img.height, cols, rows, 0, &e->pic_cols, &e->pic_rows, err) != 0) {
        e->pic_rows = e->pic_cols = 0;
    }
}

static int entry_group(entry_kind k) {
    return k == E_USER || k == E_IMAGE ? 0 : k == E_ASSISTANT ? 1 : 2;
}

static void layout_entry(tui *T, int i, int width) {
    entry *e = T->entries[i];
    if (!e->dirty && e->lay_width == width) return;
    if (e->lay_width != width) entry_free_pictures(e);
    md_lines_free(&e->lines);
    int tw = width - GUTTER > 1 ? width - GUTTER : 1;
    e->sep = i > 0 && entry_group(T->entries[i - 1]->kind) != entry_group(e->kind);
    switch (e->kind) {
    case E_ASSISTANT:
        md_layout(sb_str(&e->think), tw, 0, MD_DIM, &e->lines);
        e->think_rows = e->lines.n;
        md_layout(sb_str(&e->text), tw, 1, 0, &e->lines);
        break;
    case E_IMAGE: {
        char cap[600];
        qvl_image_placeholder(e->path, e->orig_w, e->orig_h, cap, sizeof cap);
        md_layout(cap, tw, 0, MD_DIM, &e->lines);
        break;
    }
    default:
        md_layout(sb_str(&e->text), tw, 0, 0, &e->lines);
    }
    if (e->footer) md_layout(e->footer, tw, 0, MD_DIM, &e->lines);
    if (e->kind == E_IMAGE) fit_picture(T, e, tw);
    e->nrows = e->sep + e->pic_rows + e->lines.n;
    e->lay_width = width;
    e->dirty = 0;
}

/* ------------------------------------------------------------ drawing text */

static attr_t style_attr(int style, attr_t base) {
    attr_t a = base;
    if (style & MD_BOLD) a |= A_BOLD;
    if (style & (MD_CODE | MD_BLOCK | MD_FENCE)) a = (a & ~A_COLOR) | COLOR_PAIR(P_CODE);
    if (style & (MD_DIM | MD_FENCE)) a |= A_DIM;
    return a;
}

/* Draws one laid-out line from column x, a run of equal style at a time. */
static void draw_md_line(int y, int x, const md_line *l, attr_t base) {
    move(y, x);
    for (int i = 0; i < l->len;) {
        int j = i;
        while (j < l->len && l->style[j] == l->style[i]) j++;
        attrset(style_attr(l->style[i], base));
        addnstr(l->text + i, j - i);
        i = j;
    }
    attrset(A_NORMAL);
}

static attr_t entry_attr(const entry *e) {
    switch (e->kind) {
    case E_USER: return COLOR_PAIR(P_USER) | A_BOLD;
    case E_NOTICE: return COLOR_PAIR(P_NOTICE);
    case E_ERROR: return COLOR_PAIR(P_ERROR) | A_BOLD;
    default: return A_NORMAL;
    }
}

static const char *gutter_mark(const entry *e, int line) {
    switch (e->kind) {
    case E_USER: return line == 0 ? "> " : "  ";
    case E_NOTICE: return line == 0 ? "* " : "  ";
    case E_ERROR: return line == 0 ? "! " : "  ";
    case E_ASSISTANT: return line < e->think_rows ? "\xE2\x94\x8A " : "  "; /* dotted bar: reasoning */
    default: return "  ";
    }
}

static void add_overlay(tui *T, const entry *e, int y, int r) {
    if (T->nov_new > 0) {
        pic_spot *o = &T->ov_new[T->nov_new - 1];
        if (o->id == e->id && o->r1 == r && o->y + (o->r1 - o->r0) == y) { o->r1++; return; }
    }
    if (T->nov_new == T->ov_cap) {
        int cap = T->ov_cap ? T->ov_cap * 2 : 8;
        pic_spot *a = realloc(T->ov, (size_t)cap * sizeof *a), *b;
        if (!a) return;
        T->ov = a;
        b = realloc(T->ov_new, (size_t)cap * sizeof *b);
        if (!b) return;
        T->ov_new = b;
        T->ov_cap = cap;
    }
    T->ov_new[T->nov_new++] = (pic_spot){ e->id, y, GUTTER, r, r + 1, e->pic_cols };
}

/* Row r of entry e at screen row y. */
static void draw_entry_row(tui *T, entry *e, int r, int y) {
    if (r < e->sep) return;
    r -= e->sep;
    if (r < e->pic_rows) { add_overlay(T, e, y, r); return; }
    int line = r - e->pic_rows;
    if (line >= e->lines.n) return;
    attr_t base = entry_attr(e);
    attrset(base | (e->kind == E_ASSISTANT && line < e->think_rows ? A_DIM : 0));
    mvaddstr(y, 0, gutter_mark(e, line));
    draw_md_line(y, GUTTER, &e->lines.lines[line], base);
}

static int total_rows(tui *T, int width) {
    int total = 0;
    for (int i = 0; i < T->n; i++) {
        layout_entry(T, i, width);
        total += T->entries[i]->nrows;
    }
    return total;
}

static void draw_transcript(tui *T, int height) {
    int width = COLS;
    int total = total_rows(T, width);
    if (T->scroll_back > 0 && total > T->last_total) T->scroll_back += total - T->last_total; /* hold the view */
    T->last_total = total;
    int max_back = total > height ? total - height : 0;
    if (T->scroll_back > max_back) T->scroll_back = max_back;
    if (T->scroll_back < 0) T->scroll_back = 0;
    if (T->show_top_of) {                           /* long help: start reading at its top */
        int start = 0;
        for (int i = 0; i < T->n && T->entries[i]->id != T->show_top_of; i++) start += T->entries[i]->nrows;
        if (total - start > height) T->scroll_back = total - start - height;
        T->show_top_of = 0;
    }
    int top = total - height - T->scroll_back;
    if (top < 0) top = 0;
    T->nov_new = 0;
    int row = 0;
    for (int i = 0; i < T->n && row < top + height; i++) {
        entry *e = T->entries[i];
        for (int r = 0; r < e->nrows; r++, row++)
            if (row >= top && row < top + height) draw_entry_row(T, e, r, row - top);
    }
}

/* ------------------------------------------------------------ input area */

/* Where each input byte lands when wrapped to `width` cells (first row after
 * the "> " prompt): fills the cursor's row/col and returns the row count. */
static int input_layout(const tui *T, int width, int *cur_row, int *cur_col) {
    const char *s = sb_str(&T->in);
    int len = (int)T->in.len, row = 0, col = 0;
    *cur_row = *cur_col = 0;
    for (int i = 0; i <= len;) {
        if ((size_t)i == T->cur) { *cur_row = row; *cur_col = col; }
        if (i == len) break;
        uint32_t cp;
        int n = md_utf8_decode(s + i, len - i, &cp);
        if (cp == '\n') { row++; col = 0; i += n; continue; }
        int w = md_char_width(cp);
        if (col + w > width && col > 0) { row++; col = 0; }
        col += w;
        i += n;
    }
    if (*cur_col >= width) { (*cur_row)++; *cur_col = 0; }
    return (row > *cur_row ? row : *cur_row) + 1;
}

static void draw_input(tui *T, int y0, int rows, int *cy, int *cx) {
    int width = COLS - GUTTER > 1 ? COLS - GUTTER : 1;
    int cur_row, cur_col;
    int total = input_layout(T, width, &cur_row, &cur_col);
    int first = cur_row - rows + 1 > 0 ? cur_row - rows + 1 : 0;  /* keep the cursor visible */
    if (first > total - rows && total >= rows) first = total - rows > 0 ? total - rows : 0;
    if (first > cur_row) first = cur_row;
    const char *s = sb_str(&T->in);
    int len = (int)T->in.len, row = 0, col = 0;
    attrset(COLOR_PAIR(P_USER) | A_BOLD);
    for (int r = 0; r < rows; r++) mvaddstr(y0 + r, 0, first + r == 0 ? "> " : "  ");
    attrset(A_NORMAL);
    for (int i = 0; i < len;) {
        uint32_t cp;
        int n = md_utf8_decode(s + i, len - i, &cp);
        if (cp == '\n') { row++; col = 0; i += n; continue; }
        int w = md_char_width(cp);
        if (col + w > width && col > 0) { row++; col = 0; }
        if (row >= first && row < first + rows && cp >= 0x20 && w > 0) mvaddnstr(y0 + row - first, GUTTER + col, s + i, n);
        col += w;
        i += n;
    }
    *cy = y0 + cur_row - first;
    *cx = GUTTER + cur_col;
}

static int input_rows_wanted(const tui *T) {
    int width = COLS - GUTTER > 1 ? COLS - GUTTER : 1;
    int cr, cc;
    int rows = input_layout(T, width, &cr, &cc);
    int max = (LINES - 2) / 3;
    if (max > MAX_INPUT_ROWS) max = MAX_INPUT_ROWS;
    if (max < 1) max = 1;
    return rows < 1 ? 1 : rows > max ? max : rows;
}

/* ------------------------------------------------------------ status line */

static void draw_status(tui *T, int y) {
    char st[64], buf[512];
    if (T->state == QVL_STATE_LOADING || (T->state == QVL_STATE_PREFILL && T->fraction > 0 && T->fraction < 1))
        snprintf(st, sizeof st, "%s %d%%", worker_state_name(T->state), (int)(T->fraction * 100 + 0.5));
    else
        snprintf(st, sizeof st, "%s", T->failed ? "load failed" : worker_state_name(T->state));
    int n = snprintf(buf, sizeof buf, " %s | %s", T->loaded ? T->stats.model_name : "qvl", st);
    if (T->loaded) n += snprintf(buf + n, sizeof buf - (size_t)n, " | ctx %d/%d", T->stats.ctx_used, T->stats.ctx_total);
    if (T->stats.last_decode_tok_s > 0)
        n += snprintf(buf + n, sizeof buf - (size_t)n, " | %.1f tok/s", T->stats.last_decode_tok_s);
    if (T->nattach) n += snprintf(buf + n, sizeof buf - (size_t)n, " | +%d image%s", T->nattach, T->nattach > 1 ? "s" : "");
    if (T->scroll_back) n += snprintf(buf + n, sizeof buf - (size_t)n, " | scrolled");
    if (T->ctrl_c_at > 0 && qvl_now() - T->ctrl_c_at < CTRL_C_WINDOW)
        n += snprintf(buf + n, sizeof buf - (size_t)n, " | Ctrl-C again to quit");
    else if (n + 10 < COLS)
        n += snprintf(buf + n, sizeof buf - (size_t)n, " | F1 help");
    attrset(COLOR_PAIR(P_STATUS) | A_REVERSE);
    move(y, 0);
    for (int x = 0; x < COLS; x++) addch(' ');
    mvaddnstr(y, 0, buf, COLS);  /* ASCII, except the model name, which fits */
    attrset(A_NORMAL);
}

/* ------------------------------------------------------------ pictures */

static entry *entry_by_id(tui *T, int id) {
    for (int i = T->n - 1; i >= 0; i--)
        if (T->entries[i]->id == id) return T->entries[i];
    return NULL;
}

static void erase_overlay(const pic_spot *o) {
    char spaces[512];
    int cols = o->cols < (int)sizeof spaces ? o->cols : (int)sizeof spaces;
    if (o->x + cols > COLS) cols = COLS - o->x;
    if (cols <= 0) return;
    memset(spaces, ' ', (size_t)cols);
    for (int r = 0; r < o->r1 - o->r0 && o->y + r < LINES; r++) {
        tty_move(o->y + r, o->x);
        tty_write(spaces, (size_t)cols);
    }
}

static void draw_blocks_overlay(tui *T, entry *e, const pic_spot *o) {
    char err[QVL_ERR_MAX];
    if (!e->block_lines) {
        qvl_blocks b;
        if (qvl_blocks_make(e->img.rgb, e->img.width, e->img.height, e->pic_cols, e->pic_rows, 0, &b, err) != 0) return;
        e->block_lines = qvl_blocks_lines(&b, T->caps.truecolor, err);
        e->nblock_lines = e->block_lines ? b.rows : 0;
        qvl_blocks_free(&b);
    }
    for (int r = o->r0; r < o->r1 && r < e->nblock_lines; r++) {
        tty_move(o->y + r - o->r0, o->x);
        tty_puts(e->block_lines[r]);
    }
}

/* Sixel: scaled once per width, then cropped to the visible rows and encoded. */
static void draw_sixel_overlay(tui *T, entry *e, const pic_spot *o) {
    char err[QVL_ERR_MAX];
    int ch = T->caps.cell_h;
    if (!e->scaled) {
        qvl_sixel fit;
        qvl_sixel_box box = sixel_box(T, e->pic_cols, e->pic_rows);
        if (qvl_sixel_fit(e->img.width, e->img.height, &box, &fit, err) != 0) return;
        e->scaled = malloc((size_t)fit.px_w * fit.px_h * 3);
        if (!e->scaled) return;
        qvl_picture_resize(e->img.rgb, e->img.width, e->img.height, e->scaled, fit.px_w, fit.px_h);
        e->scaled_w = fit.px_w;
        e->scaled_h = fit.px_h;
        e->sx_valid = 0;
    }
    if (!e->sx_valid || e->sx_r0 != o->r0 || e->sx_r1 != o->r1) {
        qvl_sixel_free(&e->sx);
        e->sx_valid = 0;
        int y0 = o->r0 * ch, y1 = o->r1 * ch < e->scaled_h ? o->r1 * ch : e->scaled_h;
        if (y1 <= y0) return;
        qvl_sixel_box box = sixel_box(T, e->pic_cols, o->r1 - o->r0);
        const unsigned char *crop = e->scaled + (size_t)y0 * e->scaled_w * 3;
        if (qvl_sixel_encode(crop, e->scaled_w, y1 - y0, &box, &e->sx, err) != 0) return;
        e->sx_valid = 1;
        e->sx_r0 = o->r0;
        e->sx_r1 = o->r1;
    }
    tty_move(o->y, o->x);
    tty_write(e->sx.data, e->sx.len);
}

static int overlays_changed(const tui *T) {
    if (T->nov != T->nov_new) return 1;
    return T->nov > 0 && memcmp(T->ov, T->ov_new, (size_t)T->nov * sizeof *T->ov) != 0;
}

/* ------------------------------------------------------------ a frame */

static void draw(tui *T) {
    erase();
    if (LINES < 3 || COLS < 8) {
        mvaddnstr(0, 0, "terminal too small", COLS);
        T->nov_new = 0;
    } else {
        int in_rows = input_rows_wanted(T);
        int height = LINES - in_rows - 1;
        draw_transcript(T, height);
        draw_status(T, height);
        int cy, cx;
        draw_input(T, height + 1, in_rows, &cy, &cx);
        move(cy, cx < COLS ? cx : COLS - 1);
    }
    int changed = T->force_clear || overlays_changed(T);
    if (changed) {
        fflush(stdout);
        tty_puts("\0337\033[0m");                   /* DECSC: curses' cursor and attributes */
        for (int i = 0; i < T->nov; i++) erase_overlay(&T->ov[i]);
        tty_puts("\0338");
    }
    if (T->force_clear) clearok(curscr, TRUE);
    wnoutrefresh(stdscr);
    doupdate();
    if (changed) {
        fflush(stdout);
        tty_puts("\0337");
        for (int i = 0; i < T->nov_new; i++) {
            const pic_spot *o = &T->ov_new[i];
            entry *e = entry_by_id(T, o->id);
            if (!e || !e->img.rgb) continue;
            if (T->mode == QVL_IMAGES_SIXEL) draw_sixel_overlay(T, e, o);
            else draw_blocks_overlay(T, e, o);
        }
        tty_puts("\033[0m\0338");                   /* DECRC: back where curses left it */
    }
    pic_spot *t = T->ov;                             /* the new set becomes the drawn set */
    T->ov = T->ov_new;
    T->ov_new = t;
    T->nov = T->nov_new;
    T->force_clear = 0;
}

/* ------------------------------------------------------------ commands */

static const char keys_help[] =
    "Keys:\n"
    "  Enter              send\n"
    "  Ctrl-J, Alt-Enter  new line\n"
    "  Up/Down            earlier inputs\n"
    "  PgUp/PgDn, wheel   scroll\n"
    "  Esc, Ctrl-C        stop the reply\n"
    "  Ctrl-C twice, Ctrl-D, /quit  leave\n"
    "  Tab                complete /image paths\n"
    "  Ctrl-L             redraw\n"
    "Pasting or dropping an image file's path attaches it.";

static void show_help(tui *T) {
    char buf[4096];
    snprintf(buf, sizeof buf, "%s\n%s", keys_help, command_help());
    size_t n = strlen(buf);
    while (n && buf[n - 1] == '\n') buf[--n] = 0;
    entry *e = add_entry(T, E_HELP, buf);
    T->scroll_back = 0;
    if (e) T->show_top_of = e->id;
}

static void attach_image(tui *T, const char *path) {
    char err[QVL_ERR_MAX];
    entry *e = add_entry(T, E_IMAGE, NULL);
    if (!e) return;
    e->path = strdup(path);
    if (load_picture(e, path, err) != 0) {
        T->n--;
        entry_free(e);
        notice(T, E_ERROR, "%s", err);
        return;
    }
    char **a = realloc(T->attach, (size_t)(T->nattach + 1) * sizeof *a);
    if (!a) return;
    T->attach = a;
    T->attach[T->nattach++] = strdup(path);
    T->scroll_back = 0;
}

static void free_attachments(tui *T) {
    for (int i = 0; i < T->nattach; i++) free(T->attach[i]);
    free(T->attach);
    T->attach = NULL;
    T->nattach = 0;
}

static void send_message(tui *T, const char *text) {
    int np = T->nattach + 1;
    qvl_part *parts = calloc((size_t)np, sizeof *parts);
    if (!parts) return;
    for (int i = 0; i < T->nattach; i++) parts[i].image_path = T->attach[i];
    parts[T->nattach].text = text;
    if (worker_send(T->w, parts, np) == 0) {
        T->pending++;
        add_entry(T, E_USER, text);
    } else {
        notice(T, E_ERROR, "out of memory: message not sent");
    }
    free(parts);
    free_attachments(T);
    T->scroll_back = 0;
}

static void run_command(tui *T, qvl_command *c) {
    switch (c->kind) {
    case CMD_IMAGE: attach_image(T, c->arg); break;
    case CMD_SYSTEM: worker_set_system(T->w, c->arg ? c->arg : ""); break;
    case CMD_CLEAR: worker_clear(T->w); free_attachments(T); break;
    case CMD_SET: worker_set_param(T->w, c->arg, c->value); break;
    case CMD_SAVE: worker_save(T->w, c->arg); break;
    case CMD_LOAD: worker_load(T->w, c->arg); break;
    case CMD_STATS: T->want_stats = 1; worker_request_stats(T->w); break;
    case CMD_HELP: show_help(T); break;
    case CMD_QUIT: T->quit = 1; break;
    }
}

static void remember(tui *T, const char *line) {
    if (!*line || (T->nhist && !strcmp(T->history[T->nhist - 1], line))) return;
    if (T->nhist == HISTORY_MAX) {
        free(T->history[0]);
        memmove(T->history, T->history + 1, (HISTORY_MAX - 1) * sizeof *T->history);
        T->nhist--;
    }
    T->history[T->nhist++] = strdup(line);
}

static void submit(tui *T) {
    char *line = strdup(sb_str(&T->in));
    if (!line) return;
    sb_set(&T->in, "");
    T->cur = 0;
    T->scroll_back = 0;                             /* Enter brings the end back into view */
    T->show_top_of = 0;
    T->hist_pos = T->nhist + (*line ? 1 : 0);
    free(T->draft);
    T->draft = NULL;
    if (!*line && !T->nattach) { free(line); return; }
    remember(T, line);
    T->hist_pos = T->nhist;
    char err[QVL_ERR_MAX] = "";
    qvl_command cmd;
    char *pasted;
    int rc;
    if ((pasted = pasted_image_path(line)) != NULL) { attach_image(T, pasted); free(pasted); } /* before /commands: paths start with '/' */
    else if ((rc = command_parse(line, &cmd, err)) < 0) notice(T, E_ERROR, "%s", err);
    else if (rc > 0) { run_command(T, &cmd); command_free(&cmd); }
    else send_message(T, command_message(line));
    free(line);
}

/* ------------------------------------------------------------ editing */

static void insert_text(tui *T, const char *s, size_t n) {
    strbuf *b = &T->in;
    if (sb_append(b, s, n)) return;                 /* grow, then move into place */
    memmove(b->s + T->cur + n, b->s + T->cur, b->len - n - T->cur);
    memcpy(b->s + T->cur, s, n);
    T->cur += n;
}

static size_t prev_char(const tui *T, size_t at) {
    while (at > 0 && (T->in.s[--at] & 0xC0) == 0x80) {}
    return at;
}

static size_t next_char(const tui *T, size_t at) {
    if (at >= T->in.len) return T->in.len;
    at++;
    while (at < T->in.len && (T->in.s[at] & 0xC0) == 0x80) at++;
    return at;
}

static void delete_range(tui *T, size_t from, size_t to) {
    if (to <= from) return;
    memmove(T->in.s + from, T->in.s + to, T->in.len - to + 1);
    T->in.len -= to - from;
    T->cur = from;
}

static void history_move(tui *T, int dir) {
    int pos = T->hist_pos + dir;
    if (pos < 0 || pos > T->nhist) return;
    if (T->hist_pos == T->nhist) { free(T->draft); T->draft = strdup(sb_str(&T->in)); }
    T->hist_pos = pos;
    sb_set(&T->in, pos == T->nhist ? (T->draft ? T->draft : "") : T->history[pos]);
    T->cur = T->in.len;
}

static void complete_input(tui *T) {
    const char *s = sb_str(&T->in);
    if (strncmp(s, "/image ", 7) || T->cur != T->in.len) return;
    const char *prefix = s + 7;
    while (*prefix == ' ') prefix++;
    path_completion c;
    if (complete_path(prefix, &c) != 0) { beep(); return; }
    size_t off = (size_t)(prefix - s);
    if (strlen(c.completed) > strlen(prefix)) {
        T->in.len = off;
        T->in.s[off] = 0;
        sb_append(&T->in, c.completed, strlen(c.completed));
        T->cur = T->in.len;
    } else if (c.nmatches > 1) {                    /* nothing more to add: list the choices */
        strbuf list = { 0 };
        for (int i = 0; i < c.nmatches && i < 40; i++) {
            sb_append(&list, c.matches[i], strlen(c.matches[i]));
            sb_append(&list, "  ", 2);
        }
        if (c.nmatches > 40) sb_append(&list, "...", 3);
        add_entry(T, E_NOTICE, sb_str(&list));
        free(list.s);
    }
    path_completion_free(&c);
}

/* ------------------------------------------------------------ keys */

static int busy(const tui *T) { return T->pending > 0; }

static void stop_or_quit(tui *T, int is_ctrl_c) {
    if (busy(T)) { worker_cancel(T->w); T->ctrl_c_at = 0; return; }
    if (!is_ctrl_c) return;
    double now = qvl_now();
    if (T->ctrl_c_at > 0 && now - T->ctrl_c_at < CTRL_C_WINDOW) T->quit = 1;
    else T->ctrl_c_at = now;
}

static void scroll_by(tui *T, int rows) {
    T->scroll_back += rows;
    if (T->scroll_back < 0) T->scroll_back = 0;       /* the top is clamped when drawing */
}

static void on_mouse(tui *T) {
    MEVENT m;
    if (getmouse(&m) != OK) return;
    if (m.bstate & BUTTON4_PRESSED) scroll_by(T, 3);
#ifdef BUTTON5_PRESSED
    if (m.bstate & BUTTON5_PRESSED) scroll_by(T, -3);
#endif
}

static void on_paste_end(tui *T, size_t paste_start) {
    T->pasting = 0;
    char *text = strndup(T->in.s ? T->in.s + paste_start : "", T->cur - paste_start);
    char *path = text ? pasted_image_path(text) : NULL;
    if (path) {                                      /* a dropped picture: attach it */
        delete_range(T, paste_start, T->cur);
        attach_image(T, path);
        free(path);
    }
    free(text);
}

static void on_key(tui *T, wint_t ch, int is_key) {
    static size_t paste_start;
    int page = LINES - 4 > 1 ? LINES - 4 : 1;
    if (is_key) {
        switch (ch) {
        case KEY_ENTER: submit(T); break;
        case KEY_ALT_ENTER: insert_text(T, "\n", 1); break;
        case KEY_PASTE_BEGIN: T->pasting = 1; paste_start = T->cur; break;
        case KEY_PASTE_END: if (T->pasting) on_paste_end(T, paste_start); break;
        case KEY_BACKSPACE: delete_range(T, prev_char(T, T->cur), T->cur); break;
        case KEY_DC: delete_range(T, T->cur, next_char(T, T->cur)); break;
        case KEY_LEFT: T->cur = prev_char(T, T->cur); break;
        case KEY_RIGHT: T->cur = next_char(T, T->cur); break;
        case KEY_HOME: T->cur = 0; break;
        case KEY_END: T->cur = T->in.len; break;
        case KEY_UP: history_move(T, -1); break;
        case KEY_DOWN: history_move(T, 1); break;
        case KEY_PPAGE: scroll_by(T, page); break;
        case KEY_NPAGE: scroll_by(T, -page); break;
        case KEY_MOUSE: on_mouse(T); break;
        case KEY_RESIZE: T->force_clear = 1; break;
        default: if (ch == (wint_t)KEY_F(1)) show_help(T); break;
        }
        return;
    }
    if (T->pasting && (ch == '\r' || ch == '\n')) { insert_text(T, "\n", 1); return; }
    switch (ch) {
    case '\r': submit(T); return;
    case '\n': insert_text(T, "\n", 1); return;       /* Ctrl-J */
    case 3: stop_or_quit(T, 1); return;               /* Ctrl-C */
    case 27: stop_or_quit(T, 0); return;              /* Esc */
    case 4:                                           /* Ctrl-D */
        if (T->in.len == 0) T->quit = 1;
        else delete_range(T, T->cur, next_char(T, T->cur));
        return;
    case 1: T->cur = 0; return;                       /* Ctrl-A */
    case 5: T->cur = T->in.len; return;               /* Ctrl-E */
    case 11: T->in.len = T->cur; if (T->in.s) T->in.s[T->cur] = 0; return; /* Ctrl-K */
    case 21: delete_range(T, 0, T->cur); return;      /* Ctrl-U */
    case 23: {                                        /* Ctrl-W: the word before the cursor */
        size_t at = T->cur;
        while (at > 0 && T->in.s[at - 1] == ' ') at--;
        while (at > 0 && T->in.s[at - 1] != ' ') at--;
        delete_range(T, at, T->cur);
        return;
    }
    case 12: T->force_clear = 1; return;              /* Ctrl-L */
    case 9: complete_input(T); return;                /* Tab */
    case 8: case 127: delete_range(T, prev_char(T, T->cur), T->cur); return;
    }
    if (ch < 0x20) return;
    char u[4];
    insert_text(T, u, (size_t)utf8_encode((uint32_t)ch, u));
    T->ctrl_c_at = 0;
}

static void read_keys(tui *T) {
    wint_t ch;
    int rc;
    while ((rc = get_wch(&ch)) != ERR) on_key(T, ch, rc == KEY_CODE_YES);
}

/* ------------------------------------------------------------ worker events */

static void stats_notice(tui *T) {
    const qvl_session_stats *s = &T->stats;
    notice(T, E_NOTICE, "%s (%s): context %d/%d tokens, %d turn%s, last reply %.1f tok/s", s->model_name,
           s->precision, s->ctx_used, s->ctx_total, s->turns, s->turns == 1 ? "" : "s", s->last_decode_tok_s);
}

static void on_done(tui *T, const worker_event *ev) {
    if (T->pending > 0) T->pending--;
    T->stats = ev->stats;
    const char *why = ev->info.finish_reason ? ev->info.finish_reason : "stop";
    const char *footer = !strcmp(why, "cancelled") ? "[stopped]" : !strcmp(why, "length") ? "[length limit]" : NULL;
    if (footer) {
        if (!T->reply) T->reply = add_entry(T, E_ASSISTANT, NULL);
        if (T->reply) { T->reply->footer = strdup(footer); T->reply->dirty = 1; }
    }
    T->reply = NULL;
}

static void on_message(tui *T, const worker_event *ev) {
    if (ev->image) {
        entry *e = add_entry(T, E_IMAGE, NULL);
        char err[QVL_ERR_MAX];
        if (e) { e->path = strdup(ev->image); if (load_picture(e, ev->image, err) != 0) notice(T, E_ERROR, "%s", err); }
    }
    if (!strcmp(ev->role, "user")) add_entry(T, E_USER, ev->text ? ev->text : "");
    else if (!strcmp(ev->role, "assistant")) add_entry(T, E_ASSISTANT, ev->text ? ev->text : "");
    else notice(T, E_NOTICE, "system: %s", ev->text ? ev->text : "");
}

static void on_event(tui *T, worker_event *ev) {
    switch (ev->kind) {
    case WEV_STATE: T->state = ev->state; T->fraction = ev->fraction; break;
    case WEV_READY: T->loaded = 1; T->stats = ev->stats; break;
    case WEV_LOAD_FAILED:
        snprintf(T->err, sizeof T->err, "%s", ev->text ? ev->text : "the model could not be loaded");
        T->failed = 1;
        T->quit = 1;
        break;
    case WEV_TOKEN:
        if (!T->reply) T->reply = add_entry(T, E_ASSISTANT, NULL);
        if (T->reply && ev->text) {
            strbuf *b = ev->reasoning ? &T->reply->think : &T->reply->text;
            sb_append(b, ev->text, strlen(ev->text));
            T->reply->dirty = 1;
        }
        break;
    case WEV_DONE: on_done(T, ev); break;
    case WEV_SEND_FAILED:
        if (T->pending > 0) T->pending--;
        notice(T, E_ERROR, "%s", ev->text ? ev->text : "not sent");
        break;
    case WEV_DROPPED:
        if (T->pending > 0) T->pending--;
        notice(T, E_NOTICE, "a queued message was not sent");
        break;
    case WEV_NOTICE: notice(T, E_NOTICE, "%s", ev->text ? ev->text : ""); break;
    case WEV_ERROR: notice(T, E_ERROR, "%s", ev->text ? ev->text : "error"); break;
    case WEV_CLEARED: clear_transcript(T); T->force_clear = 1; notice(T, E_NOTICE, "new conversation"); break;
    case WEV_MESSAGE: on_message(T, ev); break;
    case WEV_STATS:
        T->stats = ev->stats;
        if (T->want_stats) { stats_notice(T); T->want_stats = 0; }
        break;
    }
}

static void read_events(tui *T) {
    worker_event ev;
    while (worker_next_event(T->w, &ev)) {
        on_event(T, &ev);
        worker_event_free(&ev);
    }
}

/* ------------------------------------------------------------ setup */

static void setup_colors(void) {
    if (!has_colors()) return;
    start_color();
    use_default_colors();
    init_pair(P_USER, COLOR_CYAN, -1);
    init_pair(P_CODE, COLOR_GREEN, -1);
    init_pair(P_NOTICE, COLOR_YELLOW, -1);
    init_pair(P_ERROR, COLOR_RED, -1);
    init_pair(P_STATUS, -1, -1);
}

static SCREEN *start_curses(void) {
    SCREEN *scr = newterm(NULL, stdout, stdin);
    if (!scr) return NULL;
    set_term(scr);
    raw();
    noecho();
    nonl();
    keypad(stdscr, TRUE);
    nodelay(stdscr, TRUE);
    set_escdelay(25);
    setup_colors();
    define_key("\033[200~", KEY_PASTE_BEGIN);
    define_key("\033[201~", KEY_PASTE_END);
    define_key("\033\r", KEY_ALT_ENTER);
    mousemask(BUTTON4_PRESSED
#ifdef BUTTON5_PRESSED
              | BUTTON5_PRESSED
#endif
              , NULL);
    mouseinterval(0);
    curs_set(1);
    fputs("\033[?2004h", stdout);                    /* bracketed paste: a dropped path is one paste */
    fflush(stdout);
    return scr;
}

static void stop_curses(SCREEN *scr) {
    fputs("\033[?2004l", stdout);
    fflush(stdout);
    mousemask(0, NULL);
    endwin();
    delscreen(scr);
}

static void free_tui(tui *T) {
    clear_transcript(T);
    free(T->entries);
    free(T->ov);
    free(T->ov_new);
    free(T->in.s);
    for (int i = 0; i < T->nhist; i++) free(T->history[i]);
    free(T->draft);
    free_attachments(T);
}

int tui_run(const qvl_session_opts *so, const tui_opts *to, char *err) {
    tui_opts none = { 0 };
    if (!to) to = &none;
    tui T;
    memset(&T, 0, sizeof T);
    use_utf8_locale();
    if (qvl_images_choose(to->images, getenv("QVL_IMAGES"), STDIN_FILENO, STDOUT_FILENO,
                          to->probe_ms > 0 ? to->probe_ms : QVL_TERM_PROBE_MS, &T.caps, &T.mode, err) != 0)
        return 1;
    if (T.mode == QVL_IMAGES_SIXEL && (T.caps.cell_w <= 0 || T.caps.cell_h <= 0)) T.mode = QVL_IMAGES_BLOCKS;
    T.w = worker_start(so, err);
    if (!T.w) return 1;
    install_signal_handlers();
    SCREEN *scr = start_curses();
    if (!scr) {
        qvl_seterr(err, "cannot start the full-screen chat on terminal '%s'", getenv("TERM") ? getenv("TERM") : "");
        worker_stop(T.w);
        remove_signal_handlers();
        return 1;
    }
    for (int i = 0; i < to->nattach; i++) attach_image(&T, to->attach[i]);
    while (!T.quit) {
        draw(&T);
        struct pollfd fds[2] = { { STDIN_FILENO, POLLIN, 0 }, { worker_fd(T.w), POLLIN, 0 } };
        int hint = T.ctrl_c_at > 0 && qvl_now() - T.ctrl_c_at < CTRL_C_WINDOW;
        if (poll(fds, 2, hint ? 250 : 1000) < 0 && errno != EINTR) break;
        read_events(&T);
        read_keys(&T);
        if (fds[0].revents & (POLLHUP | POLLERR)) T.quit = 1;   /* the terminal went away */
    }
    draw(&T);
    worker_stop(T.w);
    stop_curses(scr);
    remove_signal_handlers();
    int rc = T.failed ? 1 : 0;
    if (T.failed) qvl_seterr(err, "%s", T.err);
    free_tui(&T);
    return rc;
}
