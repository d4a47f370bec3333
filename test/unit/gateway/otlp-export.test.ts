/**
 * `mqgate serve` with the standard OpenTelemetry variables exports its spans over OTLP: a receiver
 * on loopback gets the send span (child of the caller's traceparent), the receive span linked to
 * it, and the spans still buffered at SIGTERM. Without the variables the SDK is not loaded at all.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { createServer } from 'node:http';
import { test } from 'node:test';
import { Metadata } from '@grpc/grpc-js';
import { tracingRequested } from '../../../src/gateway/telemetry.js';
import { startChildGateway } from '../../support/child-gateway.js';
import { call, rawClient, receive } from '../../support/gateway.js';
import { eventually } from '../../support/leaks.js';

interface OtlpSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  kind: number;
  links?: Array<{ traceId: string; spanId: string }>;
  attributes?: Array<{ key: string; value: Record<string, unknown> }>;
}

test('OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: the gateway exports send and receive spans, the rest flushed at SIGTERM', async () => {
  const spans: OtlpSpan[] = [];
  let serviceNames: string[] = [];
  const receiver = createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (c: string) => {
      body += c;
    });
    req.on('end', () => {
      const doc = JSON.parse(body) as {
        resourceSpans: Array<{
          resource: { attributes: Array<{ key: string; value: { stringValue?: string } }> };
          scopeSpans: Array<{ spans: OtlpSpan[] }>;
        }>;
      };
      for (const rs of doc.resourceSpans) {
        serviceNames = rs.resource.attributes
          .filter((a) => a.key === 'service.name')
          .map((a) => a.value.stringValue ?? '');
        for (const ss of rs.scopeSpans) spans.push(...ss.spans);
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  receiver.listen(0, '127.0.0.1');
  await once(receiver, 'listening');
  const port = (receiver.address() as { port: number }).port;
  const gw = await startChildGateway({
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: `http://127.0.0.1:${port}/v1/traces`,
    OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: 'http/json',
    // Long enough that the receive span is still buffered at SIGTERM: shutdown must flush it.
    OTEL_BSP_SCHEDULE_DELAY: '60000',
  });
  const client = rawClient(gw.grpcPort);
  try {
    assert.ok(
      gw.logs.some((l) => l.msg === 'tracing on'),
      'the gateway logs that tracing is on',
    );
    const topic = `otlp-${randomUUID().slice(0, 8)}`;
    const traceId = randomUUID().replace(/-/g, '');
    const parentId = randomUUID().replace(/-/g, '').slice(0, 16);
    const md = new Metadata();
    md.set('traceparent', `00-${traceId}-${parentId}-01`);
    const keys = { endpoint: 'e', access_key_id: '', access_key_secret: '', instance_id: 'i' };
    const { consumer_id } = await call<{ consumer_id: string }>(client, 'CreateConsumer', {
      ...keys,
      topic,
      group_id: 'g',
      tag_expression: '*',
    });
    const { producer_id } = await call<{ producer_id: string }>(client, 'CreateProducer', { ...keys, topic });
    await call(client, 'SendMessage', { producer_id, message_body: 'x', properties: {} }, md);
    const r = receive(client, consumer_id);
    await eventually(() => r.messages.length === 1, 'the message');
    r.end();
    // The delivered message carries the gateway's send span as its trace context.
    const traceparent = r.messages[0]?.properties.traceparent ?? '';
    assert.match(traceparent, new RegExp(`^00-${traceId}-[0-9a-f]{16}-01$`));
    client.close();
    gw.kill('SIGTERM');
    assert.equal(await gw.exited, 0);
    await eventually(() => spans.some((s) => s.name === `receive ${topic}`), 'the receive span');
    const send = spans.find((s) => s.name === `send ${topic}`);
    assert.ok(send, `a send span among ${spans.map((s) => s.name).join(', ')}`);
    assert.equal(send.traceId, traceId);
    assert.equal(send.parentSpanId, parentId);
    assert.equal(send.spanId, traceparent.split('-')[2]);
    const receiveSpan = spans.find((s) => s.name === `receive ${topic}`);
    assert.ok(receiveSpan?.links?.some((l) => l.spanId === send.spanId && l.traceId === traceId));
    assert.deepEqual(serviceNames, ['mqgate']);
  } finally {
    client.close();
    gw.kill('SIGKILL');
    receiver.close();
  }
});

test('without OTEL_* variables tracing stays off', async () => {
  const gw = await startChildGateway({ NODE_DEBUG: '' });
  try {
    assert.ok(!gw.logs.some((l) => l.msg === 'tracing on'));
  } finally {
    gw.kill('SIGTERM');
    await gw.exited;
  }
});

test('which OTEL_* settings turn tracing on', () => {
  assert.equal(tracingRequested({}), false);
  assert.equal(tracingRequested({ OTEL_TRACES_EXPORTER: 'none' }), false);
  assert.equal(tracingRequested({ OTEL_TRACES_EXPORTER: 'console' }), true);
  assert.equal(tracingRequested({ OTEL_TRACES_EXPORTER: 'none, otlp' }), true);
  assert.equal(tracingRequested({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:4318' }), true);
  assert.equal(
    tracingRequested({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://127.0.0.1:4318/v1/traces' }),
    true,
  );
  assert.equal(
    tracingRequested({ OTEL_SDK_DISABLED: 'true', OTEL_EXPORTER_OTLP_ENDPOINT: 'http://127.0.0.1:4318' }),
    false,
  );
});
