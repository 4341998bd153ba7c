/* sampler.c: placeholder, not yet written. */
