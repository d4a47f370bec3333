/**
 * Trace context from a careless or hostile client, with tracing on: malformed traceparent
 * metadata or properties are ignored (the send succeeds as a new trace), a tracestate beyond the
 * W3C limit is dropped rather than copied into every message, a client cannot make the gateway
 * keep its forged context on the delivered message, and the gateway stays healthy.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, test } from 'node:test';
import { Metadata } from '@grpc/grpc-js';
import { call, receive, startTestGateway, type TestGateway } from '../support/gateway.js';
import { eventually } from '../support/leaks.js';
import { startTestTracing, type TestTracing } from '../support/tracing.js';

let tracing: TestTracing;
let gw: TestGateway;
before(async () => {
  tracing = startTestTracing();
  gw = await startTestGateway();
});
after(async () => {
  await gw.close();
  await tracing.shutdown();
});

const keys = { endpoint: 'e', access_key_id: '', access_key_secret: '', instance_id: 'i' };

async function sendAndReceive(
  md: Metadata,
  properties: Record<string, string>,
): Promise<Record<string, string>> {
  const topic = `t-${randomUUID().slice(0, 8)}`;
  const { consumer_id } = await call<{ consumer_id: string }>(gw.client, 'CreateConsumer', {
    ...keys,
    topic,
    group_id: 'g',
    tag_expression: '*',
  });
  const { producer_id } = await call<{ producer_id: string }>(gw.client, 'CreateProducer', {
    ...keys,
    topic,
  });
  await call(gw.client, 'SendMessage', { producer_id, message_body: 'x', properties: { properties } }, md);
  const r = receive(gw.client, consumer_id);
  await eventually(() => r.messages.length === 1, 'the message');
  r.end();
  await call(gw.client, 'CleanupProducer', { producer_id });
  await call(gw.client, 'CleanupConsumer', { consumer_id });
  return r.messages[0]?.properties ?? {};
}

const W3C = /^00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]$/;

test('malformed traceparent metadata and property: ignored, the send succeeds in a trace of its own', async () => {
  for (const bad of [
    'garbage',
    `00-${'0'.repeat(32)}-${'0'.repeat(16)}-01`,
    `ff-${'a'.repeat(32)}-${'b'.repeat(16)}-01`,
    'x'.repeat(8000),
  ]) {
    const md = new Metadata();
    md.set('traceparent', bad);
    const props = await sendAndReceive(md, { traceparent: bad });
    assert.match(props.traceparent ?? '', W3C, `a fresh traceparent replaces ${bad.slice(0, 40)}`);
    assert.notEqual(props.traceparent, bad);
  }
});

test('a tracestate past the W3C limit (512 characters) is not copied into the message', async () => {
  const traceId = randomUUID().replace(/-/g, '');
  const md = new Metadata();
  md.set('traceparent', `00-${traceId}-${'1'.repeat(16)}-01`);
  md.set('tracestate', Array.from({ length: 200 }, (_, i) => `k${i}=${'v'.repeat(30)}`).join(','));
  const props = await sendAndReceive(md, {});
  assert.match(props.traceparent ?? '', new RegExp(`^00-${traceId}-`));
  assert.ok((props.tracestate ?? '').length <= 512, `tracestate of ${props.tracestate?.length} characters`);
});

test("a forged traceparent property is replaced by the gateway's send span, in the forged trace", async () => {
  const traceId = randomUUID().replace(/-/g, '');
  const forged = `00-${traceId}-${'2'.repeat(16)}-01`;
  const props = await sendAndReceive(new Metadata(), { traceparent: forged });
  // The message continues the trace it claims (as every broker client does), but the parent the
  // consumer sees is the gateway's own send span, which exists in the exported trace.
  assert.notEqual(props.traceparent, forged);
  const spanId = props.traceparent?.split('-')[2];
  assert.ok(
    tracing.spans().some((s) => s.spanContext().spanId === spanId && s.spanContext().traceId === traceId),
  );
  const health = await fetch(`${gw.metricsUrl.replace('/metrics', '/health')}`);
  assert.equal(health.status, 200);
});
