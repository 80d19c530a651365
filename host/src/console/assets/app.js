// Cairn console: a single-page app over Cairn's HTTP API.
//
// Pages (hash routes): #/definitions, #/definitions/VERSION,
// #/instances?FILTERS, #/instances/ID. Every request carries the bearer
// token the user gave (kept in sessionStorage, for this tab only); a 401
// asks for one, a 403 shows the API's reason. Live updates come from
// GET /v1/events (server-sent events read with fetch, so that the token
// travels in the Authorization header).

'use strict';

const $ = (sel, root) => (root || document).querySelector(sel);
const main = () => $('#main');

const state = {
  token: sessionStorage.getItem('cairn-token') || '',
  listeners: new Set(),
  live: false,
  eventsAbort: null,
  tokenWaiters: [],
  page: null,
};

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// ---- small DOM helpers ------------------------------------------------------

function h(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k === 'class') e.className = v;
    else if (k === 'value') e.value = v;
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

// Replaces an element's children, skipping null, undefined and false
// (replaceChildren would show them as text).
function put(e, ...children) {
  e.replaceChildren(...children.flat().filter((c) => c !== undefined && c !== null && c !== false));
}

function time(ms) {
  if (!ms) return '';
  const d = new Date(ms);
  const p = (n, w) => String(n).padStart(w || 2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
}

function short(v) {
  return v ? v.slice(0, 12) : '';
}

function statusPill(s) {
  return h('span', { class: `pill st-${s}`, 'data-status': s }, s);
}

function notice(message, kind) {
  const n = $('#notice');
  n.className = `notice ${kind || 'info'}`;
  n.textContent = message;
  n.hidden = false;
  clearTimeout(notice.timer);
  if (kind !== 'error') notice.timer = setTimeout(() => (n.hidden = true), 4000);
}

function showError(e) {
  if (e instanceof ApiError) {
    const what = e.status === 403 ? 'Refused' : 'Error';
    notice(`${what} (${e.status}): ${e.message}`, 'error');
  } else {
    notice(`Error: ${e.message || e}`, 'error');
  }
}

// ---- the API ----------------------------------------------------------------

function authHeaders() {
  return state.token ? { Authorization: `Bearer ${state.token}` } : {};
}

async function api(method, path, body) {
  for (;;) {
    const headers = authHeaders();
    let payload;
    if (body !== undefined) {
      headers['content-type'] = 'application/json';
      payload = typeof body === 'string' ? body : JSON.stringify(body);
    }
    const r = await fetch(path, { method, headers, body: payload });
    let data = null;
    try {
      data = await r.json();
    } catch (_) {
      data = null;
    }
    if (r.status === 401) {
      await askToken((data && data.error) || 'a bearer token is required');
      continue;
    }
    if (!r.ok) throw new ApiError(r.status, (data && data.error) || r.statusText);
    return data;
  }
}

// Asks for a token (once, however many requests wait for it).
function askToken(reason) {
  return new Promise((resolve) => {
    state.tokenWaiters.push(resolve);
    const dialog = $('#token-dialog');
    $('#token-reason').textContent = reason;
    if (!dialog.open) {
      $('#token-input').value = '';
      dialog.showModal();
      $('#token-input').focus();
    }
  });
}

function setToken(token) {
  state.token = token.trim();
  if (state.token) sessionStorage.setItem('cairn-token', state.token);
  else sessionStorage.removeItem('cairn-token');
  renderTokenState();
  const waiters = state.tokenWaiters.splice(0);
  waiters.forEach((w) => w());
  startEvents();
}

function renderTokenState() {
  const t = $('#token-state');
  put(t,
    state.token ? h('span', {}, 'token set · ') : h('span', {}, 'no token · '),
    h('a', { href: '#', id: 'token-change', onclick: (ev) => { ev.preventDefault(); askToken('Give a bearer token (cairn token create --role reader|operator|admin)'); } }, state.token ? 'change' : 'set'),
    state.token ? h('span', {}, ' · ') : null,
    state.token ? h('a', { href: '#', onclick: (ev) => { ev.preventDefault(); setToken(''); } }, 'forget') : null,
  );
}

// ---- live events --------------------------------------------------------------

function setLive(on) {
  state.live = on;
  const l = $('#live');
  l.className = on ? 'live on' : 'live off';
  l.textContent = on ? '● live' : '○ reconnecting';
  l.setAttribute('data-live', on ? 'on' : 'off');
}

async function startEvents() {
  if (state.eventsAbort) state.eventsAbort.abort();
  const abort = new AbortController();
  state.eventsAbort = abort;
  while (!abort.signal.aborted) {
    try {
      const r = await fetch('/v1/events', { headers: authHeaders(), signal: abort.signal });
      if (r.status === 401 || r.status === 403) {
        setLive(false);
        return; // a new token restarts the stream
      }
      if (!r.ok || !r.body) throw new Error(`events: ${r.status}`);
      const reader = r.body.getReader();
      const decoder = new TextDecoder();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const chunk = buf.slice(0, i);
          buf = buf.slice(i + 2);
          let name = 'message';
          let data = '';
          for (const line of chunk.split('\n')) {
            if (line.startsWith('event:')) name = line.slice(6).trim();
            else if (line.startsWith('data:')) data += line.slice(5).trim();
          }
          if (name === 'open') setLive(true);
          else if (name === 'instance' || name === 'lagged') {
            let ev = {};
            try {
              ev = JSON.parse(data);
            } catch (_) {
              ev = {};
            }
            for (const f of state.listeners) f(name, ev);
          }
        }
      }
    } catch (e) {
      if (abort.signal.aborted) return;
    }
    setLive(false);
    await new Promise((r) => setTimeout(r, 1500));
  }
}

// A listener for the current page only (dropped when the page changes).
function onEvent(f) {
  state.listeners.add(f);
  state.page.cleanup.push(() => state.listeners.delete(f));
}

function debounce(f, ms) {
  let t = null;
  return () => {
    if (t) return;
    t = setTimeout(() => {
      t = null;
      f();
    }, ms);
  };
}

// ---- data shared by pages ---------------------------------------------------

async function definitions() {
  return (await api('GET', '/v1/definitions')).definitions;
}

async function breakpointsOf(process) {
  const all = (await api('GET', '/v1/breakpoints')).breakpoints;
  return all.filter((b) => b.process === process).map((b) => b.path);
}

// Click on an activity: set or clear its breakpoint, then redraw.
async function toggleBreakpoint(process, path, redraw) {
  try {
    const set = (await breakpointsOf(process)).includes(path);
    await api(set ? 'DELETE' : 'POST', '/v1/breakpoints', { process, path });
    notice(set ? `Breakpoint cleared at ${path}` : `Breakpoint set before ${path}: instances reaching it stop there`, 'info');
    await redraw();
  } catch (e) {
    showError(e);
  }
}

// ---- pages ------------------------------------------------------------------------

async function pageDefinitions() {
  const defs = await definitions();
  const processes = defs.filter((d) => d.kind === 'process');
  const activities = defs.filter((d) => d.kind !== 'process');
  const byName = new Map();
  for (const d of processes) {
    if (!byName.has(d.name)) byName.set(d.name, []);
    byName.get(d.name).push(d);
  }
  const rows = [];
  for (const [name, versions] of byName) {
    versions.sort((a, b) => b.deployed_ms - a.deployed_ms);
    for (const d of versions) {
      rows.push(
        h('tr', { 'data-version': d.version },
          h('td', {}, name),
          h('td', {}, h('a', { href: `#/definitions/${d.version}`, class: 'mono' }, short(d.version))),
          h('td', {}, d.latest ? h('span', { class: 'pill latest' }, 'newest') : ''),
          h('td', {}, d.process_kind || ''),
          h('td', {}, time(d.deployed_ms)),
          h('td', {}, h('a', { href: `#/instances?process=${encodeURIComponent(name)}&version=${d.version}` }, 'instances')),
        ),
      );
    }
  }
  put(main(),
    h('h1', {}, 'Definitions'),
    h('p', { class: 'hint' }, 'Every deployed version of every process. Open one to see its activity tree, where its instances wait and where they faulted, and to set breakpoints.'),
    h('table', { class: 'grid', id: 'definitions' },
      h('thead', {}, h('tr', {}, h('th', {}, 'process'), h('th', {}, 'version'), h('th', {}, ''), h('th', {}, 'kind'), h('th', {}, 'deployed'), h('th', {}, ''))),
      h('tbody', {}, rows.length ? rows : h('tr', {}, h('td', { colspan: 6 }, 'No process deployed yet: cairn deploy FILE.wasm'))),
    ),
    activities.length ? h('h2', {}, 'Activities') : null,
    activities.length
      ? h('table', { class: 'grid' },
          h('thead', {}, h('tr', {}, h('th', {}, 'name'), h('th', {}, 'version'), h('th', {}, 'deployed'), h('th', {}, 'grants'))),
          h('tbody', {}, activities.map((d) => h('tr', {},
            h('td', {}, d.name), h('td', { class: 'mono' }, short(d.version)), h('td', {}, time(d.deployed_ms)),
            h('td', {}, [...(d.allow_http || []), ...(d.external ? ['external: ' + (d.external.join(', ') || 'any operation')] : [])].join(' · '))))))
      : null,
  );
}

async function pageDefinition(version) {
  const [tree, defs] = await Promise.all([api('GET', `/v1/definitions/${version}/tree`), definitions()]);
  const versions = defs.filter((d) => d.name === tree.name && d.kind === 'process').sort((a, b) => b.deployed_ms - a.deployed_ms);
  const counts = h('div', { class: 'counts', id: 'status-counts' });
  const holder = h('div', { class: 'diagram-holder', id: 'diagram' });
  let diagram = null;
  const redraw = async () => {
    const [heat, bps] = await Promise.all([api('GET', `/v1/definitions/${version}/heat`), breakpointsOf(tree.name)]);
    diagram.decorate({ heat: heat.activities, breakpoints: bps });
    put(counts,
      ...['running', 'waiting', 'suspended', 'completed', 'faulted', 'terminated'].map((s) =>
        h('a', { class: 'count', href: `#/instances?process=${encodeURIComponent(tree.name)}&version=${version}&status=${s}`, 'data-count': s },
          statusPill(s), ' ', String(heat.by_status[s] || 0))),
      heat.partial ? h('span', { class: 'hint' }, ' (counted over the first 200,000 instances)') : null,
    );
  };
  diagram = new window.CairnDiagram(tree.root, (path) => toggleBreakpoint(tree.name, path, redraw));
  holder.append(diagram.svg);
  put(main(),
    h('h1', {}, 'Process ', h('span', { class: 'mono' }, tree.name)),
    h('div', { class: 'toolbar' },
      h('label', {}, 'version ',
        h('select', { id: 'version-select', onchange: (ev) => (location.hash = `#/definitions/${ev.target.value}`) },
          versions.map((d) => { const o = h('option', { value: d.version }, `${short(d.version)} · ${time(d.deployed_ms)}${d.latest ? ' · newest' : ''}`); if (d.version === version) o.selected = true; return o; }))),
      tree.latest ? null : h('span', { class: 'hint' }, ' an older version: breakpoints apply to the newest one'),
    ),
    counts,
    h('p', { class: 'hint' }, 'Blue: instances standing at an activity (every branch of a flow counts); red: instances that faulted there; green bars: persistence points before or after an activity. Click an activity to set or clear a breakpoint (a red dot).'),
    holder,
  );
  await redraw();
  const again = debounce(() => redraw().catch(() => {}), 400);
  onEvent((name, ev) => {
    if (name === 'lagged' || ev.version === version) again();
  });
}

function queryOf(hash) {
  const i = hash.indexOf('?');
  return new URLSearchParams(i >= 0 ? hash.slice(i + 1) : '');
}

async function pageInstances(params) {
  const defs = await definitions();
  const processes = [...new Set(defs.filter((d) => d.kind === 'process').map((d) => d.name))].sort();
  const f = {
    process: params.get('process') || '',
    version: params.get('version') || '',
    status: params.get('status') || '',
    correlation: params.get('correlation') || '',
    from: params.get('from') || '',
    to: params.get('to') || '',
  };
  const cursors = [''];
  const selected = new Set();
  const field = (id, label, input) => h('label', { for: id }, label, input);
  const form = h('form', { class: 'filters', id: 'filters', onsubmit: (ev) => { ev.preventDefault(); apply(); } },
    field('f-process', 'process', h('select', { id: 'f-process' }, h('option', { value: '' }, 'any'), processes.map((p) => { const o = h('option', { value: p }, p); if (p === f.process) o.selected = true; return o; }))),
    field('f-version', 'version', h('input', { id: 'f-version', value: f.version, placeholder: 'any', size: 14 })),
    field('f-status', 'status', h('select', { id: 'f-status' }, ['', 'running', 'waiting', 'suspended', 'completed', 'faulted', 'terminated'].map((s) => { const o = h('option', { value: s }, s || 'any'); if (s === f.status) o.selected = true; return o; }))),
    field('f-correlation', 'correlation value', h('input', { id: 'f-correlation', value: f.correlation, placeholder: 'e.g. A-200', size: 16 })),
    field('f-from', 'created from', h('input', { id: 'f-from', type: 'datetime-local', value: f.from })),
    field('f-to', 'to', h('input', { id: 'f-to', type: 'datetime-local', value: f.to })),
    h('button', { type: 'submit', id: 'search' }, 'Search'),
  );
  const body = h('tbody', {});
  const total = h('span', { id: 'total' });
  const prev = h('button', { id: 'prev', onclick: () => { cursors.pop(); load(); } }, '‹ previous');
  const next = h('button', { id: 'next' }, 'next ›');
  const bulkResult = h('span', { id: 'bulk-result', class: 'hint' });
  const bulk = (verb) => async () => {
    const ids = [...selected];
    if (!ids.length) return notice('Select instances first', 'info');
    if (verb === 'terminate' && !confirm(`Terminate ${ids.length} instance(s)?`)) return;
    const results = await Promise.allSettled(ids.map((id) => api('POST', `/v1/instances/${id}/${verb}`)));
    const ok = results.filter((r) => r.status === 'fulfilled').length;
    const failed = results.map((r, i) => [r, ids[i]]).filter(([r]) => r.status === 'rejected');
    bulkResult.textContent = `${verb}: ${ok} done` + (failed.length ? `, ${failed.length} refused (${failed[0][0].reason.message})` : '');
    if (failed.length) showError(failed[0][0].reason);
    await load();
  };
  const all = h('input', { type: 'checkbox', id: 'select-all', title: 'select the page', onchange: (ev) => { body.querySelectorAll('input[type=checkbox]').forEach((c) => { c.checked = ev.target.checked; c.dispatchEvent(new Event('change')); }); } });
  put(main(),
    h('h1', {}, 'Instances'),
    form,
    h('div', { class: 'toolbar' },
      h('button', { id: 'bulk-suspend', onclick: bulk('suspend') }, 'Suspend selected'),
      h('button', { id: 'bulk-resume', onclick: bulk('resume') }, 'Resume selected'),
      h('button', { id: 'bulk-terminate', class: 'danger', onclick: bulk('terminate') }, 'Terminate selected'),
      bulkResult,
    ),
    h('table', { class: 'grid', id: 'instances' },
      h('thead', {}, h('tr', {}, h('th', {}, all), h('th', {}, 'id'), h('th', {}, 'process'), h('th', {}, 'version'), h('th', {}, 'status'), h('th', {}, 'position'), h('th', {}, 'created'), h('th', {}, 'updated'))),
      body),
    h('div', { class: 'pager' }, prev, ' ', total, ' ', next),
  );
  next.onclick = () => { if (next.dataset.after) { cursors.push(next.dataset.after); load(); } };

  function toMs(v) {
    return v ? String(new Date(v).getTime()) : '';
  }
  function apply() {
    const q = new URLSearchParams();
    for (const [k, id] of [['process', 'f-process'], ['version', 'f-version'], ['status', 'f-status'], ['correlation', 'f-correlation'], ['from', 'f-from'], ['to', 'f-to']]) {
      const v = $('#' + id).value.trim();
      if (v) q.set(k, v);
    }
    location.hash = `#/instances?${q}`;
  }
  async function load() {
    const q = new URLSearchParams();
    if (f.process) q.set('process', f.process);
    if (f.version) q.set('version', f.version);
    if (f.status) q.set('status', f.status);
    if (f.correlation) q.set('correlation', f.correlation);
    if (f.from) q.set('from_ms', toMs(f.from));
    if (f.to) q.set('to_ms', toMs(f.to));
    q.set('limit', '25');
    const after = cursors[cursors.length - 1];
    if (after) q.set('after', after);
    const r = await api('GET', `/v1/instances/search?${q}`);
    const first = (cursors.length - 1) * 25;
    total.textContent = r.total ? `${first + 1}–${first + r.count} of ${r.total}${r.partial ? '+' : ''}` : 'no instance matches';
    prev.disabled = cursors.length <= 1;
    next.disabled = !r.next_after;
    next.dataset.after = r.next_after || '';
    put(body, ...r.instances.map((i) => {
      const check = h('input', { type: 'checkbox', 'data-id': i.id, onchange: (ev) => (ev.target.checked ? selected.add(i.id) : selected.delete(i.id)) });
      check.checked = selected.has(i.id);
      return h('tr', { 'data-id': i.id },
        h('td', {}, check),
        h('td', {}, h('a', { href: `#/instances/${i.id}`, class: 'mono' }, i.id)),
        h('td', {}, i.process),
        h('td', { class: 'mono' }, h('a', { href: `#/definitions/${i.version}` }, short(i.version))),
        h('td', { class: 'status' }, statusPill(i.status)),
        h('td', { class: 'position mono' }, i.position),
        h('td', {}, time(i.created_ms)),
        h('td', { class: 'updated' }, time(i.updated_ms)));
    }));
  }
  await load();
  const reload = debounce(() => load().catch(() => {}), 700);
  onEvent((name, ev) => {
    const row = body.querySelector(`tr[data-id="${ev.id}"]`);
    if (row) {
      row.querySelector('.status').replaceChildren(statusPill(ev.status));
      row.querySelector('.position').textContent = ev.status === 'completed' || ev.status === 'terminated' ? '' : ev.path;
      row.querySelector('.updated').textContent = time(ev.at_ms);
      row.classList.add('flash');
      setTimeout(() => row.classList.remove('flash'), 600);
    }
    if (name === 'lagged' || (!row && cursors.length === 1 && (!f.process || ev.process === f.process))) reload();
  });
}

function json(v) {
  return JSON.stringify(v, null, 2);
}

function parseJsonText(t) {
  try {
    return JSON.parse(t);
  } catch (_) {
    return t;
  }
}

function describeWait(w) {
  if (!w) return '';
  const corr = (c) => (c && c.set ? ` correlated by ${c.set} = ${c.values === null || c.values === undefined ? '(not yet set)' : c.values}` : '');
  switch (w.what) {
    case 'message':
      return `a message ${w.operation}${corr(w.correlation)}${w.timeout_due_ms ? `, or its timeout at ${time(w.timeout_due_ms)}` : ''}`;
    case 'timer':
      return `a timer due at ${time(w.due_ms)}`;
    case 'call': {
      const c = w.call;
      const t = c.target ? `${c.target.kind} ${c.target.name} · ${c.operation}` : `call ${c.call_id}`;
      return `the result of ${t} (attempt ${c.attempt}${c.task ? `, task ${c.task}` : ''}${c.last_fault ? `; last error ${c.last_fault.name}: ${c.last_fault.message}` : ''})`;
    }
    case 'pick':
      return 'the first of: ' + w.arms.map(describeWait).join('; ');
    case 'handling':
      return `its fault handler runs for ${w.fault.name}`;
    case 'compensating':
      return `compensation of ${w.queue.join(', ')}`;
    default:
      return w.phase === 'enter' ? 'nothing yet: it is about to begin' : `running (${w.phase})`;
  }
}

function movedBy(list) {
  return (list || []).map((m) => {
    switch (m.kind) {
      case 'message':
        return h('details', { class: 'moved' }, h('summary', {}, `message ${m.operation}`), h('pre', {}, json(parseJsonText(m.body)) + (m.truncated ? '\n… (cut)' : '')));
      case 'call-result':
        return h('details', { class: 'moved' }, h('summary', {}, `result of call ${m.call_id}${m.fault ? ': fault ' + m.fault.name : ''}`),
          h('pre', {}, m.fault ? json(m.fault) : json(parseJsonText(m.output)) + (m.truncated ? '\n… (cut)' : '')));
      case 'sent':
        return h('div', { class: 'moved' }, `${m.start ? 'started' : 'sent to'} process ${m.process} (${m.operation})`);
      case 'started-by':
        return h('div', { class: 'moved' }, 'started by ', h('a', { href: `#/instances/${m.instance}`, class: 'mono' }, short(m.instance)));
      default:
        return null;
    }
  });
}

async function pageInstance(id) {
  const first = await api('GET', `/v1/instances/${id}`);
  const tree = await api('GET', `/v1/definitions/${first.version}/tree`);
  const diagram = new window.CairnDiagram(tree.root, (path) => toggleBreakpoint(tree.name, path, refresh));
  const header = h('div', { id: 'instance-header' });
  const stopped = h('div', { id: 'stopped' });
  const waits = h('ul', { id: 'waits', class: 'waits' });
  const vars = h('textarea', { id: 'variables', rows: 12, spellcheck: 'false' });
  const varsNote = h('span', { class: 'hint', id: 'variables-note' });
  const saveVars = h('button', { id: 'save-variables', onclick: async () => {
    let parsed;
    try {
      parsed = JSON.parse(vars.value);
    } catch (e) {
      return notice(`The variables are not valid JSON: ${e.message}`, 'error');
    }
    try {
      await api('PUT', `/v1/instances/${id}/variables`, parsed);
      vars.dataset.dirty = '';
      notice('Variables saved', 'info');
      await refresh();
    } catch (e) {
      showError(e);
    }
  } }, 'Save variables');
  vars.addEventListener('input', () => (vars.dataset.dirty = '1'));
  const fault = h('div', { id: 'fault' });
  const calls = h('div', { id: 'calls' });
  const links = h('div', { id: 'links' });
  const history = h('tbody', {});
  put(main(),
    header,
    stopped,
    h('div', { class: 'columns' },
      h('section', { class: 'col-diagram' }, h('h2', {}, 'Where it stands'), h('p', { class: 'hint' }, 'Orange: every branch\'s position; red: where it faulted or stopped. Click an activity to set or clear a breakpoint.'), h('div', { class: 'diagram-holder', id: 'diagram' }, diagram.svg)),
      h('section', { class: 'col-side' },
        h('h2', {}, 'Waiting for'), waits,
        fault,
        h('h2', {}, 'Variables'), vars, h('div', { class: 'toolbar' }, saveVars, varsNote),
        calls,
        links)),
    h('h2', {}, 'History'),
    h('p', { class: 'hint' }, 'Persistence points, newest first, with what moved the instance there.'),
    h('table', { class: 'grid', id: 'history' }, h('thead', {}, h('tr', {}, h('th', {}, 'fence'), h('th', {}, 'time'), h('th', {}, 'reason'), h('th', {}, 'status'), h('th', {}, 'path'), h('th', {}, 'moved by'))), history),
  );

  const verb = (v) => async () => {
    if (v === 'terminate' && !confirm('Terminate this instance?')) return;
    try {
      await api('POST', `/v1/instances/${id}/${v}`);
      notice(`${v}: done`, 'info');
      await refresh();
    } catch (e) {
      showError(e);
    }
  };
  const resolve = (callId, v) => async () => {
    try {
      await api('POST', `/v1/in-transit/${callId}/${v}`);
      notice(`${v}: done`, 'info');
      await refresh();
    } catch (e) {
      showError(e);
    }
  };

  async function refresh() {
    const [d, p, bps] = await Promise.all([api('GET', `/v1/instances/${id}`), api('GET', `/v1/instances/${id}/positions`), breakpointsOf(tree.name)]);
    const suspended = d.status === 'suspended';
    const ended = ['completed', 'faulted', 'terminated'].includes(d.status);
    put(header,
      h('h1', {}, 'Instance ', h('span', { class: 'mono' }, id), ' ', h('span', { id: 'instance-status' }, statusPill(d.status))),
      h('div', { class: 'meta' },
        'process ', h('a', { href: `#/definitions/${d.version}` }, d.process), ' · version ', h('span', { class: 'mono' }, short(d.version)),
        ' · created ', time(d.created_ms), ' · updated ', time(d.updated_ms),
        d.in_memory ? ' · in memory' : ' · dehydrated', d.parked ? ' · parked' : '',
        Object.keys(d.correlations || {}).length ? ' · ' + Object.entries(d.correlations).map(([k, v]) => `${k} = ${v}`).join(', ') : ''),
      h('div', { class: 'toolbar' },
        h('button', { id: 'suspend', disabled: suspended || ended, onclick: verb('suspend') }, 'Suspend'),
        h('button', { id: 'resume', disabled: !suspended, onclick: verb('resume') }, 'Resume'),
        h('button', { id: 'terminate', class: 'danger', disabled: ended, onclick: verb('terminate') }, 'Terminate'),
        d.parked ? h('button', { id: 'release', onclick: verb('release') }, 'Release') : null),
    );
    put(stopped);
    stopped.className = '';
    if (p.stopped) {
      stopped.className = 'stopped-banner';
      stopped.append(h('strong', {}, p.stopped.why === 'breakpoint' ? 'Stopped at a breakpoint' : 'Suspended'), `: ${p.stopped.detail} (at ${p.stopped.path}). `,
        h('button', { id: 'resume-stopped', onclick: verb('resume') }, 'Resume'));
    }
    // A faulted instance shows where its fault was raised, as the heat map does.
    const heat = d.fault && d.fault.path ? { [d.fault.path]: { faulted: 1 } } : {};
    diagram.decorate({ heat, positions: p.positions.map((x) => x.path), stopped: p.stopped && p.stopped.path, breakpoints: bps });
    put(waits, ...(p.positions.length
      ? p.positions.map((x) => h('li', { 'data-path': x.path }, h('span', { class: 'mono' }, x.path), x.state !== 'active' ? ` (${x.state} branch)` : '', ': ', describeWait(x.waits)))
      : [h('li', {}, ended ? `nothing: the instance is ${d.status}` : 'nothing')]));
    if (!vars.dataset.dirty || !suspended) {
      vars.value = json(d.variables);
      vars.dataset.dirty = '';
    }
    vars.readOnly = !suspended;
    saveVars.disabled = !suspended;
    varsNote.textContent = suspended ? 'editable while suspended' : 'suspend the instance to edit its variables';
    put(fault, ...(d.fault
      ? [h('h2', {}, 'Fault'), h('div', { class: 'fault-box', id: 'fault-box' }, h('div', {}, h('strong', {}, d.fault.name), ` at ${d.fault.path || ''}`), h('div', {}, d.fault.message), h('pre', {}, json(parseJsonText(d.fault.data))))]
      : []));
    const pending = d.pending_calls || [];
    const held = d.in_transit || [];
    put(calls, ...(pending.length || held.length
      ? [h('h2', {}, 'Calls in transit'),
        h('table', { class: 'grid small', id: 'calls-table' },
          h('thead', {}, h('tr', {}, h('th', {}, 'call'), h('th', {}, 'target'), h('th', {}, 'key'), h('th', {}, 'state'), h('th', {}, ''))),
          h('tbody', {},
            held.map((c) => h('tr', { 'data-call': c.id },
              h('td', {}, c.call_id), h('td', {}, `${c.target.kind} ${c.target.name} · ${c.operation}`), h('td', { class: 'mono' }, c.idempotency_key), h('td', {}, c.state),
              h('td', {}, c.state === 'held' ? [h('button', { onclick: resolve(c.id, 'resubmit') }, 'Resubmit'), ' ', h('button', { class: 'danger', onclick: resolve(c.id, 'abandon') }, 'Abandon')] : ''))),
            pending.filter((c) => !held.some((x) => x.call_id === c.call_id)).map((c) => h('tr', {},
              h('td', {}, c.call_id), h('td', {}, `${c.effect} ${c.target.kind} ${c.target.name} · ${c.operation}`), h('td', { class: 'mono' }, c.key), h('td', {}, 'in flight'), h('td', {}, '')))))]
      : []));
    put(links, ...(p.parent || p.children.length
      ? [h('h2', {}, 'Related'),
        p.parent ? h('div', {}, 'parent: ', h('a', { href: `#/instances/${p.parent.id}`, class: 'mono', id: 'parent-link' }, p.parent.id), ` (${p.parent.process || '?'}, ${p.parent.status || 'gone'})`) : null,
        p.children.length ? h('div', {}, 'children:', h('ul', { id: 'children' }, p.children.map((c) => h('li', {}, h('a', { href: `#/instances/${c.id}`, class: 'mono' }, c.id), ` (${c.process}, ${c.status || 'gone'})`)))) : null]
      : []));
    put(history, ...p.history.slice().reverse().map((e) => h('tr', {},
      h('td', {}, e.fence), h('td', {}, time(e.at_ms)), h('td', {}, e.reason), h('td', {}, statusPill(e.status)), h('td', { class: 'mono' }, e.path), h('td', {}, movedBy(e.moved_by)))));
  }
  await refresh();
  const again = debounce(() => refresh().catch(() => {}), 150);
  onEvent((name, ev) => {
    if (name === 'lagged' || ev.id === id) again();
  });
}

// ---- routing -------------------------------------------------------------------

async function route() {
  if (state.page) state.page.cleanup.forEach((f) => f());
  state.page = { cleanup: [] };
  const hash = location.hash || '#/definitions';
  const path = hash.split('?')[0];
  const parts = path.replace(/^#\/?/, '').split('/').filter(Boolean);
  document.querySelectorAll('nav a').forEach((a) => a.classList.toggle('active', path.startsWith(a.getAttribute('href'))));
  put(main(), h('p', { class: 'hint' }, 'Loading…'));
  try {
    if (parts[0] === 'instances' && parts[1]) await pageInstance(decodeURIComponent(parts[1]));
    else if (parts[0] === 'instances') await pageInstances(queryOf(hash));
    else if (parts[0] === 'definitions' && parts[1]) await pageDefinition(decodeURIComponent(parts[1]));
    else await pageDefinitions();
    document.body.setAttribute('data-page', parts[0] || 'definitions');
  } catch (e) {
    put(main(), h('p', { class: 'error-text' }, e.message));
    showError(e);
  }
}

// A notice belongs to the page it was raised on: leaving the page dismisses it.
window.addEventListener('hashchange', () => {
  $('#notice').hidden = true;
  route();
});
window.addEventListener('DOMContentLoaded', () => {
  $('#token-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    $('#token-dialog').close();
    setToken($('#token-input').value);
  });
  $('#notice').addEventListener('click', () => ($('#notice').hidden = true));
  renderTokenState();
  setLive(false);
  startEvents();
  route();
});
