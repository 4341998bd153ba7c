/* sixel.c: placeholder, not yet written. */
