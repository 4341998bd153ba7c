/* threadpool.c - a persistent pthread pool with a single parallel_for.
 *
 * parallel_for publishes a job (function, argument, item count) under a new
 * generation number, runs the first range itself and waits until the others
 * report done.  Ranges are a pure function of (n, thread index, thread
 * count), so the work each output gets never depends on scheduling.
 *
 * Decoding a token issues a few hundred parallel_fors of well under a
 * millisecond each, so the hand-off must cost microseconds: a worker spins on
 * the generation number for a while before it sleeps on the condition
 * variable, and the caller likewise spins on the count of workers still
 * running before it sleeps.  Between turns of a chat the workers soon fall
 * asleep and cost nothing. */
#include "threadpool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

/* Spin iterations before sleeping: ~100 us where pause takes ~140 cycles
 * (recent Intel), less elsewhere. */
#define SPIN_LIMIT 2000

static struct {
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    pthread_mutex_t submit;         /* one parallel_for at a time */
    pthread_t workers[QVL_MAX_THREADS];
    int nthreads;                   /* 0 = not started; includes the caller */
    atomic_ulong generation;
    atomic_int pending;             /* workers still running the current job */
    atomic_int quit;
    int sleepers;                   /* workers waiting on `wake` (under mu) */
    pool_task fn;
    void *arg;
    int n;
} P = { .mu = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER,
        .done = PTHREAD_COND_INITIALIZER, .submit = PTHREAD_MUTEX_INITIALIZER };

static __thread int inside_task;    /* nested parallel_for runs serially */

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void run_range(pool_task fn, void *arg, int n, int index, int count) {
    int begin = (int)((long long)n * index / count);
    int end = (int)((long long)n * (index + 1) / count);
    if (begin < end) fn(arg, begin, end);
}

/* The next generation after `seen`, spinning first, then sleeping. */
static unsigned long next_generation(unsigned long seen) {
    unsigned long g;
    for (int i = 0; i < SPIN_LIMIT; i++) {
        g = atomic_load_explicit(&P.generation, memory_order_acquire);
        if (g != seen || atomic_load_explicit(&P.quit, memory_order_relaxed)) return g;
        cpu_relax();
    }
    pthread_mutex_lock(&P.mu);
    P.sleepers++;
    while ((g = atomic_load(&P.generation)) == seen && !atomic_load(&P.quit))
        pthread_cond_wait(&P.wake, &P.mu);
    P.sleepers--;
    pthread_mutex_unlock(&P.mu);
    return g;
}

static void *worker_main(void *p) {
    int index = (int)(long)p;
    unsigned long seen = 0;
    inside_task = 1;
    for (;;) {
        seen = next_generation(seen);
        if (atomic_load(&P.quit)) break;
        run_range(P.fn, P.arg, P.n, index, P.nthreads);
        if (atomic_fetch_sub_explicit(&P.pending, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&P.mu);     /* the caller may be asleep */
            pthread_cond_signal(&P.done);
            pthread_mutex_unlock(&P.mu);
        }
    }
    return NULL;
}

static int online_cpus(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > QVL_MAX_THREADS ? QVL_MAX_THREADS : (int)n;
}

static void stop_workers(void) {
    pthread_mutex_lock(&P.mu);
    atomic_store(&P.quit, 1);
    pthread_cond_broadcast(&P.wake);
    pthread_mutex_unlock(&P.mu);
    for (int i = 1; i < P.nthreads; i++) pthread_join(P.workers[i], NULL);
    atomic_store(&P.quit, 0);
    P.nthreads = 0;
}

int pool_set_threads(int n) {
    if (n <= 0) n = online_cpus();
    if (n > QVL_MAX_THREADS) n = QVL_MAX_THREADS;
    pthread_mutex_lock(&P.submit);
    if (P.nthreads) stop_workers();
    atomic_store(&P.generation, 0);
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

static void wait_workers(void) {
    for (int i = 0; i < SPIN_LIMIT; i++) {
        if (atomic_load_explicit(&P.pending, memory_order_acquire) == 0) return;
        cpu_relax();
    }
    pthread_mutex_lock(&P.mu);
    while (atomic_load(&P.pending) > 0) pthread_cond_wait(&P.done, &P.mu);
    pthread_mutex_unlock(&P.mu);
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
    P.fn = fn; P.arg = arg; P.n = n;
    atomic_store_explicit(&P.pending, count - 1, memory_order_relaxed);
    pthread_mutex_lock(&P.mu);
    atomic_fetch_add_explicit(&P.generation, 1, memory_order_release);   /* publishes the job */
    if (P.sleepers) pthread_cond_broadcast(&P.wake);
    pthread_mutex_unlock(&P.mu);

    inside_task = 1;
    run_range(fn, arg, n, 0, count);
    inside_task = 0;

    wait_workers();
    pthread_mutex_unlock(&P.submit);
}

void pool_shutdown(void) {
    pthread_mutex_lock(&P.submit);
    if (P.nthreads) stop_workers();
    pthread_mutex_unlock(&P.submit);
}
