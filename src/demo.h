/* demo.h - the built-in demo model: a tiny Qwen3-VL checkpoint (3.7 M
 * parameters, its own 518-token vocabulary) trained to talk about pictures of
 * coloured circles, squares and triangles.  Its files are linked into the
 * program, so `qvl` without -m works from anywhere, also after make install. */
#ifndef QVL_DEMO_H
#define QVL_DEMO_H

#include "source.h"

/* The embedded files as a model source (dir NULL, label "built-in demo model"). */
const qvl_source *demo_source(void);

#endif
