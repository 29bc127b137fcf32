// <selfroute-chat> in a plain host page: one script tag, attributes, events with their detail, a
// host that vetoes sending a conversation out, and ::part() styling from outside the shadow root.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { openSite, sleep } from './harness.mjs';
import { demoModel } from './model.mjs';

function hostPage(model, endpoint) {
  return `<!doctype html>
<meta charset="utf-8">
<title>host</title>
<style>
  selfroute-chat::part(send-button) { background-color: rgb(1, 2, 3); }
  selfroute-chat { --selfroute-accent: rgb(200, 0, 100); }
</style>
<script type="module" src="/web/selfroute-chat.js"></script>
<selfroute-chat model-url="${model.url}" model-sha256="${model.sha256}" model-size="${model.size}"
  endpoint="${endpoint}" cloud-model="test-cloud" backend="cpu" offload-bias="100" max-tokens="12"
  placeholder="Ask me"></selfroute-chat>
<script>
  window.events = [];
  for (const type of ['selfroute-progress', 'selfroute-ready', 'selfroute-message', 'selfroute-offload', 'selfroute-error']) {
    document.addEventListener(type, (e) => window.events.push({ type, detail: JSON.parse(JSON.stringify(e.detail ?? null)), composed: e.composed, bubbles: e.bubbles }));
  }
  window.veto = false;
  document.addEventListener('selfroute-offload', (e) => { if (window.veto) e.preventDefault(); });
</script>`;
}

test('the component: on-demand load, events, a vetoed offload, a cloud answer and ::part styling', async (t) => {
  const { site, page } = await openSite(t, { cloud: { mode: 'ok', text: 'Cloud says 192852.' } });
  const model = demoModel();
  site.route('/host.html', (req, res) => {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(hostPage(model, site.cloud.endpoint));
  });
  await page.goto(site.url('/host.html'));
  await page.waitForFunction(() => customElements.get('selfroute-chat'));
  await sleep(500);
  assert.equal(site.modelRequests.length, 0, 'no download without a user action (load="on-demand")');

  // Attributes reach the shadow DOM; ::part and custom properties style it from outside.
  const styled = await page.evaluate(() => {
    const root = document.querySelector('selfroute-chat').shadowRoot;
    const send = root.querySelector('[part~="send-button"]');
    const input = root.querySelector('[part~="input"]');
    return {
      sendBackground: getComputedStyle(send).backgroundColor,
      placeholder: input.getAttribute('placeholder'),
      parts: [...root.querySelectorAll('[part]')].flatMap((e) => e.getAttribute('part').split(/\s+/)),
    };
  });
  assert.equal(styled.sendBackground, 'rgb(1, 2, 3)');
  assert.equal(styled.placeholder, 'Ask me');
  for (const part of ['container', 'log', 'input', 'send-button', 'stop-button', 'progress', 'status']) {
    assert.ok(styled.parts.includes(part), `part ${part}`);
  }

  await page.evaluate(() => document.querySelector('selfroute-chat').load());
  const events = await page.evaluate(() => window.events);
  const ready = events.find((e) => e.type === 'selfroute-ready');
  assert.equal(ready.detail.backend, 'cpu');
  assert.equal(ready.detail.fromCache, false);
  assert.ok(ready.bubbles && ready.composed);
  const progress = events.filter((e) => e.type === 'selfroute-progress').map((e) => e.detail);
  assert.equal(progress[0].progress, 0);
  assert.ok(progress.some((p) => p.phase === 'download' && p.progress === 1));

  // The host vetoes: nothing leaves the device, the model answers itself.
  await page.evaluate(() => (window.veto = true));
  const vetoed = await page.evaluate(() => document.querySelector('selfroute-chat').send('What is 487 times 396?'));
  assert.equal(vetoed.route, 'local');
  assert.equal(vetoed.local_reason, 'offload_declined');
  assert.equal(site.cloud.requests.length, 0, 'a vetoed offload sends nothing');
  const offloadEvents = (await page.evaluate(() => window.events)).filter((e) => e.type === 'selfroute-offload');
  assert.equal(offloadEvents.length, 1);
  assert.equal(offloadEvents[0].detail.reason, 'token');

  // Allowed: the cloud answers, badged as such.
  await page.evaluate(() => (window.veto = false));
  const clouded = await page.evaluate(() => document.querySelector('selfroute-chat').send('What is 487 times 396?'));
  assert.equal(clouded.route, 'cloud');
  assert.equal(site.cloud.requests.length, 1);
  const messages = (await page.evaluate(() => window.events)).filter((e) => e.type === 'selfroute-message').map((e) => e.detail);
  assert.deepEqual(messages.map((m) => [m.role, m.source]), [
    ['user', 'user'],
    ['assistant', 'device'],
    ['user', 'user'],
    ['assistant', 'cloud'],
  ]);
  assert.equal(messages[3].content, 'Cloud says 192852.');
  // The cloud got the conversation as the user sees it: both questions and the device's answer.
  assert.deepEqual(site.cloud.requests[0].json.messages.map((m) => m.role), ['user', 'assistant', 'user']);
  const badges = await page.evaluate(() =>
    [...document.querySelector('selfroute-chat').shadowRoot.querySelectorAll('[part~="route-badge"]')].map((b) => [b.dataset.route, b.textContent.trim()]),
  );
  assert.deepEqual(badges, [['device', 'on device'], ['cloud', 'cloud']]);
});
