/* test_render.c: placeholder suite, not yet written. */
#include "testutil.h"
int main(void) { return run_suite(suite_create("render")); }
