// selfroute: a small language model in the browser that decides, while answering, whether to hand
// the conversation to a cloud endpoint. This module is the page-side API; the engine itself runs in
// a dedicated module worker (selfroute-worker.js), the only place that touches the wasm module.

const WORKER_URL = new URL('./selfroute-worker.js', import.meta.url);

export const CACHE_NAME = 'selfroute-models-v1';
const SHA_PARAM = 'selfroute-sha256';
const PARTIAL_PARAM = 'selfroute-partial';

const DEFAULT_ENDPOINT = '/v1/chat/completions';
const DEFAULTS = Object.freeze({
  backend: 'auto',
  budget: { share: 0.3, window: 20 },
  offloadBias: 0,
  maxTokens: 256,
  temperature: 0,
  topP: 1,
  topK: 0,
  seed: 42,
  cloudTimeoutMs: 30000,
  cloudRetries: 2,
});
const BACKENDS = new Set(['auto', 'webgpu', 'cpu']);

// If a stopped turn has not been confirmed by the worker by then (a cloud request waiting for its
// first byte, a stalled GPU), the caller's iterator ends anyway; the engine waits for the worker
// before starting the next turn, so nothing overlaps.
const STOP_GRACE_MS = 250;
const UNLOAD_GRACE_MS = 1000;

// ---------------------------------------------------------------------------------------------
// Errors: the worker sends {name, message}; the page always gets a real exception object.

const DOM_EXCEPTION_NAMES = new Set([
  'AbortError', 'NetworkError', 'QuotaExceededError', 'InvalidStateError', 'NotSupportedError',
  'DataError', 'OperationError', 'TimeoutError', 'NotAllowedError',
]);
const SELFROUTE_ERROR_NAMES = new Set([
  'IntegrityError', 'DeviceLostError', 'InvalidModelError', 'OutOfMemoryError',
]);

export function toError(info) {
  const name = typeof info?.name === 'string' ? info.name : 'OperationError';
  const message = typeof info?.message === 'string' && info.message
    ? info.message
    : 'the selfroute engine failed without saying why';
  if (SELFROUTE_ERROR_NAMES.has(name)) {
    const error = new Error(message);
    error.name = name;
    return error;
  }
  return new DOMException(message, DOM_EXCEPTION_NAMES.has(name) ? name : 'OperationError');
}

function domError(name, message) {
  return new DOMException(message, name);
}

function abortError(what) {
  return domError('AbortError', `${what} was aborted`);
}

// ---------------------------------------------------------------------------------------------
// Options

function pageBase() {
  return globalThis.document?.baseURI ?? globalThis.location?.href;
}

// The worker resolves relative URLs against its own script (web/), not the page, so every URL
// that crosses to it is made absolute here.
function absoluteUrl(url, what) {
  try {
    return new URL(url, pageBase()).href;
  } catch {
    throw domError('DataError', `${what} is not a valid URL: ${url}`);
  }
}

// An attribute such as model-sha256="__MODEL_SHA256__" is a build placeholder nobody filled in
// (the page opened straight from the repository): it counts as absent, not as a wrong value.
function isPlaceholder(value) {
  return typeof value === 'string' && /^__[A-Z0-9_]+__$/.test(value.trim());
}

function isAbsent(value) {
  return value === undefined || value === null || value === '' || isPlaceholder(value);
}

function normalizeSha256(value) {
  if (isAbsent(value)) return null;
  const sha = String(value).trim().toLowerCase();
  if (!/^[0-9a-f]{64}$/.test(sha)) {
    throw domError('DataError', `model.sha256 must be 64 hexadecimal digits, got "${value}"`);
  }
  return sha;
}

function normalizeSize(value) {
  if (isAbsent(value)) return null;
  const size = Number(value);
  if (!Number.isSafeInteger(size) || size <= 0) {
    throw domError('DataError', `model.size must be a positive whole number of bytes, got "${value}"`);
  }
  return size;
}

export function cacheKey(url, sha256) {
  const key = new URL(url);
  key.hash = '';
  if (sha256) key.searchParams.set(SHA_PARAM, sha256);
  return key.href;
}

// The model URL a cache key belongs to, whatever version or staging suffix it carries.
function keyBase(key) {
  const url = new URL(key);
  url.searchParams.delete(SHA_PARAM);
  url.searchParams.delete(PARTIAL_PARAM);
  return url.href;
}

function normalizeModel(model) {
  if (!model || typeof model !== 'object' || typeof model.url !== 'string' || !model.url.trim()) {
    throw domError('DataError', 'model.url is required (the URL of a GGUF file)');
  }
  const url = absoluteUrl(model.url.trim(), 'model.url');
  const sha256 = normalizeSha256(model.sha256);
  return {
    url,
    sourceName: model.url.trim(),
    sha256,
    size: normalizeSize(model.size),
    key: cacheKey(url, sha256),
  };
}

function finiteNumber(value, fallback, what, check = () => true) {
  if (value === undefined || value === null || value === '') return fallback;
  const number = Number(value);
  if (!Number.isFinite(number) || !check(number)) {
    throw domError('DataError', `${what} is out of range: ${value}`);
  }
  return number;
}

function normalizeCloud(cloud) {
  if (cloud === null) return null;
  const endpoint = cloud?.endpoint ?? DEFAULT_ENDPOINT;
  return {
    endpoint: absoluteUrl(endpoint, 'cloud.endpoint'),
    model: String(cloud?.model ?? 'default'),
    timeoutMs: finiteNumber(cloud?.timeoutMs, DEFAULTS.cloudTimeoutMs, 'cloud.timeoutMs', (n) => n > 0),
    retries: finiteNumber(cloud?.retries, DEFAULTS.cloudRetries, 'cloud.retries',
      (n) => Number.isInteger(n) && n >= 0),
  };
}

function normalizeEngineOptions(options) {
  const backend = options.backend ?? DEFAULTS.backend;
  if (!BACKENDS.has(backend)) {
    throw domError('DataError', `backend must be "auto", "webgpu" or "cpu", got "${backend}"`);
  }
  const budget = options.budget ?? {};
  return {
    backend,
    cloud: normalizeCloud(options.cloud),
    budget: {
      share: finiteNumber(budget.share, DEFAULTS.budget.share, 'budget.share', (n) => n >= 0 && n <= 1),
      window: finiteNumber(budget.window, DEFAULTS.budget.window, 'budget.window',
        (n) => Number.isInteger(n) && n > 0),
    },
    offloadBias: finiteNumber(options.offloadBias, DEFAULTS.offloadBias, 'offloadBias'),
    maxTokens: finiteNumber(options.maxTokens, DEFAULTS.maxTokens, 'maxTokens',
      (n) => Number.isInteger(n) && n > 0),
    temperature: finiteNumber(options.temperature, DEFAULTS.temperature, 'temperature', (n) => n >= 0),
    topP: finiteNumber(options.topP, DEFAULTS.topP, 'topP', (n) => n > 0 && n <= 1),
    topK: finiteNumber(options.topK, DEFAULTS.topK, 'topK', (n) => Number.isInteger(n) && n >= 0),
    seed: finiteNumber(options.seed, DEFAULTS.seed, 'seed', (n) => Number.isInteger(n) && n >= 0),
  };
}

function validateMessages(messages) {
  const roles = new Set(['system', 'user', 'assistant']);
  const ok = Array.isArray(messages) && messages.length > 0 && messages.every(
    (m) => m && roles.has(m.role) && typeof m.content === 'string');
  if (!ok) {
    throw domError('DataError',
      'messages must be a non-empty array of {role: "system"|"user"|"assistant", content: string}');
  }
  return messages.map(({ role, content }) => ({ role, content }));
}

// ---------------------------------------------------------------------------------------------
// Feature detection and the model cache

function hasWasm() {
  return typeof WebAssembly === 'object' && typeof WebAssembly.instantiate === 'function'
    && typeof Worker === 'function';
}

async function adapterName(adapter) {
  // adapter.info replaced requestAdapterInfo() in 2024; older Chromium has only the method.
  const info = adapter.info ?? (await adapter.requestAdapterInfo?.().catch(() => null)) ?? {};
  const name = info.description || [info.vendor, info.architecture].filter(Boolean).join(' ')
    || info.device;
  return name || 'WebGPU adapter';
}

async function capabilities() {
  const base = {
    webgpu: false,
    adapter: null,
    shaderF16: false,
    threads: globalThis.navigator?.hardwareConcurrency ?? 1,
    crossOriginIsolated: globalThis.crossOriginIsolated === true,
  };
  const gpu = globalThis.navigator?.gpu;
  if (!gpu) return base;
  let adapter = null;
  try {
    adapter = await gpu.requestAdapter();
  } catch {
    adapter = null;
  }
  if (!adapter) return base;
  return {
    ...base,
    webgpu: true,
    adapter: await adapterName(adapter),
    shaderF16: adapter.features.has('shader-f16'),
  };
}

// Private windows and insecure origins have no Cache API (or throw on open): that reads as
// "nothing cached", never as an error.
async function openCache() {
  if (typeof caches === 'undefined') return null;
  try {
    return await caches.open(CACHE_NAME);
  } catch {
    return null;
  }
}

async function entrySize(response) {
  const header = Number(response.headers.get('x-selfroute-size') ?? response.headers.get('content-length'));
  if (Number.isSafeInteger(header) && header > 0) return header;
  return (await response.blob()).size;
}

async function hasValidEntry(modelOptions) {
  const model = normalizeModel(modelOptions);
  const cache = await openCache();
  if (!cache) return false;
  const response = await cache.match(model.key);
  if (!response) return false;
  return model.size === null || (await entrySize(response)) === model.size;
}

async function availability(options = {}) {
  if (!hasWasm()) return 'unavailable';
  try {
    return (await hasValidEntry(options.model)) ? 'available' : 'downloadable';
  } catch (error) {
    if (error?.name === 'DataError') throw error;
    return 'downloadable';
  }
}

async function deleteModel(modelOptions) {
  const model = normalizeModel(modelOptions);
  const cache = await openCache();
  if (!cache) return false;
  const base = keyBase(model.key);
  const keys = (await cache.keys()).filter((request) => keyBase(request.url) === base);
  const deleted = await Promise.all(keys.map((request) => cache.delete(request)));
  return deleted.some(Boolean);
}

async function clearCache() {
  if (typeof caches === 'undefined') return false;
  try {
    return await caches.delete(CACHE_NAME);
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------------------------------------
// An async iterable fed by worker messages. The engine starts a turn as soon as chat() is called,
// so events queue here until the caller iterates.

class EventChannel {
  #queue = [];
  #waiters = [];
  #closed = false;
  #error = null;
  #onReturn;

  constructor(onReturn = null) {
    this.#onReturn = onReturn;
  }

  get closed() {
    return this.#closed;
  }

  push(value) {
    if (this.#closed) return;
    const waiter = this.#waiters.shift();
    if (waiter) waiter.resolve({ value, done: false });
    else this.#queue.push(value);
  }

  end() {
    if (this.#closed) return;
    this.#closed = true;
    for (const waiter of this.#waiters.splice(0)) waiter.resolve({ value: undefined, done: true });
  }

  fail(error) {
    if (this.#closed) return;
    this.#error = error;
    this.#closed = true;
    for (const waiter of this.#waiters.splice(0)) waiter.reject(error);
  }

  next() {
    if (this.#queue.length) return Promise.resolve({ value: this.#queue.shift(), done: false });
    if (this.#error) {
      const error = this.#error;
      this.#error = null;
      return Promise.reject(error);
    }
    if (this.#closed) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve, reject) => this.#waiters.push({ resolve, reject }));
  }

  // `break` out of a for-await loop lands here: the turn is stopped like an abort.
  return() {
    const wasOpen = !this.#closed;
    this.#queue.length = 0;
    this.#error = null;
    this.end();
    if (wasOpen) this.#onReturn?.();
    return Promise.resolve({ value: undefined, done: true });
  }

  [Symbol.asyncIterator]() {
    return this;
  }
}

function failedIterable(error) {
  const channel = new EventChannel();
  channel.fail(error);
  return channel;
}

// ---------------------------------------------------------------------------------------------
// The worker link: request ids, one pending entry per request, streamed messages routed by id.

class WorkerLink {
  #worker;
  #pending = new Map();
  #nextId = 1;
  #failure = null;

  constructor() {
    try {
      this.#worker = new Worker(WORKER_URL, { type: 'module', name: 'selfroute' });
    } catch (error) {
      throw domError('NotSupportedError', `cannot start the selfroute worker: ${error?.message ?? error}`);
    }
    this.#worker.addEventListener('message', (event) => this.#onMessage(event.data));
    this.#worker.addEventListener('error', (event) => {
      event.preventDefault?.();
      const detail = event.message ? `: ${event.message}` : ' (its script failed to load or threw)';
      this.terminate(domError('OperationError', `the selfroute worker stopped${detail}`));
    });
    this.#worker.addEventListener('messageerror', () => {
      this.terminate(domError('OperationError', 'a message from the selfroute worker could not be read'));
    });
  }

  get failure() {
    return this.#failure;
  }

  newId() {
    return this.#nextId++;
  }

  post(message) {
    if (this.#failure) return;
    this.#worker.postMessage(message);
  }

  // Resolves with the worker's `result` for this id; `onMessage` receives everything else sent
  // under the same id (progress, events, approval requests) as it arrives.
  request(type, fields = {}, onMessage = null, id = this.newId()) {
    if (this.#failure) return Promise.reject(this.#failure);
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject, onMessage });
      this.#worker.postMessage({ type, id, ...fields });
    });
  }

  terminate(reason) {
    if (this.#failure) return;
    this.#failure = reason;
    this.#worker.terminate();
    for (const entry of this.#pending.values()) entry.reject(reason);
    this.#pending.clear();
  }

  #onMessage(message) {
    const entry = this.#pending.get(message?.id);
    if (!entry) return;
    if (message.type === 'result') {
      this.#pending.delete(message.id);
      entry.resolve(message.value);
    } else if (message.type === 'error') {
      this.#pending.delete(message.id);
      entry.reject(toError(message.error));
    } else {
      try {
        entry.onMessage?.(message);
      } catch (error) {
        console.warn('selfroute: a listener threw while handling a worker message', error);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Progress

function progressEvent(progress) {
  const event = new CustomEvent('downloadprogress', { detail: { ...progress } });
  for (const [name, value] of Object.entries(progress)) {
    if (!(name in event)) Object.defineProperty(event, name, { value, enumerable: true });
  }
  return event;
}

// ---------------------------------------------------------------------------------------------
// OpenAI-shaped output

function completionId() {
  const random = globalThis.crypto?.randomUUID?.() ?? `${Date.now()}-${Math.random()}`;
  return `chatcmpl-${random.replaceAll('-', '').slice(0, 24)}`;
}

function routeSource(outcome) {
  return outcome?.route === 'cloud' ? 'cloud' : 'local';
}

function finishReason(outcome, hitLimit, maxTokens) {
  if (hitLimit) return 'length';
  if (outcome && outcome.route !== 'cloud' && !outcome.cancelled && outcome.local_tokens >= maxTokens) {
    return 'length';
  }
  return 'stop';
}

function usageOf(outcome, stats) {
  const prompt = Number(stats?.promptTokens) || 0;
  const completion = outcome?.route === 'cloud'
    ? Number(outcome.cloud_tokens) || 0
    : Number(outcome?.local_tokens) || 0;
  return { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion };
}

function cancelledOutcome(text, route, offloadReason, startedAt) {
  return {
    answer: text,
    route,
    local_reason: null,
    offload_reason: offloadReason,
    cloud_error: null,
    local_tokens: 0,
    reused_prompt_tokens: 0,
    cloud_tokens: 0,
    time_to_first_token_ms: null,
    latency_ms: performance.now() - startedAt,
    cloud_bytes_sent: 0,
    cloud_attempts: 0,
    cancelled: true,
  };
}

// Follows a turn's events to know what the caller has been shown, so a turn that ends early still
// gets a truthful `done`.
class TurnTracker {
  text = '';
  route = 'local';
  offload = null;
  sawDone = false;
  #resetPending = false;

  apply(event) {
    switch (event?.type) {
      case 'local':
      case 'cloud':
        if (this.#resetPending) this.text = '';
        this.#resetPending = false;
        this.text += event.text ?? '';
        if (event.type === 'cloud') this.route = 'cloud';
        break;
      case 'offload':
        this.offload = event.reason ?? null;
        this.route = 'cloud';
        this.#resetPending = true;
        break;
      case 'cloud-failed':
        this.route = 'fallback';
        this.#resetPending = true;
        break;
      case 'offload-declined':
        this.route = 'local';
        this.#resetPending = true;
        break;
      case 'done':
        this.sawDone = true;
        break;
      default:
        break;
    }
  }
}

function linkAbort(controller, signal) {
  if (!signal) return () => {};
  if (signal.aborted) {
    controller.abort(signal.reason);
    return () => {};
  }
  const forward = () => controller.abort(signal.reason);
  signal.addEventListener('abort', forward, { once: true });
  return () => signal.removeEventListener('abort', forward);
}

// ---------------------------------------------------------------------------------------------
// The engine

class SelfRouteEngine {
  #link;
  #info;
  #options;
  #model;
  #busy = null;
  #closed = null;
  #lastStats = null;

  constructor(link, info, model, options) {
    this.#link = link;
    this.#info = Object.freeze({ ...info });
    this.#model = model;
    this.#options = options;
    const chat = (messages, chatOptions) => this.#chatIterable(messages, chatOptions);
    chat.completions = Object.freeze({
      create: (request, requestOptions) => this.#createCompletion(request, requestOptions),
    });
    Object.defineProperty(this, 'chat', { value: Object.freeze(chat), enumerable: true });
  }

  get backend() { return this.#info.backend; }
  get adapter() { return this.#info.adapter ?? null; }
  get backendReason() { return this.#info.backendReason ?? ''; }
  get fromCache() { return this.#info.fromCache === true; }
  get warning() { return this.#info.warning ?? null; }
  get model() { return this.#model.sourceName; }

  async generate(prompt, { chat = true, maxTokens = 16, signal } = {}) {
    this.#assertOpen();
    if (typeof prompt !== 'string') throw domError('DataError', 'prompt must be a string');
    const { turn, previous } = this.#acquire();
    try {
      if (previous) await previous;
      if (signal?.aborted) throw abortError('generate()');
      const id = this.#link.newId();
      const stop = () => this.#link.post({ type: 'stop', id });
      signal?.addEventListener('abort', stop, { once: true });
      try {
        const result = await this.#link.request('generate', { prompt, options: { chat, maxTokens } }, null, id);
        this.#lastStats = result?.stats ?? this.#lastStats;
        return { tokens: result?.tokens ?? [], text: result?.text ?? '' };
      } finally {
        signal?.removeEventListener('abort', stop);
      }
    } finally {
      this.#release(turn);
    }
  }

  async stats() {
    this.#assertOpen();
    const stats = await this.#link.request('stats');
    this.#lastStats = stats ?? this.#lastStats;
    return stats;
  }

  async resetChat() {
    this.#assertOpen();
    // A stopped turn the worker has not yet confirmed is waited for, not an error.
    if (this.#busy?.stopping) await this.#busy.settled;
    if (this.#busy) throw domError('InvalidStateError', 'resetChat() while a chat is running; stop it first');
    await this.#link.request('reset');
  }

  async unload() {
    if (this.#closed) return;
    this.#closed = domError('InvalidStateError', 'the engine was unloaded; create a new one');
    const freed = this.#link.request('unload').catch(() => {});
    await Promise.race([freed, new Promise((resolve) => setTimeout(resolve, UNLOAD_GRACE_MS))]);
    this.#link.terminate(this.#closed);
  }

  #assertOpen() {
    const failure = this.#closed ?? this.#link.failure;
    if (failure) {
      throw failure.name === 'InvalidStateError'
        ? failure
        : domError('InvalidStateError', `the engine is no longer usable (${failure.message}); create a new one`);
    }
  }

  // One turn at a time. A turn that was stopped but not yet confirmed by the worker does not make
  // the next call fail: the next turn simply starts once the worker is done with it.
  #acquire() {
    if (this.#busy && !this.#busy.stopping) {
      throw domError('InvalidStateError',
        'another chat is still running on this engine; abort its signal or wait for its done event');
    }
    const previous = this.#busy?.settled ?? null;
    let release;
    const settled = new Promise((resolve) => { release = resolve; });
    const turn = { stopping: false, settled, release };
    this.#busy = turn;
    return { turn, previous };
  }

  #release(turn) {
    if (this.#busy === turn) this.#busy = null;
    turn.release();
  }

  #chatIterable(messages, options) {
    try {
      return this.#openChat(messages, options ?? {});
    } catch (error) {
      return failedIterable(error);
    }
  }

  // Synchronous up to the lock, so a second concurrent call fails at once.
  #openChat(messages, { signal, onOffload } = {}) {
    this.#assertOpen();
    const cleanMessages = validateMessages(messages);
    const { turn, previous } = this.#acquire();
    const controller = { stop: null };
    const channel = new EventChannel(() => controller.stop?.());
    this.#runChat(cleanMessages, { signal, onOffload }, turn, previous, channel, controller)
      .catch((error) => {
        this.#release(turn);
        channel.fail(error);
      })
      .finally(() => this.#release(turn));
    return channel;
  }

  async #runChat(messages, { signal, onOffload }, turn, previous, channel, controller) {
    const startedAt = performance.now();
    const tracker = new TurnTracker();
    const endCancelled = () => {
      if (channel.closed) return;
      if (!tracker.sawDone) {
        channel.push({ type: 'done', outcome: cancelledOutcome(tracker.text, tracker.route, tracker.offload, startedAt) });
      }
      channel.end();
    };
    if (previous) await previous;
    if (signal?.aborted || channel.closed) {
      this.#release(turn);
      endCancelled();
      return;
    }

    const id = this.#link.newId();
    let graceTimer = null;
    const stop = () => {
      if (turn.stopping) return;
      turn.stopping = true;
      this.#link.post({ type: 'stop', id });
      graceTimer = setTimeout(endCancelled, STOP_GRACE_MS);
    };
    controller.stop = stop;
    signal?.addEventListener('abort', stop, { once: true });

    const onMessage = (message) => {
      if (message.type === 'event') {
        tracker.apply(message.event);
        channel.push(message.event);
      } else if (message.type === 'offload-approval') {
        this.#answerApproval(message, onOffload, signal, turn);
      }
    };
    try {
      const result = await this.#link.request(
        'chat', { messages, askOffload: typeof onOffload === 'function' }, onMessage, id);
      this.#lastStats = result?.stats ?? this.#lastStats;
      if (!tracker.sawDone && result?.outcome) channel.push({ type: 'done', outcome: result.outcome });
      // Released before the caller sees the end, so a chat() right after the loop is not refused.
      this.#release(turn);
      channel.end();
    } finally {
      clearTimeout(graceTimer);
      signal?.removeEventListener('abort', stop);
    }
  }

  async #answerApproval(message, onOffload, signal, turn) {
    let approve = false;
    if (!signal?.aborted && !turn.stopping) {
      try {
        approve = (await onOffload(message.reason)) !== false;
      } catch (error) {
        // Keeping the conversation on the device is the safe reading of a failed veto.
        console.warn('selfroute: onOffload threw; the conversation stays on the device', error);
        approve = false;
      }
    }
    if (signal?.aborted || turn.stopping) approve = false;
    this.#link.post({ type: 'offload-approval', id: message.id, approvalId: message.approvalId, approve });
  }

  async #createCompletion(request = {}, requestOptions = {}) {
    const signal = requestOptions?.signal ?? request.signal;
    const onOffload = requestOptions?.onOffload ?? request.onOffload;
    const requested = request.max_completion_tokens ?? request.max_tokens;
    const limit = requested === undefined || requested === null
      ? null
      : finiteNumber(requested, null, 'max_tokens', (n) => Number.isInteger(n) && n > 0);

    const controller = new AbortController();
    const unlink = linkAbort(controller, signal);
    let events;
    try {
      events = this.#openChat(request.messages, { signal: controller.signal, onOffload });
    } catch (error) {
      unlink();
      throw error;
    }
    const meta = {
      id: completionId(),
      created: Math.floor(Date.now() / 1000),
      model: this.#model.sourceName,
      limit,
      // The non-streaming answer takes its usage from the final usage chunk.
      includeUsage: !request.stream || request.stream_options?.include_usage === true,
    };
    const chunks = this.#chunks(events, meta, controller);
    const guarded = (async function* guard() {
      try {
        yield* chunks;
      } finally {
        unlink();
      }
    })();
    return request.stream ? guarded : collectCompletion(guarded, meta);
  }

  // Turns route events into chat.completion.chunk objects. A chunk whose text voids what was
  // streamed before (the local draft once the model offloads, the cloud text once the cloud fails)
  // carries selfroute.replace = true.
  async* #chunks(events, meta, controller) {
    const base = (choices, selfroute, extra = {}) => ({
      id: meta.id,
      object: 'chat.completion.chunk',
      created: meta.created,
      model: meta.model,
      choices,
      ...(meta.includeUsage ? { usage: null } : {}),
      selfroute,
      ...extra,
    });
    const state = { source: 'local', offload: null, cloudFailed: false, replace: false, shown: false, pieces: 0 };
    const tag = () => ({
      source: state.source,
      offload: state.offload,
      ...(state.cloudFailed ? { cloud_failed: true } : {}),
    });
    const delta = (content) => {
      const replace = state.replace && state.shown;
      state.replace = false;
      state.shown = state.shown || content.length > 0;
      return base([{ index: 0, delta: { content }, finish_reason: null, logprobs: null }],
        { ...tag(), ...(replace ? { replace: true } : {}) });
    };

    let hitLimit = false;
    let outcome = null;
    try {
      yield base([{ index: 0, delta: { role: 'assistant', content: '' }, finish_reason: null, logprobs: null }], tag());
      for await (const event of events) {
        if (event.type === 'local') {
          if (state.source !== 'local') state.replace = true;
          state.source = 'local';
          yield delta(event.text ?? '');
          state.pieces += 1;
          if (meta.limit !== null && state.pieces >= meta.limit && !hitLimit) {
            hitLimit = true;
            controller.abort();
          }
        } else if (event.type === 'offload') {
          state.source = 'cloud';
          state.offload = event.reason ?? null;
          state.replace = true;
          yield base([{ index: 0, delta: {}, finish_reason: null, logprobs: null }], tag());
        } else if (event.type === 'cloud') {
          state.source = 'cloud';
          yield delta(event.text ?? '');
        } else if (event.type === 'offload-declined') {
          state.source = 'local';
          state.replace = true;
        } else if (event.type === 'cloud-failed') {
          state.source = 'local';
          state.cloudFailed = true;
          state.replace = true;
          yield base([{ index: 0, delta: {}, finish_reason: null, logprobs: null }],
            { ...tag(), error: event.message ?? '' });
        } else if (event.type === 'done') {
          outcome = event.outcome ?? null;
        }
      }
    } finally {
      // Leaving the loop early (a consumer's break) stops the turn instead of letting it run on.
      if (!outcome) controller.abort();
    }
    const finalSource = { source: routeSource(outcome), offload: outcome?.offload_reason ?? state.offload };
    if (outcome?.route === 'fallback') finalSource.cloud_failed = true;
    const cancelled = outcome?.cancelled === true && !hitLimit;
    meta.outcome = outcome;
    meta.hitLimit = hitLimit;
    meta.finish = finishReason(outcome, hitLimit, this.#options.maxTokens);
    yield base(
      [{ index: 0, delta: {}, finish_reason: meta.finish, logprobs: null }],
      { ...finalSource, ...(cancelled ? { cancelled: true } : {}), outcome },
    );
    if (meta.includeUsage) {
      meta.usage = usageOf(outcome, this.#lastStats);
      yield { ...base([], finalSource), usage: meta.usage };
    }
  }
}

async function collectCompletion(chunks, meta) {
  for await (const _chunk of chunks) {
    // Drained only: the chunk stream leaves its outcome, finish reason and usage in meta.
  }
  const outcome = meta.outcome;
  const selfroute = { source: routeSource(outcome), offload: outcome?.offload_reason ?? null, outcome };
  if (outcome?.route === 'fallback') selfroute.cloud_failed = true;
  if (outcome?.cancelled && !meta.hitLimit) selfroute.cancelled = true;
  return {
    id: meta.id,
    object: 'chat.completion',
    created: meta.created,
    model: meta.model,
    choices: [{
      index: 0,
      message: { role: 'assistant', content: outcome?.answer ?? '' },
      finish_reason: meta.finish ?? 'stop',
      logprobs: null,
    }],
    usage: meta.usage ?? usageOf(outcome, null),
    selfroute,
  };
}

// ---------------------------------------------------------------------------------------------
// create()

async function create(options = {}) {
  const model = normalizeModel(options.model);
  const engineOptions = normalizeEngineOptions(options);
  if (!hasWasm()) {
    throw domError('NotSupportedError', 'this browser has no WebAssembly or no Web Workers');
  }
  const { signal } = options;
  if (signal?.aborted) throw abortError('loading the model');

  const monitor = new EventTarget();
  if (typeof options.monitor === 'function') options.monitor(monitor);

  const link = new WorkerLink();
  const onAbort = () => link.terminate(abortError('loading the model'));
  signal?.addEventListener('abort', onAbort, { once: true });
  const onMessage = (message) => {
    if (message.type === 'progress') monitor.dispatchEvent(progressEvent(message.progress));
  };
  try {
    const info = await link.request('load', { model, options: engineOptions }, onMessage);
    return new SelfRouteEngine(link, info, model, engineOptions);
  } catch (error) {
    link.terminate(error);
    throw error;
  } finally {
    signal?.removeEventListener('abort', onAbort);
  }
}

export const SelfRoute = Object.freeze({
  capabilities,
  availability,
  create,
  cache: Object.freeze({
    has: async (model) => {
      try {
        return await hasValidEntry(model);
      } catch (error) {
        if (error?.name === 'DataError') throw error;
        return false;
      }
    },
    delete: deleteModel,
    clear: clearCache,
  }),
});

export default SelfRoute;
