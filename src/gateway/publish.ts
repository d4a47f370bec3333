import type { ServerDuplexStream } from '@grpc/grpc-js';
import { InvalidArgumentError, MqError, toMqError } from '../core/errors.js';
import type { OutgoingMessage } from '../core/message.js';
import { type CallContext, callContext } from './calls.js';
import type { GatewayConfig } from './config.js';
import type { ConsumerRegistry } from './consumers.js';
import type { Logger } from './log.js';
import { messageOf } from './messages.js';
import type { ProducerHandle, ProducerRegistry } from './producers.js';
import type { SendTrace } from './service.js';
import type { StatusMapper } from './status.js';
import { cutIfStuck } from './stream-cut.js';
import { bounded, LIMITS, requireId } from './validate.js';
import type { WirePublishEntry, WirePublishRequest, WirePublishResponse, WirePublishResult } from './wire.js';

export interface PublishDeps {
  config: GatewayConfig;
  producers: ProducerRegistry;
  consumers: ConsumerRegistry;
  toStatus: StatusMapper;
  log: Logger;
  cutConnection(peer: string): void;
  /** Sends one message (or prepares a transaction) through the handle. */
  sendVia(
    handle: ProducerHandle,
    msg: OutgoingMessage,
    tx: { immunitySeconds: number } | undefined,
    via: SendTrace,
  ): Promise<{ message_id: string; transaction_id: string }>;
}

interface PublishStream {
  readonly ctx: CallContext;
  /** Messages read whose result has not yet been taken by the transport. */
  pending: number;
  pendingBytes: number;
  /** Reading is paused because the window is full. */
  paused: boolean;
  /** Last time a result frame was taken by the transport (or the stream opened). */
  progressAt: number;
  abort(error: MqError): void;
  drain(error: MqError): void;
}

/**
 * Publish streams: the publish fast path. Client frames carry many messages, each with a client
 * sequence number; results go back as they complete, several per frame. Messages with the same
 * sharding key are sent one after another; others concurrently. The stream holds at most
 * PUBLISH_WINDOW messages (and PUBLISH_WINDOW_BYTES) whose results the client has not taken; at
 * the window it stops reading, so HTTP/2 flow control holds the client back.
 */
export class PublishStreams {
  readonly #streams = new Set<PublishStream>();
  readonly #deps: PublishDeps;

  constructor(deps: PublishDeps) {
    this.#deps = deps;
  }

  get size(): number {
    return this.#streams.size;
  }

  /** Ends streams whose client has taken no result for STREAM_STALL_TIMEOUT while the window is full. */
  sweep(now: number): void {
    const limit = this.#deps.config.streamStallTimeoutMs;
    for (const s of this.#streams) {
      if (s.paused && now - s.progressAt > limit) {
        s.abort(
          new MqError(
            'RESOURCE_EXHAUSTED',
            `the Publish stream read no results for ${limit} ms (STREAM_STALL_TIMEOUT) while its window was full; read the results continuously, then reconnect`,
          ),
        );
      }
    }
  }

  /** Shutdown: stop reading every stream; each ends once its sends in progress have reported. */
  endAll(error: MqError): void {
    for (const s of this.#streams) s.drain(error);
  }

  handler(): (call: ServerDuplexStream<WirePublishRequest, WirePublishResponse>) => void {
    const { config, producers, consumers, toStatus, log } = this.#deps;
    const window = config.publishWindow;
    const windowBytes = config.publishWindowBytes;
    return (call) => {
      let ctx: CallContext;
      try {
        ctx = callContext(call);
      } catch (err) {
        call.emit('error', toStatus(err));
        return;
      }
      try {
        consumers.acquireStream(ctx.principal.name || `peer ${ctx.peer}`);
      } catch (err) {
        call.emit('error', toStatus(err));
        return;
      }
      const owner = ctx.principal.name;
      let handle: ProducerHandle | undefined;
      let ended = false;
      let clientDone = false;
      let closingError: MqError | undefined;
      let results: WirePublishResult[] = [];
      let flushScheduled = false;
      const chains = new Map<string, Promise<void>>();
      const via: SendTrace = { rpc: 'Publish', caller: ctx.trace };

      const stream: PublishStream = {
        ctx,
        pending: 0,
        pendingBytes: 0,
        paused: false,
        progressAt: Date.now(),
        abort: (error) => {
          finish(error);
          cutIfStuck(call, () => this.#deps.cutConnection(ctx.peer));
        },
        drain: (error) => {
          closingError = error;
          call.pause();
          maybeFinish();
        },
      };
      this.#streams.add(stream);
      // grpc-js reads ahead up to its stream's high-water mark, 16 frames in object mode, and
      // pause() only stops the 'data' events: 16 frames of MAX_BATCH_BYTES would pass the window.
      // With a mark of one frame, a paused stream takes at most that one off the connection.
      const readable = (call as unknown as { _readableState?: { highWaterMark?: number } })._readableState;
      if (readable && typeof readable.highWaterMark === 'number') readable.highWaterMark = 1;

      const forget = (): void => {
        if (!this.#streams.delete(stream)) return;
        consumers.releaseStream();
      };
      const finish = (err?: unknown): void => {
        if (ended) return;
        ended = true;
        forget();
        if (err === undefined) call.end();
        else call.emit('error', toStatus(err));
      };
      const maybeFinish = (): void => {
        if ((clientDone || closingError) && stream.pending === 0) finish(closingError);
      };
      const flush = (): void => {
        flushScheduled = false;
        if (ended || results.length === 0) return;
        const batch = results;
        results = [];
        call.write({ results: batch }, () => {
          let bytes = 0;
          for (const r of batch) bytes += sizes.get(r) ?? 0;
          stream.pending -= batch.length;
          stream.pendingBytes -= bytes;
          stream.progressAt = Date.now();
          if (
            stream.paused &&
            !closingError &&
            stream.pending < window / 2 &&
            stream.pendingBytes < windowBytes / 2
          ) {
            stream.paused = false;
            call.resume();
          }
          maybeFinish();
        });
      };
      // Sizes of the messages behind results not yet taken by the transport (for the byte window).
      const sizes = new WeakMap<WirePublishResult, number>();
      const report = (r: WirePublishResult, bytes: number): void => {
        sizes.set(r, bytes);
        results.push(r);
        if (flushScheduled) return;
        flushScheduled = true;
        // Results completed in this turn of the event loop go out in one frame; no timer.
        setImmediate(flush);
      };

      const sendEntry = (entry: WirePublishEntry, h: ProducerHandle): void => {
        // Echoed as the client sent it; a number when it fits exactly, since the encoder parses an
        // int64 given as a string into a Long first.
        const raw = entry.sequence ?? '0';
        const sequence = raw.length <= 15 ? Number(raw) : raw;
        const failed = (err: unknown, bytes: number): void => {
          const e = toMqError(err);
          report(
            {
              sequence,
              success: false,
              code: e.code,
              message: toStatus(e).details,
              message_id: '',
              transaction_id: '',
            },
            bytes,
          );
        };
        let msg: OutgoingMessage;
        let bytes = 0;
        try {
          msg = messageOf(entry, config);
          bytes = typeof msg.body === 'string' ? msg.body.length : msg.body.byteLength;
        } catch (err) {
          stream.pending++;
          failed(err, 0);
          return;
        }
        stream.pending++;
        stream.pendingBytes += bytes;
        const tx = entry.transactional
          ? { immunitySeconds: entry.trans_check_immunity_time ?? 0 }
          : undefined;
        const run = (): Promise<void> =>
          this.#deps.sendVia(h, msg, tx, via).then(
            (r) =>
              report(
                {
                  sequence,
                  success: true,
                  code: '',
                  message: 'OK',
                  message_id: r.message_id,
                  transaction_id: r.transaction_id,
                },
                bytes,
              ),
            (err) => failed(err, bytes),
          );
        const key = msg.key;
        if (key === undefined) {
          void run();
          return;
        }
        // Same key: after the previous one's result, so the order holds on every broker.
        const p = (chains.get(key) ?? Promise.resolve()).then(run);
        chains.set(key, p);
        void p.then(() => {
          if (chains.get(key) === p) chains.delete(key);
        });
      };

      call.on('data', (frame: WirePublishRequest) => {
        if (ended || closingError) return;
        try {
          if (!handle) {
            handle = producers.get(requireId(frame.producer_id, 'producer_id', 'CreateProducer'), owner);
          } else if (
            frame.producer_id &&
            bounded(frame.producer_id, 'producer_id', LIMITS.id) !== handle.id
          ) {
            throw new InvalidArgumentError(
              'a Publish stream sends through one producer: open another stream for another',
            );
          }
          const entries = frame.messages ?? [];
          if (entries.length > config.maxBatchSize) {
            throw new InvalidArgumentError(
              `a Publish frame carries ${entries.length} messages; the limit is ${config.maxBatchSize} (MAX_BATCH_SIZE)`,
            );
          }
          for (const entry of entries) sendEntry(entry, handle);
          if (!stream.paused && (stream.pending >= window || stream.pendingBytes >= windowBytes)) {
            stream.paused = true;
            call.pause();
          }
        } catch (err) {
          finish(err);
        }
      });
      call.on('end', () => {
        clientDone = true;
        maybeFinish();
      });
      call.on('error', () => {});
      const gone = (): void => {
        ended = true;
        forget();
      };
      call.once('cancelled', gone);
      call.once('close', gone);
      void log;
    };
  }
}
