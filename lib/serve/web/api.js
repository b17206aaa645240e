// The server's HTTP API as the page uses it: JSON calls, Server-Sent Event streams and state
// files. Every refusal becomes an ApiFailure carrying the server's OpenAI-style error.

export class ApiFailure extends Error {
  constructor(status, error) {
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.type = error.type || '';
    this.code = error.code || '';
    this.param = error.param || '';
  }
}

// A failed response's error object; a body that is not the API's error JSON still says something.
async function failure(response) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    if (body && body.error) return new ApiFailure(response.status, body.error);
  } catch {
    // not JSON: fall through
  }
  return new ApiFailure(response.status, { message: text.trim() || response.statusText || 'request failed' });
}

export class Api {
  constructor(apiKey) {
    this.apiKey = apiKey;  // a function: the key may change in the settings at any time
  }

  headers(contentType) {
    const h = {};
    if (contentType) h['Content-Type'] = contentType;
    const key = this.apiKey();
    if (key) h.Authorization = `Bearer ${key}`;
    return h;
  }

  async send(method, path, body, contentType = 'application/json') {
    let response;
    try {
      response = await fetch(path, {
        method,
        headers: this.headers(body === undefined ? '' : contentType),
        body: body === undefined || contentType !== 'application/json' ? body : JSON.stringify(body),
      });
    } catch (e) {
      throw new ApiFailure(0, { message: `the server cannot be reached (${e.message})`, type: 'network_error' });
    }
    if (!response.ok) throw await failure(response);
    return response;
  }

  async json(method, path, body) {
    const response = await this.send(method, path, body);
    return response.json();
  }

  // POSTs `body` and calls onData(record) for every `data:` record until [DONE]. An error
  // record inside the stream throws, as a refused request does.
  async stream(path, body, onData) {
    const response = await this.send('POST', path, body);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const record = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = record.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trim()).join('\n');
        if (!data || record.startsWith('event:')) continue;  // named events: prefill progress
        if (data === '[DONE]') return;
        const parsed = JSON.parse(data);
        if (parsed.error) throw new ApiFailure(response.status, parsed.error);
        onData(parsed);
      }
    }
  }

  async download(path) {
    const response = await this.send('GET', path);
    return response.blob();
  }
}
