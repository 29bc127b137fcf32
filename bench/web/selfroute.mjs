// Our engine in a bench page (pages/selfroute.html): load it, then time `engine.generate`.

import { MODEL_URL } from './server.mjs';

/** The bench page's URL for `model` ({sha256, size}) on `backend`. */
export function pageUrl(site, model, backend) {
  const query = new URLSearchParams({ url: MODEL_URL, sha256: model.sha256, size: String(model.size), backend });
  return site.url(`/bench/selfroute.html?${query}`);
}

/**
 * Waits for the page to have created its engine; resolves to `{readyMs, fromCache, backend,
 * adapter}`, readyMs counted from navigation start.
 */
export async function loaded(page, timeoutMs) {
  const handle = await page.waitForFunction(() => window.__loaded, null, { timeout: timeoutMs, polling: 50 });
  const result = await handle.jsonValue();
  if (result.error) throw new Error(`selfroute did not load: ${result.error}`);
  return result;
}

/**
 * One greedy generation of `maxTokens` from the raw text `prompt` (no chat template, so wllama
 * gets the same ids), from an empty KV cache: `resetChat()` first, or the repeated prompt would be
 * reused and there would be no prefill to time. The figures are the engine's own (`stats()`).
 */
export async function generate(page, prompt, maxTokens) {
  return page.evaluate(async ({ prompt, maxTokens }) => {
    await window.engine.resetChat();
    const started = performance.now();
    const { tokens, text } = await window.engine.generate(prompt, { chat: false, maxTokens });
    const wallMs = performance.now() - started;
    const stats = await window.engine.stats();
    return {
      promptTokens: stats.promptTokens,
      generatedTokens: stats.generatedTokens,
      prefillTokS: stats.prefillTokensPerSecond,
      decodeTokS: stats.decodeTokensPerSecond,
      firstTokenMs: stats.firstTokenMs,
      wallMs,
      tokens,
      text,
    };
  }, { prompt, maxTokens });
}
