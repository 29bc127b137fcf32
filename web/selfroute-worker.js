// The selfroute engine's worker: downloads and caches the model, loads it into the wasm module and
// runs chats, pushing every event to the page as its own message. Protocol (all messages carry the
// page's request `id`):
//   page -> worker: load, chat, generate, stats, reset, unload (each answered by `result` or
//                   `error`); stop and offload-approval (notifications, no answer)
//   worker -> page: progress, event, offload-approval (a question), result, error

const WASM_URL = new URL('./pkg/selfroute_wasm.js', import.meta.url);
const CACHE_NAME = 'selfroute-models-v1';
const PARTIAL_PARAM = 'selfroute-partial';
const PROGRESS_INTERVAL_MS = 100;
// A staged entry this old belongs to a page that was closed mid-write.
const STALE_PARTIAL_MS = 10 * 60 * 1000;

let wasmModule = null;
let assistant = null;
let loading = false;
let crashed = null;
let active = null;
let lastStats = null;
const approvals = new Map();
let nextApprovalId = 1;

// ---------------------------------------------------------------------------------------------
// Messages

function post(message) {
  self.postMessage(message);
}

function named(name, message) {
  const error = new Error(message);
  error.name = name;
  return error;
}

function errorInfo(error) {
  if (error instanceof WebAssembly.RuntimeError) {
    return {
      name: 'OperationError',
      message: `the engine crashed (${error.message}); unload it and create a new one`,
    };
  }
  if (error && typeof error === 'object') {
    const name = typeof error.name === 'string' && error.name !== 'Error' ? error.name : 'OperationError';
    return { name, message: String(error.message || error) };
  }
  return { name: 'OperationError', message: String(error ?? 'unknown error') };
}

// wasm-bindgen serializers may hand back Maps; the page expects plain objects.
function plain(value) {
  if (value instanceof Map) {
    return Object.fromEntries([...value].map(([key, inner]) => [key, plain(inner)]));
  }
  if (Array.isArray(value)) return value.map(plain);
  if (value && typeof value === 'object' && Object.getPrototypeOf(value) === Object.prototype) {
    return Object.fromEntries(Object.entries(value).map(([key, inner]) => [key, plain(inner)]));
  }
  return value;
}

const requests = {
  load: (message) => load(message),
  chat: (message) => chat(message),
  generate: (message) => generate(message),
  stats: () => stats(),
  reset: () => reset(),
  unload: () => unload(),
};

const notifications = {
  stop: (message) => stop(message),
  'offload-approval': (message) => answerApproval(message),
};

self.addEventListener('message', (event) => {
  const message = event.data ?? {};
  const notify = notifications[message.type];
  if (notify) {
    notify(message);
    return;
  }
  const handle = requests[message.type];
  const run = handle
    ? Promise.resolve().then(() => handle(message))
    : Promise.reject(named('DataError', `unknown message type "${message.type}"`));
  run.then(
    (value) => post({ type: 'result', id: message.id, value }),
    (error) => {
      if (error instanceof WebAssembly.RuntimeError) crashed = error;
      post({ type: 'error', id: message.id, error: errorInfo(error) });
    },
  );
});

// ---------------------------------------------------------------------------------------------
// Progress: throttled to ~10 messages a second, but the first and last of each phase always go.

function progressReporter(id) {
  let lastSent = -Infinity;
  let lastPhase = null;
  return function report(fields, force = false) {
    const now = performance.now();
    if (!force && fields.phase === lastPhase && now - lastSent < PROGRESS_INTERVAL_MS) return;
    lastSent = now;
    lastPhase = fields.phase;
    const total = fields.total ?? null;
    const progress = total ? Math.min(1, fields.loaded / total) : (fields.done ? 1 : 0);
    const { done, ...rest } = fields;
    post({ type: 'progress', id, progress: { loaded: 0, total, fromCache: false, text: '', ...rest, progress } });
  };
}

function mb(bytes) {
  return `${(bytes / 1e6).toFixed(1)} MB`;
}

function byteText(verb, loaded, total) {
  return total ? `${verb}: ${mb(loaded)} of ${mb(total)}` : `${verb}: ${mb(loaded)}`;
}

// ---------------------------------------------------------------------------------------------
// Reading bytes with progress

function allocate(size) {
  try {
    return new Uint8Array(size);
  } catch {
    throw named('OutOfMemoryError', `could not allocate ${mb(size)} for the model in this tab`);
  }
}

function contentLength(response) {
  if (response.headers.get('content-encoding')) return null;
  const length = Number(response.headers.get('content-length'));
  return Number.isSafeInteger(length) && length > 0 ? length : null;
}

function concat(chunks, length) {
  const bytes = allocate(length);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return bytes;
}

// With a known size the body goes straight into one buffer of that size, and a longer body is
// refused as it arrives rather than after it filled memory.
async function readBody(response, { size, phase, verb, fromCache, url }, report, signal) {
  const total = size ?? contentLength(response);
  report({ phase, loaded: 0, total, fromCache, text: byteText(verb, 0, total) }, true);
  const reader = response.body.getReader();
  const buffer = size ? allocate(size) : null;
  const chunks = [];
  let loaded = 0;
  try {
    for (;;) {
      if (signal.aborted) throw named('AbortError', 'loading the model was aborted');
      const { done, value } = await reader.read();
      if (done) break;
      if (buffer) {
        if (loaded + value.byteLength > buffer.byteLength) {
          throw named('IntegrityError', `${url} is longer than the expected ${size} bytes`);
        }
        buffer.set(value, loaded);
      } else {
        chunks.push(value);
      }
      loaded += value.byteLength;
      report({ phase, loaded, total, fromCache, text: byteText(verb, loaded, total) });
    }
  } catch (error) {
    reader.cancel().catch(() => {});
    if (signal.aborted) throw named('AbortError', 'loading the model was aborted');
    if (error?.name === 'IntegrityError' || error?.name === 'OutOfMemoryError') throw error;
    throw named('NetworkError', `reading ${url} stopped after ${mb(loaded)}: ${error?.message ?? error}`);
  }
  report({ phase, loaded, total: total ?? loaded, fromCache, done: true, text: byteText(verb, loaded, total ?? loaded) }, true);
  if (buffer) return loaded === buffer.byteLength ? buffer : buffer.subarray(0, loaded);
  return concat(chunks, loaded);
}

function hex(buffer) {
  return [...new Uint8Array(buffer)].map((byte) => byte.toString(16).padStart(2, '0')).join('');
}

async function verify(bytes, model, warnings) {
  if (model.size !== null && bytes.byteLength !== model.size) {
    throw named('IntegrityError',
      `${model.sourceName} has ${bytes.byteLength} bytes, expected ${model.size}`);
  }
  if (!model.sha256) return;
  if (!globalThis.crypto?.subtle) {
    warnings.add('this page is not a secure context, so the model\'s SHA-256 was not checked');
    return;
  }
  const actual = hex(await crypto.subtle.digest('SHA-256', bytes));
  if (actual !== model.sha256) {
    throw named('IntegrityError',
      `${model.sourceName} does not match its SHA-256: expected ${model.sha256}, got ${actual}`);
  }
}

// ---------------------------------------------------------------------------------------------
// The model cache. Entries are written only after the bytes were verified and the engine accepted
// them, so a partial or corrupt download is never stored; every read is verified again anyway.

async function openModelCache(warnings) {
  if (typeof caches === 'undefined') {
    warnings.add('this browser offers no Cache API here, so the model is kept in memory only');
    return null;
  }
  try {
    return await caches.open(CACHE_NAME);
  } catch (error) {
    warnings.add(`the browser cache cannot be opened (${error?.message ?? error}), so the model is kept in memory only`);
    return null;
  }
}

function partialKey(key) {
  const url = new URL(key);
  url.searchParams.set(PARTIAL_PARAM, `${Date.now()}-${Math.random().toString(36).slice(2, 10)}`);
  return url.href;
}

function keyBase(key) {
  const url = new URL(key);
  url.searchParams.delete('selfroute-sha256');
  url.searchParams.delete(PARTIAL_PARAM);
  return url.href;
}

function isStalePartial(key, now) {
  const stamp = new URL(key).searchParams.get(PARTIAL_PARAM);
  return stamp !== null && now - Number.parseInt(stamp, 10) > STALE_PARTIAL_MS;
}

async function evict(cache, key) {
  await cache?.delete(key).catch(() => false);
}

// Older versions of this model and staged writes left by closed pages only take up quota.
async function tidyCache(cache, model) {
  const now = Date.now();
  const base = keyBase(model.key);
  for (const request of await cache.keys()) {
    const key = request.url;
    if (key === model.key) continue;
    const staged = new URL(key).searchParams.has(PARTIAL_PARAM);
    if ((!staged && keyBase(key) === base) || isStalePartial(key, now)) await cache.delete(request);
  }
}

async function freeSpace() {
  try {
    const { quota, usage } = await navigator.storage.estimate();
    return Number.isFinite(quota) && Number.isFinite(usage) ? quota - usage : null;
  } catch {
    return null;
  }
}

function cachedResponse(bytes, model) {
  return new Response(bytes, {
    headers: {
      'content-type': 'application/octet-stream',
      'content-length': String(bytes.byteLength),
      'x-selfroute-size': String(bytes.byteLength),
      'x-selfroute-sha256': model.sha256 ?? '',
    },
  });
}

// Staged under a temporary key, then committed: the final key only ever names a complete write.
// When the quota has room for one copy but not two, the single atomic put is the commit.
async function storeModel(cache, model, bytes, warnings) {
  if (!cache) return false;
  if (bytes.byteLength === 0) {
    warnings.add('the engine kept the model\'s bytes, so it could not be saved for offline use');
    return false;
  }
  const need = bytes.byteLength;
  const free = await freeSpace();
  if (free !== null && free < need) {
    warnings.add(`not enough browser storage to keep the model offline (${mb(free)} free, ${mb(need)} needed): `
      + 'it is kept in memory only and will be downloaded again next time');
    return false;
  }
  const staged = free === null || free >= 2 * need ? partialKey(model.key) : null;
  try {
    if (staged) {
      await cache.put(staged, cachedResponse(bytes, model));
      const entry = await cache.match(staged);
      await cache.put(model.key, entry ?? cachedResponse(bytes, model));
      await cache.delete(staged);
    } else {
      await cache.put(model.key, cachedResponse(bytes, model));
    }
  } catch (error) {
    if (staged) await evict(cache, staged);
    warnings.add(error?.name === 'QuotaExceededError'
      ? 'the browser storage quota is full: the model is kept in memory only and will be downloaded again next time'
      : `the model could not be saved for offline use (${error?.message ?? error})`);
    return false;
  }
  await tidyCache(cache, model).catch(() => {});
  return true;
}

async function readCached(cache, model, report, signal, warnings) {
  if (!cache) return null;
  let response;
  try {
    response = await cache.match(model.key);
  } catch {
    return null;
  }
  if (!response) return null;
  const recorded = Number(response.headers.get('x-selfroute-size'));
  const size = model.size ?? (Number.isSafeInteger(recorded) && recorded > 0 ? recorded : null);
  try {
    const bytes = await readBody(response,
      { size, phase: 'cache-read', verb: 'Reading the model from the browser cache', fromCache: true, url: model.sourceName },
      report, signal);
    await verify(bytes, { ...model, size }, warnings);
    return bytes;
  } catch (error) {
    if (error?.name === 'AbortError' || error?.name === 'OutOfMemoryError') throw error;
    await evict(cache, model.key);
    warnings.add(`the cached model was damaged (${error?.message ?? error}) and was downloaded again`);
    return null;
  }
}

async function download(model, report, signal, warnings) {
  report({ phase: 'download', loaded: 0, total: model.size, text: byteText('Downloading the model', 0, model.size) }, true);
  let response;
  try {
    // no-cache: revalidate with the server, so an HTTP-cached copy of an older file is not reused.
    response = await fetch(model.url, { signal, cache: 'no-cache' });
  } catch (error) {
    if (signal.aborted) throw named('AbortError', 'loading the model was aborted');
    throw named('NetworkError', `could not download ${model.url}: ${error?.message ?? error}`);
  }
  if (!response.ok) {
    response.body?.cancel().catch(() => {});
    throw named('NetworkError', `downloading ${model.url} failed: HTTP ${response.status} ${response.statusText}`.trim());
  }
  const announced = contentLength(response);
  if (model.size !== null && announced !== null && announced !== model.size) {
    response.body?.cancel().catch(() => {});
    throw named('IntegrityError',
      `the server sends ${announced} bytes for ${model.url}, expected ${model.size}: is this the right model file?`);
  }
  const bytes = await readBody(response,
    { size: model.size, phase: 'download', verb: 'Downloading the model', fromCache: false, url: model.url },
    report, signal);
  await verify(bytes, model, warnings);
  return bytes;
}

// ---------------------------------------------------------------------------------------------
// The wasm module

// Started before the download so that fetching and compiling the engine overlaps with it.
function startWasm() {
  wasmModule ??= (async () => {
    let module;
    try {
      module = await import(WASM_URL.href);
    } catch (error) {
      throw named('OperationError',
        `cannot load the selfroute wasm module from ${WASM_URL.href} (is web/pkg built? run \`cargo xtask web\`): ${error?.message ?? error}`);
    }
    await module.default();
    return module;
  })();
  const pending = wasmModule;
  pending.catch(() => { if (wasmModule === pending) wasmModule = null; });
  return pending;
}

async function compile(bytes, model, options, report, fromCache) {
  report({ phase: 'compile', loaded: bytes.byteLength, total: bytes.byteLength, fromCache, text: 'Preparing the model' }, true);
  const { WasmAssistant } = await startWasm();
  return WasmAssistant.load(bytes, { ...options, sourceName: model.sourceName });
}

function readyText(loaded) {
  return loaded.backend === 'webgpu'
    ? `Ready: WebGPU on ${loaded.adapter ?? 'an unnamed adapter'}`
    : `Ready: CPU (wasm): ${loaded.backendReason}`;
}

// ---------------------------------------------------------------------------------------------
// Requests

async function load({ id, model, options }) {
  if (assistant || loading) throw named('InvalidStateError', 'this worker already holds a model');
  loading = true;
  // The page ends a load by terminating this worker, which also cancels the download; the signal
  // keeps one abort path through the readers should that ever change.
  const controller = new AbortController();
  try {
    return await loadModel(id, model, options, controller);
  } finally {
    loading = false;
  }
}

// Settles only if the engine cannot start, and then stops the download: a module that fails to
// load should not cost the user the model's megabytes first.
function engineFailure(controller) {
  const failure = startWasm().then(() => new Promise(() => {}));
  failure.catch(() => controller.abort());
  return failure;
}

async function downloadUnlessEngineFails(model, report, controller, warnings) {
  const bytes = download(model, report, controller.signal, warnings);
  bytes.catch(() => {});
  return Promise.race([bytes, engineFailure(controller)]);
}

async function loadModel(id, model, options, controller) {
  const { signal } = controller;
  const report = progressReporter(id);
  const warnings = new Set();
  startWasm().catch(() => {});
  const cache = await openModelCache(warnings);
  let fromCache = false;
  let loaded = null;

  const cached = await readCached(cache, model, report, signal, warnings);
  if (cached) {
    try {
      loaded = await compile(cached, model, options, report, true);
      fromCache = true;
    } catch (error) {
      if (error?.name !== 'InvalidModelError') throw error;
      await evict(cache, model.key);
      warnings.add(`the cached model did not load (${error.message}) and was downloaded again`);
    }
  }
  if (!loaded) {
    const bytes = await downloadUnlessEngineFails(model, report, controller, warnings);
    loaded = await compile(bytes, model, options, report, false);
    await storeModel(cache, model, bytes, warnings);
  }
  assistant = loaded;

  const info = {
    backend: loaded.backend,
    adapter: loaded.adapter ?? null,
    backendReason: loaded.backendReason ?? '',
    fromCache,
  };
  const warning = warnings.size ? [...warnings].join('; ') : null;
  for (const text of warnings) console.warn(`selfroute: ${text}`);
  const size = model.size ?? 0;
  report({
    phase: 'ready', loaded: size, total: size || null, fromCache, done: true,
    text: warning ? `${readyText(info)} (warning: ${warning})` : readyText(info),
    ...info,
    ...(warning ? { warning } : {}),
  }, true);
  return { ...info, ...(warning ? { warning } : {}) };
}

function requireIdle(what) {
  if (crashed) throw named('InvalidStateError', `the engine crashed (${crashed.message}); create a new one`);
  if (!assistant) throw named('InvalidStateError', `${what} needs a loaded model`);
  if (active) throw named('InvalidStateError', `${what} while another request is running`);
  return assistant;
}

async function safeStats(engine) {
  try {
    return plain(await engine.stats());
  } catch {
    return lastStats;
  }
}

function requestApproval(chatId, reason) {
  const approvalId = nextApprovalId++;
  return new Promise((resolve) => {
    approvals.set(approvalId, { chatId, resolve });
    post({ type: 'offload-approval', id: chatId, approvalId, reason });
  });
}

function answerApproval({ approvalId, approve }) {
  const pending = approvals.get(approvalId);
  if (!pending) return;
  approvals.delete(approvalId);
  pending.resolve(approve === true);
}

// A stopped or finished turn must not leave the engine waiting on the page's answer.
function declineApprovals(chatId) {
  for (const [approvalId, pending] of approvals) {
    if (pending.chatId !== chatId) continue;
    approvals.delete(approvalId);
    pending.resolve(false);
  }
}

async function chat({ id, messages, askOffload }) {
  const engine = requireIdle('chat()');
  active = { id };
  try {
    const onEvent = (event) => post({ type: 'event', id, event: plain(event) });
    const approve = askOffload ? (reason) => requestApproval(id, reason) : undefined;
    const outcome = plain(await engine.chat(messages, onEvent, approve));
    lastStats = await safeStats(engine);
    return { outcome, stats: lastStats };
  } finally {
    active = null;
    declineApprovals(id);
  }
}

async function generate({ id, prompt, options }) {
  const engine = requireIdle('generate()');
  active = { id };
  try {
    const result = plain(await engine.generate(prompt, options ?? {}));
    lastStats = await safeStats(engine);
    return { tokens: Array.from(result?.tokens ?? []), text: result?.text ?? '', stats: lastStats };
  } finally {
    active = null;
  }
}

function stop({ id }) {
  if (!assistant || active?.id !== id) return;
  try {
    assistant.stop();
  } catch (error) {
    console.warn('selfroute: stop() failed', error);
  }
  declineApprovals(id);
}

// During a turn the engine is borrowed by it; the figures of the last finished turn are the answer.
async function stats() {
  if (crashed) throw named('InvalidStateError', `the engine crashed (${crashed.message}); create a new one`);
  if (!assistant) throw named('InvalidStateError', 'stats() needs a loaded model');
  if (active) return lastStats;
  lastStats = await safeStats(assistant);
  return lastStats;
}

async function reset() {
  const engine = requireIdle('resetChat()');
  await engine.resetChat();
  return true;
}

async function unload() {
  if (active && assistant) {
    stop({ id: active.id });
    return true;
  }
  const engine = assistant;
  assistant = null;
  try {
    engine?.free();
  } catch {
    // The worker is terminated next, which releases everything anyway.
  }
  return true;
}
