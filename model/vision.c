/* vision.c: placeholder, not yet written. */
