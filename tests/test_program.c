/* test_program.c - the real qvl program in a real terminal (tmux), on the
 * built-in demo model: ask about a picture and see the answer, cancel a reply,
 * resize, quit with the terminal restored; the readline line mode too. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"
#include "tmuxterm.h"

/* Runs `qvl ARGS` in a w x h terminal; the wrapper records the exit code and
 * whether the terminal settings came back (stty -g before and after). */
static void start_qvl(term *t, const char *args, int w, int h) {
    term_init(t, w, h);
    char cmd[32768];
    snprintf(cmd, sizeof cmd,
             "cd '%s' && stty -g > '%s/before' && env LANG=C.UTF-8 COLORTERM=truecolor QVL_IMAGES=blocks "
             "'%s' %s 2>'%s'; rc=$?; stty -g > '%s/after'; "
             "if cmp -s '%s/before' '%s/after'; then r=1; else r=0; fi; echo \"rc=$rc restored=$r\" > '%s'",
             TEST_DATA, t->dir, build_path("qvl"), args, t->log, t->dir, t->dir, t->dir, t->result);
    term_run(t, cmd);
}

START_TEST(ask_about_a_picture) {
    term t;
    start_qvl(&t, "", 100, 30);
    term_wait_free(&t, "demo | idle", 20);
    term_type(&t, "/image demo/example_0.png");
    term_keys(&t, "Enter");
    term_wait_free(&t, "[image: example_0.png 128x128]", 10);
    /* the picture is drawn after curses' refresh: wait for its half blocks */
    char *s = term_wait_settled(&t, "\xE2\x96\x80", 10);
    free(s);
    term_type(&t, "Describe the image.");
    term_keys(&t, "Enter");
    s = term_wait(&t, "A blue square on a light blue background.", 20);
    ck_assert_int_lt(row_of(s, "> Describe the image."), row_of(s, "A blue square"));
    free(s);
    term_wait_free(&t, "| idle", 10);
    /* the conversation goes on with the picture in the cache */
    term_type(&t, "How many shapes are there?");
    term_keys(&t, "Enter");
    term_wait_free(&t, "There is one shape.", 20);
    term_type(&t, "/quit");
    term_keys(&t, "Enter");
    free(term_finish(&t, 0));
    term_stop(&t);
}
END_TEST

/* A reply that would not end (--ignore-eos) is stopped with Esc; the partial
 * reply stays, and the next question is answered. */
START_TEST(cancel_resize_and_quit) {
    term t;
    start_qvl(&t, "--ignore-eos -n 100000 -c 100000", 80, 24);
    term_wait_free(&t, "demo | idle", 20);
    term_type(&t, "Describe the image.");
    term_keys(&t, "Enter");
    term_wait_free(&t, "generating", 20);
    usleep(300000);
    term_keys(&t, "Escape");
    term_wait_free(&t, "[stopped]", 10);
    term_wait_free(&t, "| idle", 10);
    /* resize to something tiny and back: the status line follows the bottom row */
    sh(NULL, "tmux -S '%s' resize-window -t t -x 30 -y 8", t.sock);
    term_wait_row(&t, "idle", 6, 10);
    sh(NULL, "tmux -S '%s' resize-window -t t -x 90 -y 26", t.sock);
    term_wait_row(&t, "idle", 24, 10);
    /* Ctrl-C twice at an idle prompt quits */
    term_keys(&t, "C-c");
    term_wait_free(&t, "again to quit", 5);
    term_keys(&t, "C-c");
    free(term_finish(&t, 0));
    term_stop(&t);
}
END_TEST

START_TEST(line_mode) {
    term t;
    start_qvl(&t, "--line", 100, 30);
    term_wait_free(&t, "demo ready", 20);
    term_type(&t, "/image demo/example_1.png");
    term_keys(&t, "Enter");
    term_type(&t, "How many shapes are there?");
    term_keys(&t, "Enter");
    term_wait_free(&t, "There are two shapes.", 20);
    term_keys(&t, "C-d");
    free(term_finish(&t, 0));
    term_stop(&t);
}
END_TEST

int main(void) {
    Suite *s = suite_create("program");
    TCase *tc = tcase_create("demo");
    tcase_set_timeout(tc, 90);
    tcase_add_test(tc, ask_about_a_picture);
    tcase_add_test(tc, cancel_resize_and_quit);
    tcase_add_test(tc, line_mode);
    suite_add_tcase(s, tc);
    return run_suite(s);
}
