/* threadpool.c - a persistent pthread pool with a single parallel_for.
 *
 * The workers sleep on a condition variable; parallel_for publishes a job
 * (function, argument, item count) under a new generation number, wakes them,
 * runs the first range itself and waits until the others report done.  Ranges
 * are a pure function of (n, thread index, thread count), so the work each
 * output gets never depends on scheduling.  Creating threads per call would
 * cost more than a decode step of a small model; a persistent pool costs two
 * condition-variable round trips. */
#include "threadpool.h"

#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

static struct {
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    pthread_mutex_t submit;         /* one parallel_for at a time */
    pthread_t workers[QVL_MAX_THREADS];
    int nthreads;                   /* 0 = not started; includes the caller */
    unsigned long generation;
    int pending;                    /* workers still running the current job */
    int quit;
    pool_task fn;
    void *arg;
    int n;
} P = { .mu = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER,
        .done = PTHREAD_COND_INITIALIZER, .submit = PTHREAD_MUTEX_INITIALIZER };

static __thread int inside_task;    /* nested parallel_for runs serially */

static void run_range(pool_task fn, void *arg, int n, int index, int count) {
    int begin = (int)((long long)n * index / count);
    int end = (int)((long long)n * (index + 1) / count);
    if (begin < end) fn(arg, begin, end);
}

static void *worker_main(void *p) {
    int index = (int)(long)p;
    unsigned long seen = 0;
    inside_task = 1;
    pthread_mutex_lock(&P.mu);
    for (;;) {
        while (P.generation == seen && !P.quit) pthread_cond_wait(&P.wake, &P.mu);
        if (P.quit) break;
        seen = P.generation;
        pool_task fn = P.fn;
        void *arg = P.arg;
        int n = P.n, count = P.nthreads;
        pthread_mutex_unlock(&P.mu);
        run_range(fn, arg, n, index, count);
        pthread_mutex_lock(&P.mu);
        if (--P.pending == 0) pthread_cond_signal(&P.done);
    }
    pthread_mutex_unlock(&P.mu);
    return NULL;
}

static int online_cpus(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > QVL_MAX_THREADS ? QVL_MAX_THREADS : (int)n;
}

static void stop_workers(void) {
    pthread_mutex_lock(&P.mu);
    P.quit = 1;
    pthread_cond_broadcast(&P.wake);
    pthread_mutex_unlock(&P.mu);
    for (int i = 1; i < P.nthreads; i++) pthread_join(P.workers[i], NULL);
    P.quit = 0;
    P.nthreads = 0;
}

int pool_set_threads(int n) {
    if (n <= 0) n = online_cpus();
    if (n > QVL_MAX_THREADS) n = QVL_MAX_THREADS;
    pthread_mutex_lock(&P.submit);
    if (P.nthreads) stop_workers();
    P.generation = 0;
    int started = 1;
    for (; started < n; started++)
        if (pthread_create(&P.workers[started], NULL, worker_main, (void *)(long)started) != 0) break;
    P.nthreads = started;      /* fewer than asked if the system refused threads */
    pthread_mutex_unlock(&P.submit);
    return started;
}

int pool_threads(void) {
    if (!P.nthreads) pool_set_threads(0);
    return P.nthreads;
}

void parallel_for(int n, pool_task fn, void *arg) {
    if (n <= 0) return;
    if (inside_task) { fn(arg, 0, n); return; }
    if (!P.nthreads) pool_set_threads(0);
    pthread_mutex_lock(&P.submit);
    int count = P.nthreads;
    if (count == 1 || n == 1) {
        pthread_mutex_unlock(&P.submit);
        inside_task = 1;
        fn(arg, 0, n);
        inside_task = 0;
        return;
    }
    pthread_mutex_lock(&P.mu);
    P.fn = fn; P.arg = arg; P.n = n;
    P.pending = count - 1;
    P.generation++;
    pthread_cond_broadcast(&P.wake);
    pthread_mutex_unlock(&P.mu);

    inside_task = 1;
    run_range(fn, arg, n, 0, count);
    inside_task = 0;

    pthread_mutex_lock(&P.mu);
    while (P.pending > 0) pthread_cond_wait(&P.done, &P.mu);
    pthread_mutex_unlock(&P.mu);
    pthread_mutex_unlock(&P.submit);
}

void pool_shutdown(void) {
    pthread_mutex_lock(&P.submit);
    if (P.nthreads) stop_workers();
    pthread_mutex_unlock(&P.submit);
}
