/* lineui.c - the line mode: readline prompt, streamed replies (see lineui.h).
 *
 * The same model thread as the full-screen chat (src/worker.h), driven from
 * readline's callback interface so that one poll() serves the keyboard, the
 * worker's events and Ctrl-C.  The prompt is only installed while the model is
 * idle; while a reply streams, the terminal is in its normal mode, so Ctrl-C
 * raises SIGINT, which a self-pipe turns into worker_cancel() in the loop.
 * Output that arrives while the prompt shows (notices) is printed above it. */
#include "lineui.h"

#include <errno.h>
#include <fcntl.h>
#include <langinfo.h>
#include <locale.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <readline/history.h>
#include <readline/readline.h>

#include "blocks.h"
#include "commands.h"
#include "common.h"
#include "complete.h"
#include "image.h"
#include "sixel.h"
#include "term.h"
#include "worker.h"

#define PROMPT "> "
#define PICTURE_MAX_COLS 60
#define PICTURE_MAX_ROWS 16

typedef struct {
    worker *w;
    qvl_images_mode mode;
    qvl_term_caps caps;
    int tty;                    /* stdout is a terminal: colours and \r progress */
    int prompt_on, busy, quit, loaded, failed, in_reasoning;
    int multiline;              /* inside a """ block */
    char *ml;                   /* its text so far */
    char **attach;
    int nattach;
    char err[QVL_ERR_MAX];
} lineui;

static lineui *current;         /* readline's callback has no context pointer */
static int sig_pipe[2] = { -1, -1 };

static void on_sigint(int sig) {
    (void)sig;
    char b = 1;
    if (write(sig_pipe[1], &b, 1) < 0) { /* already pending */ }
}

/* Tab: file names after "/image ", nothing elsewhere. */
static char **complete_line(const char *text, int start, int end) {
    (void)end;
    rl_attempted_completion_over = 1;
    if (start >= 7 && !strncmp(rl_line_buffer, "/image ", 7))
        return rl_completion_matches(text, rl_filename_completion_function);
    return NULL;
}

/* Prints a whole line of output above the prompt, if the prompt shows. */
static void say(lineui *L, const char *color, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void say(lineui *L, const char *color, const char *fmt, ...) {
    char *saved = NULL;
    int point = 0;
    if (L->prompt_on) {
        saved = rl_copy_text(0, rl_end);
        point = rl_point;
        rl_save_prompt();
        rl_replace_line("", 0);
        rl_redisplay();
        fputs("\r\033[K", stdout);
    }
    va_list ap;
    va_start(ap, fmt);
    if (L->tty && color) fputs(color, stdout);
    vprintf(fmt, ap);
    if (L->tty && color) fputs("\033[0m", stdout);
    fputc('\n', stdout);
    va_end(ap);
    if (L->prompt_on) {
        rl_restore_prompt();
        rl_replace_line(saved ? saved : "", 0);
        rl_point = point;
        rl_forced_update_display();
    }
    free(saved);
    fflush(stdout);
}

/* ------------------------------------------------------------ pictures */

static void terminal_cols(int *cols) {
    struct winsize ws;
    *cols = ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0 ? ws.ws_col : 80;
}

static void print_picture(lineui *L, const char *path) {
    char err[QVL_ERR_MAX], buf[600];
    qvl_image img = { 0 };
    if (image_load_file(path, QVL_ALPHA_WHITE, &img, err) != 0) { say(L, "\033[31m", "%s", err); return; }
    int cols;
    terminal_cols(&cols);
    cols = cols - 2 < PICTURE_MAX_COLS ? cols - 2 : PICTURE_MAX_COLS;
    if (cols < 1) cols = 1;
    if (L->mode == QVL_IMAGES_SIXEL) {
        qvl_sixel sx = { 0 };
        qvl_sixel_box box = { .cell_w = L->caps.cell_w, .cell_h = L->caps.cell_h, .max_cols = cols,
                              .max_rows = PICTURE_MAX_ROWS, .max_px_w = L->caps.sixel_max_w,
                              .max_px_h = L->caps.sixel_max_h };
        if (qvl_sixel_encode(img.rgb, img.width, img.height, &box, &sx, err) == 0) {
            fwrite(sx.data, 1, sx.len, stdout);
            fputc('\n', stdout);
        }
        qvl_sixel_free(&sx);
    } else if (L->mode == QVL_IMAGES_BLOCKS) {
        qvl_blocks b;
        if (qvl_blocks_make(img.rgb, img.width, img.height, cols, PICTURE_MAX_ROWS, 0, &b, err) == 0) {
            char **lines = qvl_blocks_lines(&b, L->caps.truecolor, err);
            for (int r = 0; lines && r < b.rows; r++) printf("  %s\n", lines[r]);
            qvl_blocks_lines_free(lines, b.rows);
            qvl_blocks_free(&b);
        }
    }
    qvl_image_placeholder(path, img.width, img.height, buf, sizeof buf);
    say(L, "\033[2m", "%s", buf);
    image_free(&img);
}

/* ------------------------------------------------------------ input */

static void free_attachments(lineui *L) {
    for (int i = 0; i < L->nattach; i++) free(L->attach[i]);
    free(L->attach);
    L->attach = NULL;
    L->nattach = 0;
}

static void add_attachment(lineui *L, const char *path) {
    char **a = realloc(L->attach, (size_t)(L->nattach + 1) * sizeof *a);
    if (!a) return;
    L->attach = a;
    L->attach[L->nattach++] = strdup(path);
    print_picture(L, path);
}

static void on_line(char *line);

static void show_prompt(lineui *L) {
    if (L->prompt_on || L->quit) return;
    rl_callback_handler_install(L->multiline ? "... " : PROMPT, on_line);
    L->prompt_on = 1;
}

static void hide_prompt(lineui *L) {
    if (!L->prompt_on) return;
    rl_callback_handler_remove();
    L->prompt_on = 0;
}

static void send_text(lineui *L, const char *text) {
    int np = L->nattach + 1;
    qvl_part *parts = calloc((size_t)np, sizeof *parts);
    if (!parts) return;
    for (int i = 0; i < L->nattach; i++) parts[i].image_path = L->attach[i];
    parts[L->nattach].text = text;
    if (worker_send(L->w, parts, np) == 0) L->busy = 1;
    free(parts);
    free_attachments(L);
    L->in_reasoning = 0;
}

static void run_command(lineui *L, qvl_command *c) {
    switch (c->kind) {
    case CMD_IMAGE: {
        qvl_image probe;
        char err[QVL_ERR_MAX];
        if (image_load_file(c->arg, QVL_ALPHA_WHITE, &probe, err) != 0) { say(L, "\033[31m", "%s", err); break; }
        image_free(&probe);
        add_attachment(L, c->arg);
        break;
    }
    case CMD_SYSTEM: worker_set_system(L->w, c->arg ? c->arg : ""); break;
    case CMD_CLEAR: worker_clear(L->w); free_attachments(L); break;
    case CMD_SET: worker_set_param(L->w, c->arg, c->value); break;
    case CMD_SAVE: worker_save(L->w, c->arg); break;
    case CMD_LOAD: L->busy = 1; worker_load(L->w, c->arg); break;
    case CMD_STATS: worker_request_stats(L->w); break;
    case CMD_HELP: say(L, NULL, "%s", command_help()); break;
    case CMD_QUIT: L->quit = 1; break;
    }
}

static void handle_line(lineui *L, char *line) {
    if (!strcmp(line, "\"\"\"")) {                 /* """ starts and ends a multi-line message */
        if (!L->multiline) { L->multiline = 1; free(L->ml); L->ml = strdup(""); return; }
        L->multiline = 0;
        if (L->ml && *L->ml) send_text(L, L->ml);
        free(L->ml);
        L->ml = NULL;
        return;
    }
    if (L->multiline) {
        size_t a = strlen(L->ml), b = strlen(line);
        char *m = realloc(L->ml, a + b + 2);
        if (!m) return;
        if (a) m[a++] = '\n';
        memcpy(m + a, line, b + 1);
        L->ml = m;
        return;
    }
    char err[QVL_ERR_MAX] = "";
    qvl_command cmd;
    char *pasted;
    int rc;
    if ((pasted = pasted_image_path(line)) != NULL) { add_attachment(L, pasted); free(pasted); }
    else if ((rc = command_parse(line, &cmd, err)) < 0) say(L, "\033[31m", "%s", err);
    else if (rc > 0) { run_command(L, &cmd); command_free(&cmd); }
    else if (*line || L->nattach) send_text(L, command_message(line));
}

static void on_line(char *line) {
    lineui *L = current;
    if (!line) {                                    /* Ctrl-D */
        hide_prompt(L);
        fputc('\n', stdout);
        L->quit = 1;
        return;
    }
    if (*line) add_history(line);
    hide_prompt(L);
    handle_line(L, line);
    free(line);
}

/* ------------------------------------------------------------ events */

static void on_event(lineui *L, worker_event *ev) {
    switch (ev->kind) {
    case WEV_STATE:
        if (L->tty && !L->loaded && ev->state == QVL_STATE_LOADING) {
            fprintf(stderr, "\rloading %d%%", (int)(ev->fraction * 100 + 0.5));
            fflush(stderr);
        }
        break;
    case WEV_READY:
        L->loaded = 1;
        if (L->tty) fputs("\r\033[K", stderr);
        say(L, "\033[2m", "%s ready: context %d tokens; /help for commands", ev->stats.model_name, ev->stats.ctx_total);
        break;
    case WEV_LOAD_FAILED:
        snprintf(L->err, sizeof L->err, "%s", ev->text ? ev->text : "the model could not be loaded");
        L->failed = L->quit = 1;
        break;
    case WEV_TOKEN:
        if (L->tty && ev->reasoning != L->in_reasoning) fputs(ev->reasoning ? "\033[2m" : "\033[0m\n", stdout);
        L->in_reasoning = ev->reasoning;
        fputs(ev->text ? ev->text : "", stdout);
        fflush(stdout);
        break;
    case WEV_DONE:
        if (L->tty && L->in_reasoning) fputs("\033[0m", stdout);
        L->in_reasoning = 0;
        fputc('\n', stdout);
        if (!strcmp(ev->finish, "cancelled")) say(L, "\033[2m", "[stopped]");
        else if (!strcmp(ev->finish, "length")) say(L, "\033[2m", "[length limit]");
        L->busy = 0;
        break;
    case WEV_SEND_FAILED: say(L, "\033[31m", "%s", ev->text ? ev->text : "not sent"); L->busy = 0; break;
    case WEV_DROPPED: break;
    case WEV_NOTICE: say(L, "\033[33m", "%s", ev->text ? ev->text : ""); break;
    case WEV_ERROR: say(L, "\033[31m", "%s", ev->text ? ev->text : "error"); L->busy = 0; break;
    case WEV_CLEARED: say(L, "\033[2m", "new conversation"); break;
    case WEV_MESSAGE:
        if (ev->image) say(L, "\033[2m", "[image: %s]", ev->image);
        say(L, !strcmp(ev->role, "user") ? "\033[36;1m" : NULL, "%s%s", !strcmp(ev->role, "user") ? "> " : "",
            ev->text ? ev->text : "");
        break;
    case WEV_STATS:
        if (L->busy) { L->busy = 0; break; }         /* the end of /load */
        say(L, "\033[2m", "%s (%s): context %d/%d tokens, %d turns, last reply %.1f tok/s", ev->stats.model_name,
            ev->stats.precision, ev->stats.ctx_used, ev->stats.ctx_total, ev->stats.turns,
            ev->stats.last_decode_tok_s);
        break;
    }
}

/* ------------------------------------------------------------ the loop */

static void use_utf8_locale(void) {
    setlocale(LC_CTYPE, "");
    const char *cs = nl_langinfo(CODESET);
    if (!cs || strcmp(cs, "UTF-8")) setlocale(LC_CTYPE, "C.UTF-8");
}

static void drain(int fd) {
    char buf[64];
    while (read(fd, buf, sizeof buf) > 0) {}
}

int lineui_run(const qvl_session_opts *so, const tui_opts *to, char *err) {
    tui_opts none = { 0 };
    if (!to) to = &none;
    lineui L;
    memset(&L, 0, sizeof L);
    use_utf8_locale();
    L.tty = isatty(STDOUT_FILENO);
    if (qvl_images_choose(to->images, getenv("QVL_IMAGES"), STDIN_FILENO, STDOUT_FILENO,
                          to->probe_ms > 0 ? to->probe_ms : QVL_TERM_PROBE_MS, &L.caps, &L.mode, err) != 0)
        return 1;
    if (!L.tty) L.mode = QVL_IMAGES_NONE;            /* not a terminal: names only */
    if (L.mode == QVL_IMAGES_SIXEL && (L.caps.cell_w <= 0 || L.caps.cell_h <= 0)) L.mode = QVL_IMAGES_BLOCKS;
    if (pipe2(sig_pipe, O_NONBLOCK | O_CLOEXEC) != 0) { qvl_seterr(err, "cannot create a pipe: %s", strerror(errno)); return 1; }
    L.w = worker_start(so, err);
    if (!L.w) { close(sig_pipe[0]); close(sig_pipe[1]); return 1; }
    current = &L;
    struct sigaction sa, old_int;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    rl_catch_signals = 0;
    rl_attempted_completion_function = complete_line;
    rl_readline_name = "qvl";
    for (int i = 0; i < to->nattach; i++) add_attachment(&L, to->attach[i]);
    while (!L.quit) {
        if (L.loaded && !L.busy) show_prompt(&L);
        struct pollfd fds[3] = { { STDIN_FILENO, L.prompt_on ? POLLIN : 0, 0 },
                                 { worker_fd(L.w), POLLIN, 0 }, { sig_pipe[0], POLLIN, 0 } };
        if (poll(fds, 3, -1) < 0 && errno != EINTR) break;
        if (fds[2].revents & POLLIN) {
            drain(sig_pipe[0]);
            if (L.busy) worker_cancel(L.w);
            else if (L.prompt_on) { rl_replace_line("", 0); fputs("^C\n", stdout); rl_on_new_line(); rl_redisplay(); }
            else if (!L.loaded) L.quit = 1;          /* Ctrl-C while loading: leave */
        }
        worker_event ev;
        while (worker_next_event(L.w, &ev)) { on_event(&L, &ev); worker_event_free(&ev); }
        if (L.prompt_on && (fds[0].revents & (POLLIN | POLLHUP))) rl_callback_read_char();
    }
    hide_prompt(&L);
    worker_stop(L.w);
    sigaction(SIGINT, &old_int, NULL);
    close(sig_pipe[0]);
    close(sig_pipe[1]);
    sig_pipe[0] = sig_pipe[1] = -1;
    free_attachments(&L);
    free(L.ml);
    current = NULL;
    clear_history();
    if (L.failed) { qvl_seterr(err, "%s", L.err); return 1; }
    return 0;
}
