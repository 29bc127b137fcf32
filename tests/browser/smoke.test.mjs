// The ground the other browser tests stand on: the site's wasm loads and runs in Chromium, and
// the WebGPU flag decides whether there is an adapter.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { crateVersion, openSite } from './harness.mjs';

test('the wasm module loads from the site and exports what web/CONTRACT.md names', async (t) => {
  const { site, page } = await openSite(t);
  await page.goto(site.url('/test-pages/wasm-load.html'));
  const result = await (await page.waitForFunction(() => window.__result, null, { timeout: 30_000 })).jsonValue();
  assert.equal(result.error, undefined, result.error);
  assert.ok(result.exports.includes('WasmAssistant'), `exports: ${result.exports}`);
  assert.ok(result.loadIsFunction, 'WasmAssistant.load is a function');
  if (result.version !== null) assert.equal(result.version, crateVersion());
  const wasm = site.requests.find((r) => r.path === '/web/pkg/selfroute_wasm_bg.wasm');
  assert.ok(wasm, 'the module was fetched from the site');
});

async function adapterInfo(page) {
  return page.evaluate(async () => {
    if (!navigator.gpu) return null;
    const adapter = await navigator.gpu.requestAdapter();
    if (!adapter) return null;
    const { vendor, architecture, description } = adapter.info;
    return { vendor, architecture, description };
  });
}

test('with --enable-unsafe-webgpu there is a WebGPU adapter', async (t) => {
  const { site, page } = await openSite(t, { webgpu: true });
  await page.goto(site.url('/test-pages/blank.html'));
  const info = await adapterInfo(page);
  assert.ok(info, 'requestAdapter() gave an adapter');
  t.diagnostic(`adapter: ${JSON.stringify(info)}`);
});

test('without it there is none (the CPU path is what such a browser gets)', async (t) => {
  const { site, page } = await openSite(t, { webgpu: false });
  await page.goto(site.url('/test-pages/blank.html'));
  assert.equal(await adapterInfo(page), null);
});
