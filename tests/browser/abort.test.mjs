// Stop is what users of in-browser engines most often report broken: aborting a download or an
// answer must end it at once and leave everything ready for the next prompt.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { openSite } from './harness.mjs';
import { chatTurn, createEngine, demoModel, doneOf, openApiPage } from './model.mjs';

test('aborting the download rejects with AbortError; loading again works', async (t) => {
  const { site, page, watch } = await openSite(t);
  watch.expectNetworkErrors();
  await openApiPage(site, page);
  const aborted = await page.evaluate(async (model) => {
    const controller = new AbortController();
    let seen = 0;
    const started = performance.now();
    try {
      await window.SelfRoute.create({
        model,
        backend: 'cpu',
        cloud: null,
        signal: controller.signal,
        monitor(target) {
          target.addEventListener('downloadprogress', (e) => {
            if (e.detail.phase === 'download' && e.detail.loaded > 0 && seen++ === 0) controller.abort();
          });
        },
      });
      return { name: 'no error' };
    } catch (e) {
      return { name: e.name, ms: performance.now() - started };
    }
  }, demoModel());
  assert.equal(aborted.name, 'AbortError');
  const cached = await page.evaluate(async () => (await (await caches.open('selfroute-models-v1')).keys()).length);
  assert.equal(cached, 0, 'nothing partial was cached');
  const loaded = await createEngine(page, { model: demoModel(), cloud: null });
  assert.equal(loaded.backend, 'cpu');
});

test('aborting an answer stops it at once; the next prompt is answered', async (t) => {
  const { site, page } = await openSite(t);
  await openApiPage(site, page);
  await createEngine(page, { model: demoModel(), cloud: null, maxTokens: 200 });
  const stopped = await page.evaluate(async () => {
    const controller = new AbortController();
    const events = [];
    for await (const event of window.engine.chat(
      [{ role: 'user', content: 'Write a long story about a dragon who learns to bake bread.' }],
      { signal: controller.signal },
    )) {
      events.push(event);
      if (event.type === 'local' && events.filter((e) => e.type === 'local').length === 3) controller.abort();
    }
    return events;
  });
  const outcome = doneOf(stopped);
  assert.equal(outcome.cancelled, true);
  assert.ok(outcome.local_tokens < 20, `stopped promptly (${outcome.local_tokens} tokens)`);
  const next = doneOf(await chatTurn(page, [{ role: 'user', content: 'What is 2 + 3?' }]));
  assert.equal(next.cancelled, false);
  assert.ok(next.answer.includes('5'), next.answer);
});
