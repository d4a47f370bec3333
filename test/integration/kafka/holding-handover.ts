/**
 * 10,000 delayed messages on Kafka: the broker object (gateway) that held them closes midway and
 * a new one moves them, optionally with Kafka restarted while it does. None lost, none early,
 * duplicates no more than counted, lateness reported.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import type { TestContext } from 'node:test';
import { Reader } from '../../support/behaviour.js';
import { restartKafka } from '../../support/brokers.js';
import { percentile } from '../../support/holding.js';
import { withLeakCheck } from '../../support/leaks.js';
import { openTestKafka } from './env.js';

export async function runKafkaHandover(
  t: TestContext,
  options: { holdingTopics: string; restartKafkaAfter?: number },
): Promise<void> {
  const QUERY = `partitions=3&holdingTopics=${options.holdingTopics}`;
  await withLeakCheck(async () => {
    const topic = `holdhandover-${randomUUID().slice(0, 8)}`;
    // The consumer's broker object has holding topics of its own (never created): no mover.
    const consumer = await openTestKafka(`partitions=3&holdingTopics=${options.holdingTopics}_consumer`);
    let second: Awaited<ReturnType<typeof openTestKafka>> | undefined;
    try {
      const sub = await consumer.subscribe({ topic, group: 'g', start: 'earliest', maxInFlight: 1_000 });
      const reader = new Reader(sub);
      const n = 10_000;
      const due = new Map<string, number>();
      const first = await openTestKafka(QUERY);
      let firstCounters: ReturnType<NonNullable<typeof first.counters>> = {};
      const t0 = Date.now();
      try {
        const p = await first.producer(topic);
        const base = Date.now() + 4_000;
        for (let start = 0; start < n; start += 500) {
          const batch: Array<Promise<void>> = [];
          for (let i = start; i < Math.min(n, start + 500); i++) {
            const deliverAt = base + (i % 60) * 100;
            batch.push(
              p
                .send({ body: String(i), key: `k${i % 100}`, deliverAt })
                .then((r) => void due.set(r.messageId, deliverAt)),
            );
          }
          await Promise.all(batch);
        }
        await p.close();
      } finally {
        await first.close();
        firstCounters = first.counters?.() ?? {};
      }
      t.diagnostic(`held ${n} messages in ${Date.now() - t0} ms; the gateway that held them closed`);
      second = await openTestKafka(QUERY);
      const arrived = new Map<string, number>();
      let deliveries = 0;
      let restart: Promise<void> | undefined;
      while (arrived.size < n) {
        if (
          options.restartKafkaAfter !== undefined &&
          !restart &&
          arrived.size >= options.restartKafkaAfter
        ) {
          t.diagnostic(`restarting Kafka after ${arrived.size} moved messages`);
          restart = restartKafka();
        }
        const d = await reader.next(120_000, `delayed message ${arrived.size + 1} of ${n}`);
        deliveries++;
        const at = Date.now();
        const deliverAt = due.get(d.message.id);
        assert.ok(deliverAt !== undefined, 'only the messages sent');
        assert.ok(at >= deliverAt, `message ${d.message.id} arrived ${deliverAt - at} ms early`);
        if (!arrived.has(d.message.id)) arrived.set(d.message.id, at - deliverAt);
        // While Kafka restarts an ack can fail; the consumer then sees the message again, which
        // the restart variant reports rather than asserts.
        await d.ack().catch((err) => {
          if (options.restartKafkaAfter === undefined) throw err;
        });
      }
      await restart;
      const late = [...arrived.values()].sort((a, b) => a - b);
      const c = second.counters?.() ?? {};
      const cc = consumer.counters?.() ?? {};
      const counted =
        (c.holdingDuplicates ?? 0) + (cc.holdingDuplicates ?? 0) + (firstCounters.holdingDuplicates ?? 0);
      const report = `${n} delayed messages, ${deliveries} deliveries; lateness p50 ${percentile(late, 50)} ms, p99 ${percentile(late, 99)} ms, max ${late[late.length - 1]} ms; moved ${firstCounters.holdingMoves} by the gateway that held them and ${c.holdingMoves} by the next, ${counted} counted duplicates`;
      t.diagnostic(report);
      console.log(`[kafka handover] ${report}`);
      // With a restart, the consumer's own redeliveries (acks lost while Kafka was down) add
      // duplicates the mover cannot count; without one, every duplicate is the mover's.
      if (options.restartKafkaAfter === undefined) {
        assert.ok(deliveries - n <= counted, `${deliveries - n} duplicate deliveries, ${counted} counted`);
      }
      await sub.close();
    } finally {
      await second?.close();
      await consumer.close();
    }
  });
}
