/**
 * Quota bypass attempts. Per-caller limits follow the principal (the access key id when auth is
 * off), never the secret, so new secrets or key ids under one token buy nothing; global caps hold
 * against several principals together; the gRPC port closes connections beyond MAX_CONNECTIONS.
 * A refused create leaves nothing behind, and the owner of what already exists is unaffected.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { type Socket, connect as tcpConnect } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { status } from '@grpc/grpc-js';
import type { GatewayConfig } from '../../src/gateway/config.js';
import { call, rawClient, receive, startTestGateway } from '../support/gateway.js';
import { assertResourcesSettle, countResources, eventually, type ResourceCounts } from '../support/leaks.js';
import {
  ALICE,
  assertHealthy,
  awaitMessage,
  BOB,
  codeName,
  createConsumer,
  createProducer,
  gauge,
  md,
  refusals,
  type Stream,
  startTenantGateway,
  type TenantGateway,
} from './helpers.js';

const CAROL = 'carol-token-0123456789abcdef';

interface Owner {
  gw: TenantGateway;
  producer: string;
  consumer: string;
  stream: Stream;
  topic: string;
}

/** A three-principal gateway where alice already has a producer, a consumer and a stream. */
async function withOwner(config: Partial<GatewayConfig>): Promise<Owner> {
  const gw = await startTenantGateway({
    authTokens: new Map([
      [ALICE, 'alice'],
      [BOB, 'bob'],
      [CAROL, 'carol'],
    ]),
    ...config,
  });
  const topic = `q-${randomUUID()}`;
  const producer = await createProducer(gw.alice, ALICE, topic);
  const consumer = await createConsumer(gw.alice, ALICE, topic, `q-alice-${randomUUID()}`);
  const stream = receive(gw.alice, consumer, md(ALICE));
  await eventually(async () => (await gauge(gw.metricsUrl, 'active_streams')) === 1, "alice's stream");
  return { gw, producer, consumer, stream, topic };
}

/** Alice's producer still sends, her stream still receives, her ack is taken; HealthCheck OK. */
async function aliceUnaffected(o: Owner): Promise<void> {
  const body = `alice-${randomUUID()}`;
  await call(o.gw.alice, 'SendMessage', { producer_id: o.producer, message_body: body }, md(ALICE));
  const m = await awaitMessage(o.stream, body);
  await call(
    o.gw.alice,
    'AckMessage',
    { consumer_id: o.consumer, receipt_handle: m.receipt_handle },
    md(ALICE),
  );
  assert.equal(o.stream.ended, false);
  await assertHealthy(o.gw.alice, ALICE);
}

async function closeOwner(o: Owner | undefined): Promise<void> {
  o?.stream.end();
  await o?.gw.close();
}

/** Settles all attempts; returns the fulfilled values and the refusals' details. */
async function settle<T>(attempts: Array<Promise<T>>, code: number): Promise<{ ok: T[]; refused: string[] }> {
  const results = await Promise.allSettled(attempts);
  const ok: T[] = [];
  const refused: string[] = [];
  for (const r of results) {
    if (r.status === 'fulfilled') ok.push(r.value);
    else {
      const e = r.reason as { code: number; details: string };
      assert.equal(codeName(e.code), codeName(code), e.details);
      refused.push(e.details);
    }
  }
  return { ok, refused };
}

describe('quota bypass attempts are refused with RESOURCE_EXHAUSTED naming the limit', () => {
  let baseline: ResourceCounts;
  let o: Owner | undefined;
  before(() => {
    baseline = countResources();
  });
  after(async () => closeOwner(o));

  test('50 concurrent CreateConsumer under one token with 50 different access keys and secrets: exactly MAX_CONSUMERS_PER_CALLER=3 succeed', async () => {
    o = await withOwner({ maxConsumersPerCaller: 3 });
    const sessions = await gauge(o.gw.metricsUrl, 'active_consumers');
    const quotaBefore = (await refusals(o.gw.metricsUrl)).quota;
    const { ok, refused } = await settle(
      Array.from({ length: 50 }, (_, i) =>
        createConsumer(o!.gw.bob, BOB, o!.topic, `bob-${i}`, {
          access_key_id: `ak-${i}`,
          access_key_secret: `secret-${i}-${randomUUID()}`,
        }),
      ),
      status.RESOURCE_EXHAUSTED,
    );
    assert.equal(ok.length, 3);
    assert.equal(refused.length, 47);
    for (const d of refused)
      assert.match(d, /principal "bob" already holds 3 consumer sessions.*MAX_CONSUMERS_PER_CALLER=3/);
    assert.equal(
      await gauge(o.gw.metricsUrl, 'active_consumers'),
      sessions + 3,
      'refused creates left no session',
    );
    assert.equal((await refusals(o.gw.metricsUrl)).quota - quotaBefore, 47);
    await aliceUnaffected(o);
    await closeOwner(o);
    o = undefined;
  });

  test('50 concurrent CreateProducer under one token with 50 different access keys and secrets: exactly MAX_PRODUCERS_PER_CALLER=3 succeed', async () => {
    o = await withOwner({ maxProducersPerCaller: 3 });
    const handles = await gauge(o.gw.metricsUrl, 'producer_handles');
    const brokerProducers = await gauge(o.gw.metricsUrl, 'active_producers');
    const { ok, refused } = await settle(
      Array.from({ length: 50 }, (_, i) =>
        createProducer(o!.gw.bob, BOB, `bob-${i}`, {
          access_key_id: `ak-${i}`,
          access_key_secret: `secret-${i}-${randomUUID()}`,
        }),
      ),
      status.RESOURCE_EXHAUSTED,
    );
    assert.equal(ok.length, 3);
    for (const d of refused)
      assert.match(d, /principal "bob" already holds 3 producer handles.*MAX_PRODUCERS_PER_CALLER=3/);
    assert.equal(await gauge(o.gw.metricsUrl, 'producer_handles'), handles + 3);
    assert.equal(
      await gauge(o.gw.metricsUrl, 'active_producers'),
      brokerProducers + 3,
      'no broker producer leaked',
    );
    await aliceUnaffected(o);
    await closeOwner(o);
    o = undefined;
  });

  test('50 concurrent SendTransactionMessage through 3 producers of one token: exactly MAX_TRANSACTIONS_PER_CALLER=3 stay pending, no half message of a refused one is ever delivered', async () => {
    o = await withOwner({ maxTransactionsPerCaller: 3 });
    const topic = `q-tx-${randomUUID()}`;
    const producers = await Promise.all(
      [0, 1, 2].map((i) => createProducer(o!.gw.bob, BOB, topic, { access_key_secret: `s-${i}` })),
    );
    const watcher = await createConsumer(o.gw.bob, BOB, topic, `q-tx-w-${randomUUID()}`);
    const watch = receive(o.gw.bob, watcher, md(BOB));
    await eventually(
      async () => (await gauge(o!.gw.metricsUrl, 'active_streams')) === 2,
      "bob's watcher stream",
    );
    const sentBefore = await gauge(o.gw.metricsUrl, 'messages_sent');
    const { ok, refused } = await settle(
      Array.from({ length: 50 }, (_, i) =>
        call<{ transaction_id: string }>(
          o!.gw.bob,
          'SendTransactionMessage',
          { producer_id: producers[i % 3], message_body: `half-${i}`, trans_check_immunity_time: 600 },
          md(BOB),
        ),
      ),
      status.RESOURCE_EXHAUSTED,
    );
    assert.equal(ok.length, 3);
    for (const d of refused)
      assert.match(d, /principal "bob" already holds 3 pending transactions.*MAX_TRANSACTIONS_PER_CALLER=3/);
    assert.equal(await gauge(o.gw.metricsUrl, 'pending_transactions'), 3);
    assert.equal(await gauge(o.gw.metricsUrl, 'messages_sent'), sentBefore + 3);
    // Alice's own transaction is not affected by bob's quota.
    const tx = await call<{ transaction_id: string }>(
      o.gw.alice,
      'SendTransactionMessage',
      { producer_id: o.producer, message_body: 'alice-tx' },
      md(ALICE),
    );
    await call(o.gw.alice, 'EndTransaction', { transaction_id: tx.transaction_id, commit: true }, md(ALICE));
    const m = await awaitMessage(o.stream, 'alice-tx');
    await call(
      o.gw.alice,
      'AckMessage',
      { consumer_id: o.consumer, receipt_handle: m.receipt_handle },
      md(ALICE),
    );
    // Bob commits his three: exactly those three are delivered.
    for (const t of ok)
      await call(o.gw.bob, 'EndTransaction', { transaction_id: t.transaction_id, commit: true }, md(BOB));
    await eventually(() => watch.messages.length >= 3, "bob's three committed messages");
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(watch.messages.length, 3, 'only the reserved transactions produced messages');
    watch.end();
    await aliceUnaffected(o);
    await closeOwner(o);
    o = undefined;
  });

  test('with auth off the per-caller limit follows the access key id: 50 secrets under one key id get 3 sessions; another key id has its own', async () => {
    const gw = await startTestGateway({ maxConsumersPerCaller: 3 });
    try {
      const topic = `q-off-${randomUUID()}`;
      const { ok, refused } = await settle(
        Array.from({ length: 50 }, (_, i) =>
          createConsumer(gw.client, undefined, topic, `g-${i}`, {
            access_key_id: 'AK-SHARED',
            access_key_secret: `secret-${i}`,
          }),
        ),
        status.RESOURCE_EXHAUSTED,
      );
      assert.equal(ok.length, 3);
      for (const d of refused)
        assert.match(d, /access key "AK-SHARED" already holds 3 .*MAX_CONSUMERS_PER_CALLER=3/);
      assert.equal(await gauge(gw.metricsUrl, 'active_consumers'), 3);
      const other = await createConsumer(gw.client, undefined, topic, 'g-other', {
        access_key_id: 'AK-OTHER',
      });
      assert.ok(other);
      await assertHealthy(gw.client);
    } finally {
      await gw.close();
    }
  });

  test('MAX_SESSIONS holds against several principals together; refused creates leave no session', async () => {
    o = await withOwner({ maxSessions: 4 });
    await createConsumer(o.gw.bob, BOB, o.topic, 'bob-1');
    await createConsumer(o.gw.bob, BOB, o.topic, 'bob-2');
    const carol = rawClient(o.gw.gateway.grpcPort);
    try {
      await createConsumer(carol, CAROL, o.topic, 'carol-1');
      assert.equal(await gauge(o.gw.metricsUrl, 'active_consumers'), 4);
      for (const [client, token] of [
        [carol, CAROL],
        [o.gw.bob, BOB],
      ] as const) {
        const e = await settle([createConsumer(client, token, o.topic, 'more')], status.RESOURCE_EXHAUSTED);
        assert.match(
          e.refused[0] ?? '',
          /the gateway holds 4 consumer sessions, its limit \(MAX_SESSIONS=4\)/,
        );
      }
      assert.equal(await gauge(o.gw.metricsUrl, 'active_consumers'), 4);
    } finally {
      carol.close();
    }
    await aliceUnaffected(o);
    await closeOwner(o);
    o = undefined;
  });

  test('MAX_PRODUCER_HANDLES holds against several principals together; refused creates leave no handle', async () => {
    o = await withOwner({ maxProducerHandles: 3 });
    await createProducer(o.gw.bob, BOB, o.topic);
    const carol = rawClient(o.gw.gateway.grpcPort);
    try {
      await createProducer(carol, CAROL, o.topic);
      for (const [client, token] of [
        [carol, CAROL],
        [o.gw.bob, BOB],
      ] as const) {
        const e = await settle([createProducer(client, token, o.topic)], status.RESOURCE_EXHAUSTED);
        assert.match(
          e.refused[0] ?? '',
          /the gateway holds 3 producer handles, its limit \(MAX_PRODUCER_HANDLES=3\)/,
        );
      }
      assert.equal(await gauge(o.gw.metricsUrl, 'producer_handles'), 3);
    } finally {
      carol.close();
    }
    await aliceUnaffected(o);
    await closeOwner(o);
    o = undefined;
  });

  test('MAX_STREAMS holds against several principals together; a refused stream leaves the count unchanged', async () => {
    o = await withOwner({ maxStreams: 3 });
    const carol = rawClient(o.gw.gateway.grpcPort);
    const streams: Stream[] = [];
    try {
      const b1 = await createConsumer(o.gw.bob, BOB, o.topic, 'bob-s1');
      const b2 = await createConsumer(o.gw.bob, BOB, o.topic, 'bob-s2');
      const c1 = await createConsumer(carol, CAROL, o.topic, 'carol-s1');
      streams.push(receive(o.gw.bob, b1, md(BOB)), receive(carol, c1, md(CAROL)));
      await eventually(async () => (await gauge(o!.gw.metricsUrl, 'active_streams')) === 3, 'three streams');
      const refused = receive(o.gw.bob, b2, md(BOB));
      streams.push(refused);
      await eventually(() => refused.ended, 'the fourth stream to be refused');
      assert.equal(codeName(refused.error?.code ?? -1), 'RESOURCE_EXHAUSTED', refused.error?.details);
      assert.match(refused.error?.details ?? '', /the gateway holds 3 streams, its limit \(MAX_STREAMS=3\)/);
      assert.equal(await gauge(o.gw.metricsUrl, 'active_streams'), 3);
      assert.equal(streams[0]?.ended, false, "bob's first stream is untouched");
    } finally {
      for (const s of streams) s.end();
      carol.close();
    }
    await aliceUnaffected(o);
    await closeOwner(o);
    o = undefined;
  });

  test('MAX_PENDING_TRANSACTIONS holds against several principals together; alice’s pending transaction still commits', async () => {
    o = await withOwner({ maxPendingTransactions: 3 });
    const carol = rawClient(o.gw.gateway.grpcPort);
    try {
      const aliceTx = await call<{ transaction_id: string }>(
        o.gw.alice,
        'SendTransactionMessage',
        { producer_id: o.producer, message_body: 'alice-pending' },
        md(ALICE),
      );
      const bp = await createProducer(o.gw.bob, BOB, o.topic);
      const cp = await createProducer(carol, CAROL, o.topic);
      await call(o.gw.bob, 'SendTransactionMessage', { producer_id: bp, message_body: 'b' }, md(BOB));
      await call(carol, 'SendTransactionMessage', { producer_id: cp, message_body: 'c' }, md(CAROL));
      const e = await settle(
        [call(o.gw.bob, 'SendTransactionMessage', { producer_id: bp, message_body: 'b2' }, md(BOB))],
        status.RESOURCE_EXHAUSTED,
      );
      assert.match(
        e.refused[0] ?? '',
        /the gateway holds 3 pending transactions, its limit \(MAX_PENDING_TRANSACTIONS=3\)/,
      );
      assert.equal(await gauge(o.gw.metricsUrl, 'pending_transactions'), 3);
      await call(
        o.gw.alice,
        'EndTransaction',
        { transaction_id: aliceTx.transaction_id, commit: true },
        md(ALICE),
      );
      const m = await awaitMessage(o.stream, 'alice-pending');
      await call(
        o.gw.alice,
        'AckMessage',
        { consumer_id: o.consumer, receipt_handle: m.receipt_handle },
        md(ALICE),
      );
    } finally {
      carol.close();
    }
    await aliceUnaffected(o);
    await closeOwner(o);
    o = undefined;
  });

  test('MAX_CONNECTIONS: raw sockets beyond it are closed at once; the connected client keeps working; freed slots are usable again', async () => {
    o = await withOwner({ maxConnections: 5, headersTimeoutMs: 30_000 });
    // alice's client holds one connection (bob's has made no call yet).
    await eventually(async () => (await gauge(o!.gw.metricsUrl, 'connections')) === 1, 'one connection');
    const open = (): Promise<{ socket: Socket; closedAfterMs: Promise<number> }> =>
      new Promise((resolve, reject) => {
        const t0 = Date.now();
        const socket = tcpConnect(o!.gw.gateway.grpcPort, '127.0.0.1');
        socket.on('error', () => {});
        const closedAfterMs = new Promise<number>((r) => socket.once('close', () => r(Date.now() - t0)));
        socket.once('connect', () => resolve({ socket, closedAfterMs }));
        socket.once('error', reject);
      });
    const held = [];
    for (let i = 0; i < 4; i++) held.push(await open());
    await eventually(async () => (await gauge(o!.gw.metricsUrl, 'connections')) === 5, 'five connections');
    const quotaBefore = (await refusals(o.gw.metricsUrl)).quota;
    const extra = await Promise.all(Array.from({ length: 10 }, () => open()));
    const closeTimes = await Promise.all(extra.map((e) => e.closedAfterMs));
    for (const ms of closeTimes) assert.ok(ms < 1000, `a socket beyond the cap lived ${ms} ms`);
    assert.equal(await gauge(o.gw.metricsUrl, 'connections'), 5);
    await eventually(
      async () => (await refusals(o!.gw.metricsUrl)).quota - quotaBefore === 10,
      'ten connection refusals audited',
    );
    for (const h of held) assert.equal(h.socket.destroyed, false, 'a socket within the cap was closed');
    await aliceUnaffected(o);
    for (const h of held) h.socket.destroy();
    await eventually(
      async () => (await gauge(o!.gw.metricsUrl, 'connections')) === 1,
      'the held sockets gone',
    );
    await assertHealthy(o.gw.bob);
    console.log(`MAX_CONNECTIONS: sockets beyond the cap closed after ${closeTimes.join(', ')} ms`);
    await closeOwner(o);
    o = undefined;
  });

  test('after every attempt, closing the gateways returns every handle to the baseline', async () => {
    await closeOwner(o);
    o = undefined;
    await assertResourcesSettle(baseline);
  });
});
