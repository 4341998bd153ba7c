/* tmuxterm.h - a program in a tmux terminal, for end-to-end tests. */
#ifndef QVL_TEST_TMUXTERM_H
#define QVL_TEST_TMUXTERM_H

typedef struct {
    char dir[4096], sock[4200], log[4200], result[4200];
    int w, h;
} term;

/* Runs a shell command, stdout into *out (may be NULL); returns its status. */
int sh(char **out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A fresh directory with the socket, stderr log and result file paths. */
void term_init(term *t, int w, int h);
/* Starts shell_cmd in a w x h tmux window; it must write "rc=N restored=0|1"
 * to t->result when it ends, and its stderr to t->log. */
void term_run(term *t, const char *shell_cmd);

char *term_screen(term *t, int escapes);               /* the screen text (caller frees) */
char *term_wait(term *t, const char *text, double timeout);   /* waits for text; returns the screen */
void term_wait_free(term *t, const char *text, double timeout);
/* Waits until the screen (with escapes) shows text and stops changing: for
 * pictures, which are drawn after curses' own refresh. */
char *term_wait_settled(term *t, const char *text, double timeout);
void term_wait_row(term *t, const char *text, int row, double timeout);
void term_type(term *t, const char *text);             /* literal keys */
void term_keys(term *t, const char *keys);             /* tmux key names: Enter, C-c, ... */
/* Waits for the result line, checks the exit code, the terminal restored and
 * no sanitizer report on stderr; returns the result line (caller frees). */
char *term_finish(term *t, int expect_rc);
void term_stop(term *t);
int row_of(const char *screen, const char *text);      /* 0-based row holding text, or -1 */

#endif
