/**
 * Keeps the embedded broker's byte accounting honest: what it charges a retained message must
 * stay close to the heap that message really takes, or maxTopicBytes and maxBytes stop bounding
 * the process. Run alone to see the figures quoted next to the constants in broker.ts:
 *
 *   npx tsx --expose-gc --test test/unit/brokers/memory-accounting.test.ts
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { describe, type TestContext, test } from 'node:test';
import type { Delivery } from '../../../src/brokers/broker.js';
import {
  deadLetterTopic,
  MemoryBroker,
  type MemoryBrokerOptions,
} from '../../../src/brokers/memory/index.js';
import { bodyText } from '../../../src/core/message.js';
import { Reader } from '../../support/behaviour.js';
import { withLeakCheck } from '../../support/leaks.js';

const uid = (prefix: string): string => `${prefix}-${randomUUID()}`;

/** Deadline for something that should arrive: generous, a loaded 2-core machine stalls. */
const ARRIVE = 5000;

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

/** Heap plus ArrayBuffer stores (where bodies above 64 bytes live), after a full collection. */
function usedBytes(): number {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (!gc) throw new Error('the accounting test needs --expose-gc (npm test passes it)');
  gc();
  gc();
  const m = process.memoryUsage();
  return m.heapUsed + m.arrayBuffers;
}

interface Case {
  readonly name: string;
  readonly messages: number;
  readonly bodyBytes: number;
  readonly groups: number;
  /** Read every message and nack it with an hour's delay, so every entry sleeps. */
  readonly nackAll?: boolean;
}

const CASES: readonly Case[] = [
  { name: 'small, 0 groups', messages: 50_000, bodyBytes: 10, groups: 0 },
  { name: 'small, 1 group', messages: 50_000, bodyBytes: 10, groups: 1 },
  { name: 'small, 3 groups', messages: 50_000, bodyBytes: 10, groups: 3 },
  { name: 'small, 1 group, all nack-delayed', messages: 20_000, bodyBytes: 10, groups: 1, nackAll: true },
  { name: '64 KiB, 0 groups', messages: 1000, bodyBytes: 64 * 1024, groups: 0 },
  { name: '64 KiB, 1 group', messages: 1000, bodyBytes: 64 * 1024, groups: 1 },
  { name: '64 KiB, 3 groups', messages: 1000, bodyBytes: 64 * 1024, groups: 3 },
];

/** Bytes per retained message: measured in the heap, and charged by the broker. */
async function measure(c: Case): Promise<{ measured: number; charged: number }> {
  const broker = new MemoryBroker({ maxTopicBytes: 2 ** 31, maxBytes: 2 ** 31 });
  try {
    const topic = uid('t');
    const subs = [];
    for (let g = 0; g < c.groups; g++) {
      subs.push(await broker.subscribe({ topic, group: `g${g}`, maxInFlight: c.messages + 1 }));
    }
    const p = await broker.producer(topic);
    // One message first, so code and structures used on every send exist before measuring.
    await p.send({ body: 'warm-up' });
    const charged0 = broker.counters().retainedBytes ?? 0;
    const before = usedBytes();
    for (let i = 0; i < c.messages; i++) {
      // Fresh strings per message, as the gateway's decoder makes them; property names are
      // shared, as V8 interns them.
      await p.send({
        body: new Uint8Array(c.bodyBytes),
        key: `key-${i % 1000}`,
        tag: `tag${i % 10}`,
        properties: { traceId: `t-${i}`, source: `svc-${i % 7}` },
      });
    }
    if (c.nackAll) {
      const it = (subs[0] as (typeof subs)[number])[Symbol.asyncIterator]();
      const held: Delivery[] = [];
      // The warm-up message first, then every measured one.
      for (let i = 0; i <= c.messages; i++) held.push((await it.next()).value as Delivery);
      for (const d of held) await d.nack({ delayMs: 3_600_000 });
      held.length = 0;
    }
    const measured = usedBytes() - before;
    const charged = (broker.counters().retainedBytes ?? 0) - charged0;
    return { measured: measured / c.messages, charged: charged / c.messages };
  } finally {
    await broker.close();
  }
}

describe('memory broker: byte accounting', () => {
  test('charged bytes per message stay close to the measured heap per message', async (t: TestContext) => {
    t.diagnostic('case: measured heap bytes per message / charged / charged:measured');
    for (const c of CASES) {
      const { measured, charged } = await measure(c);
      const ratio = charged / measured;
      t.diagnostic(
        `${c.name}: ${Math.round(measured)} / ${Math.round(charged)} / ${ratio.toFixed(2)} (${c.messages} messages)`,
      );
      // Generous bounds: a loaded 2-core machine makes heap figures noisy, while a real drift
      // (a new field per message, a lost per-group charge) moves the ratio well outside them.
      assert.ok(
        ratio >= 0.6 && ratio <= 1.7,
        `${c.name}: charged ${Math.round(charged)} bytes per message for ${Math.round(measured)} measured (ratio ${ratio.toFixed(2)})`,
      );
    }
  });

  test('bytes return to exactly 0 once every group is done, with several groups, nacks and dead letters', async () => {
    await withBroker({ maxAttempts: 2 }, async (broker) => {
      const topic = uid('t');
      const p = await broker.producer(topic);
      // Published before any group: orphans, adopted by the 'earliest' group below.
      for (let i = 0; i < 5; i++) await p.send({ body: `early${i}`, key: `k${i % 2}`, tag: 'a' });
      const all = new Reader(await broker.subscribe({ topic, group: 'all', start: 'earliest' }));
      const ordered = new Reader(await broker.subscribe({ topic, group: 'ordered', ordered: true }));
      const tagged = new Reader(await broker.subscribe({ topic, group: 'tagged', filter: 'a' }));
      for (let i = 0; i < 30; i++) {
        await p.send({
          body: i === 7 ? 'poison' : `m${i}`,
          key: `k${i % 3}`,
          tag: i % 2 === 0 ? 'a' : 'b',
          businessKey: `order-${i}`,
          properties: { i: String(i), note: 'é ✓' },
        });
      }
      await p.send({ body: 'delayed', tag: 'a', deliverAt: Date.now() + 50 });
      const tx = await p.prepare({ body: 'committed', tag: 'a' });
      await tx.commit();
      const rolledBack = await p.prepare({ body: 'rolled back' });
      await rolledBack.rollback();
      assert.ok((broker.counters().retainedBytes ?? 0) > 0);

      /**
       * Settles `expected` distinct messages: nacks every fourth on its first delivery (some
       * with a short delay, so they sleep), and in the 'all' group nacks "poison" until it moves
       * to the dead-letter topic.
       */
      const drain = async (reader: Reader, expected: number, poison: boolean): Promise<void> => {
        const done = new Set<string>();
        let n = 0;
        while (done.size < expected) {
          const d = await reader.next(ARRIVE, `message ${done.size + 1} of ${expected}`);
          n++;
          if (poison && bodyText(d.message) === 'poison') {
            await d.nack({ reason: 'cannot parse' });
            if (d.message.reconsumeCount === 1) done.add(d.message.id);
            continue;
          }
          if (d.message.reconsumeCount === 0 && n % 4 === 0) {
            await d.nack({ delayMs: n % 8 === 0 ? 20 : 0 });
            continue;
          }
          await d.ack();
          done.add(d.message.id);
        }
      };
      await drain(all, 5 + 30 + 2, true);
      await drain(ordered, 30 + 2, false);
      await drain(tagged, 15 + 2, false);

      const stats = broker.topicStats(topic);
      assert.equal(stats?.messages, 0, 'every message was freed');
      assert.equal(stats?.bytes, 0, 'and every byte charged for it credited back');
      const dlq = new Reader(
        await broker.subscribe({ topic: deadLetterTopic('all'), group: 'dlq-reader', start: 'earliest' }),
      );
      const dead = await dlq.next(ARRIVE, 'the dead letter');
      assert.equal(bodyText(dead.message), 'poison');
      await dead.ack();
      assert.equal(broker.topicStats(deadLetterTopic('all'))?.bytes, 0);
      assert.equal(broker.counters().retainedBytes, 0, 'nothing retained anywhere in the broker');
      for (const s of broker.stats()) assert.equal(s.bytes, 0, `topic ${s.topic}`);
    });
  });
});
