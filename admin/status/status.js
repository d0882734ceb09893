// The sidecar status page's script: refreshes the tables the server
// rendered every 2 s from the admin API, computes per-route rates from
// /metrics, and runs the replay and purge buttons. It builds every node
// with textContent and attributes, never with HTML, and keeps the admin
// token in memory only. The formats agree with admin/status.go's.
'use strict';

(function () {
  const REFRESH_MS = 2000;
  const body = document.body;
  const deadLimit = Number(body.dataset.deadLimit) || 20;
  const $ = (id) => document.getElementById(id);

  let token = '';
  let paused = false;
  let timer = null;
  let running = false;
  let again = false;
  let refreshes = 0;
  // The previous scrape of /metrics: counts by route, and when.
  let prevScrape = null;

  // ---- formats (as in status.go) ----

  function routeSub(r) {
    let s = r.listener + ' → ' + r.upstream;
    if (r.policy) s += ' · policy ' + r.policy;
    return s;
  }

  function inFlightText(n, max) {
    return max > 0 ? n + ' / ' + max : String(n);
  }

  function breakerClass(state) {
    return ['closed', 'open', 'half-open'].includes(state) ? 'st-' + state : 'st-other';
  }

  function ageText(sec) {
    if (!(sec > 0)) return '—';
    if (sec < 60) return sec.toFixed(1) + 's';
    const s = Math.floor(sec);
    if (sec < 3600) return Math.floor(s / 60) + 'm ' + (s % 60) + 's';
    if (sec < 86400) return Math.floor(s / 3600) + 'h ' + Math.floor((s % 3600) / 60) + 'm';
    return Math.floor(s / 86400) + 'd ' + Math.floor((s % 86400) / 3600) + 'h';
  }

  // durationSeconds reads a Go duration string ("1m2.5s", "300ms").
  function durationSeconds(d) {
    const unit = { h: 3600, m: 60, s: 1, ms: 1e-3, us: 1e-6, 'µs': 1e-6, ns: 1e-9 };
    let sec = 0;
    for (const m of String(d).matchAll(/([0-9.]+)(h|ms|m|s|us|µs|ns)/g)) sec += parseFloat(m[1]) * unit[m[2]];
    return sec;
  }

  function bytesText(n) {
    if (n < 1024) return n + ' B';
    if (n < 1024 * 1024) return (n / 1024).toFixed(1) + ' KiB';
    if (n < 1024 * 1024 * 1024) return (n / (1024 * 1024)).toFixed(1) + ' MiB';
    return (n / (1024 * 1024 * 1024)).toFixed(1) + ' GiB';
  }

  function deliveriesText(d, orphaned) {
    if (d) {
      let s = d.delivered + ' delivered · ' + d.retried + ' retried · ' + d.dead_lettered + ' dead-lettered';
      if (d.head_blocked) s += ' · head blocked after ' + d.head_attempts + ' attempts';
      if (d.deduplicated > 0) s += ' · ' + d.deduplicated + ' de-duplicated';
      if (d.rate_per_second > 0) s += ' · paced at ' + d.rate_per_second + '/s';
      return s;
    }
    return orphaned ? 'orphaned: no async route of this name' : '—';
  }

  function spoolSummary(sp) {
    let s = sp.total.depth + ' pending · ' + sp.total.dead + ' dead';
    if (sp.segments > 0) s += ' · ' + sp.segments + (sp.segments === 1 ? ' segment' : ' segments');
    if (sp.failed) s += ' · FAILED: refusing writes until it reopens';
    return s;
  }

  function arrivedText(s) {
    return (s || '').replace('T', ' ').replace(/\.\d+/, '');
  }

  function clockText(d) {
    const p = (n) => String(n).padStart(2, '0');
    return p(d.getHours()) + ':' + p(d.getMinutes()) + ':' + p(d.getSeconds());
  }

  function rateText(r) {
    return r.toFixed(r > 0 && r < 1 ? 2 : 1);
  }

  // ---- DOM helpers ----

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function text(t, cls) {
    return { sig: 't:' + (cls || '') + ':' + t, cls: cls || '', build: (td) => { td.textContent = t; } };
  }

  function button(label, data, disabled) {
    const b = el('button', '', label);
    b.type = 'button';
    for (const k of Object.keys(data)) b.dataset[k] = data[k];
    b.disabled = !!disabled;
    return b;
  }

  // syncRows makes tbody's rows those of items, in order, keyed by
  // keyOf(item) in each row's data-key. A kept row keeps its cells where
  // their signature is unchanged, so a button does not move under the
  // pointer between two refreshes.
  function syncRows(tbody, items, keyOf, cellsOf) {
    const existing = new Map();
    for (const tr of Array.from(tbody.rows)) {
      if (tr.dataset.key === undefined || existing.has(tr.dataset.key)) tr.remove();
      else existing.set(tr.dataset.key, tr);
    }
    let prev = null;
    for (const item of items) {
      const key = keyOf(item);
      let tr = existing.get(key);
      if (tr) existing.delete(key);
      else { tr = document.createElement('tr'); tr.dataset.key = key; }
      const cells = cellsOf(item);
      while (tr.cells.length > cells.length) tr.deleteCell(-1);
      cells.forEach((c, i) => {
        const td = tr.cells[i] || tr.insertCell(-1);
        if (td.dataset.sig !== c.sig) {
          td.replaceChildren();
          td.removeAttribute('title');
          c.build(td);
          td.className = c.cls;
          td.dataset.sig = c.sig;
        }
      });
      const want = prev ? prev.nextElementSibling : tbody.firstElementChild;
      if (want !== tr) tbody.insertBefore(tr, want);
      prev = tr;
    }
    for (const tr of existing.values()) tr.remove();
  }

  // ---- the admin API ----

  // api fetches path from this origin: { status, json, text }, or throws
  // when the admin API cannot be reached.
  async function api(path, method) {
    const opts = { method: method || 'GET', cache: 'no-store', credentials: 'same-origin', headers: {} };
    if (opts.method !== 'GET') {
      opts.headers['Sidecar-Admin'] = '1';
      if (token) opts.headers['Authorization'] = 'Bearer ' + token;
    }
    const resp = await fetch(path, opts);
    const t = await resp.text();
    let json = null;
    if ((resp.headers.get('Content-Type') || '').startsWith('application/json')) {
      try { json = JSON.parse(t); } catch (e) { json = null; }
    }
    return { status: resp.status, json: json, text: t };
  }

  function apiError(r) {
    const msg = r.json && typeof r.json.error === 'string' ? r.json.error : r.text.trim().slice(0, 200);
    return r.status + (msg ? ': ' + msg : '');
  }

  // ---- rates from /metrics ----

  // parseLabels reads the label set of a Prometheus text sample, from
  // just after its '{': [labels, index after the '}'].
  function parseLabels(s, i) {
    const labels = {};
    for (;;) {
      while (s[i] === ' ' || s[i] === ',') i++;
      if (s[i] === '}') return [labels, i + 1];
      const eq = s.indexOf('=', i);
      if (eq < 0 || s[eq + 1] !== '"') return [null, s.length];
      const name = s.slice(i, eq).trim();
      let v = '';
      i = eq + 2;
      while (i < s.length && s[i] !== '"') {
        if (s[i] === '\\') {
          i++;
          v += s[i] === 'n' ? '\n' : s[i];
        } else {
          v += s[i];
        }
        i++;
      }
      labels[name] = v;
      i++;
    }
  }

  const COUNT = 'http_server_request_duration_seconds_count';
  const OK_OUTCOMES = ['ok', 'status', 'spooled'];

  // requestCounts sums the request counts of a scrape by route: total,
  // and errors (a 5xx answer, or a failure answer the sidecar made).
  function requestCounts(textBody) {
    const out = new Map();
    for (const line of textBody.split('\n')) {
      if (!line.startsWith(COUNT)) continue;
      let labels = {};
      let rest = line.slice(COUNT.length);
      if (rest[0] === '{') {
        const [l, end] = parseLabels(rest, 1);
        if (!l) continue;
        labels = l;
        rest = rest.slice(end);
      } else if (rest[0] !== ' ') {
        continue;
      }
      const v = parseFloat(rest.trim().split(/\s+/)[0]);
      if (!isFinite(v)) continue;
      const route = labels.route || '';
      const c = out.get(route) || { total: 0, errors: 0 };
      c.total += v;
      if (labels.status_class === '5xx' || !OK_OUTCOMES.includes(labels.outcome || '')) c.errors += v;
      out.set(route, c);
    }
    return out;
  }

  // rates compares a scrape with the previous one: a Map of route to
  // { rps, eps } per second, or null before a second scrape.
  function rates(counts, at) {
    const prev = prevScrape;
    prevScrape = { counts: counts, at: at };
    if (!prev) return null;
    const dt = (at - prev.at) / 1000;
    if (!(dt > 0)) return null;
    const out = new Map();
    for (const [route, c] of counts) {
      const p = prev.counts.get(route) || { total: 0, errors: 0 };
      const dTotal = c.total - p.total;
      const dErr = c.errors - p.errors;
      // A counter that went down is a restart: no rate this time.
      if (dTotal < 0 || dErr < 0) continue;
      out.set(route, { rps: dTotal / dt, eps: dErr / dt });
    }
    return out;
  }

  // ---- rendering ----

  function endpointsCell(eps) {
    const parts = eps.map((ep) => {
      const b = ep.circuit_breaker;
      const notes = [];
      if (ep.name) notes.push('from ' + ep.name);
      if (ep.in_flight > 0) notes.push(ep.in_flight + ' in flight');
      if (b) {
        if (b.counts && b.counts.consecutive_failures > 0) notes.push(b.counts.consecutive_failures + ' failing');
        if (b.retry_in && durationSeconds(b.retry_in) > 0) notes.push('probe in ' + ageText(durationSeconds(b.retry_in)));
      }
      const flags = [];
      const h = ep.health_check;
      if (h && h.state === 'unhealthy') {
        flags.push({ text: 'unhealthy', cls: 'badge st-unhealthy' });
        if (h.last_error) notes.push('health check: ' + h.last_error);
      }
      const o = ep.outlier;
      if (o && o.ejected) {
        flags.push({ text: 'ejected', cls: 'badge st-ejected' });
        if (o.ejected_for && durationSeconds(o.ejected_for) > 0) notes.push('back in ' + ageText(durationSeconds(o.ejected_for)));
      }
      return { url: ep.url, state: b ? b.state : 'no breaker', cls: b ? 'badge ' + breakerClass(b.state) : 'badge st-none', flags: flags, note: notes.join(' · ') };
    });
    return {
      sig: 'e:' + JSON.stringify(parts),
      cls: '',
      build: (td) => {
        for (const p of parts) {
          const d = el('div', 'ep');
          d.append(el('span', p.cls, p.state));
          for (const f of p.flags) d.append(' ', el('span', f.cls, f.text));
          d.append(' ', el('span', 'url', p.url), ' ', el('span', 'muted', p.note));
          td.append(d);
        }
      },
    };
  }

  // budgetText is the retry budget cell: what is left of it, and the
  // hedges that drew on it when the route hedges.
  function budgetText(b, h) {
    let s = b ? b.available.toFixed(1) + ' left (' + b.retries + ' retries / ' + b.requests + ' req)' : '—';
    if (h) s += ' · hedge after ' + h.after + ': ' + h.sent + ' sent, ' + h.wins + ' won';
    return s;
  }

  function renderRoutes(list, rateMap, metricsState) {
    syncRows($('routes-body'), list, (r) => r.name, (r) => {
      const st = r.stats || {};
      const b = st.retry_budget;
      let rps = '—';
      let eps = '—';
      if (metricsState === 'on') {
        rps = '…';
        eps = '…';
        if (rateMap) {
          const x = rateMap.get(r.name) || { rps: 0, eps: 0 };
          rps = rateText(x.rps);
          eps = rateText(x.eps);
          if (x.rps > 0 && x.eps > 0) eps += ' (' + Math.round((100 * x.eps) / x.rps) + '%)';
        }
      }
      return [
        {
          sig: 'r:' + JSON.stringify([r.name, routeSub(r)]),
          cls: '',
          build: (td) => { td.append(el('div', 'name', r.name), el('div', 'sub', routeSub(r))); },
        },
        text(inFlightText(st.in_flight || 0, st.max_in_flight || 0), 'num'),
        text(budgetText(b, st.hedge), 'nowrap'),
        text(typeof st.rate_limit_tokens === 'number' ? st.rate_limit_tokens.toFixed(1) + ' tokens' : '—', 'num'),
        endpointsCell(r.endpoints || []),
        text(rps, 'num' + (rps !== '—' && rps !== '…' && Number(rps) > 0 ? ' live' : '')),
        text(eps, 'num' + (eps !== '—' && eps !== '…' && parseFloat(eps) > 0 ? ' bad' : '')),
      ];
    });
    const note = $('rates-note');
    const unrouted = rateMap && rateMap.get('');
    if (metricsState === 'off') {
      note.textContent = 'Rates unavailable: metrics are off (telemetry.metrics.prometheus: false).';
    } else if (metricsState === 'error') {
      note.textContent = 'Rates unavailable: /metrics could not be read.';
    } else if (!rateMap) {
      note.textContent = 'Rates appear from the second refresh on.';
    } else {
      note.textContent = 'Rates over the last ' + (REFRESH_MS / 1000) + ' s, from /metrics.' +
        (unrouted && unrouted.rps > 0 ? ' Requests no route took: ' + rateText(unrouted.rps) + '/s.' : '');
    }
  }

  function renderSpool(sp) {
    const names = Object.keys(sp.routes).sort();
    $('spool-summary').textContent = spoolSummary(sp);
    syncRows($('spool-body'), names, (n) => n, (n) => {
      const v = sp.routes[n];
      return [
        text(n, 'name'),
        text(String(v.depth), 'num'),
        text(ageText(v.oldest_age_seconds), 'num'),
        text(String(v.dead), 'num' + (v.dead > 0 ? ' bad' : '')),
        text(bytesText(v.bytes), 'num'),
        text(deliveriesText(v.delivery, v.orphaned)),
        {
          sig: 'p:' + JSON.stringify([n, v.depth === 0, v.dead === 0]),
          cls: 'actions',
          build: (td) => {
            td.append(
              button('pending', { action: 'purge', route: n, state: 'pending' }, v.depth === 0), ' ',
              button('dead', { action: 'purge', route: n, state: 'dead' }, v.dead === 0));
          },
        },
      ];
    });
  }

  // loadDead lists the dead letters of every route that has some.
  async function loadDead(sp) {
    const names = Object.keys(sp.routes).filter((n) => sp.routes[n].dead > 0).sort();
    const lists = await Promise.all(names.map((n) => {
      const q = new URLSearchParams({ route: n, state: 'dead', limit: String(deadLimit) });
      return api('/v1/spool/messages?' + q.toString());
    }));
    const msgs = [];
    const more = [];
    lists.forEach((r, i) => {
      if (r.status !== 200 || !r.json) return;
      msgs.push(...r.json.messages);
      if (sp.routes[names[i]].dead > r.json.messages.length) more.push(names[i] + ' (' + sp.routes[names[i]].dead + ')');
    });
    return { msgs: msgs, more: more };
  }

  function renderDead(d) {
    syncRows($('dead-body'), d.msgs, (m) => m.id, (m) => [
      text(m.route, 'name'),
      text(m.id, 'mono'),
      text(arrivedText(m.arrived)),
      text(String(m.attempts), 'num'),
      {
        sig: 't:' + (m.dead_reason || ''),
        cls: 'reason',
        build: (td) => { td.textContent = m.dead_reason || ''; td.title = m.dead_reason || ''; },
      },
      {
        sig: 'b:' + m.id,
        cls: 'actions',
        build: (td) => { td.append(button('Replay', { action: 'replay', id: m.id })); },
      },
    ]);
    $('dead-empty').hidden = d.msgs.length > 0;
    const more = $('dead-more');
    more.hidden = d.more.length === 0;
    more.textContent = d.more.length === 0 ? '' :
      'Only the first ' + deadLimit + ' dead letters of each route are listed; more in ' + d.more.join(', ') +
      '. sidecar spool list -state dead -route NAME lists them all.';
  }

  // ---- refresh ----

  function renderReady(r) {
    const e = $('ready');
    let t = 'not ready';
    if (r.status === 200) t = 'ready';
    else if (r.json && typeof r.json.reason === 'string') t = 'not ready: ' + r.json.reason;
    e.textContent = t;
    e.className = 'badge ' + (r.status === 200 ? 'st-closed' : 'st-open');
  }

  async function refresh() {
    const metricsWanted = body.dataset.metrics === 'true';
    const [readyR, routesR, spoolR, metricsR] = await Promise.all([
      api('/readyz'),
      api('/v1/routes'),
      api('/v1/spool'),
      metricsWanted ? fetch('/metrics', { cache: 'no-store', credentials: 'same-origin' })
        .then(async (r) => ({ status: r.status, text: await r.text(), at: performance.now() }))
        .catch(() => null) : Promise.resolve(null),
    ]);
    let metricsState = 'off';
    let rateMap = null;
    if (metricsR && metricsR.status === 200) {
      metricsState = 'on';
      rateMap = rates(requestCounts(metricsR.text), metricsR.at);
    } else if (metricsWanted && !(metricsR && metricsR.status === 404)) {
      metricsState = 'error';
    }
    renderReady(readyR);
    if (routesR.status === 200 && routesR.json) {
      renderRoutes(routesR.json.routes || [], rateMap, metricsState);
    }
    const hasSpool = spoolR.status === 200 && spoolR.json;
    $('spool-section').hidden = !hasSpool;
    $('dead-section').hidden = !hasSpool;
    if (hasSpool) {
      renderSpool(spoolR.json);
      renderDead(await loadDead(spoolR.json));
    }
    $('updated').textContent = 'updated ' + clockText(new Date());
    body.dataset.refreshes = String(++refreshes); // for tests: a refresh completed
  }

  function schedule() {
    clearTimeout(timer);
    timer = paused ? null : setTimeout(tick, REFRESH_MS);
  }

  // tick refreshes now, once at a time, then schedules the next.
  async function tick() {
    if (running) { again = true; return; }
    running = true;
    clearTimeout(timer);
    const conn = $('conn');
    try {
      await refresh();
      conn.hidden = true;
      conn.textContent = '';
    } catch (e) {
      if (conn.hidden) conn.textContent = 'admin API unreachable since ' + clockText(new Date());
      conn.hidden = false;
    } finally {
      running = false;
    }
    if (again) { again = false; tick(); return; }
    schedule();
  }

  // ---- actions ----

  function notice(msg, ok) {
    const n = $('notice');
    n.textContent = msg;
    n.className = ok ? 'ok' : 'err';
    n.hidden = false;
  }

  async function act(b, label, path) {
    b.disabled = true;
    try {
      const r = await api(path, 'POST');
      if (r.status === 200) return r;
      notice(label + ' failed: ' + apiError(r), false);
    } catch (e) {
      notice(label + ' failed: the admin API could not be reached', false);
    } finally {
      b.disabled = false;
      tick();
    }
    return null;
  }

  async function replay(b) {
    const id = b.dataset.id;
    const r = await act(b, 'Replay of ' + id, '/v1/spool/messages/' + encodeURIComponent(id) + '/replay');
    if (r) notice('Replayed ' + id + ': it is pending again.', true);
  }

  async function purge(b) {
    const route = b.dataset.route;
    const state = b.dataset.state;
    if (!window.confirm('Purge every ' + state + ' message of route ' + JSON.stringify(route) + '? They are deleted without delivery.')) return;
    const q = new URLSearchParams({ route: route, state: state });
    const r = await act(b, 'Purge of ' + route + ' (' + state + ')', '/v1/spool/purge?' + q.toString());
    if (r && r.json) notice('Purged ' + r.json.purged + ' ' + state + ' messages of ' + route + '.', true);
  }

  function togglePause(b) {
    paused = !paused;
    b.textContent = paused ? 'Resume' : 'Pause';
    b.setAttribute('aria-pressed', String(paused));
    if (paused) clearTimeout(timer);
    else tick();
  }

  document.addEventListener('click', (ev) => {
    const b = ev.target.closest('button[data-action]');
    if (!b || b.disabled) return;
    switch (b.dataset.action) {
      case 'replay': replay(b); break;
      case 'purge': purge(b); break;
      case 'pause': togglePause(b); break;
    }
  });

  $('token').addEventListener('input', (ev) => { token = ev.target.value.trim(); });
  token = $('token').value.trim(); // a value the browser kept across a reload

  tick();
})();
