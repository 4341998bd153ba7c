/* tmuxterm.c - driving a program in a real terminal emulator (tmux) for the
 * end-to-end tests: start it in a detached session of its own server, type
 * with send-keys, read the screen with capture-pane. */
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"
#include "testutil.h"
#include "tmuxterm.h"

void term_init(term *t, int w, int h) {
    memset(t, 0, sizeof *t);
    snprintf(t->dir, sizeof t->dir, "%s", tmp_dir("tmux"));
    snprintf(t->sock, sizeof t->sock, "%s/sock", t->dir);
    snprintf(t->log, sizeof t->log, "%s/stderr.log", t->dir);
    snprintf(t->result, sizeof t->result, "%s/result.txt", t->dir);
    t->w = w;
    t->h = h;
}

/* The tmux server daemonizes and can outlive a test that is killed on a
 * timeout, so it must not keep what the test process inherited (a lock
 * taken around `make check` with flock, say): descriptors past stderr are
 * closed on exec for every command the test starts. */
static void keep_inherited_descriptors_from_children(void) {
    for (int fd = 3; fd < 1024; fd++) {
        int flags = fcntl(fd, F_GETFD);
        if (flags >= 0 && !(flags & FD_CLOEXEC)) fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
    }
}

void term_run(term *t, const char *shell_cmd) {
    char conf[4200];
    snprintf(conf, sizeof conf, "%s/tmux.conf", t->dir);
    const char *cfg = "set -g remain-on-exit on\nset -g default-terminal tmux-256color\nset -g escape-time 0\n"
                      "set -g status off\nset -g history-limit 100\n";
    write_file(conf, cfg, strlen(cfg));
    char quoted[16384], *o = quoted;
    for (const char *p = shell_cmd; *p && o < quoted + sizeof quoted - 4; p++) {   /* inside "..." */
        if (*p == '"' || *p == '\\' || *p == '$' || *p == '`') *o++ = '\\';
        *o++ = *p;
    }
    *o = 0;
    keep_inherited_descriptors_from_children();
    int rc = sh(NULL, "tmux -S '%s' -f '%s' new-session -d -s t -x %d -y %d \"%s\"", t->sock, conf, t->w, t->h, quoted);
    ck_assert_msg(rc == 0, "tmux did not start");
}


int sh(char **out, const char *fmt, ...) {
    char cmd[16384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    char *o = NULL, *e = NULL;
    int rc = run_cmd(cmd, &o, &e);
    free(e);
    if (out) *out = o; else free(o);
    return rc;
}

char *term_screen(term *t, int escapes) {
    char *out = NULL;
    sh(&out, "tmux -S '%s' capture-pane -p %s -t t", t->sock, escapes ? "-e" : "");
    return out ? out : strdup("");
}

/* Waits until the screen shows `text`; returns the screen (caller frees). */
char *term_wait(term *t, const char *text, double timeout) {
    double end = qvl_now() + test_seconds(timeout);
    for (;;) {
        char *s = term_screen(t, 0);
        if (strstr(s, text)) return s;
        if (qvl_now() > end) {
            ck_abort_msg("timed out waiting for \"%s\"; the screen was:\n%s", text, s);
        }
        free(s);
        usleep(30000);
    }
}

char *term_wait_settled(term *t, const char *text, double timeout) {
    double end = qvl_now() + test_seconds(timeout);
    char *prev = NULL;
    for (;;) {
        char *cur = term_screen(t, 1);
        if (strstr(cur, text) && prev && !strcmp(prev, cur)) {
            free(prev);
            return cur;
        }
        if (qvl_now() > end) ck_abort_msg("timed out waiting for \"%s\" to settle; the screen was:\n%s", text, cur);
        free(prev);
        prev = cur;
        usleep(150000);
    }
}

void term_wait_free(term *t, const char *text, double timeout) { free(term_wait(t, text, timeout)); }

/* Waits until `text` is on screen row `row` (after a resize, say). */
void term_wait_row(term *t, const char *text, int row, double timeout) {
    double end = qvl_now() + test_seconds(timeout);
    for (;;) {
        char *s = term_screen(t, 0);
        int at = row_of(s, text);
        if (at == row) { free(s); return; }
        if (qvl_now() > end) ck_abort_msg("\"%s\" is on row %d, not %d; the screen was:\n%s", text, at, row, s);
        free(s);
        usleep(30000);
    }
}

void term_type(term *t, const char *text) {
    char esc[8192], *o = esc;
    for (const char *p = text; *p && o < esc + sizeof esc - 8; p++) {   /* single-quote for the shell */
        if (*p == '\'') { memcpy(o, "'\\''", 4); o += 4; }
        else *o++ = *p;
    }
    *o = 0;
    sh(NULL, "tmux -S '%s' send-keys -t t -l -- '%s'", t->sock, esc);
}

void term_keys(term *t, const char *keys) { sh(NULL, "tmux -S '%s' send-keys -t t %s", t->sock, keys); }

/* Waits for the child's result line and checks it exited as expected with the
 * terminal modes restored and nothing on stderr. */
char *term_finish(term *t, int expect_rc) {
    double end = qvl_now() + test_seconds(30);   /* sanitizer builds are slow to exit */
    struct stat st;
    while (stat(t->result, &st) != 0 || st.st_size == 0) {
        ck_assert_msg(qvl_now() < end, "the child did not exit");
        usleep(20000);
    }
    /* the process must be gone before its stderr is read: leak reports come at exit */
    for (;;) {
        char *dead = NULL;
        sh(&dead, "tmux -S '%s' display-message -p -t t '#{pane_dead}'", t->sock);
        int gone = dead && dead[0] == '1';
        free(dead);
        if (gone) break;
        ck_assert_msg(qvl_now() < end, "the child did not end");
        usleep(20000);
    }
    char *res = slurp(t->result, NULL);
    char want[32];
    snprintf(want, sizeof want, "rc=%d restored=1", expect_rc);
    ck_assert_msg(strstr(res, want) != NULL, "child result: %s", res);
    char *log = slurp(t->log, NULL);
    ck_assert_msg(strstr(log, "Sanitizer") == NULL && strstr(log, "runtime error") == NULL,
                  "child stderr: %s", log);
    free(log);
    return res;
}

void term_stop(term *t) { sh(NULL, "tmux -S '%s' kill-server", t->sock); }

/* The screen row (0-based) holding `text`, or -1. */
int row_of(const char *screen, const char *text) {
    int row = 0;
    for (const char *line = screen; *line; row++) {
        const char *nl = strchr(line, '\n');
        size_t len = nl ? (size_t)(nl - line) : strlen(line);
        char *copy = strndup(line, len);
        int hit = strstr(copy, text) != NULL;
        free(copy);
        if (hit) return row;
        if (!nl) break;
        line = nl + 1;
    }
    return -1;
}

