/**
 * Tracing through the gateway and the SDK, checked on finished spans: an application span around
 * a publish, the SDK's and the gateway's send spans, the gateway's receive and settle spans, and
 * the SDK's process span with the handler's own span inside it, all of one trace; span names and
 * attribute names as the OpenTelemetry messaging conventions spell them.
 *
 * The OpenTelemetry Node SDK is registered in the test process (one per process: node:test runs
 * each file in its own) with an in-memory exporter.
 */
import assert from 'node:assert/strict';
import { context, type Span, SpanKind, trace } from '@opentelemetry/api';
import { NodeSDK } from '@opentelemetry/sdk-node';
import { InMemorySpanExporter, type ReadableSpan, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import {
  ATTR_MESSAGING_CONSUMER_GROUP_NAME,
  ATTR_MESSAGING_DESTINATION_NAME,
  ATTR_MESSAGING_MESSAGE_ID,
  ATTR_MESSAGING_OPERATION_NAME,
  ATTR_MESSAGING_OPERATION_TYPE,
  ATTR_MESSAGING_SYSTEM,
} from '@opentelemetry/semantic-conventions/incubating';
import { MQClient } from '../../src/client/index.js';
import type { GatewayConfig } from '../../src/gateway/config.js';
import { Gateway } from '../../src/gateway/server.js';
import { within } from '../unit/client/helpers.js';
import { eventually } from './leaks.js';

/** Every attribute name a messaging span of mqgate may carry: the conventions' and one of its own. */
export const MESSAGING_ATTRIBUTES = new Set([
  ATTR_MESSAGING_SYSTEM,
  ATTR_MESSAGING_DESTINATION_NAME,
  ATTR_MESSAGING_OPERATION_TYPE,
  ATTR_MESSAGING_OPERATION_NAME,
  ATTR_MESSAGING_CONSUMER_GROUP_NAME,
  ATTR_MESSAGING_MESSAGE_ID,
  'messaging.batch.message_count',
  'mqgate.delivery.attempt',
]);

export interface TestTracing {
  readonly exporter: InMemorySpanExporter;
  spans(): ReadableSpan[];
  shutdown(): Promise<void>;
}

/** Registers the Node SDK with an in-memory exporter (spans exported as each ends). */
export function startTestTracing(): TestTracing {
  process.env.OTEL_METRICS_EXPORTER = 'none';
  process.env.OTEL_LOGS_EXPORTER = 'none';
  const exporter = new InMemorySpanExporter();
  const sdk = new NodeSDK({ spanProcessors: [new SimpleSpanProcessor(exporter)], instrumentations: [] });
  sdk.start();
  return { exporter, spans: () => exporter.getFinishedSpans(), shutdown: () => sdk.shutdown() };
}

export function spanNamed(spans: ReadableSpan[], name: string, operationName?: string): ReadableSpan[] {
  return spans.filter(
    (s) =>
      s.name === name &&
      (operationName === undefined || s.attributes[ATTR_MESSAGING_OPERATION_NAME] === operationName),
  );
}

/** Checks what every messaging span shares: kind by operation, attribute names, the system. */
export function assertMessagingSpan(s: ReadableSpan, system: string): void {
  const op = s.attributes[ATTR_MESSAGING_OPERATION_TYPE];
  const kinds: Record<string, SpanKind> = {
    send: SpanKind.PRODUCER,
    receive: SpanKind.CLIENT,
    settle: SpanKind.CLIENT,
    process: SpanKind.CONSUMER,
  };
  assert.ok(typeof op === 'string' && op in kinds, `${s.name}: operation type ${String(op)}`);
  assert.equal(s.kind, kinds[op], `${s.name}: span kind for ${op}`);
  assert.equal(s.name, `${op} ${String(s.attributes[ATTR_MESSAGING_DESTINATION_NAME])}`);
  for (const name of Object.keys(s.attributes)) {
    assert.ok(
      MESSAGING_ATTRIBUTES.has(name),
      `${s.name}: attribute ${name} is not a messaging convention name`,
    );
  }
  assert.equal(s.attributes[ATTR_MESSAGING_SYSTEM], system, `${s.name}: messaging.system`);
}

export interface GatewayTraceOptions {
  gateway: Partial<GatewayConfig>;
  /** messaging.system the gateway's spans name ('mqgate' for the embedded broker, else the kind). */
  system: string;
  topic: string;
  group: string;
  timeoutMs?: number;
  /** The consumer's start; 'earliest' by default (RocketMQ takes none: its group setting decides). */
  start?: 'earliest' | undefined;
}

/**
 * An application span publishes one message through the SDK; a consumer's handler makes a span
 * of its own. Checks that every hop is one trace and each span's parent and links.
 */
export async function runGatewayTraceScenario(tracing: TestTracing, o: GatewayTraceOptions): Promise<void> {
  const gateway = await new Gateway({
    config: { grpcPort: 0, metricsPort: 0, logLevel: 'silent', shutdownTimeoutMs: 5000, ...o.gateway },
  }).start();
  const client = new MQClient({ grpcEndpoint: `127.0.0.1:${gateway.grpcPort}` });
  const tracer = trace.getTracer('test-app');
  try {
    const consumer = await client.getConsumer('i', o.topic, o.group, '*', {
      start: 'start' in o ? o.start : 'earliest',
      autoAck: true,
    });
    const producer = await client.getProducer('i', o.topic);
    let handlerSpan: Span | undefined;
    let received: Readonly<Record<string, string>> | undefined;
    const handled = new Promise<void>((resolve) => {
      consumer.onMessage(async (m) => {
        received = m.properties;
        await tracer.startActiveSpan('handle order', async (span) => {
          handlerSpan = span;
          span.end();
        });
        resolve();
      });
    });
    const app = tracer.startSpan('checkout');
    const appTrace = app.spanContext().traceId;
    const { messageId } = await context.with(trace.setSpan(context.active(), app), () =>
      producer.publishMessage('{"order":1}'),
    );
    app.end();
    await within(handled, o.timeoutMs ?? 15_000, 'the traced message');
    // The ack goes out after the handler returned; its settle span ends when the broker confirmed.
    await eventually(
      () => spanNamed(tracing.spans(), `settle ${o.topic}`).length > 0,
      'the settle span',
      o.timeoutMs ?? 15_000,
    ).catch((err: Error) => {
      throw new Error(
        `${err.message}; spans: ${tracing
          .spans()
          .map((s) => s.name)
          .join(', ')}`,
      );
    });
    await consumer.close();
    await producer.close();

    const spans = tracing.spans().filter((s) => s.spanContext().traceId === appTrace);
    const sdkSend = one(
      spans.filter(
        (s) =>
          s.name === `send ${o.topic}` &&
          s.instrumentationScope.name === 'mqgate' &&
          s.parentSpanContext?.spanId === app.spanContext().spanId,
      ),
      'SDK send span',
    );
    const gwSend = one(
      spans.filter(
        (s) => s.name === `send ${o.topic}` && s.parentSpanContext?.spanId === sdkSend.spanContext().spanId,
      ),
      'gateway send span (child of the SDK send span)',
    );
    assert.equal(gwSend.attributes[ATTR_MESSAGING_SYSTEM], o.system);
    assert.equal(gwSend.attributes[ATTR_MESSAGING_MESSAGE_ID], messageId);
    assert.equal(sdkSend.attributes[ATTR_MESSAGING_MESSAGE_ID], messageId);
    // The message carries the gateway send span's context.
    assert.equal(received?.traceparent?.split('-')[2], gwSend.spanContext().spanId);

    const receive = one(spanNamed(tracing.spans(), `receive ${o.topic}`), 'receive span');
    assert.ok(
      receive.links.some((l) => l.context.spanId === gwSend.spanContext().spanId),
      'the receive span links to the send span',
    );
    assert.equal(receive.attributes[ATTR_MESSAGING_CONSUMER_GROUP_NAME], o.group);

    const process = one(
      spans.filter((s) => s.name === `process ${o.topic}`),
      'process span',
    );
    assert.equal(process.parentSpanContext?.spanId, gwSend.spanContext().spanId);
    assert.ok(process.links.some((l) => l.context.spanId === gwSend.spanContext().spanId));
    assert.equal(process.attributes[ATTR_MESSAGING_CONSUMER_GROUP_NAME], o.group);
    assert.equal(process.attributes[ATTR_MESSAGING_MESSAGE_ID], messageId);
    assert.ok(handlerSpan, 'the handler ran');
    const handler = one(
      spans.filter((s) => s.name === 'handle order'),
      'handler span',
    );
    assert.equal(
      handler.parentSpanContext?.spanId,
      process.spanContext().spanId,
      'handler span nests in process',
    );

    const settle = spanNamed(tracing.spans(), `settle ${o.topic}`);
    assert.ok(settle.length >= 1);
    // The SDK sees only the gateway, so its spans name mqgate as the system.
    for (const s of [sdkSend, process]) assertMessagingSpan(s, 'mqgate');
    for (const s of [gwSend, receive, ...settle]) assertMessagingSpan(s, o.system);
  } finally {
    await client.close();
    await gateway.close();
  }
}

function one(spans: ReadableSpan[], what: string): ReadableSpan {
  assert.equal(
    spans.length,
    1,
    `expected one ${what}, found ${spans.length}: ${spans.map((s) => s.name).join(', ')}`,
  );
  return spans[0] as ReadableSpan;
}
