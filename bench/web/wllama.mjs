// wllama in a bench page (pages/wllama.html): load it, then time a streamed raw completion.

import { MODEL_URL } from './server.mjs';

export function pageUrl(site) {
  return site.url(`/bench/wllama.html?${new URLSearchParams({ url: MODEL_URL })}`);
}

/** Waits for the page to have loaded the model; resolves to `{readyMs, threads}`. */
export async function loaded(page, timeoutMs) {
  const handle = await page.waitForFunction(() => window.__loaded, null, { timeout: timeoutMs, polling: 50 });
  const result = await handle.jsonValue();
  if (result.error) throw new Error(`wllama did not load: ${result.error}`);
  return result;
}

/**
 * One greedy completion of `maxTokens` from the raw text `prompt`. `cache_prompt: false`, or
 * llama.cpp's server would reuse the repeated prompt and skip the prefill. Prefill and decode
 * speeds and the prompt's token count come from llama.cpp's own timings; the first-token time is
 * the first streamed piece as the page sees it (ours is measured inside the worker: the message
 * between them costs well under a millisecond).
 */
export async function generate(page, prompt, maxTokens) {
  return page.evaluate(async ({ prompt, maxTokens }) => {
    const started = performance.now();
    let firstTokenMs = null;
    let text = '';
    let timings = null;
    const stream = await window.wllama.createCompletion({
      prompt,
      max_tokens: maxTokens,
      temperature: 0,
      cache_prompt: false,
      stream: true,
    });
    for await (const chunk of stream) {
      const piece = chunk.choices?.[0]?.text ?? '';
      if (piece && firstTokenMs === null) firstTokenMs = performance.now() - started;
      text += piece;
      if (chunk.timings) timings = chunk.timings;
    }
    const wallMs = performance.now() - started;
    if (!timings) throw new Error('wllama streamed no timings');
    return {
      promptTokens: timings.prompt_n,
      generatedTokens: timings.predicted_n,
      prefillTokS: timings.prompt_per_second,
      decodeTokS: timings.predicted_per_second,
      firstTokenMs,
      promptMs: timings.prompt_ms,
      wallMs,
      text,
    };
  }, { prompt, maxTokens });
}
