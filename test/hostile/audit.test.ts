/**
 * The refusal audit of a gateway run as `mqgate serve`: every refusal is counted by reason in
 * /metrics (JSON `refusals` and Prometheus mqgate_refusals_total{reason}), and each (reason, who)
 * pair is logged once per interval, so 200 calls with a bad token cost one log line, not 200.
 * Log lines name principals and peers, never tokens.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { call, metadata, type RawClient, rawClient } from '../support/gateway.js';
import { assertResourcesSettle, countResources, eventually, type ResourceCounts } from '../support/leaks.js';
import {
  ALICE,
  assertHealthy,
  BOB,
  grpcError,
  KEYS,
  type Refusals,
  type ServeProcess,
  spawnServe,
  tempDir,
} from './helpers.js';

const CAROL = 'carol-token-0123456789abcdef';
const WRONG = 'wrong-token-0123456789abcdef-SHOULD-NOT-BE-LOGGED';

interface Line {
  msg?: string;
  reason?: string;
  who?: string;
  [k: string]: unknown;
}

describe('refusals are counted by reason and logged once per (reason, who) per interval', () => {
  let p: ServeProcess;
  let files: ReturnType<typeof tempDir>;
  let c: RawClient;
  let aliceProducer = '';
  const topic = `audit-${randomUUID()}`;
  let baseline: ResourceCounts;

  const lines = (): Line[] =>
    p
      .stdout()
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as Line);
  const refusalLines = (reason: string): Line[] => lines().filter((l) => l.msg === `refused: ${reason}`);
  const metrics = async (): Promise<Refusals> => {
    const res = await fetch(`http://127.0.0.1:${p.metricsPort}/metrics`, {
      headers: { connection: 'close' },
    });
    return ((await res.json()) as { refusals: Refusals }).refusals;
  };
  const prometheus = async (): Promise<string> => {
    const res = await fetch(`http://127.0.0.1:${p.metricsPort}/metrics`, {
      headers: { connection: 'close', accept: 'text/plain' },
    });
    return res.text();
  };
  const times = async (n: number, fn: () => Promise<unknown>): Promise<void> => {
    for (let i = 0; i < n; i++) await fn();
  };
  /** Alice's producer still sends: the refusals around her changed nothing for her. */
  const aliceUnaffected = async (): Promise<void> => {
    const r = await call<{ success: boolean }>(
      c,
      'SendMessage',
      { producer_id: aliceProducer, message_body: 'still here' },
      metadata(ALICE),
    );
    assert.equal(r.success, true);
    await assertHealthy(c, ALICE);
  };

  before(async () => {
    baseline = countResources();
    files = tempDir();
    const authFile = files.file(
      'auth.json',
      JSON.stringify({
        principals: { carol: { token: CAROL, publish: ['carol.*'], consume: [], groups: [] } },
      }),
    );
    p = await spawnServe({
      AUTH_TOKENS: `alice:${ALICE},bob:${BOB}`,
      AUTH_FILE: authFile,
      MAX_PRODUCERS_PER_CALLER: '2',
      LOG_LEVEL: 'info',
    });
    assert.equal(p.started, true, p.stderr());
    c = rawClient(p.grpcPort);
    aliceProducer = (
      await call<{ producer_id: string }>(c, 'CreateProducer', { ...KEYS, topic }, metadata(ALICE))
    ).producer_id;
  });
  after(async () => {
    c?.close();
    await p?.stop();
    files?.remove();
  });

  test('100 calls with a wrong token and 100 without one: refusals.auth counts 200, one "refused: auth" log line, the token never logged', async () => {
    await times(100, () => grpcError(call(c, 'CreateProducer', { ...KEYS, topic }, metadata(WRONG))));
    await times(100, () =>
      grpcError(call(c, 'SendMessage', { producer_id: aliceProducer, message_body: 'x' })),
    );
    assert.equal((await metrics()).auth, 200);
    await eventually(() => refusalLines('auth').length >= 1, 'the auth refusal logged');
    const auth = refusalLines('auth');
    assert.equal(auth.length, 1, `${auth.length} "refused: auth" lines for 200 refusals`);
    assert.match(String(auth[0]?.who), /^peer 127\.0\.0\.1$/);
    assert.ok(!p.stdout().includes(WRONG), 'the wrong token was logged');
    assert.ok(!p.stdout().includes(ALICE) && !p.stdout().includes(BOB), 'a valid token was logged');
    assert.match(await prometheus(), /mqgate_refusals_total\{reason="auth"\} 200/);
    await aliceUnaffected();
  });

  test('ownership, permission and quota refusals are each counted per call and logged once per principal', async () => {
    const before = await metrics();
    // ownership: bob and carol use alice's producer id, 20 times each.
    for (const token of [BOB, CAROL]) {
      await times(20, () =>
        grpcError(call(c, 'SendMessage', { producer_id: aliceProducer, message_body: 'x' }, metadata(token))),
      );
    }
    // permission: carol publishes outside carol.*, and bob to a dead-letter topic, 20 times each.
    await times(20, () =>
      grpcError(call(c, 'CreateProducer', { ...KEYS, topic: 'payments' }, metadata(CAROL))),
    );
    await times(20, () => grpcError(call(c, 'CreateProducer', { ...KEYS, topic: '%DLQ%g' }, metadata(BOB))));
    // quota: bob holds MAX_PRODUCERS_PER_CALLER=2, then asks 20 more times.
    for (let i = 0; i < 2; i++) await call(c, 'CreateProducer', { ...KEYS, topic: `b-${i}` }, metadata(BOB));
    await times(20, () => grpcError(call(c, 'CreateProducer', { ...KEYS, topic: 'b-x' }, metadata(BOB))));
    const after = await metrics();
    assert.equal(after.ownership - before.ownership, 40);
    assert.equal(after.permission - before.permission, 40);
    assert.equal(after.quota - before.quota, 20);
    await eventually(() => refusalLines('quota').length >= 1, 'the quota refusal logged');
    const who = (reason: string) =>
      refusalLines(reason)
        .map((l) => l.who)
        .sort();
    assert.deepEqual(who('ownership'), ['bob', 'carol']);
    assert.deepEqual(who('permission'), ['bob', 'carol']);
    assert.deepEqual(who('quota'), ['principal "bob"']);
    const text = await prometheus();
    for (const reason of ['ownership', 'permission', 'quota'] as const) {
      assert.match(text, new RegExp(`mqgate_refusals_total\\{reason="${reason}"\\} ${after[reason]}`));
    }
    await aliceUnaffected();
  });

  test('the gateway is healthy afterwards, exits 0 on SIGTERM, and no handle of the test is left', async () => {
    await aliceUnaffected();
    c.close();
    assert.equal(await p.stop(), 0);
    assert.equal(p.stderr(), '');
    await assertResourcesSettle(baseline);
  });
});
