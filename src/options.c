/* options.c: placeholder, not yet written. */
