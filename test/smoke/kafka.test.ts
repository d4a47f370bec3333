import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { test } from 'node:test';
import { Admin, Consumer, Producer, stringDeserializers, stringSerializers } from '@platformatic/kafka';
import { kafkaBootstrap } from '../support/brokers.js';
import { withLeakCheck } from '../support/leaks.js';

test('kafka smoke: the raw client publishes and consumes one message on the test broker', async () => {
  await withLeakCheck(async () => {
    const bootstrapBrokers = [kafkaBootstrap()];
    const topic = `smoke-${randomUUID()}`;
    const admin = new Admin({ clientId: 'smoke-admin', bootstrapBrokers });
    const producer = new Producer({
      clientId: 'smoke-producer',
      bootstrapBrokers,
      serializers: stringSerializers,
    });
    const consumer = new Consumer({
      clientId: 'smoke-consumer',
      groupId: `smoke-${randomUUID()}`,
      bootstrapBrokers,
      deserializers: stringDeserializers,
    });
    try {
      await admin.createTopics({ topics: [topic], partitions: 1, replicas: 1 });
      const value = `hello ${randomUUID()} \u00e9\u4e2d`;
      await producer.send({ messages: [{ topic, key: 'k1', value, headers: { 'x-smoke': 'yes' } }] });

      const stream = await consumer.consume({
        topics: [topic],
        mode: 'earliest',
        autocommit: false,
        maxWaitTime: 500,
      });
      try {
        const received = await new Promise<{ key: string; value: string; header: string | undefined }>(
          (resolve, reject) => {
            const timer = setTimeout(() => reject(new Error('no message within 30 s')), 30_000);
            stream.once('data', (m) => {
              clearTimeout(timer);
              const got = { key: m.key, value: m.value, header: m.headers.get('x-smoke') };
              // Commit before closing, so the commit path is part of the smoke test.
              Promise.resolve(m.commit()).then(() => resolve(got), reject);
            });
            stream.once('error', (err) => {
              clearTimeout(timer);
              reject(err);
            });
          },
        );
        assert.deepEqual(received, { key: 'k1', value, header: 'yes' });
      } finally {
        await stream.close();
      }
      await admin.deleteTopics({ topics: [topic] });
    } finally {
      await consumer.close(true);
      await producer.close();
      await admin.close();
    }
  });
});
