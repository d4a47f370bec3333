import { isUtf8 } from 'node:buffer';
import type {
  ServerUnaryCall,
  ServerWritableStream,
  sendUnaryData,
  UntypedServiceImplementation,
} from '@grpc/grpc-js';
import { InvalidArgumentError, MqError } from '../core/errors.js';
import type { Message, OutgoingMessage } from '../core/message.js';
import { parseTagExpression } from '../core/tags.js';
import { type Authenticator, type Caller, makeCaller } from './callers.js';
import type { GatewayConfig } from './config.js';
import type { ConsumerRegistry, DeliverySink } from './consumers.js';
import type { Logger } from './log.js';
import type { GatewayMetrics } from './metrics.js';
import type { ProducerRegistry } from './producers.js';
import type { BrokerRouter } from './routing.js';
import { STATUS_NAME, toServiceError } from './status.js';
import type { TransactionRegistry } from './transactions.js';
import {
  checkName,
  checkProperties,
  checkTag,
  DELAY_LEVELS_MS,
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
  auth: Authenticator;
  log: Logger;
  /** True once shutdown began: new calls get UNAVAILABLE. */
  isClosing(): boolean;
}

interface Ctx {
  principal: string;
}

type Handler<Req, Res> = (req: Req, ctx: Ctx) => Promise<Res>;

const EMPTY = Buffer.alloc(0);

/** One handler per RPC: validate, authorize, call the registries, map errors to a gRPC status. */
export function createService(deps: ServiceDeps): {
  implementation: UntypedServiceImplementation;
  inFlightCalls: () => number;
} {
  const { config, router, producers, consumers, transactions, metrics, auth, log } = deps;
  let active = 0;

  const unary = <Req, Res>(method: string, fn: Handler<Req, Res>, opts: { open?: boolean } = {}) => {
    return (call: ServerUnaryCall<Req, Res>, callback: sendUnaryData<Res>): void => {
      const t0 = performance.now();
      const finish = (err: unknown, res?: Res): void => {
        if (err === null) {
          metrics.rpc(method, 'OK', (performance.now() - t0) / 1000);
          callback(null, res);
          return;
        }
        const se = toServiceError(err);
        metrics.rpc(method, STATUS_NAME[se.code] ?? String(se.code), (performance.now() - t0) / 1000);
        if (se.code === 13) log.error({ err, method }, 'internal error');
        callback(se as Parameters<sendUnaryData<Res>>[0]);
      };
      if (deps.isClosing() && !opts.open) {
        finish(new MqError('UNAVAILABLE', 'the gateway is shutting down; retry against another instance'));
        return;
      }
      if (active >= config.maxConcurrent) {
        finish(
          new MqError(
            'RESOURCE_EXHAUSTED',
            `the gateway is serving ${active} calls, its limit (MAX_CONCURRENT=${config.maxConcurrent}); retry with backoff`,
          ),
        );
        return;
      }
      let principal: string;
      try {
        principal = opts.open
          ? ''
          : auth.authenticate(() => call.metadata.get('authorization')[0]?.toString());
      } catch (err) {
        finish(err);
        return;
      }
      active++;
      fn(call.request, { principal }).then(
        (res) => {
          active--;
          finish(null, res);
        },
        (err: unknown) => {
          active--;
          finish(err);
        },
      );
    };
  };

  const callerOf = (ctx: Ctx, req: { access_key_id?: string; access_key_secret?: string }): Caller =>
    makeCaller(ctx.principal, req.access_key_id ?? '', req.access_key_secret ?? '');

  function outgoing(req: WireSendRequest | WireBatchEntry): OutgoingMessage {
    const bytes =
      req.message_body_bytes && req.message_body_bytes.length > 0 ? req.message_body_bytes : undefined;
    const text = req.message_body ?? '';
    const size = bytes ? bytes.length : Buffer.byteLength(text);
    if (size > config.maxMessageSize) {
      throw new InvalidArgumentError(
        `message body is ${size} bytes; the limit is ${config.maxMessageSize} (MAX_MESSAGE_SIZE)`,
      );
    }
    const props = req.properties ?? {};
    const properties = checkProperties(props.properties, config.maxProperties);
    const deliverAt = nonNegativeInt(props.start_deliver_time, 'properties.start_deliver_time');
    return {
      body: bytes ?? text,
      tag: checkTag(req.tag),
      key: props.sharding_key || undefined,
      businessKey: props.message_key || undefined,
      properties,
      deliverAt: deliverAt > 0 ? deliverAt : undefined,
    };
  }

  function batchEntry(entry: WireBatchEntry): OutgoingMessage {
    const msg = outgoing(entry);
    if (entry.sharding_key) {
      if (entry.sharding_key.length > 256)
        throw new InvalidArgumentError('sharding_key is longer than 256 characters');
      msg.key = entry.sharding_key;
    }
    const at = nonNegativeInt(entry.start_deliver_time, 'start_deliver_time');
    if (at > 0) msg.deliverAt = at;
    return msg;
  }

  const entryFailure = (err: unknown): WireEntryResult => ({
    success: false,
    message: toServiceError(err).details,
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

  async function send(req: WireSendRequest, msg: OutgoingMessage): Promise<{ message_id: string }> {
    const handle = producers.get(requireId(req.producer_id, 'producer_id', 'CreateProducer'));
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
    return {
      message_id: m.id,
      receipt_handle: receiptHandle,
      message_body: body.toString('utf8'),
      tag: m.tag ?? '',
      properties,
      born_timestamp: String(m.bornAt),
      reconsume_times: m.reconsumeCount,
      topic: m.topic,
      // Bytes go out only when the text cannot carry them: sending both would double every
      // body and push 2+ MiB messages past clients' default 4 MiB receive limit.
      message_body_bytes: isUtf8(body) ? EMPTY : body,
    };
  }

  const implementation: UntypedServiceImplementation = {
    CreateProducer: unary('CreateProducer', async (req: WireCreateRequest, ctx) => {
      const topic = checkName(req.topic, 'topic', 127);
      const caller = callerOf(ctx, req);
      const endpoint = req.endpoint ?? '';
      const handle = await producers.create({
        ref: router.route(endpoint),
        endpoint,
        caller,
        instanceId: req.instance_id ?? '',
        topic,
        accessKeySecret: req.access_key_secret ?? '',
      });
      return ok({ producer_id: handle.id });
    }),

    SendMessage: unary('SendMessage', async (req: WireSendRequest) => {
      const msg = outgoing(req);
      return ok(await send(req, msg));
    }),

    SendOrderedMessage: unary('SendOrderedMessage', async (req: WireSendRequest) => {
      const msg = outgoing(req);
      const key = req.sharding_key || req.properties?.sharding_key;
      if (!key)
        throw new InvalidArgumentError(
          'sharding_key is required for SendOrderedMessage: it chooses the order',
        );
      if (key.length > 256) throw new InvalidArgumentError('sharding_key is longer than 256 characters');
      msg.key = key;
      return ok(await send(req, msg));
    }),

    SendDelayMessage: unary('SendDelayMessage', async (req: WireSendRequest) => {
      const msg = outgoing(req);
      const at = nonNegativeInt(req.start_deliver_time, 'start_deliver_time');
      const level = nonNegativeInt(req.delay_time_level, 'delay_time_level');
      if (at > 0) msg.deliverAt = at;
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
      return ok(await send(req, msg));
    }),

    SendTransactionMessage: unary('SendTransactionMessage', async (req: WireSendRequest) => {
      const msg = outgoing(req);
      const handle = producers.get(requireId(req.producer_id, 'producer_id', 'CreateProducer'));
      const seconds = req.trans_check_immunity_time || req.properties?.trans_check_immunity_time || 0;
      if (seconds < 0) throw new InvalidArgumentError('trans_check_immunity_time must not be negative');
      const prepared = await producers.use(handle, (p) => p.prepare(msg));
      const id = transactions.add(prepared, seconds > 0 ? seconds * 1000 : config.transactionTimeoutMs);
      metrics.counts.messagesSent++;
      return ok({ message_id: prepared.messageId, transaction_id: id });
    }),

    EndTransaction: unary('EndTransaction', async (req: WireEndTransactionRequest) => {
      const id = requireId(req.transaction_id, 'transaction_id', 'SendTransactionMessage');
      await transactions.end(id, req.commit === true);
      return ok({});
    }),

    CreateConsumer: unary('CreateConsumer', async (req: WireCreateRequest, ctx) => {
      const topic = checkName(req.topic, 'topic', 127);
      const group = checkName(req.group_id, 'group_id', 255);
      const filter = parseTagExpression(req.tag_expression);
      const endpoint = req.endpoint ?? '';
      const session = await consumers.create({
        ref: router.route(endpoint),
        endpoint,
        caller: callerOf(ctx, req),
        accessKeySecret: req.access_key_secret ?? '',
        topic,
        group,
        tagExpression: filter.expression,
      });
      return ok({ consumer_id: session.id });
    }),

    AckMessage: unary('AckMessage', async (req: WireAckRequest) => {
      const id = requireId(req.consumer_id, 'consumer_id', 'CreateConsumer');
      const rh = requireId(req.receipt_handle, 'receipt_handle', 'ReceiveMessages');
      await consumers.ack(id, rh);
      return ok({});
    }),

    NackMessage: unary('NackMessage', async (req: WireAckRequest) => {
      const id = requireId(req.consumer_id, 'consumer_id', 'CreateConsumer');
      const rh = requireId(req.receipt_handle, 'receipt_handle', 'ReceiveMessages');
      await consumers.nack(id, rh, nonNegativeInt(req.delay_ms, 'delay_ms'));
      return ok({});
    }),

    SendMessages: unary('SendMessages', async (req: WireSendMessagesRequest) => {
      const handle = producers.get(requireId(req.producer_id, 'producer_id', 'CreateProducer'));
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

    AckMessages: unary('AckMessages', async (req: WireAckMessagesRequest) => {
      const id = requireId(req.consumer_id, 'consumer_id', 'CreateConsumer');
      consumers.get(id);
      const handles = req.receipt_handles ?? [];
      checkBatchSize(handles.length, 'receipt_handles');
      const results = await Promise.all(
        handles.map((rh) =>
          consumers
            .ack(id, rh)
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

    CleanupProducer: unary('CleanupProducer', async (req: WireCleanupRequest, ctx) => {
      if (req.producer_id) {
        const released = await producers.release(req.producer_id);
        return ok({ cleaned_count: released ? 1 : 0 });
      }
      if (!req.topic)
        throw new InvalidArgumentError('CleanupProducer needs producer_id, or topic (with endpoint)');
      const n = await producers.releaseByTopic(callerOf(ctx, req), req.topic, req.endpoint ?? '');
      return ok({ cleaned_count: n });
    }),

    CleanupConsumer: unary('CleanupConsumer', async (req: WireCleanupRequest, ctx) => {
      if (req.consumer_id) {
        const closed = await consumers.cleanup(req.consumer_id);
        return ok({ cleaned_count: closed ? 1 : 0 });
      }
      if (!req.group_id)
        throw new InvalidArgumentError('CleanupConsumer needs consumer_id, or group_id (with topic)');
      const n = await consumers.cleanupByGroup(callerOf(ctx, req), req.group_id, req.topic ?? '');
      return ok({ cleaned_count: n });
    }),

    HealthCheck: unary(
      'HealthCheck',
      async () => {
        if (deps.isClosing()) return { healthy: false, message: 'shutting down' };
        const results = await Promise.all(router.refs.map((r) => r.broker.health()));
        const bad = results.map((h, i) => ({ h, url: router.refs[i]?.url })).filter((x) => !x.h.ok);
        return bad.length === 0
          ? { healthy: true, message: 'OK' }
          : { healthy: false, message: bad.map((b) => `${b.url}: ${b.h.detail}`).join('; ') };
      },
      { open: true },
    ),

    ReceiveMessages: (call: ServerWritableStream<{ consumer_id?: string }, WireMessage>): void => {
      const fail = (err: unknown): void => {
        const se = toServiceError(err);
        metrics.rpc('ReceiveMessages', STATUS_NAME[se.code] ?? String(se.code), -1);
        call.emit('error', se);
      };
      if (deps.isClosing()) {
        fail(new MqError('UNAVAILABLE', 'the gateway is shutting down; retry against another instance'));
        return;
      }
      let attached: { detach: () => void; done: Promise<void> };
      try {
        auth.authenticate(() => call.metadata.get('authorization')[0]?.toString());
        const id = requireId(call.request.consumer_id, 'consumer_id', 'CreateConsumer');
        let ended = false;
        const sink: DeliverySink = {
          write: (m, rh) => call.write(toWire(m, rh)),
          drained: () => new Promise((resolve) => call.once('drain', resolve)),
          end: (error) => {
            if (ended) return;
            ended = true;
            if (error) fail(error);
            else {
              metrics.rpc('ReceiveMessages', 'OK', -1);
              call.end();
            }
          },
        };
        attached = consumers.attach(id, sink);
        // 'cancelled' fires when the client goes away; 'error'/'close' cover transport failures.
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

  return { implementation, inFlightCalls: () => active };
}
