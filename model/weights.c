/* weights.c: being written. */
