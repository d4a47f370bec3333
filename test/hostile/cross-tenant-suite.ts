/**
 * Cross-tenant attempts on every RPC that takes an id, run against any broker: alice owns a
 * producer, a consumer with an open stream, deliveries and a transaction; bob (another valid
 * token) uses her ids. Every attempt must get exactly the NOT_FOUND a random missing id gets,
 * be audited as an ownership refusal, and leave alice's producer, stream and transaction working.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { BrokerEntry } from '../../src/gateway/config.js';
import { call, type Received, receive } from '../support/gateway.js';
import { assertResourcesSettle, countResources, eventually, type ResourceCounts } from '../support/leaks.js';
import {
  ALICE,
  assertHealthy,
  assertSameAsMissing,
  awaitMessage,
  BOB,
  createConsumer,
  createProducer,
  gauge,
  grpcError,
  md,
  refusals,
  type Stream,
  startTenantGateway,
  type TenantGateway,
} from './helpers.js';

export interface CrossTenantOptions {
  brokers?: BrokerEntry[];
  /** Scales waits for brokers that take seconds to assign partitions (Kafka). */
  scale?: number;
}

export function crossTenantSuite(o: CrossTenantOptions = {}): void {
  const scale = o.scale ?? 1;
  let gw: TenantGateway;
  let baseline: ResourceCounts;
  const topic = `ct-${randomUUID()}`;
  const group = `ct-g-${randomUUID()}`;
  const bobTopic = `ct-bob-${randomUUID()}`;
  let producer = '';
  let consumer = '';
  let stream: Stream;
  let bobConsumer = '';

  /** Alice sends a message through her producer and her stream receives it (left unacked). */
  const aliceDelivers = async (): Promise<Received> => {
    const body = `alice-${randomUUID()}`;
    const sent = await call<{ success: boolean }>(
      gw.alice,
      'SendMessage',
      { producer_id: producer, message_body: body },
      md(ALICE),
    );
    assert.equal(sent.success, true);
    return awaitMessage(stream, body, 30_000 * scale);
  };
  const aliceAcks = async (m: Received): Promise<void> => {
    const r = await call<{ success: boolean }>(
      gw.alice,
      'AckMessage',
      { consumer_id: consumer, receipt_handle: m.receipt_handle },
      md(ALICE),
    );
    assert.equal(r.success, true);
  };
  /** Alice is unaffected: her producer sends, her stream receives, her ack is taken. */
  const aliceUnaffected = async (): Promise<void> => {
    assert.equal(stream.ended, false, `alice's stream ended: ${stream.error?.details ?? 'OK'}`);
    await aliceAcks(await aliceDelivers());
    await assertHealthy(gw.bob, BOB);
    await assertHealthy(gw.bob);
  };
  /** Runs `fn` and returns how many ownership refusals it caused. */
  const ownershipDelta = async (fn: () => Promise<void>): Promise<number> => {
    const before = (await refusals(gw.metricsUrl)).ownership;
    await fn();
    return (await refusals(gw.metricsUrl)).ownership - before;
  };
  const bobFails = (method: string, request: object) => grpcError(call(gw.bob, method, request, md(BOB)));

  before(async () => {
    baseline = countResources();
    gw = await startTenantGateway({
      ackTimeoutMs: 60_000,
      consumerCleanupTimeoutMs: 120_000,
      ...(o.brokers ? { brokers: o.brokers } : {}),
    });
    producer = await createProducer(gw.alice, ALICE, topic);
    consumer = await createConsumer(gw.alice, ALICE, topic, group);
    stream = receive(gw.alice, consumer, md(ALICE));
    // A new group starts at 'latest': publish until alice's consumer sees one, then ack them all.
    const deadline = Date.now() + 60_000 * scale;
    while (!stream.messages.some((m) => m.message_body.startsWith('warmup'))) {
      assert.ok(Date.now() < deadline, "alice's consumer never received a warm-up message");
      await call(
        gw.alice,
        'SendMessage',
        { producer_id: producer, message_body: `warmup-${randomUUID()}` },
        md(ALICE),
      );
      await sleep(scale > 1 ? 500 : 20);
    }
    for (const m of stream.messages.splice(0)) await aliceAcks(m);
    bobConsumer = await createConsumer(gw.bob, BOB, bobTopic, `bob-${randomUUID()}`);
  });
  after(async () => {
    stream?.end();
    await gw?.close();
  });

  const sendCases: Array<[string, (producerId: string) => object]> = [
    ['SendMessage', (id) => ({ producer_id: id, message_body: 'bob was here' })],
    ['SendOrderedMessage', (id) => ({ producer_id: id, message_body: 'bob', sharding_key: 'k' })],
    ['SendDelayMessage', (id) => ({ producer_id: id, message_body: 'bob', delay_time_level: '1' })],
    ['SendTransactionMessage', (id) => ({ producer_id: id, message_body: 'bob' })],
    [
      'SendMessages',
      (id) => ({ producer_id: id, messages: [{ message_body: 'bob' }, { message_body: 'bob2' }] }),
    ],
  ];
  for (const [method, request] of sendCases) {
    test(`${method} through alice's producer_id is NOT_FOUND exactly like a missing id; nothing is published; her producer still sends`, async () => {
      const sentBefore = await gauge(gw.metricsUrl, 'messages_sent');
      let foreign!: Awaited<ReturnType<typeof grpcError>>;
      const delta = await ownershipDelta(async () => {
        foreign = await bobFails(method, request(producer));
      });
      const missingId = randomUUID();
      const missing = await bobFails(method, request(missingId));
      assertSameAsMissing(foreign, producer, missing, missingId);
      assert.equal(delta, 1, 'the attempt is audited as one ownership refusal');
      assert.equal(await gauge(gw.metricsUrl, 'messages_sent'), sentBefore, 'nothing was published');
      await aliceUnaffected();
      assert.ok(
        !stream.messages.some((m) => m.message_body.startsWith('bob')),
        "bob's body never reached alice",
      );
    });
  }

  test("AckMessage with alice's consumer_id, or with bob's own consumer and her receipt handle, is NOT_FOUND like a missing one and acks nothing", async () => {
    const m = await aliceDelivers();
    const ackedBefore = await gauge(gw.metricsUrl, 'messages_acked');
    const inflightBefore = await gauge(gw.metricsUrl, 'inflight_deliveries');
    let foreign!: Awaited<ReturnType<typeof grpcError>>;
    const delta = await ownershipDelta(async () => {
      foreign = await bobFails('AckMessage', { consumer_id: consumer, receipt_handle: m.receipt_handle });
    });
    const missingId = randomUUID();
    const missing = await bobFails('AckMessage', {
      consumer_id: missingId,
      receipt_handle: m.receipt_handle,
    });
    assertSameAsMissing(foreign, consumer, missing, missingId);
    assert.equal(delta, 1);
    // Bob's own consumer with her handle: the same answer as a random handle on his consumer.
    const viaOwn = await bobFails('AckMessage', {
      consumer_id: bobConsumer,
      receipt_handle: m.receipt_handle,
    });
    const randomHandle = randomUUID();
    const ownMissing = await bobFails('AckMessage', {
      consumer_id: bobConsumer,
      receipt_handle: randomHandle,
    });
    assertSameAsMissing(viaOwn, m.receipt_handle, ownMissing, randomHandle);
    assert.equal(await gauge(gw.metricsUrl, 'messages_acked'), ackedBefore, 'bob acked nothing');
    assert.equal(
      await gauge(gw.metricsUrl, 'inflight_deliveries'),
      inflightBefore,
      'her delivery is still hers',
    );
    await aliceAcks(m);
    assert.equal(
      await gauge(gw.metricsUrl, 'messages_acked'),
      ackedBefore + 1,
      "alice's own ack is the one taken",
    );
    await aliceUnaffected();
  });

  test("NackMessage with alice's consumer_id and receipt handle is NOT_FOUND like a missing one; her delivery is not released", async () => {
    const m = await aliceDelivers();
    const nackedBefore = await gauge(gw.metricsUrl, 'messages_nacked');
    let foreign!: Awaited<ReturnType<typeof grpcError>>;
    const delta = await ownershipDelta(async () => {
      foreign = await bobFails('NackMessage', { consumer_id: consumer, receipt_handle: m.receipt_handle });
    });
    const missingId = randomUUID();
    const missing = await bobFails('NackMessage', {
      consumer_id: missingId,
      receipt_handle: m.receipt_handle,
    });
    assertSameAsMissing(foreign, consumer, missing, missingId);
    assert.equal(delta, 1);
    assert.equal(await gauge(gw.metricsUrl, 'messages_nacked'), nackedBefore, 'bob released nothing');
    await sleep(200 * scale);
    assert.equal(
      stream.messages.filter((x) => x.message_body === m.message_body).length,
      1,
      'the message was not redelivered',
    );
    await aliceAcks(m);
    await aliceUnaffected();
  });

  test("AckMessages with alice's consumer_id and her receipt handles is NOT_FOUND like a missing one and acks nothing", async () => {
    const a = await aliceDelivers();
    const b = await aliceDelivers();
    const ackedBefore = await gauge(gw.metricsUrl, 'messages_acked');
    const handles = [a.receipt_handle, b.receipt_handle];
    let foreign!: Awaited<ReturnType<typeof grpcError>>;
    const delta = await ownershipDelta(async () => {
      foreign = await bobFails('AckMessages', { consumer_id: consumer, receipt_handles: handles });
    });
    const missingId = randomUUID();
    const missing = await bobFails('AckMessages', { consumer_id: missingId, receipt_handles: handles });
    assertSameAsMissing(foreign, consumer, missing, missingId);
    assert.equal(delta, 1);
    assert.equal(await gauge(gw.metricsUrl, 'messages_acked'), ackedBefore);
    const r = await call<{ success: boolean }>(
      gw.alice,
      'AckMessages',
      { consumer_id: consumer, receipt_handles: handles },
      md(ALICE),
    );
    assert.equal(r.success, true);
    assert.equal(await gauge(gw.metricsUrl, 'messages_acked'), ackedBefore + 2);
    await aliceUnaffected();
  });

  test("ReceiveMessages on alice's consumer_id while her stream is down is NOT_FOUND like a missing id: no takeover", async () => {
    const streams = await gauge(gw.metricsUrl, 'active_streams');
    stream.end();
    await eventually(
      async () => (await gauge(gw.metricsUrl, 'active_streams')) === streams - 1,
      "the gateway to see alice's stream end",
    );
    let foreign: Stream | undefined;
    const delta = await ownershipDelta(async () => {
      foreign = receive(gw.bob, consumer, md(BOB));
      await eventually(() => foreign?.ended === true, "bob's stream to be refused");
    });
    const missingId = randomUUID();
    const missing = receive(gw.bob, missingId, md(BOB));
    await eventually(() => missing.ended, 'the missing-id stream to be refused');
    assert.ok(foreign?.error && missing.error, 'both streams end with an error');
    assertSameAsMissing(foreign.error, consumer, missing.error, missingId);
    assert.equal(foreign.messages.length, 0, 'bob received nothing');
    assert.equal(delta, 1);
    // Alice comes back to her own session.
    stream = receive(gw.alice, consumer, md(ALICE));
    await aliceUnaffected();
  });

  test("ReceiveMessages on alice's consumer_id while her stream is up is NOT_FOUND like a missing id; her stream is not ended", async () => {
    let foreign: Stream | undefined;
    const delta = await ownershipDelta(async () => {
      foreign = receive(gw.bob, consumer, md(BOB));
      await eventually(() => foreign?.ended === true, "bob's stream to be refused");
    });
    const missingId = randomUUID();
    const missing = receive(gw.bob, missingId, md(BOB));
    await eventually(() => missing.ended, 'the missing-id stream to be refused');
    assert.ok(foreign?.error && missing.error);
    assertSameAsMissing(foreign.error, consumer, missing.error, missingId);
    assert.equal(delta, 1);
    await aliceUnaffected();
  });

  test("CleanupProducer by alice's producer_id (or her topic) cleans 0, like a missing id; her producer still sends", async () => {
    const handles = await gauge(gw.metricsUrl, 'producer_handles');
    let byId = -1;
    const delta = await ownershipDelta(async () => {
      byId = (
        await call<{ cleaned_count: number }>(gw.bob, 'CleanupProducer', { producer_id: producer }, md(BOB))
      ).cleaned_count;
    });
    const missing = await call<{ cleaned_count: number }>(
      gw.bob,
      'CleanupProducer',
      { producer_id: randomUUID() },
      md(BOB),
    );
    assert.equal(byId, 0);
    assert.equal(missing.cleaned_count, 0);
    assert.equal(delta, 1);
    const byTopic = await call<{ cleaned_count: number }>(
      gw.bob,
      'CleanupProducer',
      { topic, endpoint: 'e' },
      md(BOB),
    );
    assert.equal(byTopic.cleaned_count, 0);
    assert.equal(await gauge(gw.metricsUrl, 'producer_handles'), handles);
    await aliceUnaffected();
  });

  test("CleanupConsumer by alice's consumer_id (or her group) cleans 0, like a missing id; her stream is NOT ended", async () => {
    const sessions = await gauge(gw.metricsUrl, 'active_consumers');
    const streams = await gauge(gw.metricsUrl, 'active_streams');
    let byId = -1;
    const delta = await ownershipDelta(async () => {
      byId = (
        await call<{ cleaned_count: number }>(gw.bob, 'CleanupConsumer', { consumer_id: consumer }, md(BOB))
      ).cleaned_count;
    });
    const missing = await call<{ cleaned_count: number }>(
      gw.bob,
      'CleanupConsumer',
      { consumer_id: randomUUID() },
      md(BOB),
    );
    assert.equal(byId, 0);
    assert.equal(missing.cleaned_count, 0);
    assert.equal(delta, 1);
    const byGroup = await call<{ cleaned_count: number }>(
      gw.bob,
      'CleanupConsumer',
      { group_id: group, topic },
      md(BOB),
    );
    assert.equal(byGroup.cleaned_count, 0);
    await sleep(100);
    assert.equal(stream.ended, false, 'her stream was ended');
    assert.equal(await gauge(gw.metricsUrl, 'active_consumers'), sessions);
    assert.equal(await gauge(gw.metricsUrl, 'active_streams'), streams);
    await aliceUnaffected();
  });

  test("EndTransaction on alice's transaction_id (rollback or commit) is NOT_FOUND like a missing id; her transaction still commits", async () => {
    const body = `tx-${randomUUID()}`;
    const tx = await call<{ transaction_id: string }>(
      gw.alice,
      'SendTransactionMessage',
      { producer_id: producer, message_body: body, trans_check_immunity_time: 600 },
      md(ALICE),
    );
    let rollback!: Awaited<ReturnType<typeof grpcError>>;
    let commit!: Awaited<ReturnType<typeof grpcError>>;
    const delta = await ownershipDelta(async () => {
      rollback = await bobFails('EndTransaction', { transaction_id: tx.transaction_id, commit: false });
      commit = await bobFails('EndTransaction', { transaction_id: tx.transaction_id, commit: true });
    });
    const missingId = randomUUID();
    const missing = await bobFails('EndTransaction', { transaction_id: missingId, commit: false });
    assertSameAsMissing(rollback, tx.transaction_id, missing, missingId);
    assertSameAsMissing(commit, tx.transaction_id, missing, missingId);
    assert.equal(delta, 2);
    assert.equal(await gauge(gw.metricsUrl, 'pending_transactions'), 1, 'her transaction is still pending');
    assert.ok(!stream.messages.some((m) => m.message_body === body), 'bob did not commit it');
    await call(gw.alice, 'EndTransaction', { transaction_id: tx.transaction_id, commit: true }, md(ALICE));
    await aliceAcks(await awaitMessage(stream, body, 30_000 * scale));
    await aliceUnaffected();
  });

  test('after every attempt the gateway is healthy, and closing it returns every handle to the baseline', async () => {
    await aliceUnaffected();
    const r = await refusals(gw.metricsUrl);
    assert.ok(r.ownership >= 14, `ownership refusals: ${r.ownership}`);
    assert.equal(r.auth, 0);
    stream.end();
    await gw.close();
    await assertResourcesSettle(baseline, { timeoutMs: 15_000 * scale });
  });
}
