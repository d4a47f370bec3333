import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { createServer } from 'node:net';
import { test } from 'node:test';
import { openKafkaBroker } from '../../../src/brokers/kafka/index.js';
import { isMqError } from '../../../src/core/errors.js';
import { withLeakCheck } from '../../support/leaks.js';
import { openTestKafka } from './env.js';

function code(err: unknown): string | undefined {
  return isMqError(err) ? err.code : undefined;
}

test(
  '50 open/close cycles (producer, send, subscription) leave no handle behind',
  {
    timeout: 600_000,
  },
  async () => {
    const topic = `cycles-${randomUUID()}`;
    // The topic exists before measuring so the cycles do the same work every time.
    const setup = await openTestKafka('partitions=2');
    await (await setup.producer(topic)).close();
    await setup.close();
    const t0 = Date.now();
    await withLeakCheck(
      async () => {
        for (let i = 0; i < 50; i++) {
          const broker = await openTestKafka('partitions=2');
          const p = await broker.producer(topic);
          await p.send({ body: `cycle ${i}`, key: `k${i}` });
          const sub = await broker.subscribe({
            topic,
            group: `cycles-${i}-${randomUUID()}`,
            start: 'latest',
          });
          assert.ok((await broker.health()).ok);
          // Half the cycles close the parts first, half leave it all to broker.close().
          if (i % 2 === 0) {
            await sub.close();
            await p.close();
          }
          await broker.close();
        }
      },
      { timeoutMs: 20_000 },
    );
    console.log(`50 open/close cycles in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
  },
);

test('a missing topic is TOPIC_NOT_FOUND naming it when auto-creation is off', async () => {
  const broker = await openTestKafka('autoCreateTopics=false');
  try {
    const topic = `missing-${randomUUID()}`;
    for (const attempt of [() => broker.producer(topic), () => broker.subscribe({ topic, group: 'g' })]) {
      await assert.rejects(attempt(), (err: unknown) => {
        assert.equal(code(err), 'TOPIC_NOT_FOUND');
        assert.match((err as Error).message, new RegExp(`${topic}.*kafka-topics.sh`));
        return true;
      });
    }
  } finally {
    await broker.close();
  }
});

test('a delayed prepare and reserved property names are refused, nothing is sent', async () => {
  const broker = await openTestKafka();
  try {
    const p = await broker.producer(`refuse-${randomUUID()}`);
    await assert.rejects(p.prepare({ body: 'x', deliverAt: Date.now() + 1000 }), (err: unknown) => {
      assert.equal(code(err), 'UNSUPPORTED');
      assert.match((err as Error).message, /Kafka/);
      return true;
    });
    for (const name of ['mqgate-tag', 'mqgate-id']) {
      await assert.rejects(p.send({ body: 'x', properties: { [name]: 'spoof' } }), (err: unknown) => {
        assert.equal(code(err), 'INVALID_ARGUMENT');
        return true;
      });
    }
    await assert.rejects(
      p.send({ body: 'x', deliverAt: Date.now() + 60_000, properties: { 'mqgate-hold-due': '1' } }),
      (err: unknown) => {
        assert.equal(code(err), 'INVALID_ARGUMENT');
        return true;
      },
    );
  } finally {
    await broker.close();
  }
});

test('opening against a port with no Kafka fails UNAVAILABLE and leaves no handle', async () => {
  // A listener that accepts and closes: nothing Kafka-shaped answers there.
  const server = createServer((s) => s.destroy());
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as { port: number };
  try {
    await withLeakCheck(async () => {
      await assert.rejects(openKafkaBroker(new URL(`kafka://127.0.0.1:${port}`)), (err: unknown) => {
        assert.equal(code(err), 'UNAVAILABLE');
        assert.match((err as Error).message, new RegExp(`127.0.0.1:${port}`));
        return true;
      });
    });
  } finally {
    await new Promise((r) => server.close(r));
  }
});
