/* commands.h - the slash commands of the chat, the line mode and plain batch mode.
 *
 * A line that starts with '/' is a command, anything else is a user message.
 * This module only parses (and knows the help text); each front end runs the
 * command its own way, mostly by calling the matching session_* function:
 *
 *   /image PATH        attach an image to the next message   (front end keeps it)
 *   /system TEXT       set the system prompt, new conversation  session_set_system
 *   /clear             new conversation                       session_clear
 *   /set NAME VALUE    sampling parameter                     session_set_param
 *   /save FILE         save the conversation (JSONL)          session_save
 *   /load FILE         load a conversation (JSONL)            session_load
 *   /stats             context and speed                      session_stats
 *   /help              this list                              command_help()
 *   /quit              leave (also /exit)
 *
 * A line starting with "//" is a message that starts with one '/': the parser
 * returns 0 and command_message() gives the text to send. */
#ifndef QVL_COMMANDS_H
#define QVL_COMMANDS_H

#include <stddef.h>

typedef enum {
    CMD_IMAGE, CMD_SYSTEM, CMD_CLEAR, CMD_SET, CMD_SAVE, CMD_LOAD,
    CMD_STATS, CMD_HELP, CMD_QUIT
} qvl_cmd_kind;

typedef struct {
    qvl_cmd_kind kind;
    char *arg;      /* PATH, TEXT, NAME or FILE (malloc'd, trimmed; "~/" expanded for paths); NULL if none */
    char *value;    /* VALUE of /set (malloc'd); NULL otherwise */
} qvl_command;

/* Parses one input line (trailing newline allowed).
 * Returns 1 and fills *cmd (free with command_free) when the line is a command,
 * 0 when it is an ordinary message (cmd untouched), -1 with a one-line message
 * in err (QVL_ERR_MAX bytes) for an unknown command or a missing/extra
 * argument, e.g. "/set: unknown parameter 'foo' (try /help)". */
int command_parse(const char *line, qvl_command *cmd, char *err);
void command_free(qvl_command *cmd);

/* The text to send for a line that is a message: the line itself, or line+1
 * for "//..." (the escape for a message starting with '/'). */
const char *command_message(const char *line);

/* Multi-line help text listing every command and the /set parameters. */
const char *command_help(void);

/* Command names with their leading '/', NULL-terminated (for Tab completion). */
extern const char *const command_names[];
/* Parameter names /set accepts (the names of session_set_param), NULL-terminated. */
extern const char *const command_set_params[];

/* Expands a leading "~/" (or a lone "~") with $HOME; malloc'd copy. */
char *command_expand_path(const char *path);

#endif
