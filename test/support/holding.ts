/**
 * Delayed and transactional messages through the holding mechanism (src/brokers/holding/), run
 * against a real broker: mixed delays arrive in due order and never early (lateness reported),
 * and transactions are committed, rolled back, or committed at their immunity deadline by a
 * broker object opened after the one that prepared them was closed.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { test } from 'node:test';
import type { Broker, Delivery } from '../../src/brokers/broker.js';
import { bodyText } from '../../src/core/message.js';
import { Reader, TIMEOUT } from './behaviour.js';
import { eventually, withLeakCheck } from './leaks.js';

export interface HoldingSuiteOptions {
  /** Opens a new broker object on the same broker (several per test). */
  open(): Promise<Broker>;
  /** A fresh topic name. */
  topic(): string;
  /** Multiplies deadlines; 1 for NATS. */
  scale?: number;
  /** Two messages due this far apart or more must arrive in due order. */
  orderToleranceMs?: number;
  /** Largest lateness accepted (ms). */
  maxLatenessMs?: number;
}

export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i] as number;
}

async function closeBoth(a: Broker, b: Broker): Promise<void> {
  await Promise.allSettled([a.close(), b.close()]);
}

export function runHoldingSuite(name: string, options: HoldingSuiteOptions): void {
  const scale = options.scale ?? 1;
  const orderTolerance = options.orderToleranceMs ?? 0;
  const maxLateness = options.maxLatenessMs ?? 1_000;

  test(`${name}: delayed messages at mixed times arrive in due order, none early, lateness measured`, async (t) => {
    await withLeakCheck(async () => {
      const broker = await options.open();
      try {
        assert.equal(broker.capabilities.delay, true);
        const topic = options.topic();
        const group = `g-${randomUUID()}`;
        const sub = await broker.subscribe({ topic, group, start: 'earliest', maxInFlight: 64 });
        const reader = new Reader(sub);
        const p = await broker.producer(topic);
        const n = 24;
        const spacing = 200;
        const base = Date.now() + 1_500;
        // Sent in a shuffled order, due 200 ms apart, half with a key.
        const order = [...Array(n).keys()].sort(() => Math.random() - 0.5);
        const ids = new Map<string, number>();
        for (const i of order) {
          const deliverAt = base + i * spacing;
          const r = await p.send({
            body: JSON.stringify({ i, deliverAt }),
            deliverAt,
            key: i % 2 === 0 ? `k${i % 4}` : undefined,
            tag: i % 3 === 0 ? 'tagged' : undefined,
            properties: { index: String(i) },
          });
          ids.set(r.messageId, i);
        }
        const arrivals: Array<{ i: number; at: number; deliverAt: number }> = [];
        const deadline = base + n * spacing + 20_000 * scale;
        while (arrivals.length < n) {
          const d: Delivery = await reader.next(
            Math.max(1, deadline - Date.now()),
            `delayed message ${arrivals.length + 1} of ${n}`,
          );
          const at = Date.now();
          const { i, deliverAt } = JSON.parse(bodyText(d.message)) as { i: number; deliverAt: number };
          assert.equal(ids.get(d.message.id), i, 'the released message keeps the id the publisher got');
          assert.equal(d.message.properties.index, String(i), 'properties travel');
          assert.equal(d.message.tag, i % 3 === 0 ? 'tagged' : undefined, 'the tag travels');
          assert.equal(d.message.key, i % 2 === 0 ? `k${i % 4}` : undefined, 'the key travels');
          assert.ok(
            !Object.keys(d.message.properties).some((k) => k.startsWith('mqgate-hold-')),
            'no holding property reaches the consumer',
          );
          await d.ack();
          if (arrivals.some((a) => a.i === i)) continue; // a counted duplicate
          arrivals.push({ i, at, deliverAt });
        }
        const lateness = arrivals.map((a) => a.at - a.deliverAt);
        const sorted = [...lateness].sort((a, b) => a - b);
        const report = `lateness over ${n} messages: p50 ${percentile(sorted, 50)} ms, p99 ${percentile(sorted, 99)} ms, max ${sorted[sorted.length - 1]} ms; in arrival order: ${arrivals.map((a) => `${a.i}:+${a.at - a.deliverAt}`).join(' ')}`;
        t.diagnostic(report);
        console.log(`[${name}] ${report}`);
        for (const a of arrivals) {
          assert.ok(
            a.at >= a.deliverAt,
            `message ${a.i} arrived ${a.deliverAt - a.at} ms before its deliverAt`,
          );
        }
        for (let k = 1; k < arrivals.length; k++) {
          const prev = arrivals[k - 1] as (typeof arrivals)[number];
          const cur = arrivals[k] as (typeof arrivals)[number];
          if (cur.deliverAt + orderTolerance < prev.deliverAt) {
            assert.fail(
              `message ${cur.i} (due ${cur.deliverAt}) arrived after message ${prev.i} (due ${prev.deliverAt}); ${report}`,
            );
          }
        }
        assert.ok((sorted[sorted.length - 1] as number) <= maxLateness, report);
        // This broker object's mover is the only one on these holding topics.
        assert.ok((broker.counters?.().heldDelay ?? 0) >= n, 'held messages counted');
        await eventually(() => (broker.counters?.().holdingMoves ?? 0) >= n, 'moves counted');
        const c = broker.counters?.() ?? {};
        // One mover, no crash, no rebalance: nothing may be moved twice.
        assert.equal(c.holdingDuplicates ?? 0, 0, 'no move was done twice');
        t.diagnostic(
          `counters: held ${c.heldDelay}, moved ${c.holdingMoves}, duplicates ${c.holdingDuplicates}, mean lateness at the mover ${Math.round((c.holdingLatenessSumMs ?? 0) / Math.max(1, c.holdingLatenessCount ?? 0))} ms`,
        );
        await sub.close();
        await p.close();
      } finally {
        await broker.close();
      }
    });
  });

  test(`${name}: two broker objects (gateways) share the holding; nothing lost, duplicates no more than counted`, async (t) => {
    await withLeakCheck(async () => {
      const a = await options.open();
      const b = await options.open();
      try {
        const topic = options.topic();
        const sub = await a.subscribe({
          topic,
          group: `g-${randomUUID()}`,
          start: 'earliest',
          maxInFlight: 256,
        });
        const reader = new Reader(sub);
        const pa = await a.producer(topic);
        const pb = await b.producer(topic);
        const n = 200;
        const base = Date.now() + 2_000 * scale;
        const ids = new Set<string>();
        const sends: Array<Promise<{ messageId: string }>> = [];
        for (let i = 0; i < n; i++) {
          const p = i % 2 === 0 ? pa : pb;
          sends.push(p.send({ body: String(i), key: `k${i % 10}`, deliverAt: base + (i % 20) * 100 }));
        }
        for (const r of await Promise.all(sends)) ids.add(r.messageId);
        const seen = new Map<string, number>();
        let deliveries = 0;
        while (seen.size < n) {
          const d = await reader.next(30_000 * scale, `delayed message ${seen.size + 1} of ${n}`);
          assert.ok(ids.has(d.message.id), 'only the messages sent');
          deliveries++;
          seen.set(d.message.id, (seen.get(d.message.id) ?? 0) + 1);
          await d.ack();
        }
        // Stragglers: a duplicate released late.
        for (;;) {
          const more = await reader.poll(1_000 * scale);
          if (more === TIMEOUT || more.done) break;
          deliveries++;
          await more.value.ack();
        }
        const counted = (a.counters?.().holdingDuplicates ?? 0) + (b.counters?.().holdingDuplicates ?? 0);
        const moves = (a.counters?.().holdingMoves ?? 0) + (b.counters?.().holdingMoves ?? 0);
        t.diagnostic(
          `${n} messages, ${deliveries} deliveries, ${moves} moves (${a.counters?.().holdingMoves} + ${b.counters?.().holdingMoves}), ${counted} counted duplicates`,
        );
        assert.ok(deliveries - n <= counted, `${deliveries - n} duplicate deliveries, ${counted} counted`);
        await sub.close();
        await pa.close();
        await pb.close();
      } finally {
        await closeBoth(a, b);
      }
    });
  });

  test(`${name}: transactions are committed, rolled back, or committed at their immunity deadline across a restart`, async () => {
    await withLeakCheck(async () => {
      const topic = options.topic();
      const group = `g-${randomUUID()}`;
      const immunityMs = 2_500 * scale;
      let deadline = 0;
      let ids: { committed: string; immune: string; rolledBack: string };
      const first = await options.open();
      try {
        assert.equal(first.capabilities.transactions, true);
        const p = await first.producer(topic);
        const committed = await p.prepare({ body: 'committed', key: 'k' }, { immunityMs: 600_000 });
        const rolledBack = await p.prepare({ body: 'rolled back', key: 'k' }, { immunityMs });
        deadline = Date.now() + immunityMs;
        const immune = await p.prepare(
          { body: 'left undecided', properties: { why: 'immunity' } },
          { immunityMs },
        );
        ids = { committed: committed.messageId, immune: immune.messageId, rolledBack: rolledBack.messageId };
        await committed.commit();
        await rolledBack.rollback();
        await p.close();
      } finally {
        // The undecided transaction is left to whoever runs the holding next.
        await first.close();
      }
      const second = await options.open();
      try {
        const sub = await second.subscribe({ topic, group, start: 'earliest' });
        const reader = new Reader(sub);
        const got = new Map<string, number>();
        while (got.size < 2) {
          const d = await reader.next(
            immunityMs + 30_000 * scale,
            'the committed and the immunity-committed messages',
          );
          assert.notEqual(d.message.id, ids.rolledBack, 'a rolled-back message is never delivered');
          if (!got.has(d.message.id)) got.set(d.message.id, Date.now());
          if (d.message.id === ids.immune) {
            assert.equal(bodyText(d.message), 'left undecided');
            assert.equal(d.message.properties.why, 'immunity');
          }
          await d.ack();
        }
        assert.ok(got.has(ids.committed), 'the committed message arrived');
        assert.ok(got.has(ids.immune), 'the undecided message was committed at its immunity deadline');
        assert.ok((got.get(ids.immune) as number) >= deadline, 'not committed before its immunity deadline');
        const more = await reader.poll(1_500 * scale);
        if (more !== TIMEOUT && !more.done) {
          assert.notEqual(more.value.message.id, ids.rolledBack, 'a rolled-back message is never delivered');
          await more.value.ack();
        }
        await sub.close();
      } finally {
        await second.close();
      }
    });
  });
}
