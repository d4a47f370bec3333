/**
 * 10,000 delayed messages on NATS: the broker object (gateway) that held them closes and the
 * nats-server restarts in the middle; a new broker object moves them. None lost, none early,
 * lateness reported.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, test } from 'node:test';
import { openNatsBroker } from '../../../src/brokers/nats/index.js';
import { Reader } from '../../support/behaviour.js';
import { percentile } from '../../support/holding.js';
import { withLeakCheck } from '../../support/leaks.js';
import { type PrivateNatsServer, startNatsServer } from '../../support/nats-server.js';

let server: PrivateNatsServer;
before(async () => {
  server = await startNatsServer();
});
after(async () => server.close());

test(
  'NATS: 10,000 delayed messages survive their gateway closing and a nats-server restart',
  { timeout: 300_000 },
  async (t) => {
    await withLeakCheck(async () => {
      const url = new URL(server.url);
      const topic = `holdrestart-${randomUUID().slice(0, 8)}`;
      const consumer = await openNatsBroker(url, {});
      let second: Awaited<ReturnType<typeof openNatsBroker>> | undefined;
      try {
        const sub = await consumer.subscribe({ topic, group: 'g', start: 'earliest', maxInFlight: 1_000 });
        const reader = new Reader(sub);
        const n = 10_000;
        const due = new Map<string, number>();
        const first = await openNatsBroker(url, {});
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
        }
        t.diagnostic(`held ${n} messages in ${Date.now() - t0} ms; the gateway that held them closed`);
        await server.restart();
        second = await openNatsBroker(url, {});
        const arrived = new Map<string, number>();
        let deliveries = 0;
        while (arrived.size < n) {
          const d = await reader.next(120_000, `delayed message ${arrived.size + 1} of ${n}`);
          deliveries++;
          const at = Date.now();
          const deliverAt = due.get(d.message.id);
          assert.ok(deliverAt !== undefined, 'only the messages sent');
          assert.ok(at >= deliverAt, `message ${d.message.id} arrived ${deliverAt - at} ms early`);
          if (!arrived.has(d.message.id)) arrived.set(d.message.id, at - deliverAt);
          await d.ack();
        }
        const late = [...arrived.values()].sort((a, b) => a - b);
        const c = second.counters?.() ?? {};
        const report = `${n} delayed messages, ${deliveries} deliveries; lateness p50 ${percentile(late, 50)} ms, p99 ${percentile(late, 99)} ms, max ${late[late.length - 1]} ms; the new gateway moved ${c.holdingMoves} (${c.holdingDuplicates} duplicates)`;
        t.diagnostic(report);
        console.log(`[nats restart] ${report}`);
        await sub.close();
      } finally {
        await second?.close();
        await consumer.close();
      }
    });
  },
);
