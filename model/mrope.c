/* mrope.c: placeholder, not yet written. */
