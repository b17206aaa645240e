// The chat page's behaviour. A conversation is one session on the server, so each turn sends
// only the new message and the state carries the rest; replies stream in as tokens arrive;
// stop, regenerate and undo act on the last turn; checkpoints save and restore the session
// with its transcript.
import { Api, ApiFailure } from './api.js';
import { Settings } from './settings.js';
import * as view from './view.js';

const SESSION_KEY = 'mhla-chat.session';
const $ = (id) => document.getElementById(id);

const settings = new Settings($('settings'));
const api = new Api(() => settings.apiKey());

let session = null;  // the server's session object: id, position, state_bytes, turns, transcript
let busy = false;
let lastRun = null;  // figures of the last reply, for the status line

function refreshControls() {
  const transcript = session ? session.transcript : [];
  const lastIsReply = transcript.length > 0 && transcript[transcript.length - 1].role === 'assistant';
  view.setControls({
    busy,
    hasSession: session !== null,
    canUndo: session !== null && session.turns > 0,
    canRegenerate: session !== null && session.turns > 0 && lastIsReply,
  });
}

function adopt(info) {
  session = info;
  localStorage.setItem(SESSION_KEY, info.id);
  view.showTranscript(info.transcript);
  view.showStatus(lastRun, info);
  refreshControls();
}

function forget() {
  session = null;
  lastRun = null;
  localStorage.removeItem(SESSION_KEY);
  view.showTranscript([]);
  view.showStatus(null, null);
  refreshControls();
}

// Runs a user action; whatever the server refuses is shown on the page.
async function guarded(action) {
  view.clearError();
  try {
    await action();
  } catch (e) {
    view.showError(e instanceof ApiFailure ? e : { status: 0, message: String(e.message || e) });
  }
}

// One action at a time: while it runs, only Stop is live.
async function exclusive(action) {
  if (busy) return;
  busy = true;
  refreshControls();
  try {
    await guarded(action);
  } finally {
    busy = false;
    refreshControls();
  }
}

// After a failure the page shows what the server holds, not what it hoped for.
async function resync() {
  if (!session) return;
  try {
    adopt(await api.json('GET', `/v1/sessions/${session.id}`));
  } catch (e) {
    if (e.status === 404) forget();
  }
}

async function ensureSession() {
  if (session) return;
  const body = {};
  if (settings.policy()) body.policy = settings.policy();
  if (settings.systemPrompt()) body.messages = [{ role: 'system', content: settings.systemPrompt() }];
  adopt(await api.json('POST', '/v1/sessions', body));
}

// Streams a reply of the session's `generate` or `regenerate` into a new message; returns
// the finish reason (stop, length or cancelled).
async function streamReply(action, body) {
  const item = view.addMessage('assistant', '');
  item.dataset.streaming = 'true';
  const run = { tokens: 0, firstTokenMs: null, tokensPerSecond: null, usage: null };
  const started = performance.now();
  let first = null;
  let last = null;
  let text = '';
  let finish = null;
  try {
    await api.stream(
      `/v1/sessions/${session.id}/${action}`,
      { ...settings.sampling(), ...body, stream: true, stream_options: { include_usage: true } },
      (chunk) => {
        if (chunk.usage) run.usage = chunk.usage;
        const choice = chunk.choices && chunk.choices[0];
        if (!choice) return;
        const now = performance.now();
        if (choice.token_ids && choice.token_ids.length) {
          run.tokens += choice.token_ids.length;
          if (first === null) first = now;
          last = now;
        }
        if (choice.text) {
          text += choice.text;
          // The chat format puts a space after "Assistant:"; the transcript drops it too.
          view.setMessageText(item, text.replace(/^ /, ''));
        }
        if (choice.finish_reason) finish = choice.finish_reason;
      });
  } finally {
    delete item.dataset.streaming;
  }
  run.firstTokenMs = first === null ? null : first - started;
  run.tokensPerSecond = run.tokens > 1 && last > first ? (run.tokens - 1) / ((last - first) / 1000) : null;
  lastRun = run;
  return finish;
}

// The session as the server now has it, the reply marked when it did not end by itself.
async function afterReply(finish) {
  adopt(await api.json('GET', `/v1/sessions/${session.id}`));
  const reply = view.lastMessage('assistant');
  if (reply) view.setFinish(reply, finish);
}

async function send(text) {
  await exclusive(async () => {
    await ensureSession();
    $('input').value = '';
    view.addMessage('user', text);
    let finish;
    try {
      finish = await streamReply('generate', { messages: [{ role: 'user', content: text }] });
    } catch (e) {
      // Refused before the reply began: the message did not go in; keep it for another try.
      if (!(e instanceof ApiFailure) || e.status !== 200) $('input').value = text;
      await resync();
      throw e;
    }
    await afterReply(finish);
  });
}

async function regenerate() {
  await exclusive(async () => {
    const old = view.lastMessage('assistant');
    if (old) old.remove();
    let finish;
    try {
      finish = await streamReply('regenerate', {});
    } catch (e) {
      await resync();
      throw e;
    }
    await afterReply(finish);
  });
}

async function undo() {
  await exclusive(async () => {
    const before = session.transcript;
    const info = await api.json('POST', `/v1/sessions/${session.id}/undo`);
    // The message taken back returns to the input box, to edit and send again.
    const taken = before.slice(info.transcript.length).find((e) => e.role === 'user');
    if (taken && !$('input').value) $('input').value = taken.content;
    lastRun = null;
    adopt(info);
  });
}

async function stop() {
  if (!session) return;
  await guarded(() => api.json('POST', `/v1/sessions/${session.id}/cancel`));
}

// Sessions left behind would count against the server's limits until they expire.
async function dropSession(id) {
  try {
    await api.send('DELETE', `/v1/sessions/${id}`);
  } catch {
    // already gone, or the server will expire it (--session-ttl)
  }
}

async function newChat() {
  await exclusive(async () => {
    const old = session;
    forget();
    if (old) await dropSession(old.id);
  });
}

async function loadCheckpoints() {
  const list = await api.json('GET', '/v1/checkpoints');
  view.showCheckpoints(list.data, { restore, download, remove });
  refreshControls();
}

async function save() {
  await exclusive(async () => {
    const c = await api.json('POST', `/v1/sessions/${session.id}/checkpoint`);
    view.showNotice(`Saved as ${c.id}: ${c.messages} messages, ${c.position} tokens.`);
    await loadCheckpoints();
  });
}

async function restore(c) {
  await exclusive(async () => {
    const info = await api.json('POST', '/v1/sessions/restore', { checkpoint_id: c.id });
    const old = session;
    lastRun = null;
    adopt(info);
    if (old && old.id !== info.id) await dropSession(old.id);
    view.showNotice(`Restored ${c.id}: ${info.transcript.length} messages, ${info.position} tokens.`);
  });
}

async function download(c) {
  await guarded(async () => {
    const blob = await api.download(`/v1/checkpoints/${c.id}`);
    const a = document.createElement('a');
    a.href = URL.createObjectURL(blob);
    a.download = `${c.id}.mhst`;
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  });
}

async function remove(c) {
  await exclusive(async () => {
    await api.send('DELETE', `/v1/checkpoints/${c.id}`);
    await loadCheckpoints();
  });
}

async function upload(file) {
  await exclusive(async () => {
    const response = await api.send('POST', '/v1/checkpoints', file, 'application/octet-stream');
    const c = await response.json();
    view.showNotice(`Uploaded as ${c.id}: ${c.messages} messages, ${c.position} tokens. Restore it below.`);
    await loadCheckpoints();
  });
}

// What the server says about its model, the last conversation, and the saved ones.
async function load() {
  await guarded(async () => {
    const models = await api.json('GET', '/v1/models');
    const model = models.data[0];
    view.showModel(model);
    settings.offerPolicies(model.context_policies, model.default_policy);
    const id = localStorage.getItem(SESSION_KEY);
    if (id && (!session || session.id !== id)) {
      try {
        adopt(await api.json('GET', `/v1/sessions/${id}`));
      } catch (e) {
        if (e.status !== 404) throw e;
        forget();
        view.showNotice('The last conversation is no longer on the server (deleted or expired).');
      }
    }
    await loadCheckpoints();
  });
}

function wire() {
  $('composer').addEventListener('submit', (e) => {
    e.preventDefault();
    const text = $('input').value.trim();
    if (text) send(text);
  });
  $('input').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      $('composer').requestSubmit();
    }
  });
  $('stop').addEventListener('click', stop);
  $('regenerate').addEventListener('click', regenerate);
  $('undo').addEventListener('click', undo);
  $('new-chat').addEventListener('click', newChat);
  $('save').addEventListener('click', save);
  $('error-close').addEventListener('click', view.clearError);
  $('api_key').addEventListener('change', load);
  $('upload').addEventListener('change', async (e) => {
    const file = e.target.files[0];
    e.target.value = '';
    if (file) await upload(file);
  });
}

wire();
refreshControls();
await load();
document.body.dataset.ready = 'true';  // wired and loaded (the browser test waits for it)
