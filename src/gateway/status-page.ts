import { createHash } from 'node:crypto';

/**
 * The live status page served at /status on the HTTP port: one self-contained HTML document (no
 * build step, nothing fetched from anywhere but this gateway's own /status/events). It renders
 * the snapshots status-feed.ts sends, with DOM text only (never HTML built from data), and works
 * out rates from the change of each counter between two snapshots.
 */

const STYLE = `
:root { color-scheme: light dark; --bg: #f5f6f8; --card: #fff; --fg: #1d2330; --dim: #667085;
  --line: #e3e6eb; --ok: #1a7f37; --bad: #c62828; --warn: #b26a00; --accent: #2f6fdf; }
@media (prefers-color-scheme: dark) { :root { --bg: #111418; --card: #1a1f26; --fg: #e6e9ee;
  --dim: #9aa4b2; --line: #2a313b; --ok: #3fb950; --bad: #f85149; --warn: #d29922; --accent: #5b9cff; } }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  background: var(--bg); color: var(--fg); }
header { display: flex; align-items: baseline; gap: 16px; padding: 14px 24px;
  border-bottom: 1px solid var(--line); background: var(--card); }
header h1 { font-size: 18px; margin: 0; }
header .meta { color: var(--dim); }
#live { margin-left: auto; font-weight: 600; }
#live::before { content: "\\25CF  "; }
#live.live { color: var(--ok); } #live.reconnecting { color: var(--warn); } #live.down { color: var(--bad); }
main { padding: 16px 24px; display: grid; gap: 16px;
  grid-template-columns: repeat(auto-fill, minmax(270px, 1fr)); align-items: start; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 12px 16px; }
section.wide { grid-column: 1 / -1; }
h2 { font-size: 13px; text-transform: uppercase; letter-spacing: .06em; color: var(--dim); margin: 0 0 8px; }
dl + h2, table + h2 { margin-top: 16px; }
dl { display: grid; grid-template-columns: 1fr auto; gap: 4px 12px; margin: 0; }
dt { color: var(--dim); } dd { margin: 0; text-align: right; font-variant-numeric: tabular-nums; font-weight: 600; }
dd.alert { color: var(--bad); }
table { width: 100%; border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { text-align: right; padding: 4px 8px; border-bottom: 1px solid var(--line); }
th:first-child, td:first-child { text-align: left; }
th { color: var(--dim); font-weight: 500; }
td.up { color: var(--ok); font-weight: 600; } td.down { color: var(--bad); font-weight: 600; }
.empty { color: var(--dim); font-style: italic; }
svg { width: 100%; height: 60px; display: block; margin-top: 8px; }
polyline { fill: none; stroke-width: 1.5; }
#spark-sent { stroke: var(--accent); } #spark-delivered { stroke: var(--ok); }
.legend { color: var(--dim); font-size: 12px; }
.legend .s { color: var(--accent); } .legend .d { color: var(--ok); }
`;

const SCRIPT = `
(() => {
  'use strict';
  const $ = (id) => document.getElementById(id);
  const num = new Intl.NumberFormat('en', { maximumFractionDigits: 1 });
  const HISTORY = 120;
  const history = { sent: [], delivered: [] };
  let prev;

  const set = (id, text, alert) => {
    const el = $(id);
    if (!el) return;
    const t = String(text);
    if (el.textContent !== t) el.textContent = t;
    if (alert !== undefined) el.classList.toggle('alert', alert);
  };
  const bytes = (n) => {
    const u = ['B', 'KiB', 'MiB', 'GiB'];
    let i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return num.format(n) + ' ' + u[i];
  };
  const duration = (s) => {
    s = Math.floor(s);
    const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
    return (d ? d + 'd ' : '') + (d || h ? h + 'h ' : '') + m + 'm ' + (s % 60) + 's';
  };
  const perSecond = (s, name) => {
    if (!prev) return undefined;
    const dt = (s.time - prev.time) / 1000;
    if (dt <= 0) return undefined;
    return Math.max(0, (s.counters[name] - prev.counters[name]) / dt);
  };
  const rate = (s, name) => {
    const r = perSecond(s, name);
    return r === undefined ? '\\u2013' : num.format(r) + '/s';
  };
  const cell = (tr, text, cls) => {
    const td = document.createElement('td');
    td.textContent = String(text);
    if (cls) td.className = cls;
    tr.appendChild(td);
  };
  const rows = (tbodyId, items, fill, emptyText, cols) => {
    const tbody = $(tbodyId);
    const trs = [];
    for (const item of items) { const tr = document.createElement('tr'); fill(tr, item); trs.push(tr); }
    if (trs.length === 0) {
      const tr = document.createElement('tr');
      const td = document.createElement('td');
      td.colSpan = cols;
      td.className = 'empty';
      td.textContent = emptyText;
      tr.appendChild(td);
      trs.push(tr);
    }
    tbody.replaceChildren(...trs);
  };
  const spark = (id, values, max) => {
    const n = values.length;
    const pts = values.map((v, i) => ((i + HISTORY - n) * (300 / (HISTORY - 1))).toFixed(1) + ',' +
      (58 - (v / max) * 54).toFixed(1));
    $(id).setAttribute('points', pts.join(' '));
  };

  const render = (s) => {
    const t = s.totals, c = s.counters;
    set('updated', 'updated ' + new Date(s.time).toLocaleTimeString());
    set('uptime', 'up ' + duration(s.uptime_seconds));
    set('auth', s.auth ? 'auth on' : 'auth off');
    set('producer-handles', t.producer_handles);
    set('broker-producers', t.broker_producers);
    set('sessions', t.sessions);
    set('streams', t.streams);
    set('publish-streams', t.publish_streams);
    set('in-flight', t.in_flight);
    set('connections', t.connections);
    set('pending-transactions', t.pending_transactions);
    set('rate-sent', rate(s, 'messages_sent'));
    set('rate-delivered', rate(s, 'messages_delivered'));
    set('rate-acked', rate(s, 'messages_acked'));
    set('rate-nacked', rate(s, 'messages_nacked'));
    set('rate-redelivered', rate(s, 'messages_redelivered'));
    set('rate-requests', rate(s, 'total_requests'));
    set('rate-failed', rate(s, 'failed_requests'));
    set('channel-full', c.channel_full_events, c.channel_full_events > 0);
    set('streams-stalled', c.streams_stalled, c.streams_stalled > 0);
    set('producer-leaks', c.producer_leak_detections, c.producer_leak_detections > 0);
    set('consumer-leaks', c.consumer_leak_detections, c.consumer_leak_detections > 0);
    for (const [reason, n] of Object.entries(s.refusals)) set('refusals-' + reason, n, n > 0);
    set('eld-p50', s.process.event_loop_delay_ms.p50 + ' ms');
    set('eld-p99', s.process.event_loop_delay_ms.p99 + ' ms');
    set('eld-max', s.process.event_loop_delay_ms.max + ' ms');
    set('heap', bytes(s.process.heap_used_bytes));
    set('rss', bytes(s.process.rss_bytes));
    rows('brokers', s.brokers, (tr, b) => {
      tr.dataset.broker = b.broker;
      cell(tr, b.broker);
      cell(tr, b.ok ? 'up' : 'down', b.ok ? 'up' : 'down');
    }, 'no broker configured', 2);
    rows('callers', s.callers, (tr, k) => {
      tr.dataset.principal = k.principal;
      cell(tr, k.principal === '' ? '(anonymous: auth off)' : k.principal);
      cell(tr, k.sessions, 'sessions');
      cell(tr, k.streams, 'streams');
      cell(tr, k.in_flight, 'in-flight');
      cell(tr, k.producer_handles, 'producer-handles');
    }, 'no caller holds a session or a producer', 5);
    set('callers-omitted', s.callers_omitted > 0 ? s.callers_omitted + ' more callers not shown' : '');
    const sent = perSecond(s, 'messages_sent');
    const delivered = perSecond(s, 'messages_delivered');
    if (sent !== undefined && delivered !== undefined) {
      history.sent.push(sent);
      history.delivered.push(delivered);
      if (history.sent.length > HISTORY) { history.sent.shift(); history.delivered.shift(); }
      const max = Math.max(1, ...history.sent, ...history.delivered);
      spark('spark-sent', history.sent, max);
      spark('spark-delivered', history.delivered, max);
      set('spark-max', 'peak ' + num.format(max) + '/s');
    }
    prev = s;
    document.body.dataset.sessions = String(t.sessions);
  };

  const state = (cls, text) => {
    const el = $('live');
    el.className = cls;
    el.textContent = text;
  };
  const events = new EventSource('status/events');
  events.onopen = () => state('live', 'live');
  events.onmessage = (e) => {
    state('live', 'live');
    render(JSON.parse(e.data));
  };
  events.onerror = () => {
    if (events.readyState === EventSource.CLOSED) {
      state('down', 'disconnected: reload the page (open /status?token=... again if the gateway restarted)');
    } else {
      state('reconnecting', 'reconnecting');
    }
  };
})();
`;

const BODY = `<header>
  <h1>mqgate status</h1>
  <span class="meta" id="uptime"></span>
  <span class="meta" id="auth"></span>
  <span class="meta" id="updated">waiting for the first update</span>
  <span id="live" class="reconnecting">connecting</span>
</header>
<main>
  <section>
    <h2>Clients</h2>
    <dl>
      <dt>Producer handles</dt><dd id="producer-handles">\u2013</dd>
      <dt>Broker producers</dt><dd id="broker-producers">\u2013</dd>
      <dt>Consumer sessions</dt><dd id="sessions">\u2013</dd>
      <dt>Consumer streams</dt><dd id="streams">\u2013</dd>
      <dt>Publish streams</dt><dd id="publish-streams">\u2013</dd>
      <dt>In-flight deliveries</dt><dd id="in-flight">\u2013</dd>
      <dt>Connections</dt><dd id="connections">\u2013</dd>
      <dt>Pending transactions</dt><dd id="pending-transactions">\u2013</dd>
    </dl>
  </section>
  <section>
    <h2>Rates</h2>
    <dl>
      <dt>Sent</dt><dd id="rate-sent">\u2013</dd>
      <dt>Delivered</dt><dd id="rate-delivered">\u2013</dd>
      <dt>Acked</dt><dd id="rate-acked">\u2013</dd>
      <dt>Nacked</dt><dd id="rate-nacked">\u2013</dd>
      <dt>Redelivered</dt><dd id="rate-redelivered">\u2013</dd>
      <dt>RPCs</dt><dd id="rate-requests">\u2013</dd>
      <dt>Failed RPCs</dt><dd id="rate-failed">\u2013</dd>
    </dl>
    <svg viewBox="0 0 300 60" preserveAspectRatio="none" aria-label="messages per second, last two minutes">
      <polyline id="spark-sent" points=""></polyline>
      <polyline id="spark-delivered" points=""></polyline>
    </svg>
    <div class="legend"><span class="s">\u25A0 sent</span> <span class="d">\u25A0 delivered</span>
      <span id="spark-max"></span></div>
  </section>
  <section>
    <h2>Backpressure and leaks</h2>
    <dl>
      <dt>Channel-full events</dt><dd id="channel-full">\u2013</dd>
      <dt>Streams stalled</dt><dd id="streams-stalled">\u2013</dd>
      <dt>Producer leak detections</dt><dd id="producer-leaks">\u2013</dd>
      <dt>Consumer leak detections</dt><dd id="consumer-leaks">\u2013</dd>
    </dl>
    <h2>Refusals</h2>
    <dl>
      <dt>Auth</dt><dd id="refusals-auth">\u2013</dd>
      <dt>Ownership</dt><dd id="refusals-ownership">\u2013</dd>
      <dt>Permission</dt><dd id="refusals-permission">\u2013</dd>
      <dt>Quota</dt><dd id="refusals-quota">\u2013</dd>
    </dl>
  </section>
  <section>
    <h2>Brokers</h2>
    <table><thead><tr><th>Broker</th><th>Health</th></tr></thead><tbody id="brokers"></tbody></table>
    <h2>Process</h2>
    <dl>
      <dt>Event-loop delay p50</dt><dd id="eld-p50">\u2013</dd>
      <dt>Event-loop delay p99</dt><dd id="eld-p99">\u2013</dd>
      <dt>Event-loop delay max</dt><dd id="eld-max">\u2013</dd>
      <dt>Heap used</dt><dd id="heap">\u2013</dd>
      <dt>Resident memory</dt><dd id="rss">\u2013</dd>
    </dl>
  </section>
  <section class="wide">
    <h2>Callers</h2>
    <table>
      <thead><tr><th>Principal</th><th>Sessions</th><th>Streams</th><th>In flight</th><th>Producer handles</th></tr></thead>
      <tbody id="callers"></tbody>
    </table>
    <div class="legend" id="callers-omitted"></div>
  </section>
</main>`;

const sha256 = (text: string): string => createHash('sha256').update(text).digest('base64');

/** The page. */
export const STATUS_PAGE_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>mqgate status</title>
<link rel="icon" href="data:,">
<style>${STYLE}</style>
</head>
<body>
${BODY}
<script>${SCRIPT}</script>
</body>
</html>
`;

/**
 * Its Content-Security-Policy: the inline style and script by their digests, connections to this
 * origin only, nothing else loaded from anywhere.
 */
export const STATUS_PAGE_CSP = [
  "default-src 'none'",
  `script-src 'sha256-${sha256(SCRIPT)}'`,
  `style-src 'sha256-${sha256(STYLE)}'`,
  "connect-src 'self'",
  'img-src data:',
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');
