/* blocks.c: placeholder, not yet written. */
