// <selfroute-chat>: a chat box whose answers come from a small model on the device, which hands the
// conversation to a cloud endpoint when it decides it should. One script tag is enough:
//   <script type="module" src="web/selfroute-chat.js"></script>
//   <selfroute-chat model-url="models/selfroute-demo.gguf" model-size="98000000"></selfroute-chat>

import { SelfRoute } from './selfroute.js';

const BADGE_TEXT = Object.freeze({
  device: 'on device',
  cloud: 'cloud',
  fallback: 'cloud unavailable: answered on device',
});
const SOURCE_OF_ROUTE = Object.freeze({ local: 'device', cloud: 'cloud', fallback: 'fallback' });
const LOCAL_REASON_NOTE = Object.freeze({
  budget_exhausted: 'cloud budget used up',
  offload_declined: 'kept on device',
});

// --selfroute-border is a colour (the component draws its own 1px lines with it).
const STYLE = `
:host {
  --_accent: var(--selfroute-accent, #2563eb);
  --_bg: var(--selfroute-bg, #ffffff);
  --_fg: var(--selfroute-fg, #1f2937);
  --_font: var(--selfroute-font, system-ui, -apple-system, "Segoe UI", Roboto, sans-serif);
  --_radius: var(--selfroute-radius, 12px);
  --_border: var(--selfroute-border, #d1d5db);
  --_user-bg: var(--selfroute-user-bg, #dbeafe);
  --_assistant-bg: var(--selfroute-assistant-bg, #f3f4f6);
  display: block;
  height: 32rem;
  color: var(--_fg);
  font-family: var(--_font);
  font-size: 1rem;
  line-height: 1.5;
}
:host([hidden]) { display: none; }
* { box-sizing: border-box; }
.container {
  display: flex;
  flex-direction: column;
  gap: 0.5rem;
  height: 100%;
  min-height: 16rem;
  padding: 0.75rem;
  background: var(--_bg);
  border: 1px solid var(--_border);
  border-radius: var(--_radius);
  container: selfroute / inline-size;
}
.bar { display: flex; align-items: center; gap: 0.5rem; min-height: 2rem; }
.status {
  flex: 1;
  min-width: 0;
  font-size: 0.85em;
  opacity: 0.8;
  overflow-wrap: anywhere;
}
.status[data-state="error"] { color: #b91c1c; opacity: 1; }
.status[data-state="warning"] { color: #92400e; opacity: 1; }
progress {
  width: 100%;
  height: 0.4rem;
  accent-color: var(--_accent);
}
progress[hidden] { display: none; }
.log {
  flex: 1;
  min-height: 6rem;
  overflow-y: auto;
  display: flex;
  flex-direction: column;
  gap: 0.6rem;
  padding: 0.25rem;
  border-radius: calc(var(--_radius) - 4px);
}
.log:focus-visible { outline: 2px solid var(--_accent); outline-offset: 2px; }
.empty { margin: auto; opacity: 0.6; font-size: 0.9em; text-align: center; }
.message {
  max-width: 85%;
  padding: 0.5rem 0.75rem;
  border-radius: var(--_radius);
  white-space: pre-wrap;
  overflow-wrap: anywhere;
}
.message[data-role="user"] { align-self: flex-end; background: var(--_user-bg); }
.message[data-role="assistant"] { align-self: flex-start; background: var(--_assistant-bg); }
.meta { display: flex; flex-wrap: wrap; align-items: center; gap: 0.4rem; margin-bottom: 0.25rem; font-size: 0.75em; }
.badge {
  display: inline-block;
  padding: 0.05rem 0.5rem;
  border-radius: 999px;
  border: 1px solid currentColor;
  font-weight: 600;
  white-space: nowrap;
}
.badge[data-route="device"] { color: #047857; }
.badge[data-route="cloud"] { color: var(--_accent); }
.badge[data-route="fallback"] { color: #b45309; white-space: normal; }
.note { opacity: 0.75; }
.pending { font-style: italic; opacity: 0.7; }
@media (prefers-reduced-motion: no-preference) {
  .pending { animation: pulse 1.4s ease-in-out infinite; }
  @keyframes pulse { 50% { opacity: 0.35; } }
}
.composer { display: flex; gap: 0.5rem; align-items: flex-end; }
textarea {
  flex: 1;
  min-height: 2.75rem;
  max-height: 10rem;
  resize: vertical;
  padding: 0.55rem 0.7rem;
  font: inherit;
  color: inherit;
  background: transparent;
  border: 1px solid var(--_border);
  border-radius: calc(var(--_radius) - 4px);
}
textarea:focus-visible { outline: 2px solid var(--_accent); outline-offset: 1px; }
.actions { display: flex; gap: 0.4rem; }
button {
  font: inherit;
  font-size: 0.9em;
  padding: 0.5rem 0.9rem;
  border-radius: calc(var(--_radius) - 4px);
  border: 1px solid var(--_accent);
  background: var(--_accent);
  color: #fff;
  cursor: pointer;
}
button.secondary, button.stop { background: transparent; color: var(--_accent); }
button:disabled { opacity: 0.45; cursor: not-allowed; }
button:focus-visible { outline: 2px solid var(--_accent); outline-offset: 2px; }
button[hidden] { display: none; }
.visually-hidden {
  position: absolute; width: 1px; height: 1px; padding: 0; margin: -1px;
  overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap; border: 0;
}
/* Narrow boxes (phones, sidebars): the buttons go under the input. */
@container selfroute (max-width: 26rem) {
  .composer { flex-wrap: wrap; }
  textarea { flex-basis: 100%; }
  .actions { margin-left: auto; }
}
`;

const TEMPLATE = `
<div part="container" class="container">
  <div class="bar">
    <span part="status" class="status" role="status"></span>
    <button type="button" class="load secondary" hidden></button>
  </div>
  <progress part="progress" max="1" value="0" hidden aria-label="Loading the model"></progress>
  <div part="log" class="log" role="log" aria-live="polite" aria-label="Conversation" tabindex="0"></div>
  <form class="composer">
    <label class="visually-hidden" for="input">Message</label>
    <textarea id="input" part="input" rows="2" autocomplete="off"
      aria-describedby="hint"></textarea>
    <span id="hint" class="visually-hidden">Enter sends, Shift+Enter starts a new line.</span>
    <div class="actions">
      <button type="submit" part="send-button" class="send">Send</button>
      <button type="button" part="stop-button" class="stop" disabled>Stop</button>
    </div>
  </form>
</div>
`;

function emptyHint() {
  const hint = document.createElement('p');
  hint.className = 'empty';
  hint.textContent = 'Ask a question. Easy ones are answered on this device; hard ones go to the cloud.';
  return hint;
}

function domError(name, message) {
  return new DOMException(message, name);
}

function sizeLabel(bytes) {
  const size = Number(bytes);
  if (!Number.isFinite(size) || size <= 0) return '';
  return size >= 1e9 ? `${(size / 1e9).toFixed(1)} GB` : `${Math.max(1, Math.round(size / 1e6))} MB`;
}

function backendText({ backend, adapter, backendReason }) {
  return backend === 'webgpu'
    ? `WebGPU: ${adapter ?? 'unnamed adapter'}`
    : `CPU (wasm): ${backendReason || 'no reason given'}`;
}

function nearBottom(element) {
  return element.scrollHeight - element.scrollTop - element.clientHeight < 48;
}

export class SelfRouteChat extends HTMLElement {
  static observedAttributes = ['placeholder', 'model-size', 'model-url', 'load'];

  #ui;
  #engine = null;
  #loading = null;
  #loadAbort = null;
  #turn = null;
  #turnSettled = Promise.resolve();
  #history = [];
  #forceCpu = false;
  #eagerTimer = null;

  constructor() {
    super();
    const root = this.attachShadow({ mode: 'open' });
    root.innerHTML = `<style>${STYLE}</style>${TEMPLATE}`;
    const find = (selector) => root.querySelector(selector);
    this.#ui = {
      status: find('.status'),
      loadButton: find('.load'),
      progress: find('progress'),
      log: find('.log'),
      form: find('form'),
      input: find('textarea'),
      send: find('.send'),
      stop: find('.stop'),
    };
    this.#ui.log.append(emptyHint());
    this.#wire();
  }

  get engine() {
    return this.#engine;
  }

  connectedCallback() {
    this.#ui.input.placeholder = this.getAttribute('placeholder') ?? 'Ask something…';
    if (!this.#engine && !this.#loading) this.#showIdle();
    this.#scheduleEagerLoad();
  }

  // A move in the DOM disconnects and reconnects in the same task; only a real removal unloads.
  disconnectedCallback() {
    queueMicrotask(() => {
      if (this.isConnected) return;
      this.unload().catch((error) => console.warn('selfroute: unloading a removed <selfroute-chat> failed', error));
    });
  }

  attributeChangedCallback(name) {
    if (name === 'placeholder') this.#ui.input.placeholder = this.getAttribute('placeholder') ?? 'Ask something…';
    if ((name === 'model-size' || name === 'model-url') && !this.#engine && !this.#loading) this.#showIdle();
    if (name === 'load') this.#scheduleEagerLoad();
  }

  // -------------------------------------------------------------------------------------------
  // Public methods

  load() {
    if (this.#engine) return Promise.resolve(this.#engine);
    this.#loading ??= this.#startLoad().finally(() => { this.#loading = null; });
    return this.#loading;
  }

  send(text) {
    return this.#send(text, { fromInput: false });
  }

  async #send(text, { fromInput }) {
    const content = typeof text === 'string' ? text.trim() : '';
    if (!content) throw domError('DataError', 'there is nothing to send');
    if (this.#turn) throw domError('InvalidStateError', 'an answer is still being written; stop it first');
    const turn = new AbortController();
    let settle;
    this.#turn = turn;
    this.#turnSettled = new Promise((resolve) => { settle = resolve; });
    this.#setAnswering(true);
    const userView = this.#appendMessage('user', content);
    this.#emit('selfroute-message', { role: 'user', content, source: 'user', outcome: null });
    let answerView = null;
    const stage = { loading: true };
    try {
      const engine = this.#engine ?? (await this.load());
      stage.loading = false;
      if (turn.signal.aborted) throw domError('AbortError', 'the message was stopped before it was sent');
      this.#history.push({ role: 'user', content });
      answerView = this.#appendMessage('assistant', '');
      const outcome = await this.#stream(engine, answerView, turn.signal);
      return this.#finishAnswer(answerView, outcome);
    } catch (error) {
      this.#failTurn(error, { content, userView, answerView, duringLoad: stage.loading, fromInput });
      throw error;
    } finally {
      this.#turn = null;
      this.#setAnswering(false);
      settle();
    }
  }

  // Stops the answer being written; before the model is ready it stops the load instead.
  stop() {
    this.#turn?.abort();
    if (!this.#engine) this.#loadAbort?.abort();
  }

  async reset() {
    this.stop();
    await this.#turnSettled;
    this.#history = [];
    this.#ui.log.replaceChildren(emptyHint());
    await this.#engine?.resetChat();
  }

  async unload() {
    this.stop();
    this.#loadAbort?.abort();
    await this.#turnSettled;
    const engine = this.#engine;
    this.#engine = null;
    // The conversation stays: every turn sends it whole, so a reloaded model picks it up.
    await engine?.unload();
    this.#showIdle();
  }

  async clearCache() {
    const url = this.getAttribute('model-url');
    const removed = url
      ? await SelfRoute.cache.delete(this.#modelOptions())
      : await SelfRoute.cache.clear();
    if (!this.#engine && !this.#loading) this.#showIdle();
    return removed;
  }

  // -------------------------------------------------------------------------------------------
  // Loading

  #modelOptions() {
    const url = this.getAttribute('model-url');
    if (!url) throw domError('DataError', 'set the model-url attribute of <selfroute-chat>');
    return { url, sha256: this.getAttribute('model-sha256'), size: this.getAttribute('model-size') };
  }

  #engineOptions() {
    const endpoint = this.getAttribute('endpoint');
    const cloud = endpoint?.trim() === 'none'
      ? null
      : { endpoint: endpoint?.trim() || undefined, model: this.getAttribute('cloud-model') || undefined };
    return {
      model: this.#modelOptions(),
      backend: this.#forceCpu ? 'cpu' : (this.getAttribute('backend') || 'auto'),
      cloud,
      budget: { share: this.getAttribute('budget') },
      offloadBias: this.getAttribute('offload-bias'),
      maxTokens: this.getAttribute('max-tokens'),
    };
  }

  #scheduleEagerLoad() {
    if (this.getAttribute('load') !== 'eager' || !this.isConnected || this.#eagerTimer !== null) return;
    // Deferred so attributes set in the same task (URL overrides on the demo page) apply first.
    this.#eagerTimer = setTimeout(() => {
      this.#eagerTimer = null;
      if (this.isConnected && !this.#engine) this.load().catch(() => {});
    }, 0);
  }

  async #startLoad() {
    const controller = new AbortController();
    this.#loadAbort = controller;
    this.#setLoading(true);
    try {
      const engine = await SelfRoute.create({
        ...this.#engineOptions(),
        signal: controller.signal,
        monitor: (target) => target.addEventListener('downloadprogress', (event) => this.#onProgress(event.detail)),
      });
      this.#engine = engine;
      const detail = {
        backend: engine.backend,
        adapter: engine.adapter,
        backendReason: engine.backendReason,
        fromCache: engine.fromCache,
      };
      this.#setStatus(engine.warning ? `${backendText(detail)} (${engine.warning})` : backendText(detail),
        engine.warning ? 'warning' : 'ready');
      this.#emit('selfroute-ready', detail);
      return engine;
    } catch (error) {
      if (error?.name === 'AbortError') this.#setStatus('Loading stopped.', 'idle');
      else this.#reportError(error);
      throw error;
    } finally {
      if (this.#loadAbort === controller) this.#loadAbort = null;
      this.#setLoading(false);
    }
  }

  #onProgress(progress) {
    const bar = this.#ui.progress;
    bar.hidden = progress.phase === 'ready';
    if (progress.phase === 'compile') bar.removeAttribute('value');
    else bar.value = progress.progress;
    if (progress.phase !== 'ready') this.#setStatus(progress.text || 'Loading the model…', 'loading');
    this.#emit('selfroute-progress', { ...progress });
  }

  #showLoadButton() {
    const { loadButton } = this.#ui;
    const size = sizeLabel(this.getAttribute('model-size'));
    loadButton.textContent = size ? `Load model (${size})` : 'Load model';
    loadButton.hidden = false;
    this.#ui.progress.hidden = true;
  }

  async #showIdle() {
    this.#showLoadButton();
    let note = 'The model is not loaded yet; it loads with the first message.';
    try {
      const state = await SelfRoute.availability({ model: this.#modelOptions() });
      if (state === 'available') note = 'The model is cached in this browser and loads without a download.';
      if (state === 'unavailable') note = 'This browser cannot run the model (no WebAssembly).';
    } catch {
      // A missing or bad model attribute is reported when loading; the idle text stays generic.
    }
    if (!this.#engine && !this.#loading) this.#setStatus(note, 'idle');
  }

  #setLoading(loading) {
    const { loadButton, progress } = this.#ui;
    loadButton.hidden = !loading && this.#engine !== null;
    if (loading) {
      loadButton.textContent = 'Cancel loading';
      progress.hidden = false;
      progress.value = 0;
    } else if (this.#engine) {
      progress.hidden = true;
    } else {
      this.#showLoadButton();
    }
  }

  // -------------------------------------------------------------------------------------------
  // Answering

  #conversation() {
    const system = this.getAttribute('system-prompt');
    return system ? [{ role: 'system', content: system }, ...this.#history] : [...this.#history];
  }

  async #stream(engine, view, signal) {
    let outcome = null;
    const onOffload = (reason) => this.#askOffload(reason, view);
    for await (const event of engine.chat(this.#conversation(), { signal, onOffload })) {
      if (event.type === 'done') outcome = event.outcome;
      else this.#showEvent(view, event);
    }
    return outcome ?? { answer: view.resetPending ? '' : view.text, route: 'local', cancelled: true };
  }

  #askOffload(reason, view) {
    const allowed = this.#emit('selfroute-offload', { reason }, { cancelable: true });
    if (!allowed) view.declined = true;
    return allowed;
  }

  #showEvent(view, event) {
    switch (event.type) {
      case 'local':
        // Local text after an offload signal without a cloud failure: the offload was declined
        // and the model answers anew.
        if (view.route === 'cloud') {
          view.resetPending = true;
          this.#setRoute(view, 'device');
        }
        this.#appendText(view, event.text);
        break;
      case 'offload':
        view.resetPending = true;
        this.#setRoute(view, 'cloud');
        this.#showPending(view, 'Asking the cloud…');
        break;
      case 'cloud':
        this.#appendText(view, event.text);
        break;
      case 'offload-declined':
        // The model starts its answer again with offload masked: what was shown was a draft.
        view.resetPending = true;
        view.declined = true;
        break;
      case 'cloud-failed':
        view.resetPending = true;
        this.#setRoute(view, 'fallback', event.message);
        this.#showPending(view, 'The cloud is unavailable; answering on this device…');
        break;
      default:
        break;
    }
  }

  #finishAnswer(view, outcome) {
    const cancelled = outcome?.cancelled === true;
    const shown = view.resetPending ? '' : view.text;
    const content = outcome?.answer || (cancelled ? shown : '');
    const source = SOURCE_OF_ROUTE[outcome?.route] ?? 'device';
    this.#setRoute(view, source, outcome?.cloud_error);
    view.content.textContent = content;
    view.element.removeAttribute('aria-busy');
    const notes = [];
    if (LOCAL_REASON_NOTE[outcome?.local_reason]) notes.push(LOCAL_REASON_NOTE[outcome.local_reason]);
    else if (view.declined) notes.push(LOCAL_REASON_NOTE.offload_declined);
    if (cancelled) notes.push('stopped');
    view.note.textContent = notes.join(' · ');
    if (content) this.#history.push({ role: 'assistant', content });
    else this.#forgetUnanswered();
    this.#emit('selfroute-message', { role: 'assistant', content, source, outcome });
    return outcome;
  }

  // An unanswered question leaves the history, so the next turn does not carry two user messages
  // in a row.
  #forgetUnanswered() {
    if (this.#history.at(-1)?.role === 'user') this.#history.pop();
  }

  // A failed load was already reported by load(); a typed question goes back into the input box.
  #failTurn(error, { content, userView, answerView, duringLoad, fromInput }) {
    answerView?.element.remove();
    this.#forgetUnanswered();
    const stopped = error?.name === 'AbortError';
    userView.note.textContent = stopped ? 'not sent' : 'not answered';
    if (fromInput && !this.#ui.input.value) this.#ui.input.value = content;
    if (stopped || duringLoad) return;
    this.#reportError(error);
    if (error?.name === 'DeviceLostError') this.#recoverOnCpu();
    else if (error?.name === 'OutOfMemoryError') this.#dropEngine();
    else this.#dropEngineIfDead();
  }

  // After an unexpected failure the engine may be gone (its worker crashed); if so the next
  // message loads a fresh one instead of failing the same way.
  #dropEngineIfDead() {
    const engine = this.#engine;
    engine?.stats().catch(() => {
      if (this.#engine === engine) this.#dropEngine();
    });
  }

  // The GPU stopped (driver reset, device lost): the model reloads on the CPU, from the cache.
  #recoverOnCpu() {
    this.#forceCpu = true;
    this.#dropEngine().then(() => {
      this.#setStatus('The GPU stopped responding; reloading the model on the CPU…', 'warning');
      return this.load();
    }).catch(() => {});
  }

  async #dropEngine() {
    const engine = this.#engine;
    this.#engine = null;
    await engine?.unload().catch(() => {});
  }

  // -------------------------------------------------------------------------------------------
  // Rendering

  #wire() {
    const { form, input, stop, loadButton } = this.#ui;
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      this.#submitInput();
    });
    input.addEventListener('keydown', (event) => {
      // While an input method composes (Japanese, Chinese...), Enter confirms the composition.
      if (event.key !== 'Enter' || event.shiftKey || event.isComposing || event.keyCode === 229) return;
      event.preventDefault();
      this.#submitInput();
    });
    stop.addEventListener('click', () => this.stop());
    loadButton.addEventListener('click', () => {
      if (this.#loading) this.#loadAbort?.abort();
      else this.load().catch(() => {});
    });
  }

  #submitInput() {
    const { input } = this.#ui;
    const text = input.value;
    if (!text.trim() || this.#turn) return;
    input.value = '';
    // Failures are shown in the status line and as selfroute-error events.
    this.#send(text, { fromInput: true }).catch(() => {});
  }

  #setAnswering(answering) {
    this.#ui.send.disabled = answering;
    this.#ui.stop.disabled = !answering;
    if (answering) this.#ui.log.setAttribute('aria-busy', 'true');
    else this.#ui.log.removeAttribute('aria-busy');
  }

  #setStatus(text, state) {
    this.#ui.status.textContent = text;
    this.#ui.status.dataset.state = state;
  }

  #reportError(error) {
    const name = error?.name ?? 'OperationError';
    const message = error?.message ?? String(error);
    this.#setStatus(`${name}: ${message}`, 'error');
    this.#emit('selfroute-error', { name, message });
  }

  #appendMessage(role, text) {
    const { log } = this.#ui;
    log.querySelector('.empty')?.remove();
    const stick = nearBottom(log);
    const element = document.createElement('div');
    element.className = 'message';
    element.setAttribute('part', `message message-${role}`);
    element.dataset.role = role;
    element.dataset.source = role === 'user' ? 'user' : 'device';
    const meta = document.createElement('div');
    meta.className = 'meta';
    const note = document.createElement('span');
    note.className = 'note';
    const content = document.createElement('div');
    content.className = 'content';
    content.textContent = text;
    const view = { element, content, note, badge: null, text: '', route: 'device', resetPending: false, declined: false };
    if (role === 'assistant') {
      const badge = document.createElement('span');
      badge.className = 'badge';
      badge.setAttribute('part', 'route-badge');
      view.badge = badge;
      meta.append(badge);
      element.setAttribute('aria-busy', 'true');
      this.#setRoute(view, 'device');
      this.#showPending(view, 'Thinking…');
    } else {
      const who = document.createElement('span');
      who.className = 'visually-hidden';
      who.textContent = 'You:';
      meta.append(who);
    }
    meta.append(note);
    element.append(meta, content);
    log.append(element);
    if (stick) log.scrollTop = log.scrollHeight;
    return view;
  }

  #setRoute(view, route, detail = null) {
    view.route = route;
    view.element.dataset.source = route;
    if (!view.badge) return;
    view.badge.dataset.route = route;
    view.badge.textContent = BADGE_TEXT[route];
    view.badge.title = detail ? `${BADGE_TEXT[route]} (${detail})` : BADGE_TEXT[route];
  }

  #showPending(view, label) {
    const pending = document.createElement('span');
    pending.className = 'pending';
    pending.textContent = label;
    view.content.replaceChildren(pending);
  }

  #appendText(view, text) {
    if (view.resetPending) {
      view.text = '';
      view.resetPending = false;
    }
    view.text += text ?? '';
    if (!view.text) return;
    const { log } = this.#ui;
    const stick = nearBottom(log);
    view.content.textContent = view.text;
    if (stick) log.scrollTop = log.scrollHeight;
  }

  #emit(type, detail, { cancelable = false } = {}) {
    return this.dispatchEvent(new CustomEvent(type, { detail, bubbles: true, composed: true, cancelable }));
  }
}

if (!customElements.get('selfroute-chat')) customElements.define('selfroute-chat', SelfRouteChat);

export default SelfRouteChat;
