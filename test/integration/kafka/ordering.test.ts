/**
 * Per-key order on a 3-partition topic while the group rebalances: subscription A starts alone,
 * B joins a third of the way in, A closes two thirds of the way in. At-least-once allows
 * redeliveries, but a key's record may never be processed before every earlier record of that
 * key was processed at least once, and within one subscription (ordered: true) two records of
 * one key are never in processing at the same time.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Subscription } from '../../../src/brokers/broker.js';
import { bodyText } from '../../../src/core/message.js';
import { eventually } from '../../support/leaks.js';
import { openTestKafka } from './env.js';

test('per-key order holds across a rebalance (late join, close midway)', { timeout: 240_000 }, async () => {
  const broker = await openTestKafka('partitions=3');
  const topic = `order-${randomUUID()}`;
  const group = `g-${randomUUID()}`;
  const keys = 24;
  const perKey = 60;
  const total = keys * perKey;
  const maxSeen = new Map<string, number>();
  const gaps: string[] = [];
  const overlaps: string[] = [];
  const seen = new Set<string>();
  let deliveries = 0;
  let staleSettles = 0;
  const perSub = new Map<string, number>();

  function consume(name: string, sub: Subscription): Promise<void> {
    const active = new Set<string>();
    return (async () => {
      const handlers = new Set<Promise<void>>();
      for await (const d of sub) {
        const m = d.message;
        const key = m.key as string;
        const seq = Number(bodyText(m).split(':')[1]);
        deliveries++;
        perSub.set(name, (perSub.get(name) ?? 0) + 1);
        if (seq > (maxSeen.get(key) ?? -1) + 1)
          gaps.push(`${name}: ${key}:${seq} before ${key}:${(maxSeen.get(key) ?? -1) + 1}`);
        maxSeen.set(key, Math.max(maxSeen.get(key) ?? -1, seq));
        if (active.has(key)) overlaps.push(`${name}: ${key}:${seq} while ${key} in processing`);
        active.add(key);
        const h = (async () => {
          await sleep(Math.random() * 4);
          active.delete(key);
          seen.add(`${key}:${seq}`);
          await d.ack().catch(() => {
            staleSettles++;
          });
        })();
        handlers.add(h);
        void h.finally(() => handlers.delete(h));
      }
      await Promise.all(handlers);
    })();
  }

  try {
    const p = await broker.producer(topic);
    const a = await broker.subscribe({ topic, group, start: 'earliest', ordered: true, maxInFlight: 32 });
    const aDone = consume('A', a);
    let b: Subscription | undefined;
    let bDone: Promise<void> | undefined;
    for (let i = 0; i < perKey; i++) {
      await Promise.all(Array.from({ length: keys }, (_, k) => p.send({ key: `k${k}`, body: `k${k}:${i}` })));
      if (i === Math.floor(perKey / 3)) {
        b = await broker.subscribe({ topic, group, start: 'earliest', ordered: true, maxInFlight: 32 });
        bDone = consume('B', b);
      }
      if (i === Math.floor((2 * perKey) / 3)) {
        await eventually(() => (perSub.get('B') ?? 0) > 0, 'B receiving after the late join', 60_000);
        await a.close();
        await aDone;
      }
    }
    await eventually(
      () => seen.size === total,
      `all ${total} records processed (have ${seen.size})`,
      120_000,
    );
    await b?.close();
    await bDone;
    console.log(
      `ordering: ${total} records, ${deliveries} deliveries (${deliveries - total} redelivered), ` +
        `per subscription ${JSON.stringify(Object.fromEntries(perSub))}, ${staleSettles} acks rejected after revoke/close`,
    );
    assert.deepEqual(gaps, [], 'no key processed a record before an earlier one');
    assert.deepEqual(overlaps, [], 'ordered: one record per key in processing per subscription');
    assert.ok((perSub.get('A') ?? 0) > 0 && (perSub.get('B') ?? 0) > 0, 'both members consumed');
  } finally {
    await broker.close();
  }
});
