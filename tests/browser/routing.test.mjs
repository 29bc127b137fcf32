// Routing in the browser: the page's engine answers on the device, or hands the conversation to
// the cloud (a scripted server on 127.0.0.1), and whatever the cloud does, the user gets an answer.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { openSite } from './harness.mjs';
import { chatTurn, createEngine, demoModel, doneOf, openApiPage, textOf } from './model.mjs';

const QUESTION = [{ role: 'user', content: 'What is 487 times 396?' }];

async function engineWithCloud(t, cloud, extra = {}) {
  const { site, page, watch } = await openSite(t, { cloud });
  await openApiPage(site, page);
  await createEngine(page, {
    model: demoModel(),
    cloud: { endpoint: site.cloud.endpoint, model: 'test-cloud', timeoutMs: 1500, retries: 0 },
    ...extra,
  });
  return { site, page, watch };
}

test('an offloaded answer comes from the cloud, which got exactly the conversation', async (t) => {
  const text = 'It is 192,852.';
  const { site, page } = await engineWithCloud(t, { mode: 'ok', text }, { offloadBias: 100 });
  const conversation = [
    { role: 'system', content: 'Be brief.' },
    { role: 'user', content: 'Hi' },
    { role: 'assistant', content: 'Hello! How can I help?' },
    ...QUESTION,
  ];
  const events = await chatTurn(page, conversation);
  const outcome = doneOf(events);
  assert.equal(outcome.route, 'cloud');
  assert.equal(outcome.answer, text);
  assert.equal(textOf(events, 'cloud'), text);
  assert.ok(events.filter((e) => e.type === 'cloud').length > 1, 'the reply streamed in pieces');
  assert.ok(events.some((e) => e.type === 'offload' && e.reason === 'token'));
  assert.equal(site.cloud.requests.length, 1);
  const sent = site.cloud.requests[0].json;
  assert.deepEqual(sent.messages, conversation, 'the original conversation, nothing added');
  assert.equal(sent.model, 'test-cloud');
  assert.equal(sent.stream, true);
  assert.equal(outcome.cloud_bytes_sent, Buffer.byteLength(site.cloud.requests[0].body));
});

test('a local answer sends nothing to the cloud', async (t) => {
  const { site, page } = await engineWithCloud(t, { mode: 'ok' }, { offloadBias: -100 });
  const events = await chatTurn(page, [{ role: 'user', content: 'What is 2 + 3?' }]);
  const outcome = doneOf(events);
  assert.equal(outcome.route, 'local');
  assert.ok(outcome.answer.includes('5'), outcome.answer);
  assert.equal(textOf(events, 'local'), outcome.answer);
  assert.deepEqual(site.cloud.requests, [], 'no request reached the cloud endpoint');
});

// Each way a cloud can fail: the answer falls back to the device, and says so.
const FAULTS = [
  { name: 'down (connection refused)', cloud: { mode: 'down' }, error: /reach/ },
  { name: 'HTTP 500', cloud: { mode: '500' }, error: /500/ },
  { name: 'stalled after the headers', cloud: { mode: 'stall' }, error: /sent nothing/ },
  { name: 'cut mid-stream', cloud: { mode: 'cut', after: 2, text: 'one two three four five six' }, error: /./ },
];

for (const fault of FAULTS) {
  test(`a cloud that is ${fault.name}: the device answers and says so`, async (t) => {
    const { page, watch } = await engineWithCloud(t, fault.cloud, { offloadBias: 100 });
    watch.expectNetworkErrors();
    const events = await chatTurn(page, QUESTION);
    const outcome = doneOf(events);
    assert.equal(outcome.route, 'fallback', JSON.stringify(outcome));
    assert.equal(outcome.local_reason, 'cloud_unavailable');
    assert.match(outcome.cloud_error, fault.error);
    const failed = events.findIndex((e) => e.type === 'cloud-failed');
    assert.ok(failed >= 0, 'a cloud-failed event');
    const after = events.slice(failed).filter((e) => e.type === 'local').map((e) => e.text).join('');
    assert.ok(after.length > 0, 'a local answer follows the failure');
    assert.equal(outcome.answer, after);
    assert.ok(!outcome.answer.includes('<|offload|>'));
  });
}

test('chat.completions.create gives OpenAI-shaped chunks and completions, tagged with their source', async (t) => {
  const text = 'Cloud: 192,852.';
  const { page } = await engineWithCloud(t, { mode: 'ok', text }, { offloadBias: 100 });
  const streamed = await page.evaluate(async (messages) => {
    const chunks = [];
    const stream = await window.engine.chat.completions.create({
      messages,
      stream: true,
      stream_options: { include_usage: true },
    });
    for await (const chunk of stream) chunks.push(chunk);
    return chunks;
  }, QUESTION);
  assert.ok(streamed.every((c) => c.object === 'chat.completion.chunk' && typeof c.id === 'string'));
  const content = streamed.map((c) => c.choices[0]?.delta?.content ?? '').join('');
  assert.equal(content, text);
  const withContent = streamed.filter((c) => c.choices[0]?.delta?.content);
  assert.ok(withContent.every((c) => c.selfroute.source === 'cloud' && c.selfroute.offload === 'token'));
  const finishes = streamed.map((c) => c.choices[0]?.finish_reason).filter(Boolean);
  assert.deepEqual(finishes, ['stop']);
  const usage = streamed.at(-1).usage;
  assert.ok(usage && usage.completion_tokens > 0 && usage.prompt_tokens > 0, JSON.stringify(usage));

  const whole = await page.evaluate(
    (messages) => window.engine.chat.completions.create({ messages, stream: false }),
    [{ role: 'user', content: 'What is 3 times 3?' }],
  );
  assert.equal(whole.object, 'chat.completion');
  assert.equal(whole.choices[0].message.role, 'assistant');
  assert.equal(whole.choices[0].message.content, text);
  assert.equal(whole.selfroute.source, 'cloud');
});
