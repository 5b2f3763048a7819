// /docs: every route of the served OpenAPI document with its parameters, request and response
// schemas and examples, and a form to send the request from the page (with the tab's token).
import { el, token } from './common.js';

const ops = document.getElementById('ops');
const tokenInput = document.getElementById('docs-token');
tokenInput.value = token.get();
document.getElementById('docs-token-save').addEventListener('click', () => token.set(tokenInput.value.trim()));

let spec = null;
const resolve = (s) => {
  let seen = 0;
  while (s && s.$ref && seen++ < 20) s = s.$ref.split('/').slice(1).reduce((o, k) => (o ? o[k] : undefined), spec);
  if (s && s.allOf) {
    // One schema of all the parts' fields, as a reader needs it.
    const parts = s.allOf.map(resolve);
    const merged = { ...s, type: 'object', properties: {}, required: [...(s.required || [])] };
    delete merged.allOf;
    for (const p of parts) {
      Object.assign(merged.properties, p.properties || {});
      merged.required.push(...(p.required || []));
      if (!merged.description && p.description) merged.description = p.description;
    }
    return merged;
  }
  return s || {};
};

/** A schema as nested lists: field, type, required, description. */
function schemaView(schema, depth = 0) {
  const s = resolve(schema);
  if (depth > 4) return el('span', { class: 'muted' }, '…');
  const type = (x) => {
    const r = resolve(x);
    const ref = x && x.$ref ? x.$ref.split('/').pop() : '';
    const t = r.type === 'array' ? `array of ${type(r.items || {})}` : (Array.isArray(r.type) ? r.type.join(' | ') : r.type || (r.oneOf ? 'one of' : r.anyOf ? 'any of' : 'object'));
    return ref ? `${ref} (${t})` : t;
  };
  const facts = (r) => [r.enum ? `one of ${r.enum.join(', ')}` : '', r.minimum !== undefined ? `min ${r.minimum}` : '',
    r.maximum !== undefined ? `max ${r.maximum}` : '', r.format ? r.format : ''].filter(Boolean).join('; ');
  if (s.properties) {
    const required = new Set(s.required || []);
    return el('ul', {}, Object.entries(s.properties).map(([k, v]) => {
      const r = resolve(v);
      const inner = r.properties ? schemaView(r, depth + 1) : r.type === 'array' && resolve(r.items).properties ? schemaView(r.items, depth + 1) : null;
      return el('li', {}, el('code', {}, k), ` ${type(v)}${required.has(k) ? ', required' : ''}`,
        facts(r) ? el('span', { class: 'muted' }, ` (${facts(r)})`) : '', r.description ? ` — ${r.description}` : '', inner);
    }));
  }
  if (s.type === 'array') return el('div', {}, 'array of ', schemaView(s.items || {}, depth + 1));
  return el('span', {}, type(schema), facts(s) ? ` (${facts(s)})` : '');
}

/** An example for a schema: its own, or one made from its fields. */
function example(schema, depth = 0) {
  const s = resolve(schema);
  if (s.example !== undefined) return s.example;
  if (depth > 5) return null;
  if (s.properties) {
    const o = {};
    for (const [k, v] of Object.entries(s.properties)) {
      if ((s.required || []).includes(k) || depth === 0) o[k] = example(v, depth + 1);
    }
    return o;
  }
  if (s.type === 'array') return [example(s.items || {}, depth + 1)];
  if (s.enum) return s.enum[0];
  const t = Array.isArray(s.type) ? s.type.find((x) => x !== 'null') : s.type;
  return { string: s.format === 'uuid' ? '00000000-0000-0000-0000-000000000000' : 'string', integer: 0, number: 0, boolean: false }[t] ?? null;
}

function tryIt(path, method, op) {
  const params = (op.parameters || []).map(resolve).filter((p) => p.in === 'path' || p.in === 'query' || p.in === 'header');
  const id = `${method}-${path}`.replace(/[^a-z0-9]+/gi, '-');
  const inputs = params.map((p) => {
    const input = el('input', { id: `${id}-${p.name}`, 'data-in': p.in, 'data-name': p.name, required: p.required, autocomplete: 'off' });
    return el('div', {}, el('label', { for: `${id}-${p.name}` }, `${p.name} (${p.in}${p.required ? ', required' : ''})`), input);
  });
  const media = op.requestBody && op.requestBody.content && op.requestBody.content['application/json'];
  const body = media ? el('textarea', { id: `${id}-body`, 'aria-label': 'Request body (JSON)' }) : null;
  if (body) body.value = JSON.stringify(media.example ?? example(media.schema), null, 2);
  const out = el('pre', { 'aria-live': 'polite', id: `${id}-out` });
  const send = el('button', { type: 'button', class: 'primary' }, 'Send');
  send.addEventListener('click', async () => {
    let url = path;
    const query = new URLSearchParams();
    const headers = {};
    for (const i of inputs.map((d) => d.querySelector('input'))) {
      const v = i.value;
      if (!v) continue;
      if (i.dataset.in === 'path') url = url.replace(`{${i.dataset.name}}`, encodeURIComponent(v));
      else if (i.dataset.in === 'query') query.set(i.dataset.name, v);
      else headers[i.dataset.name] = v;
    }
    if (token.get()) headers.Authorization = `Bearer ${token.get()}`;
    if (body) headers['Content-Type'] = 'application/json';
    const q = query.toString();
    out.textContent = `${method.toUpperCase()} ${url}${q ? '?' + q : ''} …`;
    try {
      const ctl = new AbortController();
      const r = await fetch(url + (q ? '?' + q : ''), { method: method.toUpperCase(), headers, body: body ? body.value : undefined, signal: ctl.signal });
      const type = r.headers.get('content-type') || '';
      let text;
      if (type.startsWith('text/event-stream')) {
        // A stream: show what arrives in the first seconds, then stop.
        const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
        text = '';
        const until = Date.now() + 3000;
        while (Date.now() < until) {
          const next = await Promise.race([reader.read(), new Promise((res) => setTimeout(() => res({ timeout: true }), until - Date.now()))]);
          if (next.timeout || next.done) break;
          text += next.value;
        }
        ctl.abort();
        text += '\n(stream shown for 3 s)';
      } else if (type.startsWith('image/')) {
        text = `(${type}, ${(await r.blob()).size} bytes)`;
      } else {
        text = await r.text();
        try { text = JSON.stringify(JSON.parse(text), null, 2); } catch { /* as is */ }
      }
      out.textContent = `HTTP ${r.status} ${r.statusText}\n${text}`;
    } catch (e) {
      out.textContent = `Request failed: ${e.message}`;
    }
  });
  return el('div', { class: 'panel' }, el('h4', {}, 'Try it'), inputs,
    body ? el('label', { for: `${id}-body` }, 'Request body (JSON)') : null, body, el('div', { class: 'row' }, send), out);
}

function operation(path, method, op) {
  const params = (op.parameters || []).map(resolve);
  const media = op.requestBody && op.requestBody.content && op.requestBody.content['application/json'];
  return el('details', { class: 'op', id: `op-${method}-${path}` },
    el('summary', {}, el('span', { class: `m ${method}` }, method), ' ', el('code', {}, path), ` — ${op.summary || ''}`),
    op.description ? el('p', {}, op.description) : null,
    params.length ? el('div', {}, el('h4', {}, 'Parameters'), el('table', {},
      el('thead', {}, el('tr', {}, ['name', 'in', 'type', 'about'].map((h) => el('th', { scope: 'col' }, h)))),
      el('tbody', {}, params.map((p) => el('tr', {}, el('td', {}, el('code', {}, p.name), p.required ? ' *' : ''), el('td', {}, p.in),
        el('td', {}, schemaView(p.schema || {})), el('td', {}, p.description || '')))))) : null,
    media ? el('div', {}, el('h4', {}, 'Request body'), schemaView(media.schema),
      el('p', {}, 'Example:'), el('pre', {}, JSON.stringify(media.example ?? example(media.schema), null, 2))) : null,
    el('h4', {}, 'Responses'),
    el('table', {}, el('thead', {}, el('tr', {}, ['status', 'meaning', 'body'].map((h) => el('th', { scope: 'col' }, h)))),
      el('tbody', {}, Object.entries(op.responses || {}).map(([code, r]) => {
        const content = r.content || {};
        const [type, m] = Object.entries(content)[0] || [];
        const bodyCell = !m ? '' : type === 'application/json'
          ? el('details', {}, el('summary', {}, type), schemaView(m.schema || {}), el('pre', {}, JSON.stringify(m.example ?? example(m.schema || {}), null, 2)))
          : type;
        return el('tr', {}, el('td', {}, code), el('td', {}, r.description || ''), el('td', {}, bodyCell));
      }))),
    tryIt(path, method, op));
}

fetch('/openapi.json').then((r) => r.json()).then((doc) => {
  spec = doc;
  document.getElementById('title').textContent = `${doc.info.title} ${doc.info.version}`;
  document.getElementById('desc').textContent = doc.info.description;
  ops.replaceChildren(...Object.entries(doc.paths).flatMap(([path, item]) =>
    Object.entries(item).filter(([m]) => ['get', 'post', 'patch', 'put', 'delete'].includes(m)).map(([m, op]) => operation(path, m, op))));
}).catch((e) => { ops.textContent = `Could not load openapi.json: ${e.message}`; });
