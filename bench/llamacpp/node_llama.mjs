// node_llama.mjs - finds and imports node-llama-cpp for bench.mjs and parity.mjs.
//
// An ES module resolves bare imports from its own folder, not from the working
// directory, so the node_modules holding node-llama-cpp is looked up here:
// $NODE_LLAMA_CPP_DIR, else ./node_modules of the working directory, else the
// ordinary resolution.

import fs from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";

export async function importNodeLlamaCpp() {
    const dirs = [process.env.NODE_LLAMA_CPP_DIR, path.join(process.cwd(), "node_modules")];
    for (const dir of dirs) {
        if (!dir) continue;
        const pkg = path.join(dir, "node-llama-cpp");
        if (!fs.existsSync(path.join(pkg, "package.json"))) continue;
        const meta = JSON.parse(fs.readFileSync(path.join(pkg, "package.json"), "utf8"));
        const exp = meta.exports?.["."];
        const entry = (typeof exp === "string" ? exp : exp?.import ?? exp?.default) ?? meta.main;
        return import(pathToFileURL(path.join(pkg, entry)).href);
    }
    return import("node-llama-cpp");
}
