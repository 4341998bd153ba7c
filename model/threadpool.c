/* threadpool.c - a persistent pthread pool with a single parallel_for.
 *
 * parallel_for publishes a job (function, argument, item count) under a new
 * generation number, runs the first range itself and waits until the others
 * report done.  Ranges are a pure function of (n, thread index, thread
 * count), so the work each output gets never depends on scheduling.
 *
 * parallel_for_dynamic starts from the same ranges but lets a thread that
 * has finished its own take chunks off the back of the others': decoding's
 * matrix-vector products are memory bound, and the two halves of a matrix
 * seldom take the same time (measured on the 2B shape, q8, 2 threads: the
 * caller waited 4.6-5.0 ms of a 74 ms token for the other thread).  Each
 * thread claims its own range chunk by chunk from the front with a
 * compare-and-swap on a word nobody else touches until it steals, so the
 * common case costs no cache-line traffic, and every thread still streams
 * one contiguous stretch of memory.  Which thread computes an item then
 * varies, so this is only for tasks whose every item is computed the same
 * way whichever thread runs it (all of the engine's are: see
 * threadpool.h).
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
#include <stdint.h>
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
    int chunk;                      /* 0: static ranges; else parallel_for_dynamic's chunk */
} P = { .mu = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER,
        .done = PTHREAD_COND_INITIALIZER, .submit = PTHREAD_MUTEX_INITIALIZER };

static __thread int inside_task;    /* nested parallel_for runs serially */

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static void range_of(int n, int index, int count, int *begin, int *end) {
    *begin = (int)((long long)n * index / count);
    *end = (int)((long long)n * (index + 1) / count);
}

/* parallel_for_dynamic's items not yet claimed in each thread's range:
 * front in the low 32 bits, back (exclusive) in the high 32, one cache line
 * per thread. */
typedef struct {
    _Alignas(64) _Atomic uint64_t span;
} share;
static share shares[QVL_MAX_THREADS];

static uint64_t span_of(uint32_t front, uint32_t back) { return (uint64_t)back << 32 | front; }

/* Claims up to `chunk` items from the front (own range) or the back (another
 * thread's) of a share; 0 when it is empty. */
static int claim(share *s, int chunk, int from_back, int *begin, int *end) {
    uint64_t v = atomic_load_explicit(&s->span, memory_order_relaxed);
    for (;;) {
        uint32_t f = (uint32_t)v, b = (uint32_t)(v >> 32);
        if (f >= b) return 0;
        uint32_t take = b - f < (uint32_t)chunk ? b - f : (uint32_t)chunk;
        uint64_t next = from_back ? span_of(f, b - take) : span_of(f + take, b);
        if (atomic_compare_exchange_weak_explicit(&s->span, &v, next, memory_order_relaxed, memory_order_relaxed)) {
            *begin = (int)(from_back ? b - take : f);
            *end = *begin + (int)take;
            return 1;
        }
    }
}

/* Thread `index`'s part of the current job: its range, or under
 * parallel_for_dynamic its range chunk by chunk and then whatever is left
 * of the others', nearest thread first. */
static void run_share(pool_task fn, void *arg, int n, int chunk, int index, int count) {
    int begin, end;
    if (!chunk) {
        range_of(n, index, count, &begin, &end);
        if (begin < end) fn(arg, begin, end);
        return;
    }
    while (claim(&shares[index], chunk, 0, &begin, &end)) fn(arg, begin, end);
    for (int k = 1; k < count; k++) {
        share *victim = &shares[(index + k) % count];
        while (claim(victim, chunk, 1, &begin, &end)) fn(arg, begin, end);
    }
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
        run_share(P.fn, P.arg, P.n, P.chunk, index, P.nthreads);
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

static void run_job(int n, int chunk, pool_task fn, void *arg) {
    if (n <= 0) return;
    if (inside_task) { fn(arg, 0, n); return; }
    if (!P.nthreads) pool_set_threads(0);
    pthread_mutex_lock(&P.submit);
    int count = P.nthreads;
    if (count == 1 || n == 1 || (chunk && n <= chunk)) {
        pthread_mutex_unlock(&P.submit);
        inside_task = 1;
        fn(arg, 0, n);
        inside_task = 0;
        return;
    }
    P.fn = fn; P.arg = arg; P.n = n; P.chunk = chunk;
    for (int i = 0; chunk && i < count; i++) {      /* published with the generation below */
        int begin, end;
        range_of(n, i, count, &begin, &end);
        atomic_store_explicit(&shares[i].span, span_of((uint32_t)begin, (uint32_t)end), memory_order_relaxed);
    }
    atomic_store_explicit(&P.pending, count - 1, memory_order_relaxed);
    pthread_mutex_lock(&P.mu);
    atomic_fetch_add_explicit(&P.generation, 1, memory_order_release);   /* publishes the job */
    if (P.sleepers) pthread_cond_broadcast(&P.wake);
    pthread_mutex_unlock(&P.mu);

    inside_task = 1;
    run_share(fn, arg, n, chunk, 0, count);
    inside_task = 0;

    wait_workers();
    pthread_mutex_unlock(&P.submit);
}

void parallel_for(int n, pool_task fn, void *arg) { run_job(n, 0, fn, arg); }

void parallel_for_dynamic(int n, int chunk, pool_task fn, void *arg) { run_job(n, chunk < 1 ? 1 : chunk, fn, arg); }

void pool_shutdown(void) {
    pthread_mutex_lock(&P.submit);
    if (P.nthreads) stop_workers();
    pthread_mutex_unlock(&P.submit);
}
