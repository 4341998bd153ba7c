/* decoder.c: placeholder, not yet written. */
