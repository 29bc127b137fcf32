// The demo as a user meets it: `selfroute serve --static target/site` (its own model standing in
// for the cloud), index.html in Chromium, the model downloaded with a progress bar, answers on the
// device whose greedy tokens are the native engine's, on the CPU path and on WebGPU.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';

import { REPO, launchBrowser, paths, startSelfroute, watchPage } from './harness.mjs';

const PROMPT = 'What is the capital of France?';
const TOKENS = 8;
const ARTIFACTS = path.join(REPO, 'target/browser-artifacts');

/** The native engine's greedy tokens for the same model and prompt (`selfroute generate`). */
function nativeTokens() {
  const out = execFileSync(
    paths.selfroute,
    ['generate', '--chat', '--prompt', PROMPT, '--max-tokens', String(TOKENS), '--json', '--threads', '1', '--model', paths.demoModel],
    { encoding: 'utf8' },
  );
  return JSON.parse(out).token_ids;
}

async function openDemo(t, query) {
  const server = await startSelfroute({ model: paths.model });
  const browser = await launchBrowser({ webgpu: true });
  const watch = watchPage(browser.page);
  t.after(async () => {
    await browser.close();
    await server.close();
    watch.assertClean();
  });
  const page = browser.page;
  await page.goto(server.url(`/index.html?${query}`));
  await page.waitForFunction(() => document.querySelector('selfroute-chat')?.engine, null, { timeout: 240_000 });
  return { server, page };
}

test('the demo page downloads the model with progress and answers on the device (CPU)', async (t) => {
  const { page } = await openDemo(t, 'backend=cpu&load=eager');
  const progress = await page.evaluate(() => {
    const bar = document.querySelector('selfroute-chat').shadowRoot.querySelector('[part~="progress"]');
    return { value: bar.value, max: bar.max };
  });
  assert.equal(progress.value / progress.max, 1, 'the progress bar reached 100%');

  const plain = await page.evaluate(
    ({ prompt, tokens }) => document.querySelector('selfroute-chat').engine.generate(prompt, { chat: true, maxTokens: tokens }),
    { prompt: PROMPT, tokens: TOKENS },
  );
  assert.deepEqual(plain.tokens, nativeTokens(), `browser: ${JSON.stringify(plain.text)}`);

  const outcome = await page.evaluate(() => document.querySelector('selfroute-chat').send('What is 2 + 3?'));
  assert.equal(outcome.route, 'local');
  const badge = await page.evaluate(() =>
    document.querySelector('selfroute-chat').shadowRoot.querySelector('[part~="route-badge"]')?.textContent.trim(),
  );
  assert.equal(badge, 'on device');
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: path.join(ARTIFACTS, 'demo.png'), fullPage: true });
});

test('the demo hands a question to its cloud (selfroute serve) and badges the answer', async (t) => {
  const { page } = await openDemo(t, 'backend=cpu&load=eager&offload-bias=100');
  const outcome = await page.evaluate(() => document.querySelector('selfroute-chat').send('What is 487 times 396?'));
  assert.equal(outcome.route, 'cloud', JSON.stringify(outcome));
  assert.ok(outcome.answer.length > 0);
  const badges = await page.evaluate(() =>
    [...document.querySelector('selfroute-chat').shadowRoot.querySelectorAll('[part~="route-badge"]')].map((b) => b.textContent.trim()),
  );
  assert.deepEqual(badges, ['cloud']);
});

test('on WebGPU (SwiftShader) the greedy tokens are the native engine\'s', async (t) => {
  const { page } = await openDemo(t, 'backend=webgpu&load=eager');
  const engine = await page.evaluate(() => {
    const e = document.querySelector('selfroute-chat').engine;
    return { backend: e.backend, adapter: e.adapter };
  });
  assert.equal(engine.backend, 'webgpu');
  t.diagnostic(`adapter: ${engine.adapter}`);
  const plain = await page.evaluate(
    ({ prompt, tokens }) => document.querySelector('selfroute-chat').engine.generate(prompt, { chat: true, maxTokens: tokens }),
    { prompt: PROMPT, tokens: TOKENS },
  );
  assert.deepEqual(plain.tokens, nativeTokens(), `browser: ${JSON.stringify(plain.text)}`);
});
