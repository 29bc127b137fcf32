// Which engine the browser gets: `auto` passes over a software WebGPU adapter and a browser
// without WebGPU alike, saying why; `webgpu` runs the WGSL engine on SwiftShader.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { openSite } from './harness.mjs';
import { createEngine, demoModel, openApiPage } from './model.mjs';

test('without WebGPU, auto chooses the CPU and says why', async (t) => {
  const { site, page } = await openSite(t, { webgpu: false });
  await openApiPage(site, page);
  const caps = await page.evaluate(() => window.SelfRoute.capabilities());
  assert.equal(caps.webgpu, false);
  const loaded = await createEngine(page, { model: demoModel(), cloud: null, backend: 'auto' });
  assert.equal(loaded.backend, 'cpu');
  assert.match(loaded.backendReason, /no usable GPU adapter/);
});

test('with only a software adapter, auto chooses the CPU and says why', async (t) => {
  const { site, page } = await openSite(t, { webgpu: true });
  await openApiPage(site, page);
  const caps = await page.evaluate(() => window.SelfRoute.capabilities());
  assert.equal(caps.webgpu, true);
  assert.equal(caps.shaderF16, false, 'SwiftShader has no shader-f16');
  const loaded = await createEngine(page, { model: demoModel(), cloud: null, backend: 'auto' });
  assert.equal(loaded.backend, 'cpu');
  assert.match(loaded.backendReason, /software/);
  // Named as the browser describes it, not as wgpu's empty name.
  assert.match(loaded.backendReason, /swiftshader/i, loaded.backendReason);
});

test('asking for webgpu without an adapter is a NotSupportedError', async (t) => {
  const { site, page } = await openSite(t, { webgpu: false });
  await openApiPage(site, page);
  const error = await page.evaluate(async (model) => {
    try {
      await window.SelfRoute.create({ model, backend: 'webgpu', cloud: null });
      return null;
    } catch (e) {
      return { name: e.name, message: e.message };
    }
  }, demoModel());
  assert.equal(error?.name, 'NotSupportedError', JSON.stringify(error));
});

test('a file that is not a model is an InvalidModelError that names it, and nothing is cached', async (t) => {
  const { site, page, watch } = await openSite(t);
  watch.expect(/not a GGUF|InvalidModelError|invalid model/i);
  const garbage = Buffer.alloc(4096, 7);
  site.route('/models/garbage.gguf', (req, res) => {
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': garbage.length });
    res.end(garbage);
  });
  await openApiPage(site, page);
  const error = await page.evaluate(async (size) => {
    try {
      await window.SelfRoute.create({ model: { url: '/models/garbage.gguf', size }, backend: 'cpu', cloud: null });
      return null;
    } catch (e) {
      return { name: e.name, message: e.message };
    }
  }, garbage.length);
  assert.equal(error?.name, 'InvalidModelError', JSON.stringify(error));
  assert.match(error.message, /garbage\.gguf/);
  const cached = await page.evaluate(async () => (await (await caches.open('selfroute-models-v1')).keys()).length);
  assert.equal(cached, 0);
});
