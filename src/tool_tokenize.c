/* tool_tokenize.c: placeholder. */
#include <stdio.h>
#include "tools.h"
int tool_tokenize_main(int argc, char **argv) { (void)argc; fprintf(stderr, "qvl: %s: not implemented yet\n", argv[0]); return 1; }
