import {
  type Attributes,
  type Context,
  context,
  type Link,
  ProxyTracerProvider,
  propagation,
  type Span,
  SpanKind,
  SpanStatusCode,
  trace,
} from '@opentelemetry/api';

/**
 * Tracing through messages, with only @opentelemetry/api: without a registered SDK every call
 * here is a no-op on the API's own no-op objects, and nothing is copied or injected.
 *
 * Span names and attributes follow the OpenTelemetry messaging semantic conventions: a span is
 * named `{operation} {destination}`; send spans are PRODUCER, receive and settle spans CLIENT,
 * process spans CONSUMER; receive and process spans link to the context each message was created
 * in (carried in its `traceparent` / `tracestate` properties, W3C trace context).
 */

export const ATTR = {
  system: 'messaging.system',
  destination: 'messaging.destination.name',
  operationType: 'messaging.operation.type',
  operationName: 'messaging.operation.name',
  group: 'messaging.consumer.group.name',
  messageId: 'messaging.message.id',
  batchCount: 'messaging.batch.message_count',
  /** mqgate's own: the conventions name a delivery count only for Pub/Sub and Service Bus. */
  deliveryAttempt: 'mqgate.delivery.attempt',
} as const;

export type OperationType = 'send' | 'receive' | 'settle' | 'process';

const KIND: Record<OperationType, SpanKind> = {
  send: SpanKind.PRODUCER,
  receive: SpanKind.CLIENT,
  settle: SpanKind.CLIENT,
  process: SpanKind.CONSUMER,
};

/** The trace context headers carried in a message's properties. */
export const TRACE_PROPERTIES = ['traceparent', 'tracestate'] as const;

const tracer = trace.getTracer('mqgate');

/** The API's no-op provider: what the global proxy delegates to until an SDK registers. */
const NOOP_PROVIDER = new ProxyTracerProvider().getDelegate();

/**
 * Whether an SDK is registered. Callers skip the per-message work (copying properties to inject
 * trace context, extracting links) when it is not.
 */
export function tracingOn(): boolean {
  const provider = trace.getTracerProvider();
  return !(provider instanceof ProxyTracerProvider && provider.getDelegate() === NOOP_PROVIDER);
}

export interface SpanOptions {
  operation: OperationType;
  /** The RPC or method, e.g. SendMessage, publish, ack. */
  operationName: string;
  destination: string;
  system: string;
  group?: string | undefined;
  messageId?: string | undefined;
  /** Parent context (the caller's, or a message's own); the active context when absent. */
  parent?: Context | undefined;
  links?: Link[] | undefined;
  attributes?: Attributes | undefined;
}

/** Starts a messaging span (not made active); the caller ends it. */
export function startMessagingSpan(o: SpanOptions): Span {
  const attributes: Attributes = {
    [ATTR.system]: o.system,
    [ATTR.destination]: o.destination,
    [ATTR.operationType]: o.operation,
    [ATTR.operationName]: o.operationName,
    ...o.attributes,
  };
  if (o.group !== undefined) attributes[ATTR.group] = o.group;
  if (o.messageId !== undefined) attributes[ATTR.messageId] = o.messageId;
  return tracer.startSpan(
    `${o.operation} ${o.destination}`,
    { kind: KIND[o.operation], attributes, links: o.links },
    o.parent ?? context.active(),
  );
}

/** Ends a span with the outcome of the work it covered. */
export function endSpan(span: Span, err?: unknown): void {
  if (err !== undefined) {
    span.recordException(err instanceof Error ? err : String(err));
    span.setStatus({ code: SpanStatusCode.ERROR, message: err instanceof Error ? err.message : String(err) });
  }
  span.end();
}

/** The context a message was created in, from its trace properties (the root context if none). */
export function messageContext(properties: Readonly<Record<string, string>> | undefined): Context {
  if (!properties?.traceparent) return context.active();
  return propagation.extract(context.active(), properties);
}

/** A link to the context a message was created in, when it carries one. */
export function messageLink(properties: Readonly<Record<string, string>> | undefined): Link | undefined {
  if (!properties?.traceparent) return undefined;
  const ctx = propagation.extract(context.active(), properties);
  const sc = trace.getSpanContext(ctx);
  return sc ? { context: sc } : undefined;
}

/** The properties with `span`'s context written as traceparent / tracestate. */
export function withTraceContext(
  properties: Readonly<Record<string, string>> | undefined,
  span: Span,
): Record<string, string> {
  const out: Record<string, string> = { ...properties };
  propagation.inject(trace.setSpan(context.active(), span), out);
  return out;
}

/** Extracts a caller's context from carrier text (gRPC metadata values). */
export function extractContext(get: (key: string) => string | undefined): Context | undefined {
  const traceparent = get('traceparent');
  if (!traceparent) return undefined;
  const carrier: Record<string, string> = { traceparent };
  const tracestate = get('tracestate');
  if (tracestate) carrier.tracestate = tracestate;
  return propagation.extract(context.active(), carrier);
}

/** Runs `fn` with `span` as the active span. */
export function withSpan<T>(span: Span, fn: () => T): T {
  return context.with(trace.setSpan(context.active(), span), fn);
}

/** messaging.system for a broker kind (the embedded broker is mqgate's own). */
export function messagingSystem(kind: string): string {
  return kind === 'memory' ? 'mqgate' : kind;
}
