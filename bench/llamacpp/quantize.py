#!/usr/bin/env python3
"""quantize.py: llama.cpp's own quantizer (llama_model_quantize) on a GGUF file.

Why: Q4_K_M, the format most llama.cpp users run, uses k-quant super-blocks
and a per-tensor choice of types (some layers Q6_K/Q5_K) that llama.cpp decides;
rewriting that in Python would measure a copy, not llama.cpp.  The prebuilt
libllama of @node-llama-cpp/linux-x64 exports llama_model_quantize, so this
calls it through ctypes (stdlib) on the BF16 file that to_gguf.py wrote; the
result is the same file `llama-quantize IN OUT Q4_K_M` would make with this
build.

The parameter struct is laid out as in this build's include/llama.h (the
llama.cpp sources node-llama-cpp ships in llama/gitRelease.bundle):

    struct llama_model_quantize_params {
        int32_t nthread; enum llama_ftype ftype;
        enum ggml_type output_tensor_type, token_embedding_type;
        bool allow_requantize, quantize_output_tensor, only_copy, pure,
             keep_split, dry_run;
        const void *imatrix, *kv_overrides, *tt_overrides; const int32_t *prune_layers;
        size_t max_buf_size;
    };

Its defaults come from llama_model_quantize_default_params(); only nthread
and ftype are changed.  A layout that did not match the library would show
as a default that is not what llama.h says (checked below before use).

Usage: python3 quantize.py IN.gguf OUT.gguf [--type q4_k_m|q8_0|q4_0] [--lib DIR] [-t N]
"""

import argparse
import ctypes
import os
import sys
import time

FTYPES = {"q4_0": 2, "q8_0": 7, "q4_k_m": 15, "q5_k_m": 17, "q6_k": 18}
GGML_TYPE_COUNT_MIN = 30        # ggml types run past BF16 (30); "unset" is GGML_TYPE_COUNT
DEFAULT_LIB = "/tmp/llama/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64"


class QuantizeParams(ctypes.Structure):
    _fields_ = [
        ("nthread", ctypes.c_int32),
        ("ftype", ctypes.c_int),
        ("output_tensor_type", ctypes.c_int),
        ("token_embedding_type", ctypes.c_int),
        ("allow_requantize", ctypes.c_bool),
        ("quantize_output_tensor", ctypes.c_bool),
        ("only_copy", ctypes.c_bool),
        ("pure", ctypes.c_bool),
        ("keep_split", ctypes.c_bool),
        ("dry_run", ctypes.c_bool),
        ("imatrix", ctypes.c_void_p),
        ("kv_overrides", ctypes.c_void_p),
        ("tt_overrides", ctypes.c_void_p),
        ("prune_layers", ctypes.c_void_p),
        ("max_buf_size", ctypes.c_size_t),
    ]


def find_libllama(d):
    names = sorted(n for n in os.listdir(d) if n.startswith("libllama.") and ".so" in n)
    if not names:
        sys.exit(f"quantize: no libllama*.so in {d}")
    return os.path.join(d, names[0])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--type", choices=sorted(FTYPES), default="q4_k_m")
    ap.add_argument("--lib", default=DEFAULT_LIB,
                    help="folder with libllama*.so (the prebuilt @node-llama-cpp/linux-x64 binaries)")
    ap.add_argument("-t", "--threads", type=int, default=os.cpu_count() or 1)
    a = ap.parse_args()

    lib = ctypes.CDLL(find_libllama(a.lib))
    lib.llama_model_quantize_default_params.restype = QuantizeParams
    lib.llama_model_quantize_default_params.argtypes = []
    lib.llama_model_quantize.restype = ctypes.c_uint32
    lib.llama_model_quantize.argtypes = [ctypes.c_char_p, ctypes.c_char_p,
                                         ctypes.POINTER(QuantizeParams)]
    lib.llama_ftype_name.restype = ctypes.c_char_p
    lib.llama_ftype_name.argtypes = [ctypes.c_int]
    lib.llama_backend_init.restype = None
    lib.llama_backend_init()

    p = lib.llama_model_quantize_default_params()
    # This build's defaults (src/llama-quant.cpp): ftype Q8_0 (7), output and
    # embedding types unset (GGML_TYPE_COUNT), quantize_output_tensor true, the
    # rest off, max_buf_size 8 GiB.
    if not (p.ftype == 7 and p.max_buf_size == 8 << 30 and p.output_tensor_type >= GGML_TYPE_COUNT_MIN
            and p.output_tensor_type == p.token_embedding_type
            and p.quantize_output_tensor and not p.allow_requantize and not p.only_copy
            and not p.pure and not p.dry_run and not p.imatrix and not p.prune_layers):
        sys.exit("quantize: llama_model_quantize_default_params() does not match the "
                 "struct layout this script assumes; check include/llama.h of this build")
    p.nthread = a.threads
    p.ftype = FTYPES[a.type]

    t0 = time.time()
    rc = lib.llama_model_quantize(a.src.encode(), (a.dst + ".part").encode(), ctypes.byref(p))
    if rc != 0:
        sys.exit(f"quantize: llama_model_quantize returned {rc}")
    os.replace(a.dst + ".part", a.dst)
    print(f"{a.dst}: {lib.llama_ftype_name(p.ftype).decode()}, "
          f"{os.path.getsize(a.dst) / 2**30:.2f} GiB, {time.time() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
