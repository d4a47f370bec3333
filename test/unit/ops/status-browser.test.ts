/**
 * The status page in a real browser: Debian's Chromium, headless, driven by playwright-core with
 * the system executable and a fresh profile. The page refuses a visitor without a token, takes
 * the token once (into an HttpOnly cookie, out of the address bar), shows a session the test
 * creates under its principal, follows it when it closes, loads nothing from anywhere but the
 * gateway, and breaks no rule of its own Content-Security-Policy. A screenshot is taken every
 * run; it replaces docs/status-page.png only with UPDATE_SCREENSHOT=1.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { call, metadata, rawClient, receive, startTestGateway } from '../../support/gateway.js';
import { eventually, withLeakCheck } from '../../support/leaks.js';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const SCREENSHOT = fileURLToPath(new URL('../../../docs/status-page.png', import.meta.url));
const ALICE = 'alice-browser-token-0123456789';
const BOB = 'bob-browser-token-0123456789ab';
const keys = { endpoint: 'e', access_key_id: 'AK', access_key_secret: 'browser-SECRET-1', instance_id: 'i' };
const ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

test('the status page in headless Chromium: 401 without a token, the token once into an HttpOnly cookie, a session shown and followed until it closes, nothing loaded from elsewhere', async () => {
  assert.ok(
    existsSync(CHROMIUM),
    `${CHROMIUM} is missing: this test needs Debian's chromium (apt-get install -y chromium; .ci/run installs it), or CHROMIUM_PATH naming a Chromium`,
  );
  await withLeakCheck(async () => {
    const gw = await startTestGateway({
      authTokens: new Map([
        [ALICE, 'alice'],
        [BOB, 'bob'],
      ]),
    });
    const base = `http://127.0.0.1:${gw.gateway.metricsPort}`;
    const profile = mkdtempSync(join(tmpdir(), 'mqgate-chromium-'));
    const alice = rawClient(gw.gateway.grpcPort);
    const bob = rawClient(gw.gateway.grpcPort);
    const t0 = Date.now();
    const context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: ARGS,
      viewport: { width: 1280, height: 560 },
      colorScheme: 'light',
    });
    try {
      console.log(`  Chromium ${context.browser()?.version() ?? ''} up in ${Date.now() - t0} ms`);
      const requests: string[] = [];
      const problems: string[] = [];
      context.on('request', (r) => requests.push(r.url()));
      const page = context.pages()[0] ?? (await context.newPage());
      page.on('console', (m) => {
        if (m.type() === 'error' || m.type() === 'warning') problems.push(`${m.type()}: ${m.text()}`);
      });
      page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));

      // Without a token: 401, and the answer names nothing of the gateway.
      const refused = await page.goto(`${base}/status`);
      assert.equal(refused?.status(), 401);
      const refusedText = await page.textContent('body');
      assert.doesNotMatch(refusedText ?? '', /memory|alice|bob|session/i);
      problems.length = 0; // the browser logs the 401 itself

      // The token once: a cookie the page's scripts cannot read, and an address without it.
      const opened = await page.goto(`${base}/status?token=${ALICE}`);
      assert.equal(opened?.status(), 200);
      assert.equal(page.url(), `${base}/status`, 'the token left the address bar');
      const cookies = await context.cookies(base);
      assert.equal(cookies.length, 1);
      assert.equal(cookies[0]?.name, 'mqgate_status');
      assert.equal(cookies[0]?.httpOnly, true);
      assert.equal(cookies[0]?.sameSite, 'Strict');
      assert.ok(!cookies[0]?.value.includes(ALICE), 'the cookie holds no token');
      assert.equal(await page.evaluate('document.cookie'), '', 'HttpOnly: invisible to scripts');

      await page.waitForSelector('#live.live');
      await page.waitForSelector('tr[data-broker="memory#0"] td.up');
      assert.equal(await page.textContent('#sessions'), '0');

      // bob opens a session with a stream; alice publishes to it for a while.
      const topic = `orders-${randomUUID().slice(0, 8)}`;
      const { consumer_id } = await call<{ consumer_id: string }>(
        bob,
        'CreateConsumer',
        { ...keys, topic, group_id: 'billing' },
        metadata(BOB),
      );
      const stream = receive(bob, consumer_id, metadata(BOB));
      await page.waitForSelector('tr[data-principal="bob"] td.sessions >> text=1');
      const { producer_id } = await call<{ producer_id: string }>(
        alice,
        'CreateProducer',
        { ...keys, topic },
        metadata(ALICE),
      );
      let acked = 0;
      for (let i = 0; i < 30; i++) {
        await Promise.all(
          Array.from({ length: 5 + (i % 7) * 3 }, (_, j) =>
            call(alice, 'SendMessage', { producer_id, message_body: `m${i}-${j}` }, metadata(ALICE)),
          ),
        );
        // Some acked, the rest left in flight for the picture.
        const upTo = Math.floor(stream.messages.length * 0.6);
        for (const m of stream.messages.slice(acked, upTo)) {
          await call(bob, 'AckMessage', { consumer_id, receipt_handle: m.receipt_handle }, metadata(BOB));
        }
        acked = Math.max(acked, upTo);
        await sleep(80);
      }
      await eventually(
        async () => (await page.textContent('tr[data-principal="bob"] td.streams')) === '1',
        "bob's stream on the page",
      );
      await eventually(
        async () => (await page.textContent('tr[data-principal="alice"] td.producer-handles')) === '1',
        "alice's producer on the page",
      );
      await eventually(async () => /\/s$/.test((await page.textContent('#rate-sent')) ?? ''), 'a send rate');

      const shot = process.env.UPDATE_SCREENSHOT === '1' ? SCREENSHOT : join(profile, 'status-page.png');
      await page.screenshot({ path: shot, fullPage: true });
      const png = readFileSync(shot);
      assert.equal(png.subarray(1, 4).toString(), 'PNG');
      assert.ok(png.length > 20_000, `a screenshot of ${png.length} bytes`);
      console.log(`  screenshot ${shot} (${png.length} bytes)`);

      // The session closes: the page follows.
      stream.end();
      await call(bob, 'CleanupConsumer', { ...keys, consumer_id }, metadata(BOB));
      await page.waitForSelector('tr[data-principal="bob"]', { state: 'detached' });
      await eventually(async () => (await page.textContent('#sessions')) === '0', 'no session on the page');
      assert.equal(await page.textContent('tr[data-principal="alice"] td.sessions'), '0');

      const elsewhere = requests.filter((u) => !u.startsWith(`${base}/`));
      assert.deepEqual(elsewhere, [], 'the page fetched something from elsewhere');
      assert.deepEqual(problems, [], 'console errors or warnings (a CSP violation shows here)');
      assert.ok(
        requests.includes(`${base}/status/events`),
        `the page used its event stream: ${requests.join(', ')}`,
      );
    } finally {
      await context.close();
      alice.close();
      bob.close();
      rmSync(profile, { recursive: true, force: true });
    }
    await eventually(() => gw.gateway.statusPage?.feed.clients === 0, 'the browser stream to go');
    assert.equal(gw.gateway.statusPage?.feed.timerActive, false, 'the timer stops with the last client');
    await gw.close();
  });
});
