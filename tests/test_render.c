/* test_render.c - pictures in the terminal: probing, mode choice, sixel, half blocks.
 *
 * The terminal is faked with a pseudo-terminal: the code under test works on
 * the slave side as it would on /dev/tty, and a thread on the master side plays
 * the terminal: it reads the queries up to the final DA1 and answers with
 * canned replies (or stays silent).  Sixel output written to the slave is read
 * back on the master and decoded with libsixel's own decoder.  Expected escape
 * codes for the half blocks are worked out by hand from the xterm palette. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include <sixel/sixel.h>  /* libsixel's decoder (ui/sixel.h shadows the plain name) */
/* curses' term.h defines macros named after terminfo capabilities (lines,
 * columns, ...); the TUI includes it before our headers, which must survive it. */
#include <curses.h>
#include <ncursesw/term.h>

#include "blocks.h"
#include "common.h"
#include "picture.h"
#include "sixel.h"
#include "term.h"
#include "testutil.h"

/* --- a fake terminal on a pty ---------------------------------------------- */

typedef struct {
    int master, slave;
    const char *const *replies; /* written in turn, with a pause between; NULL: silent */
    char got[8192];             /* what the program wrote to the terminal */
    int got_len;
    int stop_at_da1;            /* stop reading after the DA1 query (probe tests) */
    double read_for;            /* otherwise: read this many seconds */
    pthread_t thread;
} fake_term;

static int has_da1_query(const char *buf, int len) {
    for (int i = 0; i + 3 <= len; i++)
        if (!memcmp(buf + i, "\x1b[c", 3)) return 1;
    return 0;
}

static void *fake_term_main(void *arg) {
    fake_term *t = arg;
    double deadline = qvl_now() + (t->stop_at_da1 ? 3.0 : t->read_for);
    while (qvl_now() < deadline && t->got_len < (int)sizeof t->got) {
        struct pollfd p = {t->master, POLLIN, 0};
        if (poll(&p, 1, 20) <= 0) continue;
        ssize_t n = read(t->master, t->got + t->got_len, sizeof t->got - (size_t)t->got_len);
        if (n <= 0) break;
        t->got_len += (int)n;
        if (t->stop_at_da1 && has_da1_query(t->got, t->got_len)) break;
    }
    for (int i = 0; t->replies && t->replies[i]; i++) {
        if (i > 0) usleep(20000);  /* replies arrive in pieces, as over ssh */
        ck_assert(write(t->master, t->replies[i], strlen(t->replies[i])) ==
                  (ssize_t)strlen(t->replies[i]));
    }
    return NULL;
}

/* Opens a pty of cols x rows cells (px_w x px_h pixels, 0 when the terminal
 * does not tell) and starts the fake on its master side. */
static void fake_term_start(fake_term *t, int cols, int rows, int px_w, int px_h,
                            const char *const *replies) {
    memset(t, 0, sizeof *t);
    t->master = posix_openpt(O_RDWR | O_NOCTTY);
    ck_assert_int_ge(t->master, 0);
    ck_assert_int_eq(grantpt(t->master), 0);
    ck_assert_int_eq(unlockpt(t->master), 0);
    t->slave = open(ptsname(t->master), O_RDWR | O_NOCTTY);
    ck_assert_int_ge(t->slave, 0);
    struct winsize ws = {.ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols,
                         .ws_xpixel = (unsigned short)px_w, .ws_ypixel = (unsigned short)px_h};
    ck_assert_int_eq(ioctl(t->master, TIOCSWINSZ, &ws), 0);
    t->replies = replies;
    t->stop_at_da1 = 1;
    ck_assert_int_eq(pthread_create(&t->thread, NULL, fake_term_main, t), 0);
}

static void fake_term_join(fake_term *t) {
    pthread_join(t->thread, NULL);
}

static void fake_term_close(fake_term *t) {
    close(t->slave);
    close(t->master);
}

static int contains(const char *buf, int len, const char *needle) {
    int n = (int)strlen(needle);
    for (int i = 0; i + n <= len; i++)
        if (!memcmp(buf + i, needle, (size_t)n)) return 1;
    return 0;
}

/* The probe reads the environment: start every test from a plain terminal. */
static void plain_env(void) {
    unsetenv("COLORTERM");
    unsetenv("TMUX");
    unsetenv("TERM_PROGRAM");
    unsetenv("TERM_PROGRAM_VERSION");
    unsetenv("QVL_IMAGES");
}

static const char *const sixel_replies[] = {
    "\x1bP>|XTerm(390)\x1b\\",
    "\x1b[?2;0;1000;800S\x1b[?1;0;256S",
    "\x1b[6;20;10t\x1b[?6",  /* DA1's reply split across two writes */
    "2;4;22c",
    NULL,
};

START_TEST(probe_sixel_terminal) {
    plain_env();
    setenv("COLORTERM", "truecolor", 1);
    fake_term t;
    fake_term_start(&t, 80, 24, 0, 0, sixel_replies);
    struct termios before, after;
    ck_assert_int_eq(tcgetattr(t.slave, &before), 0);

    qvl_term_caps caps;
    char err[QVL_ERR_MAX] = "";
    ck_assert_msg(qvl_term_probe(t.slave, t.slave, 2000, &caps, err) == 0, "%s", err);
    fake_term_join(&t);

    /* The queries: XTSMGRAPHICS geometry, CSI 16 t (no pixel size in the
     * winsize), DA1 last. */
    ck_assert(contains(t.got, t.got_len, "\x1b[?2;1;0S"));
    ck_assert(contains(t.got, t.got_len, "\x1b[16t"));
    ck_assert(t.got_len >= 3 && !memcmp(t.got + t.got_len - 3, "\x1b[c", 3));

    ck_assert_int_eq(caps.answered, 1);
    ck_assert_int_eq(caps.sixel, 1);
    ck_assert_int_eq(caps.sixel_max_w, 1000);
    ck_assert_int_eq(caps.sixel_max_h, 800);
    ck_assert_int_eq(caps.color_registers, 256);
    ck_assert_int_eq(caps.cell_w, 10);
    ck_assert_int_eq(caps.cell_h, 20);
    ck_assert_int_eq(caps.cols, 80);
    ck_assert_int_eq(caps.rows, 24);
    ck_assert_int_eq(caps.truecolor, 1);
    ck_assert_int_eq(caps.tmux, 0);
    ck_assert_str_eq(caps.version, "XTerm(390)");
    ck_assert_int_eq(qvl_images_resolve(QVL_IMAGES_AUTO, &caps), QVL_IMAGES_SIXEL);

    /* The terminal's mode is back as it was (canonical, echoing). */
    ck_assert_int_eq(tcgetattr(t.slave, &after), 0);
    ck_assert(after.c_lflag == before.c_lflag);
    ck_assert(after.c_iflag == before.c_iflag);
    ck_assert(after.c_lflag & ICANON);
    ck_assert(after.c_lflag & ECHO);
    fake_term_close(&t);
}
END_TEST

START_TEST(probe_cell_size_from_winsize) {
    plain_env();
    static const char *const replies[] = {"\x1b[?62;4c", NULL};
    fake_term t;
    fake_term_start(&t, 100, 30, 900, 540, replies);  /* 9 x 18 pixel cells */
    qvl_term_caps caps;
    char err[QVL_ERR_MAX] = "";
    ck_assert_msg(qvl_term_probe(t.slave, t.slave, 2000, &caps, err) == 0, "%s", err);
    fake_term_join(&t);
    ck_assert(!contains(t.got, t.got_len, "\x1b[16t"));  /* not asked: already known */
    ck_assert_int_eq(caps.cell_w, 9);
    ck_assert_int_eq(caps.cell_h, 18);
    ck_assert_int_eq(caps.cols, 100);
    ck_assert_int_eq(caps.rows, 30);
    ck_assert_int_eq(caps.sixel, 1);
    ck_assert_int_eq(caps.sixel_max_w, 0);  /* no XTSMGRAPHICS answer: unknown */
    ck_assert_int_eq(caps.truecolor, 0);
    ck_assert_int_eq(qvl_images_resolve(QVL_IMAGES_AUTO, &caps), QVL_IMAGES_SIXEL);
    fake_term_close(&t);
}
END_TEST

START_TEST(probe_terminal_without_sixel) {
    plain_env();
    static const char *const replies[] = {"\x1b[6;16;8t", "\x1b[?62;22c", NULL};
    fake_term t;
    fake_term_start(&t, 80, 24, 0, 0, replies);
    qvl_term_caps caps;
    char err[QVL_ERR_MAX] = "";
    ck_assert_msg(qvl_term_probe(t.slave, t.slave, 2000, &caps, err) == 0, "%s", err);
    fake_term_join(&t);
    ck_assert_int_eq(caps.answered, 1);
    ck_assert_int_eq(caps.sixel, 0);
    ck_assert_int_eq(caps.cell_w, 8);
    ck_assert_int_eq(caps.cell_h, 16);
    ck_assert_int_eq(qvl_images_resolve(QVL_IMAGES_AUTO, &caps), QVL_IMAGES_BLOCKS);
    fake_term_close(&t);
}
END_TEST

START_TEST(probe_silent_terminal_times_out) {
    plain_env();
    fake_term t;
    fake_term_start(&t, 80, 24, 0, 0, NULL);
    struct termios before, after;
    ck_assert_int_eq(tcgetattr(t.slave, &before), 0);
    qvl_term_caps caps;
    char err[QVL_ERR_MAX] = "";
    double t0 = qvl_now();
    ck_assert_msg(qvl_term_probe(t.slave, t.slave, 200, &caps, err) == 0, "%s", err);
    double took = qvl_now() - t0;
    fake_term_join(&t);
    ck_assert_msg(took >= 0.15 && took < test_seconds(1.0), "probe took %.3f s for a 200 ms deadline", took);
    ck_assert(has_da1_query(t.got, t.got_len));
    ck_assert_int_eq(caps.answered, 0);
    ck_assert_int_eq(caps.sixel, 0);
    ck_assert_int_eq(caps.cols, 80);
    ck_assert_int_eq(qvl_images_resolve(QVL_IMAGES_AUTO, &caps), QVL_IMAGES_BLOCKS);
    ck_assert_int_eq(tcgetattr(t.slave, &after), 0);
    ck_assert(after.c_lflag == before.c_lflag);
    fake_term_close(&t);
}
END_TEST

START_TEST(probe_not_a_terminal) {
    int fds[2];
    ck_assert_int_eq(pipe(fds), 0);
    qvl_term_caps caps;
    char err[QVL_ERR_MAX] = "";
    ck_assert_int_eq(qvl_term_probe(fds[0], fds[1], 200, &caps, err), -1);
    ck_assert_msg(strstr(err, "not a terminal") != NULL, "err: %s", err);
    close(fds[0]);
    close(fds[1]);
}
END_TEST

/* tmux before 3.4 (or built without sixel) answers DA1 itself, without 4. */
START_TEST(probe_old_tmux_gives_blocks) {
    plain_env();
    setenv("TMUX", "/tmp/tmux-1000/default,1234,0", 1);
    setenv("TERM_PROGRAM", "tmux", 1);
    setenv("TERM_PROGRAM_VERSION", "3.3a", 1);
    static const char *const replies[] = {"\x1b[?1;2c", NULL};
    fake_term t;
    fake_term_start(&t, 80, 24, 0, 0, replies);
    qvl_term_caps caps;
    char err[QVL_ERR_MAX] = "";
    ck_assert_msg(qvl_term_probe(t.slave, t.slave, 2000, &caps, err) == 0, "%s", err);
    fake_term_join(&t);
    ck_assert_int_eq(caps.tmux, 1);
    ck_assert_int_eq(caps.tmux_major, 3);
    ck_assert_int_eq(caps.tmux_minor, 3);
    ck_assert_int_eq(caps.sixel, 0);
    ck_assert_int_eq(qvl_images_resolve(QVL_IMAGES_AUTO, &caps), QVL_IMAGES_BLOCKS);
    fake_term_close(&t);
}
END_TEST

START_TEST(probe_sixel_tmux) {
    plain_env();
    setenv("TMUX", "/tmp/tmux-1000/default,1234,0", 1);
    static const char *const replies[] = {
        "\x1bP>|tmux 3.4\x1b\\\x1b[6;18;9t\x1b[?62;4;22;52c", NULL};
    fake_term t;
    fake_term_start(&t, 80, 24, 0, 0, replies);
    qvl_term_caps caps;
    char err[QVL_ERR_MAX] = "";
    ck_assert_msg(qvl_term_probe(t.slave, t.slave, 2000, &caps, err) == 0, "%s", err);
    fake_term_join(&t);
    ck_assert_int_eq(caps.tmux, 1);
    ck_assert_int_eq(caps.tmux_major, 3);
    ck_assert_int_eq(caps.tmux_minor, 4);
    ck_assert_str_eq(caps.version, "tmux 3.4");
    ck_assert_int_eq(qvl_images_resolve(QVL_IMAGES_AUTO, &caps), QVL_IMAGES_SIXEL);
    fake_term_close(&t);
}
END_TEST

START_TEST(parse_replies_among_noise) {
    qvl_term_caps caps;
    memset(&caps, 0, sizeof caps);
    /* Keys typed during the probe (letters, an arrow, Alt-P) around replies; an
     * incomplete trailing reply is left for later. */
    const char *in = "ab\x1b[A\x1bPx\x1b[?2;0;640;480Sz\x1b[?1;3;0S\x1b[6;20;10t";
    ck_assert_int_eq(qvl_term_parse_replies(in, (int)strlen(in), &caps), 0);
    ck_assert_int_eq(caps.sixel_max_w, 640);
    ck_assert_int_eq(caps.sixel_max_h, 480);
    ck_assert_int_eq(caps.color_registers, 0);  /* status 3: failure, ignored */
    ck_assert_int_eq(caps.cell_w, 10);
    ck_assert_int_eq(caps.cell_h, 20);
    ck_assert_int_eq(qvl_term_parse_replies("\x1b[?64;1;2;6;9", 13, &caps), 0);
    ck_assert_int_eq(caps.answered, 0);
    /* 4 as the device class (a VT132) is not the sixel attribute. */
    ck_assert_int_eq(qvl_term_parse_replies("\x1b[?4;6c", 7, &caps), 1);
    ck_assert_int_eq(caps.answered, 1);
    ck_assert_int_eq(caps.sixel, 0);
    ck_assert_int_eq(qvl_term_parse_replies("\x1b[?65;1;4;9c", 12, &caps), 1);
    ck_assert_int_eq(caps.sixel, 1);
}
END_TEST

START_TEST(env_capabilities) {
    qvl_term_caps caps;
    memset(&caps, 0, sizeof caps);
    qvl_term_caps_from_env(&caps, "24bit", NULL, NULL, NULL);
    ck_assert_int_eq(caps.truecolor, 1);
    ck_assert_int_eq(caps.tmux, 0);
    memset(&caps, 0, sizeof caps);
    qvl_term_caps_from_env(&caps, "yes", "", "tmux", "3.4");  /* empty TMUX: not inside */
    ck_assert_int_eq(caps.truecolor, 0);
    ck_assert_int_eq(caps.tmux, 0);
    ck_assert_int_eq(caps.tmux_major, 0);
    memset(&caps, 0, sizeof caps);
    qvl_term_caps_from_env(&caps, NULL, "/tmp/t,1,0", "tmux", "next-3.5");
    ck_assert_int_eq(caps.tmux, 1);
    ck_assert_int_eq(caps.tmux_major, 3);
    ck_assert_int_eq(caps.tmux_minor, 5);
}
END_TEST

/* --- mode choice: option beats environment beats probe --------------------- */

START_TEST(mode_requested_order) {
    qvl_images_mode m;
    char err[QVL_ERR_MAX] = "";
    ck_assert_int_eq(qvl_images_requested("none", "sixel", &m, err), 0);
    ck_assert_int_eq(m, QVL_IMAGES_NONE);
    ck_assert_int_eq(qvl_images_requested(NULL, "blocks", &m, err), 0);
    ck_assert_int_eq(m, QVL_IMAGES_BLOCKS);
    ck_assert_int_eq(qvl_images_requested(NULL, "", &m, err), 0);
    ck_assert_int_eq(m, QVL_IMAGES_AUTO);
    ck_assert_int_eq(qvl_images_requested(NULL, NULL, &m, err), 0);
    ck_assert_int_eq(m, QVL_IMAGES_AUTO);
    ck_assert_int_eq(qvl_images_requested("auto", "none", &m, err), 0);
    ck_assert_int_eq(m, QVL_IMAGES_AUTO);  /* an explicit auto still wins over the env */
    ck_assert_int_eq(qvl_images_requested("kitty", "none", &m, err), -1);
    ck_assert_msg(strstr(err, "--images") && strstr(err, "kitty"), "err: %s", err);
    ck_assert_int_eq(qvl_images_requested(NULL, "Sixel", &m, err), -1);
    ck_assert_msg(strstr(err, "QVL_IMAGES") && strstr(err, "Sixel"), "err: %s", err);
    ck_assert_str_eq(qvl_images_name(QVL_IMAGES_BLOCKS), "blocks");
}
END_TEST

static qvl_images_mode choose_on_fake(const char *option, const char *env, const char *const *replies,
                                      int *probed, qvl_term_caps *caps) {
    fake_term t;
    fake_term_start(&t, 80, 24, 0, 0, replies);
    qvl_images_mode m = QVL_IMAGES_AUTO;
    char err[QVL_ERR_MAX] = "";
    ck_assert_msg(qvl_images_choose(option, env, t.slave, t.slave, 300, caps, &m, err) == 0,
                  "%s", err);
    /* Unblock the fake in case nothing was asked (after a probe it has stopped
     * reading and never sees this), then see what it got. */
    ck_assert(write(t.slave, "\x1b[c", 3) == 3);
    fake_term_join(&t);
    *probed = t.got_len > 3;
    fake_term_close(&t);
    return m;
}

START_TEST(mode_choose_option_env_probe) {
    plain_env();
    static const char *const no_sixel[] = {"\x1b[6;20;10t\x1b[?62;22c", NULL};
    qvl_term_caps caps;
    int probed;
    /* The option wins over the environment and the terminal; no probe needed. */
    ck_assert_int_eq(choose_on_fake("blocks", "sixel", sixel_replies, &probed, &caps),
                     QVL_IMAGES_BLOCKS);
    ck_assert_int_eq(probed, 0);
    ck_assert_int_eq(caps.cols, 80);
    /* The environment wins over the terminal. */
    ck_assert_int_eq(choose_on_fake(NULL, "none", sixel_replies, &probed, &caps), QVL_IMAGES_NONE);
    ck_assert_int_eq(probed, 0);
    ck_assert_int_eq(choose_on_fake(NULL, "sixel", no_sixel, &probed, &caps), QVL_IMAGES_SIXEL);
    ck_assert_int_eq(probed, 1);  /* forced sixel still learns the cell size */
    ck_assert_int_eq(caps.cell_w, 10);
    ck_assert_int_eq(caps.cell_h, 20);
    /* Neither: the terminal decides. */
    ck_assert_int_eq(choose_on_fake(NULL, NULL, sixel_replies, &probed, &caps), QVL_IMAGES_SIXEL);
    ck_assert_int_eq(probed, 1);
    ck_assert_int_eq(choose_on_fake(NULL, NULL, no_sixel, &probed, &caps), QVL_IMAGES_BLOCKS);
    ck_assert_int_eq(choose_on_fake("auto", "none", no_sixel, &probed, &caps), QVL_IMAGES_BLOCKS);
    /* Forced sixel on a silent terminal: a guessed cell size, never zero. */
    ck_assert_int_eq(choose_on_fake("sixel", NULL, NULL, &probed, &caps), QVL_IMAGES_SIXEL);
    ck_assert(caps.cell_w > 0 && caps.cell_h > 0);
}
END_TEST

START_TEST(mode_resolve_needs_cell_size) {
    qvl_term_caps caps;
    memset(&caps, 0, sizeof caps);
    caps.answered = caps.sixel = 1;
    ck_assert_int_eq(qvl_images_resolve(QVL_IMAGES_AUTO, &caps), QVL_IMAGES_BLOCKS);
    caps.cell_w = 10;
    caps.cell_h = 20;
    ck_assert_int_eq(qvl_images_resolve(QVL_IMAGES_AUTO, &caps), QVL_IMAGES_SIXEL);
    ck_assert_int_eq(qvl_images_resolve(QVL_IMAGES_NONE, &caps), QVL_IMAGES_NONE);
    ck_assert_int_eq(qvl_images_resolve(QVL_IMAGES_AUTO, NULL), QVL_IMAGES_BLOCKS);
}
END_TEST

/* --- pictures ---------------------------------------------------------------- */

static const unsigned char quad_colour[4][3] = {
    {255, 0, 0}, {0, 255, 0}, {0, 0, 255}, {255, 255, 255}};

/* w x h, top-left red, top-right green, bottom-left blue, bottom-right white. */
static unsigned char *quadrants(int w, int h) {
    unsigned char *p = malloc((size_t)w * h * 3);
    ck_assert(p != NULL);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            memcpy(p + ((size_t)y * w + x) * 3, quad_colour[(y >= h / 2) * 2 + (x >= w / 2)], 3);
    return p;
}

/* Decodes a sixel string with libsixel into RGB; checks the colour at the
 * middle of each quadrant. */
static void check_sixel_quadrants(const char *data, size_t len, int want_w, int want_h) {
    sixel_allocator_t *alloc = NULL;
    ck_assert(SIXEL_SUCCEEDED(sixel_allocator_new(&alloc, malloc, calloc, realloc, free)));
    unsigned char *idx = NULL, *pal = NULL;
    int w = 0, h = 0, ncolors = 0;
    SIXELSTATUS st = sixel_decode_raw((unsigned char *)data, (int)len, &idx, &w, &h, &pal,
                                      &ncolors, alloc);
    ck_assert_msg(SIXEL_SUCCEEDED(st), "decode: %s", sixel_helper_format_error(st));
    ck_assert_int_eq(w, want_w);
    ck_assert_int_eq(h, want_h);
    ck_assert(ncolors >= 4);
    for (int q = 0; q < 4; q++) {
        int x = (q & 1) ? want_w * 3 / 4 : want_w / 4;
        int y = (q & 2) ? want_h * 3 / 4 : want_h / 4;
        const unsigned char *c = pal + 3 * idx[(size_t)y * w + x];
        for (int k = 0; k < 3; k++)
            ck_assert_msg(abs(c[k] - quad_colour[q][k]) <= 12,
                          "quadrant %d at (%d,%d): channel %d is %d, want %d", q, x, y, k, c[k],
                          quad_colour[q][k]);
    }
    sixel_allocator_free(alloc, idx);
    sixel_allocator_free(alloc, pal);
    sixel_allocator_unref(alloc);
}

START_TEST(sixel_fit_sizes) {
    qvl_sixel s;
    char err[QVL_ERR_MAX] = "";
    qvl_sixel_box box = {.cell_w = 10, .cell_h = 20, .max_cols = 6, .max_rows = 10};
    /* 200x100 in 60 x 200 px (200 cut to 198, whole bands): width limits,
     * 60x30; 5 bands = 30 px -> 2 rows of 20; 6 columns. */
    ck_assert_int_eq(qvl_sixel_fit(200, 100, &box, &s, err), 0);
    ck_assert_int_eq(s.px_w, 60);
    ck_assert_int_eq(s.px_h, 30);
    ck_assert_int_eq(s.cols, 6);
    ck_assert_int_eq(s.rows, 2);
    /* Tall 100x1000 in 8 cols x 3 rows of 10x20: 80 x 60 px, height limits:
     * 6 x 60 px, 1 column, 3 rows. */
    box = (qvl_sixel_box){.cell_w = 10, .cell_h = 20, .max_cols = 8, .max_rows = 3};
    ck_assert_int_eq(qvl_sixel_fit(100, 1000, &box, &s, err), 0);
    ck_assert_int_eq(s.px_w, 6);
    ck_assert_int_eq(s.px_h, 60);
    ck_assert_int_eq(s.cols, 1);
    ck_assert_int_eq(s.rows, 3);
    /* A band that straddles a row: 40x40 px -> 7 bands = 42 px -> 3 rows of 20. */
    box = (qvl_sixel_box){.cell_w = 10, .cell_h = 20, .max_cols = 8, .max_rows = 10};
    ck_assert_int_eq(qvl_sixel_fit(40, 40, &box, &s, err), 0);
    ck_assert_int_eq(s.px_w, 40);
    ck_assert_int_eq(s.px_h, 40);
    ck_assert_int_eq(s.cols, 4);
    ck_assert_int_eq(s.rows, 3);
    /* The same small picture enlarged: 80 x 198 box, width limits, 80x80. */
    box.upscale = 1;
    ck_assert_int_eq(qvl_sixel_fit(40, 40, &box, &s, err), 0);
    ck_assert_int_eq(s.px_w, 80);
    ck_assert_int_eq(s.px_h, 80);
    ck_assert_int_eq(s.rows, 5);  /* 84 px of bands over 20 px rows */
    /* The terminal's sixel limit (XTSMGRAPHICS) narrows the box: 1000x500 in a
     * 120 x 200 px box limited to 100 px wide -> 100x50 (9 bands: 3 rows). */
    box = (qvl_sixel_box){.cell_w = 12, .cell_h = 20, .max_cols = 10, .max_rows = 10,
                          .max_px_w = 100, .max_px_h = 1000};
    ck_assert_int_eq(qvl_sixel_fit(1000, 500, &box, &s, err), 0);
    ck_assert_int_eq(s.px_w, 100);
    ck_assert_int_eq(s.px_h, 50);
    ck_assert_int_eq(s.cols, 9);
    ck_assert_int_eq(s.rows, 3);
}
END_TEST

START_TEST(sixel_bad_input) {
    qvl_sixel s;
    char err[QVL_ERR_MAX] = "";
    unsigned char px[12] = {0};
    qvl_sixel_box box = {.cell_w = 0, .cell_h = 20, .max_cols = 8, .max_rows = 10};
    ck_assert_int_eq(qvl_sixel_encode(px, 2, 2, &box, &s, err), -1);
    ck_assert_msg(strstr(err, "cell size") != NULL, "err: %s", err);
    ck_assert(s.data == NULL);
    box.cell_w = 10;
    ck_assert_int_eq(qvl_sixel_encode(px, 0, 2, &box, &s, err), -1);
    ck_assert_msg(strstr(err, "0x2") != NULL, "err: %s", err);
    ck_assert_int_eq(qvl_sixel_encode(NULL, 2, 2, &box, &s, err), -1);
    box.max_rows = 0;
    ck_assert_int_eq(qvl_sixel_encode(px, 2, 2, &box, &s, err), -1);
    ck_assert_msg(strstr(err, "box") != NULL, "err: %s", err);
    box.max_rows = 10;
    box.colors = 1000;
    ck_assert_int_eq(qvl_sixel_encode(px, 2, 2, &box, &s, err), -1);
    ck_assert_msg(strstr(err, "palette") != NULL, "err: %s", err);
    ck_assert_int_eq(qvl_sixel_encode(px, 100000, 100000, &box, &s, err), -1);
    ck_assert_msg(strstr(err, "too large") != NULL, "err: %s", err);
}
END_TEST

START_TEST(sixel_encode_decodes_back) {
    unsigned char *px = quadrants(200, 100);
    qvl_sixel_box box = {.cell_w = 10, .cell_h = 20, .max_cols = 6, .max_rows = 10};
    qvl_sixel s;
    char err[QVL_ERR_MAX] = "";
    ck_assert_msg(qvl_sixel_encode(px, 200, 100, &box, &s, err) == 0, "%s", err);
    free(px);
    ck_assert_int_eq(s.px_w, 60);
    ck_assert_int_eq(s.px_h, 30);
    ck_assert(s.len > 4 && s.len == strlen(s.data));
    ck_assert(!memcmp(s.data, "\x1bP", 2));                  /* 7-bit DCS ... */
    ck_assert(!memcmp(s.data + s.len - 2, "\x1b\\", 2));     /* ... ended by ST */
    check_sixel_quadrants(s.data, s.len, 60, 30);
    qvl_sixel_free(&s);
    ck_assert(s.data == NULL);
}
END_TEST

/* The whole sixel path: a terminal that says sixel, a picture sized from the
 * cell size it reported, written to it, and what it received decodes back. */
START_TEST(sixel_to_fake_terminal) {
    plain_env();
    fake_term t;
    fake_term_start(&t, 80, 24, 0, 0, sixel_replies);
    qvl_term_caps caps;
    qvl_images_mode mode;
    char err[QVL_ERR_MAX] = "";
    ck_assert_msg(qvl_images_choose(NULL, NULL, t.slave, t.slave, 2000, &caps, &mode, err) == 0,
                  "%s", err);
    fake_term_join(&t);
    ck_assert_int_eq(mode, QVL_IMAGES_SIXEL);

    /* Read whatever the program writes next. */
    t.got_len = 0;
    t.stop_at_da1 = 0;
    t.read_for = 0.5;
    t.replies = NULL;
    ck_assert_int_eq(pthread_create(&t.thread, NULL, fake_term_main, &t), 0);

    unsigned char *px = quadrants(64, 48);
    qvl_sixel_box box = {.cell_w = caps.cell_w, .cell_h = caps.cell_h, .max_cols = 4,
                         .max_rows = 8, .max_px_w = caps.sixel_max_w,
                         .max_px_h = caps.sixel_max_h, .colors = caps.color_registers};
    qvl_sixel s;
    ck_assert_msg(qvl_sixel_encode(px, 64, 48, &box, &s, err) == 0, "%s", err);
    free(px);
    /* 4 columns of 10 px: 40 px wide, 30 tall (5 bands), 2 rows of 20 px. */
    ck_assert_int_eq(s.px_w, 40);
    ck_assert_int_eq(s.px_h, 30);
    ck_assert_int_eq(s.cols, 4);
    ck_assert_int_eq(s.rows, 2);
    ck_assert(write(t.slave, s.data, s.len) == (ssize_t)s.len);
    fake_term_join(&t);
    ck_assert_int_eq(t.got_len, (int)s.len);
    check_sixel_quadrants(t.got, (size_t)t.got_len, 40, 30);
    qvl_sixel_free(&s);
    fake_term_close(&t);
}
END_TEST

START_TEST(picture_fit_and_resize) {
    int w, h;
    ck_assert_int_eq(qvl_picture_fit(640, 480, 80, 200, 0, &w, &h), 0);
    ck_assert(w == 80 && h == 60);
    ck_assert_int_eq(qvl_picture_fit(10, 10, 80, 200, 0, &w, &h), 0);
    ck_assert(w == 10 && h == 10);                       /* not enlarged */
    ck_assert_int_eq(qvl_picture_fit(10, 10, 80, 200, 1, &w, &h), 0);
    ck_assert(w == 80 && h == 80);
    ck_assert_int_eq(qvl_picture_fit(3000, 40, 80, 40, 0, &w, &h), 0);
    ck_assert(w == 80 && h == 1);                        /* 1.07 rounds to 1 */
    ck_assert_int_eq(qvl_picture_fit(10000, 1, 80, 40, 0, &w, &h), 0);
    ck_assert(w == 80 && h == 1);                        /* never 0 */
    ck_assert_int_eq(qvl_picture_fit(0, 10, 80, 40, 0, &w, &h), -1);

    /* 4x2 -> 2x1: each output pixel is the mean of a 2x2 square. */
    const unsigned char src[4 * 2 * 3] = {
        0, 0, 0,   100, 0, 0,   10, 20, 30,  10, 20, 30,
        200, 0, 0, 100, 0, 0,   50, 60, 70,  50, 60, 70};
    unsigned char dst[2 * 3];
    qvl_picture_resize(src, 4, 2, dst, 2, 1);
    ck_assert(dst[0] == 100 && dst[1] == 0 && dst[2] == 0);
    ck_assert(dst[3] == 30 && dst[4] == 40 && dst[5] == 50);
    /* 3x1 -> 2x1: pixel 1 is split half and half between the outputs:
     * (2*a + 1*b)/3 and (1*b + 2*c)/3. */
    const unsigned char row[3 * 3] = {30, 0, 0, 60, 0, 0, 90, 0, 0};
    qvl_picture_resize(row, 3, 1, dst, 2, 1);
    ck_assert_int_eq(dst[0], 40);
    ck_assert_int_eq(dst[3], 80);
    /* 1x1 -> 3x2: the one colour everywhere. */
    const unsigned char one[3] = {7, 8, 9};
    unsigned char big[3 * 2 * 3];
    qvl_picture_resize(one, 1, 1, big, 3, 2);
    for (int i = 0; i < 6; i++) ck_assert(big[i * 3] == 7 && big[i * 3 + 1] == 8 && big[i * 3 + 2] == 9);
}
END_TEST

/* --- half blocks -------------------------------------------------------------- */

#define BLOCK "\xe2\x96\x80"

START_TEST(blocks_two_by_two_truecolor) {
    unsigned char *px = quadrants(2, 2);
    qvl_blocks b;
    char err[QVL_ERR_MAX] = "";
    ck_assert_msg(qvl_blocks_make(px, 2, 2, 10, 10, 0, &b, err) == 0, "%s", err);
    free(px);
    ck_assert_int_eq(b.cols, 2);
    ck_assert_int_eq(b.rows, 1);
    /* Cell 0: red over blue; cell 1: green over white. */
    ck_assert(!memcmp(b.cells[0].top, quad_colour[0], 3));
    ck_assert(!memcmp(b.cells[0].bot, quad_colour[2], 3));
    ck_assert(!memcmp(b.cells[1].top, quad_colour[1], 3));
    ck_assert(!memcmp(b.cells[1].bot, quad_colour[3], 3));
    ck_assert(b.cells[0].has_bot && b.cells[1].has_bot);

    char **text = qvl_blocks_lines(&b, 1, err);
    ck_assert(text != NULL);
    ck_assert_str_eq(text[0], "\x1b[38;2;255;0;0m\x1b[48;2;0;0;255m" BLOCK
                               "\x1b[38;2;0;255;0m\x1b[48;2;255;255;255m" BLOCK "\x1b[0m");
    qvl_blocks_lines_free(text, b.rows);

    /* 256 colours: red = cube (5,0,0) = 16+180 = 196; blue (0,0,5) = 21;
     * green (0,5,0) = 46; white (5,5,5) = 231 (exact, the grey ramp stops at 238). */
    text = qvl_blocks_lines(&b, 0, err);
    ck_assert(text != NULL);
    ck_assert_str_eq(text[0], "\x1b[38;5;196m\x1b[48;5;21m" BLOCK
                               "\x1b[38;5;46m\x1b[48;5;231m" BLOCK "\x1b[0m");
    qvl_blocks_lines_free(text, b.rows);
    qvl_blocks_free(&b);
}
END_TEST

START_TEST(blocks_odd_height_and_repeats) {
    /* 3x3: rows grey(128), grey(128), dark (0,0,0).  Two cell rows; the second
     * has no bottom pixel, so it gets the default background. */
    unsigned char px[3 * 3 * 3];
    for (int i = 0; i < 9; i++) {
        unsigned char v = i < 6 ? 128 : 0;
        px[i * 3] = px[i * 3 + 1] = px[i * 3 + 2] = v;
    }
    qvl_blocks b;
    char err[QVL_ERR_MAX] = "";
    ck_assert_msg(qvl_blocks_make(px, 3, 3, 10, 10, 0, &b, err) == 0, "%s", err);
    ck_assert_int_eq(b.cols, 3);
    ck_assert_int_eq(b.rows, 2);
    ck_assert_int_eq(b.cells[3].has_bot, 0);
    char **text = qvl_blocks_lines(&b, 1, err);
    ck_assert(text != NULL);
    /* A colour repeated along the line is not sent again. */
    ck_assert_str_eq(text[0], "\x1b[38;2;128;128;128m\x1b[48;2;128;128;128m" BLOCK BLOCK BLOCK
                               "\x1b[0m");
    ck_assert_str_eq(text[1], "\x1b[38;2;0;0;0m\x1b[49m" BLOCK BLOCK BLOCK "\x1b[0m");
    qvl_blocks_lines_free(text, b.rows);
    /* 256 colours: 128 grey is grey ramp step 12 (8 + 10*12 = 128): 244. Black
     * is cube 16 (exact; the darkest grey is 8). */
    text = qvl_blocks_lines(&b, 0, err);
    ck_assert(text != NULL);
    ck_assert_str_eq(text[0], "\x1b[38;5;244m\x1b[48;5;244m" BLOCK BLOCK BLOCK "\x1b[0m");
    ck_assert_str_eq(text[1], "\x1b[38;5;16m\x1b[49m" BLOCK BLOCK BLOCK "\x1b[0m");
    qvl_blocks_lines_free(text, b.rows);
    qvl_blocks_free(&b);
}
END_TEST

START_TEST(blocks_scaled_to_box) {
    int cols, rows;
    char err[QVL_ERR_MAX] = "";
    /* 100x50 into 20 cols x 20 rows = 20 x 40 square pixels: 20x10 -> 5 rows. */
    ck_assert_int_eq(qvl_blocks_fit(100, 50, 20, 20, 0, &cols, &rows, err), 0);
    ck_assert(cols == 20 && rows == 5);
    /* 10x100 into 40 x 10 rows (20 px): 2x20 -> 2 cols, 10 rows. */
    ck_assert_int_eq(qvl_blocks_fit(10, 100, 40, 10, 0, &cols, &rows, err), 0);
    ck_assert(cols == 2 && rows == 10);
    ck_assert_int_eq(qvl_blocks_fit(10, 100, 0, 10, 0, &cols, &rows, err), -1);
    ck_assert_msg(strstr(err, "box") != NULL, "err: %s", err);

    /* 40x40 quadrants into 4 cols x 2 rows: 4x4 pixels, each quadrant 2x2
     * pixels of its own colour, so the cells are exact. */
    unsigned char *px = quadrants(40, 40);
    qvl_blocks b;
    ck_assert_msg(qvl_blocks_make(px, 40, 40, 4, 2, 0, &b, err) == 0, "%s", err);
    free(px);
    ck_assert(b.cols == 4 && b.rows == 2);
    for (int y = 0; y < 2; y++)
        for (int x = 0; x < 4; x++) {
            int q = y * 2 + x / 2;
            ck_assert(!memcmp(b.cells[y * 4 + x].top, quad_colour[q], 3));
            ck_assert(!memcmp(b.cells[y * 4 + x].bot, quad_colour[q], 3));
        }
    qvl_blocks_free(&b);
    ck_assert_int_eq(qvl_blocks_make(NULL, 4, 4, 4, 2, 0, &b, err), -1);
}
END_TEST

START_TEST(xterm256_palette) {
    unsigned char c[3];
    ck_assert_int_eq(qvl_xterm256_to_rgb(196, c), 0);
    ck_assert(c[0] == 255 && c[1] == 0 && c[2] == 0);
    ck_assert_int_eq(qvl_xterm256_to_rgb(67, c), 0);  /* 67-16 = 51 = 1*36 + 2*6 + 3 */
    ck_assert(c[0] == 95 && c[1] == 135 && c[2] == 175);
    ck_assert_int_eq(qvl_xterm256_to_rgb(232, c), 0);
    ck_assert(c[0] == 8 && c[1] == 8 && c[2] == 8);
    ck_assert_int_eq(qvl_xterm256_to_rgb(255, c), 0);
    ck_assert(c[0] == 238);
    ck_assert_int_eq(qvl_xterm256_to_rgb(15, c), -1);
    ck_assert_int_eq(qvl_rgb_to_xterm256(95, 135, 175), 67);
    ck_assert_int_eq(qvl_rgb_to_xterm256(250, 5, 3), 196);
    ck_assert_int_eq(qvl_rgb_to_xterm256(100, 100, 100), 241);  /* 98 = 8+10*9 beats cube 102 */
    /* Nearest by exhaustive search over 16..255, on a grid of colours. */
    for (int r = 0; r < 256; r += 17)
        for (int g = 0; g < 256; g += 23)
            for (int bl = 0; bl < 256; bl += 29) {
                int best = -1, got = qvl_rgb_to_xterm256(r, g, bl);
                for (int i = 16; i < 256; i++) {
                    qvl_xterm256_to_rgb(i, c);
                    int d = (c[0] - r) * (c[0] - r) + (c[1] - g) * (c[1] - g) + (c[2] - bl) * (c[2] - bl);
                    if (best < 0 || d < best) best = d;
                }
                qvl_xterm256_to_rgb(got, c);
                int d = (c[0] - r) * (c[0] - r) + (c[1] - g) * (c[1] - g) + (c[2] - bl) * (c[2] - bl);
                ck_assert_msg(d == best, "(%d,%d,%d) -> %d at distance %d, best is %d", r, g, bl, got,
                              d, best);
            }
}
END_TEST

START_TEST(placeholder_text) {
    char buf[64];
    ck_assert_str_eq(qvl_image_placeholder("/home/u/pics/cat.png", 640, 480, buf, sizeof buf),
                     "[image: cat.png 640x480]");
    ck_assert_str_eq(qvl_image_placeholder("dog.jpg", 3, 4, buf, sizeof buf), "[image: dog.jpg 3x4]");
    ck_assert_str_eq(qvl_image_placeholder(NULL, 1, 1, buf, sizeof buf), "[image: image 1x1]");
    char tiny[8];
    qvl_image_placeholder("cat.png", 640, 480, tiny, sizeof tiny);
    ck_assert_str_eq(tiny, "[image:");  /* truncated, still terminated */
}
END_TEST

int main(void) {
    Suite *s = suite_create("render");
    TCase *probe = tcase_create("probe");
    tcase_set_timeout(probe, 10);
    tcase_add_test(probe, probe_sixel_terminal);
    tcase_add_test(probe, probe_cell_size_from_winsize);
    tcase_add_test(probe, probe_terminal_without_sixel);
    tcase_add_test(probe, probe_silent_terminal_times_out);
    tcase_add_test(probe, probe_not_a_terminal);
    tcase_add_test(probe, probe_old_tmux_gives_blocks);
    tcase_add_test(probe, probe_sixel_tmux);
    tcase_add_test(probe, parse_replies_among_noise);
    tcase_add_test(probe, env_capabilities);
    suite_add_tcase(s, probe);

    TCase *mode = tcase_create("mode");
    tcase_set_timeout(mode, 10);
    tcase_add_test(mode, mode_requested_order);
    tcase_add_test(mode, mode_choose_option_env_probe);
    tcase_add_test(mode, mode_resolve_needs_cell_size);
    suite_add_tcase(s, mode);

    TCase *sixel = tcase_create("sixel");
    tcase_set_timeout(sixel, 10);
    tcase_add_test(sixel, sixel_fit_sizes);
    tcase_add_test(sixel, sixel_bad_input);
    tcase_add_test(sixel, sixel_encode_decodes_back);
    tcase_add_test(sixel, sixel_to_fake_terminal);
    tcase_add_test(sixel, picture_fit_and_resize);
    suite_add_tcase(s, sixel);

    TCase *blocks = tcase_create("blocks");
    tcase_add_test(blocks, blocks_two_by_two_truecolor);
    tcase_add_test(blocks, blocks_odd_height_and_repeats);
    tcase_add_test(blocks, blocks_scaled_to_box);
    tcase_add_test(blocks, xterm256_palette);
    tcase_add_test(blocks, placeholder_text);
    suite_add_tcase(s, blocks);
    return run_suite(s);
}
