/**
 * An ack is recorded only after the broker confirms it: when the broker's ack fails, AckMessage
 * fails, the delivery stays pending (not remembered as acked), and a retry acks it for real.
 *
 * A broker whose ack fails cannot be produced on memory:// by any client action, and the gateway
 * cannot be given a Broker instance (GatewayConfig.brokers takes URLs, openBroker's scheme table
 * is private to src/brokers/index.ts and BrokerRouter.open only calls openBroker). The closest
 * seam without editing src/: the embedded broker's delivery class is shared by every memory
 * broker in the process (one ES module), so the test reaches its prototype through a delivery of
 * a broker of its own and makes `ack()` fail a chosen number of times.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Delivery } from '../../src/brokers/broker.js';
import { openMemoryBroker } from '../../src/brokers/memory/index.js';
import { MqError } from '../../src/core/errors.js';
import { call, receive } from '../support/gateway.js';
import { assertResourcesSettle, countResources, eventually, type ResourceCounts } from '../support/leaks.js';
import {
  ALICE,
  assertRoundTrip,
  awaitMessage,
  BOB,
  createConsumer,
  createProducer,
  expectCode,
  gauge,
  md,
  type Stream,
  startTenantGateway,
  type TenantGateway,
} from './helpers.js';

const ACK_TIMEOUT_MS = 1000;

/** Makes the next `n` broker acks of every memory-broker delivery fail; returns the restore. */
async function failingAcks(): Promise<{ failNext(n: number): void; restore(): void; failed(): number }> {
  const broker = await openMemoryBroker(new URL('memory://'));
  const producer = await broker.producer('probe');
  const sub = await broker.subscribe({ topic: 'probe', group: 'probe' });
  await producer.send({ body: 'probe' });
  const it = sub[Symbol.asyncIterator]();
  const d = (await it.next()).value as Delivery;
  const proto = Object.getPrototypeOf(d) as { ack: (this: Delivery) => Promise<void> };
  await d.ack();
  await sub.close();
  await producer.close();
  await broker.close();
  const original = proto.ack;
  let remaining = 0;
  let failed = 0;
  proto.ack = function (this: Delivery): Promise<void> {
    if (remaining > 0) {
      remaining--;
      failed++;
      return Promise.reject(new MqError('UNAVAILABLE', 'injected: the broker did not confirm the ack'));
    }
    return original.call(this);
  };
  return {
    failNext(n) {
      remaining = n;
    },
    restore() {
      proto.ack = original;
    },
    failed: () => failed,
  };
}

describe('an ack the broker did not confirm is not remembered as done', () => {
  let gw: TenantGateway;
  let baseline: ResourceCounts;
  let faults: Awaited<ReturnType<typeof failingAcks>>;
  const topic = `ack-${randomUUID()}`;
  let producer = '';
  let consumer = '';
  let stream: Stream;
  let aliceProducer = '';
  let aliceConsumer = '';
  let aliceStream: Stream;

  const send = async (body: string) => {
    await call(gw.bob, 'SendMessage', { producer_id: producer, message_body: body }, md(BOB));
    return awaitMessage(stream, body);
  };
  const aliceUnaffected = (): Promise<void> =>
    assertRoundTrip(gw.alice, ALICE, {
      producer: aliceProducer,
      consumer: aliceConsumer,
      stream: aliceStream,
    });

  before(async () => {
    baseline = countResources();
    faults = await failingAcks();
    gw = await startTenantGateway({ ackTimeoutMs: ACK_TIMEOUT_MS });
    producer = await createProducer(gw.bob, BOB, topic);
    consumer = await createConsumer(gw.bob, BOB, topic, `ack-${randomUUID()}`);
    stream = receive(gw.bob, consumer, md(BOB));
    const aliceTopic = `ack-alice-${randomUUID()}`;
    aliceProducer = await createProducer(gw.alice, ALICE, aliceTopic);
    aliceConsumer = await createConsumer(gw.alice, ALICE, aliceTopic, `ack-a-${randomUUID()}`);
    aliceStream = receive(gw.alice, aliceConsumer, md(ALICE));
  });
  after(async () => {
    faults?.restore();
    stream?.end();
    aliceStream?.end();
    await gw?.close();
  });

  test('AckMessage fails when the broker ack fails, the delivery stays pending, and a retry acks it for real (no redelivery after ACK_TIMEOUT)', async () => {
    const m = await send(`m-${randomUUID()}`);
    const acked0 = await gauge(gw.metricsUrl, 'messages_acked');
    faults.failNext(1);
    await expectCode(
      call(gw.bob, 'AckMessage', { consumer_id: consumer, receipt_handle: m.receipt_handle }, md(BOB)),
      14, // UNAVAILABLE
      /injected: the broker did not confirm the ack/,
    );
    assert.equal(faults.failed(), 1, 'the broker was asked');
    assert.equal(await gauge(gw.metricsUrl, 'messages_acked'), acked0, 'a failed ack was counted');
    assert.equal(await gauge(gw.metricsUrl, 'inflight_deliveries'), 1, 'the delivery is no longer pending');
    // The retry must reach the broker, not be answered from memory.
    const r = await call<{ success: boolean }>(
      gw.bob,
      'AckMessage',
      { consumer_id: consumer, receipt_handle: m.receipt_handle },
      md(BOB),
    );
    assert.equal(r.success, true);
    assert.equal(await gauge(gw.metricsUrl, 'messages_acked'), acked0 + 1);
    assert.equal(await gauge(gw.metricsUrl, 'inflight_deliveries'), 0);
    // Acked at the broker: nothing comes back after the ack timeout.
    await sleep(ACK_TIMEOUT_MS * 2 + 500);
    assert.equal(stream.messages.filter((x) => x.message_body === m.message_body).length, 1, 'redelivered');
    assert.equal(await gauge(gw.metricsUrl, 'messages_redelivered'), 0);
    // A repeated ack of a confirmed one is fine.
    await call(gw.bob, 'AckMessage', { consumer_id: consumer, receipt_handle: m.receipt_handle }, md(BOB));
    await aliceUnaffected();
  });

  test('AckMessages reports the handle whose broker ack failed, keeps it pending, and acks it on retry', async () => {
    const a = await send(`a-${randomUUID()}`);
    const b = await send(`b-${randomUUID()}`);
    const acked0 = await gauge(gw.metricsUrl, 'messages_acked');
    faults.failNext(1);
    const first = await call<{ success: boolean; results: Array<{ success: boolean; message: string }> }>(
      gw.bob,
      'AckMessages',
      { consumer_id: consumer, receipt_handles: [a.receipt_handle, b.receipt_handle] },
      md(BOB),
    );
    assert.equal(first.success, false);
    assert.deepEqual(
      first.results.map((x) => x.success),
      [false, true],
    );
    assert.match(first.results[0]?.message ?? '', /^UNAVAILABLE: injected/);
    assert.equal(await gauge(gw.metricsUrl, 'messages_acked'), acked0 + 1);
    assert.equal(await gauge(gw.metricsUrl, 'inflight_deliveries'), 1);
    const retry = await call<{ success: boolean }>(
      gw.bob,
      'AckMessages',
      { consumer_id: consumer, receipt_handles: [a.receipt_handle, b.receipt_handle] },
      md(BOB),
    );
    assert.equal(retry.success, true);
    assert.equal(await gauge(gw.metricsUrl, 'messages_acked'), acked0 + 2);
    await sleep(ACK_TIMEOUT_MS * 2 + 500);
    assert.equal(stream.messages.filter((x) => x.message_body === a.message_body).length, 1, 'redelivered');
    await aliceUnaffected();
  });

  test('a delivery whose failed ack is never retried is released at ACK_TIMEOUT and redelivered, not lost', async () => {
    const m = await send(`lost-${randomUUID()}`);
    faults.failNext(1);
    await expectCode(
      call(gw.bob, 'AckMessage', { consumer_id: consumer, receipt_handle: m.receipt_handle }, md(BOB)),
      14,
    );
    const copies = () => stream.messages.filter((x) => x.message_body === m.message_body);
    await eventually(
      () => copies().length >= 2,
      'the unconfirmed delivery to be redelivered',
      ACK_TIMEOUT_MS * 5,
    );
    const last = copies().at(-1);
    assert.ok(last);
    assert.notEqual(last.receipt_handle, m.receipt_handle, 'a redelivery gets a new receipt handle');
    assert.ok(last.reconsume_times >= 1);
    await call(gw.bob, 'AckMessage', { consumer_id: consumer, receipt_handle: last.receipt_handle }, md(BOB));
    await aliceUnaffected();
  });

  test('closing the gateway returns every handle to the baseline', async () => {
    faults.restore();
    stream.end();
    aliceStream.end();
    await gw.close();
    await assertResourcesSettle(baseline);
  });
});
