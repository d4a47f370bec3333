import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { describe, test } from 'node:test';
import type { Delivery } from '../../../src/brokers/broker.js';
import {
  DLQ_PROPERTIES,
  deadLetterTopic,
  MemoryBroker,
  type MemoryBrokerOptions,
  openMemoryBroker,
} from '../../../src/brokers/memory/index.js';
import { isMqError, type MqError } from '../../../src/core/errors.js';
import { bodyText } from '../../../src/core/message.js';
import { Reader } from '../../support/behaviour.js';
import { assertHeapStable, countResources, eventually, withLeakCheck } from '../../support/leaks.js';

const uid = (prefix: string): string => `${prefix}-${randomUUID()}`;

/** Deadline for something that should arrive: generous, a loaded 2-core machine stalls. */
const ARRIVE = 5000;

/** The next delivery from whichever reader gets one first; no read is abandoned. */
async function nextFromAny(readers: Reader[], ms = ARRIVE): Promise<Delivery> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    for (const reader of readers) {
      const r = await reader.poll(10);
      if (typeof r === 'object' && !r.done) return r.value;
    }
  }
  assert.fail(`no delivery within ${ms} ms`);
}

async function rejectsWith(promise: Promise<unknown>, code: string): Promise<MqError> {
  try {
    await promise;
  } catch (err) {
    assert.ok(isMqError(err), `expected MqError ${code}, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    return err;
  }
  assert.fail(`expected ${code}, but it succeeded`);
}

/** Opens a broker, runs body, closes the broker and checks nothing is left behind. */
async function withBroker(
  options: MemoryBrokerOptions,
  body: (broker: MemoryBroker) => Promise<void>,
): Promise<void> {
  await withLeakCheck(async () => {
    const broker = new MemoryBroker(options);
    try {
      await body(broker);
    } finally {
      await broker.close();
    }
  });
}

describe('memory broker: URL options', () => {
  test('reads limits from the URL', async () => {
    const broker = (await openMemoryBroker(
      new URL('memory://?maxTopicBytes=8MiB&maxAttempts=3&ackTimeout=1500ms&maxMessageBytes=64KiB'),
      {},
    )) as MemoryBroker;
    try {
      assert.equal(broker.kind, 'memory');
      assert.deepEqual(broker.settings, {
        maxTopicBytes: 8 * 1024 * 1024,
        maxBytes: 256 * 1024 * 1024,
        maxMessageBytes: 64 * 1024,
        maxAttempts: 3,
        ackTimeoutMs: 1500,
        groupRetentionMs: 10 * 60_000,
      });
      assert.deepEqual(broker.capabilities, {
        ordered: true,
        delay: true,
        transactions: true,
        tagFilter: true,
        durable: false,
        startPosition: true,
      });
    } finally {
      await broker.close();
    }
  });

  test('rejects bad values naming the parameter and what it accepts', async () => {
    const cases: Array<[string, RegExp]> = [
      ['memory://?maxTopicBytes=lots', /maxTopicBytes.*MiB/],
      ['memory://?maxTopicBytes=10', /maxTopicBytes.*at least 1KiB/],
      ['memory://?maxAttempts=0', /maxAttempts.*1 to 1000/],
      ['memory://?maxAttempts=2.5', /maxAttempts.*whole number/],
      ['memory://?ackTimeout=30', /ackTimeout.*30s/],
      ['memory://?maxTopicByte=1MiB', /unknown parameter "maxTopicByte".*maxTopicBytes/],
    ];
    for (const [url, pattern] of cases) {
      const err = await rejectsWith(openMemoryBroker(new URL(url), {}), 'INVALID_ARGUMENT');
      assert.match(err.message, pattern, url);
    }
  });

  test('brokers opened with the same URL are independent', async () => {
    const a = await openMemoryBroker(new URL('memory://'), {});
    const b = await openMemoryBroker(new URL('memory://'), {});
    try {
      const topic = uid('t');
      const subB = new Reader(await b.subscribe({ topic, group: 'g', start: 'earliest' }));
      const subA = new Reader(await a.subscribe({ topic, group: 'g', start: 'earliest' }));
      await (await a.producer(topic)).send({ body: 'only on a' });
      assert.equal(bodyText((await subA.next(ARRIVE)).message), 'only on a');
      await subB.nothingWithin(200, 'broker b never saw the message');
    } finally {
      await a.close();
      await b.close();
    }
  });
});

describe('memory broker: semantics', () => {
  test('a new group starts after its first subscribe unless start is earliest', async () => {
    await withBroker({}, async (broker) => {
      const topic = uid('t');
      const keeper = await broker.subscribe({ topic, group: 'keeper' });
      const p = await broker.producer(topic);
      await p.send({ body: 'before' });
      const latest = new Reader(await broker.subscribe({ topic, group: uid('latest') }));
      const earliest = new Reader(await broker.subscribe({ topic, group: uid('early'), start: 'earliest' }));
      await p.send({ body: 'after' });
      assert.equal(bodyText((await latest.next(ARRIVE)).message), 'after');
      assert.equal(bodyText((await earliest.next(ARRIVE)).message), 'before');
      assert.equal(bodyText((await earliest.next(ARRIVE)).message), 'after');
      await latest.nothingWithin(100, 'latest group missed "before" by design');
      await keeper.close();
    });
  });

  test('a group keeps its position after all its subscriptions closed; unacked come back', async () => {
    await withBroker({}, async (broker) => {
      const topic = uid('t');
      const group = uid('g');
      const first = new Reader(await broker.subscribe({ topic, group }));
      const p = await broker.producer(topic);
      for (let i = 0; i < 5; i++) await p.send({ body: `m${i}` });
      await (await first.next(ARRIVE)).ack();
      const unacked = await first.next(ARRIVE);
      assert.equal(bodyText(unacked.message), 'm1');
      await first.subscription.close();
      await p.send({ body: 'm5' });
      const again = new Reader(await broker.subscribe({ topic, group }));
      const bodies: string[] = [];
      for (let i = 0; i < 5; i++) {
        const d = await again.next(ARRIVE);
        bodies.push(bodyText(d.message));
        if (bodyText(d.message) === 'm1') assert.equal(d.message.reconsumeCount, 1);
        await d.ack();
      }
      assert.deepEqual(bodies.sort(), ['m1', 'm2', 'm3', 'm4', 'm5']);
      await again.nothingWithin(100, 'm0 was acked before the close');
    });
  });

  test('subscriptions of one group must agree on the filter', async () => {
    await withBroker({}, async (broker) => {
      const topic = uid('t');
      const group = uid('g');
      const a = await broker.subscribe({ topic, group, filter: 'x' });
      const err = await rejectsWith(broker.subscribe({ topic, group, filter: 'y' }), 'FAILED_PRECONDITION');
      assert.match(err.message, /filter "x"/);
      await a.close();
      // With no subscription left, the group may change its filter.
      const b = new Reader(await broker.subscribe({ topic, group, filter: 'y' }));
      const p = await broker.producer(topic);
      await p.send({ body: 'x', tag: 'x' });
      await p.send({ body: 'y', tag: 'y' });
      assert.equal(bodyText((await b.next(ARRIVE)).message), 'y');
    });
  });

  test('invalid arguments are INVALID_ARGUMENT', async () => {
    await withBroker({ maxMessageBytes: 1024 }, async (broker) => {
      const topic = uid('t');
      await rejectsWith(broker.subscribe({ topic, group: 'g', maxInFlight: 0 }), 'INVALID_ARGUMENT');
      await rejectsWith(broker.subscribe({ topic, group: 'g', filter: 'a || |b' }), 'INVALID_ARGUMENT');
      await rejectsWith(broker.subscribe({ topic: '', group: 'g' }), 'INVALID_ARGUMENT');
      await rejectsWith(broker.producer('has space'), 'INVALID_ARGUMENT');
      const p = await broker.producer(topic);
      const big = await rejectsWith(p.send({ body: new Uint8Array(2048) }), 'INVALID_ARGUMENT');
      assert.match(big.message, /maxMessageBytes/);
      const reader = new Reader(await broker.subscribe({ topic, group: 'g' }));
      await p.send({ body: 'x' });
      const d = await reader.next(ARRIVE);
      await rejectsWith(d.nack({ delayMs: -1 }), 'INVALID_ARGUMENT');
      await d.ack();
      await rejectsWith(d.nack(), 'FAILED_PRECONDITION');
    });
  });

  test('leaving a for-await loop closes the subscription and releases its deliveries', async () => {
    await withBroker({}, async (broker) => {
      const topic = uid('t');
      const group = uid('g');
      const p = await broker.producer(topic);
      const sub = await broker.subscribe({ topic, group });
      await p.send({ body: 'held' });
      let held: Delivery | undefined;
      for await (const d of sub) {
        held = d;
        break;
      }
      assert.ok(held);
      await rejectsWith(held.ack(), 'NOT_FOUND');
      const next = new Reader(await broker.subscribe({ topic, group }));
      const again = await next.next(ARRIVE);
      assert.equal(again.message.id, held.message.id);
      assert.equal(again.message.reconsumeCount, 1);
    });
  });

  test('the sent body is copied: reusing the buffer does not change the message', async () => {
    await withBroker({}, async (broker) => {
      const topic = uid('t');
      const reader = new Reader(await broker.subscribe({ topic, group: 'g' }));
      const p = await broker.producer(topic);
      const buf = new Uint8Array([1, 2, 3]);
      await p.send({ body: buf });
      buf[0] = 9;
      assert.deepEqual([...(await reader.next(ARRIVE)).message.body], [1, 2, 3]);
    });
  });

  test('message ids are unique and sort in publish order', async () => {
    await withBroker({}, async (broker) => {
      const p = await broker.producer(uid('t'));
      const ids: string[] = [];
      for (let i = 0; i < 2000; i++) ids.push((await p.send({ body: '' })).messageId);
      assert.equal(new Set(ids).size, ids.length);
      assert.deepEqual([...ids].sort(), ids);
    });
  });
});

describe('memory broker: bounded memory', () => {
  test('a full topic fails sends with RESOURCE_EXHAUSTED until a group acks', async () => {
    await withBroker({ maxTopicBytes: 8 * 1024 }, async (broker) => {
      const topic = uid('full');
      const reader = new Reader(await broker.subscribe({ topic, group: 'g' }));
      const p = await broker.producer(topic);
      const body = new Uint8Array(1000);
      let sent = 0;
      let error: MqError | undefined;
      for (let i = 0; i < 100 && !error; i++) {
        try {
          await p.send({ body });
          sent++;
        } catch (err) {
          assert.ok(isMqError(err));
          error = err;
        }
      }
      assert.ok(error, 'the topic filled up');
      assert.equal(error.code, 'RESOURCE_EXHAUSTED');
      assert.equal(error.retryable, true);
      assert.match(error.message, new RegExp(`topic "${topic}"`));
      assert.match(error.message, /8KiB/);
      assert.match(error.message, /maxTopicBytes/);
      // Each is charged its heap cost, ~1.5 KiB for a 1000-byte body with the broker's bookkeeping.
      assert.ok(sent >= 4 && sent <= 6, `about 8 KiB of 1000-byte messages fit (${sent})`);
      const stats = broker.topicStats(topic);
      assert.ok(stats && stats.bytes <= stats.maxBytes);
      await (await reader.next(ARRIVE)).ack();
      await p.send({ body });
      // Nothing was evicted: every accepted message is still delivered.
      for (let i = 0; i < sent; i++) await (await reader.next(ARRIVE, `message ${i}`)).ack();
      await reader.nothingWithin(100, 'all accepted messages consumed');
      assert.equal(broker.topicStats(topic)?.bytes, 0, 'everything acked is freed');
    });
  });

  test('nothing is evicted unconsumed: a slow group holds the topic, a fast group cannot free it', async () => {
    await withBroker({ maxTopicBytes: 16 * 1024 }, async (broker) => {
      const topic = uid('t');
      const slow = new Reader(await broker.subscribe({ topic, group: 'slow' }));
      const fast = new Reader(await broker.subscribe({ topic, group: 'fast' }));
      const p = await broker.producer(topic);
      const accepted: string[] = [];
      for (let i = 0; i < 100; i++) {
        try {
          accepted.push((await p.send({ body: new Uint8Array(500) })).messageId);
        } catch (err) {
          assert.ok(isMqError(err) && err.code === 'RESOURCE_EXHAUSTED');
        }
        // The fast group keeps up; the slow one reads nothing.
        const r = await fast.poll(0);
        if (typeof r === 'object' && !r.done) await r.value.ack();
      }
      assert.ok(accepted.length < 100, 'the slow group made the topic fill up');
      const got: string[] = [];
      for (let i = 0; i < accepted.length; i++) {
        const d = await slow.next(ARRIVE);
        got.push(d.message.id);
        await d.ack();
      }
      assert.deepEqual(got, accepted, 'the slow group gets every accepted message, in order');
    });
  });

  test('a topic with no group keeps a bounded backlog for a later earliest group', async () => {
    await withBroker({ maxTopicBytes: 16 * 1024 }, async (broker) => {
      const topic = uid('nobody');
      const p = await broker.producer(topic);
      const ids: string[] = [];
      // Far more than the limit: with nobody owing an ack, the oldest are dropped, never the send.
      for (let i = 0; i < 500; i++) ids.push((await p.send({ body: new Uint8Array(500) })).messageId);
      const stats = broker.topicStats(topic);
      assert.ok(stats);
      assert.ok(stats.bytes <= stats.maxBytes, `${stats.bytes} <= ${stats.maxBytes}`);
      assert.ok(stats.messages > 10 && stats.messages < 40, `kept ${stats.messages} messages`);
      const reader = new Reader(await broker.subscribe({ topic, group: 'late', start: 'earliest' }));
      const got: string[] = [];
      for (let i = 0; i < stats.messages; i++) got.push((await reader.next(ARRIVE)).message.id);
      assert.deepEqual(got, ids.slice(-stats.messages), 'the newest messages are kept, in order');
    });
  });

  test('delayed and prepared messages count against the limit; rollback frees them', async () => {
    await withBroker({ maxTopicBytes: 4 * 1024 }, async (broker) => {
      const topic = uid('t');
      await broker.subscribe({ topic, group: 'g' });
      const p = await broker.producer(topic);
      await p.send({ body: new Uint8Array(1500), deliverAt: Date.now() + 60_000 });
      const tx = await p.prepare({ body: new Uint8Array(1500) });
      assert.equal(broker.topicStats(topic)?.delayed, 1);
      assert.equal(broker.topicStats(topic)?.prepared, 1);
      await rejectsWith(p.send({ body: new Uint8Array(1500) }), 'RESOURCE_EXHAUSTED');
      await tx.rollback();
      await p.send({ body: new Uint8Array(1500) });
    });
  });

  test('closing a producer rolls back its open transactions', async () => {
    await withBroker({}, async (broker) => {
      const topic = uid('t');
      const reader = new Reader(await broker.subscribe({ topic, group: 'g' }));
      const p = await broker.producer(topic);
      const tx = await p.prepare({ body: 'half' });
      await p.close();
      assert.equal(broker.topicStats(topic)?.bytes, 0);
      const err = await rejectsWith(tx.commit(), 'FAILED_PRECONDITION');
      assert.match(err.message, /producer closed/);
      await rejectsWith(p.send({ body: 'x' }), 'CLOSED');
      await reader.nothingWithin(100, 'the half message was rolled back');
    });
  });
});

describe('memory broker: failures and redelivery', () => {
  test('a message nacked maxAttempts times moves to %DLQ%<group> with the reason', async () => {
    await withBroker({ maxAttempts: 3 }, async (broker) => {
      const topic = uid('t');
      const group = uid('g');
      const reader = new Reader(await broker.subscribe({ topic, group }));
      const dlq = new Reader(
        await broker.subscribe({ topic: deadLetterTopic(group), group: 'dlq-reader', start: 'earliest' }),
      );
      const p = await broker.producer(topic);
      const { messageId } = await p.send({ body: 'poison', key: 'k', properties: { a: '1' } });
      for (let attempt = 0; attempt < 3; attempt++) {
        const d = await reader.next(ARRIVE, `attempt ${attempt + 1}`);
        assert.equal(d.message.reconsumeCount, attempt);
        await d.nack({ reason: `boom ${attempt}` });
      }
      await reader.nothingWithin(100, 'the message went to the dead-letter topic');
      const dead = await dlq.next(ARRIVE, 'the dead letter');
      assert.equal(dead.message.topic, `%DLQ%${group}`);
      assert.equal(bodyText(dead.message), 'poison');
      assert.equal(dead.message.key, 'k');
      assert.equal(dead.message.properties.a, '1');
      assert.equal(dead.message.properties[DLQ_PROPERTIES.originTopic], topic);
      assert.equal(dead.message.properties[DLQ_PROPERTIES.originMessageId], messageId);
      assert.equal(dead.message.properties[DLQ_PROPERTIES.attempts], '3');
      assert.equal(dead.message.properties[DLQ_PROPERTIES.reason], 'nacked: boom 2');
      await dead.ack();
      assert.equal(broker.topicStats(topic)?.bytes, 0, 'the original is freed');
    });
  });

  test('a release marked uncounted (the consumer never received it) is not a delivery attempt', async () => {
    await withBroker({ maxAttempts: 2 }, async (broker) => {
      const topic = uid('t');
      const group = uid('g');
      const reader = new Reader(await broker.subscribe({ topic, group }));
      await (await broker.producer(topic)).send({ body: 'never read' });
      for (let i = 0; i < 5; i++) {
        const d = await reader.next(ARRIVE, `hand-out ${i + 1}`);
        assert.equal(d.message.reconsumeCount, 0, 'no hand-out was counted');
        await d.nack({ uncounted: true });
      }
      const d = await reader.next(ARRIVE, 'still with its group, not dead-lettered');
      await d.nack();
      assert.equal((await reader.next(ARRIVE)).message.reconsumeCount, 1, 'a real nack counts');
    });
  });

  test('ack timeouts count as attempts and end in the dead-letter topic', async () => {
    await withBroker({ maxAttempts: 2 }, async (broker) => {
      const topic = uid('t');
      const group = uid('g');
      const reader = new Reader(await broker.subscribe({ topic, group, ackTimeoutMs: 30 }));
      await (await broker.producer(topic)).send({ body: 'slow' });
      await reader.next(ARRIVE);
      await reader.next(ARRIVE);
      const dlq = new Reader(
        await broker.subscribe({ topic: deadLetterTopic(group), group: 'd', start: 'earliest' }),
      );
      const dead = await dlq.next(ARRIVE);
      assert.match(dead.message.properties[DLQ_PROPERTIES.reason] ?? '', /30 ms ack timeout/);
    });
  });

  test('visibility timeouts use one scheduler entry per subscription, not a timer per message', async () => {
    await withBroker({}, async (broker) => {
      const topic = uid('t');
      const reader = new Reader(
        await broker.subscribe({ topic, group: 'g', maxInFlight: 1000, ackTimeoutMs: 300 }),
      );
      const p = await broker.producer(topic);
      const n = 500;
      for (let i = 0; i < n; i++) await p.send({ body: `m${i}` });
      const before = countResources().get('Timeout') ?? 0;
      const first: Delivery[] = [];
      for (let i = 0; i < n; i++) first.push(await reader.next(ARRIVE));
      assert.equal(reader.subscription.inFlight, n);
      assert.equal(broker.scheduledTasks, 1, 'one scheduler entry covers all deliveries');
      assert.ok((countResources().get('Timeout') ?? 0) <= before + 1, 'at most one more timer');
      const again = new Set<string>();
      for (let i = 0; i < n; i++) {
        const d = await reader.next(5000, `redelivery ${i}`);
        assert.equal(d.message.reconsumeCount, 1);
        again.add(d.message.id);
        await d.ack();
      }
      assert.equal(again.size, n);
      await rejectsWith((first[0] as Delivery).ack(), 'NOT_FOUND');
      assert.equal(reader.subscription.inFlight, 0);
    });
  });

  test('acking after the broker closed is CLOSED', async () => {
    const broker = new MemoryBroker();
    const topic = uid('t');
    const reader = new Reader(await broker.subscribe({ topic, group: 'g' }));
    await (await broker.producer(topic)).send({ body: 'x' });
    const d = await reader.next(ARRIVE);
    await broker.close();
    await rejectsWith(d.ack(), 'CLOSED');
  });

  test('closing the broker with delayed messages, nack delays and open transactions leaks nothing', async () => {
    await withBroker({}, async (broker) => {
      const topic = uid('t');
      const reader = new Reader(await broker.subscribe({ topic, group: 'g' }));
      const p = await broker.producer(topic);
      await p.send({ body: 'in an hour', deliverAt: Date.now() + 3_600_000 });
      await p.prepare({ body: 'never resolved' });
      await p.send({ body: 'now' });
      await (await reader.next(ARRIVE)).nack({ delayMs: 3_600_000 });
      assert.ok(broker.scheduledTasks >= 2);
    });
  });
});

describe('memory broker: ordering', () => {
  test('an ordered subscription holds a key until its message is acked, across competing subscriptions', async () => {
    await withBroker({}, async (broker) => {
      const topic = uid('t');
      const group = uid('g');
      const a = new Reader(await broker.subscribe({ topic, group, ordered: true }));
      const b = new Reader(await broker.subscribe({ topic, group, ordered: true }));
      const p = await broker.producer(topic);
      await p.send({ body: 'k1-0', key: 'k1' });
      await p.send({ body: 'k1-1', key: 'k1' });
      await p.send({ body: 'k2-0', key: 'k2' });
      await p.send({ body: 'free' });
      const first = await a.next(ARRIVE);
      assert.equal(bodyText(first.message), 'k1-0');
      // b may take k2-0 and the keyless message, but not k1-1 while k1-0 is unacked.
      const other: string[] = [];
      other.push(bodyText((await b.next(ARRIVE)).message));
      other.push(bodyText((await b.next(ARRIVE)).message));
      assert.deepEqual(other.sort(), ['free', 'k2-0']);
      await b.nothingWithin(150, 'k1-1 waits for k1-0');
      await first.nack();
      const redelivered = await nextFromAny([a, b]);
      assert.equal(bodyText(redelivered.message), 'k1-0', 'a nacked holder comes back before its successor');
      await b.nothingWithin(100, 'k1-1 still waits');
      await redelivered.ack();
      const pending = await nextFromAny([a, b]);
      assert.equal(bodyText(pending.message), 'k1-1');
    });
  });

  test('10,000 messages over 100 keys with 4 competing ordered subscriptions keep per-key order', async () => {
    await withBroker({ maxAttempts: 1000 }, async (broker) => {
      const topic = uid('t');
      const group = uid('g');
      const keys = 100;
      const total = 10_000;
      const subs = await Promise.all(
        [0, 1, 2, 3].map(() => broker.subscribe({ topic, group, ordered: true, maxInFlight: 16 })),
      );
      const p = await broker.producer(topic);
      for (let i = 0; i < total; i++) {
        await p.send({ body: String(Math.floor(i / keys)), key: `k${i % keys}` });
      }
      const acked = new Map<string, number[]>();
      let done = 0;
      let nacks = 0;
      let step = 0;
      await Promise.all(
        subs.map(async (sub) => {
          const reader = new Reader(sub);
          while (done < total) {
            const r = await reader.poll(50);
            if (typeof r !== 'object' || r.done) continue;
            const d = r.value;
            step++;
            // Settle asynchronously and sometimes fail, so deliveries overlap across subscriptions.
            if (step % 7 === 0) await new Promise((resolve) => setImmediate(resolve));
            if (step % 97 === 0) {
              nacks++;
              await d.nack();
              continue;
            }
            const key = d.message.key as string;
            const list = acked.get(key) ?? [];
            list.push(Number(bodyText(d.message)));
            acked.set(key, list);
            done++;
            await d.ack();
          }
        }),
      );
      assert.ok(nacks > 0);
      assert.equal(acked.size, keys);
      const expected = Array.from({ length: total / keys }, (_, i) => i);
      for (const [key, seq] of acked) assert.deepEqual(seq, expected, `key ${key} acked in publish order`);
      assert.equal(broker.topicStats(topic)?.bytes, 0);
    });
  });
});

describe('memory broker: performance and heap', () => {
  test('publishes 1 KiB messages fast and consumes them', async (t) => {
    await withBroker({ maxTopicBytes: 512 * 1024 * 1024 }, async (broker) => {
      const topic = uid('t');
      const sub = await broker.subscribe({ topic, group: 'g', maxInFlight: 1024 });
      const p = await broker.producer(topic);
      const body = new Uint8Array(1024);
      const n = 50_000;
      const t0 = performance.now();
      for (let i = 0; i < n; i++) await p.send({ body, key: `k${i % 100}` });
      const publishRate = n / ((performance.now() - t0) / 1000);
      const t1 = performance.now();
      let got = 0;
      for await (const d of sub) {
        await d.ack();
        if (++got === n) break;
      }
      const consumeRate = n / ((performance.now() - t1) / 1000);
      t.diagnostic(`publish ${Math.round(publishRate)}/s, consume+ack ${Math.round(consumeRate)}/s`);
      // Generous floor for a busy 2-core machine; a quiet one does several hundred thousand.
      assert.ok(publishRate > 5_000, `publish rate ${Math.round(publishRate)}/s`);
      assert.equal(broker.topicStats(topic)?.bytes, 0);
    });
  });

  test('heap is stable over many publish/consume cycles', async () => {
    await withBroker({}, async (broker) => {
      const topic = uid('t');
      const sub = await broker.subscribe({ topic, group: 'g', ackTimeoutMs: 60_000 });
      const other = await broker.subscribe({ topic, group: 'h', ordered: true });
      const readers = [new Reader(sub), new Reader(other)];
      const p = await broker.producer(topic);
      await assertHeapStable(
        async (i) => {
          for (let j = 0; j < 10; j++) await p.send({ body: `cycle ${i}`, key: `k${j % 3}`, tag: 't' });
          for (const reader of readers) {
            for (let j = 0; j < 10; j++) {
              const d = await reader.next(ARRIVE);
              if (j === 0) await d.nack();
              else await d.ack();
            }
            await (await reader.next(ARRIVE)).ack();
          }
        },
        { warmup: 100, cycles: 1000, maxBytesPerCycle: 64 },
      );
      assert.equal(broker.topicStats(topic)?.bytes, 0);
    });
  });

  test('an idle broker settles: eventually no scheduler entries after everything is acked', async () => {
    await withBroker({}, async (broker) => {
      const topic = uid('t');
      const reader = new Reader(await broker.subscribe({ topic, group: 'g', ackTimeoutMs: 50 }));
      const p = await broker.producer(topic);
      for (let i = 0; i < 100; i++) await p.send({ body: `m${i}` });
      for (let i = 0; i < 100; i++) await (await reader.next(ARRIVE)).ack();
      await eventually(() => broker.scheduledTasks === 0, 'the expiry entry to fire and not re-arm', 5000);
    });
  });
});
