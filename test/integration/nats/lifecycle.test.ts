/**
 * Open/close cycles of the whole adapter (connect, publish, subscribe, receive, close) leave no
 * handle behind and do not grow the heap.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, test } from 'node:test';
import { openNatsBroker } from '../../../src/brokers/nats/index.js';
import { bodyText } from '../../../src/core/message.js';
import { assertHeapStable, withLeakCheck } from '../../support/leaks.js';
import { type PrivateNatsServer, startNatsServer } from '../../support/nats-server.js';

let server: PrivateNatsServer;

before(async () => {
  server = await startNatsServer();
});

after(async () => {
  await server?.close();
});

test(
  '50 open/publish/subscribe/receive/close cycles leave no handle and a stable heap',
  {
    timeout: 300_000,
  },
  async () => {
    const topic = `cycle-${randomUUID()}`;
    const group = `g-${randomUUID()}`;
    const cycle = async (i: number): Promise<void> => {
      const broker = await openNatsBroker(new URL(server.url), {});
      try {
        const producer = await broker.producer(topic);
        const sub = await broker.subscribe({ topic, group, start: 'earliest' });
        await producer.send({ body: `cycle ${i}`, key: 'k' });
        const r = await sub[Symbol.asyncIterator]().next();
        assert.ok(!r.done, 'a delivery');
        // Also proves the previous cycle's ack reached the server before its close.
        assert.equal(bodyText(r.value.message), `cycle ${i}`);
        await r.value.ack();
      } finally {
        await broker.close();
      }
    };
    await withLeakCheck(async () => {
      const { slope } = await assertHeapStable(cycle, {
        warmup: 10,
        cycles: 50,
        samples: 10,
        maxBytesPerCycle: 16 * 1024,
      });
      console.log(`nats lifecycle: heap slope ${slope.toFixed(0)} bytes per open/close cycle`);
    });
  },
);
