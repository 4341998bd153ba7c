/* synth.h - synthetic Qwen3-VL checkpoints from the documented weight recipe
 * (tests/data/models/SYNTH.md): every value a pure function of the tensor's
 * name, shape and a seed, so tests and benchmarks need no downloaded weights. */
#ifndef QVL_SYNTH_H
#define QVL_SYNTH_H

#include <stdint.h>
#include "config.h"
#include "safetensors.h"

/* The tensors a checkpoint of this config holds, with the published names and
 * shapes, sorted by name. Returns the count; *specs is malloc'd (names too:
 * free with synth_free_specs). */
int synth_tensor_specs(const qvl_config *c, st_spec **specs);
void synth_free_specs(st_spec *specs, int n);

/* Values [start, start+n) of a tensor, as bf16 bits. */
void synth_values_bf16(const char *name, const int64_t *shape, int ndim, uint64_t seed,
                       int64_t start, int64_t n, uint16_t *out);

/* Writes outdir/model.safetensors (bf16) and copies config.json (and the
 * preprocessor_config.json beside it, when present). threads <= 0: 2. */
int synth_write(const char *config_path, uint64_t seed, const char *outdir, int threads, char *err);

#endif
