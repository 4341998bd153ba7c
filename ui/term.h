/* term.h - what the terminal can show, and which way qvl draws pictures.
 *
 * qvl_term_probe() asks the terminal on an fd pair (normally /dev/tty) in one
 * round trip: XTVERSION, XTSMGRAPHICS (sixel geometry and colour registers),
 * CSI 16 t (cell size, only when TIOCGWINSZ has no pixel size), then DA1.  Every
 * terminal answers DA1, and answers in order, so the DA1 reply both says whether
 * sixel is there (attribute 4) and marks the end of the replies.  Replies are
 * read in raw mode with a deadline; the terminal's mode is always restored.
 *
 * The picture mode comes from --images, else $QVL_IMAGES, else the probe:
 *   sixel   the terminal said 4 in DA1 and its cell size in pixels is known
 *   blocks  otherwise (half blocks, 24-bit colour if $COLORTERM says so)
 * Inside tmux: tmux 3.4+ built with sixel answers DA1 with 4 itself and draws
 * the pictures; older tmux answers without 4, so we fall back to blocks. */
#ifndef QVL_TERM_H
#define QVL_TERM_H

typedef enum {
    QVL_IMAGES_AUTO = 0,
    QVL_IMAGES_SIXEL,
    QVL_IMAGES_BLOCKS,
    QVL_IMAGES_NONE
} qvl_images_mode;

typedef struct {
    int answered;               /* the terminal answered DA1 before the deadline */
    int sixel;                  /* DA1 lists attribute 4 */
    int sixel_max_w, sixel_max_h; /* XTSMGRAPHICS maximum sixel geometry; 0: unknown */
    int color_registers;        /* XTSMGRAPHICS colour registers; 0: unknown */
    int cell_w, cell_h;         /* one cell in pixels; 0: unknown */
    int cols, rows;             /* window size in cells; 0: unknown */
    int truecolor;              /* $COLORTERM is truecolor or 24bit */
    int tmux;                   /* inside tmux ($TMUX set) */
    int tmux_major, tmux_minor; /* its version when told (XTVERSION or
                                   $TERM_PROGRAM_VERSION); 0.0: unknown */
    char version[64];           /* XTVERSION reply, e.g. "XTerm(390)"; "" if none */
} qvl_term_caps;

/* A reasonable deadline for a local or ssh terminal. */
#define QVL_TERM_PROBE_MS 500

/* Fills the environment part of *caps (truecolor, tmux and its version) from
 * the given values of COLORTERM, TMUX, TERM_PROGRAM, TERM_PROGRAM_VERSION
 * (any may be NULL).  Pure: the probe calls it with getenv(). */
void qvl_term_caps_from_env(qvl_term_caps *caps, const char *colorterm, const char *tmux,
                            const char *term_program, const char *term_program_version);

/* Probes the terminal: reads replies from in_fd (a terminal, put in raw mode
 * for the probe and restored after), writes queries to out_fd, waits at most
 * timeout_ms in all.  A terminal that stays silent is not an error: caps->answered
 * is 0 then.  Returns 0, or -1 with err set (in_fd not a terminal, I/O error).
 * Run it before curses takes the terminal (initscr), from one thread: the
 * replies arrive on the same input as the keys. */
int qvl_term_probe(int in_fd, int out_fd, int timeout_ms, qvl_term_caps *caps, char *err);

/* The same on /dev/tty. */
int qvl_term_probe_tty(int timeout_ms, qvl_term_caps *caps, char *err);

/* Parses the replies a terminal sent (any order, unknown ones skipped) into
 * *caps; returns 1 once a DA1 reply has been seen.  Used by the probe. */
int qvl_term_parse_replies(const char *buf, int len, qvl_term_caps *caps);

/* "auto", "sixel", "blocks", "none" -> *mode; -1 with err naming `what`
 * (e.g. "--images") on anything else. */
int qvl_images_parse(const char *word, const char *what, qvl_images_mode *mode, char *err);

/* The mode asked for: the --images option when given (non-NULL), else the
 * value of $QVL_IMAGES when set and not empty, else auto.  -1 on a bad word. */
int qvl_images_requested(const char *option, const char *env, qvl_images_mode *mode, char *err);

/* Resolves auto through what the probe found (see the top of this file);
 * other modes are returned unchanged. */
qvl_images_mode qvl_images_resolve(qvl_images_mode requested, const qvl_term_caps *caps);

/* All of it: requested mode from option/env; the terminal is probed on
 * in_fd/out_fd only when the answer matters (auto or sixel: sixel needs the
 * cell size), otherwise *caps gets the window size and environment only.
 * Auto without a terminal to probe gives blocks; forced sixel with an unknown
 * cell size guesses 10x20 pixels.  Returns 0 with *mode never AUTO, or -1 with
 * err set (a bad --images / $QVL_IMAGES word). */
int qvl_images_choose(const char *option, const char *env, int in_fd, int out_fd,
                      int timeout_ms, qvl_term_caps *caps, qvl_images_mode *mode, char *err);

const char *qvl_images_name(qvl_images_mode mode);

#endif
