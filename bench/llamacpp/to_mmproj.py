#!/usr/bin/env python3
"""to_mmproj.py: the vision tower of a Qwen3-VL checkpoint as llama.cpp's mmproj GGUF.

Why: issue 6 asks for image encoding side by side with llama.cpp's mtmd
("at least 2x faster for the same picture and image-token budget").  mtmd
reads the vision encoder from a separate "clip" GGUF, the mmproj file; this
writes one from the Hugging Face safetensors with the stdlib only (this
machine has no numpy, torch or gguf-py), reusing to_gguf.py's writer parts.

What llama.cpp's clip loader (tools/mtmd/clip.cpp, projector "qwen3vl_merger")
asks for, and where each piece comes from:

    v.patch_embd.weight, .weight.1   patch_embed.proj.weight [1024,3,2,16,16]
                                     split along its temporal axis into two
                                     Conv2D kernels (t = 0 and t = 1), F32
    v.patch_embd.bias                patch_embed.proj.bias
    v.position_embd.weight           pos_embed.weight [2304, 1024], F32
    v.blk.N.ln1 / ln2                blocks.N.norm1 / norm2 (LayerNorm)
    v.blk.N.attn_qkv / attn_out      blocks.N.attn.qkv / attn.proj
    v.blk.N.ffn_up / ffn_down        blocks.N.mlp.linear_fc1 / linear_fc2
    v.post_ln                        merger.norm (LayerNorm before the 2x2 merge)
    mm.0 / mm.2                      merger.linear_fc1 / linear_fc2
    v.deepstack.L.norm / fc1 / fc2   deepstack_merger_list.K.*, where L is the
                                     K-th entry of deepstack_visual_indexes

Types follow llama.cpp's converter: 1-D tensors, the position table and the
patch kernels F32; the other matrices BF16 (copied raw), F16 (--type f16,
rounded to nearest even from the bf16 values, which f16 holds exactly when
they are in its range, as the synthetic weights are) or Q8_0 (--type q8_0,
ggml's reference quantization, as to_gguf.py does it).

Usage: python3 to_mmproj.py MODEL_DIR OUT.gguf [--type bf16|f16|q8_0] [--workers N]
"""

import argparse
import json
import math
import os
import struct
import sys

import to_gguf
from to_gguf import (ALIGNMENT, GGML_BF16, GGML_F16, GGML_F32, GGML_Q8_0, T_ARRAY, T_BOOL,
                     T_F32, T_STRING, T_U32, bf16_to_f32, convert_with, q8_0_job,
                     read_safetensors_header, stored_blocks, write_gguf)

MATRIX_TYPE = {"bf16": GGML_BF16, "f16": GGML_F16, "q8_0": GGML_Q8_0}
FTYPE = {"bf16": 32, "f16": 1, "q8_0": 7}   # llama_ftype: MOSTLY_BF16, MOSTLY_F16, MOSTLY_Q8_0


def tensor_plan(st, vcfg):
    """List of (gguf name, safetensors name, ne[], ggml type, part).

    The type is "matrix" where --type decides; part is the temporal index a
    patch kernel takes from the Conv3D weight, None for every other tensor.
    """
    pre = "model.visual."
    if pre + "pos_embed.weight" not in st:
        pre = "visual."
    plan = []

    def add(gname, hname, gtype=None, part=None):
        src = pre + hname
        if src not in st:
            sys.exit(f"to_mmproj: {src} is missing from the checkpoint")
        dtype, shape, _, _ = st[src]
        if dtype != "BF16":
            sys.exit(f"to_mmproj: {src} is {dtype}; only BF16 checkpoints are handled")
        if part is not None:          # one temporal slice of [out, in, t, h, w]
            shape = shape[:2] + shape[3:]
        if gtype is None:
            gtype = GGML_F32 if len(shape) == 1 else "matrix"
        plan.append((gname, src, list(reversed(shape)), gtype, part))

    add("v.patch_embd.weight", "patch_embed.proj.weight", GGML_F32, 0)
    add("v.patch_embd.weight.1", "patch_embed.proj.weight", GGML_F32, 1)
    add("v.patch_embd.bias", "patch_embed.proj.bias")
    add("v.position_embd.weight", "pos_embed.weight", GGML_F32)
    per_layer = [("ln1", "norm1"), ("ln2", "norm2"), ("attn_qkv", "attn.qkv"),
                 ("attn_out", "attn.proj"), ("ffn_up", "mlp.linear_fc1"),
                 ("ffn_down", "mlp.linear_fc2")]
    for i in range(vcfg["depth"]):
        for g, h in per_layer:
            for kind in ("weight", "bias"):
                add(f"v.blk.{i}.{g}.{kind}", f"blocks.{i}.{h}.{kind}")
    for kind in ("weight", "bias"):
        add(f"v.post_ln.{kind}", f"merger.norm.{kind}")
        add(f"mm.0.{kind}", f"merger.linear_fc1.{kind}")
        add(f"mm.2.{kind}", f"merger.linear_fc2.{kind}")
    for k, layer in enumerate(vcfg.get("deepstack_visual_indexes", [])):
        for g, h in (("norm", "norm"), ("fc1", "linear_fc1"), ("fc2", "linear_fc2")):
            for kind in ("weight", "bias"):
                add(f"v.deepstack.{layer}.{g}.{kind}", f"deepstack_merger_list.{k}.{h}.{kind}")
    return plan


def metadata(full, pre_cfg, qtype, name):
    v = full["vision_config"]
    t = full.get("text_config", full)
    n_pos = v.get("num_position_embeddings", 2304)
    image_size = int(math.isqrt(n_pos) * v["patch_size"])
    return [
        ("general.architecture", T_STRING, "clip"),
        ("general.name", T_STRING, name),
        ("general.file_type", T_U32, FTYPE[qtype]),
        ("general.alignment", T_U32, ALIGNMENT),
        ("clip.has_vision_encoder", T_BOOL, True),
        ("clip.projector_type", T_STRING, "qwen3vl_merger"),
        ("clip.use_gelu", T_BOOL, True),
        ("clip.vision.projection_dim", T_U32, t["hidden_size"]),
        ("clip.vision.image_size", T_U32, image_size),
        ("clip.vision.patch_size", T_U32, v["patch_size"]),
        ("clip.vision.embedding_length", T_U32, v["hidden_size"]),
        ("clip.vision.feed_forward_length", T_U32, v["intermediate_size"]),
        ("clip.vision.block_count", T_U32, v["depth"]),
        ("clip.vision.attention.head_count", T_U32, v["num_heads"]),
        ("clip.vision.attention.layer_norm_epsilon", T_F32, float(t.get("rms_norm_eps", 1e-6))),
        ("clip.vision.spatial_merge_size", T_U32, v.get("spatial_merge_size", 2)),
        ("clip.vision.image_mean", (T_ARRAY, T_F32), [float(x) for x in pre_cfg["image_mean"]]),
        ("clip.vision.image_std", (T_ARRAY, T_F32), [float(x) for x in pre_cfg["image_std"]]),
    ]


def bf16_to_f16(raw):
    """bf16 bytes -> IEEE half bytes, rounding to nearest even (struct's 'e')."""
    x = bf16_to_f32(raw)
    return struct.pack(f"<{len(x)}e", *x)


def _f16_job(job):
    """A pool job: one chunk of the checkpoint (mapped by to_gguf's worker
    initializer) as halves."""
    off, nbytes = job
    return bf16_to_f16(to_gguf.worker_source()[off:off + nbytes])


def temporal_slice(src, off, shape, t):
    """Bytes of w[:, :, t] from a bf16 [out, in, T, h, w] tensor."""
    o, c, nt, h, w = shape
    run = 2 * h * w
    return b"".join(src[off + ((i * nt) + t) * run: off + ((i * nt) + t + 1) * run]
                    for i in range(o * c))


def convert(model_dir, out_path, qtype, workers, name):
    full = json.load(open(os.path.join(model_dir, "config.json")))
    pre_cfg = json.load(open(os.path.join(model_dir, "preprocessor_config.json")))
    if "vision_config" not in full:
        sys.exit(f"to_mmproj: {model_dir}/config.json has no vision_config")
    st_path = os.path.join(model_dir, "model.safetensors")
    st = read_safetensors_header(st_path)
    plan = [(g, s, ne, MATRIX_TYPE[qtype] if ty == "matrix" else ty, part)
            for g, s, ne, ty, part in tensor_plan(st, full["vision_config"])]
    kvs = metadata(full, pre_cfg, qtype, name)

    def build(src, pool):
        tensors = []
        for gname, sname, ne, gtype, part in plan:
            _, shape, off, nbytes = st[sname]
            if part is not None:
                blocks = lambda shape=shape, off=off, part=part: [
                    bf16_to_f32(temporal_slice(src, off, shape, part)).tobytes()]
            else:
                blocks = stored_blocks(src, off, nbytes, gtype, pool,
                                       _f16_job if gtype == GGML_F16 else q8_0_job)
            tensors.append((gname, ne, gtype, blocks))
        write_gguf(out_path, kvs, tensors, "to_mmproj")
    convert_with(st_path, workers, qtype != "bf16", build)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("out")
    ap.add_argument("--type", choices=sorted(FTYPE), default="bf16")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="processes converting in parallel (f16, q8_0)")
    ap.add_argument("--name", default="qvl synthetic Qwen3-VL-2B shape (vision encoder)")
    a = ap.parse_args()
    convert(a.model_dir, a.out, a.type, max(1, a.workers), a.name)


if __name__ == "__main__":
    main()
