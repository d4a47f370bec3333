import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { withLeakCheck } from '../../support/leaks.js';
import { makeGroup, openTestBroker, TopicPool } from './helpers.js';

const pool = new TopicPool({ normal: 1, fifo: 0, delay: 0, transaction: 0 });

describe('rocketmq adapter lifecycle', { timeout: 600_000 }, () => {
  test('50 open/close cycles (producer, send, subscribe, receive, health) leave no handle behind', async () => {
    const topic = await pool.topic('normal');
    // One warm-up cycle outside the check loads modules and grpc-js's lazily created globals.
    const cycle = async (i: number) => {
      const broker = await openTestBroker();
      try {
        const sub = await broker.subscribe({ topic, group: await makeGroup(false) });
        const p = await broker.producer(topic);
        const { messageId } = await p.send({ body: `cycle ${i}` });
        assert.ok(messageId);
        if (i % 10 === 0) {
          const it = sub[Symbol.asyncIterator]();
          const r = await it.next();
          assert.ok(!r.done);
          await r.value.ack();
        }
        assert.ok((await broker.health()).ok);
        await p.close();
        await sub.close();
      } finally {
        await broker.close();
      }
    };
    await cycle(-1);
    await withLeakCheck(
      async () => {
        for (let i = 0; i < 50; i++) await cycle(i);
      },
      { timeoutMs: 30_000 },
    );
  });
});
