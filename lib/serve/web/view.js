// What the page shows: the messages, the error and notice lines, the status line and the
// checkpoint list. Text goes in as text (never as HTML): replies are the model's output.

const $ = (id) => document.getElementById(id);

const ROLE_NAMES = { user: 'You', assistant: 'Model', system: 'System', text: 'Text' };
const FINISH_NOTES = { cancelled: 'stopped', length: 'stopped at the token limit' };

function formatBytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function element(tag, className, text) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== undefined) el.textContent = text;
  return el;
}

export function addMessage(role, text) {
  const item = element('li', `message ${role}`);
  item.dataset.role = role;
  item.append(element('div', 'role', ROLE_NAMES[role] || role), element('div', 'content', text));
  $('messages').append(item);
  $('empty').hidden = true;
  item.scrollIntoView({ block: 'end' });
  return item;
}

export function setMessageText(item, text) {
  const content = item.querySelector('.content');
  content.textContent = text;
  content.classList.toggle('blank', text === '' && !item.dataset.streaming);
  item.scrollIntoView({ block: 'end' });
}

export function setFinish(item, reason) {
  const note = FINISH_NOTES[reason];
  if (!note) return;
  item.dataset.finish = reason;
  item.append(element('div', 'note', note));
}

export function showTranscript(transcript) {
  $('messages').replaceChildren();
  for (const entry of transcript) {
    const item = addMessage(entry.role, entry.content);
    setMessageText(item, entry.content);
  }
  $('empty').hidden = transcript.length > 0;
}

export function lastMessage(role) {
  const items = $('messages').querySelectorAll(`li[data-role="${role}"]`);
  return items.length ? items[items.length - 1] : null;
}

// A refused request: the server's own message, and what kind of refusal it was.
export function showError(failure) {
  const parts = [failure.status ? `${failure.status}` : '', failure.code || failure.type].filter(Boolean);
  $('error-title').textContent = parts.length ? `The server refused (${parts.join(', ')}):` : 'Error:';
  let message = failure.message;
  if (failure.status === 401) message += ' (enter the key under API key)';
  $('error-message').textContent = message;
  $('error').hidden = false;
}

export function clearError() {
  $('error').hidden = true;
}

let noticeTimer;
export function showNotice(text) {
  const n = $('notice');
  n.textContent = text;
  n.hidden = false;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => { n.hidden = true; }, 8000);
}

export function showModel(model) {
  $('model').textContent = `${model.id} · trained window ${model.trained_window.toLocaleString('en')} tokens`;
}

// One line on the last reply and the session it left behind.
export function showStatus(run, session) {
  const parts = [];
  if (run) {
    parts.push(`${run.tokens} tokens`);
    if (run.tokensPerSecond !== null) parts.push(`${run.tokensPerSecond.toFixed(1)} tokens/s`);
    if (run.firstTokenMs !== null) parts.push(`first token ${Math.round(run.firstTokenMs)} ms`);
    if (run.usage) {
      const fresh = run.usage.prompt_tokens - run.usage.prompt_tokens_details.cached_tokens;
      parts.push(`prefilled ${fresh} new tokens, ${run.usage.prompt_tokens_details.cached_tokens} already in the session`);
    }
  }
  if (session && session.state_bytes !== undefined)
    parts.push(`state ${formatBytes(session.state_bytes)} at position ${session.position.toLocaleString('en')}`);
  $('status').textContent = parts.length ? parts.join(' · ') : 'No reply yet.';
}

export function showCheckpoints(list, actions) {
  const ul = $('checkpoints');
  ul.replaceChildren();
  if (!list.length) ul.append(element('li', 'muted small', 'None saved yet.'));
  for (const c of [...list].reverse()) {
    const li = element('li', 'checkpoint');
    li.dataset.id = c.id;
    const when = new Date(c.created_at * 1000).toLocaleString('en-GB', { dateStyle: 'short', timeStyle: 'short' });
    li.append(element('div', 'small', `${when} · ${c.messages} messages · ${c.position} tokens · ${formatBytes(c.bytes)}`));
    li.append(element('div', 'muted small id', c.source === 'upload' ? `${c.id} (uploaded)` : c.id));
    const buttons = element('div', 'row');
    for (const [label, action] of [['Restore', actions.restore], ['Download', actions.download], ['Delete', actions.remove]]) {
      const b = element('button', 'small', label);
      b.type = 'button';
      b.dataset.action = label.toLowerCase();
      b.addEventListener('click', () => action(c));
      buttons.append(b);
    }
    li.append(buttons);
    ul.append(li);
  }
}

// While a reply streams only Stop is live; the rest follows what the session allows.
export function setControls({ busy, hasSession, canUndo, canRegenerate }) {
  $('send').disabled = busy;
  $('stop').disabled = !busy;
  $('regenerate').disabled = busy || !canRegenerate;
  $('undo').disabled = busy || !canUndo;
  $('save').disabled = busy || !hasSession;
  $('new-chat').disabled = busy;
  for (const b of $('checkpoints').querySelectorAll('button')) b.disabled = busy;
  $('upload').disabled = busy;
}
