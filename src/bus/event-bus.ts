import type { Span } from '@opentelemetry/api';
import type {
  Broker,
  SubscribeOptions as BrokerSubscribeOptions,
  Delivery,
  HealthStatus,
  Producer,
  StartPosition,
  Subscription,
} from '../brokers/broker.js';
import { openBroker } from '../brokers/index.js';
import { backoffDelay } from '../core/backoff.js';
import { ClosedError, checkOptionNames, InvalidArgumentError, isMqError } from '../core/errors.js';
import { closeAll } from '../core/lifecycle.js';
import { bodyText, type Message, type OutgoingMessage } from '../core/message.js';
import {
  ATTR,
  endSpan,
  messageContext,
  messageLink,
  messagingSystem,
  startMessagingSpan,
  tracingOn,
  withSpan,
  withTraceContext,
} from '../core/tracing.js';
import { decodeEnvelope, type Envelope, validateEnvelope } from './envelope.js';
import { KeyedLanes } from './lanes.js';

/** Property names the bus writes; stable, part of the public contract. */
export const PROP_CONTENT_TYPE = 'content-type';
export const PROP_ERROR = 'mqgate-error';
export const PROP_ATTEMPTS = 'mqgate-attempts';
export const PROP_ORIGINAL_TOPIC = 'mqgate-original-topic';
export const PROP_ORIGINAL_ID = 'mqgate-original-message-id';
export const PROP_EVENT_TYPE = 'mqgate-event-type';

const JSON_TYPE = 'application/json';
/** Error text longer than this is cut: properties travel in headers with size limits. */
const MAX_ERROR_TEXT = 1024;

export interface EventBusOptions {
  /** A broker to use (the caller keeps owning it) or a URL to open (the bus owns and closes it). */
  broker: Broker | string;
  /**
   * Errors no caller can receive: a failed ack or nack, a dead-letter publish that failed (the
   * message is retried instead), a broker subscription that ended with an error.
   */
  onError?: ((error: unknown, context: ErrorContext) => void) | undefined;
}

export interface ErrorContext {
  readonly topic: string;
  readonly group?: string | undefined;
  readonly messageId?: string | undefined;
}

/** Bytes and strings are sent as they are; anything else as JSON with a content-type property. */
export type Payload = Uint8Array | string | object | number | boolean | null;

export interface PublishOptions {
  /** Ordering key: same key, same order for subscribers. */
  key?: string | undefined;
  tag?: string | undefined;
  properties?: Readonly<Record<string, string>> | undefined;
  /** Epoch milliseconds before which the message is not delivered (brokers with `delay`). */
  deliverAt?: number | undefined;
}

export interface HandlerContext {
  /** Fires when the subscription or bus is closed (not drained) while the handler runs. */
  readonly signal: AbortSignal;
  /** 1 on first delivery. */
  readonly attempt: number;
  readonly message: Message;
}

export type MessageHandler = (message: Message, context: HandlerContext) => unknown;
export type EnvelopeHandler<P = unknown> = (envelope: Envelope<P>, context: HandlerContext) => unknown;

export interface BackoffOptions {
  /** Delay before the second attempt. Default 100. */
  initialMs?: number | undefined;
  /** Upper bound for any delay. Default 30000. */
  maxMs?: number | undefined;
  /** Growth per attempt. Default 2. */
  factor?: number | undefined;
}

export interface BusSubscribeOptions {
  /** Consumer group: subscribers in one group share the messages. Default 'mqgate-bus'. */
  group?: string | undefined;
  /** Handlers running at once, and the broker in-flight cap. Default 16. */
  concurrency?: number | undefined;
  /** Same key handled one at a time in order (default true); false spreads every message. */
  ordered?: boolean | undefined;
  /** Attempts before a message is dead-lettered. Default 5. */
  maxAttempts?: number | undefined;
  backoff?: BackoffOptions | undefined;
  /** Dead-letter topic. Default `<topic>.DLQ`. */
  deadLetter?: string | undefined;
  /** Tag expression, `*` (default) or `a||b`. */
  filter?: string | undefined;
  /**
   * Where a group seen for the first time starts: 'latest' (the default: what is published after
   * it subscribes), 'earliest' (everything the broker still keeps), or a time in epoch ms.
   */
  start?: StartPosition | undefined;
  /** A delivery not settled within this time is redelivered. Default: the broker's. */
  ackTimeoutMs?: number | undefined;
}

export type SubscriptionState = 'running' | 'draining' | 'closed' | 'failed';

export interface BusSubscription extends AsyncDisposable {
  readonly topic: string;
  readonly group: string;
  readonly state: SubscriptionState;
  /** Stops now: aborts running handlers, releases unsettled deliveries for redelivery. */
  close(): Promise<void>;
  /** Stops taking deliveries, lets running and queued handlers finish, then closes. */
  drain(): Promise<void>;
}

export interface SubscriptionHealth {
  readonly topic: string;
  readonly group: string;
  readonly state: SubscriptionState;
  /** Deliveries taken from the broker and not yet settled. */
  readonly inFlight: number;
  readonly queued: number;
  readonly running: number;
  /** Handler succeeded and the delivery was acked. */
  readonly handled: number;
  /** Handler failed and the delivery was nacked for a later attempt. */
  readonly retried: number;
  readonly deadLettered: number;
}

export interface EventBusHealth {
  readonly ok: boolean;
  readonly broker: HealthStatus;
  readonly subscriptions: SubscriptionHealth[];
}

export interface EventBus extends AsyncDisposable {
  publish(topic: string, payload: Payload, options?: PublishOptions): Promise<{ messageId: string }>;
  /** Validates the envelope (InvalidArgumentError naming the field) and publishes it keyed by aggregateId. */
  publishEnvelope(topic: string, envelope: Envelope): Promise<{ messageId: string }>;
  subscribe(topic: string, handler: MessageHandler, options?: BusSubscribeOptions): Promise<BusSubscription>;
  /** Like subscribe, but an invalid envelope goes to the dead-letter topic without calling the handler. */
  subscribeEnvelope<P = unknown>(
    topic: string,
    handler: EnvelopeHandler<P>,
    options?: BusSubscribeOptions,
  ): Promise<BusSubscription>;
  health(): Promise<EventBusHealth>;
  /** Stops now: aborts handlers, releases unsettled deliveries, closes producers (and an owned broker). */
  close(): Promise<void>;
  /** Finishes in-flight handlers and publishes, then closes. `[Symbol.asyncDispose]` drains. */
  drain(): Promise<void>;
}

/** Opens an event bus over a broker instance or URL. */
const BUS_OPTIONS = ['broker', 'onError'] as const;
const PUBLISH_OPTIONS = ['key', 'tag', 'properties', 'deliverAt'] as const;
const SUBSCRIBE_OPTIONS = [
  'group',
  'concurrency',
  'ordered',
  'maxAttempts',
  'backoff',
  'deadLetter',
  'filter',
  'start',
  'ackTimeoutMs',
] as const;

export async function createEventBus(options: EventBusOptions): Promise<EventBus> {
  checkOptionNames(options, BUS_OPTIONS, 'createEventBus');
  if (typeof options.broker === 'string') {
    const broker = await openBroker(options.broker);
    return new LaneEventBus(broker, true, options.onError);
  }
  return new LaneEventBus(options.broker, false, options.onError);
}

function errorText(err: unknown): string {
  const text = err instanceof Error ? `${err.name}: ${err.message}` : String(err);
  return text.length > MAX_ERROR_TEXT ? `${text.slice(0, MAX_ERROR_TEXT - 3)}...` : text;
}

function positiveInt(name: string, value: number | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  if (!Number.isInteger(value) || value < 1) {
    throw new InvalidArgumentError(`${name} must be an integer >= 1, got ${value}`);
  }
  return value;
}

function nonNegative(name: string, value: number | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  if (!Number.isFinite(value) || value < 0) {
    throw new InvalidArgumentError(`${name} must be a finite number >= 0, got ${value}`);
  }
  return value;
}

function topicName(what: string, topic: unknown): string {
  if (typeof topic !== 'string' || topic.length === 0) {
    throw new InvalidArgumentError(`${what} must be a non-empty string, got ${JSON.stringify(topic)}`);
  }
  return topic;
}

function encodePayload(payload: Payload, properties: Readonly<Record<string, string>> | undefined) {
  if (payload instanceof Uint8Array || typeof payload === 'string') return { body: payload, properties };
  let text: string | undefined;
  try {
    text = JSON.stringify(payload);
  } catch (cause) {
    throw new InvalidArgumentError(
      `payload cannot be serialised to JSON (${(cause as Error).message}); pass a Uint8Array or string instead`,
      { cause },
    );
  }
  if (text === undefined) {
    throw new InvalidArgumentError(`payload of type ${typeof payload} cannot be serialised to JSON`);
  }
  return { body: text, properties: { [PROP_CONTENT_TYPE]: JSON_TYPE, ...properties } };
}

interface BusInternals {
  send(topic: string, message: OutgoingMessage): Promise<{ messageId: string }>;
  report(err: unknown, context: ErrorContext): void;
  /** messaging.system of the bus's broker, for spans. */
  readonly system: string;
}

class LaneSubscription<T> implements BusSubscription {
  readonly topic: string;
  readonly group: string;
  #state: SubscriptionState = 'running';
  readonly #sub: Subscription;
  readonly #lanes: KeyedLanes;
  readonly #loop: Promise<void>;
  readonly #bus: BusInternals;
  readonly #decode: (message: Message) => T;
  readonly #handler: (value: T, context: HandlerContext) => unknown;
  readonly #ordered: boolean;
  readonly #maxAttempts: number;
  readonly #deadLetter: string;
  readonly #backoff: { initialMs: number; maxMs: number; factor: number };
  readonly #onClosed: (s: LaneSubscription<T>) => void;
  #stopping: Promise<void> | undefined;
  #handled = 0;
  #retried = 0;
  #deadLettered = 0;

  constructor(init: {
    sub: Subscription;
    bus: BusInternals;
    decode: (message: Message) => T;
    handler: (value: T, context: HandlerContext) => unknown;
    concurrency: number;
    ordered: boolean;
    maxAttempts: number;
    deadLetter: string;
    backoff: { initialMs: number; maxMs: number; factor: number };
    onClosed: (s: LaneSubscription<T>) => void;
  }) {
    this.#sub = init.sub;
    this.topic = init.sub.topic;
    this.group = init.sub.group;
    this.#bus = init.bus;
    this.#decode = init.decode;
    this.#handler = init.handler;
    this.#ordered = init.ordered;
    this.#maxAttempts = init.maxAttempts;
    this.#deadLetter = init.deadLetter;
    this.#backoff = init.backoff;
    this.#onClosed = init.onClosed;
    // Queues as deep as the in-flight cap: even if every delivery in hand has one key, submit
    // never blocks on a full lane, so one hot key cannot stall dispatch to the other lanes. The
    // broker's maxInFlight is what bounds memory.
    this.#lanes = new KeyedLanes({
      lanes: init.concurrency,
      queueSize: init.concurrency,
      onError: (err) => this.#bus.report(err, { topic: this.topic, group: this.group }),
    });
    this.#loop = this.#dispatch();
  }

  get state(): SubscriptionState {
    return this.#state;
  }

  close(): Promise<void> {
    // Abort first even when a drain is under way: close() means now.
    this.#lanes.close({ abort: true }).catch(() => {});
    this.#stopping ??= this.#stop(true);
    return this.#stopping;
  }

  drain(): Promise<void> {
    this.#stopping ??= this.#stop(false);
    return this.#stopping;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.drain();
  }

  health(): SubscriptionHealth {
    const lanes = this.#lanes.stats();
    return {
      topic: this.topic,
      group: this.group,
      state: this.#state,
      inFlight: this.#sub.inFlight,
      queued: lanes.queued,
      running: lanes.running,
      handled: this.#handled,
      retried: this.#retried,
      deadLettered: this.#deadLettered,
    };
  }

  async #stop(abort: boolean): Promise<void> {
    if (this.#state === 'running') this.#state = 'draining';
    const steps = abort
      ? // Release unsettled deliveries at once; aborted handlers finishing later get NOT_FOUND.
        [() => this.#sub.close(), () => this.#lanes.close({ abort: true }), () => this.#loop]
      : // Handlers settle their own deliveries first; close then releases what was never started.
        [() => this.#lanes.close(), () => this.#sub.close(), () => this.#loop];
    try {
      await closeAll(steps);
    } finally {
      if (this.#state !== 'failed') this.#state = 'closed';
      this.#onClosed(this);
    }
  }

  /**
   * The only loop besides the lanes, and close() awaits it: pulls a delivery only after the
   * previous one found room in a lane, so the broker's in-flight cap plus the lane queues bound
   * everything held in memory.
   */
  async #dispatch(): Promise<void> {
    const it = this.#sub[Symbol.asyncIterator]();
    for (;;) {
      let next: IteratorResult<Delivery>;
      try {
        next = await it.next();
      } catch (err) {
        if (this.#stopping === undefined) {
          this.#state = 'failed';
          this.#bus.report(err, { topic: this.topic, group: this.group });
        }
        return;
      }
      if (next.done) {
        if (this.#stopping === undefined) this.#state = 'failed';
        return;
      }
      // Stopping: leave the delivery unsettled; the subscription's close releases it.
      if (this.#stopping !== undefined) continue;
      const delivery = next.value;
      try {
        await this.#lanes.submit((signal) => this.#handle(delivery, signal), {
          key: this.#ordered ? delivery.message.key : undefined,
        });
      } catch {
        // The lanes closed while this delivery waited for room; close() releases it.
      }
    }
  }

  /**
   * With tracing on, one delivery is handled inside a `process <topic>` CONSUMER span: its parent
   * is the message's creation context (also linked), the handler's spans nest under it, and a
   * retry or a dead-lettering is recorded on it as an event.
   */
  #handle(delivery: Delivery, signal: AbortSignal): Promise<void> {
    if (!tracingOn()) return this.#handleIn(delivery, signal, undefined);
    const m = delivery.message;
    const link = messageLink(m.properties);
    const span = startMessagingSpan({
      operation: 'process',
      operationName: 'subscribe',
      destination: this.topic,
      system: this.#bus.system,
      group: this.group,
      messageId: m.id,
      parent: messageContext(m.properties),
      links: link ? [link] : undefined,
      attributes: { [ATTR.deliveryAttempt]: m.reconsumeCount + 1 },
    });
    return withSpan(span, () => this.#handleIn(delivery, signal, span));
  }

  async #handleIn(delivery: Delivery, signal: AbortSignal, span: Span | undefined): Promise<void> {
    const message = delivery.message;
    const attempt = message.reconsumeCount + 1;
    let value: T;
    try {
      value = this.#decode(message);
    } catch (err) {
      // Retrying cannot fix a message that does not decode: dead-letter it now.
      await this.#toDeadLetter(delivery, err, attempt, span);
      if (span) endSpan(span, err);
      return;
    }
    try {
      await this.#handler(value, { signal, attempt, message });
    } catch (err) {
      // Closing: the delivery goes back to the broker with the subscription's close.
      if (!signal.aborted) {
        if (attempt >= this.#maxAttempts) await this.#toDeadLetter(delivery, err, attempt, span);
        else await this.#nack(delivery, attempt, err, span);
      }
      if (span) endSpan(span, err);
      return;
    }
    this.#handled++;
    if (span) endSpan(span);
    await this.#settle(delivery.ack(), message);
  }

  async #nack(delivery: Delivery, attempt: number, err: unknown, span: Span | undefined): Promise<void> {
    // No jitter: the retry delays are the caller's numbers, and each key's retries are spread by
    // the order in which its messages fail anyway.
    const delayMs = backoffDelay({ ...this.#backoff, jitter: 'none' }, attempt - 1);
    this.#retried++;
    span?.addEvent('retry', { [ATTR.deliveryAttempt]: attempt, 'mqgate.retry.delay_ms': delayMs });
    await this.#settle(delivery.nack({ delayMs, reason: errorText(err) }), delivery.message);
  }

  async #toDeadLetter(
    delivery: Delivery,
    err: unknown,
    attempt: number,
    span: Span | undefined,
  ): Promise<void> {
    const m = delivery.message;
    span?.addEvent('dead_letter', {
      [ATTR.deliveryAttempt]: attempt,
      'mqgate.dead_letter.topic': this.#deadLetter,
    });
    try {
      await this.#bus.send(this.#deadLetter, {
        body: m.body,
        key: m.key,
        tag: m.tag,
        businessKey: m.businessKey,
        properties: {
          ...m.properties,
          [PROP_ERROR]: errorText(err),
          [PROP_ATTEMPTS]: String(attempt),
          [PROP_ORIGINAL_TOPIC]: this.topic,
          [PROP_ORIGINAL_ID]: m.id,
        },
      });
    } catch (publishErr) {
      // Never drop: without a dead-letter copy the original stays and is tried again later.
      this.#bus.report(publishErr, { topic: this.#deadLetter, group: this.group, messageId: m.id });
      await this.#nack(delivery, attempt, publishErr, span);
      return;
    }
    this.#deadLettered++;
    await this.#settle(delivery.ack(), m);
  }

  async #settle(settling: Promise<void>, message: Message): Promise<void> {
    try {
      await settling;
    } catch (err) {
      // NOT_FOUND: the subscription no longer holds it (closed or timed out); it is redelivered.
      if (isMqError(err) && err.code === 'NOT_FOUND') return;
      this.#bus.report(err, { topic: this.topic, group: this.group, messageId: message.id });
    }
  }
}

type BusState = 'open' | 'draining' | 'closed';

class LaneEventBus implements EventBus {
  readonly #broker: Broker;
  readonly #ownsBroker: boolean;
  readonly #onError: EventBusOptions['onError'];
  readonly #producers = new Map<string, Promise<Producer>>();
  // biome-ignore lint/suspicious/noExplicitAny: subscriptions of any decoded type live together
  readonly #subs = new Set<LaneSubscription<any>>();
  readonly #pending = new Set<Promise<unknown>>();
  #state: BusState = 'open';
  #closing: Promise<void> | undefined;
  readonly #internals: BusInternals;

  constructor(broker: Broker, ownsBroker: boolean, onError: EventBusOptions['onError']) {
    this.#broker = broker;
    this.#ownsBroker = ownsBroker;
    this.#onError = onError;
    this.#internals = {
      send: (topic, message) => this.#send(topic, message),
      report: (err, context) => this.#report(err, context),
      system: messagingSystem(broker.kind),
    };
  }

  publish(topic: string, payload: Payload, options: PublishOptions = {}): Promise<{ messageId: string }> {
    try {
      topicName('topic', topic);
      checkOptionNames(options, PUBLISH_OPTIONS, 'publish');
      const { body, properties } = encodePayload(payload, options.properties);
      return this.#send(topic, {
        body,
        key: options.key,
        tag: options.tag,
        properties,
        deliverAt: options.deliverAt,
      });
    } catch (err) {
      return Promise.reject(err);
    }
  }

  publishEnvelope(topic: string, envelope: Envelope): Promise<{ messageId: string }> {
    try {
      topicName('topic', topic);
      const valid = validateEnvelope(envelope);
      return this.#send(topic, {
        body: JSON.stringify(valid),
        key: valid.aggregateId,
        properties: { [PROP_CONTENT_TYPE]: JSON_TYPE, [PROP_EVENT_TYPE]: valid.eventType },
      });
    } catch (err) {
      return Promise.reject(err);
    }
  }

  subscribe(
    topic: string,
    handler: MessageHandler,
    options: BusSubscribeOptions = {},
  ): Promise<BusSubscription> {
    return this.#subscribe(topic, (m) => m, handler, options);
  }

  subscribeEnvelope<P = unknown>(
    topic: string,
    handler: EnvelopeHandler<P>,
    options: BusSubscribeOptions = {},
  ): Promise<BusSubscription> {
    return this.#subscribe(topic, (m) => decodeEnvelope(bodyText(m)) as Envelope<P>, handler, options);
  }

  async health(): Promise<EventBusHealth> {
    let broker: HealthStatus;
    try {
      broker = await this.#broker.health();
    } catch (err) {
      broker = { ok: false, detail: errorText(err) };
    }
    const subscriptions = [...this.#subs].map((s) => s.health());
    const ok = this.#state === 'open' && broker.ok && subscriptions.every((s) => s.state !== 'failed');
    return { ok, broker, subscriptions };
  }

  close(): Promise<void> {
    // Escalates a drain in progress: no more publishes, subscriptions abort their handlers now.
    this.#state = 'closed';
    for (const sub of this.#subs) sub.close().catch(() => {});
    this.#closing ??= this.#stop(true);
    return this.#closing;
  }

  drain(): Promise<void> {
    this.#closing ??= this.#stop(false);
    return this.#closing;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.drain();
  }

  async #stop(abort: boolean): Promise<void> {
    this.#state = abort ? 'closed' : 'draining';
    await closeAll([
      ...[...this.#subs].map((sub) => () => (abort ? sub.close() : sub.drain())),
      // Publishes started by handlers or callers before the stop get to finish.
      async () => {
        if (!abort) await Promise.allSettled(this.#pending);
        this.#state = 'closed';
      },
      // Read the map only now: handlers may have opened producers (a dead-letter topic) while
      // the subscriptions drained, and no new one can open once the state is 'closed'.
      () => this.#closeProducers(),
      this.#ownsBroker ? () => this.#broker.close() : undefined,
    ]);
  }

  async #closeProducers(): Promise<void> {
    const opening = [...this.#producers.values()];
    this.#producers.clear();
    await closeAll(
      opening.map((p) => async () => {
        let producer: Producer;
        try {
          producer = await p;
        } catch {
          return; // never opened: nothing to close
        }
        await producer.close();
      }),
    );
  }

  #report(err: unknown, context: ErrorContext): void {
    if (!this.#onError) return;
    try {
      this.#onError(err, context);
    } catch {
      // A throwing error hook must not break the delivery path that reported.
    }
  }

  #closedError(): ClosedError {
    return new ClosedError('event bus is closed; create a new one with createEventBus()');
  }

  #send(topic: string, message: OutgoingMessage): Promise<{ messageId: string }> {
    if (this.#state === 'closed') return Promise.reject(this.#closedError());
    const tracked = tracingOn()
      ? this.#tracedSend(topic, message)
      : this.#producer(topic)
          .then((p) => p.send(message))
          .then(({ messageId }) => ({ messageId }));
    this.#pending.add(tracked);
    const untrack = (): void => {
      this.#pending.delete(tracked);
    };
    tracked.then(untrack, untrack);
    return tracked;
  }

  /** A send in a `send <topic>` PRODUCER span whose context the message carries. */
  async #tracedSend(topic: string, message: OutgoingMessage): Promise<{ messageId: string }> {
    const span = startMessagingSpan({
      operation: 'send',
      operationName: 'publish',
      destination: topic,
      system: this.#internals.system,
    });
    try {
      const p = await this.#producer(topic);
      const { messageId } = await p.send({
        ...message,
        properties: withTraceContext(message.properties, span),
      });
      span.setAttribute(ATTR.messageId, messageId);
      endSpan(span);
      return { messageId };
    } catch (err) {
      endSpan(span, err);
      throw err;
    }
  }

  #producer(topic: string): Promise<Producer> {
    let p = this.#producers.get(topic);
    if (!p) {
      p = this.#broker.producer(topic);
      this.#producers.set(topic, p);
      // A failed open is not cached: the next publish tries again.
      p.catch(() => {
        if (this.#producers.get(topic) === p) this.#producers.delete(topic);
      });
    }
    return p;
  }

  async #subscribe<T>(
    topic: string,
    decode: (m: Message) => T,
    handler: (value: T, context: HandlerContext) => unknown,
    options: BusSubscribeOptions,
  ): Promise<BusSubscription> {
    if (this.#state !== 'open') throw this.#closedError();
    topicName('topic', topic);
    if (typeof handler !== 'function') throw new InvalidArgumentError('handler must be a function');
    checkOptionNames(options, SUBSCRIBE_OPTIONS, 'subscribe');
    const group = topicName('group', options.group ?? 'mqgate-bus');
    const concurrency = positiveInt('concurrency', options.concurrency, 16);
    const maxAttempts = positiveInt('maxAttempts', options.maxAttempts, 5);
    const backoff = {
      initialMs: nonNegative('backoff.initialMs', options.backoff?.initialMs, 100),
      maxMs: nonNegative('backoff.maxMs', options.backoff?.maxMs, 30_000),
      factor: nonNegative('backoff.factor', options.backoff?.factor, 2),
    };
    if (backoff.factor < 1)
      throw new InvalidArgumentError(`backoff.factor must be >= 1, got ${backoff.factor}`);
    const deadLetter = topicName('deadLetter', options.deadLetter ?? `${topic}.DLQ`);
    if (deadLetter === topic) {
      throw new InvalidArgumentError(
        `deadLetter must differ from the topic "${topic}", or failures loop forever`,
      );
    }
    const ordered = options.ordered ?? true;
    const brokerOptions: BrokerSubscribeOptions = {
      topic,
      group,
      filter: options.filter,
      maxInFlight: concurrency,
      ordered,
      start: options.start,
      ackTimeoutMs: options.ackTimeoutMs,
    };
    const sub = await this.#broker.subscribe(brokerOptions);
    if (this.#state !== 'open') {
      // The bus closed while the broker was subscribing: do not leave this one behind.
      await sub.close();
      throw this.#closedError();
    }
    const subscription = new LaneSubscription<T>({
      sub,
      bus: this.#internals,
      decode,
      handler,
      concurrency,
      ordered,
      maxAttempts,
      deadLetter,
      backoff,
      onClosed: (s) => this.#subs.delete(s),
    });
    this.#subs.add(subscription);
    return subscription;
  }
}
