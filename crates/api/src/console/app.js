// The vap console: scenarios (list, add, stop, hide), a scenario's live picture with boxes,
// its events and counts, and an editor for zones, lines and masks. Everything comes from the
// public API with the tab's token; nothing here is privileged.
import { api, picture, follow, el, token, refusals, ApiError } from './common.js';

const main = document.getElementById('main');
const noticeBox = document.getElementById('notice');
const RUNNING = ['init_startup', 'in_startup_processing', 'active'];
const HIDDEN_KEY = 'vap-hidden';
let view = null;
let modelsCache = null;

const notice = (text) => { noticeBox.textContent = text; };
const wording = (e) => (e instanceof ApiError ? e.wording : e.message);

// ---- the token --------------------------------------------------------------------------
const login = document.getElementById('login');
const forget = document.getElementById('forget-token');
refusals.addEventListener('refused', (e) => {
  const why = document.getElementById('login-why');
  why.textContent = token.get()
    ? `The API refused this token: ${e.detail.message}`
    : `This API needs a token: ${e.detail.message}`;
  if (!login.open) login.showModal();
  document.getElementById('login-token').focus();
});
document.getElementById('login-form').addEventListener('submit', (e) => {
  e.preventDefault();
  token.set(document.getElementById('login-token').value.trim());
  document.getElementById('login-token').value = '';
  login.close();
  forget.hidden = !token.get();
  route();
});
forget.hidden = !token.get();
forget.addEventListener('click', () => { token.set(''); forget.hidden = true; route(); });

// ---- routing ----------------------------------------------------------------------------
function route() {
  if (view) view.stop();
  notice('');
  const m = location.hash.match(/^#\/scenario\/([0-9a-fA-F-]{36})$/);
  view = m ? scenarioPage(m[1]) : listPage();
}
window.addEventListener('hashchange', route);

async function models() {
  if (!modelsCache) modelsCache = await api('/api/v1/models');
  return modelsCache;
}

const age = (t) => {
  if (!t) return '—';
  const s = Math.max(0, (Date.now() - Date.parse(t)) / 1000);
  return s < 90 ? `${s.toFixed(0)} s ago` : s < 5400 ? `${(s / 60).toFixed(0)} min ago` : new Date(t).toLocaleString();
};
const nameOf = (s) => s.options.name || s.scenario_uuid.slice(0, 8);
const statusBadge = (status) => el('span', { class: 'status', 'data-status': status }, status);
const workerText = (w) => (w ? `${w.backend}${w.node ? ' @ ' + w.node : ''} (${w.status})` : '—');

// ---- the scenario list ------------------------------------------------------------------
function listPage() {
  const hidden = new Set(JSON.parse(localStorage.getItem(HIDDEN_KEY) || '[]'));
  let showHidden = false;
  const tbody = el('tbody');
  const error = el('p', { class: 'error', role: 'alert' });
  const toggle = el('button', { type: 'button', 'aria-pressed': 'false' });
  const heads = ['Name', 'Camera', 'Status', 'Analysed fps', 'Last frame', 'Worker', 'Restarts', 'Actions'];
  const table = el('table', { class: 'scenarios', 'aria-label': 'Scenarios' },
    el('thead', {}, el('tr', {}, heads.map((h) => el('th', { scope: 'col' }, h)))), tbody);
  main.replaceChildren(el('h1', {}, 'Scenarios'), error, el('div', { class: 'table-wrap' }, table),
    el('div', { class: 'row' }, toggle), addForm());
  let last = [];

  const saveHidden = () => localStorage.setItem(HIDDEN_KEY, JSON.stringify([...hidden]));
  toggle.addEventListener('click', () => { showHidden = !showHidden; render(last); });

  async function stop(s, button) {
    button.disabled = true;
    try {
      await api(`/api/v1/scenario/${s.scenario_uuid}/shutdown`, { method: 'POST' });
      error.textContent = '';
      refresh();
    } catch (e) {
      error.textContent = `Stopping ${nameOf(s)}: ${wording(e)}`;
      button.disabled = false;
    }
  }

  let drawn = '';
  async function remove(s, button) {
    if (!window.confirm(`Delete ${nameOf(s)} with all its results, events and snapshots? This cannot be undone.`)) return;
    button.disabled = true;
    try {
      await api(`/api/v1/scenario/${s.scenario_uuid}`, { method: 'DELETE' });
      hidden.delete(s.scenario_uuid);
      saveHidden();
      error.textContent = '';
      refresh();
    } catch (e) {
      error.textContent = `Deleting ${nameOf(s)}: ${wording(e)}`;
      button.disabled = false;
    }
  }

  function render(list) {
    last = list;
    // Redrawn only when something changed, and focus kept: a keyboard user's place survives.
    const key = JSON.stringify([list, showHidden, [...hidden]]);
    if (key === drawn) return;
    drawn = key;
    const focused = document.activeElement && tbody.contains(document.activeElement)
      ? document.activeElement.getAttribute('aria-label') : null;
    const shown = list.filter((s) => showHidden || !hidden.has(s.scenario_uuid));
    toggle.textContent = showHidden ? 'Hide hidden scenarios' : `Show hidden scenarios (${list.length - shown.length})`;
    toggle.setAttribute('aria-pressed', String(showHidden));
    tbody.replaceChildren(...shown.map((s) => {
      const isHidden = hidden.has(s.scenario_uuid);
      const stopButton = el('button', { type: 'button', class: 'danger', 'aria-label': `Stop ${nameOf(s)}` }, 'Stop');
      stopButton.addEventListener('click', () => stop(s, stopButton));
      const finished = ['inactive', 'failed'].includes(s.status);
      const deleteButton = el('button', { type: 'button', class: 'danger', 'aria-label': `Delete ${nameOf(s)}` }, 'Delete');
      deleteButton.addEventListener('click', () => remove(s, deleteButton));
      const hideButton = el('button', { type: 'button', 'aria-label': `${isHidden ? 'Unhide' : 'Hide'} ${nameOf(s)}`,
        onclick: () => { isHidden ? hidden.delete(s.scenario_uuid) : hidden.add(s.scenario_uuid); saveHidden(); render(last); } },
      isHidden ? 'Unhide' : 'Hide');
      return el('tr', { 'data-scenario': s.scenario_uuid },
        el('td', {}, el('a', { href: `#/scenario/${s.scenario_uuid}` }, nameOf(s))),
        el('td', { class: 'muted' }, s.camera_url),
        el('td', {}, statusBadge(s.status), s.error ? el('div', { class: 'error' }, s.error) : null),
        el('td', { class: 'num' }, s.health.analysed_fps ?? '—'),
        el('td', {}, age(s.health.last_frame_at)),
        el('td', {}, workerText(s.worker)),
        el('td', { class: 'num' }, s.worker ? s.worker.restarts : '—'),
        el('td', {}, el('div', { class: 'row' }, RUNNING.includes(s.status) ? stopButton : null, finished ? deleteButton : null, hideButton)));
    }));
    if (!shown.length) tbody.append(el('tr', {}, el('td', { colspan: heads.length, class: 'muted' }, 'No scenarios yet: add one below.')));
    if (focused) [...tbody.querySelectorAll('button')].find((b) => b.getAttribute('aria-label') === focused)?.focus();
  }

  async function refresh() {
    try {
      const page = await api('/api/v1/scenarios?limit=200');
      error.textContent = '';
      render(page.scenarios);
    } catch (e) {
      if (e.status !== 401) error.textContent = wording(e);
    }
  }
  refresh();
  const timer = setInterval(refresh, 3000);
  return { stop: () => clearInterval(timer) };
}

/** The form that adds a scenario, with every option the API takes. */
function addForm() {
  const error = el('p', { class: 'error', role: 'alert', id: 'add-error' });
  const field = (id, label, attrs = {}, hint = '') => [
    el('label', { for: id }, label),
    el('input', { id, name: id, ...attrs }),
    hint ? el('div', { class: 'muted', id: `${id}-hint` }, hint) : null,
  ];
  const modelSelect = el('select', { id: 'model', name: 'model' });
  const classes = el('fieldset', { id: 'classes' }, el('legend', {}, 'Classes (none ticked: every class of the model)'));
  const regions = el('textarea', { id: 'regions', name: 'regions', 'aria-describedby': 'regions-hint',
    placeholder: '{"zones": [], "lines": [], "mask": []}' });
  const form = el('form', { class: 'panel', id: 'add-scenario', 'aria-labelledby': 'add-title', novalidate: true },
    el('h2', { id: 'add-title' }, 'Add a scenario'),
    error,
    field('camera_url', 'Camera URL (rtsp://, http(s):// or a file path)', { required: true, autocomplete: 'off', size: 60 }),
    el('div', { class: 'grid' },
      el('div', {}, field('name', 'Name', { autocomplete: 'off' })),
      el('div', {}, el('label', { for: 'model' }, 'Model'), modelSelect),
      el('div', {}, field('fps', 'Analysed frames per second', { type: 'number', min: '0.1', max: '30', step: 'any' })),
      el('div', {}, field('min_confidence', 'Minimum confidence (0 to 1)', { type: 'number', min: '0', max: '1', step: 'any' })),
      el('div', {}, field('snapshot_interval_s', 'Snapshot every (s)', { type: 'number', min: '0.5', max: '3600', step: 'any' })),
      el('div', {}, field('retention_days', 'Keep results for (days; empty: the server\'s)', { type: 'number', min: '1', max: '36500', step: '1' })),
      el('div', {}, field('webhook_url', 'Webhook URL', { type: 'url', autocomplete: 'off' })),
      el('div', {}, el('label', { for: 'decode' }, 'Decode'),
        el('select', { id: 'decode', name: 'decode' },
          el('option', { value: 'all' }, 'every frame'),
          el('option', { value: 'reference' }, 'reference frames (skips B-frames)'),
          el('option', { value: 'keyframes' }, 'key frames only (cheapest)'))),
      el('div', {}, el('label', {}, el('input', { type: 'checkbox', id: 'motion_gating', name: 'motion_gating', checked: true }),
        ' Run the detector only when the picture moves'))),
    classes,
    el('details', {}, el('summary', {}, 'Zones, lines and mask as JSON (or draw them on the picture later)'),
      el('label', { for: 'regions' }, 'Regions'), regions,
      el('div', { class: 'muted', id: 'regions-hint' }, 'Normalised coordinates 0..1, origin top left; see /docs for the fields.')),
    el('div', { class: 'row' }, el('button', { type: 'submit', class: 'primary' }, 'Add scenario')));

  models().then((m) => {
    modelSelect.replaceChildren(...m.models.map((x) => el('option', { value: x.name, selected: x.default }, x.name)));
    const showClasses = () => {
      const model = m.models.find((x) => x.name === modelSelect.value);
      classes.replaceChildren(classes.firstChild, ...(model ? model.classes : []).map((c) =>
        el('label', {}, el('input', { type: 'checkbox', name: 'class', value: c }), c)));
    };
    modelSelect.addEventListener('change', showClasses);
    showClasses();
  }).catch((e) => { if (e.status !== 401) error.textContent = `Models: ${wording(e)}`; });

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const body = { camera_url: form.camera_url.value.trim() };
    for (const k of ['name', 'webhook_url']) if (form[k].value.trim()) body[k] = form[k].value.trim();
    for (const k of ['fps', 'min_confidence', 'snapshot_interval_s', 'retention_days']) if (form[k].value !== '') body[k] = Number(form[k].value);
    if (modelSelect.value) body.model = modelSelect.value;
    if (form.decode.value !== 'all') body.decode = form.decode.value;
    if (!form.motion_gating.checked) body.motion_gating = false;
    const ticked = [...form.querySelectorAll('input[name=class]:checked')].map((i) => i.value);
    if (ticked.length) body.classes = ticked;
    if (regions.value.trim()) {
      try {
        Object.assign(body, JSON.parse(regions.value));
      } catch (err) {
        error.textContent = `Regions: not JSON (${err.message})`;
        regions.focus();
        return;
      }
    }
    try {
      const created = await api('/api/v1/scenario/init', { method: 'POST', body });
      location.hash = `#/scenario/${created.scenario_uuid}`;
    } catch (err) {
      error.textContent = wording(err);
      const target = err.field && form.querySelector(`#${CSS.escape(err.field.split(/[[.]/)[0])}`);
      (target || error).focus?.();
    }
  });
  return form;
}

// ---- a scenario's page ------------------------------------------------------------------
function scenarioPage(uuid) {
  const ctl = new AbortController();
  const timers = [];
  let scenario = null;
  let snap = null; // the latest snapshot's JSON
  let imageUrl = null;
  const title = el('h1', {}, 'Scenario');
  const facts = el('p', { class: 'muted', id: 'facts' });
  const error = el('p', { class: 'error', role: 'alert' });
  const stopButton = el('button', { type: 'button', class: 'danger', id: 'stop' }, 'Stop scenario');
  const img = el('img', { alt: '' });
  const overlay = el('svg', { class: 'overlay', viewBox: '0 0 640 480', preserveAspectRatio: 'none', role: 'img', 'aria-label': 'Detections' });
  const empty = el('div', { class: 'empty' }, 'No picture yet');
  const stage = el('figure', { class: 'stage', id: 'stage' }, img, overlay, empty);
  const caption = el('p', { class: 'muted', id: 'picture-caption', 'aria-live': 'off' });
  const streamState = el('span', { class: 'muted', id: 'stream-state' }, 'connecting');
  const eventsList = el('ol', { class: 'events', id: 'events', 'aria-label': 'Recent events' });
  const countsBox = el('div', { id: 'counts' });
  const editor = regionEditor(ctl.signal);
  main.replaceChildren(
    el('p', {}, el('a', { href: '#/' }, '← Scenarios')),
    title, facts, error, el('div', { class: 'row' }, stopButton),
    el('div', { class: 'scenario-layout' },
      el('section', { 'aria-labelledby': 'live-title' }, el('h2', { id: 'live-title' }, 'Live picture ', streamState), stage, caption, editor.node),
      el('section', {},
        el('h2', {}, 'Counts'), countsBox,
        el('h2', {}, 'Recent events'), eventsList)));

  stopButton.addEventListener('click', async () => {
    stopButton.disabled = true;
    try {
      scenario = await api(`/api/v1/scenario/${uuid}/shutdown`, { method: 'POST' });
      showScenario();
    } catch (e) {
      error.textContent = wording(e);
      stopButton.disabled = false;
    }
  });

  function showScenario() {
    const s = scenario;
    title.textContent = nameOf(s);
    facts.replaceChildren(statusBadge(s.status), ` ${s.camera_url} · model ${s.options.model} at ${s.options.fps} fps · `,
      `analysed ${s.health.analysed_fps ?? '—'} fps, last frame ${age(s.health.last_frame_at)} · worker ${workerText(s.worker)}`,
      s.worker ? ` · restarts ${s.worker.restarts}` : '', s.worker && s.worker.epoch != null ? ` · placement ${s.worker.epoch}` : '',
      s.worker && s.worker.moved ? ` · moved from ${s.worker.moved.previous_node} ${age(s.worker.moved.moved_at)}: ${s.worker.moved.reason}` : '',
      s.error ? el('span', { class: 'error' }, ` · ${s.error}`) : '');
    stopButton.hidden = !RUNNING.includes(s.status);
    editor.load(s);
    drawOverlay();
  }

  async function loadScenario() {
    try {
      scenario = await api(`/api/v1/scenario/${uuid}`);
      showScenario();
    } catch (e) {
      if (e.status !== 401) error.textContent = wording(e);
    }
  }

  // The picture: the snapshot's JSON says which detections it shows; the JPEG is fetched only
  // when it changed (ETag), as a blob: URL (it needs the token).
  let fetching = false;
  let lastFetch = 0;
  async function refreshPicture() {
    if (fetching) return;
    fetching = true;
    lastFetch = Date.now();
    try {
      let info = await api(`/api/v1/scenario/${uuid}/snapshot`);
      if (!snap || info.etag !== snap.etag) {
        const got = await picture(info.image, snap && snap.etag);
        if (!got) return;
        // A newer one may have been stored between the two reads: its boxes, not the older's.
        if (got.etag !== info.etag) info = await api(`/api/v1/scenario/${uuid}/snapshot`);
        if (got.etag !== info.etag) { URL.revokeObjectURL(got.url); return; }
        if (imageUrl) URL.revokeObjectURL(imageUrl);
        imageUrl = got.url;
        img.src = imageUrl;
        img.alt = `Frame ${info.frame_number} of ${title.textContent}`;
        snap = info;
        empty.hidden = true;
        caption.textContent = `Frame ${info.frame_number}, captured ${new Date(info.captured_at).toLocaleTimeString()}, ${info.detections.length} detection(s)`;
        drawOverlay();
      }
    } catch (e) {
      if (e.code === 'no_snapshot') caption.textContent = e.message;
      else if (e.status !== 401) error.textContent = wording(e);
    } finally {
      fetching = false;
    }
  }
  const maybeRefreshPicture = () => { if (Date.now() - lastFetch > 1000) refreshPicture(); };

  function drawOverlay() {
    const w = snap ? snap.frame_width : 640;
    const h = snap ? snap.frame_height : 480;
    overlay.setAttribute('viewBox', `0 0 ${w} ${h}`);
    stage.style.aspectRatio = `${w} / ${h}`;
    const parts = [];
    for (const r of editor.shapes()) parts.push(regionShape(r, w, h));
    for (const d of snap ? snap.detections : []) {
      const [x0, y0, x1, y1] = d.bbox;
      const label = `${d.class} ${d.confidence.toFixed(2)}${d.track_id != null ? ' #' + d.track_id : ''}`;
      const colour = colourOf(d.class);
      parts.push(el('g', { class: 'det', 'data-class': d.class, 'data-track': d.track_id ?? '' },
        el('title', {}, label),
        el('rect', { x: x0, y: y0, width: x1 - x0, height: y1 - y0, stroke: colour }),
        el('text', { x: x0 + 2, y: y0 > 18 ? y0 - 5 : y0 + 16 }, label)));
    }
    overlay.replaceChildren(...parts);
  }
  editor.onChange = drawOverlay;
  editor.overlay = overlay;
  editor.stage = stage;

  // Events: the last 30 and each new one, newest first, each with its snapshot.
  const thumbs = new Map(); // row -> blob: URL
  function addEvent(e) {
    // A camera's own events (offline, online, moved) say why in their detail.
    const where = e.zone ? `zone ${e.zone}` : e.line ? `line ${e.line}${e.direction ? ' (' + e.direction + ')' : ''}` : (e.detail || '');
    const thumb = el('img', { alt: `Snapshot of ${e.kind}`, width: 120, height: 90 });
    const li = el('li', { 'data-kind': e.kind },
      thumb,
      el('div', {}, el('strong', {}, e.kind.replace(/_/g, ' ')), ` ${where}`,
        el('div', { class: 'muted' }, `${e.class || ''}${e.track_id != null ? ' #' + e.track_id : ''} · ${new Date(e.timestamp).toLocaleTimeString()}`,
          e.dwell_seconds != null ? ` · ${e.dwell_seconds.toFixed(1)} s` : '')));
    eventsList.prepend(li);
    while (eventsList.children.length > 30) {
      const gone = eventsList.lastChild;
      if (thumbs.has(gone)) URL.revokeObjectURL(thumbs.get(gone));
      thumbs.delete(gone);
      gone.remove();
    }
    picture(`/api/v1/scenario/${uuid}/events/${e.event_id}/snapshot.jpg?boxes=1`, null)
      .then((p) => {
        if (!p) return;
        if (!li.isConnected || ctl.signal.aborted) { URL.revokeObjectURL(p.url); return; }
        thumbs.set(li, p.url);
        thumb.src = p.url;
      })
      .catch(() => { thumb.replaceWith(el('span', { class: 'muted' }, 'no picture')); });
    countsSoon();
  }

  // Counts per zone or line and class, per minute: a chart and the totals.
  let countsTimer = null;
  const countsSoon = () => { if (!countsTimer) countsTimer = setTimeout(() => { countsTimer = null; loadCounts(); }, 1000); };
  async function loadCounts() {
    try {
      const c = await api(`/api/v1/scenario/${uuid}/counts?bucket=1m`);
      countsBox.replaceChildren(countsView(c.counts));
    } catch (e) {
      if (e.status !== 401) countsBox.textContent = wording(e);
    }
  }

  loadScenario().then(refreshPicture);
  loadCounts();
  timers.push(setInterval(loadScenario, 3000), setInterval(maybeRefreshPicture, 5000), setInterval(loadCounts, 10000));
  follow(`/api/v1/prediction/${uuid}/stream`, {
    signal: ctl.signal,
    onEvent: maybeRefreshPicture,
    onState: (s) => { streamState.textContent = `(${s})`; },
  });
  follow(`/api/v1/scenario/${uuid}/events/stream?tail=30`, {
    signal: ctl.signal,
    onEvent: (ev) => { if (ev.event === 'scene_event') addEvent(JSON.parse(ev.data)); },
  });
  return {
    stop() {
      ctl.abort();
      timers.forEach(clearInterval);
      if (imageUrl) URL.revokeObjectURL(imageUrl);
      thumbs.forEach((url) => URL.revokeObjectURL(url));
    },
  };
}

const PALETTE = ['#ff4040', '#40c8ff', '#ffc800', '#78ff78', '#ff78ff', '#ffa03c'];
function colourOf(name) {
  let h = 7;
  for (const ch of new TextEncoder().encode(name)) h = (Math.imul(h, 31) + ch) >>> 0;
  return PALETTE[h % PALETTE.length];
}

/** A zone, line or mask polygon in the overlay's frame coordinates. */
function regionShape(r, w, h) {
  const pts = r.points.map(([x, y]) => `${x * w},${y * h}`).join(' ');
  const cls = `${r.kind}${r.pending ? ' pending' : ''}`;
  const [lx, ly] = r.points[0] ? [r.points[0][0] * w, r.points[0][1] * h] : [0, 0];
  const shape = r.kind === 'line'
    ? el('polyline', { class: cls, points: pts })
    : el('polygon', { class: cls, points: pts });
  return el('g', { 'data-region': `${r.kind}:${r.name || ''}` }, shape,
    r.name ? el('text', { class: 'label', x: Math.min(lx + 4, w - 60), y: Math.min(ly + 16, h - 6) }, r.name) : null);
}

/** Totals per zone/line and class, and a line chart of each over the last minutes. */
function countsView(rows) {
  if (!rows.length) return el('p', { class: 'muted' }, 'No counts yet: draw a zone or a line on the picture.');
  const series = new Map();
  for (const r of rows) {
    const key = r.line != null ? `line:${r.line}:${r.class}` : `zone:${r.zone}:${r.class}`;
    if (!series.has(key)) series.set(key, { key, line: r.line != null, totals: {}, buckets: new Map() });
    const s = series.get(key);
    const fields = s.line ? ['crossed_in', 'crossed_out'] : ['entered', 'left'];
    let n = 0;
    for (const f of fields) { s.totals[f] = (s.totals[f] || 0) + (r[f] || 0); n += r[f] || 0; }
    s.buckets.set(r.start, (s.buckets.get(r.start) || 0) + n);
  }
  const starts = [...new Set(rows.map((r) => r.start))].sort().slice(-30);
  const W = 600, H = 160, P = 24;
  const max = Math.max(1, ...[...series.values()].flatMap((s) => starts.map((t) => s.buckets.get(t) || 0)));
  const x = (i) => P + (starts.length > 1 ? (i * (W - 2 * P)) / (starts.length - 1) : (W - 2 * P) / 2);
  const y = (v) => H - P - (v * (H - 2 * P)) / max;
  const chart = el('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': 'Counts per minute' },
    el('line', { class: 'axis', x1: P, y1: H - P, x2: W - P, y2: H - P }),
    el('text', { x: 2, y: P }, String(max)), el('text', { x: 2, y: H - P }, '0'),
    starts.length ? el('text', { x: P, y: H - 6 }, new Date(starts[0]).toLocaleTimeString()) : null,
    ...[...series.values()].flatMap((s) => [el('polyline', {
      fill: 'none', stroke: colourOf(s.key), 'stroke-width': 2,
      points: starts.map((t, i) => `${x(i)},${y(s.buckets.get(t) || 0)}`).join(' '),
    }), ...starts.map((t, i) => el('circle', { cx: x(i), cy: y(s.buckets.get(t) || 0), r: 3, fill: colourOf(s.key) }))]));
  const legend = el('div', { class: 'legend' }, [...series.values()].map((s) =>
    el('span', {}, el('span', { class: 'swatch', style: { background: colourOf(s.key) } }), s.key.replace(/:/g, ' · '))));
  const table = el('table', { 'aria-label': 'Count totals' },
    el('thead', {}, el('tr', {}, ['Zone or line', 'Class', 'In / entered', 'Out / left'].map((h) => el('th', { scope: 'col' }, h)))),
    el('tbody', {}, [...series.values()].map((s) => {
      const [kind, name, cls] = s.key.split(':');
      const [a, b] = s.line ? ['crossed_in', 'crossed_out'] : ['entered', 'left'];
      return el('tr', { 'data-series': s.key },
        el('td', {}, `${kind} ${name}`), el('td', {}, cls),
        el('td', { class: 'num', 'data-total': `${s.key}:${a}` }, s.totals[a]),
        el('td', { class: 'num', 'data-total': `${s.key}:${b}` }, s.totals[b]));
    })));
  return el('div', {}, chart, legend, table);
}

/**
 * Draws zones (polygons), lines and masks on the picture and saves them with PATCH. Polygons:
 * click each corner, then "Finish shape" (or Enter); lines: drag, or click both ends. The JSON
 * box does the same by keyboard.
 */
function regionEditor(signal) {
  const ed = { onChange: () => {}, overlay: null, stage: null };
  let saved = { zones: [], lines: [], mask: [] };
  let work = null; // the edited copy
  let drawing = null; // {kind, name, points, dwell}
  let uuid = null;
  const status = el('p', { class: 'error', role: 'alert', id: 'editor-error' });
  const kind = el('select', { id: 'draw-kind' }, el('option', { value: 'line' }, 'Line'),
    el('option', { value: 'zone' }, 'Zone'), el('option', { value: 'mask' }, 'Mask'));
  const name = el('input', { id: 'draw-name', autocomplete: 'off', placeholder: 'e.g. door' });
  const drawButton = el('button', { type: 'button', id: 'draw', 'aria-pressed': 'false' }, 'Draw on the picture');
  const finish = el('button', { type: 'button', id: 'finish', hidden: true }, 'Finish shape');
  const save = el('button', { type: 'button', class: 'primary', id: 'save-regions' }, 'Save zones, lines and masks');
  const revert = el('button', { type: 'button' }, 'Discard changes');
  const list = el('ul', { id: 'regions-list' });
  const json = el('textarea', { id: 'regions-json', 'aria-describedby': 'regions-json-hint' });
  const applyJson = el('button', { type: 'button' }, 'Use this JSON');
  ed.node = el('div', { class: 'panel', id: 'editor' },
    el('h2', {}, 'Zones, lines and masks'),
    el('div', { class: 'row' },
      el('div', {}, el('label', { for: 'draw-kind' }, 'Shape'), kind),
      el('div', {}, el('label', { for: 'draw-name' }, 'Name (zones and lines)'), name)),
    el('div', { class: 'row' }, drawButton, finish),
    el('p', { class: 'muted', id: 'draw-help' }, 'Lines: drag across the picture (crossing to the left of the way you drew is "in"). Zones and masks: click each corner, then Finish shape. Escape cancels.'),
    list, status,
    el('div', { class: 'row' }, save, revert),
    el('details', {}, el('summary', {}, 'Edit as JSON'),
      el('label', { for: 'regions-json' }, 'zones, lines and mask'), json,
      el('div', { class: 'muted', id: 'regions-json-hint' }, 'Normalised coordinates 0..1, origin top left.'),
      el('div', { class: 'row' }, applyJson)));

  const clone = (o) => JSON.parse(JSON.stringify(o));
  const changed = () => JSON.stringify(work) !== JSON.stringify(saved);
  function renderList() {
    const items = [
      ...work.zones.map((z, i) => ['zone', z.name, i]),
      ...work.lines.map((l, i) => ['line', l.name, i]),
      ...work.mask.map((_, i) => ['mask', `mask ${i + 1}`, i]),
    ];
    list.replaceChildren(...items.map(([k, n, i]) => el('li', {}, `${k} ${n} `,
      el('button', { type: 'button', 'aria-label': `Remove ${k} ${n}`, onclick: () => {
        const key = k === 'mask' ? 'mask' : `${k}s`;
        work[key].splice(i, 1);
        update();
      } }, 'Remove'))));
    if (!items.length) list.append(el('li', { class: 'muted' }, 'None yet.'));
    json.value = JSON.stringify(work, null, 1);
    save.disabled = !changed();
    revert.disabled = !changed();
  }
  function update() { renderList(); ed.onChange(); }

  ed.load = (s) => {
    uuid = s.scenario_uuid;
    const running = RUNNING.includes(s.status);
    drawButton.disabled = !running;
    save.hidden = !running;
    if (!running) status.textContent = 'Zones, lines and masks can change only while the scenario runs.';
    const next = { zones: s.options.zones || [], lines: s.options.lines || [], mask: s.options.mask || [] };
    if (work && JSON.stringify(next) === JSON.stringify(saved)) return;
    const untouched = !work || !changed();
    saved = clone(next);
    if (untouched) { work = clone(next); renderList(); }
  };

  ed.shapes = () => {
    if (!work) return [];
    const out = [
      ...work.mask.map((p) => ({ kind: 'mask', points: p })),
      ...work.zones.map((z) => ({ kind: 'zone', name: z.name, points: z.polygon })),
      ...work.lines.map((l) => ({ kind: 'line', name: l.name, points: l.points })),
    ];
    if (drawing && drawing.points.length) out.push({ kind: drawing.kind, name: drawing.name, points: drawing.points, pending: true });
    return out;
  };

  function point(e) {
    const r = ed.overlay.getBoundingClientRect();
    const c = (v) => Math.round(Math.min(1, Math.max(0, v)) * 10000) / 10000;
    return [c((e.clientX - r.left) / r.width), c((e.clientY - r.top) / r.height)];
  }
  function startDrawing() {
    status.textContent = '';
    const k = kind.value;
    const n = name.value.trim();
    if (k !== 'mask' && !n) { status.textContent = 'Give the zone or line a name first.'; name.focus(); return; }
    drawing = { kind: k, name: k === 'mask' ? '' : n, points: [], dwell: null };
    drawButton.setAttribute('aria-pressed', 'true');
    ed.stage.classList.add('drawing');
    ed.stage.scrollIntoView({ block: 'nearest' });
    finish.hidden = k === 'line';
  }
  function stopDrawing() {
    drawing = null;
    drawButton.setAttribute('aria-pressed', 'false');
    ed.stage.classList.remove('drawing');
    finish.hidden = true;
    ed.onChange();
  }
  function complete() {
    const d = drawing;
    if (d.kind === 'line') {
      if (d.points.length < 2 || (d.points[0][0] === d.points[1][0] && d.points[0][1] === d.points[1][1])) return;
      // Redrawn under the same name: its other settings (classes) stay.
      const old = work.lines.find((l) => l.name === d.name) || {};
      work.lines = work.lines.filter((l) => l.name !== d.name).concat([{ ...old, name: d.name, points: d.points.slice(0, 2) }]);
    } else {
      if (d.points.length < 3) { status.textContent = 'A zone or mask needs at least three corners.'; return; }
      const old = work.zones.find((z) => z.name === d.name) || {};
      if (d.kind === 'zone') work.zones = work.zones.filter((z) => z.name !== d.name).concat([{ ...old, name: d.name, polygon: d.points }]);
      else work.mask.push(d.points);
    }
    stopDrawing();
    update();
  }
  drawButton.addEventListener('click', () => (drawing ? stopDrawing() : startDrawing()));
  finish.addEventListener('click', () => drawing && complete());
  document.addEventListener('keydown', (e) => {
    if (!drawing || ['INPUT', 'TEXTAREA', 'SELECT'].includes(e.target.tagName)) return;
    if (e.key === 'Escape') stopDrawing();
    if (e.key === 'Enter' && drawing.kind !== 'line') { e.preventDefault(); complete(); }
  }, { signal });
  // Pointer events on the overlay (added once it is known).
  let dragStart = null;
  queueMicrotask(() => {
    const svg = ed.overlay;
    svg.addEventListener('pointerdown', (e) => {
      if (!drawing || e.button !== 0) return;
      e.preventDefault();
      const p = point(e);
      if (drawing.kind === 'line') {
        if (drawing.points.length === 1) { drawing.points.push(p); complete(); return; }
        drawing.points = [p];
        dragStart = p;
        svg.setPointerCapture(e.pointerId);
      } else {
        drawing.points.push(p);
      }
      ed.onChange();
    });
    svg.addEventListener('pointermove', (e) => {
      if (!drawing || drawing.kind !== 'line' || !dragStart) return;
      drawing.points = [dragStart, point(e)];
      ed.onChange();
    });
    svg.addEventListener('pointerup', (e) => {
      if (!drawing || drawing.kind !== 'line' || !dragStart) return;
      const p = point(e);
      dragStart = null;
      // A drag draws the line; a click without moving waits for the second end.
      if (Math.hypot(p[0] - drawing.points[0][0], p[1] - drawing.points[0][1]) > 0.02) {
        drawing.points = [drawing.points[0], p];
        complete();
      } else {
        drawing.points = [drawing.points[0]];
      }
    });
  });

  save.addEventListener('click', async () => {
    status.textContent = '';
    save.disabled = true;
    try {
      const s = await api(`/api/v1/scenario/${uuid}`, { method: 'PATCH', body: { zones: work.zones, lines: work.lines, mask: work.mask } });
      saved = { zones: s.options.zones || [], lines: s.options.lines || [], mask: s.options.mask || [] };
      work = clone(saved);
      status.textContent = '';
      document.getElementById('notice').textContent = `Saved (options revision ${s.options_revision}); the runner switches at its next frame.`;
      update();
    } catch (e) {
      status.textContent = wording(e);
      save.disabled = false;
    }
  });
  revert.addEventListener('click', () => { work = clone(saved); update(); });
  applyJson.addEventListener('click', () => {
    try {
      const v = JSON.parse(json.value);
      work = { zones: v.zones || [], lines: v.lines || [], mask: v.mask || [] };
      status.textContent = '';
      update();
    } catch (e) {
      status.textContent = `Not JSON: ${e.message}`;
    }
  });
  return ed;
}

route();
