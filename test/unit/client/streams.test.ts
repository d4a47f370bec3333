/**
 * The SDK on the streaming RPCs: producers on Publish, consumers on Subscribe with in-stream acks.
 * Thousands of messages through `for await` with `await m.ack()`, none lost or duplicated; and a
 * consumer that loses its gateway (dropped connection, killed and restarted process) reconnects
 * by itself and receives the rest.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, test } from 'node:test';
import { type ConsumerStatus, MQClient, type ReceivedMessage } from '../../../src/client/index.js';
import { PublishChannel } from '../../../src/client/publish-stream.js';
import { Rpc } from '../../../src/client/rpc.js';
import type { Gateway } from '../../../src/gateway/server.js';
import { call, rawClient } from '../../support/gateway.js';
import { eventually, withLeakCheck } from '../../support/leaks.js';
import { ChildGateway, freePort, metric, Relay, startTestGateway, uniq, within } from './helpers.js';

let gateway: Gateway;

before(async () => {
  gateway = await startTestGateway();
});
after(async () => {
  await gateway.close();
});

/** gRPC calls the gateway finished, by method (all status codes). */
async function rpcCalls(gw: Gateway): Promise<Map<string, number>> {
  const m = gw.metrics.registry.getSingleMetric('mqgate_rpc_requests_total');
  const out = new Map<string, number>();
  for (const v of (await m?.get())?.values ?? []) {
    const method = String(v.labels.method);
    out.set(method, (out.get(method) ?? 0) + v.value);
  }
  return out;
}

test('for await with await m.ack(): 5,000 messages published on Publish and consumed on Subscribe, none lost, none duplicated', async () => {
  const client = new MQClient({ grpcEndpoint: `127.0.0.1:${gateway.grpcPort}` });
  try {
    const topic = uniq('t');
    const consumer = await client.getConsumer('', topic, uniq('g'), '*', { prefetch: 64 });
    const statuses: ConsumerStatus[] = [];
    consumer.on('status', (s) => statuses.push(s));
    const producer = await client.getProducer('', topic);
    const N = 5000;
    const publishing = (async () => {
      // Sends of one turn share a frame: 500 at a time, keyed and not.
      for (let i = 0; i < N; i += 500) {
        await Promise.all(
          Array.from({ length: 500 }, (_, j) =>
            (i + j) % 3 === 0
              ? producer.publishOrderedMessage(`m${i + j}`, undefined, undefined, `k${(i + j) % 7}`)
              : producer.publishMessage(`m${i + j}`),
          ),
        );
      }
    })();
    const seen = new Map<string, number>();
    const order = new Map<string, number[]>();
    let n = 0;
    const consuming = (async () => {
      for await (const m of consumer) {
        seen.set(m.body, (seen.get(m.body) ?? 0) + 1);
        const i = Number(m.body.slice(1));
        if (i % 3 === 0) {
          const k = m.shardingKey;
          order.set(k ?? '', [...(order.get(k ?? '') ?? []), i]);
        }
        await m.ack();
        if (++n === N) break;
      }
    })();
    await within(publishing, 60_000, 'publishing 5,000');
    assert.equal(producer.streaming, true, 'the producer stayed on Publish');
    await within(consuming, 60_000, `5,000 deliveries (got ${n})`);
    assert.equal(seen.size, N, `${N - seen.size} messages never arrived`);
    const dups = [...seen].filter(([, c]) => c > 1).map(([b]) => b);
    assert.deepEqual(dups.slice(0, 10), [], `${dups.length} duplicates without a reconnect`);
    for (const [k, ns] of order)
      assert.deepEqual(
        ns,
        [...ns].sort((a, b) => a - b),
        `key ${k} in order`,
      );
    assert.deepEqual(
      statuses.map((s) => s.type).filter((t) => t !== 'closed'),
      [],
      'no disconnect, reconnect or lost ack',
    );
    await eventually(() => metric(gateway, 'messages_acked') >= N, 'every ack counted on the gateway');
    // Breaking out of the loop closed the consumer.
    assert.equal(consumer.closed, true);
    await producer.close();
    const calls = await rpcCalls(gateway);
    assert.equal(calls.get('Subscribe'), 1, 'one Subscribe stream');
    assert.equal(calls.get('Publish'), 1, 'one Publish stream');
    for (const legacy of ['ReceiveMessages', 'AckMessage', 'SendMessage', 'SendOrderedMessage']) {
      assert.equal(calls.get(legacy) ?? 0, 0, `${legacy} was used`);
    }
  } finally {
    await client.close();
  }
});

test('an SDK client closed mid-stream (a Subscribe consumer iterating, a Publish producer sending) leaves no handle, and the gateway no stream, session or producer', async () => {
  await withLeakCheck(async () => {
    const client = new MQClient({ grpcEndpoint: `127.0.0.1:${gateway.grpcPort}` });
    const topic = uniq('t');
    const consumer = await client.getConsumer('', topic, uniq('g'), '*', { prefetch: 32 });
    const producer = await client.getProducer('', topic);
    let stop = false;
    const sendErrors = new Set<string>();
    const sending = (async () => {
      for (let i = 0; !stop; i++) {
        const batch = Array.from({ length: 20 }, (_, j) => producer.publishMessage(`m${i * 20 + j}`));
        for (const r of await Promise.allSettled(batch)) {
          if (r.status === 'rejected') {
            sendErrors.add((r.reason as { code: string }).code);
            stop = true;
          }
        }
      }
    })();
    let n = 0;
    const consuming = (async () => {
      for await (const m of consumer) {
        n++;
        // Half acked, half left unacked: close must release those.
        if (n % 2 === 0) await m.ack();
      }
    })();
    await eventually(() => n >= 200, 'messages flowing both ways');
    await eventually(
      () => metric(gateway, 'active_streams') === 1 && metric(gateway, 'publish_streams') === 1,
      'one Subscribe and one Publish stream on the gateway',
    );
    await client.close();
    stop = true;
    await sending;
    await consuming;
    // Sends cut short by the close fail with CLOSED, nothing else.
    assert.deepEqual(
      [...sendErrors].filter((c) => c !== 'CLOSED'),
      [],
    );
    await eventually(
      () =>
        metric(gateway, 'active_streams') === 0 &&
        metric(gateway, 'publish_streams') === 0 &&
        metric(gateway, 'active_consumers') === 0 &&
        metric(gateway, 'producer_handles') === 0 &&
        metric(gateway, 'inflight_deliveries') === 0,
      'nothing left on the gateway',
    );
  });
});

test('a dropped connection mid-stream: the consumer resumes its session on Subscribe and receives every message, the producer carries on over Publish', async () => {
  const gw = await startTestGateway();
  const relay = await new Relay(gw.grpcPort).listen();
  const client = new MQClient({
    grpcEndpoint: `127.0.0.1:${relay.port}`,
    retry: { maxAttempts: 50, initialDelayMs: 20, maxDelayMs: 300 },
  });
  try {
    const topic = uniq('t');
    const consumer = await client.getConsumer('', topic, uniq('g'), '*', {
      reconnect: { initialDelayMs: 20, maxDelayMs: 300 },
    });
    const statuses: ConsumerStatus[] = [];
    consumer.on('status', (s) => statuses.push(s));
    const sessionId = consumer.consumerId;
    const producer = await client.getProducer('', topic);
    const got = new Map<string, number>();
    const consuming = (async () => {
      for await (const m of consumer) {
        got.set(m.body, (got.get(m.body) ?? 0) + 1);
        await m.ack();
      }
    })();
    const N = 2000;
    let sent = 0;
    const failures: unknown[] = [];
    const publishing = (async () => {
      for (let i = 0; i < N; i += 50) {
        const batch = Array.from({ length: 50 }, (_, j) => `m${i + j}`);
        const results = await Promise.allSettled(batch.map((b) => producer.publishMessage(b)));
        for (const r of results) {
          if (r.status === 'fulfilled') sent++;
          else failures.push(r.reason);
        }
      }
    })();
    await eventually(() => got.size >= N / 4, 'a quarter delivered before the cut', 30_000);
    relay.cut();
    await within(publishing, 60_000, 'publishing across the cut');
    // Retries make every send succeed; one whose answer was lost may have been stored twice.
    assert.deepEqual(failures, []);
    assert.equal(sent, N);
    await eventually(
      () => Array.from({ length: N }, (_, i) => `m${i}`).every((b) => got.has(b)),
      'every message delivered after the cut',
      30_000,
    );
    assert.equal(consumer.consumerId, sessionId, 'the session was resumed, not re-created');
    assert.ok(statuses.some((s) => s.type === 'disconnected'));
    assert.ok(!statuses.some((s) => s.type === 'session-created' || s.type === 'failed'));
    assert.equal(producer.streaming, true);
    await consumer.close();
    await consuming;
    await eventually(() => metric(gw, 'inflight_deliveries') === 0, 'nothing left in flight');
  } finally {
    await client.close();
    await relay.close();
    await gw.close();
  }
});

/** A gateway child process on a fixed port, and a client patient enough for its restart. */
async function restartable(): Promise<{ child: ChildGateway; client: MQClient }> {
  const port = await freePort();
  const child = new ChildGateway(port);
  const client = new MQClient({
    grpcEndpoint: `127.0.0.1:${port}`,
    retry: { maxAttempts: 400, initialDelayMs: 50, maxDelayMs: 250 },
    callTimeoutMs: 5000,
  });
  child.start();
  await eventually(
    async () => (await client.healthCheck().catch(() => ({ healthy: false }))).healthy,
    'the gateway to start',
    30_000,
  );
  return { child, client };
}

test('the gateway killed and restarted mid-stream: the Subscribe consumer reconnects with a new session and receives the rest', async () => {
  const { child, client } = await restartable();
  try {
    const topic = uniq('t');
    const consumer = await client.getConsumer('', topic, uniq('g'), '*', {
      reconnect: { initialDelayMs: 50, maxDelayMs: 250 },
    });
    const statuses: ConsumerStatus[] = [];
    consumer.on('status', (s) => statuses.push(s));
    const errors: Error[] = [];
    consumer.on('error', (e) => errors.push(e));
    const firstSession = consumer.consumerId;
    const got = new Set<string>();
    const consuming = (async () => {
      for await (const m of consumer as AsyncIterable<ReceivedMessage>) {
        got.add(m.body);
        await m.ack();
      }
    })();
    const before = await client.getProducer('', topic);
    await Promise.all(Array.from({ length: 100 }, (_, i) => before.publishMessage(`before-${i}`)));
    await eventually(() => got.size === 100, 'the messages before the restart', 15_000);

    await child.kill('SIGKILL');
    child.start();
    await eventually(
      () => statuses.some((s) => s.type === 'session-created'),
      'the consumer to open a new session on the new gateway',
      30_000,
    );
    // A producer made after the restart: what this test checks is the consumer.
    const after = await client.getProducer('', topic);
    await Promise.all(Array.from({ length: 500 }, (_, i) => after.publishMessage(`after-${i}`)));
    assert.equal(after.streaming, true);
    await eventually(
      () => Array.from({ length: 500 }, (_, i) => `after-${i}`).every((b) => got.has(b)),
      'every message sent after the restart',
      30_000,
    );
    assert.notEqual(consumer.consumerId, firstSession);
    assert.ok(statuses.some((s) => s.type === 'disconnected'));
    assert.ok(!statuses.some((s) => s.type === 'failed'));
    assert.deepEqual(
      errors.map((e) => e.message),
      [],
    );
    await consumer.close();
    await consuming;
  } finally {
    await client.close();
    await child.kill('SIGTERM');
  }
});

test('the gateway killed and restarted under a Publish producer: 500 concurrent sends across the restart all succeed, the handle re-created once', async () => {
  const { child, client } = await restartable();
  try {
    const topic = uniq('t');
    const producer = await client.getProducer('', topic);
    await producer.publishMessage('before');
    const firstHandle = producer.producerId;
    await child.kill('SIGKILL');
    // Sent while the gateway is down: each retries (UNAVAILABLE) until the new one answers, and
    // the first to reach it finds the handle gone and re-creates it for all.
    const sends = Array.from({ length: 500 }, (_, i) => producer.publishMessage(`after-${i}`));
    child.start();
    const results = await within(Promise.allSettled(sends), 60_000, 'the sends across the restart');
    const failed = results.flatMap((r) =>
      r.status === 'rejected' ? [String((r.reason as Error).message)] : [],
    );
    assert.deepEqual(
      failed.slice(0, 3),
      [],
      `${failed.length} of 500 sends failed across the restart, e.g. ${failed[0] ?? ''}`,
    );
    assert.notEqual(producer.producerId, firstHandle);
    assert.equal(producer.streaming, true);
  } finally {
    await client.close();
    await child.kill('SIGTERM');
  }
});

test('a Publish stream that ends after the producer moved on to another stream does not fail the sends of the new stream', async () => {
  // What a re-created handle does inside the SDK: sends still carrying the old id open a stream
  // with it while others already use the new one. Driven directly on the producer's channel.
  const rpc = new Rpc({ address: `127.0.0.1:${gateway.grpcPort}`, callTimeoutMs: 5000 });
  const raw = rawClient(gateway.grpcPort);
  try {
    const topic = uniq('t');
    const create = async (): Promise<string> =>
      (await call<{ producer_id: string }>(raw, 'CreateProducer', { topic })).producer_id;
    const sent0 = metric(gateway, 'messages_sent');

    // 1. The older stream names a producer the gateway does not know (ends NOT_FOUND).
    const valid = await create();
    const stale = new PublishChannel(rpc, 5000);
    const unknown = assert.rejects(stale.send(randomUUID(), { message_body: 'stale' }), {
      code: 'NOT_FOUND',
    });
    const good = Promise.allSettled(
      Array.from({ length: 50 }, (_, i) => stale.send(valid, { message_body: `good-${i}` })),
    );
    await unknown;
    const r1 = await good;
    await eventually(() => metric(gateway, 'messages_sent') - sent0 === 50, 'the gateway stored the 50');
    const wrong1 = r1.flatMap((r) => (r.status === 'rejected' ? [(r.reason as { code: string }).code] : []));

    // 2. The older stream ends OK (it was half-closed when the producer moved on).
    const moved = new PublishChannel(rpc, 5000);
    await moved.send(valid, { message_body: 'first' });
    const other = await create();
    const later = Array.from({ length: 50 }, (_, i) => moved.send(other, { message_body: `later-${i}` }));
    const r2 = await Promise.allSettled(later);
    await eventually(
      () => metric(gateway, 'messages_sent') - sent0 === 101,
      'the gateway stored the 50 more',
    );
    const wrong2 = r2.flatMap((r) => (r.status === 'rejected' ? [(r.reason as { code: string }).code] : []));
    stale.close();
    moved.close();
    assert.deepEqual(
      { afterNotFound: wrong1.length, afterOk: wrong2.length },
      { afterNotFound: 0, afterOk: 0 },
      `sends the gateway stored were reported failed: ${wrong1[0] ?? ''} ${wrong2[0] ?? ''} (a retry of the UNAVAILABLE ones stores them twice)`,
    );
  } finally {
    raw.close();
    rpc.close();
  }
});
