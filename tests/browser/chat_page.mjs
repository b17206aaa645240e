// The chat page in a real browser: Debian's Chromium, driven by playwright-core, against the
// built mhla-server running the bundled model. It sends messages and watches the replies
// stream in, sees a refusal shown, stops a generation, regenerates and undoes the last turn,
// saves a checkpoint, reloads, restores the conversation from the checkpoint and from its
// downloaded file, and keeps screenshots under --artifacts.
//
//   node tests/browser/chat_page.mjs --server build/apps/mhla-server --model models/mhla-demo --artifacts DIR
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { chromium } from 'playwright-core';

const DEADLINE_MS = 120_000;  // under the ctest timeout, so the cleanup below always runs
const STEP_MS = 20_000;       // any one wait in the page

const { values: args } = parseArgs({
  options: { server: { type: 'string' }, model: { type: 'string' }, artifacts: { type: 'string' } },
});
for (const name of ['server', 'model', 'artifacts']) if (!args[name]) throw new Error(`--${name} is required`);
fs.mkdirSync(args.artifacts, { recursive: true });
const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'mhla-chat-page-'));
const started = Date.now();
const log = (what) => console.log(`${((Date.now() - started) / 1000).toFixed(1).padStart(5)} s  ${what}`);

let server = null;
let context = null;

function cleanup() {
  if (server && server.exitCode === null) server.kill('SIGKILL');
  fs.rmSync(scratch, { recursive: true, force: true });
}
process.on('exit', cleanup);
const deadline = setTimeout(() => {
  console.error(`FAILED: the test ran past ${DEADLINE_MS / 1000} s`);
  process.exit(1);  // playwright closes the browser it launched on exit; cleanup() the server
}, DEADLINE_MS);

// The bundled model, with a chat template whose replies end only at the end-of-text token (its
// default also ends them at "\nUser:", which the model writes after a sentence or two): with
// ignore_eos a reply then runs until it is stopped, so Stop has something to stop.
function modelWithoutTurnStops() {
  const dir = path.join(scratch, path.basename(path.resolve(args.model)));
  fs.mkdirSync(dir);
  for (const file of ['config.json', 'model.safetensors', 'tokenizer.model'])
    fs.symlinkSync(path.resolve(args.model, file), path.join(dir, file));
  fs.writeFileSync(path.join(dir, 'chat_template.json'), JSON.stringify({ stop: [] }));
  return dir;
}

async function startServer() {
  const portFile = path.join(scratch, 'port');
  const serverLog = fs.openSync(path.join(args.artifacts, 'server.log'), 'w');
  server = spawn(args.server, ['--model', modelWithoutTurnStops(), '--host', '127.0.0.1', '--port', '0', '--port-file', portFile,
    '--state-dir', path.join(scratch, 'state'), '--log-level', 'warn'], { stdio: ['ignore', serverLog, serverLog] });
  const until = Date.now() + 30_000;
  while (Date.now() < until) {
    if (server.exitCode !== null) throw new Error(`mhla-server exited with ${server.exitCode}; see server.log`);
    if (fs.existsSync(portFile)) return `http://127.0.0.1:${fs.readFileSync(portFile, 'utf8').trim()}`;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error('mhla-server did not start listening within 30 s');
}

// The static files as the real binary serves them, and the API's 404s untouched by them.
async function checkFiles(base) {
  for (const [file, type] of [['/', 'text/html'], ['/chat.js', 'text/javascript'], ['/chat.css', 'text/css']]) {
    const r = await fetch(base + file);
    assert.equal(r.status, 200, file);
    assert.ok(r.headers.get('content-type').startsWith(type), `${file}: ${r.headers.get('content-type')}`);
    assert.equal(r.headers.get('cache-control'), 'no-cache');
  }
  for (const file of ['/missing.js', '/v1/missing']) {
    const r = await fetch(base + file);
    assert.equal(r.status, 404, file);
    assert.equal((await r.json()).error.type, 'not_found_error');
  }
}

// Page helpers.
const texts = (page, role) => page.$$eval(`#messages li[data-role="${role}"] .content`, (els) => els.map((e) => e.textContent));
// Waits until nothing runs in the page (Send is live again); `what` names what should have ended.
async function idle(page, what = 'the last action') {
  try {
    await page.waitForFunction(() => !document.getElementById('send').disabled && !document.querySelector('[data-streaming]'));
  } catch (e) {
    throw new Error(`${what} did not end within ${STEP_MS / 1000} s: ${e.message}`);
  }
}

async function setSettings(page, values) {
  for (const [name, value] of Object.entries(values)) await page.fill(`#${name}`, String(value));
}

// Records the streaming message's text at every change, with the time, until read back.
async function recordStream(page) {
  await page.evaluate(() => {
    window.streamed = [];
    const list = document.getElementById('messages');
    new MutationObserver(() => {
      const el = list.querySelector('li[data-streaming] .content');
      if (el) window.streamed.push({ t: performance.now(), text: el.textContent });
    }).observe(list, { subtree: true, childList: true, characterData: true, attributes: true });
  });
}

// The distinct texts a streamed reply showed before it was whole, in order; each extends the
// one before.
async function streamedTexts(page) {
  const seen = (await page.evaluate(() => window.streamed)).filter((s) => s.text !== '');
  const distinct = seen.filter((s, i) => i === 0 || s.text !== seen[i - 1].text);
  for (let i = 1; i < distinct.length; ++i)
    assert.ok(distinct[i].text.startsWith(distinct[i - 1].text), 'the streamed text only grows');
  return distinct;
}

async function sessionOf(page, base) {
  const id = await page.evaluate(() => localStorage.getItem('mhla-chat.session'));
  assert.ok(id, 'the page keeps its session id');
  const r = await fetch(`${base}/v1/sessions/${id}`);
  return { id, status: r.status, info: r.ok ? await r.json() : null };
}

// What the page shows equals the session's transcript on the server.
async function checkShownIsServer(page, base) {
  const { info } = await sessionOf(page, base);
  const shown = await page.$$eval('#messages li', (els) => els.map((e) => ({
    role: e.dataset.role, content: e.querySelector('.content').textContent })));
  assert.deepEqual(shown, info.transcript);
  return info;
}

// Sends a message and waits for its reply to be shown whole (the message and the reply added).
async function send(page, text) {
  const count = await page.$$eval('#messages li', (els) => els.length);
  await page.fill('#input', text);
  await page.press('#input', 'Enter');
  await page.waitForFunction((n) => document.querySelectorAll('#messages li').length === n, count + 2);
  await idle(page);
}

async function run() {
  const base = await startServer();
  log(`mhla-server listening at ${base}`);
  await checkFiles(base);

  context = await chromium.launchPersistentContext(path.join(scratch, 'profile'), {
    executablePath: '/usr/bin/chromium',
    headless: true,
    timeout: 30_000,
    viewport: { width: 1280, height: 900 },
    acceptDownloads: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--disable-quic'],
  });
  const page = context.pages()[0] || await context.newPage();
  page.setDefaultTimeout(STEP_MS);
  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    // Refused requests are logged by the browser itself; the page shows them (checked below).
    if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) problems.push(`console: ${m.text()}`);
  });
  page.on('requestfailed', (r) => {
    if (!r.url().startsWith('blob:')) problems.push(`request failed: ${r.url()} ${r.failure().errorText}`);
  });
  log('chromium started');

  await page.goto(base);
  await page.waitForSelector('body[data-ready="true"]');
  assert.match(await page.textContent('#model'), /^mhla-demo · trained window/);
  assert.equal(await page.isVisible('#empty'), true);
  log('page loaded');

  // A refusal: the server's own message on the page, and the message kept to send again.
  await setSettings(page, { max_tokens: 0 });
  await page.fill('#input', 'Hello');
  await page.press('#input', 'Enter');
  await page.waitForSelector('#error:not([hidden])');
  assert.match(await page.textContent('#error'), /The server refused \(400, invalid_request_error\)/);
  assert.match(await page.textContent('#error-message'), /'max_tokens' must be between 1 and 4096, got 0/);
  await idle(page);
  assert.equal(await page.inputValue('#input'), 'Hello');
  assert.equal(await page.$$eval('#messages li', (els) => els.length), 0);
  await page.click('#error-close');
  log('a refusal is shown');

  // A reply streams in; the status line has the figures; the page shows what the server holds.
  await setSettings(page, { max_tokens: 40, temperature: 0.8, top_p: 0.95, top_k: 40, repetition_penalty: 1.1, seed: '' });
  await recordStream(page);
  await send(page, 'What does sorted() do?');
  const first = await streamedTexts(page);
  assert.ok(first.length >= 2, `the reply appeared in ${first.length} steps`);
  assert.equal(await page.isVisible('#error'), false);
  assert.match(await page.textContent('#status'), /\d+ tokens · [\d.]+ tokens\/s · first token \d+ ms · prefilled \d+ new tokens, 0 already in the session · state [\d.]+ [KM]iB at position \d+/);
  let info = await checkShownIsServer(page, base);
  assert.equal(info.transcript.length, 2);
  log(`first reply: ${first.length} steps, ${JSON.stringify(info.transcript[1].content.slice(0, 60))}…`);

  // The next turn prefills only its own message: the session keeps the rest.
  const before = info.position;
  await send(page, 'And what does reversed() return?');
  assert.match(await page.textContent('#status'), new RegExp(`prefilled \\d+ new tokens, ${before} already in the session`));
  info = await checkShownIsServer(page, base);
  assert.equal(info.transcript.length, 4);
  log('second turn reused the session');

  // Stop: a generation that would run to 4096 tokens, watched while it streams, stopped part-way.
  await setSettings(page, { max_tokens: 4096 });
  await page.check('#ignore_eos');
  await recordStream(page);
  await page.fill('#input', 'Tell me everything about lists.');
  await page.press('#input', 'Enter');
  await page.waitForFunction(() => {
    const el = document.querySelector('li[data-streaming] .content');
    return el && el.textContent.length >= 200;
  });
  await page.click('#stop');
  await idle(page, 'the reply after Stop');
  const long = await streamedTexts(page);
  assert.ok(long.length >= 5, `the long reply appeared in ${long.length} steps`);
  assert.ok(long[long.length - 1].t - long[0].t > 0, 'over time');
  const stopped = await page.$eval('#messages li[data-role="assistant"]:last-child', (el) => ({
    finish: el.dataset.finish, note: el.querySelector('.note')?.textContent, text: el.querySelector('.content').textContent }));
  assert.equal(stopped.finish, 'cancelled');
  assert.equal(stopped.note, 'stopped');
  const generated = Number((await page.textContent('#status')).match(/^(\d+) tokens/)[1]);
  assert.ok(generated < 4096, `stopped after ${generated} tokens`);
  info = await checkShownIsServer(page, base);
  await new Promise((r) => setTimeout(r, 400));
  const later = (await sessionOf(page, base)).info;
  assert.equal(later.position, info.position, 'nothing is generated after Stop');
  assert.equal(later.busy, false);
  log(`stopped after ${generated} tokens, ${long.length} steps seen`);

  // Regenerate: the stopped reply is replaced by a new one, the rest of the conversation stays.
  await setSettings(page, { max_tokens: 40 });
  await page.uncheck('#ignore_eos');
  await page.$eval('#messages li[data-role="assistant"]:last-child', (el) => { el.dataset.old = 'yes'; });
  const users = await texts(page, 'user');
  await page.click('#regenerate');
  await page.waitForFunction(() => !document.querySelector('[data-old]'));
  await idle(page);
  assert.equal(await page.$$eval('[data-old]', (els) => els.length), 0, 'the old reply is gone');
  assert.deepEqual(await texts(page, 'user'), users);
  const regenerated = await texts(page, 'assistant');
  assert.equal(regenerated.length, 3);
  assert.notEqual(regenerated[2], stopped.text);
  info = await checkShownIsServer(page, base);
  assert.equal(info.transcript.length, 6);
  log('regenerated the last reply');

  // Undo takes the last turn back and returns its message to the input box; send it again.
  await page.click('#undo');
  await page.waitForFunction(() => document.querySelectorAll('#messages li').length === 4);
  await idle(page);
  assert.equal(await page.inputValue('#input'), 'Tell me everything about lists.');
  assert.equal((await checkShownIsServer(page, base)).transcript.length, 4);
  await page.press('#input', 'Enter');
  await page.waitForFunction(() => document.querySelectorAll('#messages li').length === 6);
  await idle(page);
  const conversation = (await checkShownIsServer(page, base)).transcript;
  log('undo, then the message sent again');

  // Save, reload: the page finds its session again.
  await page.click('#save');
  await page.waitForSelector('#notice:not([hidden])');
  assert.match(await page.textContent('#notice'), /^Saved as ckpt_\w+: 6 messages/);
  await page.waitForSelector('#checkpoints li.checkpoint');
  await page.reload();
  await page.waitForSelector('body[data-ready="true"]');
  assert.deepEqual((await checkShownIsServer(page, base)).transcript, conversation);
  log('saved; the reloaded page shows the conversation');

  // New chat deletes the session; the checkpoint brings the conversation back.
  const old = await sessionOf(page, base);
  await page.click('#new-chat');
  await page.waitForFunction(() => document.querySelectorAll('#messages li').length === 0);
  await idle(page);
  assert.equal((await fetch(`${base}/v1/sessions/${old.id}`)).status, 404);
  await page.click('#checkpoints li.checkpoint button[data-action="restore"]');
  await page.waitForFunction(() => document.querySelectorAll('#messages li').length === 6);
  await idle(page);
  assert.deepEqual((await checkShownIsServer(page, base)).transcript, conversation);
  assert.match(await page.textContent('#notice'), /^Restored ckpt_\w+: 6 messages/);
  log('restored from the checkpoint');

  // The checkpoint's file, downloaded and uploaded again, carries the transcript too.
  const [download] = await Promise.all([
    page.waitForEvent('download'),
    page.click('#checkpoints li.checkpoint button[data-action="download"]'),
  ]);
  const file = path.join(scratch, download.suggestedFilename());
  await download.saveAs(file);
  await page.setInputFiles('#upload', file);
  await page.waitForFunction(() => document.querySelectorAll('#checkpoints li.checkpoint').length === 2);
  await idle(page);
  assert.match(await page.textContent('#notice'), /^Uploaded as ckpt_\w+: 6 messages/);
  await page.click('#checkpoints li.checkpoint:first-child button[data-action="restore"]');
  await page.waitForFunction(() => /^Restored/.test(document.getElementById('notice').textContent));
  await idle(page);
  assert.deepEqual((await checkShownIsServer(page, base)).transcript, conversation);
  log('restored from the uploaded file');

  await page.screenshot({ path: path.join(args.artifacts, 'chat_page.png'), fullPage: true });
  assert.deepEqual(problems, []);
}

try {
  await run();
  log(`passed; screenshot in ${path.join(args.artifacts, 'chat_page.png')}`);
} catch (e) {
  console.error(`FAILED: ${e.stack || e}`);
  const page = context && context.pages()[0];
  if (page) await page.screenshot({ path: path.join(args.artifacts, 'failure.png'), fullPage: true }).catch(() => {});
  process.exitCode = 1;
} finally {
  clearTimeout(deadline);
  if (context) await context.close().catch(() => {});
  cleanup();
}
