#!/usr/bin/env python3
"""gguf_info.py: list a GGUF file's metadata and tensors; compare two files' tensors.

Why: to check what to_gguf.py and quantize.py wrote without llama.cpp's
gguf-py (not installed here), and to check to_gguf.py's own Q8_0 against
llama.cpp's: `gguf_info.py A.gguf B.gguf` compares the data of every tensor
the two files share by name and type, byte for byte.

Usage: python3 gguf_info.py FILE.gguf            metadata (arrays summarized) and tensors
       python3 gguf_info.py A.gguf B.gguf        + per-tensor byte comparison
"""

import mmap
import struct
import sys
from collections import Counter

GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
                10: "<Q", 11: "<q", 12: "<d"}
GGUF_STRING, GGUF_ARRAY = 8, 9
# ggml type -> (name, elements per block, bytes per block), for the types used here
GGML_TYPES = {0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
              6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34),
              10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144),
              13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 30: ("BF16", 1, 2)}


class Reader:
    def __init__(self, buf):
        self.buf, self.pos = buf, 0

    def take(self, fmt):
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return v

    def string(self):
        n = self.take("<Q")
        s = bytes(self.buf[self.pos:self.pos + n]).decode("utf-8", "replace")
        self.pos += n
        return s

    def value(self, vtype):
        if vtype == GGUF_STRING:
            return self.string()
        if vtype == GGUF_ARRAY:
            etype, n = self.take("<I"), self.take("<Q")
            return [self.value(etype) for _ in range(n)]
        return self.take(GGUF_SCALARS[vtype])


def read_gguf(path):
    f = open(path, "rb")
    buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    r = Reader(buf)
    if bytes(buf[:4]) != b"GGUF":
        sys.exit(f"{path}: not a GGUF file")
    r.pos = 4
    version, n_tensors, n_kv = r.take("<I"), r.take("<Q"), r.take("<Q")
    kv = {}
    for _ in range(n_kv):
        key = r.string()
        kv[key] = r.value(r.take("<I"))
    tensors = []
    for _ in range(n_tensors):
        name = r.string()
        ne = [r.take("<Q") for _ in range(r.take("<I"))]
        gtype, off = r.take("<I"), r.take("<Q")
        tensors.append((name, ne, gtype, off))
    align = kv.get("general.alignment", 32)
    data = r.pos + (-r.pos % align)
    return {"version": version, "kv": kv, "tensors": tensors, "data": data, "buf": buf}


def nbytes(ne, gtype):
    _, blk, size = GGML_TYPES[gtype]
    n = 1
    for d in ne:
        n *= d
    return n // blk * size


def show(path, g):
    print(f"{path}: GGUF v{g['version']}, {len(g['kv'])} keys, {len(g['tensors'])} tensors")
    for k, v in g["kv"].items():
        if isinstance(v, list):
            v = f"[{len(v)} items] {v[:3]!r}..."
        print(f"  {k} = {v}")
    types = Counter(GGML_TYPES.get(t, (str(t),))[0] for _, _, t, _ in g["tensors"])
    total = sum(nbytes(ne, t) for _, ne, t, _ in g["tensors"])
    print(f"  tensor types: {dict(types)}, {total / 2**30:.3f} GiB of data")
    for name, ne, t, off in g["tensors"][:14]:
        print(f"  {name:28s} {GGML_TYPES.get(t, (str(t),))[0]:5s} {ne}")
    if len(g["tensors"]) > 14:
        print(f"  ... {len(g['tensors']) - 14} more")


def compare(a, b):
    tb = {name: (ne, t, off) for name, ne, t, off in b["tensors"]}
    same = differ = skipped = 0
    for name, ne, t, off in a["tensors"]:
        if name not in tb or tb[name][0] != ne or tb[name][1] != t:
            skipped += 1
            continue
        n = nbytes(ne, t)
        x = a["buf"][a["data"] + off: a["data"] + off + n]
        y = b["buf"][b["data"] + tb[name][2]: b["data"] + tb[name][2] + n]
        if x == y:
            same += 1
        else:
            differ += 1
            diff = sum(1 for i in range(0, n, 4096) if x[i:i + 4096] != y[i:i + 4096])
            print(f"  DIFFERS: {name} ({diff} of {(n + 4095) // 4096} 4 KiB pages)")
    print(f"compared: {same} identical, {differ} different, {skipped} not in both with the same type and shape")
    return differ == 0


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    files = [read_gguf(p) for p in sys.argv[1:]]
    for p, g in zip(sys.argv[1:], files):
        show(p, g)
    if len(files) == 2:
        sys.exit(0 if compare(*files) else 1)


if __name__ == "__main__":
    main()
