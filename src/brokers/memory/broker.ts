import { InvalidArgumentError, MqError } from '../../core/errors.js';
import { closeAll, closeOnce } from '../../core/lifecycle.js';
import {
  type Broker,
  type BrokerCapabilities,
  type BrokerCounters,
  type BrokerLimits,
  type BrokerOpenOptions,
  DEFAULT_ACK_TIMEOUT_MS,
  type HealthStatus,
  MAX_TIMER_MS,
  type Producer,
  type ProducerOptions,
  type SubscribeOptions,
  type Subscription,
} from '../broker.js';
import { normaliseSubscribe } from '../subscribe-options.js';
import {
  DEFAULT_GROUP_RETENTION_MS,
  DEFAULT_MAX_ATTEMPTS,
  DEFAULT_MAX_MESSAGE_BYTES,
  DEFAULT_MAX_TOPIC_BYTES,
  defaultMaxBytes,
  type MemoryBrokerSettings,
} from './config.js';
import { Engine } from './engine.js';
import { Group } from './group.js';
import { MemoryProducer } from './producer.js';
import { MemorySubscription } from './subscription.js';
import { checkName, formatBytes, type MemoryTopicStats } from './topic.js';

/**
 * The embedded broker. Everything lives in one process and one event loop, so there are no
 * locks; what matters is that every operation is O(1) or O(log n) and that memory is bounded:
 *
 * - A topic keeps each message once (a Slot) with a count of the groups that still owe it an
 *   ack; the last ack frees it. Each group has its own FIFO of unread slots, filled at publish
 *   (fan-out is O(groups), which the reference count needs anyway), so reading never scans.
 * - Per-key order in an ordered group is a lock per key: the key's current message is the
 *   "holder"; later messages with that key wait in the key's own FIFO and are released one by one
 *   as the holder is acked. Redeliveries of the holder keep the lock, so order survives failures.
 * - Visibility timeouts use one scheduler entry per subscription, not per delivery: a
 *   subscription's deliveries share one ack timeout, so they expire in the order they were handed
 *   out and a linked list in that order is enough. Nack delays and delayed messages are entries
 *   in the broker's one Scheduler (a heap behind a single unref'd timer).
 * - A group with no subscription for groupRetentionMs is forgotten and releases everything it
 *   owes, so a group nobody comes back for cannot hold its topic full forever.
 * - Memory is bounded per topic (maxTopicBytes) and for the whole broker (maxBytes), in bytes
 *   that estimate the real heap cost of each message. Messages no group owes (orphans) are the
 *   only ones ever dropped, oldest first across all topics; owed ones make sends fail instead.
 */

export function checkOptionalString(value: unknown, what: string): void {
  if (value !== undefined && typeof value !== 'string') {
    throw new InvalidArgumentError(`${what} must be a string`);
  }
}

function positiveInteger(value: unknown, what: string, fallback: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 1) {
    throw new InvalidArgumentError(`${what} ${String(value)} is not valid; use a whole number >= 1`);
  }
  return value;
}

export interface MemoryBrokerOptions extends BrokerOpenOptions, Partial<MemoryBrokerSettings> {
  /** Shown as `broker.url`; defaults to `memory://`. */
  url?: string | undefined;
}

const CAPABILITIES: BrokerCapabilities = Object.freeze({
  ordered: true,
  delay: true,
  transactions: true,
  tagFilter: true,
  durable: false,
  startPosition: true,
});

const LIMITS: BrokerLimits = Object.freeze({
  // The scheduler keeps whole milliseconds; a delivery is held at most one Node timer's range.
  minAckTimeoutMs: 1,
  maxAckTimeoutMs: MAX_TIMER_MS,
  // Deliveries cost memory only once handed out, and the broker's byte limits bound the rest.
  maxInFlight: Number.MAX_SAFE_INTEGER,
});

/**
 * The embedded broker, usable directly in-process (`new MemoryBroker()`) or through
 * `openBroker('memory://')`. Each instance is independent: nothing is shared between brokers.
 */
export class MemoryBroker implements Broker {
  readonly kind = 'memory';
  readonly url: string;
  readonly capabilities = CAPABILITIES;
  readonly limits = LIMITS;
  readonly #engine: Engine;
  readonly #defaultAckTimeoutMs: number;
  readonly close: () => Promise<void>;

  constructor(options: MemoryBrokerOptions = {}) {
    const maxTopicBytes = positiveInteger(options.maxTopicBytes, 'maxTopicBytes', DEFAULT_MAX_TOPIC_BYTES);
    const maxBytes = positiveInteger(options.maxBytes, 'maxBytes', defaultMaxBytes(maxTopicBytes));
    if (maxBytes < maxTopicBytes) {
      throw new InvalidArgumentError(
        `maxBytes ${formatBytes(maxBytes)} is below maxTopicBytes ${formatBytes(maxTopicBytes)}: no topic could ` +
          `reach its own limit; raise maxBytes or lower maxTopicBytes (e.g. memory://?maxTopicBytes=64MiB&maxBytes=256MiB)`,
      );
    }
    const settings: MemoryBrokerSettings = {
      maxTopicBytes,
      maxBytes,
      maxMessageBytes: positiveInteger(options.maxMessageBytes, 'maxMessageBytes', DEFAULT_MAX_MESSAGE_BYTES),
      maxAttempts: positiveInteger(options.maxAttempts, 'maxAttempts', DEFAULT_MAX_ATTEMPTS),
      ackTimeoutMs: options.ackTimeoutMs,
      groupRetentionMs: positiveInteger(
        options.groupRetentionMs,
        'groupRetentionMs',
        DEFAULT_GROUP_RETENTION_MS,
      ),
    };
    // The URL's ackTimeout is specific to this broker, so it wins over the generic open option.
    this.#defaultAckTimeoutMs = positiveInteger(
      settings.ackTimeoutMs,
      'ackTimeoutMs',
      DEFAULT_ACK_TIMEOUT_MS,
    );
    this.url = options.url ?? 'memory://';
    this.#engine = new Engine(settings, options.log);
    this.close = closeOnce(async () => {
      const engine = this.#engine;
      engine.closed = true;
      await closeAll([
        ...[...engine.subscriptions].map((s) => () => s.close()),
        ...[...engine.producers].map((p) => () => p.close()),
        () => engine.scheduler.close(),
        () => engine.clear(),
      ]);
    });
  }

  get settings(): Readonly<MemoryBrokerSettings> {
    return this.#engine.settings;
  }

  async producer(topic: string, _options?: ProducerOptions): Promise<Producer> {
    const engine = this.#engine;
    engine.assertOpen();
    const producer = new MemoryProducer(engine, engine.topic(checkName(topic, 'topic')));
    engine.producers.add(producer);
    return producer;
  }

  async subscribe(options: SubscribeOptions): Promise<Subscription> {
    const engine = this.#engine;
    engine.assertOpen();
    if (options === null || typeof options !== 'object') {
      throw new InvalidArgumentError('subscribe options must be an object with topic and group');
    }
    const topicName = checkName(options.topic, 'topic');
    const groupName = checkName(options.group, 'consumer group');
    const { filter, maxInFlight, ackTimeoutMs, start, ordered } = normaliseSubscribe(
      {
        kind: 'memory',
        capabilities: CAPABILITIES,
        limits: LIMITS,
        defaultAckTimeoutMs: this.#defaultAckTimeoutMs,
      },
      options,
    );
    const topic = engine.topic(topicName);
    let group = topic.groups.get(groupName);
    if (group === undefined) {
      group = new Group(groupName, topic, filter);
      topic.groups.set(groupName, group);
      if (start === 'earliest') topic.adoptAll(group);
      else if (typeof start === 'number') topic.adoptAll(group, start);
    } else if (group.filter.expression !== filter.expression) {
      if (group.subs.size > 0) {
        throw new MqError(
          'FAILED_PRECONDITION',
          `consumer group "${groupName}" on topic "${topicName}" is subscribed with filter "${group.filter.expression}"; ` +
            `a subscription with filter "${filter.expression}" would make the group skip messages the others want. ` +
            `Use one filter per group, or a different group`,
        );
      }
      group.filter = filter;
    }
    if (ordered) group.ordered = true;
    group.active();
    const sub = new MemorySubscription(engine, group, { maxInFlight, ackTimeoutMs });
    group.subs.add(sub);
    engine.subscriptions.add(sub);
    return sub;
  }

  async health(): Promise<HealthStatus> {
    const engine = this.#engine;
    if (engine.closed) return { ok: false, detail: 'memory broker is closed' };
    return {
      ok: true,
      detail: `memory broker: ${engine.topics.size} topics, ${engine.subscriptions.size} subscriptions, ${engine.producers.size} producers`,
    };
  }

  /** Retention and backlog of one topic (undefined if it was never used). */
  topicStats(topic: string): MemoryTopicStats | undefined {
    return this.#engine.topics.get(topic)?.stats();
  }

  /** Every topic's stats; cheap enough for a metrics scrape. */
  stats(): MemoryTopicStats[] {
    return [...this.#engine.topics.values()].map((t) => t.stats());
  }

  counters(): BrokerCounters {
    const engine = this.#engine;
    return {
      groupsExpired: engine.groupsExpired,
      backlogDropped: engine.backlogDropped,
      retainedBytes: engine.retainedBytes,
    };
  }

  /** Scheduler entries pending (visibility timeouts, nack delays, delayed messages). */
  get scheduledTasks(): number {
    return this.#engine.scheduler.size;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

export function createMemoryBroker(options: MemoryBrokerOptions = {}): MemoryBroker {
  return new MemoryBroker(options);
}
