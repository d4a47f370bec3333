/**
 * Consuming with the library's SimpleConsumer rather than its PushConsumer: a PushConsumer pulls
 * on its own schedule into its own cache and invokes a listener, while the broker contract says
 * "pull only while the downstream has room". A SimpleConsumer receives exactly the batch we ask
 * for (sized by the free room), keeps each message invisible for ackTimeoutMs, and settles with
 * ack / changeInvisibleDuration, which is the contract's ack / nack one to one.
 */
import { FilterExpression, type MessageView } from 'rocketmq-client-nodejs';
import { NotFoundError } from '../../core/errors.js';
import { AsyncQueue, closeAll, closeOnce, delay, Notifier } from '../../core/lifecycle.js';
import type { Message } from '../../core/message.js';
import { type ScheduledTask, Scheduler } from '../../core/scheduler.js';
import { parseTagExpression } from '../../core/tags.js';
import type { BrokerLog, Credentials, Delivery, NackOptions, Subscription } from '../broker.js';
import {
  type ErrorContext,
  GuardedSimpleConsumer,
  LibraryGuard,
  libraryLogger,
  toRocketMqError,
  withTimeout,
} from './library.js';
import { SHARDING_KEY_PROPERTY } from './producer.js';
import type { RocketMqUrl } from './url.js';

/** The proxy returns at most 32 messages per ReceiveMessage. */
const MAX_BATCH = 32;
/** Long-polling wait per receive; the call is cancelled on close, so this never delays close(). */
const LONG_POLL_MS = 10_000;
/**
 * Invisible time asked for when releasing a delivery on close or nack without delay. The proxy
 * accepts 0 for ChangeInvisibleDuration, so released messages are visible again at once.
 */
const RELEASE_INVISIBLE_MS = 0;
/**
 * The proxy refuses a receive invisible time under minInvisibleTimeMillsForRecv (10 s by
 * default). A shorter ackTimeoutMs is honoured by the adapter: it receives with the minimum and
 * releases an unsettled delivery itself when ackTimeoutMs has passed. The value is re-read from
 * the proxy's refusal ("min is N") when a proxy is configured differently.
 */
const DEFAULT_MIN_INVISIBLE_MS = 10_000;

export interface RocketMqSubscriptionOptions {
  url: RocketMqUrl;
  topic: string;
  group: string;
  filter: string | undefined;
  maxInFlight: number;
  ackTimeoutMs: number;
  credentials: Credentials | undefined;
  log: BrokerLog | undefined;
  onClosed: (sub: RocketMqSubscription) => void;
}

function toMessage(view: MessageView): Message {
  const properties: Record<string, string> = {};
  for (const [k, v] of view.properties) {
    // RocketMQ's own `__` properties (e.g. __SHARDINGKEY, the FIFO group) are message fields, not
    // user data: passed on, a re-publish of the message (a dead letter) would turn FIFO on a
    // NORMAL topic and be refused.
    if (k !== SHARDING_KEY_PROPERTY && !k.startsWith('__')) properties[k] = v;
  }
  return {
    id: view.messageId,
    topic: view.topic,
    body: new Uint8Array(view.body.buffer, view.body.byteOffset, view.body.byteLength),
    key: view.messageGroup || view.properties.get(SHARDING_KEY_PROPERTY) || undefined,
    tag: view.tag || undefined,
    businessKey: view.keys.length > 0 ? view.keys.join(' ') : undefined,
    properties,
    deliverAt: view.deliveryTimestamp?.getTime(),
    bornAt: view.bornTimestamp?.getTime() ?? Date.now(),
    reconsumeCount: Math.max(0, (view.deliveryAttempt ?? 1) - 1),
  };
}

class RocketMqDelivery implements Delivery {
  readonly message: Message;
  readonly view: MessageView;
  readonly #sub: RocketMqSubscription;
  #settling: Promise<void> | undefined;
  /** Released by the adapter's own ack timeout (ackTimeoutMs below the proxy's minimum). */
  expired = false;
  expiry: ScheduledTask | undefined;

  constructor(view: MessageView, sub: RocketMqSubscription) {
    this.view = view;
    this.message = toMessage(view);
    this.#sub = sub;
  }

  ack(): Promise<void> {
    this.#settling ??= this.#sub.settle(this, undefined);
    return this.#settling;
  }

  nack(options?: NackOptions): Promise<void> {
    this.#settling ??= this.#sub.settle(this, Math.max(0, options?.delayMs ?? 0));
    return this.#settling;
  }
}

export class RocketMqSubscription implements Subscription {
  readonly topic: string;
  readonly group: string;
  readonly #options: RocketMqSubscriptionOptions;
  readonly #consumer: GuardedSimpleConsumer;
  readonly #filter: FilterExpression;
  readonly #started: Promise<void>;
  readonly #queue = new AsyncQueue<RocketMqDelivery>();
  readonly #held = new Set<RocketMqDelivery>();
  readonly #settles = new Set<Promise<unknown>>();
  readonly #room = new Notifier();
  readonly #abort = new AbortController();
  #orphans: MessageView[] = [];
  #loop: Promise<void> = Promise.resolve();
  #closed = false;
  #received = false;
  #minInvisibleMs = DEFAULT_MIN_INVISIBLE_MS;
  readonly #scheduler = new Scheduler({ onError: () => {} });

  private constructor(options: RocketMqSubscriptionOptions) {
    this.#options = options;
    this.topic = options.topic;
    this.group = options.group;
    this.#filter = new FilterExpression(parseTagExpression(options.filter).expression);
    const { url, credentials, log } = options;
    this.#consumer = new GuardedSimpleConsumer(
      {
        endpoints: url.endpoint,
        namespace: url.namespace,
        requestTimeout: url.requestTimeoutMs,
        consumerGroup: options.group,
        subscriptions: new Map([[options.topic, this.#filter]]),
        awaitDuration: LONG_POLL_MS,
        sessionCredentials: credentials
          ? { accessKey: credentials.accessKeyId, accessSecret: credentials.accessKeySecret }
          : undefined,
        logger: libraryLogger(log, { topic: options.topic, group: options.group }),
      },
      new LibraryGuard(log),
    );
    this.#started = this.#consumer.startup();
    this.#started.catch(() => {});
  }

  /** Opens and starts the receive loop; closes everything again when start-up fails. */
  static async open(options: RocketMqSubscriptionOptions, register: (sub: RocketMqSubscription) => void) {
    const sub = new RocketMqSubscription(options);
    register(sub);
    try {
      await withTimeout(
        sub.#started,
        options.url.requestTimeoutMs * 3 + 5_000,
        `RocketMQ consumer start-up for group "${options.group}"`,
      );
    } catch (err) {
      await sub.close().catch(() => {});
      throw toRocketMqError(err, sub.#ctx('subscribing'));
    }
    sub.#loop = sub.#run();
    return sub;
  }

  #ctx(action: string): ErrorContext {
    return { action, topic: this.topic, group: this.group, cluster: this.#options.url.cluster };
  }

  get inFlight(): number {
    return this.#held.size;
  }

  async #run(): Promise<void> {
    const { maxInFlight, ackTimeoutMs, log } = this.#options;
    const signal = this.#abort.signal;
    let backoff = 0;
    while (!this.#closed) {
      const room = maxInFlight - this.#held.size - this.#queue.size;
      if (room <= 0) {
        await this.#room.wait(signal).catch(() => {});
        continue;
      }
      let views: MessageView[];
      try {
        views = await this.#consumer.receiveBatch(
          this.topic,
          this.#filter,
          Math.min(room, MAX_BATCH),
          Math.max(ackTimeoutMs, this.#minInvisibleMs),
          LONG_POLL_MS,
          signal,
        );
        backoff = 0;
        this.#received = true;
      } catch (err) {
        if (this.#closed) break;
        const min = /invisibleTime is too small\. min is (\d+)/.exec(String((err as Error)?.message))?.[1];
        if (min !== undefined && Number(min) > this.#minInvisibleMs) {
          this.#minInvisibleMs = Number(min);
          continue;
        }
        const mapped = toRocketMqError(err, this.#ctx('receiving'));
        const permanent =
          mapped.code === 'TOPIC_NOT_FOUND' ||
          mapped.code === 'NOT_FOUND' ||
          mapped.code === 'UNAUTHENTICATED' ||
          mapped.code === 'PERMISSION_DENIED' ||
          mapped.code === 'INVALID_ARGUMENT';
        // Before the first successful receive such an error is the subscription's own mistake;
        // afterwards (a proxy restart re-registering routes) it is retried like any other.
        if (permanent && !this.#received) {
          this.#queue.end(mapped);
          return;
        }
        backoff = Math.min(5_000, Math.max(200, backoff * 2));
        log?.warn(
          { topic: this.topic, group: this.group, err: mapped.message, retryInMs: backoff },
          'rocketmq: receive failed',
        );
        await delay(backoff, signal).catch(() => {});
        continue;
      }
      for (const view of views) {
        if (this.#closed || this.#queue.ended) {
          this.#orphans.push(view);
          continue;
        }
        const delivery = new RocketMqDelivery(view, this);
        if (ackTimeoutMs < this.#minInvisibleMs) {
          delivery.expiry = this.#scheduler.after(ackTimeoutMs, () => this.#expire(delivery));
        }
        this.#queue.push(delivery);
      }
    }
  }

  #expire(delivery: RocketMqDelivery): void {
    if (this.#closed || delivery.expired) return;
    delivery.expired = true;
    this.#held.delete(delivery);
    this.#room.notifyAll();
    const work = this.#consumer.changeInvisibleDuration(delivery.view, RELEASE_INVISIBLE_MS).catch((err) => {
      this.#options.log?.debug(
        { topic: this.topic, group: this.group, err: String(err) },
        'rocketmq: releasing an expired delivery failed; it is redelivered when its invisible time ends',
      );
    });
    this.#settles.add(work);
    work.finally(() => this.#settles.delete(work));
  }

  /** ack when delayMs is undefined, otherwise nack with that delay. */
  async settle(delivery: RocketMqDelivery, delayMs: number | undefined): Promise<void> {
    const action = delayMs === undefined ? 'acking' : 'nacking';
    if (delivery.expired) {
      throw new NotFoundError(
        `cannot settle message ${delivery.message.id}: its ack timeout (${this.#options.ackTimeoutMs} ms) passed and it was released for redelivery`,
      );
    }
    if (this.#closed || !this.#held.has(delivery)) {
      throw new NotFoundError(
        `cannot settle message ${delivery.message.id}: the subscription to "${this.topic}" (group "${this.group}") ` +
          'was closed and released it; it will be redelivered',
      );
    }
    delivery.expiry?.cancel();
    const work = (async () => {
      try {
        if (delayMs === undefined) await this.#consumer.ack(delivery.view);
        else await this.#consumer.changeInvisibleDuration(delivery.view, delayMs || RELEASE_INVISIBLE_MS);
      } catch (err) {
        throw toRocketMqError(err, this.#ctx(action));
      } finally {
        this.#held.delete(delivery);
        this.#room.notifyAll();
      }
    })();
    this.#settles.add(work);
    try {
      await work;
    } finally {
      this.#settles.delete(work);
    }
  }

  [Symbol.asyncIterator](): AsyncIterator<Delivery, undefined> {
    return {
      next: async () => {
        for (;;) {
          const result = await this.#queue.next();
          if (result.done) return result;
          // Expired while buffered: the adapter already released it.
          if (result.value.expired) continue;
          if (this.#closed) {
            this.#orphans.push(result.value.view);
            return { done: true, value: undefined };
          }
          this.#held.add(result.value);
          return result;
        }
      },
      // Leaving a for-await loop ends the subscription, as the queue behind it has ended.
      return: async () => {
        await this.close();
        return { done: true, value: undefined };
      },
    };
  }

  readonly close = closeOnce(async () => {
    this.#closed = true;
    this.#abort.abort();
    this.#scheduler.close();
    const undelivered = this.#queue.drain().filter((d) => !d.expired);
    this.#queue.end();
    this.#room.notifyAll();
    await closeAll([
      () => this.#loop,
      () => Promise.allSettled([...this.#settles]),
      () => this.#releaseAll(undelivered),
      async () => {
        // shutdown() during startup() would leave the intervals startup() creates afterwards.
        await this.#started.catch(() => {});
        await this.#consumer.shutdown();
      },
      () => this.#consumer.closeChannel(),
      () => this.#consumer.guard.afterShutdown(),
    ]).finally(() => this.#options.onClosed(this));
  });

  /** Makes every received-but-unsettled message visible again at once. */
  async #releaseAll(undelivered: RocketMqDelivery[]): Promise<void> {
    const views = [
      ...undelivered.map((d) => d.view),
      ...[...this.#held].map((d) => d.view),
      ...this.#orphans,
    ];
    this.#held.clear();
    this.#orphans = [];
    if (views.length === 0) return;
    const results = await Promise.allSettled(
      views.map((v) => this.#consumer.changeInvisibleDuration(v, RELEASE_INVISIBLE_MS)),
    );
    const failed = results.filter((r) => r.status === 'rejected').length;
    if (failed > 0) {
      this.#options.log?.warn(
        {
          topic: this.topic,
          group: this.group,
          failed,
          total: views.length,
          invisibleMs: this.#options.ackTimeoutMs,
        },
        'rocketmq: could not release some deliveries on close; they become visible when their invisible time ends',
      );
    }
  }
}
