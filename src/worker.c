/* worker.c - the model thread: owns the session, serves requests, posts events.
 *
 * Two queues guarded by one mutex.  Requests: a FIFO the thread sleeps on with a
 * condition variable.  Events: a FIFO the UI drains; each post also writes a byte
 * to a non-blocking pipe so the UI wakes in poll().  The pipe only says "look":
 * the queue is the truth, so a full pipe or a spurious wake-up is harmless.
 *
 * Cancellation has two halves.  worker_cancel() calls session_cancel() at once
 * (the session allows that from another thread) so the decode loop ends within
 * one step, and it raises `cancel_pending`, which the thread checks before each
 * step too: a cancel that lands while session_send() is still prefilling is not
 * lost if the session resets its own flag when the reply starts.  Sends still in
 * the queue are dropped, since the user asked to stop. */
#include "worker.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "common.h"

typedef enum { REQ_SEND, REQ_CLEAR, REQ_SYSTEM, REQ_SET, REQ_SAVE, REQ_LOAD, REQ_STATS } req_kind;

typedef struct request {
    req_kind kind;
    qvl_part *parts;            /* REQ_SEND: strings and image bytes are owned copies */
    int nparts;
    char *a, *b;                /* text / name+value / path */
    struct request *next;
} request;

typedef struct event_node {
    worker_event ev;
    struct event_node *next;
} event_node;

struct worker {
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    request *req_head, *req_tail;
    event_node *ev_head, *ev_tail;
    int pipe_rd, pipe_wr;
    qvl_session *session;       /* published under lock, for worker_cancel */
    int cancel_pending;
    int quit;                   /* worker_stop was called */
    /* the options, deep-copied so the caller's strings may go away */
    qvl_session_opts opts;
    qvl_source source;
    char *model_dir, *label, *system;
};

const char *worker_state_name(qvl_state st) {
    switch (st) {
    case QVL_STATE_IDLE: return "idle";
    case QVL_STATE_LOADING: return "loading";
    case QVL_STATE_ENCODING: return "encoding image";
    case QVL_STATE_PREFILL: return "prefill";
    case QVL_STATE_GENERATING: return "generating";
    }
    return "?";
}

static char *dupstr(const char *s) { return s ? strdup(s) : NULL; }

/* ---------------------------------------------------------------- events */

static void post(worker *w, const worker_event *ev) {
    event_node *n = calloc(1, sizeof *n);
    if (!n) return;                         /* out of memory: the event is lost, nothing worse */
    n->ev = *ev;
    if (n->ev.kind == WEV_DONE) n->ev.info.finish_reason = NULL; /* re-pointed on delivery */
    pthread_mutex_lock(&w->lock);
    if (w->ev_tail) w->ev_tail->next = n; else w->ev_head = n;
    w->ev_tail = n;
    pthread_mutex_unlock(&w->lock);
    char byte = 1;
    if (write(w->pipe_wr, &byte, 1) < 0) { /* full pipe: the UI is already due to wake */ }
}

static void post_text(worker *w, worker_event_kind kind, const char *text) {
    worker_event ev = { .kind = kind, .text = dupstr(text) };
    post(w, &ev);
}

static void post_stats(worker *w, worker_event_kind kind) {
    worker_event ev = { .kind = kind };
    session_stats(w->session, &ev.stats);
    post(w, &ev);
}

int worker_next_event(worker *w, worker_event *ev) {
    pthread_mutex_lock(&w->lock);
    event_node *n = w->ev_head;
    if (n) {
        w->ev_head = n->next;
        if (!w->ev_head) w->ev_tail = NULL;
    } else {
        /* Empty: swallow the wake-up bytes.  Events appended later write new ones. */
        char buf[256];
        while (read(w->pipe_rd, buf, sizeof buf) > 0) {}
    }
    pthread_mutex_unlock(&w->lock);
    if (!n) return 0;
    *ev = n->ev;
    if (ev->kind == WEV_DONE) ev->info.finish_reason = ev->finish;
    free(n);
    return 1;
}

void worker_event_free(worker_event *ev) {
    free(ev->text);
    free(ev->image);
    ev->text = ev->image = NULL;
}

int worker_fd(const worker *w) { return w->pipe_rd; }

/* Session hooks: called on the worker thread while the session works. */
static void hook_state(void *ctx, qvl_state st, double fraction) {
    worker_event ev = { .kind = WEV_STATE, .state = st, .fraction = fraction };
    post(ctx, &ev);
}

static void hook_notice(void *ctx, const char *msg) { post_text(ctx, WEV_NOTICE, msg); }

/* -------------------------------------------------------------- requests */

static void free_request(request *r) {
    for (int i = 0; i < r->nparts; i++) {
        free((char *)r->parts[i].text);
        free((char *)r->parts[i].image_path);
        free((unsigned char *)r->parts[i].image_data);
    }
    free(r->parts);
    free(r->a);
    free(r->b);
    free(r);
}

static int enqueue(worker *w, request *r) {
    pthread_mutex_lock(&w->lock);
    if (w->req_tail) w->req_tail->next = r; else w->req_head = r;
    w->req_tail = r;
    pthread_cond_signal(&w->wake);
    pthread_mutex_unlock(&w->lock);
    return 0;
}

static int enqueue_simple(worker *w, req_kind kind, const char *a, const char *b) {
    request *r = calloc(1, sizeof *r);
    if (!r) return -1;
    r->kind = kind;
    r->a = dupstr(a);
    r->b = dupstr(b);
    if ((a && !r->a) || (b && !r->b)) { free_request(r); return -1; }
    return enqueue(w, r);
}

int worker_send(worker *w, const qvl_part *parts, int nparts) {
    request *r = calloc(1, sizeof *r);
    if (!r) return -1;
    r->kind = REQ_SEND;
    r->parts = calloc(nparts > 0 ? (size_t)nparts : 1, sizeof *r->parts);
    if (!r->parts) { free(r); return -1; }
    r->nparts = nparts;
    int ok = 1;
    for (int i = 0; i < nparts; i++) {
        qvl_part *p = &r->parts[i];
        if (parts[i].text && !(p->text = strdup(parts[i].text))) ok = 0;
        if (parts[i].image_path && !(p->image_path = strdup(parts[i].image_path))) ok = 0;
        if (parts[i].image_data) {
            unsigned char *d = malloc(parts[i].image_size ? parts[i].image_size : 1);
            if (d) memcpy(d, parts[i].image_data, parts[i].image_size); else ok = 0;
            p->image_data = d;
            p->image_size = parts[i].image_size;
        }
    }
    if (!ok) { free_request(r); return -1; }
    return enqueue(w, r);
}

int worker_clear(worker *w) { return enqueue_simple(w, REQ_CLEAR, NULL, NULL); }
int worker_set_system(worker *w, const char *text) { return enqueue_simple(w, REQ_SYSTEM, text ? text : "", NULL); }
int worker_set_param(worker *w, const char *name, const char *value) { return enqueue_simple(w, REQ_SET, name, value); }
int worker_save(worker *w, const char *path) { return enqueue_simple(w, REQ_SAVE, path, NULL); }
int worker_load(worker *w, const char *path) { return enqueue_simple(w, REQ_LOAD, path, NULL); }
int worker_request_stats(worker *w) { return enqueue_simple(w, REQ_STATS, NULL, NULL); }

void worker_cancel(worker *w) {
    int dropped = 0;
    pthread_mutex_lock(&w->lock);
    request **pp = &w->req_head, *prev = NULL;
    while (*pp) {                         /* drop sends not yet started */
        request *r = *pp;
        if (r->kind == REQ_SEND) { *pp = r->next; free_request(r); dropped++; }
        else { prev = r; pp = &r->next; }
    }
    w->req_tail = prev;
    w->cancel_pending = 1;
    if (w->session) session_cancel(w->session);
    pthread_mutex_unlock(&w->lock);
    while (dropped-- > 0) post_text(w, WEV_DROPPED, NULL);
}

/* ------------------------------------------------------------ the thread */

static int take_cancel(worker *w) {
    pthread_mutex_lock(&w->lock);
    int c = w->cancel_pending;
    pthread_mutex_unlock(&w->lock);
    return c;
}

/* One user turn: prefill, then stream the reply piece by piece. */
static void run_send(worker *w, request *r) {
    char err[QVL_ERR_MAX] = "";
    if (session_send(w->session, r->parts, r->nparts, err) != 0) {
        post_text(w, WEV_SEND_FAILED, err[0] ? err : "the message could not be sent");
        hook_state(w, QVL_STATE_IDLE, 0);
        return;
    }
    for (;;) {
        if (take_cancel(w)) session_cancel(w->session);
        qvl_token tok;
        int rc = session_next(w->session, &tok, err);
        if (rc < 0) { post_text(w, WEV_ERROR, err[0] ? err : "generation failed"); break; }
        if (rc == 0) break;
        if (tok.piece && tok.piece[0]) {
            worker_event ev = { .kind = WEV_TOKEN, .reasoning = tok.reasoning, .text = strdup(tok.piece) };
            if (ev.text) post(w, &ev);
        }
    }
    worker_event ev = { .kind = WEV_DONE };
    session_reply_info(w->session, &ev.info);
    snprintf(ev.finish, sizeof ev.finish, "%s", ev.info.finish_reason ? ev.info.finish_reason : "stop");
    session_stats(w->session, &ev.stats);
    post(w, &ev);
    hook_state(w, QVL_STATE_IDLE, 0);
}

/* The text of a JSONL message's content: a string, or the text parts of an array;
 * *image gets the first image path part (display only). */
static char *content_text(const cJSON *content, char **image) {
    *image = NULL;
    if (cJSON_IsString(content)) return strdup(content->valuestring);
    size_t cap = 1, n = 0;
    char *out = calloc(1, 1);
    const cJSON *part;
    cJSON_ArrayForEach(part, content) {
        const char *type = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(part, "type"));
        if (!type) continue;
        if (!strcmp(type, "text")) {
            const char *t = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(part, "text"));
            if (!t || !out) continue;
            size_t len = strlen(t);
            char *grown = realloc(out, cap + len);
            if (!grown) continue;
            out = grown;
            memcpy(out + n, t, len + 1);
            n += len;
            cap += len;
        } else if (!strcmp(type, "image") && !*image) {
            const char *p = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(part, "image"));
            if (p) *image = strdup(p);
        }
    }
    return out;
}

/* After /load: tell the UI what the conversation now holds, one message per line. */
static void replay_file(worker *w, const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return;
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, f) > 0) {
        cJSON *j = cJSON_Parse(line);
        if (!j) continue;
        const char *role = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "role"));
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(j, "content");
        if (role && content) {
            worker_event ev = { .kind = WEV_MESSAGE };
            snprintf(ev.role, sizeof ev.role, "%s", role);
            ev.text = content_text(content, &ev.image);
            post(w, &ev);
        }
        cJSON_Delete(j);
    }
    free(line);
    fclose(f);
}

static void run_request(worker *w, request *r) {
    char err[QVL_ERR_MAX] = "";
    char msg[QVL_ERR_MAX + 64];
    switch (r->kind) {
    case REQ_SEND: run_send(w, r); break;
    case REQ_CLEAR:
        session_clear(w->session);
        post_text(w, WEV_CLEARED, NULL);
        post_stats(w, WEV_STATS);
        break;
    case REQ_SYSTEM:
        if (session_set_system(w->session, r->a, err) != 0) { post_text(w, WEV_ERROR, err); break; }
        post_text(w, WEV_CLEARED, NULL);
        post_stats(w, WEV_STATS);
        break;
    case REQ_SET:
        if (session_set_param(w->session, r->a, r->b, err) != 0) { post_text(w, WEV_ERROR, err); break; }
        snprintf(msg, sizeof msg, "%s = %s", r->a, r->b);
        post_text(w, WEV_NOTICE, msg);
        break;
    case REQ_SAVE:
        if (session_save(w->session, r->a, err) != 0) { post_text(w, WEV_ERROR, err); break; }
        snprintf(msg, sizeof msg, "conversation saved to %s", r->a);
        post_text(w, WEV_NOTICE, msg);
        break;
    case REQ_LOAD:
        if (session_load(w->session, r->a, err) != 0) {
            post_text(w, WEV_ERROR, err);
            hook_state(w, QVL_STATE_IDLE, 0);
            break;
        }
        post_text(w, WEV_CLEARED, NULL);
        replay_file(w, r->a);
        snprintf(msg, sizeof msg, "conversation loaded from %s", r->a);
        post_text(w, WEV_NOTICE, msg);
        post_stats(w, WEV_STATS);
        hook_state(w, QVL_STATE_IDLE, 0);
        break;
    case REQ_STATS: post_stats(w, WEV_STATS); break;
    }
}

static request *next_request(worker *w) {
    pthread_mutex_lock(&w->lock);
    while (!w->req_head && !w->quit) pthread_cond_wait(&w->wake, &w->lock);
    request *r = w->quit ? NULL : w->req_head;
    if (!r) { pthread_mutex_unlock(&w->lock); return NULL; }
    w->req_head = r->next;
    if (!w->req_head) w->req_tail = NULL;
    if (r->kind == REQ_SEND) w->cancel_pending = 0; /* earlier cancels were for earlier replies */
    pthread_mutex_unlock(&w->lock);
    return r;
}

static void *worker_main(void *arg) {
    worker *w = arg;
    char err[QVL_ERR_MAX] = "";
    qvl_session_hooks hooks = { hook_state, hook_notice, w };
    hook_state(w, QVL_STATE_LOADING, 0);
    qvl_session *s = session_open(&w->opts, &hooks, err);
    if (s) {
        pthread_mutex_lock(&w->lock);
        w->session = s;
        pthread_mutex_unlock(&w->lock);
        post_stats(w, WEV_READY);
        hook_state(w, QVL_STATE_IDLE, 0);
    } else {
        post_text(w, WEV_LOAD_FAILED, err[0] ? err : "the model could not be loaded");
    }
    request *r;
    while ((r = next_request(w)) != NULL) {
        if (s) run_request(w, r);
        else post_text(w, WEV_ERROR, "no model is loaded");
        free_request(r);
    }
    pthread_mutex_lock(&w->lock);
    w->session = NULL;
    pthread_mutex_unlock(&w->lock);
    if (s) session_close(s);
    return NULL;
}

/* ------------------------------------------------------------ life cycle */

static void free_worker(worker *w) {
    while (w->req_head) { request *r = w->req_head; w->req_head = r->next; free_request(r); }
    while (w->ev_head) { event_node *n = w->ev_head; w->ev_head = n->next; worker_event_free(&n->ev); free(n); }
    if (w->pipe_rd >= 0) close(w->pipe_rd);
    if (w->pipe_wr >= 0) close(w->pipe_wr);
    pthread_mutex_destroy(&w->lock);
    pthread_cond_destroy(&w->wake);
    free(w->model_dir);
    free(w->label);
    free(w->system);
    free(w);
}

worker *worker_start(const qvl_session_opts *o, char *err) {
    worker *w = calloc(1, sizeof *w);
    if (!w) { qvl_seterr(err, "worker: out of memory"); return NULL; }
    w->pipe_rd = w->pipe_wr = -1;
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->wake, NULL);
    int fds[2];
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) != 0) {
        qvl_seterr(err, "worker: cannot create a pipe: %s", strerror(errno));
        free_worker(w);
        return NULL;
    }
    w->pipe_rd = fds[0];
    w->pipe_wr = fds[1];
    w->opts = *o;
    if (o->model) {                 /* embedded files are static; only the strings need copying */
        w->source = *o->model;
        w->model_dir = dupstr(o->model->dir);
        w->source.dir = w->model_dir;
        w->label = dupstr(o->model->label);
        w->source.label = w->label;
        w->opts.model = &w->source;
    }
    w->system = dupstr(o->system);
    w->opts.system = w->system;
    int rc = pthread_create(&w->thread, NULL, worker_main, w);
    if (rc != 0) {
        qvl_seterr(err, "worker: cannot start the model thread: %s", strerror(rc));
        free_worker(w);
        return NULL;
    }
    return w;
}

void worker_stop(worker *w) {
    if (!w) return;
    worker_cancel(w);
    pthread_mutex_lock(&w->lock);
    w->quit = 1;
    pthread_cond_signal(&w->wake);
    pthread_mutex_unlock(&w->lock);
    pthread_join(w->thread, NULL);
    free_worker(w);
}
