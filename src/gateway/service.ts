import { isUtf8 } from 'node:buffer';
import {
  type ServerUnaryCall,
  type ServerWritableStream,
  status as Status,
  type sendUnaryData,
  type UntypedServiceImplementation,
} from '@grpc/grpc-js';
import type { PreparedTransaction } from '../brokers/broker.js';
import { InvalidArgumentError } from '../core/errors.js';
import type { Message, OutgoingMessage } from '../core/message.js';
import { parseTagExpression } from '../core/tags.js';
import type { Audit } from './audit.js';
import type { Action } from './auth.js';
import { type Caller, makeCaller } from './callers.js';
import { type CallContext, callContext } from './calls.js';
import type { GatewayConfig } from './config.js';
import type { ConsumerRegistry, DeliverySink } from './consumers.js';
import type { Logger } from './log.js';
import type { GatewayMetrics } from './metrics.js';
import type { ProducerRegistry } from './producers.js';
import type { Redactor } from './redact.js';
import type { BrokerRouter } from './routing.js';
import type { StatusMapper } from './status.js';
import type { TransactionRegistry } from './transactions.js';
import {
  atMost,
  bounded,
  checkName,
  checkProperties,
  checkTag,
  DELAY_LEVELS_MS,
  LIMITS,
  nonNegativeInt,
  requireId,
} from './validate.js';
import type {
  WireAckMessagesRequest,
  WireAckRequest,
  WireBatchEntry,
  WireCleanupRequest,
  WireCreateRequest,
  WireEndTransactionRequest,
  WireEntryResult,
  WireMessage,
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
  /** Cuts the client connection a call came from (a stream whose peer stopped reading). */
  cutConnection(peer: string): void;
}

type Handler<Req, Res> = (req: Req, ctx: CallContext) => Promise<Res>;

const EMPTY = Buffer.alloc(0);

/** How long a stream ended for not reading may take to finish before its connection is cut. */
const ABORT_GRACE_MS = 2000;

/**
 * One handler per RPC: validate, check permissions, call the registries, map errors to a status.
 * Authentication, shutdown, concurrency and metrics happen before any handler runs, in the call
 * guard (calls.ts); ownership of ids is checked by the registries, which take the caller's
 * principal on every lookup.
 */
export function createService(deps: ServiceDeps): UntypedServiceImplementation {
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

  const deliverAtOf = (ms: number, field: string): number | undefined => {
    if (ms <= 0) return undefined;
    atMost(ms - Date.now(), config.maxDelayMs, `${field} (from now)`, 'MAX_DELAY');
    return ms;
  };

  function outgoing(req: WireSendRequest | WireBatchEntry): OutgoingMessage {
    const bytes =
      req.message_body_bytes && req.message_body_bytes.length > 0 ? req.message_body_bytes : undefined;
    const text = req.message_body ?? '';
    const props = req.properties ?? {};
    const businessKey = bounded(props.message_key, 'properties.message_key', LIMITS.messageKey);
    const key = bounded(props.sharding_key, 'properties.sharding_key', LIMITS.shardingKey);
    const tag = checkTag(req.tag);
    // Everything the broker stores counts against MAX_MESSAGE_SIZE, not just the body.
    const size =
      (bytes ? bytes.length : Buffer.byteLength(text)) +
      checkProperties(props.properties, config.maxProperties) +
      Buffer.byteLength(businessKey) +
      Buffer.byteLength(key) +
      (tag?.length ?? 0);
    if (size > config.maxMessageSize) {
      throw new InvalidArgumentError(
        `message is ${size} bytes (body, properties and keys); the limit is ${config.maxMessageSize} (MAX_MESSAGE_SIZE)`,
      );
    }
    return {
      body: bytes ?? text,
      tag,
      key: key || undefined,
      businessKey: businessKey || undefined,
      properties: props.properties ?? {},
      deliverAt: deliverAtOf(
        nonNegativeInt(props.start_deliver_time, 'properties.start_deliver_time'),
        'properties.start_deliver_time',
      ),
    };
  }

  function batchEntry(entry: WireBatchEntry): OutgoingMessage {
    const msg = outgoing(entry);
    if (entry.sharding_key) msg.key = bounded(entry.sharding_key, 'sharding_key', LIMITS.shardingKey);
    const at = deliverAtOf(
      nonNegativeInt(entry.start_deliver_time, 'start_deliver_time'),
      'start_deliver_time',
    );
    if (at !== undefined) msg.deliverAt = at;
    return msg;
  }

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

  async function send(
    req: WireSendRequest,
    ctx: CallContext,
    msg: OutgoingMessage,
  ): Promise<{ message_id: string }> {
    const handle = producers.get(
      requireId(req.producer_id, 'producer_id', 'CreateProducer'),
      ctx.principal.name,
    );
    const res = await producers.use(handle, (p) => p.send(msg));
    metrics.counts.messagesSent++;
    return { message_id: res.messageId };
  }

  const ok = <T extends object>(extra: T): T & { success: true; message: string } => ({
    success: true,
    message: 'OK',
    ...extra,
  });

  function toWire(m: Message, receiptHandle: string): WireMessage {
    const body = Buffer.from(m.body.buffer, m.body.byteOffset, m.body.byteLength);
    let properties = m.properties as Record<string, string>;
    if (m.businessKey !== undefined || m.key !== undefined) {
      properties = { ...properties };
      if (m.businessKey !== undefined) properties.KEYS = m.businessKey;
      if (m.key !== undefined) properties.SHARDING_KEY = m.key;
    }
    // A body is sent once: as text when it is UTF-8, else as bytes only. A lossy text copy of a
    // binary body would cost up to 3x its size and push it past clients' 4 MiB receive limit.
    const text = isUtf8(body);
    return {
      message_id: m.id,
      receipt_handle: receiptHandle,
      message_body: text ? body.toString('utf8') : '',
      tag: m.tag ?? '',
      properties,
      born_timestamp: String(m.bornAt),
      reconsume_times: m.reconsumeCount,
      topic: m.topic,
      message_body_bytes: text ? EMPTY : body,
    };
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

  return {
    CreateProducer: unary(async (req: WireCreateRequest, ctx) => {
      const topic = checkName(req.topic, 'topic');
      allow(ctx, 'publish', topic);
      const handle = await producers.create({ ...createInput(req, ctx), topic });
      return ok({ producer_id: handle.id });
    }),

    SendMessage: unary(async (req: WireSendRequest, ctx) => ok(await send(req, ctx, outgoing(req)))),

    SendOrderedMessage: unary(async (req: WireSendRequest, ctx) => {
      const msg = outgoing(req);
      const key = bounded(
        req.sharding_key || req.properties?.sharding_key,
        'sharding_key',
        LIMITS.shardingKey,
      );
      if (!key)
        throw new InvalidArgumentError(
          'sharding_key is required for SendOrderedMessage: it chooses the order',
        );
      msg.key = key;
      return ok(await send(req, ctx, msg));
    }),

    SendDelayMessage: unary(async (req: WireSendRequest, ctx) => {
      const msg = outgoing(req);
      const at = deliverAtOf(
        nonNegativeInt(req.start_deliver_time, 'start_deliver_time'),
        'start_deliver_time',
      );
      const level = nonNegativeInt(req.delay_time_level, 'delay_time_level');
      if (at !== undefined) msg.deliverAt = at;
      else if (level > 0) {
        const ms = DELAY_LEVELS_MS[level - 1];
        if (ms === undefined) {
          throw new InvalidArgumentError(`delay_time_level ${level} is out of range: use 1-18 (1s ... 2h)`);
        }
        msg.deliverAt = Date.now() + ms;
      } else if (!msg.deliverAt) {
        throw new InvalidArgumentError(
          'SendDelayMessage needs start_deliver_time (ms since the epoch) or delay_time_level (1-18)',
        );
      }
      return ok(await send(req, ctx, msg));
    }),

    SendTransactionMessage: unary(async (req: WireSendRequest, ctx) => {
      const msg = outgoing(req);
      const handle = producers.get(
        requireId(req.producer_id, 'producer_id', 'CreateProducer'),
        ctx.principal.name,
      );
      const seconds = req.trans_check_immunity_time || req.properties?.trans_check_immunity_time || 0;
      if (seconds < 0) throw new InvalidArgumentError('trans_check_immunity_time must not be negative');
      const immunityMs = seconds > 0 ? seconds * 1000 : config.transactionTimeoutMs;
      atMost(
        immunityMs,
        config.maxTransactionImmunityMs,
        'trans_check_immunity_time',
        'MAX_TRANSACTION_IMMUNITY',
      );
      transactions.reserve(handle.caller);
      let prepared: PreparedTransaction;
      try {
        prepared = await producers.use(handle, (p) => p.prepare(msg));
      } catch (err) {
        transactions.unreserve(handle.caller);
        throw err;
      }
      const id = transactions.add(handle.caller, prepared, immunityMs);
      metrics.counts.messagesSent++;
      return ok({ message_id: prepared.messageId, transaction_id: id });
    }),

    EndTransaction: unary(async (req: WireEndTransactionRequest, ctx) => {
      const id = requireId(req.transaction_id, 'transaction_id', 'SendTransactionMessage');
      await transactions.end(id, ctx.principal.name, req.commit === true);
      return ok({});
    }),

    CreateConsumer: unary(async (req: WireCreateRequest, ctx) => {
      const topic = checkName(req.topic, 'topic');
      const group = checkName(req.group_id, 'group_id');
      allow(ctx, 'consume', topic);
      allow(ctx, 'group', group);
      const filter = parseTagExpression(bounded(req.tag_expression, 'tag_expression', LIMITS.tagExpression));
      const session = await consumers.create({
        ...createInput(req, ctx),
        topic,
        group,
        tagExpression: filter.expression,
      });
      return ok({ consumer_id: session.id });
    }),

    AckMessage: unary(async (req: WireAckRequest, ctx) => {
      const s = consumers.get(
        requireId(req.consumer_id, 'consumer_id', 'CreateConsumer'),
        ctx.principal.name,
      );
      await s.ack(requireId(req.receipt_handle, 'receipt_handle', 'ReceiveMessages'));
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
      await s.nack(rh, delayMs);
      return ok({});
    }),

    SendMessages: unary(async (req: WireSendMessagesRequest, ctx) => {
      const handle = producers.get(
        requireId(req.producer_id, 'producer_id', 'CreateProducer'),
        ctx.principal.name,
      );
      const entries = req.messages ?? [];
      checkBatchSize(entries.length, 'messages');
      const results = await producers.use(handle, (p) => {
        // Entries of one sharding key go one after another so their order holds on every broker;
        // different keys (and keyless entries) go out concurrently.
        const chains = new Map<string, Promise<unknown>>();
        return Promise.all(
          entries.map((entry): Promise<WireEntryResult> => {
            let msg: OutgoingMessage;
            try {
              msg = batchEntry(entry);
            } catch (err) {
              return Promise.resolve(entryFailure(err));
            }
            const sendOne = (): Promise<WireEntryResult> =>
              p
                .send(msg)
                .then((r) => ({ success: true, message: 'OK', message_id: r.messageId }), entryFailure);
            if (msg.key === undefined) return sendOne();
            const result = (chains.get(msg.key) ?? Promise.resolve()).then(sendOne);
            chains.set(msg.key, result);
            return result;
          }),
        );
      });
      const sent = results.filter((r) => r.success).length;
      metrics.counts.messagesSent += sent;
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
      const results = await Promise.all(
        handles.map((rh) =>
          s
            .ack(rh)
            .then((): WireEntryResult => ({ success: true, message: 'OK', message_id: '' }), entryFailure),
        ),
      );
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
      const results = await Promise.all(
        router.refs.map((r) => r.broker.health().catch((e: Error) => ({ ok: false, detail: e.message }))),
      );
      const bad = results.flatMap((h, i) => (h.ok ? [] : [{ h, ref: router.refs[i] }]));
      if (bad.length === 0) return { healthy: true, message: 'OK' };
      // Broker addresses and errors only for callers with a valid token (or when auth is off).
      const message = ctx.authenticated
        ? bad.map((b) => `${b.ref?.url}: ${deps.redactor.scrub(b.h.detail)}`).join('; ')
        : `${bad.length} of ${results.length} brokers unavailable`;
      return { healthy: false, message };
    }),

    ReceiveMessages: (call: ServerWritableStream<{ consumer_id?: string }, WireMessage>): void => {
      let ended = false;
      const fail = (err: unknown): void => {
        if (ended) return;
        ended = true;
        call.emit('error', toStatus(err));
      };
      try {
        const ctx = callContext(call);
        const id = requireId(call.request.consumer_id, 'consumer_id', 'CreateConsumer');
        const sink: DeliverySink = {
          write: (m, rh, flushed) => {
            call.write(toWire(m, rh), flushed);
          },
          end: (error) => {
            if (error) fail(error);
            else if (!ended) {
              ended = true;
              call.end();
            }
          },
          abort: (error) => {
            fail(error);
            // The status queues behind data the client never reads; if the call has not finished
            // shortly, cut the connection so the transport lets go of that data.
            const timer = setTimeout(() => deps.cutConnection(ctx.peer), ABORT_GRACE_MS);
            timer.unref();
            call.once('close', () => clearTimeout(timer));
          },
        };
        const attached = consumers.attach(id, ctx.principal.name, sink);
        // 'cancelled' fires when the client goes away; 'close' covers transport failures.
        const detach = (): void => {
          ended = true;
          attached.detach();
        };
        call.once('cancelled', detach);
        call.once('close', detach);
      } catch (err) {
        fail(err);
      }
    },
  };
}
