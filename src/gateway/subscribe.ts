import type { ServerDuplexStream } from '@grpc/grpc-js';
import { InvalidArgumentError, toMqError } from '../core/errors.js';
import { type CallContext, callContext } from './calls.js';
import type { GatewayConfig } from './config.js';
import type { ConsumerRegistry, DeliverySink, Session } from './consumers.js';
import type { Logger } from './log.js';
import { wireMessage } from './messages.js';
import type { StatusMapper } from './status.js';
import { cutIfStuck } from './stream-cut.js';
import { atMost, bounded, LIMITS, nonNegativeInt } from './validate.js';
import type {
  WireHandleFailure,
  WireSubscribeOpen,
  WireSubscribeRequest,
  WireSubscribeResponse,
} from './wire.js';

/** Messages per server frame at most, and the default. */
export const SUBSCRIBE_MAX_BATCH = 256;
/** Bytes of messages per server frame at most, and the default (one message always fits). */
export const SUBSCRIBE_MAX_BATCH_BYTES = 1024 * 1024;

export interface SubscribeDeps {
  config: GatewayConfig;
  consumers: ConsumerRegistry;
  toStatus: StatusMapper;
  log: Logger;
  cutConnection(peer: string): void;
  /** Bytes written so far on the connection a call came from. */
  transportBytes(peer: string): number;
  /** Creates a session for an open frame's subscription (permissions checked). */
  createSession(open: WireSubscribeOpen, ctx: CallContext): Promise<Session>;
}

/**
 * The Subscribe stream: the consume fast path. One stream carries credit and acks from the client
 * and batches of deliveries to it, instead of one unary call per ack and one stream message per
 * delivery. The session never has more unacked deliveries than the credit granted and
 * MESSAGE_BUFFER_SIZE allow; a stream that ends releases its unacked deliveries, and a session
 * the stream created (a subscription in the open frame) is closed with it.
 */
export function subscribeHandler(
  deps: SubscribeDeps,
): (call: ServerDuplexStream<WireSubscribeRequest, WireSubscribeResponse>) => void {
  const { config, consumers, toStatus, log } = deps;
  return (call) => {
    let ctx: CallContext;
    try {
      ctx = callContext(call);
    } catch (err) {
      call.emit('error', toStatus(err));
      return;
    }
    const owner = ctx.principal.name;
    let session: Session | undefined;
    let ownsSession = false;
    let attached: { detach: () => void } | undefined;
    let opened = false;
    let ended = false;
    let credit = 0;
    let failures: WireHandleFailure[] = [];
    let failureFlush = false;

    const release = (): void => {
      attached?.detach();
      attached = undefined;
      if (ownsSession && session) {
        const id = session.id;
        ownsSession = false;
        consumers.cleanup(id, owner).catch((err) => log.warn({ err }, 'closing a Subscribe session failed'));
      }
    };
    const finish = (err?: unknown): void => {
      if (ended) return;
      ended = true;
      release();
      if (err === undefined) call.end();
      else call.emit('error', toStatus(err));
    };
    const fail = (rh: string, err: unknown): void => {
      const e = toMqError(err);
      failures.push({ receipt_handle: rh.slice(0, LIMITS.id), code: e.code, message: toStatus(e).details });
      if (failureFlush) return;
      failureFlush = true;
      // Failures of one frame's acks go out together, after the current I/O callbacks: no timer.
      setImmediate(() => {
        failureFlush = false;
        if (ended || failures.length === 0) return;
        const batch = failures;
        failures = [];
        call.write({ failures: batch });
      });
    };

    const settle = (frame: WireSubscribeRequest, s: Session): void => {
      const acks = frame.acks ?? [];
      const nacks = frame.nacks ?? [];
      if (acks.length + nacks.length > config.maxBatchSize) {
        throw new InvalidArgumentError(
          `a Subscribe frame carries ${acks.length + nacks.length} acks and nacks; the limit is ${config.maxBatchSize} (MAX_BATCH_SIZE)`,
        );
      }
      if (acks.length + nacks.length === 0) return;
      // One settle span per frame (when tracing is on), ended when its acks and nacks are done.
      const span = s.settleSpan(
        'Subscribe',
        nacks.length === 0 ? acks : [...acks, ...nacks.map((n) => n.receipt_handle ?? '')],
        ctx.trace,
      );
      const work: Array<Promise<unknown>> | undefined = span ? [] : undefined;
      for (const rh of acks) {
        try {
          const p = s.ack(bounded(rh, 'receipt_handle', LIMITS.id), false).catch((err) => fail(rh, err));
          work?.push(p);
        } catch (err) {
          fail(rh, err);
        }
      }
      for (const n of nacks) {
        const rh = n.receipt_handle ?? '';
        try {
          const delayMs = atMost(
            nonNegativeInt(n.delay_ms, 'delay_ms'),
            config.maxNackDelayMs,
            'delay_ms',
            'MAX_NACK_DELAY',
          );
          const p = s.nack(bounded(rh, 'receipt_handle', LIMITS.id), delayMs).catch((err) => fail(rh, err));
          work?.push(p);
        } catch (err) {
          fail(rh, err);
        }
      }
      if (span && work) void Promise.allSettled(work).then(() => span.end());
    };

    const apply = (frame: WireSubscribeRequest): void => {
      const s = session as Session;
      const more = frame.credit ?? 0;
      if (!Number.isInteger(more) || more < 0) {
        throw new InvalidArgumentError(`credit must be a non-negative integer, got ${String(more)}`);
      }
      settle(frame, s);
      if (more > 0) {
        credit += more;
        s.wake();
      }
    };

    const open = async (o: WireSubscribeOpen): Promise<void> => {
      const maxBatch = Math.min(o.max_batch_messages || SUBSCRIBE_MAX_BATCH, SUBSCRIBE_MAX_BATCH);
      const maxBatchBytes = Math.min(
        o.max_batch_bytes || SUBSCRIBE_MAX_BATCH_BYTES,
        SUBSCRIBE_MAX_BATCH_BYTES,
      );
      if (o.consumer_id) {
        session = consumers.get(bounded(o.consumer_id, 'open.consumer_id', LIMITS.id), owner);
      } else {
        if (!o.topic || !o.group_id) {
          throw new InvalidArgumentError(
            'the open frame needs consumer_id (a session from CreateConsumer), or topic and group_id to create one',
          );
        }
        session = await deps.createSession(o, ctx);
        ownsSession = true;
        // The stream may have ended while the session was being created.
        if (ended) {
          release();
          return;
        }
      }
      const sink: DeliverySink = {
        rpc: 'Subscribe',
        maxBatch,
        maxBatchBytes,
        maxInFlight: o.max_in_flight ?? 0,
        transportBytes: () => deps.transportBytes(ctx.peer),
        credit: () => credit,
        write: (batch, flushed) => {
          credit -= batch.length;
          call.write({ messages: batch.map((b) => wireMessage(b.message, b.receiptHandle, true)) }, flushed);
        },
        end: (error) => finish(error),
        abort: (error) => {
          finish(error);
          cutIfStuck(call, () => deps.cutConnection(ctx.peer));
        },
      };
      call.write({ consumer_id: session.id });
      attached = consumers.attach(session.id, owner, sink);
    };

    call.on('data', (frame: WireSubscribeRequest) => {
      if (ended) return;
      try {
        if (opened) {
          if (frame.open) throw new InvalidArgumentError('open is allowed in the first Subscribe frame only');
          apply(frame);
          return;
        }
        if (!frame.open) {
          throw new InvalidArgumentError(
            'the first Subscribe frame must carry open: a consumer_id, or a topic and group_id',
          );
        }
        opened = true;
        // Frames behind the open frame wait until the session exists.
        call.pause();
        open(frame.open)
          .then(() => {
            if (ended) return;
            // The open frame's own credit and acks are checked like any frame's.
            apply(frame);
            call.resume();
          })
          .catch((err: unknown) => finish(err));
      } catch (err) {
        finish(err);
      }
    });
    // The client half-closed: it grants no more credit and acks nothing more, so the stream ends
    // and its unacked deliveries go back.
    call.on('end', () => finish());
    call.on('error', () => {});
    const gone = (): void => {
      ended = true;
      release();
    };
    call.once('cancelled', gone);
    call.once('close', gone);
  };
}
