import assert from 'node:assert/strict';
import { test } from 'node:test';
import { type ConsumerStatus, MQClient } from '../../../src/client/index.js';
import { eventually } from '../../support/leaks.js';
import { ChildGateway, freePort, Relay, startTestGateway, uniq } from './helpers.js';

test('a dropped connection: the consumer resumes the same session and the producer carries on', async () => {
  const gateway = await startTestGateway();
  const relay = await new Relay(gateway.grpcPort).listen();
  const client = new MQClient({
    grpcEndpoint: `127.0.0.1:${relay.port}`,
    retry: { maxAttempts: 50, maxDelayMs: 300 },
  });
  try {
    const topic = uniq('t');
    const consumer = await client.getConsumer('', topic, uniq('g'), '*', {
      autoAck: true,
      reconnect: { maxDelayMs: 300 },
    });
    const statuses: ConsumerStatus[] = [];
    consumer.on('status', (s) => statuses.push(s));
    const got = new Set<string>();
    consumer.onMessage((m) => {
      got.add(m.body);
    });
    const producer = await client.getProducer('', topic);
    const sessionId = consumer.consumerId;
    await producer.publishMessage('before');
    await eventually(() => got.has('before'), 'the first message');

    relay.cut();
    await eventually(() => statuses.some((s) => s.type === 'disconnected'), 'the consumer to notice');
    // The gateway kept the session (CONSUMER_CLEANUP_TIMEOUT grace); the consumer re-attached to it.
    await eventually(() => gateway.metrics.json().active_streams === 1, 'the stream to come back', 15_000);
    for (let i = 0; i < 5; i++) await producer.publishMessage(`after-${i}`);
    await eventually(() => [0, 1, 2, 3, 4].every((i) => got.has(`after-${i}`)), 'the messages sent after');
    assert.equal(consumer.consumerId, sessionId);
    assert.equal(
      statuses.some((s) => s.type === 'session-created'),
      false,
    );
    assert.equal(gateway.metrics.json().active_consumers, 1);
  } finally {
    await client.close();
    await relay.close();
    await gateway.close();
  }
});

test('the gateway killed and restarted: consumer and producer carry on by themselves', async () => {
  const port = await freePort();
  const child = new ChildGateway(port);
  const client = new MQClient({
    grpcEndpoint: `127.0.0.1:${port}`,
    // Long enough for a restart on a slow machine: up to 400 attempts, at most 250 ms apart.
    retry: { maxAttempts: 400, initialDelayMs: 50, maxDelayMs: 250 },
    callTimeoutMs: 5000,
  });
  let stopSending = false;
  let sender: Promise<void> = Promise.resolve();
  try {
    child.start();
    await eventually(
      async () => (await client.healthCheck().catch(() => ({ healthy: false }))).healthy,
      'the gateway to start',
      30_000,
    );
    const topic = uniq('t');
    const consumer = await client.getConsumer('', topic, uniq('g'), '*', {
      autoAck: true,
      reconnect: { initialDelayMs: 50, maxDelayMs: 250 },
    });
    const statuses: ConsumerStatus[] = [];
    consumer.on('status', (s) => statuses.push(s));
    const errors: Error[] = [];
    consumer.on('error', (err) => errors.push(err));
    const got = new Set<string>();
    consumer.onMessage((m) => {
      got.add(m.body);
    });
    const producer = await client.getProducer('', topic);
    const firstSession = consumer.consumerId;
    await producer.publishMessage('before');
    await eventually(() => got.has('before'), 'a message before the restart');

    // A producer sending all along, across the outage: every send must eventually succeed.
    let sent = 0;
    const sendErrors: unknown[] = [];
    sender = (async () => {
      for (let i = 0; !stopSending; i++) {
        try {
          await producer.publishMessage(`during-${i}`);
          sent++;
        } catch (err) {
          sendErrors.push(err);
        }
        await new Promise((r) => setTimeout(r, 20));
      }
    })();
    await eventually(() => sent >= 5, 'some sends before the kill');

    await child.kill('SIGKILL');
    const sentAtKill = sent;
    child.start();

    // The new gateway knows neither the producer handle nor the consumer session: both are
    // re-created without the test touching them.
    await eventually(
      () => statuses.some((s) => s.type === 'session-created'),
      'the consumer to open a new session',
      30_000,
    );
    assert.notEqual(consumer.consumerId, firstSession);
    await eventually(() => sent >= sentAtKill + 5, 'the producer to send again', 30_000);
    // The embedded broker lost everything with the old process: assert on what was sent after.
    for (let i = 0; i < 10; i++) await producer.publishMessage(`after-${i}`);
    await eventually(
      () => [...Array(10).keys()].every((i) => got.has(`after-${i}`)),
      'every message sent after the restart',
      15_000,
    );
    stopSending = true;
    await sender;
    assert.deepEqual(sendErrors, []);
    assert.ok(statuses.some((s) => s.type === 'disconnected'));
    assert.ok(statuses.some((s) => s.type === 'reconnecting'));
    assert.ok(!statuses.some((s) => s.type === 'failed'));
    // Acks of messages that arrived just before the kill may be lost (reported as ack-lost
    // status, not errors); nothing else may fail.
    assert.deepEqual(
      errors.map((e) => e.message),
      [],
    );
  } finally {
    stopSending = true;
    await client.close();
    await sender;
    await child.kill('SIGTERM');
  }
});
