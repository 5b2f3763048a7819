// What the console and the docs page share: the token, requests that carry it, errors as the
// API words them, Server-Sent Events over fetch (EventSource can't send a token), and a small
// element builder (no innerHTML with data).

const TOKEN_KEY = 'vap-token';

export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY) || '',
  set: (t) => (t ? sessionStorage.setItem(TOKEN_KEY, t) : sessionStorage.removeItem(TOKEN_KEY)),
};

/** An answer the API refused, with its status, code, message and field (when it names one). */
export class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || `HTTP ${status}`);
    this.status = status;
    this.code = e.code || '';
    this.field = e.field || '';
  }
  /** The message a person reads: the API's own words, and the field they are about. */
  get wording() {
    return this.field ? `${this.field}: ${this.message}` : this.message;
  }
}

/** Listeners told when the API refuses the token (401), so the page can ask for another. */
export const refusals = new EventTarget();

function headers(extra = {}) {
  const h = { ...extra };
  const t = token.get();
  if (t) h.Authorization = `Bearer ${t}`;
  return h;
}

/** A request with the token; resolves to parsed JSON (or the Response with `raw`). */
export async function api(path, { method = 'GET', body, raw = false, extraHeaders = {} } = {}) {
  const init = { method, headers: headers(extraHeaders) };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers['Content-Type'] = 'application/json';
  }
  const r = await fetch(path, init);
  if (r.status === 401) {
    let b = null;
    try { b = await r.json(); } catch { /* not JSON */ }
    const err = new ApiError(401, b);
    refusals.dispatchEvent(new CustomEvent('refused', { detail: err }));
    throw err;
  }
  if (raw) return r;
  const text = await r.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { json = null; }
  if (!r.ok) throw new ApiError(r.status, json);
  return json;
}

/** A picture fetched with the token, as a blob: URL (revoke it when replaced). `etag`: 304 gives null. */
export async function picture(path, etag) {
  const r = await api(path, { raw: true, extraHeaders: etag ? { 'If-None-Match': etag } : {} });
  if (r.status === 304) return null;
  if (!r.ok) {
    let b = null;
    try { b = await r.json(); } catch { /* not JSON */ }
    throw new ApiError(r.status, b);
  }
  return { url: URL.createObjectURL(await r.blob()), etag: r.headers.get('ETag') };
}

/**
 * Follows a Server-Sent Events stream until `signal` aborts, reconnecting with Last-Event-ID.
 * `onEvent({event, id, data})` gets each event; `onState(text)` how the connection is.
 */
export async function follow(path, { onEvent, onState = () => {}, signal }) {
  let lastId = null;
  while (!signal.aborted) {
    try {
      const h = headers({ Accept: 'text/event-stream' });
      if (lastId !== null) h['Last-Event-ID'] = lastId;
      const r = await fetch(path, { headers: h, signal });
      if (r.status === 401) {
        refusals.dispatchEvent(new CustomEvent('refused', { detail: new ApiError(401, await r.json().catch(() => null)) }));
        return;
      }
      if (!r.ok) throw new ApiError(r.status, await r.json().catch(() => null));
      onState('live');
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const chunk = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const ev = { event: 'message', id: null, data: '' };
          for (const line of chunk.split('\n')) {
            if (line.startsWith('id: ')) ev.id = line.slice(4);
            else if (line.startsWith('event: ')) ev.event = line.slice(7);
            else if (line.startsWith('data: ')) ev.data += line.slice(6);
          }
          if (ev.id !== null) lastId = ev.id;
          if (ev.data) onEvent(ev);
        }
      }
    } catch (e) {
      if (signal.aborted) return;
      onState(`reconnecting (${e.message})`);
    }
    await new Promise((res) => setTimeout(res, 2000));
  }
}

/** `el('p', {class: 'x', onclick: f}, 'text', child)`: attributes, listeners and children. */
export function el(tag, attrs = {}, ...children) {
  const svg = ['svg', 'rect', 'polygon', 'polyline', 'line', 'text', 'g', 'circle', 'title'].includes(tag);
  const node = svg ? document.createElementNS('http://www.w3.org/2000/svg', tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else if (k === 'text') node.textContent = v;
    // Through CSSOM: the page's CSP refuses style attributes.
    else if (k === 'style') Object.assign(node.style, v);
    else node.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}
