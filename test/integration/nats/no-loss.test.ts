/**
 * No loss at the adapter level: 10,000 messages published while the test restarts its
 * nats-server once and closes/re-creates the consuming subscription twice. Every message whose
 * send() resolved must be delivered at least once; duplicates are counted and printed.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, test } from 'node:test';
import type { Subscription } from '../../../src/brokers/broker.js';
import { openNatsBroker } from '../../../src/brokers/nats/index.js';
import { eventually, withLeakCheck } from '../../support/leaks.js';
import { type PrivateNatsServer, startNatsServer } from '../../support/nats-server.js';

const TOTAL = 10_000;
const PUBLISHERS = 32;

let server: PrivateNatsServer;
const unhandled: unknown[] = [];
const onUnhandled = (reason: unknown): void => {
  unhandled.push(reason);
};

before(async () => {
  process.on('unhandledRejection', onUnhandled);
  server = await startNatsServer();
});

after(async () => {
  process.off('unhandledRejection', onUnhandled);
  await server?.close();
});

test(
  'every sent message is delivered across a server restart and two re-subscriptions',
  {
    timeout: 300_000,
  },
  async () => {
    await withLeakCheck(
      async () => {
        const broker = await openNatsBroker(new URL(server.url), {});
        const topic = `no-loss-${randomUUID()}`;
        const group = `g-${randomUUID()}`;
        const deliveries = new Map<string, number>();
        let delivered = 0;
        let staleAcks = 0;

        const consume = async (sub: Subscription): Promise<void> => {
          for await (const d of sub) {
            delivered++;
            deliveries.set(d.message.id, (deliveries.get(d.message.id) ?? 0) + 1);
            try {
              await d.ack();
            } catch {
              // Closed (or expired) under us: the message will be redelivered, which is the point.
              staleAcks++;
            }
          }
        };
        const open = (): Promise<Subscription> =>
          broker.subscribe({ topic, group, start: 'earliest', maxInFlight: 64, ackTimeoutMs: 10_000 });

        try {
          let sub = await open();
          let consuming = consume(sub);
          const resubscribe = async (): Promise<void> => {
            await sub.close();
            await consuming;
            sub = await open();
            consuming = consume(sub);
          };

          const producer = await broker.producer(topic);
          const sent: string[] = [];
          const failures: string[] = [];
          let next = 0;
          const publisher = async (): Promise<void> => {
            while (next < TOTAL) {
              const i = next++;
              try {
                sent.push((await producer.send({ body: `m${i}`, key: `k${i % 16}` })).messageId);
              } catch (err) {
                failures.push(`${i}: ${err instanceof Error ? err.message : String(err)}`);
              }
            }
          };
          const publishing = Promise.all(Array.from({ length: PUBLISHERS }, publisher));

          const settledSends = (): number => sent.length + failures.length;
          await eventually(() => settledSends() >= 2_500, '2,500 sends', 60_000);
          await resubscribe();
          await eventually(() => settledSends() >= 5_000, '5,000 sends', 60_000);
          const restartAt = settledSends();
          await server.restart();
          await eventually(
            () => settledSends() >= Math.min(TOTAL, restartAt + 2_000),
            '2,000 sends after the restart',
            90_000,
          );
          await resubscribe();
          await publishing;

          const missing = (): string[] => sent.filter((id) => !deliveries.has(id));
          await eventually(() => missing().length === 0, 'every sent message to be delivered', 120_000).catch(
            () => {},
          );
          const lost = missing();
          const duplicates = [...deliveries].filter(([, n]) => n > 1);
          const extra = duplicates.reduce((sum, [, n]) => sum + n - 1, 0);
          console.log(
            `nats no-loss: sent ${sent.length}/${TOTAL}, send failures ${failures.length}, deliveries ${delivered}, ` +
              `unique ${deliveries.size}, duplicate deliveries ${extra} (of ${duplicates.length} messages), ` +
              `acks rejected after close/expiry ${staleAcks}, missing ${lost.length}`,
          );
          if (duplicates.length > 0) {
            console.log(
              `nats no-loss duplicates (id x deliveries): ${duplicates
                .slice(0, 100)
                .map(([id, n]) => `${id} x${n}`)
                .join(', ')}${duplicates.length > 100 ? ', ...' : ''}`,
            );
          }
          if (failures.length > 0)
            console.log(`nats no-loss send failures: ${failures.slice(0, 20).join('; ')}`);
          assert.deepEqual(lost.slice(0, 20), [], `${lost.length} sent messages were never delivered`);
          assert.equal(failures.length, 0, 'sends retry through the restart with the same message id');
          assert.deepEqual(unhandled, [], 'no unhandled rejection');
          await producer.close();
          await sub.close();
          await consuming;
        } finally {
          await broker.close();
        }
      },
      { timeoutMs: 20_000 },
    );
  },
);
