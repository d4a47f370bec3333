import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { test } from 'node:test';
import { Producer, SimpleConsumer } from 'rocketmq-client-nodejs';
import { createRocketMqGroup, createRocketMqTopic, rocketMqEndpoint } from '../support/brokers.js';
import { withLeakCheck } from '../support/leaks.js';

/** The client logs to ~/logs/rocketmq through egg-logger unless given a logger. */
const quiet = { info(): void {}, warn(): void {}, error(): void {} };

test('rocketmq smoke: the raw client publishes and consumes one message through the proxy', async () => {
  const topic = `smoke-${randomUUID()}`;
  const group = `smoke-${randomUUID()}`;
  // Created before any client asks: the proxy caches "topic not found" for about 20 s.
  await Promise.all([createRocketMqTopic(topic, 'NORMAL'), createRocketMqGroup(group)]);

  await withLeakCheck(async () => {
    const endpoints = rocketMqEndpoint();
    const producer = new Producer({ endpoints, namespace: '', logger: quiet, topics: [topic] });
    const consumer = new SimpleConsumer({
      endpoints,
      namespace: '',
      logger: quiet,
      consumerGroup: group,
      subscriptions: new Map([[topic, '*']]),
      // The proxy rejects long polls shorter than 5 s.
      awaitDuration: 10_000,
    });
    try {
      await producer.startup();
      await consumer.startup();
      const body = Buffer.from(`hello ${randomUUID()} \u00e9\u4e2d`);
      const receipt = await producer.send({
        topic,
        tag: 'smoke',
        keys: ['k1'],
        properties: new Map([['x-smoke', 'yes']]),
        body,
      });
      assert.ok(receipt.messageId, 'send returns a message id');

      const deadline = Date.now() + 60_000;
      let got:
        | { body: string; tag: string | undefined; keys: string[]; prop: string | undefined; id: string }
        | undefined;
      while (!got && Date.now() < deadline) {
        for (const m of await consumer.receive(1, 30_000)) {
          got = {
            body: m.body.toString(),
            tag: m.tag,
            keys: m.keys,
            prop: m.properties.get('x-smoke'),
            id: m.messageId,
          };
          await consumer.ack(m);
        }
      }
      assert.deepEqual(got, {
        body: body.toString(),
        tag: 'smoke',
        keys: ['k1'],
        prop: 'yes',
        id: receipt.messageId,
      });
    } finally {
      await consumer.shutdown();
      await producer.shutdown();
    }
  });
});
