import { setMaxListeners } from 'node:events';
import { ClosedError, InvalidArgumentError, MqError, toMqError } from '../core/errors.js';
import { abortable, delay } from '../core/lifecycle.js';
import { ATTR, endSpan, startMessagingSpan, tracingOn, withTraceContext } from '../core/tracing.js';
import { type MessageBody, type PropertiesInput, wireBody, wireProperties } from './message.js';
import { PublishChannel, type PublishEntryInput, PublishUnsupportedError } from './publish-stream.js';
import { backoffDelay, type ResolvedBackoff, retrying } from './retry.js';
import type { CallControl, Rpc, UnaryMethod } from './rpc.js';
import type { WireCreateProducerResponse, WireProperties, WireSendResponse } from './wire.js';

export interface SendResult {
  messageId: string;
  /** Set by gateways that return one; mqgate leaves it empty on sends. */
  receiptHandle: string;
}

export interface SendOptions {
  signal?: AbortSignal;
  /** Deadline for each attempt; the client's callTimeoutMs by default. */
  timeoutMs?: number;
}

/** When a delayed message is delivered: a RocketMQ level (1-18), an epoch time, or a delay. */
export type DelaySpec = { delayTimeLevel: number } | { startDeliverTime: number } | { delayMs: number };

export interface TransactionOptions extends SendOptions {
  /** Seconds the gateway waits for commit()/rollback() before committing on its own. */
  transCheckImmunityTime?: number;
}

/** A sent, not yet visible transaction message. */
export interface TransactionHandle {
  readonly messageId: string;
  readonly transactionId: string;
  /** Makes the message visible to consumers. */
  commit(options?: SendOptions): Promise<void>;
  /** Discards the message. */
  rollback(options?: SendOptions): Promise<void>;
}

export interface ProducerContext {
  rpc: Rpc;
  endpoint: string;
  accessKeyId: string;
  accessKeySecret: string;
  retry: ResolvedBackoff;
  /** Called once the producer closed, so the client forgets it. */
  onClose(p: Producer): void;
}

interface CreateInput {
  instanceId: string;
  topic: string;
}

/** Sends that travel on the Publish stream when the gateway has it. */
const STREAMED: ReadonlySet<UnaryMethod> = new Set([
  'SendMessage',
  'SendOrderedMessage',
  'SendDelayMessage',
  'SendTransactionMessage',
]);

/**
 * Publishes to one topic through the gateway.
 *
 * Sends travel on one Publish stream per producer: those made in the same turn of the event loop
 * share a frame, and each resolves with its own result. A gateway without the Publish stream
 * (UNIMPLEMENTED) gets the unary calls (SendMessage and friends) instead, from then on.
 *
 * Retries: a send that fails with UNAVAILABLE (gateway restarting, connection dropped) or with the
 * gateway's MAX_CONCURRENT refusal is retried with exponential backoff and full jitter, up to the
 * client's `retry.maxAttempts`. Other failures are not retried. A producer handle the gateway no
 * longer knows (NOT_FOUND: it restarted, or the handle expired) is re-created and the send tried
 * once more.
 *
 * Duplicate risk: when the connection drops after the gateway received a send but before its
 * answer arrived, the send fails with UNAVAILABLE although the broker stored the message, and the
 * retry stores it again. Delivery is at least once; consumers that must not act twice should
 * deduplicate, for example on a messageKey the publisher sets.
 */
export class Producer {
  readonly instanceId: string;
  readonly topic: string;
  readonly #ctx: ProducerContext;
  #producerId: string;
  /** Shared by concurrent sends that all found the handle expired: one CreateProducer for all. */
  #recreating: Promise<string> | undefined;
  readonly #closing = new AbortController();
  readonly #inFlight = new Set<Promise<unknown>>();
  readonly #channel: PublishChannel;
  #closePromise: Promise<void> | undefined;

  private constructor(ctx: ProducerContext, input: CreateInput, producerId: string) {
    // Every call in flight listens on this signal; many concurrent sends are normal, not a leak.
    setMaxListeners(0, this.#closing.signal);
    this.#ctx = ctx;
    this.instanceId = input.instanceId;
    this.topic = input.topic;
    this.#producerId = producerId;
    this.#channel = new PublishChannel(ctx.rpc, ctx.rpc.callTimeoutMs);
  }

  /** Whether sends use the Publish stream (false after the gateway answered UNIMPLEMENTED). */
  get streaming(): boolean {
    return this.#channel.supported;
  }

  /** @internal Use MQClient.getProducer. */
  static async create(ctx: ProducerContext, input: CreateInput, control: CallControl): Promise<Producer> {
    const id = await createHandle(ctx, input, control);
    return new Producer(ctx, input, id);
  }

  /** The gateway's id for this producer (changes when the handle is re-created). */
  get producerId(): string {
    return this.#producerId;
  }

  get closed(): boolean {
    return this.#closing.signal.aborted;
  }

  /** Sends one message. */
  async publishMessage(
    body: MessageBody,
    tag?: string,
    properties?: PropertiesInput,
    options?: SendOptions,
  ): Promise<SendResult> {
    const req = { ...wireBody(body), tag: tag ?? '', properties: wireProperties(properties) };
    return result(await this.#send('SendMessage', req, options));
  }

  /** Sends a message ordered by `shardingKey`: same key, same order at the consumer. */
  async publishOrderedMessage(
    body: MessageBody,
    tag: string | undefined,
    properties: PropertiesInput,
    shardingKey: string,
    options?: SendOptions,
  ): Promise<SendResult> {
    if (!shardingKey) throw new InvalidArgumentError('publishOrderedMessage needs a non-empty shardingKey');
    const req = {
      ...wireBody(body),
      tag: tag ?? '',
      properties: wireProperties(properties),
      sharding_key: shardingKey,
    };
    return result(await this.#send('SendOrderedMessage', req, options));
  }

  /** Sends a message delivered later: after a RocketMQ delay level, at an epoch time, or after delayMs. */
  async publishDelayMessage(
    body: MessageBody,
    tag: string | undefined,
    properties: PropertiesInput,
    when: DelaySpec,
    options?: SendOptions,
  ): Promise<SendResult> {
    let level = 0;
    let at = 0;
    if ('delayTimeLevel' in when) level = when.delayTimeLevel;
    else if ('startDeliverTime' in when) at = when.startDeliverTime;
    else if ('delayMs' in when) {
      if (!Number.isFinite(when.delayMs) || when.delayMs < 0) {
        throw new InvalidArgumentError(`delayMs must be a number >= 0, got ${String(when.delayMs)}`);
      }
      at = Date.now() + Math.round(when.delayMs);
    }
    if (
      !Number.isSafeInteger(level) ||
      !Number.isSafeInteger(at) ||
      level < 0 ||
      at < 0 ||
      level + at === 0
    ) {
      throw new InvalidArgumentError(
        'publishDelayMessage needs { delayTimeLevel: 1-18 }, { startDeliverTime: epoch ms } or { delayMs }',
      );
    }
    const req = {
      ...wireBody(body),
      tag: tag ?? '',
      properties: wireProperties(properties),
      delay_time_level: String(level),
      start_deliver_time: String(at),
    };
    return result(await this.#send('SendDelayMessage', req, options));
  }

  /**
   * Sends a transaction (half) message: consumers see it only after commit(). One left unresolved
   * past transCheckImmunityTime (or the gateway's TRANSACTION_TIMEOUT) is committed by the gateway.
   */
  async publishTransactionMessage(
    body: MessageBody,
    tag?: string,
    properties?: PropertiesInput,
    options: TransactionOptions = {},
  ): Promise<TransactionHandle> {
    const req = {
      ...wireBody(body),
      tag: tag ?? '',
      properties: wireProperties(properties),
      trans_check_immunity_time: options.transCheckImmunityTime ?? 0,
    };
    const res = await this.#send('SendTransactionMessage', req, options);
    const transactionId = res.transaction_id ?? '';
    const end = (commit: boolean, o?: SendOptions): Promise<void> =>
      // EndTransaction is idempotent on the gateway (it remembers outcomes), so retrying is safe.
      this.#send('EndTransaction', { transaction_id: transactionId, commit }, o).then(() => undefined);
    return {
      messageId: res.message_id ?? '',
      transactionId,
      commit: (o) => end(true, o),
      rollback: (o) => end(false, o),
    };
  }

  /**
   * Stops at once: pending retries and calls fail with CLOSED; then the gateway is told to release
   * the handle (best effort: if it is unreachable, it reaps the handle after PRODUCER_HANDLE_TTL).
   */
  close(): Promise<void> {
    this.#closePromise ??= this.#close();
    return this.#closePromise;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  async #close(): Promise<void> {
    this.#closing.abort(new ClosedError(`producer for topic "${this.topic}" is closed`));
    this.#channel.close();
    try {
      await Promise.allSettled([...this.#inFlight, this.#recreating]);
      if (!this.#ctx.rpc.closed) {
        await this.#ctx.rpc
          .unary('CleanupProducer', { producer_id: this.#producerId }, { timeoutMs: 5000 })
          .catch(() => {});
      }
    } finally {
      this.#ctx.onClose(this);
    }
  }

  #send(method: UnaryMethod, req: object, options: SendOptions = {}): Promise<WireSendResponse> {
    if (this.closed) {
      return Promise.reject(new ClosedError(`${method}: the producer for topic "${this.topic}" is closed`));
    }
    const p =
      STREAMED.has(method) && tracingOn()
        ? this.#tracedSend(method, req as { properties: WireProperties }, options)
        : this.#sendWithRetry(method, req, options);
    this.#inFlight.add(p);
    const forget = (): void => {
      this.#inFlight.delete(p);
    };
    p.then(forget, forget);
    return p;
  }

  /**
   * A send inside a `send <topic>` PRODUCER span (child of the caller's active span), whose context
   * the message carries in its traceparent property, so consumers' spans link back to it.
   */
  async #tracedSend(
    method: UnaryMethod,
    req: { properties: WireProperties },
    options: SendOptions,
  ): Promise<WireSendResponse> {
    const span = startMessagingSpan({
      operation: 'send',
      operationName: method,
      destination: this.topic,
      system: 'mqgate',
    });
    try {
      const properties = { ...req.properties, properties: withTraceContext(req.properties.properties, span) };
      const res = await this.#sendWithRetry(method, { ...req, properties }, options);
      if (res.message_id) span.setAttribute(ATTR.messageId, res.message_id);
      endSpan(span);
      return res;
    } catch (err) {
      endSpan(span, err);
      throw err;
    }
  }

  async #sendWithRetry(method: UnaryMethod, req: object, options: SendOptions): Promise<WireSendResponse> {
    const signal = options.signal
      ? AbortSignal.any([options.signal, this.#closing.signal])
      : this.#closing.signal;
    const { retry } = this.#ctx;
    let recreated = false;
    for (let attempt = 0; ; attempt++) {
      const id = this.#producerId;
      try {
        if (STREAMED.has(method) && this.#channel.supported) {
          const entry: PublishEntryInput = { ...req, transactional: method === 'SendTransactionMessage' };
          // Only the caller's own signal is watched per send: close() fails the channel's sends
          // itself, and a listener per send on the producer's signal would cost more than the send.
          return await this.#channel.send(id, entry, options.signal);
        }
        return await this.#ctx.rpc.unary<WireSendResponse>(
          method,
          { ...req, producer_id: id },
          { signal, timeoutMs: options.timeoutMs },
        );
      } catch (err) {
        // The gateway has no Publish stream: the same send goes as a unary call, not counted.
        if (err instanceof PublishUnsupportedError) {
          attempt--;
          continue;
        }
        const e = this.#closedOr(err, signal, method);
        if (e.code === 'NOT_FOUND' && method !== 'EndTransaction' && !recreated) {
          recreated = true;
          await this.#recreate(id, signal);
          attempt--;
          continue;
        }
        if (!e.retryable || attempt + 1 >= retry.maxAttempts) throw e;
        await delay(backoffDelay(retry, attempt), signal).catch((abortErr: unknown) => {
          throw this.#closedOr(abortErr, signal, method);
        });
      }
    }
  }

  /** Re-creates the handle unless another send already did (the id moved on). */
  async #recreate(staleId: string, signal: AbortSignal): Promise<void> {
    if (this.#producerId !== staleId) return;
    this.#recreating ??= createHandle(
      this.#ctx,
      { instanceId: this.instanceId, topic: this.topic },
      { signal: this.#closing.signal },
    ).finally(() => {
      this.#recreating = undefined;
    });
    const id = await abortable(this.#recreating, signal, 'CreateProducer');
    this.#producerId = id;
  }

  /** A failure caused by close() reads CLOSED, not ABORTED. */
  #closedOr(err: unknown, signal: AbortSignal, what: string): MqError {
    if (signal.aborted && this.#closing.signal.aborted) {
      return new ClosedError(`${what}: the producer for topic "${this.topic}" was closed`, { cause: err });
    }
    return toMqError(err, 'INTERNAL', what);
  }
}

async function createHandle(ctx: ProducerContext, input: CreateInput, control: CallControl): Promise<string> {
  const req = {
    endpoint: ctx.endpoint,
    access_key_id: ctx.accessKeyId,
    access_key_secret: ctx.accessKeySecret,
    instance_id: input.instanceId,
    topic: input.topic,
  };
  return retrying(ctx.retry, control.signal, async () => {
    const res = await ctx.rpc.unary<WireCreateProducerResponse>('CreateProducer', req, control);
    if (!res.producer_id) throw new MqError('INTERNAL', 'CreateProducer returned no producer_id');
    return res.producer_id;
  });
}

function result(res: WireSendResponse): SendResult {
  return { messageId: res.message_id ?? '', receiptHandle: res.receipt_handle ?? '' };
}
