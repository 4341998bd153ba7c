/* image.c: placeholder, not yet written. */
