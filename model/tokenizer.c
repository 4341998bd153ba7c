/* tokenizer.c: placeholder, not yet written. */
