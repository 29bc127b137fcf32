// The browser test harness: Debian's Chromium through playwright-core, a site server with a
// fault-injecting OpenAI-compatible cloud, the real `selfroute serve`, and a watch on every page
// that fails the test on an unexpected error.
//
// Typical test:
//
//   import { test } from 'node:test';
//   import assert from 'node:assert/strict';
//   import { openSite } from './harness.mjs';
//
//   test('answers locally', async (t) => {
//     const { site, page } = await openSite(t, { cloud: { mode: 'ok', text: 'From the cloud.' } });
//     await page.goto(site.url(`/index.html?cloud=${encodeURIComponent(site.cloud.endpoint)}`));
//     ...
//     assert.equal(site.cloud.requests.length, 0);
//   });
//
// Paths come from the environment `cargo xtask test` sets (SELFROUTE_SITE_DIR, SELFROUTE_CHROMIUM,
// SELFROUTE_MODEL, SELFROUTE_DEMO_MODEL, SELFROUTE_BIN); the defaults fit a checkout after
// `cargo xtask web`, so `node --test tests/browser/` works by hand too.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
export const REPO = path.resolve(HERE, '../..');

function firstExisting(...candidates) {
  return candidates.find((p) => fs.existsSync(p)) ?? candidates[0];
}

export const paths = {
  site: process.env.SELFROUTE_SITE_DIR ?? path.join(REPO, 'target/site'),
  chromium: process.env.SELFROUTE_CHROMIUM ?? '/usr/bin/chromium',
  model: process.env.SELFROUTE_MODEL ?? path.join(REPO, 'models/SmolLM2-135M-Instruct.Q4_1.gguf'),
  demoModel: process.env.SELFROUTE_DEMO_MODEL ?? path.join(REPO, 'models/selfroute-demo.gguf'),
  selfroute:
    process.env.SELFROUTE_BIN ??
    firstExisting(path.join(REPO, 'target/release/selfroute'), path.join(REPO, 'target/debug/selfroute')),
  /** Test pages, served at /test-pages/. */
  pages: path.join(HERE, 'pages'),
};

/** The workspace version (`[workspace.package] version` in Cargo.toml): what the wasm reports. */
export function crateVersion() {
  const toml = fs.readFileSync(path.join(REPO, 'Cargo.toml'), 'utf8');
  const section = toml.split(/^\[workspace\.package\]$/m)[1] ?? '';
  const match = section.match(/^version\s*=\s*"([^"]+)"/m);
  if (!match) throw new Error('no [workspace.package] version in Cargo.toml');
  return match[1];
}

// ---------------------------------------------------------------------------------------------
// Chromium

/** Flags every launch gets: no network chatter, no updates, no QUIC, a clean profile. */
const BASE_ARGS = [
  '--no-sandbox',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
];
/** The one flag that makes headless Chromium offer a WebGPU adapter (SwiftShader, no GPU). */
export const WEBGPU_ARG = '--enable-unsafe-webgpu';

/**
 * Headless Chromium with a fresh profile. A persistent context, so the Cache API and IndexedDB
 * survive reloads within a test; the profile is deleted by `close()`.
 * @param {{webgpu?: boolean, args?: string[]}} options `webgpu: false` leaves out the WebGPU flag.
 */
export async function launchBrowser({ webgpu = true, args = [] } = {}) {
  const userDataDir = await fsp.mkdtemp(path.join(os.tmpdir(), 'selfroute-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: paths.chromium,
    headless: true,
    args: [...BASE_ARGS, ...(webgpu ? [WEBGPU_ARG] : []), ...args],
  });
  return {
    context,
    userDataDir,
    /** The tab the browser opened with (a persistent context always has one). */
    page: context.pages()[0] ?? (await context.newPage()),
    newPage: () => context.newPage(),
    async close() {
      await context.close().catch(() => {});
      await fsp.rm(userDataDir, { recursive: true, force: true });
    },
  };
}

/**
 * Collects what went wrong on pages: uncaught exceptions and unhandled rejections (of the page and
 * of its workers), console errors (with the URL that logged them), crashes. `add(page)` watches
 * another page; `expect(pattern)` lets through errors a test provokes on purpose.
 */
export function watchPage(page) {
  const problems = [];
  const allowed = [];
  const note = (kind, text) => {
    if (!allowed.some((re) => re.test(text))) problems.push(`${kind}: ${text}`);
  };
  const watcher = {
    problems,
    add(p) {
      p.on('pageerror', (e) => note('page error', e.stack || e.message));
      p.on('crash', () => note('crash', 'the page crashed'));
      p.on('console', (m) => {
        if (m.type() !== 'error') return;
        const where = m.location()?.url;
        // Chromium asks every server for a favicon on its own; a 404 there is not the page's error.
        if (where?.endsWith('/favicon.ico')) return;
        note(m.worker() ? 'worker console error' : 'console error', where ? `${m.text()} (${where})` : m.text());
      });
    },
    /** Lets errors matching `pattern` through (an error the test provokes). */
    expect(pattern) {
      allowed.push(pattern);
    },
    /**
     * Chromium logs every failed request as a console error ("Failed to load resource: ... status
     * of 500", "net::ERR_CONNECTION_REFUSED"); a test that makes the cloud or the model fail
     * expects these.
     */
    expectNetworkErrors() {
      allowed.push(/Failed to load resource/, /net::ERR_/);
    },
    assertClean() {
      if (problems.length) throw new Error(`unexpected errors on the page:\n  ${problems.join('\n  ')}`);
    },
  };
  watcher.add(page);
  return watcher;
}

// ---------------------------------------------------------------------------------------------
// The site server and its cloud

const MIME = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.wasm': 'application/wasm',
  '.gguf': 'application/octet-stream',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.txt': 'text/plain; charset=utf-8',
};
const NO_CACHE = new Set(['.html', '.js', '.mjs', '.wasm']);

/**
 * The cloud's behaviour for the next requests:
 * - `{mode: 'ok', text, chunks = 4, delayMs = 10}`: an answer streamed in `chunks` SSE events
 *   (or one JSON object when the request has `stream: false`), then `data: [DONE]`;
 * - `{mode: 'down'}`: `endpoint` points at a closed port (connection refused);
 * - `{mode: '500'}` or `{mode: 'status', status, headers}`: an error response;
 * - `{mode: 'stall'}`: the response headers, then silence until the client gives up;
 * - `{mode: 'cut', after = 2}`: `after` chunks of the answer, then the connection is destroyed.
 */
const DEFAULT_CLOUD = { mode: 'ok', text: 'This answer comes from the test cloud.', chunks: 4, delayMs: 10 };

/**
 * Serves `paths.site` at / (with the headers `selfroute serve` sends), `paths.pages` at
 * /test-pages/, and a scripted OpenAI-compatible cloud at /v1. Every request is logged.
 * @param {{cloud?: object, model?: {fault?: 'truncated'|'corrupted'|'cut'|null},
 *          crossOriginIsolation?: boolean, site?: string}} options
 */
export async function startSite(options = {}) {
  const siteDir = options.site ?? paths.site;
  if (!fs.existsSync(siteDir)) throw new Error(`${siteDir} is missing: run \`cargo xtask web\` first`);
  const isolation = options.crossOriginIsolation ?? false;
  const routes = new Map();
  const sockets = new Set();
  const state = {
    cloud: { ...DEFAULT_CLOUD, ...(options.cloud ?? {}) },
    modelFault: options.model?.fault ?? null,
  };
  const requests = [];
  const cloudRequests = [];
  const modelRequests = [];
  const closed = await closedPort();

  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, 'http://localhost');
    requests.push({ method: req.method, path: url.pathname });
    if (isolation) {
      res.setHeader('Cross-Origin-Opener-Policy', 'same-origin');
      res.setHeader('Cross-Origin-Embedder-Policy', 'require-corp');
      res.setHeader('Cross-Origin-Resource-Policy', 'same-origin');
    }
    try {
      const custom = routes.get(url.pathname);
      if (custom) return await custom(req, res);
      if (url.pathname.startsWith('/v1/')) return await serveCloud(req, res, url);
      // Chromium asks for it on every page; a 404 would show as a console error.
      if (url.pathname === '/favicon.ico' && !fs.existsSync(path.join(siteDir, 'favicon.ico'))) {
        res.writeHead(204);
        return res.end();
      }
      if (url.pathname.startsWith('/test-pages/')) {
        return await serveFile(req, res, paths.pages, url.pathname.slice('/test-pages'.length));
      }
      if (url.pathname.endsWith('.gguf')) {
        modelRequests.push({ method: req.method, path: url.pathname, range: req.headers.range ?? null });
        if (state.modelFault) return await serveFaultyModel(req, res, path.join(siteDir, url.pathname), state.modelFault);
      }
      return await serveFile(req, res, siteDir, url.pathname === '/' ? '/index.html' : url.pathname);
    } catch (e) {
      if (!res.headersSent) {
        res.writeHead(500, { 'content-type': 'text/plain' });
        res.end(String(e?.stack ?? e));
      } else {
        res.destroy();
      }
    }
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });

  async function serveCloud(req, res, url) {
    const body = await readBody(req);
    let json = null;
    try {
      json = JSON.parse(body);
    } catch {}
    const record = { method: req.method, path: url.pathname, headers: req.headers, body, json };
    cloudRequests.push(record);
    if (req.method === 'GET' && url.pathname === '/v1/models') {
      return sendJson(res, 200, { object: 'list', data: [{ id: 'test-cloud', object: 'model', owned_by: 'harness' }] });
    }
    if (req.method !== 'POST' || url.pathname !== '/v1/chat/completions') {
      return sendJson(res, 404, { error: { message: `no route ${req.method} ${url.pathname}`, type: 'not_found' } });
    }
    const cloud = state.cloud;
    switch (cloud.mode) {
      case 'ok':
        return json?.stream === false ? sendJson(res, 200, completion(cloud.text)) : streamAnswer(res, cloud, Infinity);
      case 'cut':
        return streamAnswer(res, cloud, cloud.after ?? 2);
      case 'stall':
        res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
        res.flushHeaders();
        return; // never ends; close() destroys the socket
      case '500':
        return sendJson(res, 500, { error: { message: 'injected failure', type: 'server_error' } });
      case 'status':
        return sendJson(
          res,
          cloud.status ?? 500,
          { error: { message: `injected ${cloud.status}`, type: 'server_error' } },
          cloud.headers ?? {},
        );
      case 'down':
        // The page was pointed at a closed port; a request reaching us anyway is answered like one.
        return res.destroy();
      default:
        throw new Error(`unknown cloud mode ${cloud.mode}`);
    }
  }

  async function serveFaultyModel(req, res, file, fault) {
    const size = (await fsp.stat(file)).size;
    const half = Math.floor(size / 2);
    if (fault === 'truncated') {
      // A well-formed response for a file that is too short: only the page's size/hash check sees it.
      res.writeHead(200, { 'content-type': MIME['.gguf'], 'content-length': half });
      if (req.method === 'HEAD') return res.end();
      return pipeline(fs.createReadStream(file, { end: half - 1 }), res);
    }
    if (fault === 'corrupted') {
      // Right length, one byte flipped in the middle of the tensor data.
      res.writeHead(200, { 'content-type': MIME['.gguf'], 'content-length': size });
      if (req.method === 'HEAD') return res.end();
      let offset = 0;
      const flip = new Transform({
        transform(chunk, _enc, done) {
          if (half >= offset && half < offset + chunk.length) {
            chunk = Buffer.from(chunk);
            chunk[half - offset] ^= 0xff;
          }
          offset += chunk.length;
          done(null, chunk);
        },
      });
      return pipeline(fs.createReadStream(file), flip, res);
    }
    if (fault === 'cut') {
      // The full length announced, half sent, then the connection drops: a network error.
      res.writeHead(200, { 'content-type': MIME['.gguf'], 'content-length': size });
      if (req.method === 'HEAD') return res.end();
      const stream = fs.createReadStream(file, { end: half - 1 });
      stream.on('end', () => setTimeout(() => res.destroy(), 50));
      stream.pipe(res, { end: false });
      return;
    }
    throw new Error(`unknown model fault ${fault}`);
  }

  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const origin = `http://127.0.0.1:${server.address().port}`;

  return {
    origin,
    url: (p) => origin + p,
    /** Every request: {method, path}. */
    requests,
    /** Requests for `*.gguf`: {method, path, range}. The cache tests count these. */
    modelRequests,
    cloud: {
      /** Every request to /v1: {method, path, headers, body, json}. */
      requests: cloudRequests,
      /** Changes the behaviour for the next requests (see DEFAULT_CLOUD). */
      set(behaviour) {
        state.cloud = { ...DEFAULT_CLOUD, ...behaviour };
      },
      get behaviour() {
        return state.cloud;
      },
      /** The base URL a client appends /chat/completions to (a closed port when 'down'). */
      get base() {
        return state.cloud.mode === 'down' ? `http://127.0.0.1:${closed}/v1` : `${origin}/v1`;
      },
      get endpoint() {
        return `${this.base}/chat/completions`;
      },
    },
    /** Serve the model broken: 'truncated', 'corrupted', 'cut', or null for the real file. */
    setModelFault(fault) {
      state.modelFault = fault;
    },
    /** A custom handler `(req, res) => ...` for one path, ahead of everything else. */
    route(pathname, handler) {
      routes.set(pathname, handler);
    },
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

function streamAnswer(res, cloud, limit) {
  const pieces = split(cloud.text ?? '', cloud.chunks ?? 4);
  const created = Math.floor(Date.now() / 1000);
  const chunk = (delta, finish) =>
    `data: ${JSON.stringify({
      id: 'chatcmpl-harness',
      object: 'chat.completion.chunk',
      created,
      model: 'test-cloud',
      choices: [{ index: 0, delta, finish_reason: finish }],
    })}\n\n`;
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
  res.flushHeaders();
  return (async () => {
    for (let i = 0; i < pieces.length; i++) {
      if (i >= limit) {
        await sleep(cloud.delayMs ?? 10);
        res.destroy();
        return;
      }
      res.write(chunk(i === 0 ? { role: 'assistant', content: pieces[i] } : { content: pieces[i] }, null));
      await sleep(cloud.delayMs ?? 10);
    }
    res.write(chunk({}, 'stop'));
    res.end('data: [DONE]\n\n');
  })();
}

function completion(text) {
  return {
    id: 'chatcmpl-harness',
    object: 'chat.completion',
    created: Math.floor(Date.now() / 1000),
    model: 'test-cloud',
    choices: [{ index: 0, message: { role: 'assistant', content: text }, finish_reason: 'stop' }],
    usage: { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0 },
  };
}

/** `text` in `n` nearly equal pieces (by characters, so multi-byte text stays whole). */
function split(text, n) {
  const chars = [...text];
  const size = Math.max(1, Math.ceil(chars.length / Math.max(1, n)));
  const pieces = [];
  for (let i = 0; i < chars.length; i += size) pieces.push(chars.slice(i, i + size).join(''));
  return pieces.length ? pieces : [''];
}

/**
 * `pathname` under `root`, with the site's headers (MIME type, no-cache for pages, scripts and
 * wasm, byte ranges); also used by `bench/web` to serve wllama's files beside the site.
 */
export async function serveFile(req, res, root, pathname) {
  const file = path.join(root, path.normalize(decodeURIComponent(pathname)).replace(/^([/\\])+/, ''));
  if (!file.startsWith(path.resolve(root) + path.sep)) return sendText(res, 403, 'forbidden');
  let stat;
  try {
    stat = await fsp.stat(file);
  } catch {
    return sendText(res, 404, `not found: ${pathname}`);
  }
  if (!stat.isFile()) return sendText(res, 404, `not a file: ${pathname}`);
  const ext = path.extname(file).toLowerCase();
  const headers = { 'content-type': MIME[ext] ?? 'application/octet-stream', 'accept-ranges': 'bytes' };
  if (NO_CACHE.has(ext)) headers['cache-control'] = 'no-cache';
  const range = /^bytes=(\d*)-(\d*)$/.exec(req.headers.range ?? '');
  let start = 0;
  let end = stat.size - 1;
  let status = 200;
  if (range && (range[1] || range[2])) {
    start = range[1] ? Number(range[1]) : Math.max(0, stat.size - Number(range[2]));
    end = range[1] && range[2] ? Math.min(Number(range[2]), stat.size - 1) : stat.size - 1;
    if (start > end || start >= stat.size) {
      res.writeHead(416, { 'content-range': `bytes */${stat.size}` });
      return res.end();
    }
    status = 206;
    headers['content-range'] = `bytes ${start}-${end}/${stat.size}`;
  }
  headers['content-length'] = end - start + 1;
  res.writeHead(status, headers);
  if (req.method === 'HEAD' || stat.size === 0) return res.end();
  await pipeline(fs.createReadStream(file, { start, end }), res);
}

function sendJson(res, status, value, headers = {}) {
  const body = JSON.stringify(value);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), ...headers });
  res.end(body);
}

function sendText(res, status, text) {
  res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8' });
  res.end(text);
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const parts = [];
    req.on('data', (c) => parts.push(c));
    req.on('end', () => resolve(Buffer.concat(parts).toString('utf8')));
    req.on('error', reject);
  });
}

/** A port nothing listens on (bound, then released): connections to it are refused. */
export async function closedPort() {
  const s = http.createServer();
  await new Promise((resolve) => s.listen(0, '127.0.0.1', resolve));
  const { port } = s.address();
  await new Promise((resolve) => s.close(resolve));
  return port;
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---------------------------------------------------------------------------------------------
// The real server

/**
 * `selfroute serve --port 0 --static SITE --model MODEL ARGS` (the demo's set-up); resolves once
 * it listens. `model: null` leaves out `--model` (give `--upstream` in `args` then).
 */
export async function startSelfroute({ args = [], model = paths.model, site = paths.site, env = {}, timeoutMs = 120_000 } = {}) {
  const argv = ['serve', '--port', '0', '--threads', '1', '--static', site];
  if (model) argv.push('--model', model);
  argv.push(...args);
  const child = spawn(paths.selfroute, argv, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  child.stderr.on('data', (d) => (log += d));
  const origin = await new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`selfroute serve did not listen within ${timeoutMs} ms:\n${log}`)), timeoutMs);
    child.stdout.on('data', (d) => {
      out += d;
      const m = /listening on (http:\/\/\S+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`selfroute serve exited with ${code}:\n${log}`));
    });
    child.on('error', reject);
  });
  return {
    origin,
    url: (p) => origin + p,
    log: () => log,
    async close() {
      if (child.exitCode !== null) return;
      const exited = new Promise((resolve) => child.on('exit', resolve));
      child.kill('SIGINT');
      const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(timer);
    },
  };
}

// ---------------------------------------------------------------------------------------------
// One call per test

/**
 * A site server, a browser and a watched page, all closed when the test ends; the test fails if
 * any page of the browser logged an unexpected error (call `watch.expect(/.../)` for provoked
 * ones).
 * @param {import('node:test').TestContext} t
 * @param {{webgpu?: boolean, browserArgs?: string[]} & Parameters<typeof startSite>[0]} options
 */
export async function openSite(t, options = {}) {
  const site = await startSite(options);
  const browser = await launchBrowser({ webgpu: options.webgpu ?? true, args: options.browserArgs ?? [] });
  const page = browser.page;
  const watch = watchPage(page);
  browser.context.on('page', (p) => watch.add(p));
  t.after(async () => {
    await browser.close();
    await site.close();
    watch.assertClean();
  });
  return { site, browser, page, watch };
}
