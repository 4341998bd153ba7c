/* lineui.h - the line mode (--line, or when the full-screen chat cannot run):
 * a readline prompt with history and Tab completion of /image paths, replies
 * streamed as they come, the slash commands of commands.h, and pictures printed
 * inline with the same renderers as the chat (sixel, half blocks, placeholder).
 * Ctrl-C stops a reply; at the prompt it clears the line; Ctrl-D or /quit leaves. */
#ifndef QVL_LINEUI_H
#define QVL_LINEUI_H

#include "session.h"
#include "tui.h"

/* Same contract as tui_run (the same options apply). */
int lineui_run(const qvl_session_opts *so, const tui_opts *to, char *err);

#endif
