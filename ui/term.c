/* term.c - probe the terminal's picture abilities, choose the picture mode.
 *
 * The probe writes every query at once and ends with DA1 (ESC [ c).  Terminals
 * answer in order and all of them answer DA1, so when its reply arrives every
 * other reply that is coming has arrived; queries a terminal does not know are
 * silently ignored.  That is one round trip, bounded by a deadline in case the
 * terminal answers nothing at all (a serial line, a broken multiplexer).
 *
 * Replies are parsed from the bytes gathered so far after every read:
 *   DA1           ESC [ ? 62 ; 4 ; 22 c       4 among the attributes: sixel
 *   XTSMGRAPHICS  ESC [ ? 2 ; 0 ; W ; H S     item 2 (geometry), status 0 (ok)
 *                 ESC [ ? 1 ; 0 ; N S         item 1 (colour registers)
 *   cell size     ESC [ 6 ; H ; W t           answer to CSI 16 t
 *   XTVERSION     ESC P > | text ESC \        e.g. "XTerm(390)", "tmux 3.4"
 * Anything else in the input (a key typed during the probe) is skipped. */
#include "term.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include "common.h"

#define ESC '\x1b'
#define REPLY_MAX 4096
#define DEFAULT_CELL_W 10   /* xterm's usual font, when sixel is forced blind */
#define DEFAULT_CELL_H 20

/* --- environment ---------------------------------------------------------- */

/* "3.4", "3.3a", "next-3.5": the first "N.M" in s. */
static void parse_version(const char *s, int *major, int *minor) {
    *major = *minor = 0;
    if (!s) return;
    while (*s && (*s < '0' || *s > '9')) s++;
    if (!*s) return;
    *major = (int)strtol(s, (char **)&s, 10);
    if (*s == '.') *minor = (int)strtol(s + 1, NULL, 10);
}

void qvl_term_caps_from_env(qvl_term_caps *caps, const char *colorterm, const char *tmux,
                            const char *term_program, const char *term_program_version) {
    caps->truecolor = colorterm && (!strcmp(colorterm, "truecolor") || !strcmp(colorterm, "24bit"));
    caps->tmux = tmux && *tmux;
    if (caps->tmux && term_program && !strcmp(term_program, "tmux"))
        parse_version(term_program_version, &caps->tmux_major, &caps->tmux_minor);
}

/* --- reply parsing ---------------------------------------------------------- */

#define MAX_PARAMS 16

typedef struct {
    char prefix;          /* '?', '>', '=', '<' or 0 */
    int params[MAX_PARAMS];
    int nparams;
    char final;
} csi_seq;

/* Parses a CSI sequence starting at buf[i] == ESC, buf[i+1] == '['.  Returns the
 * index after it, 0 if it is not complete yet, -1 if it is not a CSI. */
static int parse_csi(const char *buf, int len, int i, csi_seq *seq) {
    memset(seq, 0, sizeof *seq);
    int j = i + 2;
    if (j < len && buf[j] && strchr("?>=<", buf[j])) seq->prefix = buf[j++];
    int have_digit = 0, value = 0;
    for (; j < len; j++) {
        unsigned char ch = (unsigned char)buf[j];
        if (ch >= '0' && ch <= '9') {
            if (value < 100000000) value = value * 10 + (ch - '0');
            have_digit = 1;
        } else if (ch == ';' || ch == ':') {
            if (seq->nparams < MAX_PARAMS) seq->params[seq->nparams++] = value;
            value = 0;
            have_digit = 0;
        } else if (ch >= 0x40 && ch <= 0x7e) {
            if ((have_digit || seq->nparams > 0) && seq->nparams < MAX_PARAMS)
                seq->params[seq->nparams++] = value;
            seq->final = (char)ch;
            return j + 1;
        } else if (ch >= 0x20 && ch <= 0x2f) {
            continue;  /* intermediate bytes: none of our replies use them */
        } else {
            return -1;  /* a control byte inside: not a reply, resync */
        }
    }
    return 0;
}

/* Ends of a DCS string starting at buf[i] == ESC, buf[i+1] == 'P': returns the
 * index after its ST (ESC \ or BEL) and the body span, 0 if incomplete, -1 if
 * another escape starts first (an Alt-P typed during the probe, not a DCS). */
static int parse_dcs(const char *buf, int len, int i, int *body, int *body_len) {
    for (int j = i + 2; j < len; j++) {
        if (buf[j] == '\a') { *body = i + 2; *body_len = j - i - 2; return j + 1; }
        if (buf[j] == ESC) {
            if (j + 1 >= len) return 0;
            if (buf[j + 1] != '\\') return -1;
            *body = i + 2;
            *body_len = j - i - 2;
            return j + 2;
        }
    }
    return 0;
}

static void apply_csi(const csi_seq *s, qvl_term_caps *caps, int *da1) {
    if (s->prefix == '?' && s->final == 'c') {
        *da1 = 1;
        caps->answered = 1;
        /* The first parameter is the device class (62, 63, 64, 65...); only the
         * attributes after it count: "?4c" alone would be a VT132. */
        for (int k = 1; k < s->nparams; k++)
            if (s->params[k] == 4) caps->sixel = 1;
    } else if (s->prefix == '?' && s->final == 'S' && s->nparams >= 3 && s->params[1] == 0) {
        if (s->params[0] == 2 && s->nparams >= 4) {
            caps->sixel_max_w = s->params[2];
            caps->sixel_max_h = s->params[3];
        } else if (s->params[0] == 1) {
            caps->color_registers = s->params[2];
        }
    } else if (s->prefix == 0 && s->final == 't' && s->nparams >= 3 && s->params[0] == 6) {
        if (s->params[1] > 0 && s->params[2] > 0 && caps->cell_w == 0) {
            caps->cell_h = s->params[1];
            caps->cell_w = s->params[2];
        }
    }
}

static void apply_xtversion(const char *body, int n, qvl_term_caps *caps) {
    if (n < 2 || body[0] != '>' || body[1] != '|') return;
    body += 2;
    n -= 2;
    if (n >= (int)sizeof caps->version) n = (int)sizeof caps->version - 1;
    int k = 0;
    for (int i = 0; i < n; i++)
        if ((unsigned char)body[i] >= 0x20 && body[i] != 0x7f) caps->version[k++] = body[i];
    caps->version[k] = 0;
    if (!strncmp(caps->version, "tmux ", 5))
        parse_version(caps->version + 5, &caps->tmux_major, &caps->tmux_minor);
}

int qvl_term_parse_replies(const char *buf, int len, qvl_term_caps *caps) {
    int da1 = 0;
    for (int i = 0; i < len;) {
        if (buf[i] != ESC || i + 1 >= len) { i++; continue; }
        if (buf[i + 1] == '[') {
            csi_seq s;
            int next = parse_csi(buf, len, i, &s);
            if (next == 0) break;               /* wait for more bytes */
            if (next < 0) { i++; continue; }
            apply_csi(&s, caps, &da1);
            i = next;
        } else if (buf[i + 1] == 'P') {
            int body, n, next = parse_dcs(buf, len, i, &body, &n);
            if (next == 0) break;
            if (next < 0) { i++; continue; }
            apply_xtversion(buf + body, n, caps);
            i = next;
        } else {
            i++;
        }
    }
    return da1;
}

/* --- the probe ----------------------------------------------------------- */

static int write_all(int fd, const char *s, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, s, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN) { struct pollfd p = {fd, POLLOUT, 0}; poll(&p, 1, 50); continue; }
            return -1;
        }
        s += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Window size in cells, and the cell size from its pixel size when the
 * terminal fills that in (many leave ws_xpixel/ws_ypixel at 0). */
static void read_winsize(int fd, qvl_term_caps *caps) {
    struct winsize ws;
    if (ioctl(fd, TIOCGWINSZ, &ws) != 0) return;
    caps->cols = ws.ws_col;
    caps->rows = ws.ws_row;
    if (ws.ws_col > 0 && ws.ws_row > 0 && ws.ws_xpixel > 0 && ws.ws_ypixel > 0) {
        caps->cell_w = ws.ws_xpixel / ws.ws_col;
        caps->cell_h = ws.ws_ypixel / ws.ws_row;
    }
}

/* Reads replies into buf (REPLY_MAX bytes) until DA1's reply is among them or
 * the deadline passes; returns the number of bytes, or -1 on a read error. */
static int gather_replies(int fd, int timeout_ms, char *buf, char *err) {
    int len = 0;
    double deadline = qvl_now() + timeout_ms / 1000.0;
    for (;;) {
        int left = (int)((deadline - qvl_now()) * 1000.0 + 0.5);
        if (left <= 0) return len;
        struct pollfd p = {fd, POLLIN, 0};
        int r = poll(&p, 1, left);
        if (r < 0) {
            if (errno == EINTR) continue;
            qvl_seterr(err, "terminal probe: poll: %s", strerror(errno));
            return -1;
        }
        if (r == 0) return len;
        if (p.revents & POLLNVAL) {
            qvl_seterr(err, "terminal probe: fd %d is not open", fd);
            return -1;
        }
        if (len == REPLY_MAX) len = 0;  /* a flood of input: keep the tail only */
        ssize_t n = read(fd, buf + len, (size_t)(REPLY_MAX - len));
        if (n < 0) {
            if (errno == EINTR || errno == EAGAIN) continue;
            if (errno == EIO) return len;  /* hang-up: nothing more will come */
            qvl_seterr(err, "terminal probe: read: %s", strerror(errno));
            return -1;
        }
        if (n == 0) return len;
        len += (int)n;
        qvl_term_caps scratch = {0};
        if (qvl_term_parse_replies(buf, len, &scratch)) return len;
    }
}

int qvl_term_probe(int in_fd, int out_fd, int timeout_ms, qvl_term_caps *caps, char *err) {
    memset(caps, 0, sizeof *caps);
    qvl_term_caps_from_env(caps, getenv("COLORTERM"), getenv("TMUX"),
                           getenv("TERM_PROGRAM"), getenv("TERM_PROGRAM_VERSION"));
    struct termios saved, raw;
    if (tcgetattr(in_fd, &saved) != 0) {
        qvl_seterr(err, "terminal probe: fd %d is not a terminal: %s", in_fd, strerror(errno));
        return -1;
    }
    read_winsize(out_fd, caps);
    if (caps->cols == 0) read_winsize(in_fd, caps);

    /* Raw enough to read replies byte by byte without echoing them; ISIG stays
     * so that Ctrl-C still interrupts a probe that would hang. */
    raw = saved;
    raw.c_lflag &= ~(tcflag_t)(ICANON | ECHO);
    raw.c_iflag &= ~(tcflag_t)(ICRNL | IXON);
    raw.c_cc[VMIN] = 1;
    raw.c_cc[VTIME] = 0;
    if (tcsetattr(in_fd, TCSANOW, &raw) != 0) {
        qvl_seterr(err, "terminal probe: cannot set raw mode: %s", strerror(errno));
        return -1;
    }

    char query[128] = "\x1b[>0q"          /* XTVERSION */
                      "\x1b[?2;1;0S"      /* XTSMGRAPHICS: sixel geometry */
                      "\x1b[?1;1;0S";     /* XTSMGRAPHICS: colour registers */
    if (caps->cell_w == 0) strcat(query, "\x1b[16t");  /* cell size in pixels */
    strcat(query, "\x1b[c");                           /* DA1, always last */

    int rc = 0;
    char replies[REPLY_MAX];
    if (write_all(out_fd, query, strlen(query)) != 0) {
        qvl_seterr(err, "terminal probe: write: %s", strerror(errno));
        rc = -1;
    } else {
        int len = gather_replies(in_fd, timeout_ms, replies, err);
        if (len < 0) rc = -1;
        else qvl_term_parse_replies(replies, len, caps);
    }
    /* A silent terminal may still answer late: drop whatever already came. */
    if (!caps->answered) tcflush(in_fd, TCIFLUSH);
    if (tcsetattr(in_fd, TCSANOW, &saved) != 0 && rc == 0) {
        qvl_seterr(err, "terminal probe: cannot restore the terminal mode: %s", strerror(errno));
        rc = -1;
    }
    return rc;
}

int qvl_term_probe_tty(int timeout_ms, qvl_term_caps *caps, char *err) {
    int fd = open("/dev/tty", O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (fd < 0) {
        memset(caps, 0, sizeof *caps);
        qvl_seterr(err, "terminal probe: /dev/tty: %s", strerror(errno));
        return -1;
    }
    int rc = qvl_term_probe(fd, fd, timeout_ms, caps, err);
    close(fd);
    return rc;
}

/* --- picture mode ---------------------------------------------------------- */

static const char *mode_names[] = {"auto", "sixel", "blocks", "none"};

const char *qvl_images_name(qvl_images_mode mode) {
    return mode >= QVL_IMAGES_AUTO && mode <= QVL_IMAGES_NONE ? mode_names[mode] : "?";
}

int qvl_images_parse(const char *word, const char *what, qvl_images_mode *mode, char *err) {
    for (int m = QVL_IMAGES_AUTO; m <= QVL_IMAGES_NONE; m++) {
        if (word && !strcmp(word, mode_names[m])) { *mode = (qvl_images_mode)m; return 0; }
    }
    qvl_seterr(err, "%s: '%s' is not one of auto, sixel, blocks, none", what, word ? word : "");
    return -1;
}

int qvl_images_requested(const char *option, const char *env, qvl_images_mode *mode, char *err) {
    if (option) return qvl_images_parse(option, "--images", mode, err);
    if (env && *env) return qvl_images_parse(env, "QVL_IMAGES", mode, err);
    *mode = QVL_IMAGES_AUTO;
    return 0;
}

qvl_images_mode qvl_images_resolve(qvl_images_mode requested, const qvl_term_caps *caps) {
    if (requested != QVL_IMAGES_AUTO) return requested;
    /* Sixel without the cell size would reserve the wrong number of cells and
     * leave pixels behind: half blocks are always right. */
    if (caps && caps->sixel && caps->cell_w > 0 && caps->cell_h > 0) return QVL_IMAGES_SIXEL;
    return QVL_IMAGES_BLOCKS;
}

int qvl_images_choose(const char *option, const char *env, int in_fd, int out_fd,
                      int timeout_ms, qvl_term_caps *caps, qvl_images_mode *mode, char *err) {
    qvl_images_mode want;
    memset(caps, 0, sizeof *caps);
    if (qvl_images_requested(option, env, &want, err) != 0) return -1;
    if (want == QVL_IMAGES_AUTO || want == QVL_IMAGES_SIXEL) {
        /* No terminal to ask: auto falls back to blocks below; forced sixel
         * goes on with a guessed cell size. */
        if (qvl_term_probe(in_fd, out_fd, timeout_ms, caps, err) != 0 && err) err[0] = 0;
    } else {
        qvl_term_caps_from_env(caps, getenv("COLORTERM"), getenv("TMUX"),
                               getenv("TERM_PROGRAM"), getenv("TERM_PROGRAM_VERSION"));
        read_winsize(out_fd, caps);
    }
    if (want == QVL_IMAGES_SIXEL && (caps->cell_w <= 0 || caps->cell_h <= 0)) {
        caps->cell_w = DEFAULT_CELL_W;  /* forced: trust the user, guess the font */
        caps->cell_h = DEFAULT_CELL_H;
    }
    *mode = qvl_images_resolve(want, caps);
    return 0;
}
