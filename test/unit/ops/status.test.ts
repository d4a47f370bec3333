/**
 * The status page over HTTP (the browser test is status-browser.test.ts): who may see it, what it
 * shows and never shows, and that its event streams are bounded (a cap on clients, a client that
 * does not read dropped) and leave no timer or socket behind.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { createServer } from 'node:http';
import { type AddressInfo, connect } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { createLogger } from '../../../src/gateway/log.js';
import { StatusFeed } from '../../../src/gateway/status-feed.js';
import { freePort } from '../../support/child-gateway.js';
import { call, metadata, rawClient, startTestGateway, type TestGateway } from '../../support/gateway.js';
import { httpGet as get } from '../../support/http.js';
import { eventually, withLeakCheck } from '../../support/leaks.js';
import { openSse } from '../../support/sse.js';

const ALICE = 'alice-status-token-0123456789';
const BOB = 'bob-status-token-0123456789ab';
const tokens = new Map([
  [ALICE, 'alice'],
  [BOB, 'bob'],
]);
const keys = {
  endpoint: 'e',
  access_key_id: 'AKID-visible',
  access_key_secret: 'ak-SECRET-4711',
  instance_id: 'i',
};

interface Snapshot {
  brokers: Array<{ broker: string; ok: boolean }>;
  totals: Record<string, number>;
  callers: Array<{ principal: string; sessions: number; streams: number; producer_handles: number }>;
  refusals: Record<string, number>;
}

describe('the status page with auth on', () => {
  let gw: TestGateway;
  let base: string;
  before(async () => {
    gw = await startTestGateway({ authTokens: tokens });
    base = `http://127.0.0.1:${gw.gateway.metricsPort}`;
    // Something to leak if the 401 answers said anything: a caller with a session.
    await call(gw.client, 'CreateConsumer', { ...keys, topic: 't-401', group_id: 'g-401' }, metadata(ALICE));
  });
  after(async () => gw.close());

  test('without a valid token /status and /status/events answer 401 and name no broker, caller or gateway detail; each refusal is counted', async () => {
    const goodCookie = (await get(`${base}/status?token=${ALICE}`)).headers['set-cookie']?.[0] ?? '';
    const [name, value] = goodCookie.split(';')[0]?.split('=') ?? [];
    const parts = (value ?? '').split('.');
    // The same signature on another principal's name, and a cookie signed by another gateway.
    const swapped = `${name}=${[parts[0], Buffer.from('bob').toString('base64url'), parts[2], parts[3]].join('.')}`;
    const other = await startTestGateway({ authTokens: tokens });
    const foreign =
      (await get(`http://127.0.0.1:${other.gateway.metricsPort}/status?token=${ALICE}`)).headers[
        'set-cookie'
      ]?.[0]?.split(';')[0] ?? '';
    await other.close();
    assert.match(foreign, /^mqgate_status=v1\./);
    const refusals = (): number => (gw.gateway.metrics.json().refusals as { auth: number }).auth;
    const before = refusals();
    const attempts: Array<[string, string, Record<string, string>]> = [
      ['no credentials', '/status', {}],
      ['no credentials (events)', '/status/events', {}],
      ['a wrong bearer token', '/status', { authorization: 'Bearer wrong-token-0123456789abc' }],
      [
        'a wrong bearer token (events)',
        '/status/events',
        { authorization: 'Bearer wrong-token-0123456789abc' },
      ],
      ['a wrong ?token=', '/status?token=wrong-token-0123456789abc', {}],
      ['an empty ?token=', '/status?token=', {}],
      ['a forged cookie', '/status', { cookie: 'mqgate_status=v1.YWxpY2U.9999999999.AAAAAAAA' }],
      ['a cookie with its name swapped', '/status/events', { cookie: swapped }],
      ["another gateway's cookie", '/status', { cookie: foreign }],
      [
        'a good cookie beside a wrong bearer token',
        '/status',
        { cookie: goodCookie.split(';')[0] ?? '', authorization: 'Bearer nope' },
      ],
    ];
    for (const [what, path, headers] of attempts) {
      const r = await get(`${base}${path}`, headers);
      assert.equal(r.status, 401, `${what}: ${r.status} ${r.body}`);
      assert.equal(r.headers['set-cookie'], undefined, `${what} set a cookie`);
      assert.match(r.headers['www-authenticate'] ?? '', /^Bearer/);
      assert.doesNotMatch(
        r.body,
        /memory|alice|bob|session|#0|ready|t-401|g-401/i,
        `${what} said: ${r.body}`,
      );
      assert.match(r.body, /Authorization: Bearer <token>/);
    }
    assert.equal(refusals() - before, attempts.length, 'each refusal counted as reason "auth"');
  });

  test('?token= once: an HttpOnly SameSite=Strict cookie without the token and a redirect to /status; the cookie and a Bearer header each open the page and its events', async () => {
    const login = await get(`${base}/status?token=${ALICE}`);
    assert.equal(login.status, 303);
    assert.equal(login.headers.location, 'status', 'the token leaves the address bar');
    const cookie = login.headers['set-cookie']?.[0] ?? '';
    assert.match(cookie, /^mqgate_status=v1\.[\w-]+\.\d+\.[\w-]+; Max-Age=\d+; HttpOnly; SameSite=Strict$/);
    assert.ok(!cookie.includes(ALICE), 'the cookie holds no token');
    const ways: Array<Record<string, string>> = [
      { cookie: cookie.split(';')[0] as string },
      { authorization: `Bearer ${BOB}` },
    ];
    for (const headers of ways) {
      const page = await get(`${base}/status`, headers);
      assert.equal(page.status, 200, JSON.stringify(headers));
      assert.match(page.headers['content-type'] ?? '', /^text\/html/);
      const csp = String(page.headers['content-security-policy']);
      assert.match(csp, /default-src 'none'/);
      assert.match(csp, /script-src 'sha256-[^']+'(;|$)/, 'no unsafe-inline script');
      assert.match(csp, /connect-src 'self'/);
      assert.doesNotMatch(
        page.body,
        /https?:\/\/|\b(src|href)=["']?\/\//,
        'the page loads nothing from elsewhere',
      );
      assert.match(page.body, /new EventSource\('status\/events'\)/);
      const events = await openSse(`${base}/status/events`, headers);
      assert.equal(events.status, 200);
      assert.match(String(events.headers['content-type']), /^text\/event-stream/);
      const first = await events.next<Snapshot>();
      assert.deepEqual(first.brokers, [{ broker: 'memory#0', ok: true }]);
      events.close();
    }
    const head = await get(`${base}/status/events`, { authorization: `Bearer ${ALICE}` }, 'HEAD');
    assert.equal(head.status, 200);
    await eventually(() => gw.gateway.statusPage?.feed.clients === 0, 'no event stream left open');
  });

  test('the events list each caller by principal with counts, update when a session closes, and carry no token, access key or broker URL', async () => {
    const events = await openSse(`${base}/status/events`, { authorization: `Bearer ${ALICE}` });
    const bob = rawClient(gw.gateway.grpcPort);
    try {
      const topic = `t-${randomUUID()}`;
      const { consumer_id } = await call<{ consumer_id: string }>(
        bob,
        'CreateConsumer',
        { ...keys, topic, group_id: 'g' },
        metadata(BOB),
      );
      await call(bob, 'CreateProducer', { ...keys, topic }, metadata(BOB));
      const seen = await events.until<Snapshot>(
        (s) => s.callers.some((c) => c.principal === 'bob' && c.sessions === 1 && c.producer_handles === 1),
        "bob's session and producer",
      );
      assert.deepEqual(
        seen.callers.map((c) => c.principal).sort(),
        ['alice', 'bob'],
        'alice holds the session made before',
      );
      await call(bob, 'CleanupConsumer', { ...keys, consumer_id }, metadata(BOB));
      await events.until<Snapshot>(
        (s) => s.callers.some((c) => c.principal === 'bob' && c.sessions === 0 && c.producer_handles === 1),
        "bob's session gone, his producer still there",
      );
      const all = events.frames.join('\n');
      for (const secret of [ALICE, BOB, 'ak-SECRET-4711', 'AKID-visible', 'memory://', consumer_id]) {
        assert.ok(!all.includes(secret), `an event carries ${secret}`);
      }
    } finally {
      bob.close();
      events.close();
    }
  });
});

test('at most the cap of event streams (half of MAX_HTTP_CONNECTIONS, at most 16); one timer, running only while a stream is open', async () => {
  await withLeakCheck(async () => {
    const gw = await startTestGateway({ maxHttpConnections: 4 });
    try {
      const url = `http://127.0.0.1:${gw.gateway.metricsPort}/status/events`;
      const feed = gw.gateway.statusPage;
      assert.ok(feed);
      assert.equal(feed.feed.timerActive, false, 'no timer before a client');
      const a = await openSse(url);
      const b = await openSse(url);
      await a.next();
      await b.next();
      assert.equal(feed.feed.clients, 2);
      assert.equal(feed.feed.timerActive, true);
      const c = await openSse(url);
      assert.equal(c.status, 503);
      assert.match(c.body, /too many status event streams \(2\)/);
      assert.equal(c.headers['retry-after'], '5');
      a.close();
      await eventually(() => feed.feed.clients === 1, 'the first stream to leave');
      const d = await openSse(url);
      assert.equal(d.status, 200, 'a place is free again');
      await d.next();
      assert.equal(feed.feed.timerActive, true);
      b.close();
      d.close();
      await eventually(() => feed.feed.clients === 0, 'every stream to leave');
      assert.equal(feed.feed.timerActive, false, 'the timer stops with the last client');
      // The anonymous gateway: the page opens without a token.
      assert.equal((await get(`http://127.0.0.1:${gw.gateway.metricsPort}/status`)).status, 200);
    } finally {
      await gw.close();
    }
  });
});

test('closing the gateway with an event stream open ends the stream, stops the timer and leaves no handle', async () => {
  await withLeakCheck(async () => {
    const gw = await startTestGateway({ authTokens: tokens });
    const events = await openSse(`http://127.0.0.1:${gw.gateway.metricsPort}/status/events`, {
      authorization: `Bearer ${ALICE}`,
    });
    await events.next();
    await events.next();
    const feed = gw.gateway.statusPage?.feed;
    assert.equal(feed?.timerActive, true);
    await gw.close();
    await eventually(() => events.ended, 'the stream to end');
    assert.equal(feed?.clients, 0);
    assert.equal(feed?.timerActive, false, 'the timer stopped at close');
    events.close();
  });
});

test('an event-stream client that never reads is dropped once its unsent bytes pass the cap, while one that reads stays', async () => {
  await withLeakCheck(async () => {
    const big = 'x'.repeat(32 * 1024);
    let seq = 0;
    const feed = new StatusFeed({
      snapshot: async () => ({ seq: seq++, big }),
      log: createLogger('silent'),
      intervalMs: 5,
      maxPendingBytes: 64 * 1024,
    });
    let peakUnsent = 0;
    const server = createServer((req, res) => {
      void feed.attach(req, res);
      const write = res.write.bind(res) as (chunk: string) => boolean;
      res.write = ((chunk: string) => {
        const ok = write(chunk);
        peakUnsent = Math.max(peakUnsent, res.writableLength);
        return ok;
      }) as typeof res.write;
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const { port } = server.address() as AddressInfo;
    const reader = await openSse(`http://127.0.0.1:${port}/`);
    // The silent client: asks, then never reads a byte (a small receive buffer fills fast).
    const silent = connect({ port, host: '127.0.0.1' });
    silent.on('error', () => {});
    await new Promise((r) => silent.once('connect', r));
    silent.pause();
    silent.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
    const t0 = Date.now();
    await eventually(() => feed.dropped === 1, 'the silent client to be dropped', 20_000);
    console.log(`  silent client dropped after ${Date.now() - t0} ms; peak unsent ${peakUnsent} bytes`);
    assert.equal(feed.clients, 1, 'the reading client is still connected');
    // What one client can make the gateway hold: the cap plus the frame that crossed it.
    assert.ok(peakUnsent <= 64 * 1024 + big.length + 1024, `unsent bytes peaked at ${peakUnsent}`);
    const n = reader.frames.length;
    await eventually(() => reader.frames.length > n + 3, 'the reader to keep receiving');
    reader.close();
    await eventually(() => feed.clients === 0, 'the reader to leave');
    assert.equal(feed.timerActive, false);
    silent.destroy();
    feed.close();
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
  });
});

test('a broker that does not answer reads as down in mqgate_broker_up and on the page, which names neither its address nor its secret', async () => {
  const port = await freePort();
  const gw = await startTestGateway({
    brokers: [{ url: `rocketmq://127.0.0.1:${port}?accessKey=AK&secretKey=BROKER-SECRET-99`, endpoints: [] }],
  });
  try {
    const base = `http://127.0.0.1:${gw.gateway.metricsPort}`;
    const t0 = Date.now();
    const text = (await get(`${base}/metrics`, { accept: 'text/plain' })).body;
    const scrapeMs = Date.now() - t0;
    assert.match(text, /^mqgate_broker_up\{broker="rocketmq#0"\} 0$/m);
    assert.ok(scrapeMs < 5000, `the scrape waited ${scrapeMs} ms for the broker`);
    const events = await openSse(`${base}/status/events`);
    const s = await events.next<Snapshot>();
    events.close();
    assert.deepEqual(s.brokers, [{ broker: 'rocketmq#0', ok: false }]);
    const frame = events.frames.join('');
    assert.ok(!frame.includes('BROKER-SECRET-99'), 'the secret');
    assert.ok(!frame.includes(String(port)), 'the port');
    assert.ok(!frame.includes('127.0.0.1'), 'the address');
  } finally {
    await gw.close();
  }
});
