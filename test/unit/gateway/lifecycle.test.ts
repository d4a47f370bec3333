import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { test } from 'node:test';
import { call, metricsJson, receive, startTestGateway } from '../../support/gateway.js';
import { eventually, withLeakCheck } from '../../support/leaks.js';

const keys = { endpoint: 'e', access_key_id: 'AK', access_key_secret: 'S', instance_id: 'i' };

test('handles with the same key share one broker producer, counted by live handles', async () => {
  await withLeakCheck(async () => {
    const gw = await startTestGateway();
    try {
      const topic = `t-${randomUUID()}`;
      const ids: string[] = [];
      for (let i = 0; i < 3; i++)
        ids.push(
          (await call<{ producer_id: string }>(gw.client, 'CreateProducer', { ...keys, topic })).producer_id,
        );
      // A different secret is a different caller: never shares the producer.
      await call(gw.client, 'CreateProducer', { ...keys, access_key_secret: 'other', topic });
      let m = await metricsJson(gw.metricsUrl);
      assert.equal(m.producer_handles, 4);
      assert.equal(m.active_producers, 2);
      await call(gw.client, 'CleanupProducer', { producer_id: ids[0] });
      await call(gw.client, 'CleanupProducer', { producer_id: ids[1] });
      m = await metricsJson(gw.metricsUrl);
      assert.equal(m.producer_handles, 2);
      assert.equal(m.active_producers, 2, 'one handle still holds the shared producer');
      await call(gw.client, 'CleanupProducer', { producer_id: ids[2] });
      m = await metricsJson(gw.metricsUrl);
      assert.equal(m.active_producers, 1, 'the last handle closed it');
    } finally {
      await gw.close();
    }
  });
});

test('an idle broker producer is closed and reopened transparently; the handle never sees NOT_FOUND', async () => {
  const gw = await startTestGateway({ producerCleanupTimeoutMs: 200, producerHandleTtlMs: 60_000 });
  try {
    const topic = `t-${randomUUID()}`;
    const { producer_id } = await call<{ producer_id: string }>(gw.client, 'CreateProducer', {
      ...keys,
      topic,
    });
    await eventually(
      async () => (await metricsJson(gw.metricsUrl)).active_producers === 0,
      'the idle producer to close',
    );
    const m0 = await metricsJson(gw.metricsUrl);
    assert.equal(m0.producer_handles, 1, 'the handle lives on');
    const res = await call<{ success: boolean }>(gw.client, 'SendMessage', {
      producer_id,
      message_body: 'after idle',
    });
    assert.equal(res.success, true);
    const m1 = await metricsJson(gw.metricsUrl);
    assert.equal(m1.active_producers, 1);
    assert.equal(m1.producers_reopened, 1);
    assert.equal(m1.producer_leak_detections, 0);
  } finally {
    await gw.close();
  }
});

test('a handle unused past its TTL is dropped, counted as a leak, and answers NOT_FOUND naming CreateProducer', async () => {
  const gw = await startTestGateway({ producerCleanupTimeoutMs: 100, producerHandleTtlMs: 300 });
  try {
    const { producer_id } = await call<{ producer_id: string }>(gw.client, 'CreateProducer', {
      ...keys,
      topic: `t-${randomUUID()}`,
    });
    await eventually(
      async () => (await metricsJson(gw.metricsUrl)).producer_leak_detections === 1,
      'the leak detection',
    );
    const m = await metricsJson(gw.metricsUrl);
    assert.equal(m.producer_handles, 0);
    assert.equal(m.active_producers, 0);
    await assert.rejects(
      call(gw.client, 'SendMessage', { producer_id, message_body: 'x' }),
      (err: { code: number; details: string }) => {
        assert.equal(err.code, 5);
        assert.match(err.details, /CreateProducer/);
        return true;
      },
    );
  } finally {
    await gw.close();
  }
});

test('unacked deliveries are redelivered at once when the stream ends, and after the ack timeout', async () => {
  const gw = await startTestGateway({ ackTimeoutMs: 400, consumerCleanupTimeoutMs: 60_000 });
  try {
    const topic = `t-${randomUUID()}`;
    const group = `g-${randomUUID()}`;
    const { consumer_id } = await call<{ consumer_id: string }>(gw.client, 'CreateConsumer', {
      ...keys,
      topic,
      group_id: group,
    });
    const first = receive(gw.client, consumer_id);
    const { producer_id } = await call<{ producer_id: string }>(gw.client, 'CreateProducer', {
      ...keys,
      topic,
    });
    await call(gw.client, 'SendMessage', { producer_id, message_body: 'one' });
    await eventually(() => first.messages.length === 1, 'first delivery');
    // Stream ends without an ack: the same consumer id reattaches and gets it again at once.
    first.end();
    await eventually(async () => (await metricsJson(gw.metricsUrl)).active_streams === 0, 'detach');
    const second = receive(gw.client, consumer_id);
    await eventually(() => second.messages.length === 1, 'redelivery after stream end', 5_000);
    assert.equal(second.messages[0]!.message_body, 'one');
    assert.equal(second.messages[0]!.reconsume_times, 1);
    // Old receipt handles are void: acking one is NOT_FOUND (the message was released).
    await assert.rejects(
      call(gw.client, 'AckMessage', { consumer_id, receipt_handle: first.messages[0]!.receipt_handle }),
      { code: 5 },
    );
    // Not acked again: after the ack timeout it comes back on the same stream.
    await eventually(() => second.messages.length === 2, 'redelivery after ack timeout', 10_000);
    assert.equal(second.messages[1]!.reconsume_times, 2);
    await call(gw.client, 'AckMessage', { consumer_id, receipt_handle: second.messages[1]!.receipt_handle });
    const m = await metricsJson(gw.metricsUrl);
    assert.ok(m.messages_redelivered >= 2, JSON.stringify(m));
    assert.equal(m.inflight_deliveries, 0);
    second.end();
  } finally {
    await gw.close();
  }
});

test('a second concurrent stream on one consumer id is refused with FAILED_PRECONDITION', async () => {
  const gw = await startTestGateway();
  try {
    const { consumer_id } = await call<{ consumer_id: string }>(gw.client, 'CreateConsumer', {
      ...keys,
      topic: `t-${randomUUID()}`,
      group_id: 'g',
    });
    const a = receive(gw.client, consumer_id);
    await eventually(
      async () => (await metricsJson(gw.metricsUrl)).active_streams === 1,
      'first stream attached',
    );
    const b = receive(gw.client, consumer_id);
    await eventually(() => b.ended, 'second stream refused');
    assert.equal(b.error?.code, 9);
    assert.match(b.error?.details ?? '', /already has an active stream/);
    assert.equal(a.ended, false, 'the first stream is untouched');
    a.end();
  } finally {
    await gw.close();
  }
});

test('backpressure: at MESSAGE_BUFFER_SIZE unacked the session stops pulling, counts channel_full_events, and nothing is lost', async () => {
  const gw = await startTestGateway({ messageBufferSize: 5, ackTimeoutMs: 60_000 });
  try {
    const topic = `t-${randomUUID()}`;
    const { consumer_id } = await call<{ consumer_id: string }>(gw.client, 'CreateConsumer', {
      ...keys,
      topic,
      group_id: 'g',
    });
    const s = receive(gw.client, consumer_id);
    const { producer_id } = await call<{ producer_id: string }>(gw.client, 'CreateProducer', {
      ...keys,
      topic,
    });
    for (let i = 0; i < 20; i++)
      await call(gw.client, 'SendMessage', { producer_id, message_body: String(i) });
    await eventually(() => s.messages.length === 5, 'the first five');
    const m = await metricsJson(gw.metricsUrl);
    assert.ok(m.channel_full_events >= 1);
    assert.equal(m.inflight_deliveries, 5);
    // Ack as they come: all twenty arrive exactly once.
    const seen = new Set<string>();
    await eventually(async () => {
      for (const msg of s.messages.splice(0)) {
        seen.add(msg.message_body);
        await call(gw.client, 'AckMessage', { consumer_id, receipt_handle: msg.receipt_handle });
      }
      return seen.size === 20;
    }, 'all twenty');
    s.end();
  } finally {
    await gw.close();
  }
});

test('a session left without a stream is closed after CONSUMER_CLEANUP_TIMEOUT and counted; reattaching within it resumes', async () => {
  const gw = await startTestGateway({ consumerCleanupTimeoutMs: 600 });
  try {
    const topic = `t-${randomUUID()}`;
    const kept = (
      await call<{ consumer_id: string }>(gw.client, 'CreateConsumer', { ...keys, topic, group_id: 'g1' })
    ).consumer_id;
    const abandoned = (
      await call<{ consumer_id: string }>(gw.client, 'CreateConsumer', { ...keys, topic, group_id: 'g2' })
    ).consumer_id;
    const cleaned = (
      await call<{ consumer_id: string }>(gw.client, 'CreateConsumer', { ...keys, topic, group_id: 'g3' })
    ).consumer_id;
    await call(gw.client, 'CleanupConsumer', { consumer_id: cleaned });
    const s = receive(gw.client, kept);
    await eventually(
      async () => (await metricsJson(gw.metricsUrl)).consumer_leak_detections === 1,
      'the abandoned session to be reaped',
    );
    const m = await metricsJson(gw.metricsUrl);
    assert.equal(m.active_consumers, 1, 'the attached session lives');
    s.end();
    // Reattach within the grace period resumes the same session.
    await eventually(async () => (await metricsJson(gw.metricsUrl)).active_streams === 0, 'detach');
    const again = receive(gw.client, kept);
    await eventually(async () => (await metricsJson(gw.metricsUrl)).active_streams === 1, 'reattach');
    again.end();
    await assert.rejects(
      call(gw.client, 'AckMessage', { consumer_id: abandoned, receipt_handle: 'x' }),
      (err: { code: number; details: string }) => {
        assert.equal(err.code, 5);
        assert.match(err.details, /CreateConsumer again/);
        return true;
      },
    );
  } finally {
    await gw.close();
  }
});

test('1,000 create/cleanup cycles of each kind leave metrics at zero and no leaked handles', async () => {
  await withLeakCheck(async () => {
    const gw = await startTestGateway();
    try {
      const topic = `t-${randomUUID()}`;
      for (let i = 0; i < 1000; i++) {
        const { producer_id } = await call<{ producer_id: string }>(gw.client, 'CreateProducer', {
          ...keys,
          topic,
        });
        await call(gw.client, 'CleanupProducer', { producer_id });
        const { consumer_id } = await call<{ consumer_id: string }>(gw.client, 'CreateConsumer', {
          ...keys,
          topic,
          group_id: `g${i % 7}`,
        });
        await call(gw.client, 'CleanupConsumer', { consumer_id });
      }
      const m = await metricsJson(gw.metricsUrl);
      assert.equal(m.active_producers, 0);
      assert.equal(m.producer_handles, 0);
      assert.equal(m.active_consumers, 0);
      assert.equal(m.active_streams, 0);
      assert.equal(m.inflight_deliveries, 0);
      assert.equal(m.producer_leak_detections, 0);
      assert.equal(m.consumer_leak_detections, 0);
    } finally {
      await gw.close();
    }
  });
});
