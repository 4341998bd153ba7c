/* tui.h - the full-screen chat (ncursesw): transcript with inline pictures,
 * a growing input area, a status line, and the model on a background thread.
 *
 * Keys: Enter sends; Ctrl-J or Alt-Enter inserts a newline; Up/Down recall
 * earlier inputs; PgUp/PgDn and the mouse wheel scroll; Esc or Ctrl-C stops a
 * reply; Ctrl-C twice at an idle prompt, Ctrl-D on an empty line, or /quit
 * leaves; F1 or /help shows keys and commands; Tab completes /image paths.
 * Slash commands are those of commands.h; a pasted image path attaches it. */
#ifndef QVL_TUI_H
#define QVL_TUI_H

#include "session.h"

typedef struct {
    const char *images;         /* "auto", "sixel", "blocks", "none"; NULL: $QVL_IMAGES, else auto */
    const char *const *attach;  /* images (-i) attached to the first message */
    int nattach;
    int probe_ms;               /* terminal probe deadline; 0: QVL_TERM_PROBE_MS */
} tui_opts;

/* Whether this process can run the full-screen chat: stdin and stdout are
 * terminals and $TERM names a terminal curses knows and can address. */
int tui_available(void);

/* Runs the chat until the user leaves.  The model is opened on the model
 * thread with *so.  Returns 0, or 1 with a one-line message in err
 * (QVL_ERR_MAX bytes) when the model could not be loaded or the terminal could
 * not be set up; the terminal is restored either way. */
int tui_run(const qvl_session_opts *so, const tui_opts *to, char *err);

#endif
