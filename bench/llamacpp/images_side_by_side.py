#!/usr/bin/env python3
"""images_side_by_side.py: picture encoding in qvl and in llama.cpp's mtmd, in one run.

Why: issue 6 asks that encoding a picture be at least 2x faster than
llama.cpp's mtmd "for the same picture and image-token budget".  This writes
the two pictures `qvl bench` encodes (its synthetic_picture: gradients and a
checkerboard, 448x448 and 1024x768) as PNG files, then, picture by picture,
times `qvl bench` and `llama-mtmd-cli` back to back on the same checkpoint:
qvl reads the safetensors, llama.cpp the GGUF pair that to_gguf.py
(--arch qwen3vl) and to_mmproj.py write from it.

What is compared (milliseconds, the mean of --reps runs, as qvl bench reports):
  encode   the vision encoder alone, pixels in, image embeddings out:
           qvl bench's encode_ms, mtmd's "mtmd batch encoding done in N ms"
           (mtmd_batch_encode of the one picture; preprocessing happens
           before both).
  prefill  encode plus running the image tokens through the text decoder:
           qvl bench's time to first token (it also includes preprocessing
           and the 14 text tokens around the picture, so it favours
           llama.cpp), mtmd's encode + "image decoded (batch 1/1) in N ms".
Both sides must see the same number of image tokens; the script stops if
mtmd reports another count (its log line "n_tokens_batch = N").

Usage: python3 images_side_by_side.py --qvl ./qvl --model /tmp/shape2b
           --mtmd-cli /tmp/llama/llama.cpp/build/bin/llama-mtmd-cli
           --text-gguf /tmp/llama/shape2b-vl-bf16.gguf --mmproj /tmp/llama/mmproj-bf16.gguf
           [-t 2] [--reps 3] [--qvl-args "--matmul bf16"] [--out results.jsonl]
"""

import argparse
import json
import os
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib

PICTURES = [(448, 448), (1024, 768)]


def synthetic_picture(w, h):
    """Rows of RGB bytes, pixel for pixel what qvl bench encodes."""
    rows = []
    for y in range(h):
        g = 255 * y // (h - 1 if h > 1 else 1)
        row = bytearray(3 * w)
        for x in range(w):
            row[3 * x] = 255 * x // (w - 1 if w > 1 else 1)
            row[3 * x + 1] = g
            row[3 * x + 2] = 220 if ((x // 37 + y // 23) & 1) else 30
        rows.append(bytes(row))
    return rows


def write_png(path, w, h, rows):
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    raw = b"".join(b"\x00" + r for r in rows)       # filter 0 on every row
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)))
        f.write(chunk(b"IDAT", zlib.compress(raw, 6)))
        f.write(chunk(b"IEND", b""))


def qvl_images(a):
    cmd = [a.qvl, "bench", "-m", a.model, "-t", str(a.threads), "--pp", "0", "--tg", "0",
           "--reps", str(a.reps), "--json-only"] + a.qvl_args.split()
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if p.returncode or not lines:
        sys.exit(f"images_side_by_side: qvl bench failed ({p.returncode})")
    return json.loads(lines[-1])


# mtmd-cli's own line ("mtmd batch encoding done"); older builds log the
# helper's "image slice encoded" instead.
ENCODED = re.compile(r"(?:mtmd batch encoding done|image slice encoded) in (\d+) ms")
DECODED = re.compile(r"image decoded \(batch \d+/\d+\) in (\d+) ms")
N_TOKENS = re.compile(r"decoding image batch \d+/\d+, n_tokens_batch = (\d+)")


def mtmd_once(a, png):
    cmd = [a.mtmd_cli, "-m", a.text_gguf, "--mmproj", a.mmproj, "--image", png,
           "-p", "What is in the picture?", "-n", "1", "--temp", "0", "-t", str(a.threads),
           "-c", "4096", "--no-warmup", "--chat-template", "chatml", "-v"]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode:
        sys.stderr.write(p.stderr[-3000:])
        sys.exit(f"images_side_by_side: llama-mtmd-cli exited with {p.returncode}")
    enc = [int(x) for x in ENCODED.findall(p.stderr)]
    dec = [int(x) for x in DECODED.findall(p.stderr)]
    tok = [int(x) for x in N_TOKENS.findall(p.stderr)]
    if len(enc) != 1 or not dec:
        sys.stderr.write(p.stderr[-3000:])
        sys.exit("images_side_by_side: no timing lines from llama-mtmd-cli")
    return enc[0], enc[0] + sum(dec), sum(tok)


def mean(xs):
    return statistics.fmean(xs)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--qvl", default="./qvl")
    ap.add_argument("--model", required=True)
    ap.add_argument("--mtmd-cli", required=True)
    ap.add_argument("--text-gguf", required=True)
    ap.add_argument("--mmproj", required=True)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--qvl-args", default="")
    ap.add_argument("--out")
    a = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="qvl-images-")
    pngs = []
    for w, h in PICTURES:
        path = os.path.join(tmp, f"synthetic_{w}x{h}.png")
        write_png(path, w, h, synthetic_picture(w, h))
        pngs.append(path)

    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    q = qvl_images(a)
    rows = []
    for (w, h), png in zip(PICTURES, pngs):
        tag = f"img{w}x{h}"
        runs = []
        for r in range(a.reps):
            print(f"+ llama-mtmd-cli {w}x{h} ({r + 1}/{a.reps})", file=sys.stderr, flush=True)
            runs.append(mtmd_once(a, png))
        tokens = {t for _, _, t in runs}
        if tokens != {q[tag + "_tokens"]}:
            sys.exit(f"images_side_by_side: {w}x{h}: mtmd saw {sorted(tokens)} image tokens, "
                     f"qvl {q[tag + '_tokens']}: not the same budget")
        rows.append({"picture": f"{w}x{h}", "tokens": q[tag + "_tokens"],
                     "qvl_encode_ms": q[tag + "_encode_ms"],
                     "mtmd_encode_ms": mean([e for e, _, _ in runs]),
                     "mtmd_prefill_ms": mean([p for _, p, _ in runs]),
                     "mtmd_encode_runs": [e for e, _, _ in runs]})
    rows[-1]["qvl_ttft_ms"] = q.get("ttft_ms")

    print(f"\npictures, {a.threads} threads, mean of {a.reps}, started {started}"
          f"{' (qvl ' + a.qvl_args + ')' if a.qvl_args else ''}")
    print("| picture | image tokens | qvl encode | mtmd encode | speed-up | qvl TTFT | mtmd encode+decode |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        up = r["mtmd_encode_ms"] / r["qvl_encode_ms"]
        t = f"{r['qvl_ttft_ms']:.0f} ms" if r.get("qvl_ttft_ms") else "-"
        print(f"| {r['picture']} | {r['tokens']} | {r['qvl_encode_ms']:.0f} ms | "
              f"{r['mtmd_encode_ms']:.0f} ms | {up:.2f}x | {t} | {r['mtmd_prefill_ms']:.0f} ms |")
    if a.out:
        with open(a.out, "a") as f:
            f.write(json.dumps({"started": started, "threads": a.threads, "reps": a.reps,
                                "qvl_args": a.qvl_args, "qvl": q, "rows": rows}) + "\n")


if __name__ == "__main__":
    main()
