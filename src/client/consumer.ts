import { EventEmitter, setMaxListeners } from 'node:events';
import {
  type ClientDuplexStream,
  type ClientReadableStream,
  status as Status,
  type StatusObject,
} from '@grpc/grpc-js';
import type { Span } from '@opentelemetry/api';
import { BoundedMap } from '../core/bounded.js';
import { ClosedError, checkOptionNames, InvalidArgumentError, MqError, toMqError } from '../core/errors.js';
import { AsyncQueue, delay, Notifier } from '../core/lifecycle.js';
import {
  endSpan,
  messageContext,
  messageLink,
  startMessagingSpan,
  tracingOn,
  withSpan,
} from '../core/tracing.js';
import { type AckTarget, ReceivedMessage } from './message.js';
import {
  type BackoffOptions,
  backoffDelay,
  type ResolvedBackoff,
  resolveBackoff,
  retrying,
} from './retry.js';
import { fromStatus, type Rpc } from './rpc.js';
import type {
  WireCreateConsumerResponse,
  WireHandleFailure,
  WireMessage,
  WireSubscribeRequest,
  WireSubscribeResponse,
} from './wire.js';

/** Receives each message; resolves when done with it. The signal aborts when the consumer closes. */
export type MessageHandler = (message: ReceivedMessage, signal: AbortSignal) => unknown;

export interface ConsumerOptions {
  /**
   * Handlers running at once in onMessage mode. Default 16. Sharding-key order holds at any
   * concurrency: the gateway hands out a key's next message only after the previous one is acked.
   */
  concurrency?: number;
  /**
   * onMessage mode: ack when the handler resolves, nack (redeliver after nackDelayMs) when it
   * throws. Default false: the handler acks, as with the original client.
   */
  autoAck?: boolean;
  /** Delay before a nacked message is redelivered. Default 1000 ms. */
  nackDelayMs?: number;
  /**
   * Messages held locally beyond those being handled. At this bound the gRPC stream is paused, so
   * flow control stops the gateway (which stops pulling from the broker). Default 64.
   */
  prefetch?: number;
  /** Where failures go (handler errors, failed acks, a fatal stream error). Else the 'error' event. */
  onError?: (error: MqError, message?: ReceivedMessage) => void;
  /** Reconnect backoff after the gateway goes away. Default: 100 ms doubling to 5 s, forever. */
  reconnect?: BackoffOptions;
  /** How long close() waits for running handlers. Default 10 s. */
  closeTimeoutMs?: number;
  /**
   * Where the group starts when the gateway has never seen it: 'latest' (the default: messages
   * published after the consumer is created), 'earliest' (all the broker still keeps), or a time.
   * A group that already has a position keeps it.
   */
  start?: 'latest' | 'earliest' | Date | number;
}

const CONSUMER_OPTIONS = [
  'concurrency',
  'autoAck',
  'nackDelayMs',
  'prefetch',
  'onError',
  'reconnect',
  'closeTimeoutMs',
  'start',
  'signal',
] as const;

/** Lifecycle events, emitted as 'status'. */
export type ConsumerStatus =
  | { type: 'disconnected'; error: MqError }
  | { type: 'reconnecting'; attempt: number; delayMs: number; error: MqError }
  | { type: 'session-created'; consumerId: string; previousId: string }
  | { type: 'reconnected'; consumerId: string }
  | { type: 'ack-lost'; messageId: string }
  | { type: 'failed'; error: MqError }
  | { type: 'closed' };

interface ConsumerEvents {
  error: [error: MqError, message: ReceivedMessage | undefined];
  status: [status: ConsumerStatus];
}

export interface ConsumerContext {
  rpc: Rpc;
  endpoint: string;
  accessKeyId: string;
  accessKeySecret: string;
  retry: ResolvedBackoff;
  onClose(c: Consumer): void;
}

interface CreateInput {
  instanceId: string;
  topic: string;
  groupId: string;
  tagExpression: string;
  /** The wire form of ConsumerOptions.start ('' for the default). */
  start?: string;
}

/** An ack that failed because the stream the message came on ended: the gateway redelivers it. */
export class StaleReceiptError extends MqError {
  constructor(message: string, cause: unknown) {
    super('NOT_FOUND', message, { cause, retryable: false });
    this.name = 'StaleReceiptError';
  }
}

/** The state of the current Subscribe stream. */
interface SubscribeStream {
  readonly call: ClientDuplexStream<WireSubscribeRequest, WireSubscribeResponse>;
  readonly generation: number;
  /** Credit not yet sent. */
  credit: number;
  acks: string[];
  nacks: Array<{ receipt_handle: string; delay_ms: string }>;
  scheduled: boolean;
  /** Receipt handle -> message id of deliveries not yet acked. */
  readonly delivered: BoundedMap<string, string>;
}

/** Acks and nacks per frame: the gateway's MAX_BATCH_SIZE default. */
const FRAME_SETTLES = 1000;
const RECENT_ACKS = 4096;

/** Statuses after which reconnecting cannot help: the same request would fail the same way. */
const FATAL: ReadonlySet<string> = new Set([
  'INVALID_ARGUMENT',
  'UNAUTHENTICATED',
  'PERMISSION_DENIED',
  'UNSUPPORTED',
  'TOPIC_NOT_FOUND',
]);

/**
 * A consumer session on the gateway: one stream at a time, re-established after the gateway goes
 * away. Consume with onMessage(handler) or `for await (const m of consumer)`.
 *
 * The stream is Subscribe: the read-ahead (`prefetch`) is the credit the gateway may fill, and
 * acks and nacks travel on the same stream, those of one event-loop turn in one frame. An ack
 * resolves once it is sent; one the gateway refuses (its delivery was already released) shows as
 * an 'ack-lost' status, and the message comes again. A gateway without Subscribe (UNIMPLEMENTED)
 * gets ReceiveMessages and one AckMessage per ack instead.
 *
 * Delivery is at least once: a message not acked before its stream ends is redelivered, also
 * when the stream ends because the gateway restarted.
 */
export class Consumer
  extends EventEmitter<ConsumerEvents>
  implements AckTarget, AsyncIterable<ReceivedMessage>
{
  readonly instanceId: string;
  /** The wire start position, used again if the session has to be re-created. */
  readonly #startAt: string;
  readonly topic: string;
  readonly groupId: string;
  readonly tagExpression: string;
  readonly #ctx: ConsumerContext;
  readonly #concurrency: number;
  readonly #autoAck: boolean;
  readonly #nackDelayMs: number;
  readonly #prefetch: number;
  readonly #onError: ConsumerOptions['onError'];
  readonly #reconnect: ResolvedBackoff;
  readonly #closeTimeoutMs: number;
  #consumerId: string;
  /** Bumped for every stream; messages remember theirs, so a late ack can tell it is stale. */
  #generation = 0;
  readonly #queue = new AsyncQueue<ReceivedMessage>();
  #call: ClientReadableStream<WireMessage> | undefined;
  /** False once the gateway answered Subscribe with UNIMPLEMENTED. */
  #streaming = true;
  /** An outage was reported and no stream has received anything since. */
  #disconnected = false;
  #sub: SubscribeStream | undefined;
  /** Receipt handle -> message id of recent acks, to name a message whose ack was refused. */
  readonly #recentAcks = new BoundedMap<string, string>(RECENT_ACKS);
  #paused = false;
  #mode: 'none' | 'handler' | 'iterator' = 'none';
  #loop: Promise<void> | undefined;
  #dispatch: Promise<void> | undefined;
  readonly #running = new Set<Promise<void>>();
  readonly #slot = new Notifier();
  readonly #closing = new AbortController();
  #failed: MqError | undefined;
  #closePromise: Promise<void> | undefined;

  private constructor(
    ctx: ConsumerContext,
    input: CreateInput,
    options: ConsumerOptions,
    consumerId: string,
  ) {
    super();
    // Every call in flight listens on this signal; many concurrent sends are normal, not a leak.
    setMaxListeners(0, this.#closing.signal);
    this.#ctx = ctx;
    this.instanceId = input.instanceId;
    this.#startAt = input.start ?? '';
    this.topic = input.topic;
    this.groupId = input.groupId;
    this.tagExpression = input.tagExpression;
    this.#concurrency = options.concurrency ?? 16;
    this.#autoAck = options.autoAck ?? false;
    this.#nackDelayMs = options.nackDelayMs ?? 1000;
    this.#prefetch = options.prefetch ?? 64;
    this.#onError = options.onError;
    this.#reconnect = reconnectBackoff(options);
    this.#closeTimeoutMs = options.closeTimeoutMs ?? 10_000;
    this.#consumerId = consumerId;
  }

  /** @internal Use MQClient.getConsumer. */
  static async create(
    ctx: ConsumerContext,
    input: CreateInput,
    options: ConsumerOptions,
    signal: AbortSignal | undefined,
  ): Promise<Consumer> {
    checkOptions(options);
    const withStart = { ...input, start: startText(options.start) };
    const id = await createSession(ctx, withStart, signal);
    return new Consumer(ctx, withStart, options, id);
  }

  /** The gateway's id for the current session (changes when the session is re-created). */
  get consumerId(): string {
    return this.#consumerId;
  }

  get closed(): boolean {
    return this.#closing.signal.aborted;
  }

  /** Messages received and not yet handed out, and handlers running. */
  get stats(): { buffered: number; running: number; paused: boolean } {
    // On Subscribe the read-ahead is credit: a full one means the gateway sends nothing more.
    const paused = this.#sub ? this.#queue.size >= this.#prefetch : this.#paused;
    return { buffered: this.#queue.size, running: this.#running.size, paused };
  }

  /**
   * Starts delivering messages to `handler`, at most `concurrency` at a time; handlers are
   * awaited. What a handler throws goes to onError / the 'error' event, never to an unhandled
   * rejection.
   */
  onMessage(handler: MessageHandler): this {
    if (typeof handler !== 'function') throw new InvalidArgumentError('onMessage needs a function');
    this.#claim('handler');
    this.#dispatch = this.#dispatchLoop(handler);
    this.#start();
    return this;
  }

  /** Iterates messages; ack each (message.ack() or ackMessage). Breaking out closes the consumer. */
  [Symbol.asyncIterator](): AsyncIterator<ReceivedMessage> {
    this.#claim('iterator');
    this.#start();
    return {
      next: () => this.#next(),
      return: async () => {
        await this.close();
        return { value: undefined, done: true };
      },
    };
  }

  /**
   * Acknowledges a delivery of the current session with one AckMessage call, which answers for
   * this receipt handle alone (NOT_FOUND for one the session does not hold). message.ack() is the
   * fast path: it travels on the stream.
   */
  ackMessage(receiptHandle: string, options: { signal?: AbortSignal } = {}): Promise<void> {
    return this.#ackOrNack(
      'AckMessage',
      this.#consumerId,
      receiptHandle,
      this.#generation,
      0,
      options.signal,
      false,
    );
  }

  /** Gives a delivery back for redelivery after delayMs (one NackMessage call, as ackMessage). */
  nackMessage(receiptHandle: string, delayMs = 0, options: { signal?: AbortSignal } = {}): Promise<void> {
    return this.#ackOrNack(
      'NackMessage',
      this.#consumerId,
      receiptHandle,
      this.#generation,
      delayMs,
      options.signal,
      false,
    );
  }

  /** @internal Used by ReceivedMessage.ack(). */
  ackWith(consumerId: string, receiptHandle: string, generation: number): Promise<void> {
    return this.#ackOrNack('AckMessage', consumerId, receiptHandle, generation, 0, undefined, true);
  }

  /** @internal Used by ReceivedMessage.nack(). */
  nackWith(consumerId: string, receiptHandle: string, delayMs: number, generation: number): Promise<void> {
    return this.#ackOrNack('NackMessage', consumerId, receiptHandle, generation, delayMs, undefined, true);
  }

  /**
   * Stops taking messages, lets running handlers finish (they see their signal abort) for up to
   * closeTimeoutMs so their acks still count, ends the stream and releases the session on the
   * gateway. Buffered messages that no handler took are redelivered to the group.
   */
  close(): Promise<void> {
    this.#closePromise ??= this.#close();
    return this.#closePromise;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  async #close(): Promise<void> {
    this.#closing.abort(new ClosedError(`consumer for topic "${this.topic}" is closed`));
    this.#call?.pause();
    if (this.#sub) this.#sub.credit = 0;
    this.#queue.drain();
    this.#queue.end();
    this.#slot.notifyAll();
    try {
      if (this.#running.size > 0) {
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([
          Promise.all(this.#running),
          new Promise((resolve) => {
            timer = setTimeout(resolve, this.#closeTimeoutMs);
          }),
        ]);
        clearTimeout(timer);
      }
      this.#call?.cancel();
      // Acks of finished handlers go out first; the half-close then ends the stream, and the
      // gateway releases what was not acked.
      this.#flushSub();
      this.#sub?.call.end();
      await this.#loop;
      await this.#dispatch;
      if (!this.#ctx.rpc.closed) {
        await this.#ctx.rpc
          .unary('CleanupConsumer', { consumer_id: this.#consumerId }, { timeoutMs: 5000 })
          .catch(() => {});
      }
    } finally {
      this.#ctx.onClose(this);
      this.emit('status', { type: 'closed' });
    }
  }

  #claim(mode: 'handler' | 'iterator'): void {
    if (this.closed) throw new ClosedError(`consumer for topic "${this.topic}" is closed`);
    if (this.#mode !== 'none') {
      throw new MqError(
        'FAILED_PRECONDITION',
        `this consumer is already consuming (${this.#mode === 'handler' ? 'onMessage' : 'async iteration'}); ` +
          'use one style per consumer, or create another consumer in the same group',
      );
    }
    this.#mode = mode;
  }

  #start(): void {
    this.#loop ??= this.#connectLoop().catch((err: unknown) => this.#fail(toMqError(err)));
  }

  async #next(): Promise<IteratorResult<ReceivedMessage>> {
    const r = await this.#queue.next();
    this.#maybeResume();
    // A message left the read-ahead: the gateway may send one more.
    if (!r.done) this.#grant(r.value);
    return r;
  }

  #grant(m: ReceivedMessage): void {
    const sub = this.#sub;
    if (!sub || this.closed || m.generationOf() !== sub.generation) return;
    sub.credit++;
    this.#scheduleSub(sub);
  }

  #scheduleSub(sub: SubscribeStream): void {
    if (sub.scheduled) return;
    sub.scheduled = true;
    // Credit, acks and nacks of this turn of the event loop go out in one frame; no timer.
    setImmediate(() => {
      sub.scheduled = false;
      this.#flushSub();
    });
  }

  /** Writes the current stream's pending credit, acks and nacks. */
  #flushSub(): void {
    const sub = this.#sub;
    if (!sub || (sub.credit === 0 && sub.acks.length === 0 && sub.nacks.length === 0)) return;
    const frame: WireSubscribeRequest = {};
    if (sub.credit > 0 && !this.closed) frame.credit = sub.credit;
    sub.credit = 0;
    // At most MAX_BATCH_SIZE (1,000 by default) acks and nacks per frame.
    while (sub.acks.length > 0 || sub.nacks.length > 0 || frame.credit) {
      frame.acks = sub.acks.splice(0, FRAME_SETTLES);
      frame.nacks = sub.nacks.splice(0, FRAME_SETTLES - frame.acks.length);
      const last = sub.acks.length === 0 && sub.nacks.length === 0;
      sub.call.write({ ...frame });
      frame.credit = 0;
      if (last) break;
    }
  }

  #maybeResume(): void {
    if (this.#paused && this.#queue.size <= this.#prefetch >> 1 && !this.closed) {
      this.#paused = false;
      this.#call?.resume();
    }
  }

  async #dispatchLoop(handler: MessageHandler): Promise<void> {
    const signal = this.#closing.signal;
    for (;;) {
      while (this.#running.size >= this.#concurrency && !signal.aborted) {
        await this.#slot.wait(signal).catch(() => {});
      }
      if (signal.aborted) return;
      let r: IteratorResult<ReceivedMessage>;
      try {
        r = await this.#next();
      } catch {
        // The consumer failed; #fail already reported why.
        return;
      }
      if (r.done) return;
      const p = this.#handle(handler, r.value);
      this.#running.add(p);
      void p.then(() => {
        this.#running.delete(p);
        this.#slot.notifyAll();
      });
    }
  }

  /**
   * Never rejects: every failure is reported. With tracing on, the handler runs in a
   * `process <topic>` CONSUMER span whose parent is the message's creation context (its
   * traceparent), also linked as the conventions ask; the handler's own spans nest under it.
   */
  async #handle(handler: MessageHandler, m: ReceivedMessage): Promise<void> {
    if (!tracingOn()) return this.#handleIn(handler, m, undefined);
    const link = messageLink(m.properties);
    const span = startMessagingSpan({
      operation: 'process',
      operationName: 'onMessage',
      destination: m.topic,
      system: 'mqgate',
      group: this.groupId,
      messageId: m.messageId,
      parent: messageContext(m.properties),
      links: link ? [link] : undefined,
    });
    await withSpan(span, () => this.#handleIn(handler, m, span));
  }

  async #handleIn(handler: MessageHandler, m: ReceivedMessage, span: Span | undefined): Promise<void> {
    try {
      await handler(m, this.#closing.signal);
    } catch (err) {
      if (span) endSpan(span, err);
      const text = err instanceof Error ? err.message : String(err);
      this.#report(
        new MqError(
          'INTERNAL',
          `message handler threw for message ${m.messageId} on topic "${m.topic}": ${text}`,
          {
            cause: err,
            retryable: false,
          },
        ),
        m,
      );
      if (this.#autoAck) await m.nack(this.#nackDelayMs).catch((e: unknown) => this.#ackFailed(e, m));
      return;
    }
    if (span) endSpan(span);
    if (this.#autoAck) await m.ack().catch((e: unknown) => this.#ackFailed(e, m));
  }

  #ackFailed(err: unknown, m: ReceivedMessage): void {
    if (err instanceof StaleReceiptError) this.emit('status', { type: 'ack-lost', messageId: m.messageId });
    else this.#report(toMqError(err), m);
  }

  async #ackOrNack(
    method: 'AckMessage' | 'NackMessage',
    consumerId: string,
    receiptHandle: string,
    generation: number,
    delayMs: number,
    signal: AbortSignal | undefined,
    inStream: boolean,
  ): Promise<void> {
    if (!receiptHandle) throw new InvalidArgumentError(`${method} needs the message's receiptHandle`);
    const sub = this.#sub;
    if (inStream && sub && generation === sub.generation && consumerId === this.#consumerId) {
      // Queued for this turn's frame. The gateway answers only acks it refuses (an 'ack-lost'
      // status), so there is nothing more to wait for, and a loop that awaits each ack is not
      // held to one message per turn of the event loop.
      if (method === 'AckMessage') {
        sub.acks.push(receiptHandle);
        const id = sub.delivered.get(receiptHandle);
        sub.delivered.delete(receiptHandle);
        if (id !== undefined) this.#rememberAck(receiptHandle, id);
      } else {
        sub.nacks.push({ receipt_handle: receiptHandle, delay_ms: String(Math.max(0, Math.round(delayMs))) });
      }
      this.#scheduleSub(sub);
      return;
    }
    if (inStream && this.#streaming && generation !== this.#generation) {
      // The stream that delivered it is gone: the gateway released it when that stream ended.
      throw new StaleReceiptError(
        `${method}: the stream that delivered this message ended (the gateway restarted or the connection ` +
          'dropped), so the gateway already released it for redelivery; the redelivered copy can be acked',
        undefined,
      );
    }
    const req =
      method === 'AckMessage'
        ? { consumer_id: consumerId, receipt_handle: receiptHandle }
        : {
            consumer_id: consumerId,
            receipt_handle: receiptHandle,
            delay_ms: String(Math.max(0, Math.round(delayMs))),
          };
    try {
      await retrying(this.#ctx.retry, signal, () => this.#ctx.rpc.unary(method, req, { signal }));
    } catch (err) {
      const e = toMqError(err);
      if (e.code === 'NOT_FOUND' && (generation !== this.#generation || consumerId !== this.#consumerId)) {
        throw new StaleReceiptError(
          `${method}: the stream that delivered this message ended (the gateway restarted or the connection ` +
            'dropped), so the gateway already released it for redelivery; the redelivered copy can be acked',
          e,
        );
      }
      throw e;
    }
  }

  /** Keeps one stream open, reconnecting with backoff and full jitter until close() or a fatal error. */
  async #connectLoop(): Promise<void> {
    const signal = this.#closing.signal;
    let attempt = 0;
    let needSession = false;
    let created = false;
    while (!signal.aborted) {
      if (needSession) {
        try {
          const previousId = this.#consumerId;
          this.#consumerId = await createSession(
            this.#ctx,
            {
              instanceId: this.instanceId,
              topic: this.topic,
              groupId: this.groupId,
              tagExpression: this.tagExpression,
              // The gateway lost the session (it restarted): a durable broker still knows the
              // group's position, so this start does not apply there; a broker that lost the
              // group too (the embedded one) gets everything it kept since, which is what was
              // published while this consumer was away.
              start: this.#startAt === '' || this.#startAt === 'latest' ? 'earliest' : this.#startAt,
            },
            signal,
          );
          needSession = false;
          created = true;
          this.emit('status', { type: 'session-created', consumerId: this.#consumerId, previousId });
        } catch (err) {
          if (signal.aborted) return;
          const e = toMqError(err);
          if (!e.retryable) {
            this.#fail(e);
            return;
          }
          attempt = await this.#backoff(attempt, e);
          continue;
        }
      }
      const started = Date.now();
      const justCreated = created;
      created = false;
      const { status, gotData } = await this.#streamOnce();
      if (signal.aborted) return;
      if (gotData || Date.now() - started > this.#reconnect.maxDelayMs) attempt = 0;
      const e =
        status.code === Status.OK
          ? new MqError('NOT_FOUND', 'the gateway ended the stream: the consumer session was closed')
          : fromStatus('ReceiveMessages', status.code, status.details, this.#ctx.rpc.address);
      // One 'disconnected' per outage; the failed attempts after it show as 'reconnecting'.
      if (attempt === 0) {
        this.#disconnected = true;
        this.emit('status', { type: 'disconnected', error: e });
      }
      if (e.code === 'NOT_FOUND') {
        // The gateway no longer holds the session (restart, cleanup, expiry): start a new one. It
        // answered, so it is up: no wait, unless a session made a moment ago is already gone.
        needSession = true;
        if (!justCreated) continue;
      } else if (FATAL.has(e.code) || (e.code === 'RESOURCE_EXHAUSTED' && !e.retryable)) {
        // RESOURCE_EXHAUSTED on a stream means a message larger than grpc.max_receive_message_length:
        // reconnecting would receive the same message again.
        this.#fail(e);
        return;
      }
      if (attempt + 1 >= this.#reconnect.maxAttempts) {
        this.#fail(e);
        return;
      }
      attempt = await this.#backoff(attempt, e);
    }
  }

  async #backoff(attempt: number, cause: MqError): Promise<number> {
    if (attempt + 1 >= this.#reconnect.maxAttempts) {
      throw new MqError('UNAVAILABLE', `consumer gave up after ${attempt + 1} attempts: ${cause.message}`, {
        cause,
      });
    }
    const ms = backoffDelay(this.#reconnect, attempt);
    this.emit('status', {
      type: 'reconnecting',
      attempt: attempt + 1,
      delayMs: Math.round(ms),
      error: cause,
    });
    await delay(ms, this.#closing.signal).catch(() => {});
    return attempt + 1;
  }

  #rememberAck(rh: string, messageId: string): void {
    this.#recentAcks.set(rh, messageId);
  }

  /** Runs one stream to its end (Subscribe, or ReceiveMessages on an older gateway). */
  async #streamOnce(): Promise<{ status: Pick<StatusObject, 'code' | 'details'>; gotData: boolean }> {
    if (this.#streaming) {
      const r = await this.#subscribeOnce();
      if (r.status.code !== Status.UNIMPLEMENTED || r.gotData) return r;
      // The gateway has no Subscribe: ReceiveMessages from now on, at once.
      this.#streaming = false;
    }
    return this.#receiveOnce();
  }

  /** Runs one Subscribe stream to its end; resolves with its status. */
  #subscribeOnce(): Promise<{ status: Pick<StatusObject, 'code' | 'details'>; gotData: boolean }> {
    const generation = ++this.#generation;
    this.#queue.drain();
    const consumerId = this.#consumerId;
    let call: ClientDuplexStream<WireSubscribeRequest, WireSubscribeResponse>;
    try {
      call = this.#ctx.rpc.duplex<WireSubscribeRequest, WireSubscribeResponse>('Subscribe');
    } catch (err) {
      const e = toMqError(err);
      return Promise.resolve({ status: { code: Status.UNAVAILABLE, details: e.message }, gotData: false });
    }
    const sub: SubscribeStream = {
      call,
      generation,
      credit: 0,
      acks: [],
      nacks: [],
      scheduled: false,
      delivered: new BoundedMap(RECENT_ACKS),
    };
    this.#sub = sub;
    let gotData = false;
    call.write({ open: { consumer_id: consumerId }, credit: this.#prefetch });
    return new Promise((resolve) => {
      call.on('data', (frame: WireSubscribeResponse) => {
        gotData = true;
        this.#reconnected();
        if (this.#queue.ended || this.#generation !== generation) return;
        for (const wire of frame.messages ?? []) {
          sub.delivered.set(wire.receipt_handle, wire.message_id);
          this.#queue.push(new ReceivedMessage(wire, this, consumerId, generation));
        }
        for (const f of frame.failures ?? []) this.#settleFailed(f);
      });
      call.on('error', () => {});
      call.once('status', (status: StatusObject) => {
        if (this.#sub === sub) this.#sub = undefined;
        call.removeAllListeners('data');
        resolve({ status, gotData });
      });
    });
  }

  #reconnected(): void {
    if (!this.#disconnected) return;
    this.#disconnected = false;
    this.emit('status', { type: 'reconnected', consumerId: this.#consumerId });
  }

  #settleFailed(f: WireHandleFailure): void {
    const messageId = this.#recentAcks.get(f.receipt_handle) ?? '';
    this.#recentAcks.delete(f.receipt_handle);
    if (f.code === 'NOT_FOUND') {
      this.emit('status', { type: 'ack-lost', messageId });
      return;
    }
    this.#report(
      new MqError(
        (f.code || 'INTERNAL') as MqError['code'],
        `ack or nack of message ${messageId || f.receipt_handle} failed: ${f.message}`,
      ),
    );
  }

  /** Runs one ReceiveMessages stream to its end; resolves with its status. */
  #receiveOnce(): Promise<{ status: Pick<StatusObject, 'code' | 'details'>; gotData: boolean }> {
    const generation = ++this.#generation;
    // Messages still buffered from an earlier stream were released by the gateway when that stream
    // ended; handing them out would only produce acks that fail.
    this.#queue.drain();
    const consumerId = this.#consumerId;
    let call: ClientReadableStream<WireMessage>;
    try {
      call = this.#ctx.rpc.receive(consumerId);
    } catch (err) {
      const e = toMqError(err);
      return Promise.resolve({ status: { code: Status.UNAVAILABLE, details: e.message }, gotData: false });
    }
    this.#call = call;
    this.#paused = false;
    let gotData = false;
    return new Promise((resolve) => {
      call.on('data', (wire: WireMessage) => {
        gotData = true;
        this.#reconnected();
        if (this.#queue.ended || this.#generation !== generation) return;
        this.#queue.push(new ReceivedMessage(wire, this, consumerId, generation));
        if (this.#queue.size >= this.#prefetch && !this.#paused) {
          this.#paused = true;
          call.pause();
        }
      });
      // The 'status' event carries the same information; without a listener 'error' would throw.
      call.on('error', () => {});
      call.once('status', (status: StatusObject) => {
        if (this.#call === call) this.#call = undefined;
        call.removeAllListeners('data');
        resolve({ status, gotData });
      });
    });
  }

  #fail(err: MqError): void {
    if (this.#failed || this.closed) return;
    this.#failed = err;
    this.#queue.drain();
    this.#queue.end(err);
    this.emit('status', { type: 'failed', error: err });
    // An iterator rethrows the error itself; a handler-mode consumer has nobody else to tell.
    if (this.#mode === 'handler') this.#report(err);
  }

  #report(err: MqError, message?: ReceivedMessage): void {
    try {
      if (this.#onError) this.#onError(err, message);
      else if (this.listenerCount('error') > 0) this.emit('error', err, message);
      else process.emitWarning(err);
    } catch (thrown) {
      // An error callback that throws must not take the consumer down with it.
      process.emitWarning(toMqError(thrown, 'INTERNAL', 'consumer onError callback threw'));
    }
  }
}

function reconnectBackoff(o: ConsumerOptions): ResolvedBackoff {
  return resolveBackoff(
    { initialDelayMs: 100, maxDelayMs: 5000, maxAttempts: Number.POSITIVE_INFINITY, ...o.reconnect },
    Number.POSITIVE_INFINITY,
  );
}

function checkOptions(o: ConsumerOptions): void {
  checkOptionNames(o, CONSUMER_OPTIONS, 'getConsumer');
  reconnectBackoff(o);
  const positiveInt = (v: number | undefined, name: string): void => {
    if (v !== undefined && (!Number.isSafeInteger(v) || v < 1)) {
      throw new InvalidArgumentError(`${name} must be a positive integer, got ${String(v)}`);
    }
  };
  positiveInt(o.concurrency, 'concurrency');
  positiveInt(o.prefetch, 'prefetch');
  if (o.nackDelayMs !== undefined && !(o.nackDelayMs >= 0)) {
    throw new InvalidArgumentError(`nackDelayMs must be >= 0, got ${String(o.nackDelayMs)}`);
  }
  if (o.closeTimeoutMs !== undefined && !(o.closeTimeoutMs >= 0)) {
    throw new InvalidArgumentError(`closeTimeoutMs must be >= 0, got ${String(o.closeTimeoutMs)}`);
  }
}

function startText(start: ConsumerOptions['start']): string {
  if (start === undefined) return '';
  if (start === 'latest' || start === 'earliest') return start;
  const ms = start instanceof Date ? start.getTime() : start;
  if (!Number.isSafeInteger(ms) || ms < 0) {
    throw new InvalidArgumentError(
      `start must be 'latest', 'earliest', a Date or epoch ms, got ${String(start)}`,
    );
  }
  return String(ms);
}

async function createSession(
  ctx: ConsumerContext,
  input: CreateInput,
  signal: AbortSignal | undefined,
): Promise<string> {
  const req = {
    endpoint: ctx.endpoint,
    access_key_id: ctx.accessKeyId,
    access_key_secret: ctx.accessKeySecret,
    instance_id: input.instanceId,
    topic: input.topic,
    group_id: input.groupId,
    tag_expression: input.tagExpression,
    start: input.start ?? '',
  };
  return retrying(ctx.retry, signal, async () => {
    const res = await ctx.rpc.unary<WireCreateConsumerResponse>('CreateConsumer', req, { signal });
    if (!res.consumer_id) throw new MqError('INTERNAL', 'CreateConsumer returned no consumer_id');
    return res.consumer_id;
  });
}
