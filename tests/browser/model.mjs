// The demo model as the tests hand it to the page: URL, SHA-256 and size, computed here from the
// file (an independent check of what the worker verifies).

import crypto from 'node:crypto';
import fs from 'node:fs';

import { paths } from './harness.mjs';

let cached = null;

/** `{url, sha256, size}` of the demo model served at /models/selfroute-demo.gguf. */
export function demoModel() {
  if (!cached) {
    const bytes = fs.readFileSync(paths.demoModel);
    cached = {
      url: '/models/selfroute-demo.gguf',
      sha256: crypto.createHash('sha256').update(bytes).digest('hex'),
      size: bytes.length,
    };
  }
  return cached;
}

/** Opens the bare API page and waits for `window.SelfRoute`. */
export async function openApiPage(site, page) {
  await page.goto(site.url('/test-pages/api.html'));
  await page.waitForFunction(() => window.__ready === true, null, { timeout: 30_000 });
}

/**
 * Creates an engine in the page (kept as `window.engine`) with `options` on top of the demo
 * model, a cloud at `cloudEndpoint` and the CPU backend; resolves to what loading reported.
 */
export async function createEngine(page, options) {
  return page.evaluate(async (options) => {
    const progress = [];
    window.engine = await window.SelfRoute.create({
      backend: 'cpu',
      maxTokens: 12,
      ...options,
      monitor(target) {
        target.addEventListener('downloadprogress', (e) => progress.push({ ...e.detail }));
      },
    });
    return {
      backend: window.engine.backend,
      backendReason: window.engine.backendReason,
      fromCache: window.engine.fromCache,
      progress,
    };
  }, options);
}

/** One turn through `engine.chat`, collecting every event. */
export async function chatTurn(page, messages) {
  return page.evaluate(async (messages) => {
    const events = [];
    for await (const event of window.engine.chat(messages)) events.push(event);
    return events;
  }, messages);
}

export const doneOf = (events) => events.find((e) => e.type === 'done')?.outcome;
export const textOf = (events, type) => events.filter((e) => e.type === type).map((e) => e.text).join('');
