/* commands.c - parsing the slash commands shared by the chat and batch modes.
 *
 * The grammar is tiny on purpose: "/name" followed by the rest of the line.
 * Commands taking a path or a text take the whole rest of the line (trimmed),
 * so file names with spaces work without quoting; a path wrapped in matching
 * quotes (as terminals paste them) loses the quotes.  /set takes two words. */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "commands.h"

const char *const command_names[] = {
    "/image", "/system", "/clear", "/set", "/save", "/load", "/stats", "/help", "/quit", NULL
};

const char *const command_set_params[] = {
    "temp", "top_k", "top_p", "min_p", "repeat_penalty", "presence_penalty",
    "seed", "max_tokens", "greedy", "ignore_eos", NULL
};

enum { ARG_NONE, ARG_PATH, ARG_TEXT, ARG_NAME_VALUE };

static const struct {
    const char *name;
    qvl_cmd_kind kind;
    int arg;
} table[] = {
    { "image", CMD_IMAGE, ARG_PATH },
    { "system", CMD_SYSTEM, ARG_TEXT },
    { "clear", CMD_CLEAR, ARG_NONE },
    { "set", CMD_SET, ARG_NAME_VALUE },
    { "save", CMD_SAVE, ARG_PATH },
    { "load", CMD_LOAD, ARG_PATH },
    { "stats", CMD_STATS, ARG_NONE },
    { "help", CMD_HELP, ARG_NONE },
    { "quit", CMD_QUIT, ARG_NONE },
    { "exit", CMD_QUIT, ARG_NONE },
};

const char *command_help(void) {
    return
        "Commands:\n"
        "  /image PATH        attach an image to the next message (repeatable)\n"
        "  /system TEXT       set the system prompt and start a new conversation\n"
        "  /clear             start a new conversation (keeps the system prompt)\n"
        "  /set NAME VALUE    change a setting: temp, top_k, top_p, min_p,\n"
        "                     repeat_penalty, presence_penalty, seed, max_tokens,\n"
        "                     greedy (0/1), ignore_eos (0/1)\n"
        "  /save FILE         save the conversation as JSONL\n"
        "  /load FILE         load a conversation saved with /save\n"
        "  /stats             context use, turns, speed and precision\n"
        "  /help              this help\n"
        "  /quit              leave (also /exit)\n"
        "A message that starts with '/' is written with two: //like this.\n";
}

const char *command_message(const char *line) {
    return (line[0] == '/' && line[1] == '/') ? line + 1 : line;
}

char *command_expand_path(const char *path) {
    const char *home = getenv("HOME");
    if (home && path[0] == '~' && (path[1] == '/' || path[1] == 0)) {
        size_t n = strlen(home) + strlen(path);
        char *out = malloc(n);
        if (!out) return NULL;
        strcpy(out, home);
        strcat(out, path + 1);
        return out;
    }
    return strdup(path);
}

/* Copy of s[0..n) without surrounding blanks; NULL when that is empty. */
static char *trimmed_copy(const char *s, size_t n) {
    while (n && isspace((unsigned char)*s)) { s++; n--; }
    while (n && isspace((unsigned char)s[n - 1])) n--;
    if (!n) return NULL;
    char *out = malloc(n + 1);
    if (!out) return NULL;
    memcpy(out, s, n);
    out[n] = 0;
    return out;
}

/* A path pasted as 'file name.png' or "file name.png" loses its quotes. */
static void unquote(char *s) {
    size_t n = strlen(s);
    if (n >= 2 && (s[0] == '\'' || s[0] == '"') && s[n - 1] == s[0]) {
        memmove(s, s + 1, n - 2);
        s[n - 2] = 0;
    }
}

static int known_param(const char *name) {
    for (int i = 0; command_set_params[i]; i++)
        if (!strcmp(command_set_params[i], name)) return 1;
    return 0;
}

/* "/set NAME VALUE": two blank-separated words. */
static int parse_set(const char *rest, qvl_command *cmd, char *err) {
    char *all = trimmed_copy(rest, strlen(rest));
    if (!all) { qvl_seterr(err, "/set: needs NAME VALUE (try /help)"); return -1; }
    char *sp = all;
    while (*sp && !isspace((unsigned char)*sp)) sp++;
    char *value = NULL;
    if (*sp) {
        *sp = 0;
        value = trimmed_copy(sp + 1, strlen(sp + 1));
    }
    if (!known_param(all)) {
        qvl_seterr(err, "/set: unknown parameter '%s' (try /help)", all);
        free(all); free(value);
        return -1;
    }
    if (!value) {
        qvl_seterr(err, "/set %s: missing value", all);
        free(all);
        return -1;
    }
    for (char *p = value; *p; p++) {
        if (isspace((unsigned char)*p)) {
            qvl_seterr(err, "/set %s: the value must be one word, got '%s'", all, value);
            free(all); free(value);
            return -1;
        }
    }
    cmd->arg = all;
    cmd->value = value;
    return 1;
}

int command_parse(const char *line, qvl_command *cmd, char *err) {
    if (line[0] != '/' || line[1] == '/') return 0;
    size_t len = strlen(line);
    while (len && (line[len - 1] == '\n' || line[len - 1] == '\r')) len--;
    const char *name = line + 1;
    size_t nlen = 0;
    while (nlen < len - 1 && !isspace((unsigned char)name[nlen])) nlen++;
    const char *rest = name + nlen;
    size_t rlen = len - 1 - nlen;

    int k = -1;
    for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
        if (strlen(table[i].name) == nlen && !strncmp(table[i].name, name, nlen)) { k = (int)i; break; }
    if (k < 0) {
        qvl_seterr(err, "unknown command /%.*s (try /help; write // to send a message starting with /)",
                   (int)(nlen > 40 ? 40 : nlen), name);
        return -1;
    }
    cmd->kind = table[k].kind;
    cmd->arg = cmd->value = NULL;
    char *arg = trimmed_copy(rest, rlen);
    switch (table[k].arg) {
    case ARG_NONE:
        if (arg) {
            qvl_seterr(err, "/%s takes no argument", table[k].name);
            free(arg);
            return -1;
        }
        return 1;
    case ARG_PATH:
        if (!arg) { qvl_seterr(err, "/%s: missing file name", table[k].name); return -1; }
        unquote(arg);
        cmd->arg = command_expand_path(arg);
        free(arg);
        if (!cmd->arg) { qvl_seterr(err, "/%s: out of memory", table[k].name); return -1; }
        return 1;
    case ARG_TEXT:
        if (!arg) { qvl_seterr(err, "/%s: missing text", table[k].name); return -1; }
        cmd->arg = arg;
        return 1;
    default: {
        /* rest is not NUL-terminated at len when the line ends in a newline */
        char *tmp = malloc(rlen + 1);
        if (!tmp) { free(arg); qvl_seterr(err, "out of memory"); return -1; }
        memcpy(tmp, rest, rlen);
        tmp[rlen] = 0;
        int r = parse_set(tmp, cmd, err);
        free(tmp);
        free(arg);
        return r;
    }
    }
}

void command_free(qvl_command *cmd) {
    if (!cmd) return;
    free(cmd->arg);
    free(cmd->value);
    cmd->arg = cmd->value = NULL;
}
