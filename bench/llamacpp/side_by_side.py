#!/usr/bin/env python3
"""side_by_side.py: qvl bench and llama.cpp (bench.mjs) on the same shape, in one run.

Why: issue 6 wants qvl's speed measured next to llama.cpp's in the same run,
on the same machine, so that machine noise hits both alike.  For each format
it runs `qvl bench` and then bench.mjs back to back with the same thread
count, prompt length, generation length and repetitions, and prints a table
and the raw JSON lines of both.

Pairs (qvl's --quant <-> the GGUF that to_gguf.py / quantize.py wrote):
    bf16    qvl bf16 weights          <-> BF16
    q8_0    qvl --quant q8            <-> Q8_0
    q4_k_m  qvl --quant q4            <-> Q4_K_M
    q4_0    qvl --quant q4            <-> Q4_0 (the closer format: blocks of 32, one scale)

Usage: python3 side_by_side.py --qvl ./qvl --model /tmp/shape2b --gguf-dir /tmp/llama
           [-t 2] [--pp 512] [--tg 128] [--reps 3] [--formats bf16,q8_0,q4_k_m]
           [--node-modules /tmp/llama/node_modules] [--out results.jsonl]
           [--wait-load 1.5 [--wait-max SECONDS]] [--qvl-args "--matmul bf16 --kv-cache f16"]
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
QVL_QUANT = {"bf16": None, "q8_0": "q8", "q4_k_m": "q4", "q4_0": "q4"}
GGUF_NAME = {f: f"shape2b-{f}.gguf" for f in QVL_QUANT}


def run_json(cmd, env=None):
    """Run cmd, pass its stderr through, return the last JSON line of its stdout."""
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    p = subprocess.run(cmd, stdout=subprocess.PIPE, env=env, text=True)
    if p.returncode != 0:
        sys.exit(f"side_by_side: {cmd[0]} exited with {p.returncode}")
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if not lines:
        sys.exit(f"side_by_side: no JSON line from {cmd[0]}")
    return json.loads(lines[-1])


def qvl_bench(a, fmt):
    cmd = [a.qvl, "bench", "-m", a.model, "-t", str(a.threads), "--pp", str(a.pp),
           "--tg", str(a.tg), "--reps", str(a.reps), "--no-images", "--json-only"]
    if QVL_QUANT[fmt]:
        cmd += ["--quant", QVL_QUANT[fmt]]
    cmd += a.qvl_args.split()
    load = os.getloadavg()[0]
    r = run_json(cmd)
    r["loadavg_1m_before"] = round(load, 2)
    return r


def llama_bench(a, fmt):
    gguf = os.path.join(a.gguf_dir, GGUF_NAME[fmt])
    if not os.path.exists(gguf):
        sys.exit(f"side_by_side: {gguf} is missing (see README.md: to_gguf.py, quantize.py)")
    env = dict(os.environ, NODE_LLAMA_CPP_DIR=a.node_modules)
    cmd = ["node", os.path.join(HERE, "bench.mjs"), "-t", str(a.threads), "--pp", str(a.pp),
           "--tg", str(a.tg), "--reps", str(a.reps), gguf]
    return run_json(cmd, env)


def fmt_rate(mean, sd):
    return f"{mean:.2f} ± {sd:.2f}" if sd else f"{mean:.2f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--qvl", required=True, help="the qvl program")
    ap.add_argument("--model", default="/tmp/shape2b", help="the checkpoint qvl reads")
    ap.add_argument("--gguf-dir", default="/tmp/llama", help="where the GGUF files are")
    ap.add_argument("--node-modules", default="/tmp/llama/node_modules")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--pp", type=int, default=512)
    ap.add_argument("--tg", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--formats", default="bf16,q8_0,q4_k_m")
    ap.add_argument("--qvl-args", default="",
                    help="more `qvl bench` options, e.g. \"--matmul bf16 --kv-cache f16\" "
                         "(bf16 activations and an f16 cache, as llama.cpp's BF16 runs)")
    ap.add_argument("--out", help="append every JSON result here")
    ap.add_argument("--wait-load", type=float, default=0,
                    help="first wait until the 1-minute load average is below this (0: don't wait)")
    ap.add_argument("--wait-max", type=float, default=3600, help="seconds to wait at most")
    a = ap.parse_args()
    formats = a.formats.split(",")
    for f in formats:
        if f not in QVL_QUANT:
            sys.exit(f"side_by_side: unknown format {f}; one of {', '.join(QVL_QUANT)}")

    # On a shared machine, timings are only worth keeping when nothing else
    # runs: ggml's worker threads spin at every barrier, so with more runnable
    # threads than cores one descheduled thread stalls the others.
    t0 = time.time()
    while a.wait_load and os.getloadavg()[0] >= a.wait_load and time.time() - t0 < a.wait_max:
        time.sleep(15)
    if a.wait_load:
        print(f"load average {os.getloadavg()[0]:.2f} after waiting {time.time() - t0:.0f} s",
              file=sys.stderr, flush=True)

    rows, qvl_done = [], {}
    for f in formats:
        # q4_k_m and q4_0 both pair with qvl's q4: measured once, the first time
        fresh = QVL_QUANT[f] not in qvl_done
        q = qvl_done[QVL_QUANT[f]] = qvl_bench(a, f) if fresh else qvl_done[QVL_QUANT[f]]
        l = llama_bench(a, f)
        rows.append((f, q, l))
        if a.out:
            with open(a.out, "a") as out:
                stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                if fresh:
                    out.write(json.dumps({"engine": "qvl", "format": f, "time": stamp,
                                          "qvl_args": a.qvl_args, **q}) + "\n")
                out.write(json.dumps({"engine": "llama.cpp", "format": f, "time": stamp, **l}) + "\n")

    print(f"\n{a.threads} threads, pp{a.pp}, tg{a.tg}, {a.reps} reps, mean ± sd (tokens/s)"
          f"{', qvl ' + a.qvl_args if a.qvl_args else ''}\n")
    print("| llama.cpp format | qvl | qvl pp | llama.cpp pp | qvl tg | llama.cpp tg | load before (qvl, llama.cpp) |")
    print("|---|---|---|---|---|---|---|")
    for f, q, l in rows:
        print(f"| {f} | {QVL_QUANT[f] or 'bf16'} | {fmt_rate(q['pp_tok_s'], q['pp_tok_s_sd'])} "
              f"| {fmt_rate(l['pp_tok_s']['mean'], l['pp_tok_s']['sd'])} "
              f"| {fmt_rate(q['tg_tok_s'], q['tg_tok_s_sd'])} "
              f"| {fmt_rate(l['tg_tok_s']['mean'], l['tg_tok_s']['sd'])} "
              f"| {q['loadavg_1m_before']}, {l['loadavg_1m'][0]} |")
    print(f"\nllama.cpp {rows[0][2]['llama_cpp']['release']} ({rows[0][2]['build_type']}), "
          f"CPU backend {rows[0][2]['cpu_backend']}; qvl kernel {rows[0][1].get('kernel')}")


if __name__ == "__main__":
    main()
