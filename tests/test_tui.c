/* test_tui.c - the interactive chat: model thread, Markdown layout, input
 * helpers, and the real TUI and line mode driven in a terminal.
 *
 * The terminal is tmux (a real terminal emulator we can read back): this very
 * program is started inside a detached tmux session in "child" mode, where it
 * runs tui_run()/lineui_run() against tests/fake_session.c; the test sends keys
 * with send-keys and reads the screen with capture-pane.  The child writes its
 * exit code and whether the terminal modes came back unchanged to a result
 * file, and its stderr (sanitizer reports included) to a log that must stay
 * empty.  Each tmux server has its own socket, so tests never meet. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"
#include "tmuxterm.h"
#include "common.h"
#include "complete.h"
#include "lineui.h"
#include "markdown.h"
#include "tui.h"
#include "worker.h"

static const char *self_exe;

/* ================================================================ markdown */

static int count_lines(const char *text, int width, int md, md_lines *out) {
    memset(out, 0, sizeof *out);
    ck_assert_int_eq(md_layout(text, width, md, 0, out), 0);
    return out->n;
}

START_TEST(md_wraps_at_words) {
    md_lines l;
    ck_assert_int_eq(count_lines("the quick brown fox", 10, 0, &l), 2);
    ck_assert_str_eq(l.lines[0].text, "the quick");
    ck_assert_str_eq(l.lines[1].text, "brown fox");
    ck_assert_int_eq(l.lines[0].width, 9);
    md_lines_free(&l);
    /* a word longer than the width is cut */
    ck_assert_int_eq(count_lines("abcdefghij", 4, 0, &l), 3);
    ck_assert_str_eq(l.lines[2].text, "ij");
    md_lines_free(&l);
    /* newlines separate lines; an empty line stays */
    ck_assert_int_eq(count_lines("a\n\nb", 10, 0, &l), 3);
    ck_assert_str_eq(l.lines[1].text, "");
    md_lines_free(&l);
}
END_TEST

START_TEST(md_styles) {
    md_lines l;
    ck_assert_int_eq(count_lines("a **b** `c`", 40, 1, &l), 1);
    ck_assert_str_eq(l.lines[0].text, "a b c");
    ck_assert_int_eq(l.lines[0].style[0], MD_PLAIN);
    ck_assert_int_eq(l.lines[0].style[2], MD_BOLD);
    ck_assert_int_eq(l.lines[0].style[4], MD_CODE);
    md_lines_free(&l);
    /* fenced block: markers kept (fence style), content verbatim, ** untouched */
    ck_assert_int_eq(count_lines("x\n```c\nint **p;\n```\ny", 40, 1, &l), 5);
    ck_assert_str_eq(l.lines[1].text, "```c");
    ck_assert_int_eq(l.lines[1].style[0], MD_FENCE);
    ck_assert_str_eq(l.lines[2].text, "int **p;");
    ck_assert_int_eq(l.lines[2].style[0], MD_BLOCK);
    ck_assert_int_eq(l.lines[4].style[0], MD_PLAIN);
    md_lines_free(&l);
    /* an unmatched marker does not leak into the next line */
    ck_assert_int_eq(count_lines("**open\nplain", 40, 1, &l), 2);
    ck_assert_int_eq(l.lines[1].style[0], MD_PLAIN);
    md_lines_free(&l);
    /* headings are bold without their hashes; plain mode keeps everything */
    ck_assert_int_eq(count_lines("## Title", 40, 1, &l), 1);
    ck_assert_str_eq(l.lines[0].text, "Title");
    ck_assert_int_eq(l.lines[0].style[0], MD_BOLD);
    md_lines_free(&l);
    ck_assert_int_eq(count_lines("**x**", 40, 0, &l), 1);
    ck_assert_str_eq(l.lines[0].text, "**x**");
    md_lines_free(&l);
}
END_TEST

START_TEST(md_wide_and_control_chars) {
    /* CJK takes two cells: 5 ideographs are 10 cells, 4 fit in 9 */
    md_lines l;
    ck_assert_int_eq(count_lines("\xE4\xBD\xA0\xE5\xA5\xBD\xE4\xB8\x96\xE7\x95\x8C\xE5\x95\x8A", 9, 0, &l), 2);
    ck_assert_int_eq(l.lines[0].width, 8);
    ck_assert_int_eq(l.lines[1].width, 2);
    md_lines_free(&l);
    ck_assert_int_eq(md_char_width(0x1F600), 2);   /* emoji */
    ck_assert_int_eq(md_char_width(0x0301), 0);    /* combining acute */
    ck_assert_int_eq(md_char_width('a'), 1);
    /* ESC never reaches the terminal; a tab is spaces; bad UTF-8 is U+FFFD */
    ck_assert_int_eq(count_lines("a\033[31mb\tc\xFF", 40, 0, &l), 1);
    ck_assert_str_eq(l.lines[0].text, "a[31mb    c\xEF\xBF\xBD");
    md_lines_free(&l);
}
END_TEST

/* ================================================================ input helpers */

START_TEST(paths_pasted_and_completed) {
    const char *dir = tmp_dir("complete");
    char path[4096], quoted[4200], url[4200];
    snprintf(path, sizeof path, "%s/my pic.png", dir);
    write_file(path, "x", 1);
    snprintf(quoted, sizeof quoted, "  '%s'\n", path);
    char *p = pasted_image_path(quoted);
    ck_assert_ptr_nonnull(p);
    ck_assert_str_eq(p, path);
    free(p);
    snprintf(url, sizeof url, "file://%s/my%%20pic.png", dir);
    p = pasted_image_path(url);
    ck_assert_ptr_nonnull(p);
    ck_assert_str_eq(p, path);
    free(p);
    snprintf(quoted, sizeof quoted, "%s/my\\ pic.png", dir);
    p = pasted_image_path(quoted);
    ck_assert_ptr_nonnull(p);
    free(p);
    ck_assert_ptr_null(pasted_image_path("hello world"));
    snprintf(quoted, sizeof quoted, "%s/none.png", dir);
    ck_assert_ptr_null(pasted_image_path(quoted));            /* must exist */
    /* completion: unique prefix completes, ambiguous lists */
    char sub[4096];
    snprintf(sub, sizeof sub, "%s/my pic2.jpg", dir);
    write_file(sub, "x", 1);
    snprintf(sub, sizeof sub, "%s/other.png", dir);
    write_file(sub, "x", 1);
    path_completion c;
    snprintf(quoted, sizeof quoted, "%s/o", dir);
    ck_assert_int_eq(complete_path(quoted, &c), 0);
    ck_assert_str_eq(c.completed, sub);
    path_completion_free(&c);
    snprintf(quoted, sizeof quoted, "%s/m", dir);
    ck_assert_int_eq(complete_path(quoted, &c), 0);
    ck_assert_int_eq(c.nmatches, 2);
    snprintf(sub, sizeof sub, "%s/my pic", dir);
    ck_assert_str_eq(c.completed, sub);
    path_completion_free(&c);
    snprintf(quoted, sizeof quoted, "%s/zz", dir);
    ck_assert_int_eq(complete_path(quoted, &c), -1);
}
END_TEST

/* ================================================================ the worker */

typedef struct {
    char text[8192];
    int tokens, done, ready, load_failed, dropped, send_failed, cleared, errors, notices;
    char finish[16];
    char last_error[QVL_ERR_MAX];
    qvl_session_stats stats;
} collected;

static void collect(worker *w, collected *c, int until_done, double timeout) {
    double end = qvl_now() + test_seconds(timeout);
    int target = c->done + until_done;
    while (qvl_now() < end) {
        worker_event ev;
        while (worker_next_event(w, &ev)) {
            switch (ev.kind) {
            case WEV_TOKEN:
                c->tokens++;
                strncat(c->text, ev.text, sizeof c->text - strlen(c->text) - 1);
                break;
            case WEV_DONE: c->done++; snprintf(c->finish, sizeof c->finish, "%s", ev.info.finish_reason); c->stats = ev.stats; break;
            case WEV_READY: c->ready++; c->stats = ev.stats; break;
            case WEV_LOAD_FAILED: c->load_failed++; snprintf(c->last_error, sizeof c->last_error, "%s", ev.text); break;
            case WEV_DROPPED: c->dropped++; break;
            case WEV_SEND_FAILED: c->send_failed++; snprintf(c->last_error, sizeof c->last_error, "%s", ev.text); break;
            case WEV_CLEARED: c->cleared++; break;
            case WEV_ERROR: c->errors++; snprintf(c->last_error, sizeof c->last_error, "%s", ev.text); break;
            case WEV_NOTICE: c->notices++; break;
            case WEV_STATS: c->stats = ev.stats; break;
            default: break;
            }
            worker_event_free(&ev);
        }
        if (until_done ? c->done >= target : (c->ready || c->load_failed)) return;
        usleep(2000);
    }
}

static worker *start_fake(const char *dir, qvl_source *src) {
    *src = (qvl_source){ .dir = dir, .label = dir };
    qvl_session_opts o = { .model = src, .ctx = 4096 };
    char err[QVL_ERR_MAX];
    worker *w = worker_start(&o, err);
    ck_assert_msg(w != NULL, "%s", err);
    return w;
}

START_TEST(worker_streams_a_reply) {
    setenv("QVL_FAKE_TOKEN_MS", "1", 1);
    setenv("QVL_FAKE_LOAD_MS", "20", 1);
    qvl_source src;
    worker *w = start_fake("fake", &src);
    collected c = { 0 };
    qvl_part parts[1] = { { .text = "hi" } };
    ck_assert_int_eq(worker_send(w, parts, 1), 0);          /* queued while loading */
    collect(w, &c, 1, 10);
    ck_assert_int_eq(c.ready, 1);
    ck_assert_int_eq(c.done, 1);
    ck_assert_str_eq(c.finish, "stop");
    ck_assert_ptr_nonnull(strstr(c.text, "You said: hi."));
    ck_assert_int_gt(c.tokens, 5);
    ck_assert_int_eq(c.stats.turns, 1);
    /* two more in a row come back in order */
    memset(c.text, 0, sizeof c.text);
    parts[0].text = "one";
    worker_send(w, parts, 1);
    parts[0].text = "two";
    worker_send(w, parts, 1);
    collect(w, &c, 2, 10);
    char *one = strstr(c.text, "You said: one."), *two = strstr(c.text, "You said: two.");
    ck_assert(one && two && one < two);
    /* a bad image is refused without a reply */
    qvl_part img[2] = { { .image_path = "/nonexistent.png" }, { .text = "x" } };
    worker_send(w, img, 2);
    worker_request_stats(w);
    double end = qvl_now() + test_seconds(5);
    while (!c.send_failed && qvl_now() < end) collect(w, &c, 0, 0.05);
    ck_assert_int_eq(c.send_failed, 1);
    ck_assert_ptr_nonnull(strstr(c.last_error, "/nonexistent.png"));
    worker_stop(w);
}
END_TEST

START_TEST(worker_cancels_promptly) {
    setenv("QVL_FAKE_TOKEN_MS", "20", 1);
    setenv("QVL_FAKE_LOAD_MS", "0", 1);
    qvl_source src;
    worker *w = start_fake("fake", &src);
    collected c = { 0 };
    collect(w, &c, 0, 5);
    qvl_part parts[1] = { { .text = "a long one" } };
    worker_send(w, parts, 1);
    worker_send(w, parts, 1);                               /* queued behind: dropped by cancel */
    double end = qvl_now() + test_seconds(5);
    while (c.tokens < 5 && qvl_now() < end) collect(w, &c, 0, 0.01);
    double t0 = qvl_now();
    worker_cancel(w);
    collect(w, &c, 1, 5);
    double took = qvl_now() - t0;
    ck_assert_str_eq(c.finish, "cancelled");
    ck_assert_msg(took < test_seconds(0.2), "cancel took %.3f s", took);  /* one 20 ms step, plus scheduling */
    ck_assert_int_lt(c.tokens, 400 / 3);
    end = qvl_now() + test_seconds(1);
    while (!c.dropped && qvl_now() < end) collect(w, &c, 0, 0.01);
    ck_assert_int_eq(c.dropped, 1);
    /* the conversation goes on */
    memset(c.text, 0, sizeof c.text);
    parts[0].text = "next";
    setenv("QVL_FAKE_TOKEN_MS", "1", 1);
    worker_send(w, parts, 1);
    collect(w, &c, 1, 10);
    ck_assert_str_eq(c.finish, "stop");
    ck_assert_ptr_nonnull(strstr(c.text, "You said: next."));
    ck_assert_int_eq(c.stats.turns, 2);
    /* stop while a reply streams: returns promptly */
    parts[0].text = "long again";
    worker_send(w, parts, 1);
    usleep(50000);
    worker_stop(w);
}
END_TEST

START_TEST(worker_commands_and_load_failure) {
    setenv("QVL_FAKE_TOKEN_MS", "1", 1);
    setenv("QVL_FAKE_LOAD_MS", "0", 1);
    qvl_source src;
    worker *w = start_fake("fake", &src);
    collected c = { 0 };
    qvl_part parts[1] = { { .text = "hello" } };
    worker_send(w, parts, 1);
    collect(w, &c, 1, 10);
    char path[4096];
    snprintf(path, sizeof path, "%s/conv.jsonl", tmp_dir("worker"));
    worker_save(w, path);
    worker_clear(w);
    worker_set_param(w, "bogus", "1");
    worker_load(w, path);
    worker_request_stats(w);
    double end = qvl_now() + test_seconds(5);
    while ((c.cleared < 2 || c.errors < 1 || c.stats.turns != 1 || c.notices < 2) && qvl_now() < end)
        collect(w, &c, 0, 0.01);
    ck_assert_int_eq(c.cleared, 2);                          /* /clear and the /load */
    ck_assert_int_eq(c.errors, 1);
    ck_assert_ptr_nonnull(strstr(c.last_error, "bogus"));
    ck_assert_int_eq(c.stats.turns, 1);
    worker_stop(w);
    /* a model that cannot load says so, and the worker still stops cleanly */
    collected f = { 0 };
    w = start_fake("/nowhere/missing", &src);
    collect(w, &f, 0, 5);
    ck_assert_int_eq(f.load_failed, 1);
    ck_assert_ptr_nonnull(strstr(f.last_error, "missing"));
    worker_stop(w);
}
END_TEST

/* ================================================================ tmux */

/* Starts the child (mode "tui" or "line") in a w x h tmux window. */
static void term_start(term *t, const char *mode, const char *model, const char *images, int w, int h,
                       const char *token_ms) {
    char cmd[16384];
    term_init(t, w, h);
    snprintf(cmd, sizeof cmd,
        "env LANG=C.UTF-8 COLORTERM=truecolor QVL_IMAGES=%s QVL_FAKE_TOKEN_MS=%s QVL_FAKE_LOAD_MS=50 "
        "QVL_CHILD_MODE=%s QVL_CHILD_MODEL='%s' QVL_CHILD_RESULT='%s' '%s' --child 2>'%s'",
        images, token_ms, mode, model, t->result, self_exe, t->log);
    term_run(t, cmd);
}

/* ================================================================ the TUI */

START_TEST(tui_question_answer_and_quit) {
    term t;
    term_start(&t, "tui", "fake", "blocks", 80, 24, "5");
    term_wait_free(&t, "fake-model | idle", 10);
    term_type(&t, "hello there");
    term_keys(&t, "Enter");
    char *s = term_wait(&t, "Done.", 10);
    ck_assert_ptr_nonnull(strstr(s, "> hello there"));
    ck_assert_ptr_nonnull(strstr(s, "You said: hello there."));
    ck_assert_ptr_nonnull(strstr(s, "Here is bold and code:"));      /* Markdown markers gone */
    ck_assert_ptr_nonnull(strstr(s, "int x = 1;"));
    ck_assert_ptr_null(strstr(s, "**"));
    /* the answer sits below the question */
    ck_assert_int_lt(row_of(s, "> hello there"), row_of(s, "You said"));
    free(s);
    term_wait_free(&t, "tok/s", 5);
    /* bold and the code block carry their attributes */
    s = term_screen(&t, 1);
    ck_assert_ptr_nonnull(strstr(s, "\033[1mbold"));
    free(s);
    term_type(&t, "/quit");
    term_keys(&t, "Enter");
    free(term_finish(&t, 0));
    /* the alternate screen is gone: the transcript no longer shows */
    s = term_screen(&t, 0);
    ck_assert_ptr_null(strstr(s, "You said"));
    free(s);
    term_stop(&t);
}
END_TEST

START_TEST(tui_image_half_blocks) {
    const char *img = data_path("images/a_80x60.png");
    struct stat st;
    ck_assert_int_eq(stat(img, &st), 0);
    term t;
    term_start(&t, "tui", "fake", "auto", 80, 24, "2");  /* tmux 3.3 has no sixel: auto means blocks */
    term_wait_free(&t, "| idle", 10);
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "/image %s", img);
    term_type(&t, cmd);
    term_keys(&t, "Enter");
    char *s = term_wait(&t, "[image: a_80x60.png 80x60]", 10);
    free(s);
    /* 80x60 in a 78-cell wide, 16-row (32 half-pixel) box: height bound,
     * 32 px tall and 80*32/60 = 42.7 -> 43 px (cells) wide */
    s = term_wait_settled(&t, "\xE2\x96\x80", 10);
    int rows = 0, first_row = -1, row = 0;
    for (char *line = s; line && *line; row++) {
        char *nl = strchr(line, '\n');
        if (nl) *nl = 0;
        int cells = 0;
        for (char *p = line; (p = strstr(p, "\xE2\x96\x80")) != NULL; p += 3) cells++;
        if (cells) {
            if (first_row < 0) first_row = row;
            rows++;
            ck_assert_msg(cells == 43, "row %d has %d half blocks", row, cells);
            ck_assert_ptr_nonnull(strstr(line, "38;2;"));           /* 24-bit colour (COLORTERM) */
        }
        line = nl ? nl + 1 : NULL;
    }
    ck_assert_int_eq(rows, 16);
    free(s);
    s = term_screen(&t, 0);
    ck_assert_int_eq(row_of(s, "[image: a_80x60.png"), first_row + 16);  /* caption right under it */
    ck_assert_ptr_nonnull(strstr(s, "+1 image"));
    free(s);
    /* ask about it: the picture goes with the message */
    term_type(&t, "what is it");
    term_keys(&t, "Enter");
    char want[128];
    snprintf(want, sizeof want, "Image 1 is %lld bytes.", (long long)st.st_size);
    term_wait_free(&t, want, 10);
    term_wait_free(&t, "Done.", 10);                         /* now the transcript is taller than the screen */
    /* scroll up over the picture and back: the screen keeps no debris */
    term_keys(&t, "PPage");
    term_wait_free(&t, "scrolled", 5);
    term_keys(&t, "NPage");
    s = term_wait_settled(&t, "Done.", 10);
    rows = 0;
    for (char *p = s; (p = strstr(p, "\xE2\x96\x80")) != NULL; p += 3) rows++;
    ck_assert_msg(rows % 43 == 0, "%d half blocks on screen: a partial row remained", rows);
    free(s);
    term_keys(&t, "C-d");
    free(term_finish(&t, 0));
    term_stop(&t);
}
END_TEST

/* Forced sixel (tmux 3.3 cannot show it, but we can read what was sent): the
 * picture goes out as one DCS string at the cell where its rows start, those
 * rows stay blank for curses, and scrolling it away overwrites them with spaces. */
START_TEST(tui_image_sixel_stream) {
    term t;
    term_start(&t, "tui", "fake", "sixel", 80, 24, "5");
    char raw[4300];
    snprintf(raw, sizeof raw, "%s/out.raw", t.dir);
    sh(NULL, "tmux -S '%s' pipe-pane -o -t t \"cat > '%s'\"", t.sock, raw);
    term_wait_free(&t, "| idle", 10);
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "/image %s", data_path("images/a_80x60.png"));
    term_type(&t, cmd);
    term_keys(&t, "Enter");
    /* 80x60 px fits the box unscaled; it covers ceil(60 / cell height) rows,
     * 2 or 3 for the cells tmux may report (16x32 px, or qvl's 10x20 guess) */
    char *s = term_wait(&t, "[image: a_80x60.png 80x60]", 10);
    int caption = row_of(s, "[image: a_80x60.png");
    ck_assert_msg(caption == 2 || caption == 3, "caption on row %d", caption);
    ck_assert_int_eq(row_of(s, "\xE2\x96\x80"), -1);               /* no half blocks */
    free(s);
    size_t len;
    char *out = NULL, *dcs = NULL, *st = NULL;
    /* drawn after refresh; the pipe may hold the sequence's start before its
     * end, so wait for the string terminator too */
    for (double end = qvl_now() + test_seconds(10); !st && qvl_now() < end; usleep(50000)) {
        free(out);
        out = slurp(raw, &len);
        dcs = memmem(out, len, "\033[1;3H\033P", 8);               /* CUP row 1, column 3, then DCS */
        st = dcs ? memmem(dcs, (size_t)(out + len - dcs), "\033\\", 2) : NULL;
    }
    ck_assert_msg(dcs != NULL, "no sixel at row 1 column 3");
    ck_assert_msg(st != NULL, "the sixel at row 1 column 3 has no string terminator");
    char *q = memchr(dcs + 8, 'q', (size_t)(st - dcs - 8));
    ck_assert(q && q < st);
    free(out);
    /* push it off the screen: its cells are cleared with spaces */
    term_type(&t, "a long one");
    term_keys(&t, "Enter");
    term_wait_free(&t, "w340 ", 10);                        /* about 20 rows of reply: scrolled */
    term_keys(&t, "Escape");
    term_wait_free(&t, "[stopped]", 5);
    out = slurp(raw, &len);
    ck_assert_msg(memmem(out, len, "\033[1;3H  ", 8) != NULL, "the picture's cells were not cleared");
    free(out);
    term_keys(&t, "C-d");
    free(term_finish(&t, 0));
    term_stop(&t);
}
END_TEST

START_TEST(tui_cancel_keeps_partial_reply) {
    term t;
    term_start(&t, "tui", "fake", "none", 80, 24, "30");
    term_wait_free(&t, "| idle", 10);
    term_type(&t, "tell a long story");
    term_keys(&t, "Enter");
    term_wait_free(&t, "w5 ", 10);
    term_keys(&t, "Escape");
    char *s = term_wait(&t, "[stopped]", 5);
    ck_assert_ptr_null(strstr(s, "w399"));
    free(s);
    term_wait_free(&t, "| idle", 5);
    /* Ctrl-C stops too, and the conversation goes on */
    term_type(&t, "another long one");
    term_keys(&t, "Enter");
    term_wait_free(&t, "w3 ", 10);
    term_keys(&t, "C-c");
    term_wait_free(&t, "| idle", 5);
    term_type(&t, "hi");
    term_keys(&t, "Enter");
    term_wait_free(&t, "You said: hi.", 10);
    term_type(&t, "/stats");
    term_keys(&t, "Enter");
    term_wait_free(&t, "3 turns", 5);
    /* Ctrl-C twice at the idle prompt leaves */
    term_keys(&t, "C-c");
    term_wait_free(&t, "Ctrl-C again to quit", 5);
    term_keys(&t, "C-c");
    free(term_finish(&t, 0));
    term_stop(&t);
}
END_TEST

START_TEST(tui_resize_and_tiny_terminal) {
    term t;
    term_start(&t, "tui", "fake", "blocks", 80, 24, "2");
    term_wait_free(&t, "| idle", 10);
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "/image %s", data_path("images/e_320x224.png"));
    term_type(&t, cmd);
    term_keys(&t, "Enter");
    term_wait_free(&t, "[image: e_320x224.png", 10);
    term_type(&t, "hello");
    term_keys(&t, "Enter");
    term_wait_free(&t, "Done.", 10);
    sh(NULL, "tmux -S '%s' resize-window -t t -x 30 -y 8", t.sock);
    /* 30x8: 6 transcript rows, the status line, one input row */
    term_wait_row(&t, "fake-model", 6, 5);
    char *s = term_wait(&t, "Done.", 5);
    free(s);
    term_keys(&t, "PPage");                                   /* scroll back to the wrapped answer */
    s = term_wait(&t, "hello.", 5);
    free(s);
    term_keys(&t, "NPage");
    term_type(&t, "again");
    term_keys(&t, "Enter");
    s = term_wait_settled(&t, "Done.", 10);
    /* the picture, if on screen, fits the new width: no row wider than 30 cells of half blocks */
    for (char *line = s; line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl) *nl = 0;
        int cells = 0;
        for (char *p = line; (p = strstr(p, "\xE2\x96\x80")) != NULL; p += 3) cells++;
        ck_assert_int_le(cells, 28);
        line = nl ? nl + 1 : NULL;
    }
    free(s);
    sh(NULL, "tmux -S '%s' resize-window -t t -x 100 -y 30", t.sock);
    term_wait_row(&t, "fake-model", 28, 5);
    term_wait_free(&t, "You said: again.", 5);
    term_type(&t, "/quit");
    term_keys(&t, "Enter");
    free(term_finish(&t, 0));
    term_stop(&t);
}
END_TEST

START_TEST(tui_editing_history_help) {
    term t;
    term_start(&t, "tui", "fake", "none", 60, 20, "1");
    term_wait_free(&t, "| idle", 10);
    /* Ctrl-J and Alt-Enter insert newlines; the input grows */
    term_type(&t, "line one");
    term_keys(&t, "C-j");
    term_type(&t, "line two");
    term_keys(&t, "M-Enter");
    term_type(&t, "line three");
    char *s = term_wait(&t, "line three", 5);
    ck_assert_int_eq(row_of(s, "line three") - row_of(s, "> line one"), 2);
    free(s);
    term_keys(&t, "Enter");
    s = term_wait(&t, "Done.", 10);
    ck_assert_int_eq(row_of(s, "  line two") - row_of(s, "> line one"), 1);
    free(s);
    /* Up brings it back */
    term_keys(&t, "Up");
    s = term_wait(&t, "You said:", 5);
    free(s);
    term_keys(&t, "C-u");                                   /* clears the input before the cursor */
    /* F1 and /help show keys and commands */
    term_keys(&t, "F1");
    term_wait_free(&t, "Ctrl-J, Alt-Enter  new line", 5);
    term_type(&t, "/help");
    term_keys(&t, "Enter");
    term_wait_free(&t, "/image", 5);
    /* unknown command: one line, stays up */
    term_type(&t, "/frobnicate");
    term_keys(&t, "Enter");
    term_wait_free(&t, "frobnicate", 5);
    /* Tab completes /image paths */
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "/image %s", data_path("images/h_97"));
    term_type(&t, cmd);
    term_keys(&t, "Tab");
    term_keys(&t, "Enter");
    term_wait_free(&t, "[image: h_97x41.png 97x41]", 5);
    /* a pasted path attaches too */
    term_type(&t, data_path("images/c_33x47_gray.png"));
    term_keys(&t, "Enter");
    term_wait_free(&t, "[image: c_33x47_gray.png 33x47]", 5);
    term_wait_free(&t, "+2 images", 5);
    term_keys(&t, "C-d");
    free(term_finish(&t, 0));
    term_stop(&t);
}
END_TEST

START_TEST(tui_thinking_save_load) {
    term t;
    char model[4300];
    term_start(&t, "tui", "fake-thinking", "none", 80, 24, "1");
    snprintf(model, sizeof model, "%s/conv.jsonl", t.dir);
    term_wait_free(&t, "fake-thinking | idle", 10);
    term_type(&t, "why");
    term_keys(&t, "Enter");
    char *s = term_wait(&t, "Done.", 10);
    int think = row_of(s, "pondering why");
    ck_assert_int_ge(think, 0);
    ck_assert_int_lt(think, row_of(s, "You said: why."));
    free(s);
    s = term_screen(&t, 1);                                  /* reasoning is dim */
    ck_assert_ptr_nonnull(strstr(s, "\033[2m"));
    free(s);
    char cmd[4400];
    snprintf(cmd, sizeof cmd, "/save %s", model);
    term_type(&t, cmd);
    term_keys(&t, "Enter");
    term_wait_free(&t, "conversation saved", 5);
    term_type(&t, "/clear");
    term_keys(&t, "Enter");
    s = term_wait(&t, "new conversation", 5);
    ck_assert_ptr_null(strstr(s, "You said"));
    free(s);
    snprintf(cmd, sizeof cmd, "/load %s", model);
    term_type(&t, cmd);
    term_keys(&t, "Enter");
    s = term_wait(&t, "conversation loaded", 5);
    ck_assert_ptr_nonnull(strstr(s, "> why"));
    ck_assert_ptr_nonnull(strstr(s, "You said: why."));
    free(s);
    term_type(&t, "/quit");
    term_keys(&t, "Enter");
    free(term_finish(&t, 0));
    term_stop(&t);
}
END_TEST

START_TEST(tui_load_failure_exits) {
    term t;
    term_start(&t, "tui", "/no/such/missing", "none", 80, 24, "1");
    char *res = term_finish(&t, 1);
    ck_assert_ptr_nonnull(strstr(res, "missing: no such model directory"));
    free(res);
    term_stop(&t);
}
END_TEST

START_TEST(tui_starts_tiny) {
    term t;
    term_start(&t, "tui", "fake", "blocks", 30, 8, "1");
    term_wait_free(&t, "| idle", 10);
    term_type(&t, "hey");
    term_keys(&t, "Enter");
    char *s = term_wait(&t, "Done.", 10);
    ck_assert_int_eq(row_of(s, "fake-model"), 6);
    free(s);
    term_keys(&t, "C-d");
    free(term_finish(&t, 0));
    term_stop(&t);
}
END_TEST

/* ================================================================ line mode */

START_TEST(line_mode_chat) {
    term t;
    term_start(&t, "line", "fake", "blocks", 80, 24, "5");
    term_wait_free(&t, "ready", 10);
    term_type(&t, "hello");
    term_keys(&t, "Enter");
    term_wait_free(&t, "Done.", 10);
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "/image %s", data_path("images/a_80x60.png"));
    term_type(&t, cmd);
    term_keys(&t, "Enter");
    term_wait_free(&t, "[image: a_80x60.png 80x60]", 10);
    char *s = term_screen(&t, 0);
    ck_assert_ptr_nonnull(strstr(s, "\xE2\x96\x80"));
    free(s);
    term_type(&t, "a long one");
    term_keys(&t, "Enter");
    term_wait_free(&t, "w3 ", 10);
    term_keys(&t, "C-c");
    term_wait_free(&t, "[stopped]", 5);
    term_keys(&t, "C-d");
    free(term_finish(&t, 0));
    term_stop(&t);
}
END_TEST

/* ================================================================ child mode */

static int termios_same(const struct termios *a, const struct termios *b) {
    return a->c_iflag == b->c_iflag && a->c_oflag == b->c_oflag && a->c_cflag == b->c_cflag &&
           a->c_lflag == b->c_lflag && !memcmp(a->c_cc, b->c_cc, sizeof a->c_cc);
}

static int child_main(void) {
    const char *mode = getenv("QVL_CHILD_MODE"), *model = getenv("QVL_CHILD_MODEL");
    const char *result = getenv("QVL_CHILD_RESULT");
    struct termios before, after;
    tcgetattr(0, &before);
    qvl_source src = { .dir = model, .label = model };
    qvl_session_opts so = { .model = &src, .ctx = 4096 };
    tui_opts to = { .probe_ms = 300 };
    char err[QVL_ERR_MAX] = "";
    int rc = mode && !strcmp(mode, "line") ? lineui_run(&so, &to, err) : tui_run(&so, &to, err);
    tcgetattr(0, &after);
    FILE *f = fopen(result, "w");
    if (f) { fprintf(f, "rc=%d restored=%d err=%s\n", rc, termios_same(&before, &after), err); fclose(f); }
    return rc;
}

int main(int argc, char **argv) {
    self_exe = argv[0];
    if (argc > 1 && !strcmp(argv[1], "--child")) return child_main();
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) { exe[n] = 0; self_exe = exe; }
    Suite *s = suite_create("tui");
    TCase *tc = tcase_create("layout");
    tcase_add_test(tc, md_wraps_at_words);
    tcase_add_test(tc, md_styles);
    tcase_add_test(tc, md_wide_and_control_chars);
    tcase_add_test(tc, paths_pasted_and_completed);
    suite_add_tcase(s, tc);
    tc = tcase_create("worker");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, worker_streams_a_reply);
    tcase_add_test(tc, worker_cancels_promptly);
    tcase_add_test(tc, worker_commands_and_load_failure);
    suite_add_tcase(s, tc);
    if (!getenv("QVL_TEST_NO_TMUX")) {
        tc = tcase_create("terminal");
        tcase_set_timeout(tc, 60);
        tcase_add_test(tc, tui_question_answer_and_quit);
        tcase_add_test(tc, tui_image_half_blocks);
        tcase_add_test(tc, tui_image_sixel_stream);
        tcase_add_test(tc, tui_cancel_keeps_partial_reply);
        tcase_add_test(tc, tui_resize_and_tiny_terminal);
        tcase_add_test(tc, tui_editing_history_help);
        tcase_add_test(tc, tui_thinking_save_load);
        tcase_add_test(tc, tui_load_failure_exits);
        tcase_add_test(tc, tui_starts_tiny);
        tcase_add_test(tc, line_mode_chat);
        suite_add_tcase(s, tc);
    }
    return run_suite(s);
}
