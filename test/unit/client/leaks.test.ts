import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { MQClient } from '../../../src/client/index.js';
import type { Gateway } from '../../../src/gateway/server.js';
import { eventually, withLeakCheck } from '../../support/leaks.js';
import { metric, startTestGateway, uniq } from './helpers.js';

let gateway: Gateway;
let address: string;

before(async () => {
  gateway = await startTestGateway();
  address = `127.0.0.1:${gateway.grpcPort}`;
});

after(async () => {
  await gateway.close();
});

test('a producer closed, then its client: no handle left, the gateway released the handle', async () => {
  await withLeakCheck(async () => {
    const client = new MQClient({ grpcEndpoint: address });
    const producer = await client.getProducer('', uniq('t'));
    await producer.publishMessage('x');
    assert.equal(metric(gateway, 'producer_handles'), 1);
    await producer.close();
    await producer.close();
    assert.equal(metric(gateway, 'producer_handles'), 0);
    await client.close();
  });
});

test('a consumer closed mid-stream, then its client: no handle left, the session released', async () => {
  await withLeakCheck(async () => {
    const client = new MQClient({ grpcEndpoint: address });
    const topic = uniq('t');
    const consumer = await client.getConsumer('', topic, uniq('g'));
    const producer = await client.getProducer('', topic);
    await producer.publishMessage('one');
    await producer.publishMessage('two');
    const it = consumer[Symbol.asyncIterator]();
    const first = await it.next();
    assert.equal(first.done, false);
    await eventually(() => metric(gateway, 'active_streams') === 1, 'the stream on the gateway');
    await consumer.close();
    assert.equal(metric(gateway, 'active_consumers'), 0);
    // The message handed out but never acked went back to the broker with the stream.
    assert.equal(metric(gateway, 'inflight_deliveries'), 0);
    assert.deepEqual(await it.next(), { value: undefined, done: true });
    await client.close();
  });
});

test('client.close() alone closes every producer and consumer it made, in every state', async () => {
  await withLeakCheck(async () => {
    const client = new MQClient({ grpcEndpoint: address });
    const topic = uniq('t');
    const handled = await client.getConsumer('', topic, uniq('g'), '*', { autoAck: true });
    let n = 0;
    handled.onMessage(() => {
      n++;
    });
    const iterated = await client.getConsumer('', topic, uniq('g'));
    const pending = iterated[Symbol.asyncIterator]().next();
    await client.getConsumer('', topic, uniq('g'));
    const producer = await client.getProducer('', topic);
    await producer.publishMessage('m');
    await eventually(() => n === 1, 'the handler');
    const m = await pending;
    assert.equal(m.done, false);
    await eventually(() => metric(gateway, 'active_streams') === 2, 'both streams');
    await client.close();
    assert.equal(metric(gateway, 'producer_handles'), 0);
    assert.equal(metric(gateway, 'active_consumers'), 0);
    assert.equal(metric(gateway, 'active_streams'), 0);
    assert.equal(producer.closed, true);
    assert.equal(handled.closed && iterated.closed, true);
  });
});

test('a client that never connected closes without a trace', async () => {
  await withLeakCheck(async () => {
    const client = new MQClient({ grpcEndpoint: address });
    await client.close();
  });
});
