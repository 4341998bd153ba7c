/* worker.h - the model thread of the interactive chat.
 *
 * Loading, image encoding, prefill and generation are slow; the screen must not
 * freeze while they run.  So one background thread owns the qvl_session (it
 * opens it, too, reporting loading progress) and the UI talks to it through two
 * small queues: requests go in (send a turn, clear, /set, /save, ...), events
 * come out (state changes, token pieces, reply done, notices, errors).
 *
 * The UI never blocks on the worker: worker_fd() is a descriptor that becomes
 * readable whenever events are waiting, so the UI can put it in the same poll()
 * as the keyboard, then drain with worker_next_event().  Requests are handled in
 * order.  worker_cancel() is the one call that acts at once: it stops the reply
 * in progress within one decode step (the partial reply is kept, as the session
 * keeps it) and drops sends still waiting in the queue. */
#ifndef QVL_WORKER_H
#define QVL_WORKER_H

#include "session.h"

typedef enum {
    WEV_STATE,      /* state, fraction: loading x%, encoding, prefill, generating, idle */
    WEV_READY,      /* the model is loaded; stats filled */
    WEV_LOAD_FAILED,/* session_open failed; text = the error. Only quit is left to do */
    WEV_TOKEN,      /* text = a piece of the reply, reasoning = 1 inside <think> */
    WEV_DONE,       /* a reply ended: info (finish_reason copied), stats */
    WEV_SEND_FAILED,/* session_send refused the turn (nothing changed); text = error */
    WEV_DROPPED,    /* worker_cancel dropped a send still queued (one event per send) */
    WEV_NOTICE,     /* text for the user (context drop, image scaled, "saved to X") */
    WEV_ERROR,      /* a command failed; text = the error */
    WEV_CLEARED,    /* the conversation was cleared (by /clear, /system or before /load) */
    WEV_MESSAGE,    /* /load replays the conversation: role ("system", "user",
                       "assistant"), text, image = an image path of a user turn (or NULL) */
    WEV_STATS       /* stats changed (after /clear, /system, /load, /set) */
} worker_event_kind;

typedef struct {
    worker_event_kind kind;
    qvl_state state;
    double fraction;
    int reasoning;
    char *text;                 /* malloc'd or NULL */
    char *image;                /* WEV_MESSAGE: image path, malloc'd or NULL */
    char role[16];              /* WEV_MESSAGE */
    qvl_reply_info info;        /* WEV_DONE; info.finish_reason points at finish */
    char finish[16];
    qvl_session_stats stats;    /* WEV_READY, WEV_DONE, WEV_STATS */
} worker_event;

typedef struct worker worker;

/* Starts the thread, which opens the session with *o (copied, with its strings).
 * NULL only when the thread or its pipe cannot be created (err says why); a bad
 * model is reported later as WEV_LOAD_FAILED. */
worker *worker_start(const qvl_session_opts *o, char *err);
/* Cancels what runs, asks the thread to end, joins it and frees everything. */
void worker_stop(worker *w);

/* Readable when events wait; for poll().  Do not read it: worker_next_event does. */
int worker_fd(const worker *w);
/* Takes the oldest event: 1 = *ev filled (free with worker_event_free), 0 = none. Never blocks. */
int worker_next_event(worker *w, worker_event *ev);
void worker_event_free(worker_event *ev);

/* Requests; parts and strings are copied.  0, or -1 when out of memory. */
int worker_send(worker *w, const qvl_part *parts, int nparts);
int worker_clear(worker *w);
int worker_set_system(worker *w, const char *text);
int worker_set_param(worker *w, const char *name, const char *value);
int worker_save(worker *w, const char *path);
int worker_load(worker *w, const char *path);
int worker_request_stats(worker *w);
/* Stops the reply in progress (thread-safe, returns at once) and drops queued sends. */
void worker_cancel(worker *w);

/* A short name for a state ("idle", "loading", ...), for status lines. */
const char *worker_state_name(qvl_state st);

#endif
