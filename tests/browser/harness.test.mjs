// The harness itself, seen from a page: each cloud behaviour and model fault does what the
// end-to-end tests rely on, and requests are recorded. No wasm, no model: a second or two.

import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';

import { openSite } from './harness.mjs';

/** A site folder with a small "model" (deterministic bytes) instead of the real one. */
function fakeSite() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'selfroute-harness-'));
  fs.mkdirSync(path.join(dir, 'models'));
  const model = Buffer.alloc(3 << 20);
  for (let i = 0; i < model.length; i++) model[i] = (i * 31) & 0xff;
  fs.writeFileSync(path.join(dir, 'models/fake.gguf'), model);
  fs.writeFileSync(path.join(dir, 'index.html'), '<!doctype html><title>site</title>');
  return { dir, sha256: crypto.createHash('sha256').update(model).digest('hex'), size: model.length };
}

/** In the page: POST a chat request and read the whole response, or say how it failed. */
async function chat(page, endpoint, { abortAfterMs = 0, stream = true } = {}) {
  return page.evaluate(
    async ({ endpoint, abortAfterMs, stream }) => {
      const abort = new AbortController();
      if (abortAfterMs) setTimeout(() => abort.abort(), abortAfterMs);
      try {
        const r = await fetch(endpoint, {
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ model: 'default', stream, messages: [{ role: 'user', content: 'What is 7 + 5?' }] }),
          signal: abort.signal,
        });
        const chunks = [];
        const reader = r.body.getReader();
        const decoder = new TextDecoder();
        try {
          for (;;) {
            const { done, value } = await reader.read();
            if (done) break;
            chunks.push(decoder.decode(value, { stream: true }));
          }
        } catch (e) {
          return { status: r.status, body: chunks.join(''), readError: e.name };
        }
        return { status: r.status, contentType: r.headers.get('content-type'), body: chunks.join('') };
      } catch (e) {
        return { fetchError: e.name };
      }
    },
    { endpoint, abortAfterMs, stream },
  );
}

/** The text of an OpenAI SSE body. */
function sseText(body) {
  let text = '';
  for (const line of body.split('\n')) {
    if (!line.startsWith('data: ') || line === 'data: [DONE]') continue;
    text += JSON.parse(line.slice(6)).choices[0].delta.content ?? '';
  }
  return text;
}

test('the cloud streams, fails, stalls, cuts and goes down on request, recording each request', async (t) => {
  const fake = fakeSite();
  t.after(() => fs.rmSync(fake.dir, { recursive: true, force: true }));
  const { site, page, watch } = await openSite(t, { site: fake.dir, webgpu: false });
  watch.expectNetworkErrors();
  await page.goto(site.url('/'));

  site.cloud.set({ mode: 'ok', text: 'Twelve, from the cloud.', chunks: 3 });
  const ok = await chat(page, site.cloud.endpoint);
  assert.equal(ok.status, 200);
  assert.match(ok.contentType, /^text\/event-stream/);
  assert.equal(ok.body.match(/^data: \{/gm).length, 4, 'three pieces and a finish chunk');
  assert.ok(ok.body.endsWith('data: [DONE]\n\n'));
  assert.equal(sseText(ok.body), 'Twelve, from the cloud.');
  assert.deepEqual(site.cloud.requests.at(-1).json.messages, [{ role: 'user', content: 'What is 7 + 5?' }]);
  const plain = await chat(page, site.cloud.endpoint, { stream: false });
  assert.equal(JSON.parse(plain.body).choices[0].message.content, 'Twelve, from the cloud.');

  site.cloud.set({ mode: '500' });
  assert.equal((await chat(page, site.cloud.endpoint)).status, 500);
  site.cloud.set({ mode: 'status', status: 429, headers: { 'retry-after': '1' } });
  assert.equal((await chat(page, site.cloud.endpoint)).status, 429);

  site.cloud.set({ mode: 'stall' });
  const stalled = await chat(page, site.cloud.endpoint, { abortAfterMs: 300 });
  assert.equal(stalled.readError, 'AbortError', JSON.stringify(stalled));

  site.cloud.set({ mode: 'cut', text: 'abcdefghijkl', chunks: 6, after: 2 });
  const cut = await chat(page, site.cloud.endpoint);
  assert.equal(cut.readError, 'TypeError', JSON.stringify(cut));
  assert.equal(sseText(cut.body), 'abcd');
  assert.ok(!cut.body.includes('[DONE]'));

  const before = site.cloud.requests.length;
  site.cloud.set({ mode: 'down' });
  assert.notEqual(new URL(site.cloud.endpoint).origin, site.origin);
  assert.equal((await chat(page, site.cloud.endpoint)).fetchError, 'TypeError');
  assert.equal(site.cloud.requests.length, before, 'nothing reached the harness');
});

test('the model is served whole, by range, truncated, corrupted or cut, and its requests counted', async (t) => {
  const fake = fakeSite();
  t.after(() => fs.rmSync(fake.dir, { recursive: true, force: true }));
  const { site, page, watch } = await openSite(t, { site: fake.dir, webgpu: false });
  watch.expectNetworkErrors();
  await page.goto(site.url('/'));
  const download = (range) =>
    page.evaluate(async (range) => {
      try {
        const r = await fetch('/models/fake.gguf', { headers: range ? { range } : {} });
        const bytes = new Uint8Array(await r.arrayBuffer());
        const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
        return {
          status: r.status,
          length: Number(r.headers.get('content-length')),
          size: bytes.length,
          sha256: [...digest].map((b) => b.toString(16).padStart(2, '0')).join(''),
        };
      } catch (e) {
        return { error: e.name };
      }
    }, range);

  assert.deepEqual(await download(), { status: 200, length: fake.size, size: fake.size, sha256: fake.sha256 });
  const part = await download('bytes=100-199');
  assert.equal(part.status, 206);
  assert.equal(part.size, 100);

  site.setModelFault('truncated');
  const truncated = await download();
  assert.equal(truncated.status, 200);
  assert.equal(truncated.size, fake.size / 2);
  site.setModelFault('corrupted');
  const corrupted = await download();
  assert.equal(corrupted.size, fake.size);
  assert.notEqual(corrupted.sha256, fake.sha256);
  site.setModelFault('cut');
  assert.equal((await download()).error, 'TypeError');
  site.setModelFault(null);
  assert.equal((await download()).sha256, fake.sha256);

  assert.equal(site.modelRequests.length, 6);
  assert.equal(site.modelRequests[1].range, 'bytes=100-199');
});

test('cross-origin isolation makes the page crossOriginIsolated', async (t) => {
  const fake = fakeSite();
  t.after(() => fs.rmSync(fake.dir, { recursive: true, force: true }));
  const { site, page } = await openSite(t, { site: fake.dir, webgpu: false, crossOriginIsolation: true });
  await page.goto(site.url('/'));
  assert.equal(await page.evaluate(() => self.crossOriginIsolated), true);
});
