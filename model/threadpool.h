/* threadpool.h - one persistent pool of worker threads for the forward pass.
 *
 * parallel_for(n, fn, arg) splits the items 0..n-1 into one contiguous range
 * per thread and calls fn(arg, begin, end) on each range, the calling thread
 * taking the first one; it returns when every range is done.  Work is split by
 * output (a matrix row, an attention head, a query), so every output is
 * computed by exactly one thread in a fixed order: results are bit-identical
 * whatever the thread count.
 *
 * A parallel_for issued from inside a task runs serially on that thread. */
#ifndef QVL_THREADPOOL_H
#define QVL_THREADPOOL_H

#define QVL_MAX_THREADS 256

typedef void (*pool_task)(void *arg, int begin, int end);

/* Sets the number of threads (the caller included); n <= 0 means one per
 * online CPU.  Returns the number actually used.  Not to be called while a
 * parallel_for is running. */
int pool_set_threads(int n);
/* The current number of threads (starting the default pool if needed). */
int pool_threads(void);
void parallel_for(int n, pool_task fn, void *arg);
/* parallel_for that balances the load: each thread starts on the range
 * parallel_for would give it, claiming `chunk` items at a time, and then
 * takes chunks left in the others' ranges, so a thread slowed down (by the
 * memory, by another process) delays the end by one chunk at most.  Only for
 * tasks whose items come out the same whichever thread computes them, in
 * whatever chunks (then the results are still independent of the thread
 * count and of scheduling). */
void parallel_for_dynamic(int n, int chunk, pool_task fn, void *arg);
/* Joins the workers (the next parallel_for starts a fresh default pool). */
void pool_shutdown(void);

#endif
