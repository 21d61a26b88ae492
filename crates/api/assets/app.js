// Hale's status page. Plain JavaScript, no dependencies: it reads the JSON routes and the
// event stream of the Hale that served it, and never talks to any other origin.
// The admin token (when Hale asks for one) lives in sessionStorage and travels in the
// Authorization header only; the event stream is read with fetch() for that reason
// (EventSource cannot send headers).
'use strict';

(() => {
  const TOKEN_KEY = 'hale.adminToken';
  const REFRESH_MS = 1000;
  const MAX_EVENTS = 300;
  const SVG = 'http' + '://www.w3.org/2000/svg';

  const $ = (id) => document.getElementById(id);
  let token = sessionStorage.getItem(TOKEN_KEY) || '';
  let tokenMode = token !== '';
  let running = false;
  let lastSeq = 0;
  let events = [];
  let endpoints = [];
  let streamAbort = null;
  let refreshTimer = null;
  let refreshing = false;
  let refreshAgain = false;
  let pendingAction = null;
  const rows = new Map();

  class AuthError extends Error {}

  function authHeaders(extra) {
    const h = Object.assign({}, extra || {});
    if (token) h.Authorization = 'Bearer ' + token;
    return h;
  }

  async function getJson(path) {
    const r = await fetch(path, { headers: authHeaders(), cache: 'no-store' });
    if (r.status === 401) throw new AuthError('token refused');
    if (!r.ok) throw new Error(path + ': HTTP ' + r.status);
    return r.json();
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function ago(iso) {
    if (!iso) return 'never';
    const s = Math.round((Date.now() - Date.parse(iso)) / 1000);
    if (s < 0) return 'in ' + human(-s);
    return human(s) + ' ago';
  }

  function human(s) {
    if (s < 60) return s + ' s';
    if (s < 3600) return Math.floor(s / 60) + ' min';
    if (s < 86400) return Math.floor(s / 3600) + ' h ' + Math.floor((s % 3600) / 60) + ' min';
    return Math.floor(s / 86400) + ' d ' + Math.floor((s % 86400) / 3600) + ' h';
  }

  function ms(v) {
    if (v === null || v === undefined) return '–';
    return (v < 10 ? v.toFixed(1) : Math.round(v)) + ' ms';
  }

  function clock(iso) {
    const d = new Date(iso);
    return isNaN(d) ? iso : d.toLocaleString(undefined, { hour12: false });
  }

  // ---- auth -------------------------------------------------------------------------

  function askForToken(refused) {
    stop();
    tokenMode = true;
    endpoints = [];
    events = [];
    rows.clear();
    document.querySelector('#endpoints tbody').replaceChildren();
    document.querySelector('#models tbody').replaceChildren();
    $('timeline').replaceChildren();
    $('fleet').replaceChildren();
    $('content').hidden = true;
    $('login').hidden = false;
    $('forget').hidden = true;
    $('login-error').textContent = refused ? 'That token was refused.' : '';
    if (refused) {
      token = '';
      sessionStorage.removeItem(TOKEN_KEY);
    }
    setLive(false, 'locked');
    $('token').focus();
  }

  $('login-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    const value = $('token').value.trim();
    if (!value) return;
    token = value;
    tokenMode = true;
    sessionStorage.setItem(TOKEN_KEY, token);
    $('token').value = '';
    start();
  });

  $('forget').addEventListener('click', () => {
    token = '';
    sessionStorage.removeItem(TOKEN_KEY);
    askForToken(false);
  });

  // ---- lifecycle ----------------------------------------------------------------------

  async function start() {
    stop();
    running = true;
    $('login').hidden = true;
    try {
      const log = await getJson('/internal/events');
      events = log.events.slice(-MAX_EVENTS).reverse();
      lastSeq = events.length ? events[0].seq : 0;
      await refresh();
    } catch (e) {
      if (e instanceof AuthError) {
        askForToken(token !== '');
        return;
      }
      notice('Cannot read Hale: ' + e.message, true);
    }
    $('content').hidden = false;
    $('forget').hidden = !tokenMode;
    renderTimeline();
    refreshTimer = setInterval(refresh, REFRESH_MS);
    follow();
  }

  function stop() {
    running = false;
    if (refreshTimer) clearInterval(refreshTimer);
    refreshTimer = null;
    if (streamAbort) streamAbort.abort();
    streamAbort = null;
  }

  async function refresh() {
    if (!running) return;
    if (refreshing) {
      refreshAgain = true;
      return;
    }
    refreshing = true;
    try {
      const [summary, list, models, shared] = await Promise.all([
        getJson('/internal/status'),
        getJson('/internal/status/endpoints'),
        getJson('/internal/stats/models'),
        getJson('/health/shared-status'),
      ]);
      if (!running) return;
      endpoints = list.endpoints;
      renderFleet(summary, shared);
      renderEndpoints(list.endpoints);
      renderModels(models.models);
      renderFilter();
      $('updated').textContent = 'updated ' + new Date().toLocaleTimeString(undefined, { hour12: false });
    } catch (e) {
      if (e instanceof AuthError) {
        askForToken(true);
      } else {
        $('updated').textContent = 'update failed: ' + e.message;
      }
    } finally {
      refreshing = false;
      if (refreshAgain && running) {
        refreshAgain = false;
        refresh();
      }
    }
  }

  // ---- the event stream ---------------------------------------------------------------

  function setLive(on, text) {
    const live = $('live');
    live.className = 'live ' + (on ? 'on' : 'off');
    live.textContent = text || (on ? 'live' : 'reconnecting');
  }

  async function follow() {
    while (running) {
      const ctrl = new AbortController();
      streamAbort = ctrl;
      try {
        const headers = authHeaders({ Accept: 'text/event-stream' });
        if (lastSeq > 0) headers['Last-Event-ID'] = String(lastSeq);
        const r = await fetch('/internal/events/stream', {
          headers, signal: ctrl.signal, cache: 'no-store',
        });
        if (r.status === 401) {
          askForToken(true);
          return;
        }
        if (!r.ok || !r.body) throw new Error('HTTP ' + r.status);
        setLive(true);
        const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += value;
          buf = buf.replace(/\r\n/g, '\n');
          let end;
          while ((end = buf.indexOf('\n\n')) >= 0) {
            const block = buf.slice(0, end);
            buf = buf.slice(end + 2);
            onBlock(block);
          }
        }
      } catch (e) {
        if (ctrl.signal.aborted) return;
      }
      if (!running) return;
      setLive(false);
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }

  function onBlock(block) {
    let id = null;
    let type = 'message';
    const data = [];
    for (const line of block.split('\n')) {
      if (line === '' || line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'id') id = value;
      else if (field === 'event') type = value;
      else if (field === 'data') data.push(value);
    }
    if (type === 'gap') {
      notice('Some transitions were missed while the page was away; the timeline shows what Hale still holds.', false);
      reloadEvents();
      return;
    }
    if (type !== 'message' || data.length === 0) return;
    let ev;
    try {
      ev = JSON.parse(data.join('\n'));
    } catch (e) {
      return;
    }
    const seq = Number(id);
    if (Number.isSafeInteger(seq) && seq > lastSeq) lastSeq = seq;
    if (!events.some((e) => e.seq === ev.seq)) {
      events.unshift(ev);
      if (events.length > MAX_EVENTS) events.length = MAX_EVENTS;
    }
    renderTimeline();
    refresh();
  }

  async function reloadEvents() {
    try {
      const log = await getJson('/internal/events');
      events = log.events.slice(-MAX_EVENTS).reverse();
      renderTimeline();
    } catch (e) {
      if (e instanceof AuthError) askForToken(true);
    }
  }

  // ---- rendering --------------------------------------------------------------------------

  function notice(text, bad) {
    const n = $('notice');
    n.textContent = text;
    n.className = 'notice' + (bad ? ' bad' : '');
    n.hidden = false;
  }

  function renderFleet(summary, shared) {
    const st = shared.status || {};
    const items = [
      ['This pod', summary.pod_id],
      ['Version', summary.version],
      ['Ready', summary.ready ? 'yes' : 'no', summary.ready ? 'yes' : 'no'],
      ['Shared mode', shared.shared_health_check_enabled ? (st.mode || summary.mode) : 'off (local checks)'],
      shared.shared_health_check_enabled
        ? ['Redis available', st.redis_available ? 'yes' : 'no', st.redis_available ? 'yes' : 'no']
        : ['Redis available', '– (not used)'],
      ['Lease owner', st.lock_owner || '–'],
      ['Replicas seen', summary.replicas],
      ['Checks performed', st.checks_performed ?? '–'],
      ['Checks skipped', st.checks_skipped ?? '–'],
      ['Uptime', human(summary.uptime_seconds)],
    ];
    if (st.last_error) items.push(['Last Redis error', st.last_error, 'no']);
    const dl = $('fleet');
    dl.replaceChildren(...items.map(([k, v, cls]) => {
      const d = el('div');
      d.append(el('dt', '', k), el('dd', cls || '', v));
      return d;
    }));
    $('version').textContent = 'v' + summary.version + ' · ' + summary.pod_id;
    const counts = summary.endpoints || {};
    $('counts').textContent = Object.entries(counts)
      .filter(([, n]) => n > 0).map(([s, n]) => n + ' ' + s).join(' · ');
  }

  function sparkline(checks) {
    const w = 180;
    const h = 28;
    const slot = w / 60;
    const svg = document.createElementNS(SVG, 'svg');
    svg.setAttribute('class', 'spark');
    svg.setAttribute('width', w);
    svg.setAttribute('height', h);
    svg.setAttribute('viewBox', '0 0 ' + w + ' ' + h);
    const failures = checks.filter((c) => !c.ok).length;
    svg.setAttribute('data-checks', checks.length);
    svg.setAttribute('data-failures', failures);
    const max = Math.max(1, ...checks.filter((c) => c.ok && c.latency_ms !== null).map((c) => c.latency_ms));
    const offset = 60 - checks.length;
    checks.forEach((c, i) => {
      const r = document.createElementNS(SVG, 'rect');
      // Square-root scale: one slow check does not flatten all the others.
      const bh = c.ok ? Math.max(2, Math.sqrt((c.latency_ms || 0) / max) * (h - 2)) : h;
      r.setAttribute('x', ((offset + i) * slot).toFixed(2));
      r.setAttribute('y', (h - bh).toFixed(2));
      r.setAttribute('width', Math.max(1, slot - 1).toFixed(2));
      r.setAttribute('height', bh.toFixed(2));
      r.setAttribute('class', c.ok ? 'ok' : 'fail');
      const t = document.createElementNS(SVG, 'title');
      t.textContent = clock(c.at) + ' · ' + (c.ok ? 'ok' : 'failed') + ' · ' + ms(c.latency_ms);
      r.append(t);
      svg.append(r);
    });
    return svg;
  }

  function makeRow(name) {
    const tr = el('tr');
    tr.dataset.endpoint = name;
    const cells = {};
    for (const k of ['ident', 'state', 'check', 'spark', 'models', 'traffic', 'actions']) {
      cells[k] = el('td', 'col-' + k);
      tr.append(cells[k]);
    }
    const toggle = el('button', 'drain', 'Drain');
    toggle.type = 'button';
    toggle.addEventListener('click', () => {
      const ep = endpoints.find((e) => e.name === name);
      const drained = ep && ep.drained;
      confirmAction(drained ? 'enable' : 'drain', name);
    });
    const check = el('button', 'check', 'Check now');
    check.type = 'button';
    check.addEventListener('click', () => confirmAction('check', name));
    cells.actions.append(toggle, check);
    rows.set(name, { tr, cells, toggle });
    return rows.get(name);
  }

  function renderEndpoints(list) {
    const tbody = document.querySelector('#endpoints tbody');
    const names = new Set(list.map((e) => e.name));
    for (const [name, row] of rows) {
      if (!names.has(name)) {
        row.tr.remove();
        rows.delete(name);
      }
    }
    document.querySelectorAll('.actions-col').forEach((th) => { th.hidden = !tokenMode; });
    list.forEach((e, i) => {
      const row = rows.get(e.name) || makeRow(e.name);
      if (tbody.children[i] !== row.tr) tbody.insertBefore(row.tr, tbody.children[i] || null);
      const c = row.cells;
      row.tr.className = 'state-' + e.status;
      row.tr.dataset.state = e.status;

      c.ident.replaceChildren(
        el('div', 'name', e.name),
        el('div', 'muted small', e.type + ' · ' + e.url),
        el('div', 'muted small', 'priority ' + e.priority + ' · weight ' + e.weight),
      );

      const state = [el('span', 'badge ' + e.status, e.status)];
      if (e.reason) state.push(document.createTextNode(' '), el('span', 'reason', e.reason));
      state.push(el('div', 'muted small', e.phase + ' · since ' + ago(e.since)));
      if (e.error) state.push(el('div', 'error small errtext', e.error));
      c.state.replaceChildren(...state);

      c.check.replaceChildren(
        el('div', '', ago(e.last_check) + (e.last_latency_ms !== null ? ' · ' + ms(e.last_latency_ms) : '')),
        el('div', 'muted small', 'by ' + (e.checked_by || '–') + ' (' + e.source + ')'),
        el('div', 'muted small', e.checks_total + ' checks · ' + e.uptime_percentage + ' % ok'),
      );

      c.spark.replaceChildren(sparkline(e.recent_checks || []));

      c.models.replaceChildren(...(e.models.length
        ? e.models.map((m) => el('span', 'tag', m))
        : [el('span', 'muted', 'none yet')]));

      const traffic = [];
      traffic.push(el('span', 'tag' + (e.breaker === 'closed' ? '' : ' bad'), 'breaker ' + e.breaker));
      if (e.outlier.ejected_until) traffic.push(el('span', 'tag bad', 'ejected until ' + clock(e.outlier.ejected_until)));
      if (e.outlier.ejections) traffic.push(el('span', 'tag warn', e.outlier.ejections + ' ejections'));
      if (e.outlier.recent_requests) {
        traffic.push(el('span', 'tag', e.outlier.recent_requests + ' req · ' +
          Math.round(e.outlier.recent_failure_rate * 100) + ' % failed'));
      }
      if (e.drained) traffic.push(el('span', 'tag warn drained', 'drained'));
      c.traffic.replaceChildren(...traffic);

      c.actions.hidden = !tokenMode;
      row.toggle.textContent = e.drained ? 'Enable' : 'Drain';
      row.toggle.className = e.drained ? 'enable' : 'drain';
    });
  }

  function renderModels(models) {
    const tbody = document.querySelector('#models tbody');
    tbody.replaceChildren(...models.map((m) => {
      const tr = el('tr');
      tr.dataset.model = m.name;
      const now = m.routable_endpoints.length
        ? m.routable_endpoints.map((n) => el('span', 'tag', n))
        : [el('span', 'none', 'no endpoint')];
      const serving = el('td');
      serving.append(...now);
      const configured = el('td');
      configured.append(...m.endpoints.map((n) => el('span', 'tag', n)));
      tr.append(el('td', 'name', m.name), serving, configured, el('td', '', m.requests_total));
      return tr;
    }));
  }

  function renderFilter() {
    const select = $('filter');
    const have = new Set([...select.options].map((o) => o.value));
    for (const e of endpoints) {
      if (!have.has(e.name)) select.append(new Option(e.name, e.name));
    }
  }

  function renderTimeline() {
    const only = $('filter').value;
    const shown = events.filter((e) => !only || e.endpoint === only);
    $('timeline').replaceChildren(...shown.map((e) => {
      const li = el('li');
      li.dataset.endpoint = e.endpoint;
      li.dataset.to = e.to;
      const what = el('div');
      what.append(
        el('span', 'badge ' + e.from, e.from), document.createTextNode(' → '),
        el('span', 'badge ' + e.to, e.to),
      );
      const why = el('div');
      why.append(el('span', 'name', e.endpoint));
      if (e.reason) why.append(document.createTextNode(' · '), el('span', 'reason', e.reason));
      if (e.error) why.append(document.createTextNode(' · '), el('span', 'error', e.error));
      why.append(el('span', 'muted small', ' · ' + e.source + ' by ' + e.pod_id));
      li.append(el('div', 'muted', clock(e.at)), what, why);
      return li;
    }));
    $('timeline-empty').hidden = shown.length > 0;
  }

  $('filter').addEventListener('change', renderTimeline);

  // ---- admin actions -----------------------------------------------------------------

  const ACTION_TEXT = {
    drain: (n) => 'Drain ' + n + '? It gets no new requests on this replica until enabled; its checks go on.',
    enable: (n) => 'Enable ' + n + '? It takes traffic again as soon as it is healthy.',
    check: (n) => 'Check ' + n + ' now?',
  };

  function confirmAction(action, name) {
    pendingAction = { action, name };
    $('confirm-text').textContent = ACTION_TEXT[action](name);
    $('confirm-ok').textContent = action[0].toUpperCase() + action.slice(1);
    $('confirm').showModal();
  }

  $('confirm-cancel').addEventListener('click', () => {
    pendingAction = null;
    $('confirm').close();
  });

  $('confirm-ok').addEventListener('click', async () => {
    const todo = pendingAction;
    pendingAction = null;
    $('confirm').close();
    if (!todo) return;
    const path = '/internal/endpoints/' + encodeURIComponent(todo.name) + '/' + todo.action;
    try {
      const r = await fetch(path, { method: 'POST', headers: authHeaders(), cache: 'no-store' });
      if (r.status === 401) {
        askForToken(true);
        return;
      }
      const body = await r.json().catch(() => ({}));
      if (r.ok) {
        let detail = '';
        if (todo.action === 'check') {
          detail = ': ' + (body.outcome || '?') + ' in ' + ms(body.latency_ms) +
            (body.status ? ', now ' + body.status : '');
        } else if (body.changed === false) {
          detail = ': it already was';
        }
        notice(todo.action + ' ' + todo.name + ': done' + detail, false);
      } else {
        notice(todo.action + ' ' + todo.name + ' failed: ' +
          ((body.error && body.error.message) || 'HTTP ' + r.status), true);
      }
    } catch (e) {
      notice(todo.action + ' ' + todo.name + ' failed: ' + e.message, true);
    }
    refresh();
  });

  // Relative times stay true between refreshes of the data.
  setInterval(() => { if (running && endpoints.length) renderTimeline(); }, 30000);

  start();
})();
