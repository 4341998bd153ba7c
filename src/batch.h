/* batch.h - the non-interactive ways to talk to a model.
 *
 * One-shot (-p TEXT [-i IMAGE]...): the answer streams to stdout, then exit.
 * Plain batch (stdin is not a terminal): every line is a user message and
 * gets its reply on stdout, replies separated by a blank line; a line """
 * starts and ends a multi-line message; lines starting with '/' are the chat's
 * slash commands (commands.h).  Diagnostics, /help and /stats go to stderr, so
 * stdout holds nothing but replies.  The same loop, with a prompt, is the line
 * mode used while no richer interactive front end is available.
 *
 * Both return the process exit status: 0, or 1 when something failed at run
 * time (batch mode reports a failed line and goes on with the next one). */
#ifndef QVL_BATCH_H
#define QVL_BATCH_H

#include <stdio.h>
#include "options.h"
#include "session.h"

int oneshot_run(const qvl_options *o, const qvl_source *model, FILE *out);
/* prompt: printed to stderr before each message (line mode), or NULL. */
int batch_run(const qvl_options *o, const qvl_source *model, FILE *in, FILE *out, const char *prompt);

/* Opens the session for a mode: notices go to stderr unless --quiet; with
 * --verbose also the loading progress.  Prints "qvl: ..." and returns NULL on
 * failure. */
qvl_session *cli_open_session(const qvl_options *o, const qvl_source *model);

#endif
