/*
 * sp00ky job runner — dashboard. Plain ES2020, no build step.
 *
 * How it is organised (top to bottom):
 *   1. helpers   – DOM building (createElement + textContent only), formatting, times
 *   2. api       – fetch wrapper: bearer token, JSON, `{"error"}` → ApiError, 401 → sign-in
 *   3. session   – sign-in / sign-out; the token lives in sessionStorage only
 *   4. router    – hash routes #/, #/jobs?…, #/job/<id> → one show*() per view
 *   5. overview  – runner facts, one card per backend with two inline SVG charts
 *   6. jobs      – filters, table, paging, bulk actions, live re-reads of the page shown
 *   7. job page  – facts, payload, errors, timeline, retry / cancel
 *   8. actions   – the confirm <dialog>, POST requests, notices
 *   9. live feed – /v1/events read with fetch + a small SSE parser, reconnect with backoff
 *
 * Every value from the API is untrusted: it reaches the page only as text (textContent,
 * text nodes, attribute values) and reaches URLs only through encodeURIComponent.
 */
(() => {
  'use strict';

  const TOKEN_KEY = 'sp00ky.token';
  const STATUSES = ['pending', 'processing', 'success', 'failed'];
  const STATUS_LABEL = { pending: 'Pending', processing: 'Processing', success: 'Success', failed: 'Failed' };
  const PAGE_SIZE = 50;
  const LIVE_RELOAD_MS = 500; // the jobs page reads its page again at most this often
  const UNREACHABLE = 'The runner is not reachable';
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const ACTION_BUTTONS = ['job-retry', 'job-cancel', 'bulk-retry', 'bulk-delete'];

  const state = {
    token: null,
    overview: null,
    route: null,
    seq: 0, // bumped by every render; answers for an older render are dropped
    busy: false, // an action request is running
    retryTimer: 0,
    stream: { gen: 0, abort: null, everConnected: false },
    jobs: null, // see resetJobsState()
    job: { id: null, loading: false, again: false },
  };

  // ---------------------------------------------------------------- 1. helpers

  const $ = (id) => document.getElementById(id);

  /** createElement with attributes and children; strings become text nodes, never markup. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    for (const child of children) if (child !== null && child !== undefined) node.append(child);
    return node;
  }

  function svgEl(tag, attrs) {
    const node = document.createElementNS(SVG_NS, tag);
    setAttrs(node, attrs);
    return node;
  }

  function setAttrs(node, attrs) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      node.setAttribute(key, value === true ? '' : String(value));
    }
  }

  const num = (v) => (typeof v === 'number' && Number.isFinite(v) ? v : null);

  /** Any untrusted value as display text. */
  function show(v) {
    if (v === undefined || v === null || v === '') return '—';
    if (typeof v === 'object') {
      try { return JSON.stringify(v); } catch { return String(v); }
    }
    return String(v);
  }

  const truncate = (s, n) => (s.length > n ? `${s.slice(0, n - 1)}…` : s);
  const round = (v, digits) => String(Math.round(v * 10 ** digits) / 10 ** digits);
  const fmtRate = (v) => round(v, v >= 10 ? 0 : v >= 1 ? 1 : 2);
  const fmtMs = (v) => (v >= 1000 ? `${round(v / 1000, 2)} s` : `${round(v, v >= 10 ? 0 : 1)} ms`);
  const plural = (n, word) => `${n} ${word}${n === 1 ? '' : 's'}`;

  function fmtSpan(sec, short) {
    if (sec < 120) return short ? `${sec} s` : `${sec} seconds`;
    if (sec < 7200) return short ? `${round(sec / 60, 0)} min` : `${round(sec / 60, 0)} minutes`;
    return short ? `${round(sec / 3600, 1)} h` : `${round(sec / 3600, 1)} hours`;
  }

  /** "job:0123abcd…" — the table prefix and the first characters of the key. */
  function shortId(id) {
    const s = String(id ?? '');
    const colon = s.indexOf(':');
    const key = colon >= 0 ? s.slice(colon + 1) : s;
    if (key.length <= 10) return s;
    return `${colon >= 0 ? s.slice(0, colon + 1) : ''}${key.slice(0, 8)}…`;
  }

  /** encodeURIComponent, plus dots so an id can never become a ".." path segment. */
  const encodeId = (id) => encodeURIComponent(String(id)).replace(/\./g, '%2E');
  const jobHref = (id) => `#/job/${encodeId(id)}`;
  const statusName = (s) => (STATUSES.includes(s) ? s : 'unknown');

  const badge = (status) => { const node = el('span'); setBadge(node, status); return node; };

  function setBadge(node, status) {
    node.className = `status status-${statusName(status)}`;
    node.textContent = show(status);
  }

  function attempts(retries, max) {
    if (retries == null && max == null) return '—';
    return `${retries == null ? '0' : show(retries)}/${max == null || max === '' ? '?' : show(max)}`;
  }

  /** The newest real error entry (skips the "truncated" marker). */
  function lastError(errors) {
    if (!Array.isArray(errors)) return null;
    for (let i = errors.length - 1; i >= 0; i--) {
      const e = errors[i];
      if (e && typeof e === 'object' && e.kind !== 'truncated') return e;
    }
    return null;
  }

  const errorText = (e) => (e.reason != null && e.reason !== '' ? show(e.reason) : `${show(e.kind)} ${e.code ?? ''}`.trim());

  // times
  const rtf = new Intl.RelativeTimeFormat(undefined, { numeric: 'auto' });
  const UNITS = [[60, 'second', 1], [3600, 'minute', 60], [86400, 'hour', 3600],
    [2592000, 'day', 86400], [31536000, 'month', 2592000], [Infinity, 'year', 31536000]];

  function parseTime(v) {
    if (typeof v !== 'string' || !v) return null;
    const ms = Date.parse(v);
    return Number.isNaN(ms) ? null : ms;
  }

  function relative(ms) {
    const diff = (ms - Date.now()) / 1000;
    for (const [limit, unit, size] of UNITS) {
      if (Math.abs(diff) < limit) return rtf.format(Math.round(diff / size), unit);
    }
    return '';
  }

  const absolute = (ms) => new Date(ms).toLocaleString();

  /** A <time>: mode "rel" (relative text, absolute title), "abs", or "both". */
  function timeEl(value, mode) {
    const ms = parseTime(value);
    if (ms === null) return el('span', { class: 'muted' }, value == null ? '—' : show(value));
    const iso = new Date(ms).toISOString();
    if (mode === 'rel') return el('time', { datetime: iso, title: absolute(ms), 'data-rel': ms }, relative(ms));
    const abs = el('time', { datetime: iso, title: String(value) }, absolute(ms));
    if (mode === 'abs') return abs;
    return el('span', null, abs, ' (', el('span', { 'data-rel': ms }, relative(ms)), ')');
  }

  function refreshRelativeTimes() {
    for (const node of document.querySelectorAll('[data-rel]')) node.textContent = relative(Number(node.dataset.rel));
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // ---------------------------------------------------------------- 2. api

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status; // 0 = network failure
    }
  }

  async function readBody(res) {
    try { return await res.json(); } catch { return null; }
  }

  function errorMessage(res, body) {
    if (body && typeof body.error === 'string' && body.error.trim()) return body.error;
    return `The runner could not answer this request (HTTP ${res.status}).`;
  }

  async function request(method, path, body, token) {
    const init = { method, cache: 'no-store', headers: { Authorization: `Bearer ${token}`, Accept: 'application/json' } };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let res;
    try { res = await fetch(path, init); } catch { throw new ApiError(0, UNREACHABLE); }
    const data = await readBody(res);
    if (!res.ok) throw new ApiError(res.status, errorMessage(res, data));
    if (data === null || typeof data !== 'object') {
      throw new ApiError(res.status, 'The runner sent an answer the dashboard cannot read.');
    }
    return data;
  }

  /** A request with the stored token; a 401 ends the session. */
  async function api(method, path, body) {
    const token = state.token;
    if (!token) throw new ApiError(401, 'Not signed in');
    try {
      return await request(method, path, body, token);
    } catch (err) {
      if (err.status === 401 && state.token === token) showSignIn(`You were signed out: ${err.message}`);
      throw err;
    }
  }

  // ---------------------------------------------------------------- notices

  let noticeTimer = 0;

  function notify(text, isError = false) {
    const box = $('notice');
    clearTimeout(noticeTimer);
    box.classList.toggle('notice-error', isError);
    box.textContent = text;
    if (!isError) noticeTimer = setTimeout(clearNotice, 10000);
  }

  function clearNotice() {
    $('notice').textContent = '';
    $('notice').classList.remove('notice-error');
  }

  function reportError(err) {
    if (err && err.status === 401) return; // already back at the sign-in form
    if (err instanceof ApiError) {
      notify(err.message, true);
      if (err.status === 0) scheduleRetry();
      return;
    }
    console.error(err);
    notify(`Something went wrong in the dashboard: ${err && err.message ? err.message : err}`, true);
  }

  /** After a network failure, load the current view again in a few seconds. */
  function scheduleRetry() {
    if (state.retryTimer) return;
    state.retryTimer = setTimeout(() => {
      state.retryTimer = 0;
      if (state.token) renderRoute(false);
    }, 5000);
  }

  // ---------------------------------------------------------------- 3. session

  // sessionStorage only (never localStorage, never a URL); if storage is off it stays in memory.
  const readToken = () => { try { return sessionStorage.getItem(TOKEN_KEY); } catch { return null; } };
  const storeToken = (t) => { try { sessionStorage.setItem(TOKEN_KEY, t); } catch { /* memory only */ } };
  const dropToken = () => { try { sessionStorage.removeItem(TOKEN_KEY); } catch { /* nothing stored */ } };

  async function onSignIn(event) {
    event.preventDefault();
    const input = $('token');
    const errorBox = $('sign-in-error');
    const token = input.value.trim();
    errorBox.textContent = '';
    if (!token) { errorBox.textContent = 'Enter the admin token.'; return; }
    if (/[^\x21-\x7e]/.test(token)) { errorBox.textContent = 'The token contains characters that cannot be sent.'; return; }
    $('sign-in').disabled = true;
    try {
      const overview = await request('GET', '/v1/overview', undefined, token);
      storeToken(token);
      state.token = token;
      state.overview = overview;
      input.value = '';
      startApp();
    } catch (err) {
      errorBox.textContent = err instanceof ApiError ? err.message : UNREACHABLE;
    } finally {
      $('sign-in').disabled = false;
    }
  }

  function startApp() {
    $('signin').hidden = true;
    $('sign-in-error').textContent = '';
    $('session-bar').hidden = false;
    startStream();
    renderRoute(false);
  }

  /** Forget the token and every loaded value, then show the sign-in form. */
  function showSignIn(message) {
    state.token = null;
    dropToken();
    stopStream();
    state.seq++;
    clearTimeout(state.retryTimer);
    state.retryTimer = 0;
    if ($('confirm').open) $('confirm').close('no');
    clearViews();
    $('session-bar').hidden = true;
    for (const id of ['overview', 'jobs', 'job']) $(id).hidden = true;
    $('signin').hidden = false;
    $('sign-in-error').textContent = message || '';
    document.title = 'Sign in · sp00ky job runner';
    $('token').value = '';
    $('token').focus();
  }

  function onSignOut() {
    showSignIn('');
    notify('Signed out.');
  }

  function clearViews() {
    state.overview = null;
    resetJobsState();
    state.job = { id: null, loading: false, again: false };
    for (const id of ['runner-facts', 'backend-cards', 'jobs-body', 'job-facts', 'job-payload', 'job-errors', 'job-timeline', 'job-id']) {
      $(id).replaceChildren();
    }
    $('filter-backend').replaceChildren();
  }

  function resetJobsState() {
    state.jobs = {
      filters: null, filterKey: null, backend: '', table: undefined,
      pages: [''], next: null, seenCounts: null, eventsSinceOverview: 0,
      changed: new Set(), reloadTimer: 0, reloading: false, reloadAgain: false, reloadedAt: 0,
    };
  }

  // ---------------------------------------------------------------- 4. router

  function parseRoute() {
    const hash = location.hash.replace(/^#/, '');
    if (hash.startsWith('/job/')) {
      let id = '';
      try { id = decodeURIComponent(hash.slice(5)); } catch { id = ''; }
      if (id) return { view: 'job', id };
    }
    if (hash === '/jobs' || hash.startsWith('/jobs?')) return { view: 'jobs', params: new URLSearchParams(hash.slice(6)) };
    return { view: 'overview' };
  }

  async function renderRoute(moveFocus) {
    if (!state.token) return;
    clearTimeout(state.retryTimer);
    state.retryTimer = 0;
    const route = parseRoute();
    const seq = ++state.seq;
    state.route = route;
    for (const id of ['overview', 'jobs', 'job']) $(id).hidden = id !== route.view;
    const section = route.view === 'job' ? 'jobs' : route.view;
    for (const link of document.querySelectorAll('[data-nav]')) {
      if (link.dataset.nav === section) link.setAttribute('aria-current', 'page');
      else link.removeAttribute('aria-current');
    }
    if (moveFocus) $(`${route.view}-title`).focus();
    try {
      if (route.view === 'overview') await showOverview(seq);
      else if (route.view === 'jobs') await showJobs(route.params, seq);
      else await showJob(route.id, seq);
      if (seq === state.seq && $('notice').textContent === UNREACHABLE) clearNotice();
    } catch (err) {
      if (seq === state.seq) reportError(err);
    }
  }

  // ---------------------------------------------------------------- 5. overview

  const backendsOf = (o) => (o && Array.isArray(o.backends) ? o.backends.filter((b) => b && typeof b === 'object') : []);

  async function showOverview(seq) {
    document.title = 'Overview · sp00ky job runner';
    if (state.overview) drawOverview(state.overview);
    const data = await api('GET', '/v1/overview');
    if (seq === state.seq) setOverview(data);
  }

  /** A new overview, from a fetch or from the live feed. */
  function setOverview(data) {
    if (!data || typeof data !== 'object') return;
    state.overview = data;
    const view = state.route && state.route.view;
    if (view === 'overview') drawOverview(data);
    if (view === 'jobs') {
      syncBackendPicker(data);
      checkCounts();
    }
  }

  function drawOverview(o) {
    drawFacts(o);
    const box = $('backend-cards');
    const backends = backendsOf(o);
    const names = new Set();
    backends.forEach((b, i) => {
      const name = show(b.name);
      names.add(name);
      const card = [...box.children].find((c) => c.dataset.backend === name) || buildCard(name);
      if (box.children[i] !== card) box.insertBefore(card, box.children[i] || null);
      updateCard(card, b);
    });
    for (const card of [...box.children]) if (!names.has(card.dataset.backend)) card.remove();
    $('overview-empty').hidden = backends.length > 0;
  }

  function drawFacts(o) {
    const tone = (v) => (v === true ? 'ok' : v === false ? 'bad' : null);
    const facts = [
      ['Runner', show(o.runner_id)],
      ['Version', show(o.version)],
      ['Database', o.database === true ? 'up' : o.database === false ? 'down' : 'unknown', tone(o.database)],
      ['Live queries', o.live_queries === true ? 'armed' : o.live_queries === false ? 'not armed' : 'unknown',
        o.live_queries === false ? 'warn' : tone(o.live_queries)],
      ['In flight', `${show(o.in_flight)} / ${show(o.concurrency)}`],
      ['Lease rescues', show(o.rescues)],
    ];
    $('runner-facts').replaceChildren(...facts.map(([term, value, t]) =>
      el('div', { class: 'fact' }, el('dt', null, term), el('dd', { class: t ? `tone-${t}` : null }, value))));
  }

  function jobsHash(f) {
    const params = new URLSearchParams();
    for (const key of ['backend', 'status', 'path', 'q', 'cursor']) if (f[key]) params.set(key, f[key]);
    const query = params.toString();
    return query ? `#/jobs?${query}` : '#/jobs';
  }

  function buildCard(name) {
    const counts = el('ul', { class: 'counts' });
    for (const s of STATUSES) {
      counts.append(el('li', null, el('a', { class: `count count-${s}`, href: jobsHash({ backend: name, status: s }) },
        el('span', { class: 'count-label' }, STATUS_LABEL[s]),
        el('span', { class: 'count-value', 'data-count': s }, '—'))));
    }
    return el('article', { class: 'backend-card', 'data-backend': name },
      el('h2', { class: 'card-title' }, name),
      el('p', { class: 'card-table muted' }, 'Table ', el('code', { 'data-field': 'table' })),
      counts,
      el('div', { class: 'charts' },
        chartFigure('throughput', 'Throughput (jobs/s)'),
        chartFigure('latency', 'Mean attempt latency')));
  }

  function updateCard(card, b) {
    card.querySelector('[data-field="table"]').textContent = show(b.table);
    const counts = b.counts && typeof b.counts === 'object' ? b.counts : {};
    for (const s of STATUSES) {
      const n = num(counts[s]);
      card.querySelector(`[data-count="${s}"]`).textContent = n === null ? '—' : String(n);
    }
    const sr = seriesOf(b.series);
    drawThroughput(card.querySelector('[data-chart="throughput"]'), sr);
    drawLatency(card.querySelector('[data-chart="latency"]'), sr);
  }

  function seriesOf(s) {
    const src = s && typeof s === 'object' ? s : {};
    const list = (a) => (Array.isArray(a) ? a : []);
    const finished = list(src.finished);
    const failed = list(src.failed);
    const latency = list(src.latency_ms);
    const step = num(src.step_s) > 0 ? src.step_s : 5;
    return { step, finished, failed, latency, n: Math.max(finished.length, failed.length, latency.length) };
  }

  function chartFigure(kind, title) {
    const plot = svgEl('svg', { class: `chart chart-${kind}`, viewBox: '0 0 60 100', preserveAspectRatio: 'none', role: 'img', focusable: 'false' });
    const legend = kind !== 'throughput' ? null
      : el('p', { class: 'legend', 'aria-hidden': 'true' },
        el('span', { class: 'swatch swatch-ok' }), 'succeeded', el('span', { class: 'swatch swatch-failed' }), 'failed');
    return el('figure', { class: 'chart-figure', 'data-chart': kind },
      el('figcaption', null, title),
      el('div', { class: 'chart-plot' }, el('span', { class: 'chart-max', 'data-role': 'max', 'aria-hidden': 'true' }), plot),
      el('div', { class: 'chart-axis', 'aria-hidden': 'true' }, el('span', { 'data-role': 'from' }), el('span', null, 'now')),
      legend);
  }

  /** A round number at or above v, for the top of an axis. */
  function niceMax(v) {
    if (!(v > 0)) return 1;
    const pow = 10 ** Math.floor(Math.log10(v));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * pow >= v) return m * pow;
    return 10 * pow;
  }

  function labelChart(fig, top, n, step, label) {
    const plot = fig.querySelector('svg');
    plot.setAttribute('viewBox', `0 0 ${n || 1} 100`);
    plot.setAttribute('aria-label', label);
    fig.querySelector('[data-role="max"]').textContent = top;
    fig.querySelector('[data-role="from"]').textContent = n ? `−${fmtSpan(n * step, true)}` : '';
    return plot;
  }

  function gridline(n) {
    return svgEl('line', { class: 'gridline', x1: 0, x2: n || 1, y1: 1, y2: 1, 'vector-effect': 'non-scaling-stroke' });
  }

  /** Stacked bars: succeeded per second at the bottom, failed per second on top. */
  function drawThroughput(fig, sr) {
    const { n, step } = sr;
    const ok = [];
    const bad = [];
    for (let i = 0; i < n; i++) {
      ok.push((num(sr.finished[i]) ?? 0) / step);
      bad.push((num(sr.failed[i]) ?? 0) / step);
    }
    const totals = ok.map((v, i) => v + bad[i]);
    const peak = Math.max(0, ...totals);
    const top = niceMax(peak);
    const nodes = [gridline(n)];
    for (let i = 0; i < n; i++) {
      const h1 = (ok[i] / top) * 100;
      const h2 = (bad[i] / top) * 100;
      if (h1 > 0) nodes.push(svgEl('rect', { class: 'bar-ok', x: i + 0.1, y: 100 - h1, width: 0.8, height: h1 }));
      if (h2 > 0) nodes.push(svgEl('rect', { class: 'bar-failed', x: i + 0.1, y: 100 - h1 - h2, width: 0.8, height: h2 }));
    }
    const label = n
      ? `Throughput over the last ${fmtSpan(n * step)}, latest ${fmtRate(totals[n - 1])} jobs/s `
        + `(${fmtRate(bad[n - 1])} failed/s), peak ${fmtRate(peak)} jobs/s`
      : 'Throughput: no data yet';
    labelChart(fig, `${fmtRate(top)}/s`, n, step, label).replaceChildren(...nodes);
  }

  /** A line of mean attempt latency with gaps where a bucket had no attempts. */
  function drawLatency(fig, sr) {
    const { n, step } = sr;
    const values = [];
    for (let i = 0; i < n; i++) values.push(num(sr.latency[i]));
    const present = values.filter((v) => v !== null);
    const top = niceMax(Math.max(0, ...present));
    let d = '';
    let pen = false;
    values.forEach((v, i) => {
      if (v === null) { pen = false; return; }
      const y = 98 - (v / top) * 96;
      d += `${pen ? 'L' : 'M'}${i + 0.5} ${round(y, 2)}`;
      if (!pen && (i + 1 >= n || values[i + 1] === null)) d += 'h0.01'; // a lone point shows as a dot
      pen = true;
    });
    const nodes = [gridline(n)];
    if (d) nodes.push(svgEl('path', { class: 'line-latency', d, 'vector-effect': 'non-scaling-stroke' }));
    const latest = present.length ? present[present.length - 1] : null;
    const label = !n ? 'Mean attempt latency: no data yet' : latest === null
      ? `Mean attempt latency: no attempts in the last ${fmtSpan(n * step)}`
      : `Mean attempt latency over the last ${fmtSpan(n * step)}, latest ${fmtMs(latest)}, peak ${fmtMs(Math.max(...present))}`;
    labelChart(fig, fmtMs(top), n, step, label).replaceChildren(...nodes);
  }

  // ---------------------------------------------------------------- 6. jobs

  const tableOf = (backend) => {
    const b = backendsOf(state.overview).find((x) => String(x.name) === backend);
    return b && b.table != null ? String(b.table) : undefined;
  };

  function readFilters(params) {
    const names = backendsOf(state.overview).map((b) => String(b.name));
    let backend = params.get('backend') || '';
    if (!names.includes(backend) && names.length) {
      if (backend) notify(`There is no backend named "${backend}"; showing ${names[0]}.`, true);
      backend = names[0];
    }
    const status = params.get('status');
    return {
      backend,
      status: STATUSES.includes(status) ? status : '',
      path: params.get('path') || '',
      q: params.get('q') || '',
      cursor: params.get('cursor') || '',
    };
  }

  async function showJobs(params, seq) {
    document.title = 'Jobs · sp00ky job runner';
    if (!state.overview) {
      const o = await api('GET', '/v1/overview');
      if (seq !== state.seq) return;
      state.overview = o;
    }
    const J = state.jobs;
    const f = readFilters(params);
    const changed = trackPages(f);
    $('job-back').href = jobsHash(f); // the job page's way back keeps these filters
    J.filters = f;
    J.backend = f.backend;
    J.table = tableOf(f.backend);
    // Keep what the user is typing when the same view is merely refreshed.
    if (changed || !$('jobs-filter').contains(document.activeElement)) fillFilterForm(f);
    else syncBackendPicker(state.overview);
    syncBulkButtons();
    J.seenCounts = null;
    $('jobs-refresh').hidden = true;
    if (changed) $('jobs-body').replaceChildren(messageRow('Loading…'));
    await loadJobsPage(f, seq);
  }

  /**
   * Reads the page `f` names and draws exactly the server's answer: which jobs match the filters
   * is decided by the server alone, so the page cannot disagree with the API or the CLI.
   */
  async function loadJobsPage(f, seq) {
    const J = state.jobs;
    const query = new URLSearchParams();
    if (J.table) query.set('table', J.table);
    for (const key of ['status', 'path', 'q', 'cursor']) if (f[key]) query.set(key, f[key]);
    query.set('limit', String(PAGE_SIZE));
    J.reloadedAt = Date.now();
    $('jobs-table').setAttribute('aria-busy', 'true');
    try {
      const data = await api('GET', `/v1/jobs?${query}`);
      if (seq !== state.seq) return;
      const rows = Array.isArray(data.jobs) ? data.jobs.filter((r) => r && typeof r === 'object') : [];
      J.next = typeof data.next_cursor === 'string' && data.next_cursor ? data.next_cursor : null;
      // Redrawing must not throw keyboard focus out of the table.
      const active = document.activeElement;
      const focusedRow = active && $('jobs-body').contains(active) ? active.closest('tr') : null;
      const focusedId = focusedRow ? focusedRow.dataset.id : null;
      $('jobs-body').replaceChildren(...rows.map(jobRow));
      if (!rows.length) $('jobs-body').append(messageRow('No jobs match these filters.'));
      for (const id of J.changed) { const tr = findRow(id); if (tr) flash(tr); }
      J.changed.clear();
      const refocus = focusedId ? findRow(focusedId) : null;
      if (refocus && refocus.querySelector('a')) refocus.querySelector('a').focus();
      J.seenCounts = countsOf(f.backend);
      J.eventsSinceOverview = 0;
      syncPager(rows.length);
    } finally {
      if (seq === state.seq) $('jobs-table').removeAttribute('aria-busy');
    }
  }

  /** Keeps the chain of cursors visited under the same filters (for "Previous page" and Back). */
  function trackPages(f) {
    const J = state.jobs;
    const key = JSON.stringify([f.backend, f.status, f.path, f.q]);
    if (key !== J.filterKey) {
      J.filterKey = key;
      J.pages = f.cursor ? ['', f.cursor] : [''];
      return true;
    }
    const at = J.pages.indexOf(f.cursor);
    if (at >= 0) J.pages = J.pages.slice(0, at + 1);
    else J.pages.push(f.cursor);
    return false;
  }

  function syncPager(count) {
    const J = state.jobs;
    const page = J.pages.length;
    $('page-prev').disabled = page <= 1;
    $('page-next').disabled = !J.next;
    $('page-label').textContent = `Page ${page}`;
    const f = J.filters;
    const parts = [`${plural(count, 'job')} on page ${page}`];
    if (J.table) parts.push(`table ${J.table}`);
    if (f.status) parts.push(`status ${f.status}`);
    if (f.path) parts.push(`path ${f.path}`);
    if (f.q) parts.push(`containing "${f.q}"`);
    // A live region: rewriting the same text on every live re-read would be announced again.
    const summary = parts.join(' · ');
    if ($('jobs-summary').textContent !== summary) $('jobs-summary').textContent = summary;
  }

  function goPage(delta) {
    const J = state.jobs;
    if (!J.filters) return;
    let cursor;
    if (delta > 0) {
      if (!J.next) return;
      cursor = J.next;
    } else {
      if (J.pages.length < 2) return;
      cursor = J.pages[J.pages.length - 2];
    }
    location.hash = jobsHash({ ...J.filters, cursor });
  }

  function syncBackendPicker(o) {
    const select = $('filter-backend');
    const backends = backendsOf(o);
    const names = backends.map((b) => String(b.name));
    const current = [...select.options].map((opt) => opt.value);
    if (JSON.stringify(names) !== JSON.stringify(current)) {
      const value = select.value;
      select.replaceChildren(...backends.map((b) =>
        el('option', { value: String(b.name) }, `${show(b.name)} (table ${show(b.table)})`)));
      if (names.includes(value)) select.value = value;
    }
    $('field-backend').hidden = names.length <= 1;
  }

  /** The status picker's options: "All", then STATUSES, so the page names each status once. */
  function fillStatusPicker() {
    $('filter-status').replaceChildren(
      el('option', { value: '' }, 'All'),
      ...STATUSES.map((s) => el('option', { value: s }, STATUS_LABEL[s])));
  }

  function fillFilterForm(f) {
    syncBackendPicker(state.overview);
    $('filter-backend').value = f.backend;
    $('filter-status').value = f.status;
    $('filter-path').value = f.path;
    $('filter-q').value = f.q;
  }

  function onFilterSubmit(event) {
    event.preventDefault();
    const hash = jobsHash({
      backend: $('filter-backend').value,
      status: $('filter-status').value,
      path: $('filter-path').value.trim(),
      q: $('filter-q').value.trim(),
    });
    const before = location.hash;
    location.hash = hash;
    if (location.hash === before) renderRoute(false); // same filters: no hashchange, reload anyway
  }

  function syncBulkButtons() {
    const f = state.jobs.filters;
    const status = f ? f.status : '';
    $('bulk-retry').disabled = state.busy || status !== 'failed';
    $('bulk-delete').disabled = state.busy || !(status === 'success' || status === 'failed');
    $('bulk-hint').textContent = status === 'failed' || status === 'success'
      ? 'Bulk actions use the backend, status and path filters; the "contains" filter does not apply.'
      : 'Filter by status "failed" to retry in bulk, or by "success" or "failed" to delete in bulk.';
  }

  function messageRow(text) {
    return el('tr', { class: 'message-row' }, el('td', { colspan: 7, class: 'muted' }, text));
  }

  function jobRow(job) {
    const id = job.id == null ? '' : String(job.id);
    const tr = el('tr', { 'data-id': id, 'data-max-retries': job.max_retries == null ? null : String(job.max_retries) });
    const last = lastError(job.errors);
    const reason = last ? errorText(last) : '';
    tr.append(
      el('th', { scope: 'row', class: 'cell-id' }, id ? el('a', { href: jobHref(id), title: id }, shortId(id)) : '—'),
      el('td', { class: 'cell-path' }, el('code', null, show(job.path))),
      el('td', { class: 'cell-status' }, badge(job.status)),
      el('td', { class: 'cell-retries' }, attempts(job.retries, job.max_retries)),
      el('td', { class: 'cell-created' }, timeEl(job.created_at, 'rel')),
      el('td', { class: 'cell-updated' }, timeEl(job.updated_at, 'rel')),
      el('td', { class: 'cell-error', title: reason ? truncate(reason, 2000) : null }, truncate(reason, 80)));
    return tr;
  }

  const findRow = (id) => [...$('jobs-body').rows].find((tr) => tr.dataset.id === id) || null;

  function flash(tr) {
    tr.classList.remove('row-flash');
    void tr.offsetWidth; // restart the animation
    tr.classList.add('row-flash');
    setTimeout(() => tr.classList.remove('row-flash'), 2200);
  }

  /**
   * A live status change on this table: read the page shown again (at most every
   * LIVE_RELOAD_MS), never decide here whether the job matches the filters.
   */
  function applyJobEvent(ev) {
    const J = state.jobs;
    if (!J.filters) return;
    const sameTable = J.table !== undefined ? ev.table === J.table : ev.backend === J.backend;
    if (!sameTable) return;
    J.eventsSinceOverview++;
    J.changed.add(ev.id);
    scheduleReload();
  }

  /** Throttles live re-reads: one at a time, and every burst of events is followed by one. */
  function scheduleReload() {
    const J = state.jobs;
    if (J.reloading) { J.reloadAgain = true; return; }
    if (J.reloadTimer) return;
    const wait = Math.max(0, J.reloadedAt + LIVE_RELOAD_MS - Date.now());
    J.reloadTimer = setTimeout(reloadJobs, wait);
  }

  async function reloadJobs() {
    const J = state.jobs;
    J.reloadTimer = 0;
    const route = state.route;
    if (!state.token || !route || route.view !== 'jobs' || !J.filters) return;
    J.reloading = true;
    try {
      await loadJobsPage(J.filters, state.seq);
    } catch (err) {
      reportError(err);
    } finally {
      J.reloading = false;
    }
    if (J.reloadAgain && state.jobs === J) {
      J.reloadAgain = false;
      scheduleReload();
    }
  }

  function countsOf(backend) {
    const b = backendsOf(state.overview).find((x) => String(x.name) === backend);
    if (!b || !b.counts || typeof b.counts !== 'object') return null;
    const out = {};
    for (const s of STATUSES) out[s] = num(b.counts[s]) ?? 0;
    return out;
  }

  /**
   * On page 1, offers "New jobs — refresh" when the backend's counts move in a way the live
   * job events do not explain: the total changed (inserts or deletions never come as events),
   * or the filtered status's count changed with no job event for this table since the last overview.
   */
  function checkCounts() {
    const J = state.jobs;
    const f = J.filters;
    const now = f ? countsOf(f.backend) : null;
    if (f && !f.cursor && now && J.seenCounts) {
      const seen = J.seenCounts;
      const total = (c) => STATUSES.reduce((sum, s) => sum + c[s], 0);
      const unexplained = f.status
        ? now[f.status] !== seen[f.status] && J.eventsSinceOverview === 0
        : total(now) !== total(seen);
      if (unexplained) $('jobs-refresh').hidden = false;
    }
    if (now) J.seenCounts = now;
    J.eventsSinceOverview = 0;
  }

  // ---------------------------------------------------------------- 7. job page

  async function showJob(id, seq) {
    document.title = `Job ${shortId(id)} · sp00ky job runner`;
    if (state.job.id !== id) {
      state.job.id = id;
      resetJobView(id);
    }
    let job;
    try {
      job = await api('GET', `/v1/jobs/${encodeId(id)}`);
    } catch (err) {
      if (seq === state.seq && err.status === 404) { drawJobMissing(err.message); return; }
      throw err;
    }
    if (seq === state.seq) drawJob(job);
  }

  /** A live event for the job on screen: fetch it again (once more if events keep coming). */
  async function refetchJob() {
    const J = state.job;
    if (J.loading) { J.again = true; return; }
    J.loading = true;
    try {
      do {
        J.again = false;
        await showJob(J.id, state.seq);
      } while (J.again && state.route && state.route.view === 'job');
    } catch (err) {
      reportError(err);
    } finally {
      J.loading = false;
    }
  }

  function resetJobView(id) {
    $('job-id').textContent = id;
    setBadge($('job-status'), '…');
    $('job-retry').hidden = true;
    $('job-cancel').hidden = true;
    $('job-missing').hidden = true;
    $('job-body').hidden = false;
    for (const part of ['job-facts', 'job-payload', 'job-errors', 'job-timeline']) $(part).replaceChildren();
  }

  function drawJobMissing(message) {
    setBadge($('job-status'), 'gone');
    $('job-retry').hidden = true;
    $('job-cancel').hidden = true;
    $('job-body').hidden = true;
    const box = $('job-missing');
    box.replaceChildren(`${message} `, el('a', { href: '#/jobs' }, 'Back to the job list'));
    box.hidden = false;
  }

  function drawJob(job) {
    const id = job.id == null ? state.job.id : String(job.id);
    $('job-id').textContent = id;
    setBadge($('job-status'), job.status);
    $('job-retry').hidden = job.status !== 'failed';
    $('job-cancel').hidden = job.status !== 'pending';
    $('job-missing').hidden = true;
    $('job-body').hidden = false;

    const table = job.table != null ? String(job.table) : id.includes(':') ? id.slice(0, id.indexOf(':')) : null;
    const backend = job.backend != null ? job.backend
      : (backendsOf(state.overview).find((b) => String(b.table) === table) || {}).name;
    const facts = [
      ['Backend', show(backend)], ['Table', show(table)], ['Path', el('code', null, show(job.path))],
      ['Attempts', attempts(job.retries, job.max_retries)], ['Retry strategy', show(job.retry_strategy)],
      ['Timeout', job.timeout == null ? 'none' : show(job.timeout)], ['Priority', show(job.priority)],
      ['Delay', show(job.delay)], ['Assigned to', show(job.assigned_to)], ['Assignee (runner)', show(job.assignee)],
      ['Created', timeEl(job.created_at, 'both')], ['Updated', timeEl(job.updated_at, 'both')],
      ['Due', timeEl(job.due_at, 'both')],
    ];
    $('job-facts').replaceChildren(...facts.map(([term, value]) =>
      el('div', { class: 'fact' }, el('dt', null, term), el('dd', null, value))));
    $('job-payload').textContent = prettyPayload(job.payload);
    drawErrors(Array.isArray(job.errors) ? job.errors.filter((e) => e && typeof e === 'object') : []);
    drawTimeline(job);
  }

  function prettyPayload(p) {
    if (p === undefined || p === null) return 'No payload';
    if (typeof p === 'string') {
      try { return JSON.stringify(JSON.parse(p), null, 2); } catch { return p; }
    }
    try { return JSON.stringify(p, null, 2); } catch { return String(p); }
  }

  function drawErrors(errors) {
    const box = $('job-errors');
    if (!errors.length) { box.replaceChildren(el('p', { class: 'muted' }, 'No errors recorded.')); return; }
    const head = el('tr', null, ...['Kind', 'Code', 'Reason', 'Attempt', 'Time'].map((t) => el('th', { scope: 'col' }, t)));
    const rows = errors.map((e) => el('tr', { class: e.kind === 'truncated' ? 'error-truncated' : null },
      el('td', null, show(e.kind)), el('td', null, show(e.code)), el('td', { class: 'cell-reason' }, show(e.reason)),
      el('td', null, show(e.attempt)), el('td', null, timeEl(e.at, 'abs'))));
    box.replaceChildren(el('div', { class: 'table-scroll', role: 'region', 'aria-label': 'Errors', tabindex: 0 },
      el('table', { id: 'job-errors-table', class: 'data-table errors-table' }, el('thead', null, head), el('tbody', null, ...rows))));
  }

  function drawTimeline(job) {
    const item = (at, text, cls) => el('li', { class: cls }, timeEl(at, 'abs'), el('span', { class: 'tl-text' }, text));
    const items = [item(job.created_at, 'Created', 'tl-created')];
    for (const e of Array.isArray(job.errors) ? job.errors : []) {
      if (!e || typeof e !== 'object') continue;
      if (e.kind === 'truncated') {
        items.push(item(e.at, `Older errors dropped${e.reason ? `: ${show(e.reason)}` : ''}`, 'tl-truncated'));
      } else {
        const code = e.code != null ? ` ${show(e.code)}` : '';
        items.push(item(e.at, `Attempt ${show(e.attempt)} failed (${show(e.kind)}${code})`, 'tl-error'));
      }
    }
    items.push(item(job.updated_at, `Now ${show(job.status)}`, `tl-now tl-${statusName(job.status)}`));
    $('job-timeline').replaceChildren(...items);
  }

  // ---------------------------------------------------------------- 8. actions

  let describeConfirm = null;

  /** Opens the confirm dialog; resolves to { olderThan } when confirmed, null otherwise. */
  function askConfirm({ title, text, yes, no = 'Cancel', danger = false, olderThan = false, describe = null }) {
    const dialog = $('confirm');
    const input = $('bulk-older-than');
    input.value = '';
    describeConfirm = describe;
    $('confirm-title').textContent = title;
    $('confirm-text').textContent = describe ? describe('') : text;
    $('confirm-yes').textContent = yes;
    $('confirm-yes').className = danger ? 'btn btn-danger' : 'btn btn-primary';
    $('confirm-no').textContent = no;
    $('confirm-extra').hidden = !olderThan;
    return new Promise((resolve) => {
      const onClose = () => {
        dialog.removeEventListener('close', onClose);
        describeConfirm = null;
        resolve(dialog.returnValue === 'yes' ? { olderThan: input.value.trim() } : null);
      };
      dialog.returnValue = '';
      dialog.addEventListener('close', onClose);
      dialog.showModal();
      $('confirm-no').focus();
    });
  }

  /** Confirm, run one request with the action buttons disabled, report, refresh the view. */
  async function confirmThen(options, perform) {
    const opener = document.activeElement;
    const answer = await askConfirm(options);
    if (!answer) { if (opener && opener.isConnected) opener.focus(); return; }
    state.busy = true;
    for (const id of ACTION_BUTTONS) $(id).disabled = true;
    try {
      notify(await perform(answer));
    } catch (err) {
      reportError(err);
    } finally {
      state.busy = false;
      $('job-retry').disabled = false;
      $('job-cancel').disabled = false;
      syncBulkButtons();
    }
    if (!state.token) return;
    await renderRoute(false);
    const visible = opener && opener.isConnected && !opener.disabled && opener.offsetParent !== null;
    if (visible) opener.focus();
    else if (state.route) $(`${state.route.view}-title`).focus();
  }

  const touched = (r) => num(r && r.touched) ?? 0;
  /** "N jobs retried", and a hint when the server stopped at its bound (`more`). */
  const touchedText = (r, verb) => `${plural(touched(r), 'job')} ${verb}`
    + (r && r.more === true ? ' (more match: run it again for the rest)' : '');

  function onJobAction(kind) {
    const id = state.job.id;
    if (!id) return;
    const s = shortId(id);
    const url = `/v1/jobs/${encodeId(id)}/${kind}`;
    if (kind === 'retry') {
      confirmThen({ title: 'Retry job', text: `Retry job ${s}? It goes back to pending with a fresh attempt budget.`, yes: 'Retry job' },
        async () => { await api('POST', url); return `Job ${s} retried`; });
    } else {
      confirmThen({ title: 'Cancel job', text: `Cancel job ${s}? It is taken off the queue and will not run.`,
        yes: 'Cancel job', no: 'Keep job', danger: true },
      async () => { await api('POST', url); return `Job ${s} cancelled`; });
    }
  }

  function scopeText(f, table) {
    return `in table ${table}${f.path ? ` with path ${f.path}` : ''}`;
  }

  function onBulkRetry() {
    const J = state.jobs;
    const f = J.filters;
    if (!f || f.status !== 'failed') return;
    if (!J.table) { notify('No backend is selected.', true); return; }
    const body = { table: J.table, status: 'failed' };
    if (f.path) body.path = f.path;
    const note = f.q ? ' The "contains" filter does not apply to bulk actions.' : '';
    confirmThen({
      title: 'Retry failed jobs', yes: 'Retry all',
      text: `Retry every failed job ${scopeText(f, J.table)}? Each goes back to pending with a fresh attempt budget.${note}`,
    }, async () => touchedText(await api('POST', '/v1/jobs/retry', body), 'retried'));
  }

  function onBulkDelete() {
    const J = state.jobs;
    const f = J.filters;
    if (!f || !(f.status === 'success' || f.status === 'failed')) return;
    if (!J.table) { notify('No backend is selected.', true); return; }
    const note = f.q ? ' The "contains" filter does not apply to bulk actions.' : '';
    const describe = (older) => `Delete every ${f.status} job ${scopeText(f, J.table)}`
      + `${older ? ` that finished more than ${older} ago` : ''}? This cannot be undone.${note}`;
    confirmThen({ title: 'Delete finished jobs', yes: 'Delete', danger: true, olderThan: true, describe },
      async ({ olderThan }) => {
        const body = { table: J.table, status: f.status };
        if (f.path) body.path = f.path;
        if (olderThan) body.older_than = olderThan;
        return touchedText(await api('POST', '/v1/jobs/delete', body), 'deleted');
      });
  }

  // ---------------------------------------------------------------- 9. live feed

  function setLive(on) {
    const node = $('live-state');
    node.textContent = on ? 'Live' : 'Reconnecting…';
    node.classList.toggle('live-on', on);
    node.classList.toggle('live-off', !on);
  }

  function startStream() {
    stopStream();
    state.stream.everConnected = false;
    streamLoop(state.stream.gen);
  }

  function stopStream() {
    const S = state.stream;
    S.gen++;
    if (S.abort) S.abort.abort();
    S.abort = null;
    setLive(false);
  }

  /** Keeps one /v1/events stream open; backoff 1 s, 2 s, 4 s, 8 s, 10 s while it fails. */
  async function streamLoop(gen) {
    const S = state.stream;
    let delay = 1000;
    while (gen === S.gen && state.token) {
      const token = state.token;
      const ctrl = new AbortController();
      S.abort = ctrl;
      let received = false;
      try {
        const res = await fetch('/v1/events', {
          headers: { Authorization: `Bearer ${token}`, Accept: 'text/event-stream' },
          cache: 'no-store', signal: ctrl.signal,
        });
        if (gen !== S.gen) return;
        if (res.status === 401) {
          const body = await readBody(res);
          if (state.token === token) showSignIn(`You were signed out: ${errorMessage(res, body)}`);
          return;
        }
        if (res.ok && res.body) {
          setLive(true);
          if (S.everConnected) renderRoute(false); // catch up on what the gap missed
          S.everConnected = true;
          await readEvents(res.body, (name, data) => {
            received = true;
            if (gen === S.gen) onStreamEvent(name, data);
          });
        }
      } catch {
        if (gen !== S.gen) return; // stopped on purpose
      }
      if (gen !== S.gen) return;
      setLive(false);
      if (received) delay = 1000;
      await sleep(delay);
      delay = Math.min(delay * 2, 10000);
    }
  }

  /** Parses a text/event-stream body: blocks split by a blank line, `event:` and `data:` lines. */
  async function readEvents(body, onEvent) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      const hold = buffer.endsWith('\r') ? 1 : 0; // a CR may be the first half of CRLF
      buffer = buffer.slice(0, buffer.length - hold).replace(/\r\n?/g, '\n') + (hold ? '\r' : '');
      let cut = buffer.indexOf('\n\n');
      while (cut >= 0) {
        parseBlock(buffer.slice(0, cut), onEvent);
        buffer = buffer.slice(cut + 2);
        cut = buffer.indexOf('\n\n');
      }
    }
  }

  function parseBlock(block, onEvent) {
    let name = 'message';
    const data = [];
    for (const line of block.split('\n')) {
      if (!line || line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'event') name = value;
      else if (field === 'data') data.push(value);
    }
    if (data.length) onEvent(name, data.join('\n'));
  }

  function onStreamEvent(name, raw) {
    let data;
    try { data = JSON.parse(raw); } catch { return; }
    if (!data || typeof data !== 'object') return;
    if (name === 'overview') setOverview(data);
    else if (name === 'job' && typeof data.id === 'string') onJobEvent(data);
    else if (name === 'lagged') renderRoute(false); // the feed skipped changes: reload what is shown
  }

  function onJobEvent(ev) {
    const route = state.route;
    if (!route) return;
    if (route.view === 'jobs') applyJobEvent(ev);
    else if (route.view === 'job' && route.id === ev.id) refetchJob();
  }

  // ---------------------------------------------------------------- start

  function wire() {
    $('sign-in-form').addEventListener('submit', onSignIn);
    $('sign-out').addEventListener('click', onSignOut);
    // Focus moves to the new view's heading only when the view changes (not when paging).
    window.addEventListener('hashchange', () => {
      if (state.token) renderRoute(!state.route || parseRoute().view !== state.route.view);
    });
    $('jobs-filter').addEventListener('submit', onFilterSubmit);
    $('page-prev').addEventListener('click', () => goPage(-1));
    $('page-next').addEventListener('click', () => goPage(1));
    $('jobs-refresh').addEventListener('click', () => renderRoute(false));
    $('bulk-retry').addEventListener('click', onBulkRetry);
    $('bulk-delete').addEventListener('click', onBulkDelete);
    $('job-retry').addEventListener('click', () => onJobAction('retry'));
    $('job-cancel').addEventListener('click', () => onJobAction('cancel'));
    $('confirm-no').addEventListener('click', () => $('confirm').close('no'));
    $('confirm-yes').addEventListener('click', () => $('confirm').close('yes'));
    $('confirm-form').addEventListener('submit', (event) => event.preventDefault()); // Enter never confirms
    $('bulk-older-than').addEventListener('input', () => {
      if (describeConfirm) $('confirm-text').textContent = describeConfirm($('bulk-older-than').value.trim());
    });
  }

  function init() {
    resetJobsState();
    fillStatusPicker();
    wire();
    setInterval(refreshRelativeTimes, 30000);
    state.token = readToken();
    if (state.token) startApp();
    else showSignIn('');
  }

  init();
})();
