/* source.c: being written. */
