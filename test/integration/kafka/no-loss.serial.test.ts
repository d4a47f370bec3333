/**
 * No loss at the adapter level: 10,000 keyed messages while Kafka restarts once and the
 * subscription is closed and re-created twice. Every message whose send succeeded is delivered
 * at least once, and the first deliveries of each key come in publish order. Duplicates
 * (at-least-once) are counted and printed.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { test } from 'node:test';
import type { Subscription } from '../../../src/brokers/broker.js';
import { bodyText } from '../../../src/core/message.js';
import { restartKafka } from '../../support/brokers.js';
import { eventually } from '../../support/leaks.js';
import { openTestKafka } from './env.js';

test(
  '10,000 keyed messages survive a Kafka restart and two subscription re-creations',
  {
    timeout: 600_000,
  },
  async () => {
    const broker = await openTestKafka('partitions=3');
    const topic = `noloss-${randomUUID()}`;
    const group = `g-${randomUUID()}`;
    const keys = 200;
    const rounds = 50;
    const sent = new Set<string>();
    let sendFailures = 0;
    const delivered = new Map<string, number>();
    const lastFirst = new Map<string, number>();
    const outOfOrder: string[] = [];
    let staleAcks = 0;

    const consume = (sub: Subscription): Promise<void> =>
      (async () => {
        for await (const d of sub) {
          const body = bodyText(d.message);
          const [key, seqText] = body.split(':') as [string, string];
          const seq = Number(seqText);
          const n = delivered.get(body) ?? 0;
          delivered.set(body, n + 1);
          if (n === 0) {
            if (seq <= (lastFirst.get(key) ?? -1))
              outOfOrder.push(`${body} after ${key}:${lastFirst.get(key)}`);
            lastFirst.set(key, seq);
          }
          d.ack().catch(() => {
            staleAcks++;
          });
        }
      })();

    const subscribe = () => broker.subscribe({ topic, group, start: 'earliest', maxInFlight: 64 });
    try {
      const p = await broker.producer(topic);
      let sub = await subscribe();
      let consuming = consume(sub);
      let restart: Promise<void> | undefined;
      const t0 = Date.now();
      for (let i = 0; i < rounds; i++) {
        const results = await Promise.allSettled(
          Array.from({ length: keys }, (_, k) => p.send({ key: `k${k}`, body: `k${k}:${i}` })),
        );
        results.forEach((r, k) => {
          if (r.status === 'fulfilled') sent.add(`k${k}:${i}`);
          else sendFailures++;
        });
        if (i === 10) restart = restartKafka();
        if (i === 25 || i === 40) {
          await sub.close();
          await consuming;
          sub = await subscribe();
          consuming = consume(sub);
        }
      }
      await restart;
      const sendSeconds = (Date.now() - t0) / 1000;
      await eventually(
        () => [...sent].every((m) => delivered.has(m)),
        `every successfully sent message delivered (${[...sent].filter((m) => !delivered.has(m)).length} missing)`,
        180_000,
      );
      await sub.close();
      await consuming;
      const deliveries = [...delivered.values()].reduce((a, b) => a + b, 0);
      const duplicated = [...delivered.values()].filter((n) => n > 1).length;
      console.log(
        `no-loss: ${sent.size} sent ok, ${sendFailures} sends failed (Kafka down), sending took ${sendSeconds.toFixed(1)} s; ` +
          `${deliveries} deliveries of ${delivered.size} distinct messages: ${deliveries - delivered.size} duplicates ` +
          `(${duplicated} messages delivered more than once); ${staleAcks} acks rejected after close/revoke`,
      );
      assert.ok(sent.size > 0);
      assert.deepEqual(outOfOrder.slice(0, 10), [], 'first deliveries of each key in publish order');
    } finally {
      await broker.close();
    }
  },
);
