import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { test } from 'node:test';
import { startChildGateway } from '../../support/child-gateway.js';
import { call, type RawClient, rawClient, receive } from '../../support/gateway.js';
import { eventually } from '../../support/leaks.js';

const keys = { endpoint: 'e', access_key_id: 'AK', access_key_secret: 'S', instance_id: 'i' };

test('SIGTERM during steady publishing and consuming: exit 0 within the deadline, acknowledged sends were accepted, streams end UNAVAILABLE', async () => {
  const gw = await startChildGateway({ SHUTDOWN_TIMEOUT: '5s' });
  const client: RawClient = rawClient(gw.grpcPort);
  try {
    const topic = `t-${randomUUID()}`;
    const { consumer_id } = await call<{ consumer_id: string }>(client, 'CreateConsumer', {
      ...keys,
      topic,
      group_id: 'g',
    });
    const stream = receive(client, consumer_id);
    const { producer_id } = await call<{ producer_id: string }>(client, 'CreateProducer', { ...keys, topic });
    const acknowledged = new Set<string>();
    let refused = 0;
    let stop = false;
    const publishers = Array.from({ length: 4 }, async (_, w) => {
      for (let i = 0; !stop; i++) {
        try {
          const r = await call<{ message_id: string }>(client, 'SendMessage', {
            producer_id,
            message_body: `${w}-${i}`,
          });
          acknowledged.add(r.message_id);
        } catch (err) {
          const code = (err as { code: number }).code;
          assert.ok(code === 14 || code === 1, `sends after the signal fail with UNAVAILABLE, got ${code}`);
          refused++;
          stop = true;
        }
      }
    });
    const acker = (async () => {
      while (!stream.ended) {
        for (const m of stream.messages.splice(0)) {
          await call(client, 'AckMessage', { consumer_id, receipt_handle: m.receipt_handle }).catch(() => {});
        }
        await new Promise((r) => setTimeout(r, 5));
      }
    })();
    await eventually(() => acknowledged.size >= 300, 'steady traffic', 20_000);
    const t0 = Date.now();
    gw.kill('SIGTERM');
    const code = await gw.exited;
    const took = Date.now() - t0;
    stop = true;
    await Promise.all([...publishers, acker]);
    assert.equal(code, 0, 'exit code 0');
    assert.ok(took < 6_000, `exited within SHUTDOWN_TIMEOUT (took ${took} ms)`);
    await eventually(() => stream.ended, 'the stream to end');
    assert.equal(stream.error?.code, 14, 'the stream ends with UNAVAILABLE: reconnect');
    assert.match(stream.error?.details ?? '', /shutting down/);
    const stopped = gw.logs.find((l) => l.msg === 'mqgate gateway stopped');
    assert.ok(stopped, 'the gateway logged its final counters');
    // messages_sent counts only sends the broker accepted; every acknowledged send is among them.
    assert.ok(
      (stopped.messages_sent as number) >= acknowledged.size,
      `broker accepted ${stopped.messages_sent}, clients saw ${acknowledged.size} acknowledged`,
    );
    console.log(
      `acknowledged sends: ${acknowledged.size}, refused after signal: ${refused}, shutdown took ${took} ms`,
    );
  } finally {
    client.close();
    if (gw.process.exitCode === null) gw.kill('SIGKILL');
  }
});

test('a second signal exits at once', async () => {
  const gw = await startChildGateway({ SHUTDOWN_TIMEOUT: '30s' });
  const client = rawClient(gw.grpcPort);
  try {
    // An open stream keeps a graceful shutdown busy only briefly; the second signal must not wait.
    gw.kill('SIGTERM');
    gw.kill('SIGTERM');
    const code = await gw.exited;
    assert.ok(code === 0 || code === 130, `exit code ${code}`);
  } finally {
    client.close();
    if (gw.process.exitCode === null) gw.kill('SIGKILL');
  }
});

test('an invalid setting stops start-up naming the variable and what it accepts', async () => {
  await assert.rejects(
    startChildGateway({ ACK_TIMEOUT: '30' }, 15_000),
    /invalid value "30" for ACK_TIMEOUT: .*500ms, 30s/,
  );
  await assert.rejects(startChildGateway({ MESSAGE_BUFFER_SIZE: '-1' }, 15_000), /MESSAGE_BUFFER_SIZE/);
  await assert.rejects(startChildGateway({ BROKERS: 'ftp://x' }, 15_000), /BROKERS/);
});
