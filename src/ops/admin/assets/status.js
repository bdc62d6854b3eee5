// The status page's script: polls /status.json and draws it. No framework, no external asset;
// every value goes into the page as text (textContent) or an SVG attribute, never as markup
// (SNI names and error details come from clients).
'use strict';
(function () {
  const SVG = 'http://www.w3.org/2000/svg';
  const POLL_MS = 2000;
  const HISTORY = 60; // points of the handshake-rate chart
  const rates = [];
  let last = null;

  const $ = (id) => document.getElementById(id);
  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function svg(tag, attrs) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    return e;
  }
  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }
  function row(tbody, cells) {
    const tr = document.createElement('tr');
    for (const c of cells) {
      if (c instanceof Node) { const td = el('td'); td.appendChild(c); tr.appendChild(td); }
      else tr.appendChild(el('td', c));
    }
    tbody.appendChild(tr);
    return tr;
  }
  function date(unix) { return unix ? new Date(unix * 1000).toISOString().replace('T', ' ').slice(0, 16) + ' UTC' : '—'; }
  function fmtBytes(n) {
    const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return n.toFixed(i ? 1 : 0) + ' ' + u[i];
  }

  function daysBar(days, lifetimeDays) {
    const s = svg('svg', { class: 'daysbar', viewBox: '0 0 100 10', preserveAspectRatio: 'none', 'data-days': days });
    s.appendChild(svg('rect', { class: 'track', x: 0, y: 0, width: 100, height: 10 }));
    const frac = Math.max(0, Math.min(1, lifetimeDays > 0 ? days / lifetimeDays : 0));
    const cls = days < 7 ? 'bad' : days < 30 && frac < 0.34 ? 'warn' : 'ok';
    s.appendChild(svg('rect', { class: cls, x: 0, y: 0, width: (frac * 100).toFixed(1), height: 10 }));
    const wrap = el('span');
    wrap.appendChild(s);
    wrap.appendChild(el('span', days < 0 ? 'expired' : days + ' days', 'days-left ' + cls));
    return wrap;
  }

  function drawCerts(data) {
    const tbody = $('certs').tBodies[0];
    clear(tbody);
    const certs = [];
    for (const site of data.sites) {
      if (site.certs.length === 0) certs.push({ site: site.name, hosts: site.hosts, source: site.source, none: true });
      for (const c of site.certs) certs.push(Object.assign({ hosts: site.hosts }, c));
    }
    for (const c of data.on_demand_certs) certs.push(Object.assign({ hosts: c.names }, c));
    for (const c of certs) {
      if (c.none) {
        row(tbody, [c.site, c.hosts.join(', '), '—', c.source, el('span', 'no certificate yet', 'staple-bad'), '—', '—', '—']);
        continue;
      }
      const days = Math.floor((c.not_after - data.now) / 86400);
      const life = Math.max(1, Math.round((c.not_after - c.not_before) / 86400));
      let staple;
      if (!c.staple) staple = el('span', 'none', 'staple-none');
      else if (c.staple.status === 'good') staple = el('span', 'good, ' + Math.round((data.now - c.staple.this_update) / 3600) + ' h old', 'staple-good');
      else staple = el('span', c.staple.status, 'staple-bad');
      // Which instance obtained it (shared storage: any of the cluster's).
      const obtained = c.obtained ? date(c.obtained.at) + ' by ' + c.obtained.by : '—';
      const tr = row(tbody, [c.site, c.names.join(', '), c.issuer, c.source, daysBar(days, life), date(c.next_renewal), obtained, staple]);
      tr.dataset.site = c.site;
    }
  }

  function drawRate(data) {
    const total = data.handshakes.total;
    const t = Date.now() / 1000;
    if (last) {
      const dt = Math.max(0.001, t - last.t);
      rates.push(Math.max(0, (total - last.total) / dt));
      if (rates.length > HISTORY) rates.shift();
    }
    last = { t, total };
    const chart = $('rate-chart');
    clear(chart);
    const max = Math.max(1, ...rates);
    const pts = rates.map((r, i) => [(i / (HISTORY - 1)) * 300, 98 - (r / max) * 92]);
    if (pts.length > 1) {
      const d = pts.map((p, i) => (i ? 'L' : 'M') + p[0].toFixed(1) + ' ' + p[1].toFixed(1)).join(' ');
      chart.appendChild(svg('path', { class: 'area', d: d + ' L' + pts[pts.length - 1][0].toFixed(1) + ' 100 L0 100 Z' }));
      chart.appendChild(svg('path', { class: 'line', d }));
    }
    const now = rates.length ? rates[rates.length - 1] : 0;
    $('rate-now').textContent = now.toFixed(1) + '/s now, peak ' + max.toFixed(1) + '/s in view; ' + total + ' since start';
  }

  function bars(chartId, legendId, items) {
    const chart = $(chartId);
    const legend = $(legendId);
    clear(chart);
    clear(legend);
    const max = Math.max(1, ...items.map((x) => x.value));
    const w = 300 / Math.max(1, items.length);
    items.forEach((x, i) => {
      const h = (x.value / max) * 92;
      const bar = svg('rect', { class: 'bar c' + (i % 5), x: (i * w + w * 0.15).toFixed(1), y: (100 - h).toFixed(1), width: (w * 0.7).toFixed(1), height: h.toFixed(1) });
      const title = svg('title');
      title.textContent = x.label + ': ' + x.value;
      bar.appendChild(title);
      chart.appendChild(bar);
      const li = el('li');
      li.appendChild(el('span', null, 'swatch c' + (i % 5)));
      li.appendChild(document.createTextNode(x.label + ': ' + x.value));
      legend.appendChild(li);
    });
    if (!items.length) legend.appendChild(el('li', 'none so far', 'muted'));
  }

  function draw(data) {
    $('summary').textContent = 'v' + data.version + ' · up ' + Math.floor(data.uptime_seconds / 60) + ' min · ' +
      fmtBytes(data.bytes.in) + ' in, ' + fmtBytes(data.bytes.out) + ' out';
    const state = $('state');
    state.textContent = data.shutting_down ? 'shutting down' : 'serving';
    state.className = data.shutting_down ? 'badge bad' : 'badge';
    drawCerts(data);
    drawRate(data);
    bars('failure-chart', 'failure-legend', data.handshake_failures.map((f) => ({ label: f.reason, value: f.count })));
    bars('protocol-chart', 'protocol-legend', data.requests_by_protocol.map((p) => ({ label: p.protocol, value: p.count })));
    const conns = $('connections').tBodies[0];
    clear(conns);
    for (const c of data.connections) row(conns, [c.protocol, c.open]);
    const hs = $('handshakes').tBodies[0];
    clear(hs);
    for (const h of data.handshakes.by_kind) row(hs, [h.version, h.kind, h.count, h.count ? h.avg_ms.toFixed(1) + ' ms' : '—']);
    const be = $('backends').tBodies[0];
    clear(be);
    for (const b of data.backends) {
      row(be, [b.site, b.route, b.backend, el('span', b.up ? 'up' : b.ejected ? 'ejected' : 'down', b.up ? 'state-up' : 'state-down'),
        b.in_flight, b.requests, b.failures, b.requests ? b.avg_ms.toFixed(1) + ' ms' : '—']);
    }
    if (!data.backends.length) row(be, [el('span', 'no reverse-proxy routes', 'muted')]);
    if (data.storage && data.storage.kind === 'redis') {
      $('cluster').hidden = false;
      const st = $('storage-state');
      clear(st);
      st.appendChild(el('span', data.storage.up ? 'Redis answers' : 'Redis unreachable: serving what this instance holds', data.storage.up ? 'state-up' : 'state-down'));
      st.appendChild(el('span', ' — this instance: ' + data.storage.instance + ', failed calls: ' + data.storage.errors, 'muted'));
      const lk = $('locks').tBodies[0];
      clear(lk);
      for (const l of data.storage.locks) row(lk, [l.lock, l.instance, date(l.since), l.fence]);
      if (!data.storage.locks.length) row(lk, [el('span', 'no lock held', 'muted')]);
    }
    const errs = $('errors').tBodies[0];
    clear(errs);
    for (const f of data.recent_failures.slice().reverse()) {
      const tr = row(errs, [date(f.at).slice(11), f.peer, f.sni || '—', f.reason, f.detail]);
      tr.lastChild.className = 'detail';
    }
    if (!data.recent_failures.length) row(errs, [el('span', 'none', 'muted')]);
    document.body.dataset.loaded = 'true';
  }

  async function poll() {
    try {
      const r = await fetch('/status.json', { cache: 'no-store' });
      if (r.ok) draw(await r.json());
    } catch (e) {
      $('state').textContent = 'unreachable';
      $('state').className = 'badge bad';
    }
    setTimeout(poll, POLL_MS);
  }
  poll();
})();
