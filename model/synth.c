/* synth.c: being written. */
