/* threadpool.c: placeholder, not yet written. */
