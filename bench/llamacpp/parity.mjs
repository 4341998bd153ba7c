// parity.mjs: is the GGUF llama.cpp times the same model qvl runs?
//
// Why: a converter mistake (a transposed matrix, a wrong norm epsilon or rope
// base, a shifted vocabulary) would still load and run at the same speed, so a
// speed comparison alone cannot tell.  This compares llama.cpp's next-token
// distribution with qvl's on the same token ids, and llama.cpp's tokenizer
// (from the GGUF's tokenizer.ggml.* keys) with qvl's on the same text.
//
//   qvl dump -m MODEL_DIR -o dump.safetensors --ids 1000,1001,...   (qvl side)
//   echo -n TEXT | qvl tokenize -m MODEL_DIR > ids.json              (optional)
//   node parity.mjs MODEL.gguf dump.safetensors [TEXT ids.json]
//
// It reads input_ids and logits_last (float32) from the dump, evaluates the
// same ids with llama.cpp, takes its full softmax (temperature 1, no top-k/p)
// and prints the top tokens of both, whether the top token agrees, the largest
// probability difference and the KL divergence.  Exit status 1 if the top
// token or the tokenization differs.  qvl keeps float32 activations; llama.cpp's
// BF16 matrix products round activations to bf16, so small differences are
// expected, not equality.

import fs from "node:fs";
import { importNodeLlamaCpp } from "./node_llama.mjs";
import path from "node:path";


function readSafetensors(file) {
    const buf = fs.readFileSync(file);
    const n = Number(buf.readBigUInt64LE(0));
    const header = JSON.parse(buf.subarray(8, 8 + n).toString("utf8"));
    const get = (name) => {
        const t = header[name];
        if (!t) throw new Error(`${file}: no tensor ${name}`);
        const [b, e] = t.data_offsets;
        const bytes = buf.subarray(8 + n + b, 8 + n + e);
        const ab = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length);
        if (t.dtype === "F32") return new Float32Array(ab);
        if (t.dtype === "I64") return Array.from(new BigInt64Array(ab), Number);
        throw new Error(`${file}: ${name} is ${t.dtype}`);
    };
    return { get };
}

function softmax(logits) {
    let m = -Infinity;
    for (const x of logits) if (x > m) m = x;
    let s = 0;
    const p = new Float64Array(logits.length);
    for (let i = 0; i < logits.length; i++) s += (p[i] = Math.exp(logits[i] - m));
    for (let i = 0; i < p.length; i++) p[i] /= s;
    return p;
}

function top(p, k) {
    return Array.from(p.keys()).sort((a, b) => p[b] - p[a]).slice(0, k);
}

async function main() {
    const [gguf, dumpFile, text, idsFile] = process.argv.slice(2);
    if (!gguf || !dumpFile || (text !== undefined && !idsFile)) {
        console.error("usage: node parity.mjs MODEL.gguf QVL_DUMP.safetensors [TEXT QVL_IDS.json]");
        process.exit(2);
    }
    const dump = readSafetensors(dumpFile);
    const ids = dump.get("input_ids");
    const pq = softmax(dump.get("logits_last"));

    const { getLlama, LlamaLogLevel } = await importNodeLlamaCpp();
    const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
    const model = await llama.loadModel({ modelPath: gguf, gpuLayers: 0 });
    let ok = true;

    if (text !== undefined) {
        const want = JSON.parse(fs.readFileSync(idsFile, "utf8"));
        const got = Array.from(model.tokenize(text, true));
        const same = got.length === want.length && got.every((t, i) => t === want[i]);
        console.log(`tokenizer: ${same ? "same ids" : "DIFFERENT ids"} for ${JSON.stringify(text)}`);
        if (!same) {
            console.log(`  qvl:       ${JSON.stringify(want)}\n  llama.cpp: ${JSON.stringify(got)}`);
            ok = false;
        }
    }

    const ctx = await model.createContext({ contextSize: Math.max(256, ids.length + 8) });
    const seq = ctx.getSequence();
    let probs = null;
    for await (const out of seq.evaluateWithMetadata(ids, { probabilities: true },
                                                     { temperature: 1, topK: 0, topP: 1, minP: 0 })) {
        probs = out.probabilities;
        break;
    }
    const pl = new Float64Array(pq.length);
    for (const [t, p] of probs) pl[t] = p;

    let kl = 0, maxDiff = 0, maxAt = 0;
    for (let i = 0; i < pq.length; i++) {
        if (pq[i] > 0) kl += pq[i] * Math.log(pq[i] / Math.max(pl[i], 1e-30));
        const d = Math.abs(pq[i] - pl[i]);
        if (d > maxDiff) { maxDiff = d; maxAt = i; }
    }
    const tq = top(pq, 5), tl = top(pl, 5);
    const fmt = (t, p) => t.map((i) => `${i}:${p[i].toFixed(4)}`).join(" ");
    console.log(`next token after ${ids.length} ids (${probs.size} probabilities from llama.cpp):`);
    console.log(`  qvl top 5:       ${fmt(tq, pq)}`);
    console.log(`  llama.cpp top 5: ${fmt(tl, pl)}`);
    console.log(`  top token ${tq[0] === tl[0] ? "agrees" : "DIFFERS"}; ` +
                `max |dp| ${maxDiff.toExponential(2)} (token ${maxAt}); KL(qvl||llama.cpp) ${kl.toExponential(2)}`);
    if (tq[0] !== tl[0]) ok = false;
    await ctx.dispose();
    await model.dispose();
    await llama.dispose();
    process.exit(ok ? 0 : 1);
}

main().catch((e) => {
    console.error(`parity.mjs: ${e.stack ?? e}`);
    process.exit(1);
});
