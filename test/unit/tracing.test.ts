/**
 * OpenTelemetry tracing on the embedded broker: off by default (nothing injected, nothing
 * recorded); on, one trace runs from an application span through the SDK, the gateway and the
 * consumer's handler, a caller's gRPC trace context parents the gateway's span, and the event bus
 * records retries and dead-lettering on its process spans.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, test } from 'node:test';
import { Metadata } from '@grpc/grpc-js';
import { context, trace } from '@opentelemetry/api';
import { createEventBus } from '../../src/bus/index.js';
import { MQClient } from '../../src/client/index.js';
import { bodyText, type Message } from '../../src/core/message.js';
import { tracingOn } from '../../src/core/tracing.js';
import { call, startTestGateway as startRawGateway } from '../support/gateway.js';
import { eventually } from '../support/leaks.js';
import {
  assertMessagingSpan,
  runGatewayTraceScenario,
  spanNamed,
  startTestTracing,
  type TestTracing,
} from '../support/tracing.js';
import { startTestGateway, within } from './client/helpers.js';

const uniq = (p: string): string => `${p}-${randomUUID().slice(0, 8)}`;

let tracing: TestTracing | undefined;
after(async () => {
  await tracing?.shutdown();
});

// Runs first: before any SDK is registered in this process.
test('tracing off (no SDK registered): a message carries no traceparent and nothing is recorded', async () => {
  assert.equal(tracingOn(), false);
  const gateway = await startTestGateway();
  const client = new MQClient({ grpcEndpoint: `127.0.0.1:${gateway.grpcPort}` });
  try {
    const topic = uniq('off');
    const consumer = await client.getConsumer('i', topic, uniq('g'), '*', { start: 'earliest' });
    const producer = await client.getProducer('i', topic);
    await producer.publishMessage('x', '', { properties: { k: 'v' } });
    const it = consumer[Symbol.asyncIterator]();
    const r = await within(it.next(), 10_000, 'the message');
    assert.ok(!r.done);
    assert.deepEqual(r.value.properties, { k: 'v' });
    await r.value.ack();
    await consumer.close();
  } finally {
    await client.close();
    await gateway.close();
  }
});

test('tracing on: application span → SDK send → gateway send → receive → process → handler span, one trace', async () => {
  tracing = startTestTracing();
  assert.equal(tracingOn(), true);
  await runGatewayTraceScenario(tracing, {
    gateway: {},
    system: 'mqgate',
    topic: uniq('traced'),
    group: uniq('g'),
  });
});

test("a caller's traceparent metadata parents the gateway's send span (clients without an SDK)", async () => {
  assert.ok(tracing);
  const gw = await startRawGateway();
  try {
    const topic = uniq('meta');
    const traceId = randomUUID().replace(/-/g, '');
    const parentId = randomUUID().replace(/-/g, '').slice(0, 16);
    const md = new Metadata();
    md.set('traceparent', `00-${traceId}-${parentId}-01`);
    const keys = { endpoint: 'e', access_key_id: '', access_key_secret: '', instance_id: 'i' };
    const { producer_id } = await call<{ producer_id: string }>(gw.client, 'CreateProducer', {
      ...keys,
      topic,
    });
    const { message_id } = await call<{ message_id: string }>(
      gw.client,
      'SendMessage',
      { producer_id, message_body: 'x', properties: {} },
      md,
    );
    const send = spanNamed(tracing.spans(), `send ${topic}`, 'SendMessage');
    assert.equal(send.length, 1);
    const s = send[0];
    assert.ok(s);
    assert.equal(s.spanContext().traceId, traceId);
    assert.equal(s.parentSpanContext?.spanId, parentId);
    assert.equal(s.attributes['messaging.message.id'], message_id);
    assertMessagingSpan(s, 'mqgate');
    await call(gw.client, 'CleanupProducer', { producer_id });
  } finally {
    await gw.close();
  }
});

test('the event bus: send and process spans of one trace; a retry and a dead-lettering are events on the process spans', async () => {
  assert.ok(tracing);
  const bus = await createEventBus({ broker: 'memory://' });
  const topic = uniq('bus');
  const dlq = `${topic}.DLQ`;
  const tracer = trace.getTracer('test-app');
  try {
    let calls = 0;
    const dead: Message[] = [];
    await bus.subscribe(dlq, (m) => void dead.push(m), { group: uniq('dlq') });
    await bus.subscribe(
      topic,
      (m) => {
        calls++;
        // "once" fails once then succeeds; "never" fails every time and is dead-lettered.
        if (bodyText(m) === 'never' || calls === 1) throw new Error(`cannot handle ${bodyText(m)}`);
      },
      {
        group: uniq('g'),
        maxAttempts: 2,
        backoff: { initialMs: 10, maxMs: 10 },
        deadLetter: dlq,
        concurrency: 1,
      },
    );
    const app = tracer.startSpan('bus app');
    await context.with(trace.setSpan(context.active(), app), async () => {
      await bus.publish(topic, 'once');
    });
    app.end();
    await eventually(
      () =>
        spanNamed(tracing?.spans() ?? [], `process ${topic}`).filter((s) => s.status.code !== 2).length === 1,
      'the retried message handled',
    );
    const traceId = app.spanContext().traceId;
    const spans = tracing.spans().filter((s) => s.spanContext().traceId === traceId);
    const send = spans.find((s) => s.name === `send ${topic}`);
    assert.ok(send, 'a bus send span in the app trace');
    assert.equal(send.parentSpanContext?.spanId, app.spanContext().spanId);
    const process = spanNamed(spans, `process ${topic}`);
    assert.equal(process.length, 2, 'two attempts, two process spans');
    const [first, second] = [...process].sort(
      (a, b) =>
        Number(a.attributes['mqgate.delivery.attempt']) - Number(b.attributes['mqgate.delivery.attempt']),
    );
    assert.ok(first && second);
    assert.equal(first.status.code, 2, 'the failed attempt ends in error');
    assert.ok(first.events.some((e) => e.name === 'retry'));
    assert.equal(second.attributes['mqgate.delivery.attempt'], 2);
    for (const s of process) {
      assert.equal(s.parentSpanContext?.spanId, send.spanContext().spanId);
      assert.ok(s.links.some((l) => l.context.spanId === send.spanContext().spanId));
      assertMessagingSpan(s, 'mqgate');
    }
    assertMessagingSpan(send, 'mqgate');

    await bus.publish(topic, 'never');
    await eventually(() => dead.length === 1, 'the dead-lettered message');
    const deadTrace = spanNamed(tracing.spans(), `process ${topic}`).find((s) =>
      s.events.some((e) => e.name === 'dead_letter'),
    );
    assert.ok(deadTrace, 'a process span with a dead_letter event');
    assert.equal(
      deadTrace.events.find((e) => e.name === 'dead_letter')?.attributes?.['mqgate.dead_letter.topic'],
      dlq,
    );
    // The dead-letter copy's send span is a child of the process span that gave up.
    const dlqSend = spanNamed(tracing.spans(), `send ${dlq}`);
    assert.equal(dlqSend.length, 1);
    assert.equal(dlqSend[0]?.parentSpanContext?.spanId, deadTrace.spanContext().spanId);
  } finally {
    await bus.close();
  }
});
