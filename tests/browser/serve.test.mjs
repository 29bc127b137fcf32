// The real `selfroute serve` in front of the browser: it serves the site so that Chromium runs the
// wasm, and relays the page's cloud requests (here with --upstream to the harness's cloud, so no
// model is loaded and the test takes a second or two).

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';

import { launchBrowser, paths, startSelfroute, startSite, watchPage } from './harness.mjs';

/** A site with the built wasm and the wasm test page (the real index.html would load a model). */
function wasmSite() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'selfroute-serve-site-'));
  fs.cpSync(path.join(paths.site, 'web/pkg'), path.join(dir, 'web/pkg'), { recursive: true });
  fs.copyFileSync(path.join(paths.pages, 'wasm-load.html'), path.join(dir, 'index.html'));
  return dir;
}

test('selfroute serve --static runs the wasm in the browser and relays the cloud', async (t) => {
  const dir = wasmSite();
  const cloud = await startSite({ site: dir, cloud: { mode: 'ok', text: 'Relayed by selfroute.', chunks: 3 } });
  const server = await startSelfroute({
    site: dir,
    model: null,
    args: ['--upstream', cloud.cloud.base, '--cross-origin-isolation'],
  });
  const browser = await launchBrowser({ webgpu: false });
  const watch = watchPage(browser.page);
  t.after(async () => {
    await browser.close();
    await server.close();
    await cloud.close();
    fs.rmSync(dir, { recursive: true, force: true });
    watch.assertClean();
  });
  const page = browser.page;

  await page.goto(server.url('/'));
  const result = await (await page.waitForFunction(() => window.__result, null, { timeout: 30_000 })).jsonValue();
  assert.equal(result.error, undefined, result.error);
  assert.ok(result.exports.includes('WasmAssistant'), `exports: ${result.exports}`);
  assert.equal(await page.evaluate(() => self.crossOriginIsolated), true);

  const answer = await page.evaluate(async () => {
    const r = await fetch('/v1/chat/completions', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'default', stream: true, messages: [{ role: 'user', content: 'Hello?' }] }),
    });
    return { status: r.status, body: await r.text() };
  });
  assert.equal(answer.status, 200);
  const text = answer.body
    .split('\n')
    .filter((l) => l.startsWith('data: {'))
    .map((l) => JSON.parse(l.slice(6)).choices[0].delta.content ?? '')
    .join('');
  assert.equal(text, 'Relayed by selfroute.');
  assert.deepEqual(cloud.cloud.requests.at(-1).json.messages, [{ role: 'user', content: 'Hello?' }]);
});
