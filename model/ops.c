/* ops.c: placeholder, not yet written. */
