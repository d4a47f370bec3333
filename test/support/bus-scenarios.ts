/** The event bus over a real broker: per-key order, retry with backoff, dead-letter, clean close. */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import type { Broker } from '../../src/brokers/broker.js';
import { createEventBus } from '../../src/bus/index.js';
import { bodyText, type Message } from '../../src/core/message.js';
import { eventually, withLeakCheck } from './leaks.js';

export interface BusScenarioOptions {
  open: () => Promise<Broker>;
  topic: string;
  deadLetterTopic: string;
  group: string;
  dlqGroup: string;
  /** Scales waits for brokers that take seconds to join a group. */
  timeoutScale?: number;
  /**
   * Whether a retried message must come back before its key's later messages. False only where
   * the broker is known to reorder a retry (RocketMQ: see the README's limits); every message is
   * still checked to be handled, and the poison one dead-lettered.
   */
  retryKeepsOrder?: boolean;
}

export async function runEventBusScenario(o: BusScenarioOptions): Promise<void> {
  const scale = o.timeoutScale ?? 1;
  await withLeakCheck(
    async () => {
      const broker = await o.open();
      const bus = await createEventBus({ broker });
      // RocketMQ's test groups start at the oldest message by their broker-side setting.
      const start = broker.capabilities.startPosition ? 'earliest' : undefined;
      try {
        const seen = new Map<string, number[]>();
        const attempts = new Map<string, number>();
        const dead: Message[] = [];
        const dlq = await bus.subscribe(o.deadLetterTopic, (m) => void dead.push(m), {
          group: o.dlqGroup,
          start,
        });
        const sub = await bus.subscribe(
          o.topic,
          async (m) => {
            const [key, n] = bodyText(m).split(':') as [string, string];
            if (key === 'poison') throw new Error('cannot handle poison');
            // Each key's third message fails once: a retry must not let the fourth overtake it.
            if (n === '2' && !attempts.has(`${key}:2`)) {
              attempts.set(`${key}:2`, 1);
              throw new Error('transient');
            }
            const list = seen.get(key) ?? [];
            list.push(Number(n));
            seen.set(key, list);
          },
          {
            group: o.group,
            concurrency: 8,
            maxAttempts: 3,
            backoff: { initialMs: 50, maxMs: 200 },
            deadLetter: o.deadLetterTopic,
            start,
          },
        );
        const keys = ['a', 'b', 'c', 'd'];
        for (let n = 0; n < 10; n++) {
          for (const key of keys) await bus.publish(o.topic, `${key}:${n}`, { key });
        }
        await bus.publish(o.topic, 'poison:0', { key: 'poison' });
        await eventually(
          () => keys.every((k) => (seen.get(k)?.length ?? 0) >= 10) && dead.length >= 1,
          'every message handled and the poison dead-lettered',
          60_000 * scale,
        ).catch(async (err) => {
          const state = [...seen].map(([k, ns]) => `${k}:${ns.length}`).join(' ');
          throw new Error(
            `${(err as Error).message}; handled ${state}; dead-lettered ${dead.length}; health ${JSON.stringify(await bus.health())}`,
          );
        });
        for (const k of keys) {
          const firsts = [...new Set(seen.get(k))];
          if (o.retryKeepsOrder ?? true) {
            assert.deepEqual(firsts, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], `key ${k} in order through a retry`);
          } else {
            assert.deepEqual(
              [...firsts].sort((a, b) => a - b),
              [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
              `key ${k}: all handled`,
            );
            // Apart from the retried message, the key's messages still arrive in order.
            const others = firsts.filter((n) => n !== 2);
            assert.deepEqual(others, [0, 1, 3, 4, 5, 6, 7, 8, 9], `key ${k} in order apart from the retry`);
          }
        }
        assert.equal(bodyText(dead[0] as Message), 'poison:0');
        assert.match((dead[0] as Message).properties['mqgate-error'] ?? '', /cannot handle poison/);
        await sub.close();
        await dlq.close();
      } finally {
        await bus.close();
        await broker.close();
      }
    },
    { timeoutMs: 20_000 },
  );
}

export const uniqueName = (prefix: string): string => `${prefix}${randomUUID().slice(0, 8)}`;
