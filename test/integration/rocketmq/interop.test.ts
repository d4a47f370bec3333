/**
 * The adapter speaks plain RocketMQ: a stock rocketmq-client-nodejs SimpleConsumer reads what it
 * sends with tag, keys and properties intact, and it reads what a stock Producer sends.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Producer, SimpleConsumer } from 'rocketmq-client-nodejs';
import type { Broker } from '../../../src/brokers/broker.js';
import { bodyText } from '../../../src/core/message.js';
import { rocketMqEndpoint } from '../../support/brokers.js';
import { makeGroup, openTestBroker, TopicPool } from './helpers.js';

const pool = new TopicPool({ normal: 2, fifo: 0, delay: 0, transaction: 0 });
const quiet = { info() {}, warn() {}, error() {}, debug() {}, close() {} };

describe('rocketmq interop with plain rocketmq-client-nodejs', { timeout: 300_000 }, () => {
  let broker: Broker;
  before(async () => {
    broker = await openTestBroker();
  });
  after(async () => {
    await broker?.close();
  });

  test('adapter -> plain SimpleConsumer keeps tag, keys and properties', async () => {
    const topic = await pool.topic('normal');
    const group = await makeGroup(false);
    const consumer = new SimpleConsumer({
      endpoints: rocketMqEndpoint(),
      namespace: '',
      consumerGroup: group,
      subscriptions: new Map([[topic, 'blue']]),
      awaitDuration: 5_000,
      logger: quiet,
    });
    await consumer.startup();
    try {
      const p = await broker.producer(topic);
      const { messageId } = await p.send({
        body: 'from the adapter',
        tag: 'blue',
        businessKey: 'order-7',
        properties: { trace: 't-1', unicode: 'ünï ✓' },
      });
      await p.close();
      const deadline = Date.now() + 60_000;
      let found = false;
      while (!found && Date.now() < deadline) {
        for (const view of await consumer.receive(16, 15_000)) {
          await consumer.ack(view);
          if (view.messageId !== messageId) continue;
          found = true;
          assert.equal(view.body.toString(), 'from the adapter');
          assert.equal(view.tag, 'blue');
          assert.deepEqual(view.keys, ['order-7']);
          assert.equal(view.properties.get('trace'), 't-1');
          assert.equal(view.properties.get('unicode'), 'ünï ✓');
        }
      }
      assert.ok(found, 'the plain consumer received the message');
    } finally {
      await consumer.shutdown();
    }
  });

  test('plain Producer -> adapter keeps tag, keys and properties', async () => {
    const topic = await pool.topic('normal');
    const sub = await broker.subscribe({ topic, group: await makeGroup(false), filter: 'green' });
    const producer = new Producer({
      endpoints: rocketMqEndpoint(),
      namespace: '',
      topics: [topic],
      logger: quiet,
    });
    await producer.startup();
    try {
      const receipt = await producer.send({
        topic,
        tag: 'green',
        keys: ['biz-9'],
        properties: new Map([['source', 'plain']]),
        body: Buffer.from('from a plain producer'),
      });
      assert.ok(receipt);
      const it = sub[Symbol.asyncIterator]();
      const r = await it.next();
      assert.ok(!r.done);
      const m = r.value.message;
      assert.equal(m.id, receipt.messageId);
      assert.equal(bodyText(m), 'from a plain producer');
      assert.equal(m.tag, 'green');
      assert.equal(m.businessKey, 'biz-9');
      assert.deepEqual(m.properties, { source: 'plain' });
      assert.equal(m.key, undefined);
      await r.value.ack();
    } finally {
      await producer.shutdown();
      await sub.close();
    }
  });
});
