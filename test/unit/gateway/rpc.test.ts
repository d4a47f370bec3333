import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { call, metricsJson, receive, startTestGateway, type TestGateway } from '../../support/gateway.js';
import { eventually, withLeakCheck } from '../../support/leaks.js';

const ENDPOINT = 'rmq.example.internal:8081';
const keys = { endpoint: ENDPOINT, access_key_id: 'AK1', access_key_secret: 'secret-1', instance_id: 'inst' };

describe('every RPC, as existing clients call it', () => {
  let gw: TestGateway;
  before(async () => {
    gw = await startTestGateway({ ackTimeoutMs: 60_000 });
  });
  after(async () => gw.close());

  async function producer(topic: string): Promise<string> {
    const res = await call<{ success: boolean; producer_id: string }>(gw.client, 'CreateProducer', {
      ...keys,
      topic,
    });
    assert.equal(res.success, true);
    assert.ok(res.producer_id);
    return res.producer_id;
  }

  async function consumer(topic: string, group: string, tag_expression = '*'): Promise<string> {
    const res = await call<{ success: boolean; consumer_id: string }>(gw.client, 'CreateConsumer', {
      ...keys,
      topic,
      group_id: group,
      tag_expression,
    });
    assert.equal(res.success, true);
    return res.consumer_id;
  }

  test('HealthCheck answers healthy', async () => {
    const res = await call<{ healthy: boolean; message: string }>(gw.client, 'HealthCheck', {});
    assert.deepEqual(res, { healthy: true, message: 'OK' });
  });

  test('SendMessage → ReceiveMessages → AckMessage round trip with tag, keys, properties', async () => {
    const topic = `t-${randomUUID()}`;
    const cid = await consumer(topic, `g-${randomUUID()}`);
    const stream = receive(gw.client, cid);
    const pid = await producer(topic);
    const sent = await call<{ success: boolean; message_id: string }>(gw.client, 'SendMessage', {
      producer_id: pid,
      message_body: JSON.stringify({ hello: 'world' }),
      tag: 'created',
      properties: { properties: { tenant: 'a' }, message_key: 'order-1' },
    });
    assert.equal(sent.success, true);
    assert.ok(sent.message_id);
    await eventually(() => stream.messages.length === 1, 'the message to arrive');
    const m = stream.messages[0]!;
    assert.equal(m.message_id, sent.message_id);
    assert.equal(m.message_body, '{"hello":"world"}');
    assert.equal(m.tag, 'created');
    assert.equal(m.topic, topic);
    assert.equal(m.properties.tenant, 'a');
    assert.equal(m.properties.KEYS, 'order-1');
    assert.equal(typeof m.born_timestamp, 'string', 'int64 arrives as a string for longs: String clients');
    assert.ok(Math.abs(Number(m.born_timestamp) - Date.now()) < 60_000);
    assert.equal(m.reconsume_times, 0);
    const ack = await call<{ success: boolean }>(gw.client, 'AckMessage', {
      consumer_id: cid,
      receipt_handle: m.receipt_handle,
    });
    assert.equal(ack.success, true);
    // Acking twice is harmless.
    assert.equal(
      (
        await call<{ success: boolean }>(gw.client, 'AckMessage', {
          consumer_id: cid,
          receipt_handle: m.receipt_handle,
        })
      ).success,
      true,
    );
    stream.end();
    const counts = await metricsJson(gw.metricsUrl);
    assert.ok(counts.messages_sent >= 1 && counts.messages_acked >= 1);
  });

  test('binary bodies travel byte for byte in message_body_bytes', async () => {
    const topic = `t-${randomUUID()}`;
    const cid = await consumer(topic, `g-${randomUUID()}`);
    const stream = receive(gw.client, cid);
    const pid = await producer(topic);
    const body = Buffer.from([0, 255, 254, 0xc3, 0x28, 10, 13, 0]);
    await call(gw.client, 'SendMessage', { producer_id: pid, message_body_bytes: body });
    await eventually(() => stream.messages.length === 1, 'the binary message');
    assert.deepEqual(Buffer.from(stream.messages[0]!.message_body_bytes), body);
    stream.end();
  });

  test('a 3 MiB text body reaches a client with the default 4 MiB receive limit (regression: bodies were sent twice)', async () => {
    const topic = `t-${randomUUID()}`;
    const cid = await consumer(topic, `g-${randomUUID()}`);
    const stream = receive(gw.client, cid);
    const pid = await producer(topic);
    const body = 'x'.repeat(3 * 1024 * 1024);
    await call(gw.client, 'SendMessage', { producer_id: pid, message_body: body });
    await eventually(() => stream.messages.length === 1 || stream.ended, 'the large message');
    assert.equal(stream.error, undefined);
    assert.equal(stream.messages[0]!.message_body.length, body.length);
    assert.equal(stream.messages[0]!.message_body_bytes.length, 0, 'valid UTF-8 travels once, as text');
    stream.end();
  });

  test('SendMessages publishes a batch with a result per entry; AckMessages acks many at once', async () => {
    const topic = `t-${randomUUID()}`;
    const cid = await consumer(topic, `g-${randomUUID()}`);
    const stream = receive(gw.client, cid);
    const pid = await producer(topic);
    const messages = [];
    for (let i = 0; i < 60; i++)
      messages.push({ message_body: `k${i % 3}:${i}`, sharding_key: `k${i % 3}`, tag: 'batch' });
    messages.splice(10, 0, { message_body: 'bad', tag: 'a||b' } as never);
    const res = await call<{
      success: boolean;
      message: string;
      results: Array<{ success: boolean; message: string; message_id: string }>;
    }>(gw.client, 'SendMessages', { producer_id: pid, messages });
    assert.equal(res.success, false, 'one entry failed');
    assert.match(res.message, /1 of 61 messages failed/);
    assert.equal(res.results.length, 61);
    assert.match(res.results[10]!.message, /^INVALID_ARGUMENT: tag "a\|\|b" is invalid/);
    assert.equal(res.results.filter((r) => r.success && r.message_id).length, 60);
    const seen: string[] = [];
    await eventually(async () => {
      const batch = stream.messages.splice(0);
      if (batch.length > 0) {
        seen.push(...batch.map((m) => m.message_body));
        const acked = await call<{ success: boolean; results: Array<{ success: boolean }> }>(
          gw.client,
          'AckMessages',
          {
            consumer_id: cid,
            receipt_handles: [...batch.map((m) => m.receipt_handle), 'no-such-handle'],
          },
        );
        assert.equal(acked.success, false);
        assert.deepEqual(
          acked.results.map((r) => r.success),
          [...batch.map(() => true), false],
        );
      }
      return seen.length === 60;
    }, 'all sixty');
    for (const k of ['k0', 'k1', 'k2']) {
      const nums = seen.filter((b) => b.startsWith(`${k}:`)).map((b) => Number(b.split(':')[1]));
      assert.deepEqual(
        nums,
        [...nums].sort((a, b) => a - b),
        `${k} kept its batch order`,
      );
    }
    stream.end();
  });

  test('SendOrderedMessage keeps per-sharding-key order', async () => {
    const topic = `t-${randomUUID()}`;
    const cid = await consumer(topic, `g-${randomUUID()}`);
    const stream = receive(gw.client, cid);
    const pid = await producer(topic);
    for (let i = 0; i < 30; i++) {
      await call(gw.client, 'SendOrderedMessage', {
        producer_id: pid,
        message_body: `${i % 3}:${i}`,
        sharding_key: `k${i % 3}`,
      });
    }
    // Ordered sessions hold a key's next message until the previous is acked: ack as they come.
    const seen: string[] = [];
    await eventually(async () => {
      for (const m of stream.messages.splice(0)) {
        seen.push(m.message_body);
        assert.equal(m.properties.SHARDING_KEY, `k${m.message_body.split(':')[0]}`);
        await call(gw.client, 'AckMessage', { consumer_id: cid, receipt_handle: m.receipt_handle });
      }
      return seen.length === 30;
    }, 'all ordered messages');
    for (const k of ['0', '1', '2']) {
      const nums = seen.filter((s) => s.startsWith(`${k}:`)).map((s) => Number(s.split(':')[1]));
      assert.deepEqual(
        nums,
        [...nums].sort((a, b) => a - b),
        `key k${k} in order`,
      );
    }
    stream.end();
  });

  test('SendDelayMessage with start_deliver_time and with a delay level', async () => {
    const topic = `t-${randomUUID()}`;
    const cid = await consumer(topic, `g-${randomUUID()}`);
    const stream = receive(gw.client, cid);
    const pid = await producer(topic);
    const t0 = Date.now();
    await call(gw.client, 'SendDelayMessage', {
      producer_id: pid,
      message_body: 'at',
      start_deliver_time: String(t0 + 700),
    });
    await call(gw.client, 'SendDelayMessage', {
      producer_id: pid,
      message_body: 'level1',
      delay_time_level: '1',
    });
    await eventually(() => stream.messages.length === 2, 'both delayed messages', 15_000);
    assert.ok(Date.now() - t0 >= 700, 'not delivered before its time');
    assert.deepEqual(stream.messages.map((m) => m.message_body).sort(), ['at', 'level1']);
    stream.end();
  });

  test('SendTransactionMessage is invisible until EndTransaction commits; rollback discards', async () => {
    const topic = `t-${randomUUID()}`;
    const cid = await consumer(topic, `g-${randomUUID()}`);
    const stream = receive(gw.client, cid);
    const pid = await producer(topic);
    const a = await call<{ transaction_id: string; message_id: string }>(
      gw.client,
      'SendTransactionMessage',
      {
        producer_id: pid,
        message_body: 'commit-me',
        trans_check_immunity_time: 60,
      },
    );
    const b = await call<{ transaction_id: string }>(gw.client, 'SendTransactionMessage', {
      producer_id: pid,
      message_body: 'roll-me-back',
    });
    assert.ok(a.transaction_id && b.transaction_id && a.transaction_id !== b.transaction_id);
    // A marker sent after both proves the half messages were skipped, not just slow.
    await call(gw.client, 'SendMessage', { producer_id: pid, message_body: 'marker' });
    await eventually(() => stream.messages.length === 1, 'the marker');
    assert.equal(stream.messages[0]!.message_body, 'marker');
    await call(gw.client, 'EndTransaction', { transaction_id: b.transaction_id, commit: false });
    await call(gw.client, 'EndTransaction', { transaction_id: a.transaction_id, commit: true });
    await eventually(() => stream.messages.length === 2, 'the committed message');
    assert.equal(stream.messages[1]!.message_body, 'commit-me');
    assert.equal(stream.messages[1]!.message_id, a.message_id);
    stream.end();
  });

  test('an unresolved transaction is committed after trans_check_immunity_time', async () => {
    const topic = `t-${randomUUID()}`;
    const cid = await consumer(topic, `g-${randomUUID()}`);
    const stream = receive(gw.client, cid);
    const pid = await producer(topic);
    const t0 = Date.now();
    const tx = await call<{ transaction_id: string }>(gw.client, 'SendTransactionMessage', {
      producer_id: pid,
      message_body: 'forgotten',
      properties: { trans_check_immunity_time: 1 },
    });
    await eventually(() => stream.messages.length === 1, 'the auto-committed message', 15_000);
    assert.ok(Date.now() - t0 >= 1000);
    // Committing later is harmless; rolling back is refused with the reason.
    await call(gw.client, 'EndTransaction', { transaction_id: tx.transaction_id, commit: true });
    await assert.rejects(
      call(gw.client, 'EndTransaction', { transaction_id: tx.transaction_id, commit: false }),
      {
        code: 9,
      },
    );
    stream.end();
  });

  test('tag expressions filter', async () => {
    const topic = `t-${randomUUID()}`;
    const cid = await consumer(topic, `g-${randomUUID()}`, 'a||b');
    const stream = receive(gw.client, cid);
    const pid = await producer(topic);
    for (const tag of ['a', 'c', 'b', '', 'a'])
      await call(gw.client, 'SendMessage', { producer_id: pid, message_body: tag, tag });
    await eventually(() => stream.messages.length === 3, 'the a and b messages');
    assert.deepEqual(
      stream.messages.map((m) => m.tag),
      ['a', 'b', 'a'],
    );
    stream.end();
  });

  test('NackMessage redelivers with reconsume_times + 1', async () => {
    const topic = `t-${randomUUID()}`;
    const cid = await consumer(topic, `g-${randomUUID()}`);
    const stream = receive(gw.client, cid);
    const pid = await producer(topic);
    await call(gw.client, 'SendMessage', { producer_id: pid, message_body: 'again' });
    await eventually(() => stream.messages.length === 1, 'the first delivery');
    await call(gw.client, 'NackMessage', {
      consumer_id: cid,
      receipt_handle: stream.messages[0]!.receipt_handle,
      delay_ms: '50',
    });
    await eventually(() => stream.messages.length === 2, 'the redelivery');
    assert.equal(stream.messages[1]!.reconsume_times, 1);
    assert.equal(stream.messages[1]!.message_id, stream.messages[0]!.message_id);
    stream.end();
  });

  test('two groups each get every message; sessions of one group share them', async () => {
    const topic = `t-${randomUUID()}`;
    const g1 = `g-${randomUUID()}`;
    const [a1, a2, b] = await Promise.all([
      consumer(topic, g1),
      consumer(topic, g1),
      consumer(topic, `g-${randomUUID()}`),
    ]);
    const sa1 = receive(gw.client, a1);
    const sa2 = receive(gw.client, a2);
    const sb = receive(gw.client, b);
    const pid = await producer(topic);
    for (let i = 0; i < 40; i++)
      await call(gw.client, 'SendMessage', { producer_id: pid, message_body: String(i) });
    await eventually(
      () => sb.messages.length === 40 && sa1.messages.length + sa2.messages.length === 40,
      'all messages',
    );
    const groupBodies = [...sa1.messages, ...sa2.messages]
      .map((m) => Number(m.message_body))
      .sort((x, y) => x - y);
    assert.deepEqual(
      groupBodies,
      Array.from({ length: 40 }, (_, i) => i),
      'no duplicates, nothing missing in the group',
    );
    for (const s of [sa1, sa2, sb]) s.end();
  });

  test('CleanupProducer and CleanupConsumer by id and by topic/group', async () => {
    const topic = `t-${randomUUID()}`;
    const group = `g-${randomUUID()}`;
    const p1 = await producer(topic);
    await producer(topic);
    const c1 = await consumer(topic, group);
    await consumer(topic, group);
    assert.equal(
      (await call<{ cleaned_count: number }>(gw.client, 'CleanupProducer', { producer_id: p1 }))
        .cleaned_count,
      1,
    );
    assert.equal(
      (await call<{ cleaned_count: number }>(gw.client, 'CleanupProducer', { producer_id: p1 }))
        .cleaned_count,
      0,
    );
    const byTopic = await call<{ cleaned_count: number }>(gw.client, 'CleanupProducer', { ...keys, topic });
    assert.equal(byTopic.cleaned_count, 1);
    assert.equal(
      (await call<{ cleaned_count: number }>(gw.client, 'CleanupConsumer', { consumer_id: c1 }))
        .cleaned_count,
      1,
    );
    const byGroup = await call<{ cleaned_count: number }>(gw.client, 'CleanupConsumer', {
      ...keys,
      group_id: group,
      topic,
    });
    assert.equal(byGroup.cleaned_count, 1);
  });

  test('/metrics speaks JSON to curl and Prometheus text to Prometheus; /health and /ready answer', async () => {
    const json = await (await fetch(gw.metricsUrl)).json();
    for (const field of [
      'active_producers',
      'producer_handles',
      'active_consumers',
      'channel_full_events',
      'producer_leak_detections',
      'consumer_leak_detections',
    ]) {
      assert.equal(typeof (json as Record<string, unknown>)[field], 'number', field);
    }
    const prom = await fetch(gw.metricsUrl, {
      headers: {
        accept: 'application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1',
      },
    });
    const text = await prom.text();
    assert.match(prom.headers.get('content-type') ?? '', /text\/plain/);
    assert.match(text, /# TYPE mqgate_producer_leak_detections_total counter/);
    assert.match(text, /mqgate_rpc_requests_total\{method="SendMessage",code="OK"\} \d+/);
    assert.match(text, /nodejs_active_resources\{type="TCPServerWrap"\}/);
    const base = gw.metricsUrl.replace('/metrics', '');
    assert.equal((await fetch(`${base}/health`)).status, 200);
    const ready = await fetch(`${base}/ready`);
    assert.equal(ready.status, 200);
    assert.equal(((await ready.json()) as { ready: boolean }).ready, true);
  });
});

test('a gateway closes with no handle left behind', async () => {
  await withLeakCheck(async () => {
    const gw = await startTestGateway();
    const topic = `t-${randomUUID()}`;
    const { consumer_id } = await call<{ consumer_id: string }>(gw.client, 'CreateConsumer', {
      ...keys,
      topic,
      group_id: 'g',
    });
    const stream = receive(gw.client, consumer_id);
    const { producer_id } = await call<{ producer_id: string }>(gw.client, 'CreateProducer', {
      ...keys,
      topic,
    });
    await call(gw.client, 'SendMessage', { producer_id, message_body: 'x' });
    await eventually(() => stream.messages.length === 1, 'delivery');
    await gw.close();
    await eventually(() => stream.ended, 'the stream to end on shutdown');
    assert.equal(stream.error?.code, 14, 'UNAVAILABLE tells the client to reconnect');
  });
});
