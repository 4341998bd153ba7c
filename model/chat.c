/* chat.c: placeholder, not yet written. */
