#!/usr/bin/env python3
"""to_gguf.py: the text decoder of a Qwen3-VL checkpoint as a GGUF file for llama.cpp.

Why: issue 6 asks for qvl's speed side by side with llama.cpp on the same
machine and the same model shape.  llama.cpp reads GGUF, the checkpoints here
are Hugging Face safetensors, and this machine has no numpy and no gguf-py, so
this is a small stdlib-only writer (struct, json, mmap, array).

What it writes: GGUF v3 (see llama.cpp's ggml/include/gguf.h and docs):

    "GGUF" u32 version=3 u64 n_tensors u64 n_kv
    n_kv x  (string key, u32 value type, value)
    n_tensors x (string name, u32 n_dims, u64 ne[n_dims], u32 ggml type, u64 offset)
    padding to general.alignment (32), then the tensor data, each tensor
    starting at a multiple of the alignment.

Strings are u64 length + UTF-8 bytes; ne[0] is the innermost (contiguous)
dimension, so a PyTorch weight of shape [out, in] is written as ne = [in, out].

The architecture is "qwen3": the Qwen3-VL text decoder is Qwen3 (RMSNorm,
q/k RMSNorm per head, GQA, SwiGLU, tied embeddings) with interleaved mRoPE.
For text-only positions the three mRoPE sections carry the same position, so
plain rope costs the same; this file is for speed measurements, not parity.
Vision tensors are left out.

Tensor types: the 2-D matrices are BF16 (ggml type 30, copied raw) or Q8_0
(type 8, quantized here exactly as ggml's quantize_row_q8_0_ref does: blocks
of 32, an fp16 scale d = amax/127, then roundf(x/d) as int8).  1-D norm
weights are always F32, as llama.cpp's own converter writes them.
Other quantizations (Q4_K_M) come from llama.cpp itself: see quantize.py.

With --arch qwen3vl the file is the text half of a Qwen3-VL pair for
llama-mtmd-cli (its vision half comes from to_mmproj.py): the same tensors,
plus the mRoPE sections and the DeepStack count that llama.cpp's qwen3vl
loader reads, so image embeddings of 4 x hidden_size fit its input.

Usage: python3 to_gguf.py MODEL_DIR OUT.gguf [--type bf16|q8_0] [--workers N]
                          [--arch qwen3|qwen3vl]
"""

import argparse
import itertools
import json
import math
import mmap
import multiprocessing
import operator
import os
import struct
import sys
import time
from array import array

# ggml tensor types (ggml/include/ggml.h)
GGML_F32, GGML_F16, GGML_Q8_0, GGML_BF16 = 0, 1, 8, 30
# llama_ftype (include/llama.h): what general.file_type says the file mostly is
FTYPE = {"bf16": 32, "q8_0": 7}
MATRIX_TYPE = {"bf16": GGML_BF16, "q8_0": GGML_Q8_0}

# GGUF metadata value types (ggml/include/gguf.h)
T_U32, T_I32, T_F32, T_BOOL, T_STRING, T_ARRAY = 4, 5, 6, 7, 8, 9

ALIGNMENT = 32
QK = 32                 # elements per Q8_0 block
Q8_0_BLOCK_BYTES = 34   # fp16 scale + 32 int8
CHUNK = 1 << 20         # elements per quantization job (a multiple of QK)

# llama_token_type (include/llama.h)
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED = 1, 3, 4, 5


# ---- safetensors ------------------------------------------------------------

def read_safetensors_header(path):
    """Tensor name -> (dtype, shape, absolute byte offset, byte length)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    base = 8 + n
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        begin, end = t["data_offsets"]
        out[name] = (t["dtype"], t["shape"], base + begin, end - begin)
    return out


# ---- the tensors llama.cpp's qwen3 loader asks for ---------------------------

def tensor_plan(st, cfg, qtype):
    """List of (gguf name, source name, shape as ne[], ggml type)."""
    pre = "model.language_model."
    if pre + "embed_tokens.weight" not in st:
        pre = "model."            # a plain Qwen3 checkpoint
    names = [("token_embd.weight", "embed_tokens.weight"),
             ("output_norm.weight", "norm.weight")]
    per_layer = [
        ("attn_norm", "input_layernorm"),
        ("attn_q", "self_attn.q_proj"),
        ("attn_k", "self_attn.k_proj"),
        ("attn_v", "self_attn.v_proj"),
        ("attn_output", "self_attn.o_proj"),
        ("attn_q_norm", "self_attn.q_norm"),
        ("attn_k_norm", "self_attn.k_norm"),
        ("ffn_norm", "post_attention_layernorm"),
        ("ffn_gate", "mlp.gate_proj"),
        ("ffn_up", "mlp.up_proj"),
        ("ffn_down", "mlp.down_proj"),
    ]
    for i in range(cfg["num_hidden_layers"]):
        for g, h in per_layer:
            names.append((f"blk.{i}.{g}.weight", f"layers.{i}.{h}.weight"))
    if not cfg.get("tie_word_embeddings", False):
        names.append(("output.weight", "lm_head.weight"))

    plan = []
    for gname, hname in names:
        src = "lm_head.weight" if hname == "lm_head.weight" else pre + hname
        if src not in st:
            sys.exit(f"to_gguf: {src} is missing from the checkpoint")
        dtype, shape, _, _ = st[src]
        if dtype != "BF16":
            sys.exit(f"to_gguf: {src} is {dtype}; only BF16 checkpoints are handled")
        ne = list(reversed(shape))
        if len(shape) == 1:
            gtype = GGML_F32
        else:
            gtype = MATRIX_TYPE[qtype]
            if gtype == GGML_Q8_0 and ne[0] % QK:
                sys.exit(f"to_gguf: {src} rows of {ne[0]} are not whole Q8_0 blocks")
        plan.append((gname, src, ne, gtype))
    return plan


def tensor_bytes(ne, gtype):
    n = math.prod(ne)
    if gtype == GGML_F32:
        return 4 * n
    if gtype in (GGML_BF16, GGML_F16):
        return 2 * n
    return n // QK * Q8_0_BLOCK_BYTES


# ---- metadata ----------------------------------------------------------------

def tokenizer_metadata(model_dir, n_vocab, cfg):
    """The gpt2-BPE vocabulary with qwen2 pre-tokenization, padded to n_vocab."""
    tok = json.load(open(os.path.join(model_dir, "tokenizer.json"), encoding="utf-8"))
    model = tok["model"]
    if model["type"] != "BPE":
        sys.exit("to_gguf: tokenizer.json is not a BPE tokenizer")
    tokens = {i: t for t, i in model["vocab"].items()}
    types = {i: TOKEN_NORMAL for i in tokens}
    for a in tok.get("added_tokens", []):
        tokens[a["id"]] = a["content"]
        types[a["id"]] = TOKEN_CONTROL if a.get("special") else TOKEN_USER_DEFINED
    if max(tokens) >= n_vocab:
        sys.exit(f"to_gguf: token id {max(tokens)} is past the {n_vocab} embedding rows")
    # The embedding matrix has more rows than the tokenizer has tokens: llama.cpp
    # takes n_vocab from the token list, so the list is padded (as llama.cpp's
    # converter does) with unused placeholders.
    tok_list, type_list = [], []
    for i in range(n_vocab):
        tok_list.append(tokens.get(i, f"[PAD{i}]"))
        type_list.append(types.get(i, TOKEN_UNUSED))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]

    tc = cfg
    bos = tc.get("bos_token_id", 151643)
    eos = tc.get("eos_token_id", 151645)
    return [
        ("tokenizer.ggml.model", T_STRING, "gpt2"),
        ("tokenizer.ggml.pre", T_STRING, "qwen2"),
        ("tokenizer.ggml.tokens", (T_ARRAY, T_STRING), tok_list),
        ("tokenizer.ggml.token_type", (T_ARRAY, T_I32), type_list),
        ("tokenizer.ggml.merges", (T_ARRAY, T_STRING), merges),
        ("tokenizer.ggml.bos_token_id", T_U32, bos),
        ("tokenizer.ggml.eos_token_id", T_U32, eos),
        ("tokenizer.ggml.padding_token_id", T_U32, bos),
        ("tokenizer.ggml.add_bos_token", T_BOOL, False),
    ]


def model_metadata(cfg, qtype, name, arch="qwen3", n_deepstack=0):
    a = arch
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim", cfg["hidden_size"] // heads)
    extra = []
    if arch == "qwen3vl":
        # What llama.cpp's qwen3vl loader reads beyond qwen3's keys: the
        # interleaved mRoPE sections (t, h, w, padded to 4) and how many
        # DeepStack feature sets ride along with each image embedding.
        sections = list(cfg["rope_scaling"]["mrope_section"]) + [0]
        extra = [(f"{a}.rope.dimension_sections", (T_ARRAY, T_I32), sections[:4]),
                 (f"{a}.n_deepstack_layers", T_U32, n_deepstack)]
    return extra + [
        ("general.architecture", T_STRING, a),
        ("general.name", T_STRING, name),
        ("general.file_type", T_U32, FTYPE[qtype]),
        ("general.quantization_version", T_U32, 2),
        ("general.alignment", T_U32, ALIGNMENT),
        (f"{a}.block_count", T_U32, cfg["num_hidden_layers"]),
        (f"{a}.context_length", T_U32, cfg["max_position_embeddings"]),
        (f"{a}.embedding_length", T_U32, cfg["hidden_size"]),
        (f"{a}.feed_forward_length", T_U32, cfg["intermediate_size"]),
        (f"{a}.attention.head_count", T_U32, heads),
        (f"{a}.attention.head_count_kv", T_U32, cfg.get("num_key_value_heads", heads)),
        (f"{a}.attention.key_length", T_U32, head_dim),
        (f"{a}.attention.value_length", T_U32, head_dim),
        (f"{a}.rope.dimension_count", T_U32, head_dim),
        (f"{a}.rope.freq_base", T_F32, float(cfg.get("rope_theta", 1000000))),
        (f"{a}.attention.layer_norm_rms_epsilon", T_F32, float(cfg["rms_norm_eps"])),
    ]


def pack_string(s):
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


SCALAR = {T_U32: "<I", T_I32: "<i", T_F32: "<f", T_BOOL: "<?"}


def pack_kv(key, vtype, value):
    out = [pack_string(key)]
    if isinstance(vtype, tuple):            # array of one element type
        _, etype = vtype
        out.append(struct.pack("<IIQ", T_ARRAY, etype, len(value)))
        if etype == T_STRING:
            out.extend(pack_string(v) for v in value)
        else:
            out.append(array({T_I32: "i", T_U32: "I", T_F32: "f"}[etype], value).tobytes())
    elif vtype == T_STRING:
        out.append(struct.pack("<I", T_STRING) + pack_string(value))
    else:
        out.append(struct.pack("<I", vtype) + struct.pack(SCALAR[vtype], value))
    return b"".join(out)


# ---- conversion of the data ----------------------------------------------------

def bf16_to_f32(raw):
    """bf16 is the top half of an f32: put two zero bytes under each value."""
    wide = bytearray(2 * len(raw))
    wide[2::4] = raw[0::2]
    wide[3::4] = raw[1::2]
    x = array("f")
    x.frombytes(wide)
    return x


def _round_table():
    """roundf() of a float32 in (-128, 128), indexed by its top 16 bits.

    For |y| < 128 the bits at and above the 0.5 place are the sign, the
    exponent and at most the top 7 mantissa bits, all in the top half of
    the word, and roundf(y) = sign * floor(|y| + 0.5) depends on nothing
    else.  So one table lookup per element replaces a rounding in Python.
    """
    t = bytearray(65536)
    for h in range(65536):
        (v,) = struct.unpack("<f", struct.pack("<I", h << 16))
        if not abs(v) < 128:        # out of range, inf, nan: never produced
            continue
        q = math.floor(abs(v) + 0.5)
        t[h] = (-q if v < 0 else q) & 0xFF
    return bytes(t)


ROUND = _round_table()
CLEAR_SIGN = bytes(b & 0x7F for b in range(256))


def quantize_q8_0(raw):
    """ggml's quantize_row_q8_0_ref, bit for bit, on little-endian bf16 bytes.

    Every step the C code does in float32 is done in double and then rounded
    to float32 by storing into array('f'): for one multiply or divide of
    float32 operands that gives the same float32 as C.  The loops are map()
    pipelines and slice copies, so the per-element work stays in C.
    """
    x = bf16_to_f32(raw)
    nb = len(x) // QK
    absraw = bytearray(raw)
    absraw[1::2] = absraw[1::2].translate(CLEAR_SIGN)
    ax = bf16_to_f32(absraw)
    amax = map(max, *(ax[j::QK] for j in range(QK)))         # per block
    d = array("f", [m / 127.0 for m in amax])                # float d = amax/127
    inv = array("f", [1.0 / v if v else 0.0 for v in d])     # float id = 1/d
    inv_each = itertools.chain.from_iterable(map(itertools.repeat, inv, itertools.repeat(QK, nb)))
    y = array("f", map(operator.mul, x, inv_each)).tobytes()  # float x*id
    top = bytearray(2 * len(x))
    top[0::2] = y[2::4]
    top[1::2] = y[3::4]
    q = bytes(map(ROUND.__getitem__, array("H", top)))      # roundf -> int8
    scales = struct.pack(f"<{nb}e", *d)                       # fp32 -> fp16, nearest even
    out = bytearray(nb * Q8_0_BLOCK_BYTES)
    out[0::Q8_0_BLOCK_BYTES] = scales[0::2]
    out[1::Q8_0_BLOCK_BYTES] = scales[1::2]
    for j in range(QK):
        out[2 + j::Q8_0_BLOCK_BYTES] = q[j::QK]
    return bytes(out)


_src = None


def _open_source(path):
    global _src
    f = open(path, "rb")
    _src = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def worker_source():
    """The checkpoint as a pool worker mapped it."""
    return _src


def q8_0_job(job):
    """A pool job: one chunk of the checkpoint as Q8_0 blocks."""
    off, nbytes = job
    return quantize_q8_0(_src[off:off + nbytes])


def write_gguf(out_path, kvs, tensors, tool):
    """The file: kvs as (key, type, value), tensors as (name, ne, ggml type,
    blocks), blocks() yielding the tensor's bytes in order.  Written under a
    temporary name, checked against the layout, then renamed."""
    infos, offset = [], 0
    for gname, ne, gtype, _ in tensors:
        infos.append(pack_string(gname) + struct.pack("<I", len(ne))
                     + struct.pack(f"<{len(ne)}Q", *ne) + struct.pack("<IQ", gtype, offset))
        offset += tensor_bytes(ne, gtype)
        offset += -offset % ALIGNMENT
    head = b"".join([b"GGUF", struct.pack("<IQQ", 3, len(tensors), len(kvs))]
                    + [pack_kv(*kv) for kv in kvs] + infos)
    head += bytes(-len(head) % ALIGNMENT)
    t0 = time.time()
    with open(out_path + ".part", "wb") as out:
        out.write(head)
        for gname, _, _, blocks in tensors:
            for block in blocks():
                out.write(block)
            out.write(bytes(-out.tell() % ALIGNMENT))
            print(f"\r{gname:28s} {out.tell() / 2**30:6.2f} GiB written, {time.time() - t0:6.1f} s",
                  end="", file=sys.stderr, flush=True)
        total = out.tell()
    print(file=sys.stderr)
    if total != len(head) + offset:
        sys.exit(f"{tool}: wrote {total} bytes, the layout says {len(head) + offset}")
    os.replace(out_path + ".part", out_path)
    print(f"{out_path}: {len(tensors)} tensors, {len(kvs)} keys, {total / 2**30:.2f} GiB, "
          f"{time.time() - t0:.0f} s", file=sys.stderr)


def stored_blocks(src, off, nbytes, gtype, pool, job):
    """blocks() for a bf16 tensor stored at src[off:off + nbytes] written as
    gtype: copied (BF16), widened (F32), or converted chunk by chunk by
    job((offset, length)) in the pool (the other types)."""
    if gtype == GGML_BF16:
        return lambda: (src[off + p: off + min(nbytes, p + 2 * CHUNK)] for p in range(0, nbytes, 2 * CHUNK))
    if gtype == GGML_F32:
        return lambda: [bf16_to_f32(src[off:off + nbytes]).tobytes()]
    return lambda: pool.imap(job, [(off + p, min(2 * CHUNK, nbytes - p)) for p in range(0, nbytes, 2 * CHUNK)])


def convert_with(st_path, workers, convert_needed, build):
    """Maps the checkpoint, starts the conversion pool when convert_needed,
    and returns build(src, pool), closing both after."""
    with open(st_path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as src:
        pool = multiprocessing.Pool(workers, initializer=_open_source, initargs=(st_path,)) if convert_needed else None
        try:
            return build(src, pool)
        finally:
            if pool:
                pool.close()
                pool.join()


def convert(model_dir, out_path, qtype, workers, name, arch):
    full = json.load(open(os.path.join(model_dir, "config.json")))
    cfg = full.get("text_config", full)
    n_deepstack = len(full.get("vision_config", {}).get("deepstack_visual_indexes", []))
    st_path = os.path.join(model_dir, "model.safetensors")
    st = read_safetensors_header(st_path)
    plan = tensor_plan(st, cfg, qtype)
    n_vocab = st[[p for p in plan if p[0] == "token_embd.weight"][0][1]][1][0]
    kvs = model_metadata(cfg, qtype, name, arch, n_deepstack) + tokenizer_metadata(model_dir, n_vocab, cfg)

    def build(src, pool):
        tensors = [(gname, ne, gtype, stored_blocks(src, st[sname][2], st[sname][3], gtype, pool, q8_0_job))
                   for gname, sname, ne, gtype in plan]
        write_gguf(out_path, kvs, tensors, "to_gguf")
    convert_with(st_path, workers, qtype == "q8_0", build)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("out")
    ap.add_argument("--type", choices=sorted(FTYPE), default="bf16")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="processes quantizing in parallel (q8_0)")
    ap.add_argument("--arch", choices=["qwen3", "qwen3vl"], default="qwen3",
                    help="qwen3vl: the text model llama-mtmd-cli pairs with to_mmproj.py's vision file")
    ap.add_argument("--name", default="qvl synthetic Qwen3-VL-2B shape (text decoder)")
    a = ap.parse_args()
    convert(a.model_dir, a.out, a.type, max(1, a.workers), a.name, a.arch)


if __name__ == "__main__":
    main()
