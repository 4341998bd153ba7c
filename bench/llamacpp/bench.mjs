// bench.mjs: llama-bench-style pp/tg figures of llama.cpp, through node-llama-cpp.
//
// Why: issue 6 wants qvl's speed next to llama.cpp's on the same machine and
// the same model shape.  llama.cpp's own tools are not packaged here, but the
// npm package @node-llama-cpp/linux-x64 ships a prebuilt libllama with one
// ggml CPU backend per x86 micro-architecture, and node-llama-cpp drives it.
// This script never compiles anything: getLlama({build: "never"}) takes the
// prebuilt binary or fails.
//
// What it times, per file given (GGUF, e.g. from to_gguf.py / quantize.py):
//   warm-up  a short prompt and one generated token, untimed (pages the
//            mapped weights in, as llama-bench's warm-up run does)
//   pp       --pp prompt tokens (default 512) into an empty cache, one
//            llama_decode per --batch tokens (512: llama-bench's n_ubatch),
//            tokens/s
//   tg       then --tg tokens (default 128) generated greedily one at a time
//            after that prompt (like `qvl bench`; llama-bench's tg128 starts
//            from an empty cache instead), tokens/s
// each --reps times (default 3), cache cleared between reps.  Prompts are the
// token ids 1000, 1001, ... as in `qvl bench`, so no tokenizer work is timed.
//
// Output: progress on stderr, one JSON line per model on stdout, with the
// llama.cpp release, the CPU backend ggml loaded and llama.cpp's system info.
//
// Usage: node bench.mjs [-t 2] [--pp 512] [--tg 128] [--reps 3] [--batch 512]
//                       [--fa auto|on|off] [--log FILE] MODEL.gguf...
// --log FILE keeps llama.cpp's whole log (debug level) there.
// node-llama-cpp is found in $NODE_LLAMA_CPP_DIR or ./node_modules (README.md).

import fs from "node:fs";
import os from "node:os";
import { importNodeLlamaCpp } from "./node_llama.mjs";
import path from "node:path";

function parseArgs(argv) {
    const a = { threads: 2, pp: 512, tg: 128, reps: 3, batch: 512, fa: "auto", models: [] };
    const num = (v, name) => {
        const n = Number(v);
        if (!Number.isInteger(n) || n < 0) throw new Error(`${name}: not a count: ${v}`);
        return n;
    };
    for (let i = 0; i < argv.length; i++) {
        const k = argv[i];
        const v = () => {
            if (i + 1 >= argv.length) throw new Error(`${k} needs a value`);
            return argv[++i];
        };
        if (k === "-t" || k === "--threads") a.threads = num(v(), k);
        else if (k === "--pp") a.pp = num(v(), k);
        else if (k === "--tg") a.tg = num(v(), k);
        else if (k === "--reps") a.reps = num(v(), k);
        else if (k === "--batch") a.batch = num(v(), k);
        else if (k === "--fa") a.fa = v();
        else if (k === "--log") a.log = v();
        else if (k === "-h" || k === "--help") a.help = true;
        else if (k.startsWith("-")) throw new Error(`unknown option ${k}`);
        else a.models.push(k);
    }
    if (!["auto", "on", "off"].includes(a.fa)) throw new Error(`--fa: auto, on or off, not ${a.fa}`);
    if (a.threads < 1 || a.reps < 1 || a.pp < 1 || a.tg < 1 || a.batch < 1)
        throw new Error("threads, reps, pp, tg and batch must be at least 1");
    return a;
}


function stats(xs) {
    const mean = xs.reduce((s, x) => s + x, 0) / xs.length;
    const sd = xs.length > 1
        ? Math.sqrt(xs.reduce((s, x) => s + (x - mean) ** 2, 0) / (xs.length - 1))
        : 0;
    const r = (x) => Math.round(x * 100) / 100;
    return { mean: r(mean), sd: r(sd), best: r(Math.max(...xs)), all: xs.map(r) };
}

// The few llama.cpp log lines that say what ran: the CPU backend library ggml
// loaded, flash attention on or off, the model's file type.
const LOG_KEEP = [/file type/, /model params/, /CPU_REPACK/];

async function benchModel(llama, file, a, log) {
    const model = await llama.loadModel({ modelPath: file, gpuLayers: 0, useMmap: true });
    const ctx = await model.createContext({
        contextSize: Math.max(1024, a.pp + a.tg + 64),
        batchSize: a.batch,
        sequences: 1,
        threads: { ideal: a.threads, min: a.threads },
        flashAttention: a.fa === "auto" ? "auto" : a.fa === "on",
    });
    const seq = ctx.getSequence();
    const prompt = Array.from({ length: a.pp }, (_, i) => 1000 + i);
    const genOpts = { temperature: 0, yieldEogToken: true };

    async function generate(first, n) {
        // Each step of the generator decodes the token it last gave (the
        // first step decodes `first`) and picks the next one greedily: n
        // generated tokens are n single-token decodes.
        let got = 0;
        const t0 = performance.now();
        for await (const token of seq.evaluate([first], genOpts)) {
            void token;
            if (++got >= n) break;
        }
        return (performance.now() - t0) / 1000;
    }

    process.stderr.write(`${path.basename(file)}: warm-up\n`);
    await seq.evaluateWithoutGeneratingNewTokens(prompt.slice(0, 16));
    await generate(prompt[16], 1);

    const load = [os.loadavg()[0]];
    const pp = [], tg = [];
    for (let r = 0; r < a.reps; r++) {
        await seq.clearHistory();
        let t0 = performance.now();
        await seq.evaluateWithoutGeneratingNewTokens(prompt);
        const tPP = (performance.now() - t0) / 1000;
        if (seq.nextTokenIndex !== a.pp)
            throw new Error(`the cache holds ${seq.nextTokenIndex} tokens, not ${a.pp}`);
        const tTG = await generate(1000 + a.pp, a.tg);
        if (seq.nextTokenIndex !== a.pp + a.tg)
            throw new Error(`after generation the cache holds ${seq.nextTokenIndex} tokens, not ${a.pp + a.tg}`);
        pp.push(a.pp / tPP);
        tg.push(a.tg / tTG);
        process.stderr.write(`  rep ${r + 1}: pp${a.pp} ${(a.pp / tPP).toFixed(2)} tok/s, ` +
                             `tg${a.tg} ${(a.tg / tTG).toFixed(2)} tok/s\n`);
    }

    load.push(os.loadavg()[0]);
    const lines = log.splice(0);
    const out = {
        model: path.basename(file),
        file_bytes: fs.statSync(file).size,
        threads: ctx.currentThreads ?? a.threads,
        batch: a.batch,
        flash_attn: a.fa,
        // "auto" is resolved by llama.cpp: the graph then has FLASH_ATTN_EXT nodes
        flash_attn_used: lines.some((l) => l.includes("(FLASH_ATTN_EXT)")),
        pp: a.pp, tg: a.tg, reps: a.reps,
        pp_tok_s: stats(pp),
        tg_tok_s: stats(tg),
        loadavg_1m: load.map((x) => Math.round(x * 100) / 100),   // before and after
        log: lines.filter((l) => LOG_KEEP.some((re) => re.test(l))),
    };
    await ctx.dispose();
    await model.dispose();
    return out;
}

async function main() {
    let a;
    try {
        a = parseArgs(process.argv.slice(2));
    } catch (e) {
        console.error(`bench.mjs: ${e.message}`);
        process.exit(2);
    }
    if (a.help || a.models.length === 0) {
        console.error("usage: node bench.mjs [-t N] [--pp N] [--tg N] [--reps N] [--batch N] " +
                      "[--fa auto|on|off] [--log FILE] MODEL.gguf...");
        process.exit(a.help ? 0 : 2);
    }
    const { getLlama, LlamaLogLevel } = await importNodeLlamaCpp();
    const log = [];
    // ggml picks, among the CPU backend builds shipped (x64, haswell, zen4,
    // sapphirerapids ...), the best one this CPU can run, and logs which.
    let cpuBackend = null;
    const logFile = a.log;
    if (logFile) fs.writeFileSync(logFile, "");
    const llama = await getLlama({
        gpu: false,
        build: "never",
        maxThreads: a.threads,
        logLevel: LlamaLogLevel.debug,
        logger: (level, message) => {
            if (logFile) fs.appendFileSync(logFile, message.endsWith("\n") ? message : message + "\n");
            for (const l of message.split("\n")) if (l.trim()) log.push(l.trim());
            const m = /load_backend: loaded CPU backend from (\S+)/.exec(message);
            if (m) cpuBackend = path.basename(m[1]);
        },
    });
    const common = {
        llama_cpp: llama.llamaCppRelease,
        build_type: llama.buildType,
        system_info: llama.systemInfo,
        cpu_math_cores: llama.cpuMathCores,
    };
    for (const file of a.models) {
        const r = await benchModel(llama, file, a, log);
        process.stdout.write(JSON.stringify({ ...r, cpu_backend: cpuBackend, ...common }) + "\n");
    }
    await llama.dispose();
}

main().catch((e) => {
    console.error(`bench.mjs: ${e.stack ?? e}`);
    process.exit(1);
});
