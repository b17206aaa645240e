// The settings form: sampling fields, system prompt, context policy and API key, kept in the
// browser's local storage between visits.

const STORAGE_KEY = 'mhla-chat.settings';
const SAMPLING = ['max_tokens', 'temperature', 'top_p', 'top_k', 'repetition_penalty', 'seed'];

export class Settings {
  constructor(form) {
    this.form = form;
    let saved = {};
    try {
      saved = JSON.parse(localStorage.getItem(STORAGE_KEY) || '{}');
    } catch {
      // a damaged entry: start from the form's defaults
    }
    for (const [name, value] of Object.entries(saved)) {
      const el = form.elements[name];
      if (!el) continue;
      if (el.type === 'checkbox') el.checked = value === true;
      else if (typeof value === 'string') el.value = value;
    }
    form.addEventListener('input', () => this.store());
    form.addEventListener('change', () => this.store());
    form.addEventListener('submit', (e) => e.preventDefault());
  }

  store() {
    const values = {};
    for (const el of this.form.elements) if (el.name) values[el.name] = el.type === 'checkbox' ? el.checked : el.value;
    localStorage.setItem(STORAGE_KEY, JSON.stringify(values));
  }

  value(name) {
    return this.form.elements[name].value.trim();
  }

  // The request fields of the sampling settings. Values go to the server as typed: its checks
  // and messages are the ones that count, so nothing is clamped here.
  sampling() {
    const fields = {};
    for (const name of SAMPLING) {
      const text = this.value(name);
      if (text !== '') fields[name] = Number(text);
    }
    if (this.form.elements.ignore_eos.checked) fields.ignore_eos = true;
    return fields;
  }

  systemPrompt() { return this.value('system'); }
  policy() { return this.value('policy'); }
  apiKey() { return this.value('api_key'); }

  // The policies the model offers, once /v1/models has answered.
  offerPolicies(policies, serverDefault) {
    const select = this.form.elements.policy;
    const chosen = select.value;
    select.options[0].textContent = `server default (${serverDefault})`;
    for (const p of policies) {
      if ([...select.options].some((o) => o.value === p)) continue;
      select.add(new Option(p, p));
    }
    select.value = chosen;
  }
}
