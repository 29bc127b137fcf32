// Download sizes: what a page fetches to run each engine (the model aside), raw and gzipped.

import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';

import { WLLAMA_DIR, WLLAMA_FILES } from './server.mjs';

/** Files under `dir` (recursively), sorted. */
function filesUnder(dir) {
  return fs
    .readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => path.join(e.parentPath ?? e.path, e.name))
    .sort();
}

/** `{files, raw, gzip}` for a group of files; gzip level 9 per file, as a server would send each. */
function group(files, relativeTo) {
  let raw = 0;
  let gzip = 0;
  for (const file of files) {
    const bytes = fs.readFileSync(file);
    raw += bytes.length;
    gzip += zlib.gzipSync(bytes, { level: 9 }).length;
  }
  return { files: files.map((f) => path.relative(relativeTo, f)), raw, gzip };
}

/**
 * Ours from the built site: the wasm; the page's JS (web/*.js but the worker, and wasm-bindgen's
 * glue with its snippets); the worker. wllama from its npm package: the wasm, and the one ES module
 * a page imports (its workers are inlined in it).
 */
export function bundleSizes(siteDir) {
  const web = path.join(siteDir, 'web');
  const pkg = path.join(web, 'pkg');
  const wasm = path.join(pkg, 'selfroute_wasm_bg.wasm');
  const worker = path.join(web, 'selfroute-worker.js');
  const pageScripts = fs
    .readdirSync(web)
    .filter((n) => n.endsWith('.js'))
    .map((n) => path.join(web, n))
    .filter((f) => f !== worker);
  const glue = filesUnder(pkg).filter((f) => f.endsWith('.js'));
  return {
    selfroute: {
      wasm: group([wasm], siteDir),
      js: group([...pageScripts, ...glue], siteDir),
      worker: group([worker], siteDir),
    },
    wllama: {
      wasm: group([path.join(WLLAMA_DIR, WLLAMA_FILES.wasm)], WLLAMA_DIR),
      js: group([path.join(WLLAMA_DIR, WLLAMA_FILES.js)], WLLAMA_DIR),
      worker: null,
    },
  };
}
