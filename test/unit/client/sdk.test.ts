import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import {
  type Consumer,
  MessageProperties,
  MQClient,
  MqError,
  type ReceivedMessage,
} from '../../../src/client/index.js';
import type { Gateway } from '../../../src/gateway/server.js';
import { eventually } from '../../support/leaks.js';
import { freePort, metric, startTestGateway, uniq, within } from './helpers.js';

let gateway: Gateway;
let client: MQClient;

before(async () => {
  gateway = await startTestGateway();
  client = new MQClient({
    grpcEndpoint: `127.0.0.1:${gateway.grpcPort}`,
    accessKeyId: 'ak',
    accessKeySecret: 'sk',
  });
});

after(async () => {
  await client.close();
  await gateway.close();
});

/** Reads the next `n` messages from an iterating consumer, failing after `ms`. */
async function take(it: AsyncIterator<ReceivedMessage>, n: number, ms = 10_000): Promise<ReceivedMessage[]> {
  const out: ReceivedMessage[] = [];
  const deadline = Date.now() + ms;
  while (out.length < n) {
    const r = await within(
      it.next(),
      Math.max(1, deadline - Date.now()),
      `message ${out.length + 1} of ${n}`,
    );
    if (r.done) throw new Error(`consumer ended after ${out.length} of ${n} messages`);
    out.push(r.value);
  }
  return out;
}

async function pair(tag = '*', options = {}): Promise<{ topic: string; consumer: Consumer }> {
  const topic = uniq('t');
  const consumer = await client.getConsumer('', topic, uniq('g'), tag, options);
  return { topic, consumer };
}

describe('MQClient', () => {
  test('healthCheck reports a healthy gateway', async () => {
    assert.deepEqual(await client.healthCheck(), { healthy: true, message: 'OK' });
  });

  test('healthCheck against nothing fails fast with UNAVAILABLE', async () => {
    const port = await freePort();
    const c = new MQClient({ grpcEndpoint: `127.0.0.1:${port}` });
    try {
      await assert.rejects(c.healthCheck({ timeoutMs: 5000 }), (err: unknown) => {
        assert.ok(err instanceof MqError);
        assert.equal(err.code, 'UNAVAILABLE');
        assert.equal(err.retryable, true);
        assert.match(err.message, /cannot reach the mqgate gateway/);
        return true;
      });
    } finally {
      await c.close();
    }
  });

  test('refuses a malformed grpcEndpoint', () => {
    assert.throws(() => new MQClient({ grpcEndpoint: 'localhost' }), { code: 'INVALID_ARGUMENT' });
  });

  test('gateway errors arrive as MqError with the code from the status details', async () => {
    await assert.rejects(client.getProducer('', 'bad topic!'), (err: unknown) => {
      assert.ok(err instanceof MqError);
      assert.equal(err.code, 'INVALID_ARGUMENT');
      assert.equal(err.retryable, false);
      assert.match(err.message, /^CreateProducer failed: topic "bad topic!"/);
      return true;
    });
  });

  test('a closed client refuses new work with CLOSED', async () => {
    const c = new MQClient({ grpcEndpoint: `127.0.0.1:${gateway.grpcPort}` });
    await c.close();
    await c.close();
    await assert.rejects(c.getProducer('', uniq('t')), { code: 'CLOSED' });
    await assert.rejects(c.healthCheck(), { code: 'CLOSED' });
  });
});

describe('Producer and message fields', () => {
  test('text, binary and JSON bodies round trip with tag, topic, properties and timestamps', async () => {
    const { topic, consumer } = await pair();
    const producer = await client.getProducer('inst', topic);
    const binary = Buffer.from([...Array(256).keys()]);
    const invalidUtf8 = Buffer.from([0xc3, 0x28, 0xff, 0x00, 0xfe]);
    const t0 = Date.now();
    const props = new MessageProperties()
      .putProperty('source', 'test')
      .putProperty('n', 7)
      .messageKey('order-1');
    const sent = [
      await producer.publishMessage('héllo wörld', 'TagA', props),
      await producer.publishMessage(binary),
      await producer.publishMessage(new Uint8Array(invalidUtf8)),
      await producer.publishMessage({ order: 1, items: ['a', 'b'] }, 'TagB'),
    ];
    for (const s of sent) assert.match(s.messageId, /\S/);
    const it = consumer[Symbol.asyncIterator]();
    const got = await take(it, 4);
    for (const m of got) await m.ack();
    const byId = new Map(got.map((m) => [m.messageId, m]));
    const text = byId.get(sent[0]?.messageId ?? '');
    assert.ok(text);
    assert.equal(text.body, 'héllo wörld');
    assert.equal(text.tag, 'TagA');
    assert.equal(text.topic, topic);
    assert.equal(text.properties.source, 'test');
    assert.equal(text.properties.n, '7');
    assert.equal(text.messageKey, 'order-1');
    assert.equal(typeof text.bornTimestamp, 'number');
    assert.ok(text.bornTimestamp >= t0 - 1000 && text.bornTimestamp <= Date.now() + 1000);
    assert.equal(text.reconsumeTimes, 0);
    assert.ok(text.receiptHandle.length > 0);
    assert.deepEqual(byId.get(sent[1]?.messageId ?? '')?.bodyBytes, binary);
    assert.deepEqual(byId.get(sent[2]?.messageId ?? '')?.bodyBytes, invalidUtf8);
    const json = byId.get(sent[3]?.messageId ?? '');
    assert.deepEqual(json?.json(), { order: 1, items: ['a', 'b'] });
    assert.equal(json?.body, '{"order":1,"items":["a","b"]}');
    await producer.close();
    await consumer.close();
  });

  test('a plain wire properties object is accepted too', async () => {
    const { topic, consumer } = await pair();
    const producer = await client.getProducer('', topic);
    await producer.publishMessage('x', undefined, { properties: { a: '1' }, message_key: 'k' });
    const [m] = await take(consumer[Symbol.asyncIterator](), 1);
    assert.equal(m?.properties.a, '1');
    assert.equal(m?.messageKey, 'k');
    await consumer.close();
  });

  test('a body that is not JSON-serialisable is refused before sending', async () => {
    const producer = await client.getProducer('', uniq('t'));
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    await assert.rejects(producer.publishMessage(cyclic), { code: 'INVALID_ARGUMENT' });
    await producer.close();
  });

  test('ordered messages keep their order per sharding key', async () => {
    const { topic, consumer } = await pair();
    const producer = await client.getProducer('', topic);
    for (let i = 0; i < 10; i++) {
      await producer.publishOrderedMessage(`a-${i}`, 'o', undefined, 'key-a');
      await producer.publishOrderedMessage(`b-${i}`, 'o', new MessageProperties(), 'key-b');
    }
    // With a sharding key, the next message of a key comes only after the previous one is acked.
    const it = consumer[Symbol.asyncIterator]();
    const got: ReceivedMessage[] = [];
    for (let i = 0; i < 20; i++) {
      const [m] = await take(it, 1);
      assert.ok(m);
      got.push(m);
      await m.ack();
    }
    const seq = (k: string): string[] => got.filter((m) => m.body.startsWith(k)).map((m) => m.body);
    assert.deepEqual(
      seq('a-'),
      [...Array(10).keys()].map((i) => `a-${i}`),
    );
    assert.deepEqual(
      seq('b-'),
      [...Array(10).keys()].map((i) => `b-${i}`),
    );
    assert.equal(got.find((m) => m.body === 'a-0')?.shardingKey, 'key-a');
    await assert.rejects(producer.publishOrderedMessage('x', undefined, undefined, ''), {
      code: 'INVALID_ARGUMENT',
    });
    await consumer.close();
  });

  test('delayed messages arrive no earlier than asked, for each way of asking', async () => {
    const { topic, consumer } = await pair();
    const producer = await client.getProducer('', topic);
    const t0 = Date.now();
    await producer.publishDelayMessage('by-ms', undefined, undefined, { delayMs: 1200 });
    await producer.publishDelayMessage('by-level', undefined, undefined, { delayTimeLevel: 1 });
    await producer.publishDelayMessage('by-time', undefined, undefined, { startDeliverTime: t0 + 1000 });
    await producer.publishMessage('now');
    const it = consumer[Symbol.asyncIterator]();
    const arrived = new Map<string, number>();
    for (let i = 0; i < 4; i++) {
      const [m] = await take(it, 1, 15_000);
      assert.ok(m);
      arrived.set(m.body, Date.now() - t0);
      await m.ack();
    }
    assert.deepEqual([...arrived.keys()].sort(), ['by-level', 'by-ms', 'by-time', 'now']);
    assert.ok((arrived.get('now') ?? 0) < 1000, 'the undelayed message was held back');
    // Timers may fire a millisecond or two early; anything more would be a real early delivery.
    assert.ok((arrived.get('by-ms') ?? 0) >= 1190, `by-ms after ${arrived.get('by-ms')} ms`);
    assert.ok((arrived.get('by-level') ?? 0) >= 990, `by-level after ${arrived.get('by-level')} ms`);
    assert.ok((arrived.get('by-time') ?? 0) >= 990, `by-time after ${arrived.get('by-time')} ms`);
    await assert.rejects(producer.publishDelayMessage('x', undefined, undefined, { delayTimeLevel: 0 }), {
      code: 'INVALID_ARGUMENT',
    });
    await assert.rejects(producer.publishDelayMessage('x', undefined, undefined, { delayTimeLevel: 19 }), {
      code: 'INVALID_ARGUMENT',
    });
    await consumer.close();
  });

  test('transactions: a committed message is delivered, a rolled back one never', async () => {
    const { topic, consumer } = await pair();
    const producer = await client.getProducer('', topic);
    const rolledBack = await producer.publishTransactionMessage('rolled-back', 'tx');
    const committed = await producer.publishTransactionMessage('committed', 'tx', undefined, {
      transCheckImmunityTime: 60,
    });
    assert.notEqual(committed.transactionId, '');
    assert.notEqual(committed.transactionId, rolledBack.transactionId);
    await rolledBack.rollback();
    await committed.commit();
    // Ending twice the same way is harmless; the other way is refused.
    await committed.commit();
    await assert.rejects(committed.rollback(), { code: 'FAILED_PRECONDITION' });
    await producer.publishMessage('sentinel');
    const it = consumer[Symbol.asyncIterator]();
    const got = await take(it, 2);
    for (const m of got) await m.ack();
    assert.deepEqual(got.map((m) => m.body).sort(), ['committed', 'sentinel']);
    assert.equal(got.find((m) => m.body === 'committed')?.messageId, committed.messageId);
    await consumer.close();
  });

  test('an expired producer handle is re-created transparently', async () => {
    const gw = await startTestGateway({ producerHandleTtlMs: 100 });
    const c = new MQClient({ grpcEndpoint: `127.0.0.1:${gw.grpcPort}` });
    try {
      const topic = uniq('t');
      const consumer = await c.getConsumer('', topic, uniq('g'));
      const producer = await c.getProducer('', topic);
      const firstId = producer.producerId;
      await eventually(async () => {
        await gw.sweep();
        return metric(gw, 'producer_handles') === 0;
      }, 'the gateway to drop the idle handle');
      const res = await producer.publishMessage('after-expiry');
      assert.notEqual(producer.producerId, firstId);
      const [m] = await take(consumer[Symbol.asyncIterator](), 1);
      assert.equal(m?.messageId, res.messageId);
      assert.equal(m?.body, 'after-expiry');
    } finally {
      await c.close();
      await gw.close();
    }
  });

  test('an aborted signal stops a send and a backoff wait', async () => {
    const producer = await client.getProducer('', uniq('t'));
    const ac = new AbortController();
    ac.abort();
    await assert.rejects(producer.publishMessage('x', undefined, undefined, { signal: ac.signal }), {
      code: 'ABORTED',
    });
    await producer.close();
    await assert.rejects(producer.publishMessage('x'), { code: 'CLOSED' });

    // Against an address where nothing listens, sends would retry for a long time; abort ends it.
    const port = await freePort();
    const c = new MQClient({ grpcEndpoint: `127.0.0.1:${port}`, retry: { maxAttempts: 1000 } });
    const ac2 = new AbortController();
    const t0 = Date.now();
    const pending = c.getProducer('', uniq('t'), { signal: ac2.signal });
    setTimeout(() => ac2.abort(), 300).unref();
    await assert.rejects(pending, { code: 'ABORTED' });
    assert.ok(Date.now() - t0 < 5000);
    await c.close();
  });

  test('sends give up after retry.maxAttempts when the gateway stays away', async () => {
    const port = await freePort();
    const c = new MQClient({
      grpcEndpoint: `127.0.0.1:${port}`,
      retry: { maxAttempts: 3, initialDelayMs: 10, maxDelayMs: 20 },
    });
    try {
      await assert.rejects(c.getProducer('', uniq('t')), { code: 'UNAVAILABLE' });
    } finally {
      await c.close();
    }
  });
});

describe('Consumer', () => {
  test('ackMessage acks by receipt handle; an unknown receipt is NOT_FOUND', async () => {
    const { topic, consumer } = await pair();
    const producer = await client.getProducer('', topic);
    await producer.publishMessage('one');
    const [m] = await take(consumer[Symbol.asyncIterator](), 1);
    assert.ok(m);
    const acked = metric(gateway, 'messages_acked');
    await consumer.ackMessage(m.receiptHandle);
    assert.equal(metric(gateway, 'messages_acked'), acked + 1);
    await assert.rejects(consumer.ackMessage('0.nope'), { code: 'NOT_FOUND' });
    await consumer.close();
  });

  test('tag expressions filter what a consumer receives', async () => {
    const topic = uniq('t');
    const consumer = await client.getConsumer('', topic, uniq('g'), 'a||b');
    const producer = await client.getProducer('', topic);
    for (const tag of ['a', 'c', 'b', 'c']) await producer.publishMessage(`m-${tag}`, tag);
    await producer.publishMessage('m-untagged');
    await producer.publishMessage('end', 'a');
    const got = await take(consumer[Symbol.asyncIterator](), 3);
    assert.deepEqual(
      got.map((m) => m.body),
      ['m-a', 'm-b', 'end'],
    );
    await consumer.close();
  });

  test('one consumption style per consumer', async () => {
    const { consumer } = await pair();
    consumer.onMessage(() => {});
    assert.throws(() => consumer[Symbol.asyncIterator](), { code: 'FAILED_PRECONDITION' });
    assert.throws(() => consumer.onMessage(() => {}), { code: 'FAILED_PRECONDITION' });
    await consumer.close();
    assert.throws(() => consumer.onMessage(() => {}), { code: 'CLOSED' });
  });

  test('onMessage awaits handlers, runs at most `concurrency` at once, and auto-acks', async () => {
    const { topic, consumer } = await pair('*', { concurrency: 4, autoAck: true });
    const producer = await client.getProducer('', topic);
    let running = 0;
    let maxRunning = 0;
    let calls = 0;
    const done = new Set<string>();
    const acked = metric(gateway, 'messages_acked');
    consumer.onMessage(async (m) => {
      calls++;
      running++;
      maxRunning = Math.max(maxRunning, running);
      await new Promise((r) => setTimeout(r, 40));
      running--;
      done.add(m.body);
    });
    await Promise.all([...Array(24).keys()].map((i) => producer.publishMessage(`m${i}`)));
    await eventually(() => done.size === 24, '24 messages handled');
    assert.equal(maxRunning, 4);
    await eventually(() => metric(gateway, 'messages_acked') === acked + 24, 'the auto-acks');
    assert.equal(calls, 24, 'a message was handled twice');
    await consumer.close();
  });

  test('a throwing handler is reported, never an unhandled rejection, and its message is redelivered', async () => {
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown): void => {
      unhandled.push(reason);
    };
    process.on('unhandledRejection', onUnhandled);
    try {
      const { topic, consumer } = await pair('*', { autoAck: true, nackDelayMs: 0 });
      const producer = await client.getProducer('', topic);
      const errors: Array<{ err: MqError; m: ReceivedMessage | undefined }> = [];
      consumer.on('error', (err, m) => errors.push({ err, m }));
      const deliveries: number[] = [];
      const boom = new TypeError('boom');
      consumer.onMessage(async (m) => {
        deliveries.push(m.reconsumeTimes);
        if (m.reconsumeTimes === 0) throw boom;
      });
      const t0 = Date.now();
      await producer.publishMessage('fragile');
      await eventually(() => deliveries.length === 2, 'the redelivery after the throw');
      assert.deepEqual(deliveries, [0, 1]);
      // NackMessage made it prompt: far sooner than the 30 s ack timeout.
      assert.ok(Date.now() - t0 < 10_000);
      assert.equal(errors.length, 1);
      assert.ok(errors[0]?.err instanceof MqError);
      assert.equal(errors[0]?.err.cause, boom);
      assert.match(errors[0]?.err.message ?? '', /handler threw.*boom/);
      assert.equal(errors[0]?.m?.body, 'fragile');
      await consumer.close();
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
    assert.deepEqual(unhandled, []);
  });

  test('without any error listener a handler failure becomes a process warning, not a crash', async () => {
    const warnings: Error[] = [];
    const onWarning = (w: Error): void => {
      warnings.push(w);
    };
    process.on('warning', onWarning);
    try {
      const { topic, consumer } = await pair('*', { autoAck: true });
      const producer = await client.getProducer('', topic);
      let calls = 0;
      consumer.onMessage(() => {
        calls++;
        throw new Error('no listener');
      });
      await producer.publishMessage('x');
      await eventually(() => warnings.some((w) => /no listener/.test(w.message)), 'the warning');
      assert.ok(calls >= 1);
      await consumer.close();
    } finally {
      process.off('warning', onWarning);
    }
  });

  test('the onError option receives handler failures', async () => {
    const seen: string[] = [];
    const { topic, consumer } = await pair('*', {
      autoAck: true,
      nackDelayMs: 0,
      onError: (err: MqError) => seen.push(err.code),
    });
    const producer = await client.getProducer('', topic);
    let n = 0;
    consumer.onMessage(() => {
      if (n++ === 0) throw new Error('once');
    });
    await producer.publishMessage('x');
    await eventually(() => n === 2, 'the redelivery');
    assert.deepEqual(seen, ['INTERNAL']);
    await consumer.close();
  });

  test('iteration holds back: the stream pauses at `prefetch` and the gateway stops pulling', async () => {
    const { topic, consumer } = await pair('*', { prefetch: 8 });
    const producer = await client.getProducer('', topic);
    const big = Buffer.alloc(8 * 1024, 7);
    const total = 200;
    await Promise.all([...Array(total).keys()].map(() => producer.publishMessage(big)));
    const it = consumer[Symbol.asyncIterator]();
    const [first] = await take(it, 1);
    assert.ok(first);
    await eventually(() => consumer.stats.paused, 'the stream to pause');
    // Wait until the gateway's in-flight count stops moving, then look at it.
    let last = -1;
    await eventually(
      async () => {
        const now = metric(gateway, 'inflight_deliveries');
        const stable = now === last;
        last = now;
        await new Promise((r) => setTimeout(r, 200));
        return stable;
      },
      'the in-flight count to settle',
      15_000,
    );
    assert.ok(consumer.stats.buffered <= 8, `buffered ${consumer.stats.buffered}`);
    assert.ok(
      last < total / 2,
      `the gateway had ${last} of ${total} deliveries in flight while the consumer held back`,
    );
    const ids = new Set([first.messageId]);
    await first.ack();
    for (const m of await take(it, total - 1, 30_000)) {
      ids.add(m.messageId);
      await m.ack();
    }
    assert.equal(ids.size, total);
    await consumer.close();
  });

  test('breaking out of for-await closes the consumer and releases its session', async () => {
    const { topic, consumer } = await pair();
    const producer = await client.getProducer('', topic);
    await producer.publishMessage('a');
    const sessions = metric(gateway, 'active_consumers');
    for await (const m of consumer) {
      await m.ack();
      break;
    }
    assert.equal(consumer.closed, true);
    await eventually(() => metric(gateway, 'active_consumers') === sessions - 1, 'the session release');
  });

  test('close() lets a running handler finish and ack before the session goes', async () => {
    const { topic, consumer } = await pair('*', { autoAck: true });
    const producer = await client.getProducer('', topic);
    let started = false;
    let sawAbort = false;
    consumer.onMessage(async (_m, signal) => {
      started = true;
      await new Promise((r) => setTimeout(r, 200));
      sawAbort = signal.aborted;
    });
    await producer.publishMessage('slow');
    await eventually(() => started, 'the handler to start');
    const acked = metric(gateway, 'messages_acked');
    await consumer.close();
    assert.equal(sawAbort, true);
    assert.equal(metric(gateway, 'messages_acked'), acked + 1);
  });
});
