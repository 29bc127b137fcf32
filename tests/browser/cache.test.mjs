// The model cache: a verified download is kept, a reload loads it with no request for the model,
// and a broken entry (short, or the right size with a wrong byte) or a broken download is never used.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { openSite } from './harness.mjs';
import { createEngine, demoModel, openApiPage } from './model.mjs';

const options = () => ({ model: demoModel(), cloud: null });

async function unload(page) {
  await page.evaluate(() => window.engine.unload());
}

/** Rewrites every cached copy of the model with `mutate(bytes)` (run in the page). */
async function damageCache(page, how) {
  return page.evaluate(async (how) => {
    const cache = await caches.open('selfroute-models-v1');
    const keys = await cache.keys();
    for (const request of keys) {
      const bytes = new Uint8Array(await (await cache.match(request)).arrayBuffer());
      const damaged = how === 'truncate' ? bytes.slice(0, bytes.length >> 1) : bytes.slice();
      if (how === 'flip') damaged[damaged.length >> 1] ^= 0xff;
      await cache.put(request, new Response(damaged));
    }
    return keys.length;
  }, how);
}

test('a reload loads the model from the cache without asking the network for it', async (t) => {
  const { site, page } = await openSite(t);
  await openApiPage(site, page);
  const model = demoModel();
  assert.equal(await page.evaluate((m) => window.SelfRoute.availability({ model: m }), model), 'downloadable');
  const first = await createEngine(page, options());
  assert.equal(first.fromCache, false);
  const downloads = first.progress.filter((p) => p.phase === 'download');
  assert.equal(downloads[0].progress, 0, 'progress starts at 0');
  assert.equal(downloads.at(-1).progress, 1, 'and reaches 1');
  assert.ok(downloads.every((p) => p.total === model.size), 'the total is known from the start');
  assert.equal(first.progress.at(-1).phase, 'ready');
  assert.equal(site.modelRequests.length, 1);
  await unload(page);

  await page.reload();
  await openApiPage(site, page);
  assert.equal(await page.evaluate((m) => window.SelfRoute.availability({ model: m }), model), 'available');
  const second = await createEngine(page, options());
  assert.equal(second.fromCache, true);
  assert.equal(site.modelRequests.length, 1, 'no second request for the model');
  const reads = second.progress.filter((p) => p.phase === 'cache-read');
  assert.ok(reads.length >= 2 && reads.at(-1).progress === 1, 'progress while reading the cache');
  const answer = await page.evaluate(() => window.engine.generate('What is 2 + 3?', { maxTokens: 4 }));
  assert.ok(answer.tokens.length > 0);
});

for (const how of ['truncate', 'flip']) {
  test(`a cached model that was damaged (${how}) is discarded and fetched again`, async (t) => {
    const { site, page, watch } = await openSite(t);
    watch.expect(/integrity|SHA-256|size|cached model/i);
    await openApiPage(site, page);
    await createEngine(page, options());
    await unload(page);
    assert.ok((await damageCache(page, how)) >= 1, 'the model was cached');

    await page.reload();
    await openApiPage(site, page);
    const again = await createEngine(page, options());
    assert.equal(again.fromCache, false, 'the damaged entry was not used');
    assert.equal(site.modelRequests.length, 2, 'the model was fetched once more');
    assert.equal(await page.evaluate(() => window.engine.backend), 'cpu');
    // What is cached now is whole again.
    const sizes = await page.evaluate(async () => {
      const cache = await caches.open('selfroute-models-v1');
      const out = [];
      for (const r of await cache.keys()) out.push((await (await cache.match(r)).arrayBuffer()).byteLength);
      return out;
    });
    assert.deepEqual(sizes, [demoModel().size]);
  });
}

for (const fault of ['truncated', 'corrupted']) {
  test(`a ${fault} download fails with IntegrityError and nothing is cached`, async (t) => {
    const { site, page, watch } = await openSite(t, { model: { fault } });
    watch.expect(/integrity|SHA-256|size/i);
    await openApiPage(site, page);
    const error = await page.evaluate(async (model) => {
      try {
        await window.SelfRoute.create({ model, backend: 'cpu', cloud: null });
        return null;
      } catch (e) {
        return { name: e.name, message: e.message };
      }
    }, demoModel());
    assert.equal(error?.name, 'IntegrityError', JSON.stringify(error));
    const cached = await page.evaluate(async () => (await (await caches.open('selfroute-models-v1')).keys()).length);
    assert.equal(cached, 0);
    // The next try, with the server healed, works.
    site.setModelFault(null);
    const ok = await createEngine(page, options());
    assert.equal(ok.fromCache, false);
  });
}
