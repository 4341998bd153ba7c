/* batch.c - one-shot and plain batch mode (see batch.h).
 *
 * The loop keeps the conversation (and so the session's KV cache) from line
 * to line; /image paths are collected and go, in order, before the text of
 * the next message, like -i on the command line.  A failed line is reported
 * as "qvl: line K: ..." on stderr and the script goes on: one bad image must
 * not throw away a long run. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"
#include "batch.h"
#include "commands.h"

/* ---- session with stderr reporting ---- */

static const char *state_name(qvl_state st) {
    switch (st) {
    case QVL_STATE_LOADING: return "loading the model";
    case QVL_STATE_ENCODING: return "encoding images";
    case QVL_STATE_PREFILL: return "reading the prompt";
    case QVL_STATE_GENERATING: return "generating";
    default: return "idle";
    }
}

static void report_state(void *ctx, qvl_state st, double fraction) {
    static int last = -1;
    (void)ctx;
    /* Only the first report of each state: fractions would flood a log. */
    if ((int)st == last || st == QVL_STATE_IDLE) { last = (int)st; return; }
    last = (int)st;
    (void)fraction;
    fprintf(stderr, "qvl: %s\n", state_name(st));
}

static void report_notice(void *ctx, const char *msg) {
    (void)ctx;
    fprintf(stderr, "qvl: %s\n", msg);
}

qvl_session *cli_open_session(const qvl_options *o, const qvl_source *model) {
    static qvl_session_hooks hooks;
    qvl_session_opts so;
    char err[QVL_ERR_MAX];
    options_session(o, model, &so);
    hooks.state = o->verbose ? report_state : NULL;
    hooks.notice = o->quiet ? NULL : report_notice;
    hooks.ctx = NULL;
    err[0] = 0;
    qvl_session *s = session_open(&so, &hooks, err);
    if (!s) fprintf(stderr, "qvl: %s\n", err[0] ? err : "cannot open the model");
    return s;
}

/* ---- one reply ---- */

/* Sends the parts and streams the reply's answer to out (reasoning of
 * thinking models to stderr with --verbose).  0 ok, -1 with err set. */
static int converse(qvl_session *s, const qvl_options *o, const qvl_part *parts, int nparts,
                    FILE *out, char *err) {
    if (session_send(s, parts, nparts, err)) return -1;
    qvl_token tok;
    int r;
    while ((r = session_next(s, &tok, err)) == 1) {
        if (tok.reasoning) {
            if (o->verbose) { fputs(tok.piece, stderr); fflush(stderr); }
            continue;
        }
        fputs(tok.piece, out);
        fflush(out);
    }
    if (r < 0) { fputc('\n', out); return -1; }
    fputc('\n', out);
    fflush(out);
    if (o->verbose) {
        qvl_reply_info info;
        session_reply_info(s, &info);
        fprintf(stderr, "qvl: %s; %d prompt tokens (%d image) in %.0f ms, %.1f tok/s; "
                "%d tokens at %.1f tok/s\n", info.finish_reason, info.prompt_tokens,
                info.image_tokens, info.prefill_ms, info.prefill_tok_s,
                info.completion_tokens, info.decode_tok_s);
    }
    return 0;
}

/* Image parts first, then the text (when there is some). */
static qvl_part *message_parts(const char *const *images, int nimages, const char *text, int *nparts) {
    qvl_part *p = calloc((size_t)nimages + 1, sizeof *p);
    if (!p) return NULL;
    int n = 0;
    for (int i = 0; i < nimages; i++) p[n++].image_path = images[i];
    if (text && *text) p[n++].text = text;
    *nparts = n;
    return p;
}

int oneshot_run(const qvl_options *o, const qvl_source *model, FILE *out) {
    qvl_session *s = cli_open_session(o, model);
    if (!s) return QVL_EXIT_RUNTIME;
    char err[QVL_ERR_MAX];
    int nparts, status = QVL_EXIT_OK;
    qvl_part *parts = message_parts(o->images, o->nimages, o->prompt, &nparts);
    if (!parts) {
        fprintf(stderr, "qvl: out of memory\n");
        status = QVL_EXIT_RUNTIME;
    } else if (converse(s, o, parts, nparts, out, err)) {
        fprintf(stderr, "qvl: %s\n", err);
        status = QVL_EXIT_RUNTIME;
    }
    free(parts);
    session_close(s);
    return status;
}

/* ---- plain batch ---- */

typedef struct {
    qvl_session *s;
    const qvl_options *o;
    FILE *out;
    char **images;          /* /image paths waiting for the next message */
    int nimages;
    int replies;            /* printed so far: a blank line goes between them */
    int failed;
    int quit;
    long lineno;
} batch;

static void fail(batch *b, const char *msg) {
    fprintf(stderr, "qvl: line %ld: %s\n", b->lineno, msg);
    b->failed = 1;
}

static void drop_images(batch *b) {
    for (int i = 0; i < b->nimages; i++) free(b->images[i]);
    b->nimages = 0;
}

static int queue_image(batch *b, const char *path, char *err) {
    if (access(path, R_OK)) {
        qvl_seterr(err, "cannot read image %s: %s", path, strerror(errno));
        return -1;
    }
    char **grown = realloc(b->images, (size_t)(b->nimages + 1) * sizeof *grown);
    char *copy = strdup(path);
    if (!grown || !copy) {
        free(copy);
        if (grown) b->images = grown;
        qvl_seterr(err, "out of memory");
        return -1;
    }
    b->images = grown;
    b->images[b->nimages++] = copy;
    return 0;
}

static void print_stats(qvl_session *s) {
    qvl_session_stats st;
    session_stats(s, &st);
    fprintf(stderr, "model: %s%s\nprecision: %s\ncontext: %d / %d tokens, %d turns\nlast reply: %.1f tok/s\n",
            st.model_name, st.thinking ? " (thinking)" : "", st.precision, st.ctx_used, st.ctx_total,
            st.turns, st.last_decode_tok_s);
}

static void run_command(batch *b, qvl_command *c) {
    char err[QVL_ERR_MAX];
    int r = 0;
    err[0] = 0;
    switch (c->kind) {
    case CMD_IMAGE: r = queue_image(b, c->arg, err); break;
    case CMD_SYSTEM: drop_images(b); r = session_set_system(b->s, c->arg, err); break;
    case CMD_CLEAR: drop_images(b); session_clear(b->s); break;
    case CMD_SET: r = session_set_param(b->s, c->arg, c->value, err); break;
    case CMD_SAVE: r = session_save(b->s, c->arg, err); break;
    case CMD_LOAD: drop_images(b); r = session_load(b->s, c->arg, err); break;
    case CMD_STATS: print_stats(b->s); break;
    case CMD_HELP: fputs(command_help(), stderr); break;
    case CMD_QUIT: b->quit = 1; break;
    }
    if (r) fail(b, err);
}

static void send_message(batch *b, const char *text) {
    char err[QVL_ERR_MAX];
    int nparts;
    qvl_part *parts = message_parts((const char *const *)b->images, b->nimages, text, &nparts);
    if (!parts) { fail(b, "out of memory"); return; }
    if (nparts == 0) { free(parts); fail(b, "empty message"); return; }
    if (b->replies++) fputc('\n', b->out);
    if (converse(b->s, b->o, parts, nparts, b->out, err)) fail(b, err);
    free(parts);
    drop_images(b);
}

static void chomp(char *line) {
    size_t n = strlen(line);
    while (n && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
}

/* Appends line (and a newline before it, after the first) to a message. */
static int append_line(char **msg, size_t *len, const char *line) {
    size_t add = strlen(line) + (*len ? 1 : 0);
    char *grown = realloc(*msg, *len + add + 1);
    if (!grown) return -1;
    if (*len) grown[(*len)++] = '\n';
    strcpy(grown + *len, line);
    *len += strlen(line);
    *msg = grown;
    return 0;
}

static int blank(const char *s) {
    for (; *s; s++) if (*s != ' ' && *s != '\t') return 0;
    return 1;
}

int batch_run(const qvl_options *o, const qvl_source *model, FILE *in, FILE *out, const char *prompt) {
    batch b = { .o = o, .out = out };
    b.s = cli_open_session(o, model);
    if (!b.s) return QVL_EXIT_RUNTIME;
    char err[QVL_ERR_MAX];
    /* -i without -p: the images of the first message */
    for (int i = 0; i < o->nimages; i++)
        if (queue_image(&b, o->images[i], err)) {
            fprintf(stderr, "qvl: %s\n", err);
            drop_images(&b);
            free(b.images);
            session_close(b.s);
            return QVL_EXIT_RUNTIME;
        }

    char *line = NULL, *multi = NULL;
    size_t cap = 0, multi_len = 0;
    int in_multi = 0;
    long multi_start = 0;
    while (!b.quit) {
        if (prompt && !in_multi) { fputs(prompt, stderr); fflush(stderr); }
        if (getline(&line, &cap, in) < 0) break;
        b.lineno++;
        chomp(line);
        if (in_multi) {
            if (!strcmp(line, "\"\"\"")) {
                in_multi = 0;
                long here = b.lineno;
                b.lineno = multi_start;
                send_message(&b, multi ? multi : "");
                b.lineno = here;
                free(multi);
                multi = NULL;
                multi_len = 0;
            } else if (append_line(&multi, &multi_len, line)) {
                fail(&b, "out of memory");
            }
            continue;
        }
        if (!strcmp(line, "\"\"\"")) { in_multi = 1; multi_start = b.lineno; continue; }
        if (blank(line)) continue;
        qvl_command cmd;
        int r = command_parse(line, &cmd, err);
        if (r < 0) { fail(&b, err); continue; }
        if (r > 0) { run_command(&b, &cmd); command_free(&cmd); continue; }
        send_message(&b, command_message(line));
    }
    if (in_multi) {
        b.lineno = multi_start;
        fail(&b, "the \"\"\" message is not closed");
    }
    free(multi);
    free(line);
    drop_images(&b);
    free(b.images);
    session_close(b.s);
    return b.failed ? QVL_EXIT_RUNTIME : QVL_EXIT_OK;
}
