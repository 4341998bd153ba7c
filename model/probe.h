/* probe.h - a window onto the intermediate tensors of the forward pass.
 *
 * The vision encoder and the decoder report, by name, the tensors the
 * reference goldens hold (vision.patch_embed, vision.block_in0,
 * vision.block_out.<i>, vision.merged, vision.deepstack.<j>, layer_out.<i>,
 * final_norm_in, final_norm_out, logits_last), as row-major float
 * [rows, cols].  `qvl dump` and the tests listen; normal runs pass NULL and pay
 * nothing.  The data is only valid during the call. */
#ifndef QVL_PROBE_H
#define QVL_PROBE_H

typedef void (*qvl_probe_fn)(void *ctx, const char *name, const float *data, int rows, int cols);

typedef struct {
    qvl_probe_fn fn;
    void *ctx;
} qvl_probe;

static inline void probe_emit(const qvl_probe *p, const char *name, const float *data, int rows, int cols) {
    if (p && p->fn) p->fn(p->ctx, name, data, rows, cols);
}

#endif
