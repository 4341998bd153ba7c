/* term.c: placeholder, not yet written. */
