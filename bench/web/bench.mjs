// `cargo xtask bench web`: our browser engine beside wllama in one headless Chromium (Debian's,
// launched by the test harness with its flags and WebGPU), one run, the same GGUF served from the
// same origin, the same raw-text prompt. Writes a JSON summary to the path in SELFROUTE_BENCH_OUT;
// the xtask prints the table from it.
//
// 1. page load to ready, cold (fresh profile) and from cache (a reload), for both;
// 2. CPU, one thread: prefill, decode and first-token time, median of SELFROUTE_BENCH_REPEATS,
//    the two engines taking turns so that load from other work on the machine hits both alike;
// 3. our WebGPU path on whatever adapter Chromium offers (SwiftShader here);
// 4. download sizes.
//
// Paths come from the environment the harness reads (SELFROUTE_SITE_DIR, SELFROUTE_CHROMIUM,
// SELFROUTE_MODEL: the default model, which both engines read).

import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { crateVersion, launchBrowser, paths, watchPage } from '../../tests/browser/harness.mjs';
import * as ours from './selfroute.mjs';
import { startBenchSite, WLLAMA_DIR } from './server.mjs';
import { bundleSizes } from './sizes.mjs';
import * as wllama from './wllama.mjs';

const REPEATS = Number(process.env.SELFROUTE_BENCH_REPEATS ?? 5);
const DECODE_TOKENS = 64;
/**
 * SwiftShader runs WebGPU on the CPU at about a token per second, prefill included (the whole
 * prompt above takes over a minute there): a short prompt and fewer tokens.
 */
const WEBGPU_PROMPT = 'The old lighthouse stood at the edge of the cliff, its white paint peeling after decades of salt and wind.';
const WEBGPU_DECODE_TOKENS = 8;
const LOAD_TIMEOUT_MS = 600_000;
const WATCHDOG_MS = 45 * 60_000;

// A raw-text prompt of about 128 tokens (the run checks both engines count the same), prose the
// model continues for 64 tokens without an end-of-text token.
const PROMPT =
  'The old lighthouse stood at the edge of the cliff, its white paint peeling after decades of ' +
  'salt and wind. Every evening the keeper climbed the narrow spiral staircase, one hundred and ' +
  'twelve steps, to light the great lamp that warned ships away from the rocks below. He had ' +
  'done this for thirty years, through storms that shook the glass and calm nights when the sea ' +
  'lay flat as a mirror. The villagers said he never missed a single night. One autumn, a young ' +
  'woman arrived in the village with a suitcase and a letter addressed to the keeper. She walked ' +
  'up the path to the lighthouse and knocked on the heavy wooden door.';

const median = (values) => {
  const sorted = values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b);
  if (!sorted.length) return null;
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
};

function summarize(runs) {
  return {
    prefillTokS: median(runs.map((r) => r.prefillTokS)),
    decodeTokS: median(runs.map((r) => r.decodeTokS)),
    firstTokenMs: median(runs.map((r) => r.firstTokenMs)),
    promptTokens: runs[0]?.promptTokens ?? null,
    generatedTokens: runs[0]?.generatedTokens ?? null,
    runs: runs.map(({ tokens: _tokens, text: _text, ...figures }) => figures),
  };
}

const say = (what) => console.error(`bench web: ${what}`);

/** Opens `url` in `page`, then reloads it: `{cold, cached}` as the engine's `loaded` reports. */
async function loadTwice(page, url, engine) {
  await page.goto(url);
  const cold = await engine.loaded(page, LOAD_TIMEOUT_MS);
  await page.reload();
  const cached = await engine.loaded(page, LOAD_TIMEOUT_MS);
  return { cold, cached };
}

/** Where the two continuations first differ (characters), or null when they agree. */
function firstDifference(a, b) {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? null : n;
}

async function main() {
  const out = process.env.SELFROUTE_BENCH_OUT;
  if (!out) throw new Error('SELFROUTE_BENCH_OUT (the JSON summary path) is not set');
  const bytes = fs.readFileSync(paths.model);
  const model = { sha256: crypto.createHash('sha256').update(bytes).digest('hex'), size: bytes.length };
  const site = await startBenchSite({ site: paths.site, model: paths.model });
  const browser = await launchBrowser({ webgpu: true });
  const ourPage = browser.page;
  const theirPage = await browser.newPage();
  const watch = watchPage(ourPage);
  watch.add(theirPage);
  try {
    const userAgent = await ourPage.evaluate(() => navigator.userAgent);

    say('our engine (CPU): cold load in a fresh profile, then a reload that reads the cached model');
    const ourLoad = await loadTwice(ourPage, ours.pageUrl(site, model, 'cpu'), ours);
    if (!ourLoad.cached.fromCache) throw new Error('our reload did not read the model from the cache');
    say('wllama: cold load, then a reload (its cache is OPFS)');
    const theirLoad = await loadTwice(theirPage, wllama.pageUrl(site), wllama);

    say(`CPU, one thread: a warm-up each, then ${REPEATS} runs each, taking turns (${DECODE_TOKENS} tokens greedy)`);
    const ourRuns = [];
    const theirRuns = [];
    // Pages in the background may be throttled: the one measured is brought to the front.
    const runOurs = async () => (await ourPage.bringToFront(), ours.generate(ourPage, PROMPT, DECODE_TOKENS));
    const runTheirs = async () => (await theirPage.bringToFront(), wllama.generate(theirPage, PROMPT, DECODE_TOKENS));
    for (let i = 0; i <= REPEATS; i++) {
      // Who goes first alternates, so neither always runs right after the other's memory traffic.
      let a;
      let b;
      if (i % 2 === 0) {
        a = await runOurs();
        b = await runTheirs();
      } else {
        b = await runTheirs();
        a = await runOurs();
      }
      if (i > 0) {
        ourRuns.push(a);
        theirRuns.push(b);
      }
      say(
        `${i === 0 ? 'warm-up' : `run ${i}`}: decode ${a.decodeTokS?.toFixed(1)} vs ${b.decodeTokS?.toFixed(1)} tok/s, ` +
          `prefill ${a.prefillTokS?.toFixed(1)} vs ${b.prefillTokS?.toFixed(1)} tok/s (selfroute vs wllama)`,
      );
    }
    const oursText = ourRuns[0].text;
    const theirText = theirRuns[0].text;
    const tokenization = {
      selfroutePromptTokens: ourRuns[0].promptTokens,
      wllamaPromptTokens: theirRuns[0].promptTokens,
      samePromptTokenCount: ourRuns[0].promptTokens === theirRuns[0].promptTokens,
      sameContinuation: oursText === theirText,
      continuationsDifferAt: firstDifference(oursText, theirText),
      selfrouteContinuation: oursText,
      wllamaContinuation: theirText,
    };
    if (!tokenization.samePromptTokenCount) {
      throw new Error(`the prompt is ${tokenization.selfroutePromptTokens} tokens for us but ${tokenization.wllamaPromptTokens} for wllama`);
    }
    await theirPage.close();
    // The CPU's tokens for the WebGPU prompt, to check the GPU path gives the same.
    const cpuShort = await ours.generate(ourPage, WEBGPU_PROMPT, WEBGPU_DECODE_TOKENS);
    await ourPage.evaluate(() => window.engine.unload());

    say(`our WebGPU path: load (model from the cache), a warm-up, then one run of ${WEBGPU_DECODE_TOKENS} tokens`);
    await ourPage.goto(ours.pageUrl(site, model, 'webgpu'));
    const gpuLoad = await ours.loaded(ourPage, LOAD_TIMEOUT_MS);
    await ours.generate(ourPage, 'The', 2);
    const gpuRun = await ours.generate(ourPage, WEBGPU_PROMPT, WEBGPU_DECODE_TOKENS);

    const summary = {
      environment: {
        chromium: userAgent,
        selfroute: crateVersion(),
        wllama: JSON.parse(fs.readFileSync(path.join(WLLAMA_DIR, 'package.json'), 'utf8')).version,
        model: path.basename(paths.model),
        modelBytes: model.size,
        cpus: os.cpus().length,
        loadAverage: os.loadavg(),
        repeats: REPEATS,
        decodeTokens: DECODE_TOKENS,
        prompt: PROMPT,
        webgpuPrompt: WEBGPU_PROMPT,
      },
      tokenization,
      cpu: { selfroute: summarize(ourRuns), wllama: summarize(theirRuns) },
      webgpu: {
        adapter: gpuLoad.adapter,
        backend: gpuLoad.backend,
        loadMs: gpuLoad.readyMs,
        ...summarize([gpuRun]),
        sameTokensAsCpu: JSON.stringify(gpuRun.tokens) === JSON.stringify(cpuShort.tokens),
      },
      load: {
        selfroute: { coldMs: ourLoad.cold.readyMs, cachedMs: ourLoad.cached.readyMs },
        wllama: { coldMs: theirLoad.cold.readyMs, cachedMs: theirLoad.cached.readyMs, threads: theirLoad.cold.threads },
      },
      sizes: bundleSizes(paths.site),
      pageProblems: watch.problems,
    };
    fs.mkdirSync(path.dirname(out), { recursive: true });
    fs.writeFileSync(out, `${JSON.stringify(summary, null, 2)}\n`);
    say(`wrote ${out}`);
  } finally {
    await browser.close();
    await site.close();
  }
}

// A page that never answers would hang the xtask: give up well after a slow run would end.
setTimeout(() => {
  console.error(`bench web: no result within ${WATCHDOG_MS / 60_000} minutes, giving up`);
  process.exit(1);
}, WATCHDOG_MS).unref();

main().catch((e) => {
  console.error(e?.stack ?? e);
  process.exit(1);
});
