import {
  type ServerUnaryCall,
  status as Status,
  type sendUnaryData,
  type UntypedServiceImplementation,
} from '@grpc/grpc-js';
import type { Context, Span } from '@opentelemetry/api';
import type { PreparedTransaction } from '../brokers/broker.js';
import { parseStart } from '../brokers/start.js';
import { InvalidArgumentError, type MqError } from '../core/errors.js';
import type { OutgoingMessage } from '../core/message.js';
import { parseTagExpression } from '../core/tags.js';
import {
  ATTR,
  endSpan,
  messageContext,
  messagingSystem,
  startMessagingSpan,
  tracingOn,
  withTraceContext,
} from '../core/tracing.js';
import type { Audit } from './audit.js';
import type { Action } from './auth.js';
import { type Caller, makeCaller } from './callers.js';
import { type CallContext, callContext } from './calls.js';
import type { GatewayConfig } from './config.js';
import type { ConsumerRegistry, Session } from './consumers.js';
import type { Logger } from './log.js';
import { messageOf } from './messages.js';
import type { GatewayMetrics } from './metrics.js';
import type { ProducerHandle, ProducerRegistry } from './producers.js';
import { PublishStreams } from './publish.js';
import { receiveHandler } from './receive.js';
import type { Redactor } from './redact.js';
import type { BrokerRouter } from './routing.js';
import type { StatusMapper } from './status.js';
import { subscribeHandler } from './subscribe.js';
import type { TransactionRegistry } from './transactions.js';
import { atMost, bounded, checkName, LIMITS, nonNegativeInt, requireId } from './validate.js';
import type {
  WireAckMessagesRequest,
  WireAckRequest,
  WireCleanupRequest,
  WireCreateRequest,
  WireEndTransactionRequest,
  WireEntryResult,
  WireSendMessagesRequest,
  WireSendRequest,
} from './wire.js';

export interface ServiceDeps {
  config: GatewayConfig;
  router: BrokerRouter;
  producers: ProducerRegistry;
  consumers: ConsumerRegistry;
  transactions: TransactionRegistry;
  metrics: GatewayMetrics;
  audit: Audit;
  redactor: Redactor;
  toStatus: StatusMapper;
  log: Logger;
  /** True once shutdown began. */
  isClosing(): boolean;
  /** Cuts the client connection a call came from (a stream whose peer stopped reading). */
  cutConnection(peer: string): void;
  /** Bytes written so far on the connection a call came from. */
  transportBytes(peer: string): number;
}

type Handler<Req, Res> = (req: Req, ctx: CallContext) => Promise<Res>;

/**
 * One handler per RPC: validate, check permissions, call the registries, map errors to a status.
 * Authentication, shutdown, concurrency and metrics happen before any handler runs, in the call
 * guard (calls.ts); ownership of ids is checked by the registries, which take the caller's
 * principal on every lookup.
 */
/** Which RPC a send came through, and the caller's trace context, for its span. */
export interface SendTrace {
  readonly rpc: string;
  readonly caller: Context | undefined;
}

export interface Service {
  readonly implementation: UntypedServiceImplementation;
  /** Periodic work of the stream handlers (stalled Publish streams). */
  sweep(now: number): void;
  /** Shutdown: Publish streams stop reading and end once their sends have reported. */
  endStreams(error: MqError): void;
  /** Publish streams still open. */
  publishStreams(): number;
}

export function createService(deps: ServiceDeps): Service {
  const { config, router, producers, consumers, transactions, metrics, audit, log, toStatus } = deps;

  const unary = <Req, Res>(fn: Handler<Req, Res>) => {
    return (call: ServerUnaryCall<Req, Res>, callback: sendUnaryData<Res>): void => {
      const fail = (err: unknown): void => {
        const st = toStatus(err);
        if (st.code === Status.INTERNAL)
          log.error({ err: deps.redactor.scrub(String(err)) }, 'internal error');
        callback(st as Parameters<sendUnaryData<Res>>[0]);
      };
      let ctx: CallContext;
      try {
        ctx = callContext(call);
      } catch (err) {
        fail(err);
        return;
      }
      fn(call.request, ctx).then((res) => callback(null, res), fail);
    };
  };

  const callerOf = (ctx: CallContext, req: { access_key_id?: string; access_key_secret?: string }): Caller =>
    makeCaller(
      ctx.principal,
      bounded(req.access_key_id, 'access_key_id', LIMITS.accessKeyId),
      bounded(req.access_key_secret, 'access_key_secret', LIMITS.accessKeySecret),
    );

  /** PERMISSION_DENIED unless the principal may; every refusal is audited. */
  const allow = (ctx: CallContext, action: Action, name: string): void => {
    try {
      ctx.principal.check(action, name);
    } catch (err) {
      audit.refuse('permission', ctx.principal.name || 'anonymous', `${action} ${name.slice(0, 64)}`);
      throw err;
    }
  };

  const build = (req: Parameters<typeof messageOf>[0]): OutgoingMessage => messageOf(req, config);

  const entryFailure = (err: unknown): WireEntryResult => ({
    success: false,
    message: toStatus(err).details,
    message_id: '',
  });

  function checkBatchSize(n: number, what: string): void {
    if (n === 0) throw new InvalidArgumentError(`${what} is empty`);
    if (n > config.maxBatchSize) {
      throw new InvalidArgumentError(
        `${what} has ${n} entries; the limit is ${config.maxBatchSize} (MAX_BATCH_SIZE)`,
      );
    }
  }

  /** Ends `span` (if any) with the outcome of `work`, which it returns. */
  const traced = async <T>(span: Span | undefined, work: Promise<T>): Promise<T> => {
    if (!span) return work;
    try {
      const r = await work;
      endSpan(span);
      return r;
    } catch (err) {
      endSpan(span, err);
      throw err;
    }
  };

  const producerOf = (req: { producer_id?: string }, ctx: CallContext): ProducerHandle =>
    producers.get(requireId(req.producer_id, 'producer_id', 'CreateProducer'), ctx.principal.name);

  async function send(
    req: WireSendRequest,
    ctx: CallContext,
    msg: OutgoingMessage,
  ): Promise<{ message_id: string }> {
    const { message_id } = await sendVia(producerOf(req, ctx), msg, undefined, {
      rpc: ctx.method,
      caller: ctx.trace,
    });
    return { message_id };
  }

  const ok = <T extends object>(extra: T): T & { success: true; message: string } => ({
    success: true,
    message: 'OK',
    ...extra,
  });

  /**
   * Sends one message through the owner's producer: a plain send, or a half message registered
   * as a transaction (counted against the caller's pending-transaction quota).
   */
  /**
   * sendOnce inside a `send <topic>` span when tracing is on: its parent is the caller's trace
   * context (gRPC metadata) or else the message's own traceparent, and the span's context is
   * written into the message's properties, so the trace continues at every consumer.
   */
  async function sendVia(
    handle: ProducerHandle,
    msg: OutgoingMessage,
    tx: { immunitySeconds: number } | undefined,
    via: SendTrace,
  ): Promise<{ message_id: string; transaction_id: string }> {
    if (!tracingOn()) return sendOnce(handle, msg, tx);
    const span = startMessagingSpan({
      operation: 'send',
      operationName: via.rpc,
      destination: handle.topic,
      system: messagingSystem(handle.shared.ref.broker.kind),
      parent: via.caller ?? messageContext(msg.properties),
    });
    msg.properties = withTraceContext(msg.properties, span);
    try {
      const r = await sendOnce(handle, msg, tx);
      span.setAttribute(ATTR.messageId, r.message_id);
      endSpan(span);
      return r;
    } catch (err) {
      endSpan(span, err);
      throw err;
    }
  }

  async function sendOnce(
    handle: ProducerHandle,
    msg: OutgoingMessage,
    tx: { immunitySeconds: number } | undefined,
  ): Promise<{ message_id: string; transaction_id: string }> {
    if (!tx) {
      const res = await producers.use(handle, (p) => p.send(msg));
      metrics.counts.messagesSent++;
      return { message_id: res.messageId, transaction_id: '' };
    }
    if (tx.immunitySeconds < 0)
      throw new InvalidArgumentError('trans_check_immunity_time must not be negative');
    const immunityMs = tx.immunitySeconds > 0 ? tx.immunitySeconds * 1000 : config.transactionTimeoutMs;
    atMost(
      immunityMs,
      config.maxTransactionImmunityMs,
      'trans_check_immunity_time',
      'MAX_TRANSACTION_IMMUNITY',
    );
    transactions.reserve(handle.caller);
    let prepared: PreparedTransaction;
    try {
      prepared = await producers.use(handle, (p) => p.prepare(msg, { immunityMs }));
    } catch (err) {
      transactions.unreserve(handle.caller);
      throw err;
    }
    const id = transactions.add(handle.caller, prepared, immunityMs);
    metrics.counts.messagesSent++;
    return { message_id: prepared.messageId, transaction_id: id };
  }

  function createInput(req: WireCreateRequest, ctx: CallContext) {
    const endpoint = bounded(req.endpoint, 'endpoint', LIMITS.endpoint);
    return {
      ref: router.route(endpoint),
      endpoint,
      caller: callerOf(ctx, req),
      instanceId: bounded(req.instance_id, 'instance_id', LIMITS.instanceId),
      accessKeySecret: req.access_key_secret ?? '',
    };
  }

  /** A session for a topic, group and filter, with the permission checks of CreateConsumer. */
  async function createSession(req: WireCreateRequest, ctx: CallContext): Promise<Session> {
    const topic = checkName(req.topic, 'topic');
    const group = checkName(req.group_id, 'group_id');
    allow(ctx, 'consume', topic);
    allow(ctx, 'group', group);
    const filter = parseTagExpression(bounded(req.tag_expression, 'tag_expression', LIMITS.tagExpression));
    return consumers.create({
      ...createInput(req, ctx),
      topic,
      group,
      tagExpression: filter.expression,
      start: parseStart(bounded(req.start, 'start', 64)),
    });
  }

  const publishStreams = new PublishStreams({
    config,
    producers,
    consumers,
    toStatus,
    log,
    cutConnection: deps.cutConnection,
    sendVia,
  });

  const implementation: UntypedServiceImplementation = {
    Subscribe: subscribeHandler({
      config,
      consumers,
      toStatus,
      log,
      cutConnection: deps.cutConnection,
      transportBytes: deps.transportBytes,
      createSession: (open, ctx) => createSession(open, ctx),
    }),

    Publish: publishStreams.handler(),

    CreateProducer: unary(async (req: WireCreateRequest, ctx) => {
      const topic = checkName(req.topic, 'topic');
      allow(ctx, 'publish', topic);
      const handle = await producers.create({ ...createInput(req, ctx), topic });
      return ok({ producer_id: handle.id });
    }),

    SendMessage: unary(async (req: WireSendRequest, ctx) => ok(await send(req, ctx, build(req)))),

    SendOrderedMessage: unary(async (req: WireSendRequest, ctx) => {
      const msg = build(req);
      if (!msg.key)
        throw new InvalidArgumentError(
          'sharding_key is required for SendOrderedMessage: it chooses the order',
        );
      return ok(await send(req, ctx, msg));
    }),

    SendDelayMessage: unary(async (req: WireSendRequest, ctx) => {
      const msg = build(req);
      if (msg.deliverAt === undefined) {
        throw new InvalidArgumentError(
          'SendDelayMessage needs start_deliver_time (ms since the epoch) or delay_time_level (1-18)',
        );
      }
      return ok(await send(req, ctx, msg));
    }),

    SendTransactionMessage: unary(async (req: WireSendRequest, ctx) => {
      const msg = build(req);
      const handle = producerOf(req, ctx);
      const immunitySeconds = req.trans_check_immunity_time || req.properties?.trans_check_immunity_time || 0;
      return ok(await sendVia(handle, msg, { immunitySeconds }, { rpc: ctx.method, caller: ctx.trace }));
    }),

    EndTransaction: unary(async (req: WireEndTransactionRequest, ctx) => {
      const id = requireId(req.transaction_id, 'transaction_id', 'SendTransactionMessage');
      await transactions.end(id, ctx.principal.name, req.commit === true);
      return ok({});
    }),

    CreateConsumer: unary(async (req: WireCreateRequest, ctx) => {
      const session = await createSession(req, ctx);
      return ok({ consumer_id: session.id });
    }),

    AckMessage: unary(async (req: WireAckRequest, ctx) => {
      const s = consumers.get(
        requireId(req.consumer_id, 'consumer_id', 'CreateConsumer'),
        ctx.principal.name,
      );
      const rh = requireId(req.receipt_handle, 'receipt_handle', 'ReceiveMessages');
      await traced(s.settleSpan('AckMessage', [rh], ctx.trace), s.ack(rh));
      return ok({});
    }),

    NackMessage: unary(async (req: WireAckRequest, ctx) => {
      const s = consumers.get(
        requireId(req.consumer_id, 'consumer_id', 'CreateConsumer'),
        ctx.principal.name,
      );
      const rh = requireId(req.receipt_handle, 'receipt_handle', 'ReceiveMessages');
      const delayMs = atMost(
        nonNegativeInt(req.delay_ms, 'delay_ms'),
        config.maxNackDelayMs,
        'delay_ms',
        'MAX_NACK_DELAY',
      );
      await traced(s.settleSpan('NackMessage', [rh], ctx.trace), s.nack(rh, delayMs));
      return ok({});
    }),

    SendMessages: unary(async (req: WireSendMessagesRequest, ctx) => {
      const handle = producerOf(req, ctx);
      const entries = req.messages ?? [];
      checkBatchSize(entries.length, 'messages');
      const via: SendTrace = { rpc: 'SendMessages', caller: ctx.trace };
      // Entries of one sharding key go one after another so their order holds on every broker;
      // different keys (and keyless entries) go out concurrently.
      const chains = new Map<string, Promise<unknown>>();
      const results = await Promise.all(
        entries.map((entry): Promise<WireEntryResult> => {
          let msg: OutgoingMessage;
          try {
            msg = build(entry);
          } catch (err) {
            return Promise.resolve(entryFailure(err));
          }
          const sendOne = (): Promise<WireEntryResult> =>
            sendVia(handle, msg, undefined, via).then(
              (r) => ({ success: true, message: 'OK', message_id: r.message_id }),
              entryFailure,
            );
          if (msg.key === undefined) return sendOne();
          const result = (chains.get(msg.key) ?? Promise.resolve()).then(sendOne);
          chains.set(msg.key, result);
          return result;
        }),
      );
      const sent = results.filter((r) => r.success).length;
      return {
        success: sent === results.length,
        message:
          sent === results.length ? 'OK' : `${results.length - sent} of ${results.length} messages failed`,
        results,
      };
    }),

    AckMessages: unary(async (req: WireAckMessagesRequest, ctx) => {
      const s = consumers.get(
        requireId(req.consumer_id, 'consumer_id', 'CreateConsumer'),
        ctx.principal.name,
      );
      const handles = req.receipt_handles ?? [];
      checkBatchSize(handles.length, 'receipt_handles');
      const span = s.settleSpan('AckMessages', handles, ctx.trace);
      const results = await Promise.all(
        handles.map((rh) =>
          s
            .ack(rh)
            .then((): WireEntryResult => ({ success: true, message: 'OK', message_id: '' }), entryFailure),
        ),
      );
      span?.end();
      const acked = results.filter((r) => r.success).length;
      return {
        success: acked === results.length,
        message:
          acked === results.length
            ? 'OK'
            : `${results.length - acked} of ${results.length} receipt handles failed`,
        results,
      };
    }),

    CleanupProducer: unary(async (req: WireCleanupRequest, ctx) => {
      if (req.producer_id) {
        const id = bounded(req.producer_id, 'producer_id', LIMITS.id);
        const released = await producers.release(id, ctx.principal.name);
        return ok({ cleaned_count: released ? 1 : 0 });
      }
      if (!req.topic)
        throw new InvalidArgumentError('CleanupProducer needs producer_id, or topic (with endpoint)');
      const n = await producers.releaseByTopic(
        callerOf(ctx, req),
        bounded(req.topic, 'topic', LIMITS.topic),
        bounded(req.endpoint, 'endpoint', LIMITS.endpoint),
      );
      return ok({ cleaned_count: n });
    }),

    CleanupConsumer: unary(async (req: WireCleanupRequest, ctx) => {
      if (req.consumer_id) {
        const id = bounded(req.consumer_id, 'consumer_id', LIMITS.id);
        const closed = await consumers.cleanup(id, ctx.principal.name);
        return ok({ cleaned_count: closed ? 1 : 0 });
      }
      if (!req.group_id)
        throw new InvalidArgumentError('CleanupConsumer needs consumer_id, or group_id (with topic)');
      const n = await consumers.cleanupByGroup(
        callerOf(ctx, req),
        bounded(req.group_id, 'group_id', LIMITS.group),
        bounded(req.topic, 'topic', LIMITS.topic),
      );
      return ok({ cleaned_count: n });
    }),

    HealthCheck: unary(async (_req: object, ctx) => {
      if (deps.isClosing()) return { healthy: false, message: 'shutting down' };
      const results = await router.health();
      const bad = results.flatMap((h, i) => (h.ok ? [] : [{ h, ref: router.refs[i] }]));
      if (bad.length === 0) return { healthy: true, message: 'OK' };
      // Broker addresses and errors only for callers with a valid token (or when auth is off).
      const message = ctx.authenticated
        ? bad.map((b) => `${b.ref?.url}: ${deps.redactor.scrub(b.h.detail)}`).join('; ')
        : `${bad.length} of ${results.length} brokers unavailable`;
      return { healthy: false, message };
    }),

    ReceiveMessages: receiveHandler({
      config,
      consumers,
      toStatus,
      cutConnection: deps.cutConnection,
      transportBytes: deps.transportBytes,
    }),
  };

  return {
    implementation,
    sweep: (now) => publishStreams.sweep(now),
    endStreams: (error) => publishStreams.endAll(error),
    publishStreams: () => publishStreams.size,
  };
}
