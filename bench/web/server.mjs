// The bench's web server: the test harness's site server (target/site, the test pages at
// /test-pages/, the same headers as `selfroute serve`) with three more things routed beside it:
// the bench pages at /bench/, wllama's module and wasm at /wllama/, and the default model at
// /bench/model.gguf, so both engines download the very same file from the same origin.

import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { serveFile, startSite } from '../../tests/browser/harness.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const WLLAMA_DIR = path.join(HERE, 'node_modules/@wllama/wllama');
/** What a page imports and fetches of wllama: one self-contained ES module and one wasm. */
export const WLLAMA_FILES = { js: 'esm/index.js', wasm: 'esm/wasm/wllama.wasm' };
export const MODEL_URL = '/bench/model.gguf';

/** @param {{site: string, model: string}} paths */
export async function startBenchSite(paths) {
  for (const file of Object.values(WLLAMA_FILES)) {
    if (!fs.existsSync(path.join(WLLAMA_DIR, file))) {
      throw new Error(`${file} is missing from ${WLLAMA_DIR}: run \`npm ci\` in bench/web`);
    }
  }
  const site = await startSite({ site: paths.site });
  const serve = (dir, file) => (req, res) => serveFile(req, res, dir, `/${file}`);
  for (const page of fs.readdirSync(path.join(HERE, 'pages'))) {
    site.route(`/bench/${page}`, serve(path.join(HERE, 'pages'), page));
  }
  site.route('/wllama/index.js', serve(WLLAMA_DIR, WLLAMA_FILES.js));
  site.route('/wllama/wllama.wasm', serve(WLLAMA_DIR, WLLAMA_FILES.wasm));
  site.route(MODEL_URL, serve(path.dirname(paths.model), path.basename(paths.model)));
  return site;
}
