import { randomUUID } from 'node:crypto';
import { Admin } from '@platformatic/kafka';
import {
  ClosedError,
  InvalidArgumentError,
  TopicNotFoundError,
  UnavailableError,
} from '../../core/errors.js';
import { closeAll, closeOnce, delay } from '../../core/lifecycle.js';
import type { OutgoingMessage } from '../../core/message.js';
import {
  type Broker,
  type BrokerCapabilities,
  type BrokerCounters,
  type BrokerLimits,
  type BrokerOpenOptions,
  type HealthStatus,
  MAX_TIMER_MS,
  type PreparedTransaction,
  type Producer,
  type ProducerOptions,
  type SendResult,
  type SubscribeOptions,
  type Subscription,
} from '../broker.js';
import { HOLDING_GROUP, Holding, type HoldingBackend, type HoldingTier } from '../holding/holding.js';
import { releasedMessage } from '../holding/record.js';
import { DEFAULT_IMMUNITY_MS, heldTransaction } from '../holding/transaction.js';
import { normaliseSubscribe } from '../subscribe-options.js';
import { type KafkaConfig, parseKafkaUrl } from './config.js';
import { kafkaErrorHas, toKafkaMqError } from './errors.js';
import { KafkaDelivery } from './partition.js';
import { KafkaSender, KafkaTopicProducer, type TopicInfo } from './producer.js';
import { KafkaSubscription } from './subscription.js';

const CAPABILITIES: BrokerCapabilities = Object.freeze({
  ordered: true,
  delay: true,
  transactions: true,
  tagFilter: true,
  durable: true,
  startPosition: true,
});

const LIMITS: BrokerLimits = Object.freeze({
  minAckTimeoutMs: 1,
  maxAckTimeoutMs: MAX_TIMER_MS,
  // Offsets of unsettled deliveries are kept per partition; the group's commits wait for them.
  maxInFlight: Number.MAX_SAFE_INTEGER,
});

const TOPIC_NAME = /^[A-Za-z0-9._-]{1,249}$/;
/** A topic's partition count is re-read after this long (partitions can be added). */
const TOPIC_INFO_TTL_MS = 30_000;
/**
 * Delay tiers (see ../holding/holding.ts): a Kafka partition can only wait for its head, so a
 * held record goes to the tier with the longest span not longer than its remaining delay, waits
 * that span there and moves on; the last part (under 100 ms) waits in the exact tier `_0`, whose
 * records are in due order up to those 100 ms. Powers of ten keep it to seven consumers and at
 * most nine hops per tier (the gateway's default maximum delay, 3 days, is 25 hops of the
 * 10,000 s tier, then fewer of each shorter one).
 */
const HOLDING_SPANS_MS = [100, 1_000, 10_000, 100_000, 1_000_000, 10_000_000] as const;
/** The exact and 100 ms tiers fetch with this long-poll, so a partition due soon is fetched soon. */
const HOLDING_FAST_FETCH_MS = 50;
/** Held records a tier's mover takes at once. */
const HOLDING_IN_FLIGHT = 256;

class KafkaBroker implements Broker, TopicInfo {
  readonly kind = 'kafka';
  readonly url: string;
  readonly capabilities = CAPABILITIES;
  readonly limits = LIMITS;
  readonly #config: KafkaConfig;
  readonly #options: BrokerOpenOptions;
  readonly #admin: Admin;
  #sender: KafkaSender | undefined;
  readonly #producers = new Set<KafkaTopicProducer>();
  readonly #subscriptions = new Set<KafkaSubscription>();
  readonly #topicInfo = new Map<string, { at: number; count: Promise<number> }>();
  readonly #holding: Holding;
  #holdingCheck: Promise<void> = Promise.resolve();
  #closed = false;

  constructor(config: KafkaConfig, options: BrokerOpenOptions) {
    this.#config = config;
    this.#options = options;
    this.url = config.displayUrl;
    this.#admin = new Admin({
      clientId: `${config.clientId}-admin`,
      bootstrapBrokers: config.brokers,
      retries: 2,
      retryDelay: 500,
      connectTimeout: 5_000,
    });
    this.#admin.on('error', (err: unknown) => this.#logError('Kafka admin client error', err));
    this.#holding = new Holding(this.#holdingBackend(), { log: options.log });
  }

  #holdingBackend(): HoldingBackend {
    const prefix = this.#config.holdingTopics;
    const tiers: HoldingTier[] = [
      { topic: `${prefix}_0`, spanMs: Number.POSITIVE_INFINITY },
      ...HOLDING_SPANS_MS.map((ms) => ({ topic: `${prefix}_${ms}ms`, spanMs: ms })),
    ];
    return {
      broker: 'Kafka',
      tiers,
      store: async (tier, record) => {
        await this.#sendVia(tier.topic, record);
        return {};
      },
      release: async (held) => {
        await this.#sendVia(held.topic, releasedMessage(held), held.id);
        // Kafka cannot tell a second release from a first: duplicates are counted at the ack.
        return { duplicate: false };
      },
      // A nack rewinds the partition; message ids of holding records are topic/partition/offset.
      rewind: {
        laneKey: (d) => d.message.id.slice(0, d.message.id.lastIndexOf('/')),
        isVoid: (d) => d instanceof KafkaDelivery && !d.held,
      },
      decisions: {
        write: async (record) => {
          await this.#sendVia(`${prefix}_decisions`, record);
        },
        // Every mover reads every decision: a group of this broker object's own.
        subscribe: () =>
          this.subscribe({
            topic: `${prefix}_decisions`,
            group: `${HOLDING_GROUP}.decisions.${randomUUID()}`,
            maxInFlight: 256,
            start: 'earliest',
          }),
      },
      subscribe: (tier, group) =>
        this.#subscribe(
          {
            topic: tier.topic,
            group: `${group}.${tier.topic}`,
            maxInFlight: HOLDING_IN_FLIGHT,
            start: 'earliest',
          },
          tier.spanMs <= 100 || !Number.isFinite(tier.spanMs) ? HOLDING_FAST_FETCH_MS : undefined,
        ),
    };
  }

  #senderFor(): KafkaSender {
    this.#sender ??= new KafkaSender(this.#config, this, (err) =>
      this.#logError('Kafka producer error', err),
    );
    return this.#sender;
  }

  async #sendVia(topic: string, message: OutgoingMessage, id?: string): Promise<SendResult> {
    this.#checkOpen();
    return this.#senderFor().send(topic, message, id);
  }

  /** A delayed send: held in the holding topics until due. */
  async #hold(topic: string, message: OutgoingMessage): Promise<SendResult> {
    const id = randomUUID();
    await this.#holding.hold(topic, message, { id, kind: 'delay', dueAt: message.deliverAt ?? Date.now() });
    return { messageId: id };
  }

  /**
   * A prepared message is a held record due at its immunity deadline; commit publishes it and
   * then records the decision, rollback records the decision (see ../holding/holding.ts).
   */
  async #prepare(topic: string, message: OutgoingMessage, immunityMs: number): Promise<PreparedTransaction> {
    this.#checkOpen();
    if (!Number.isFinite(immunityMs) || immunityMs < 0) {
      throw new InvalidArgumentError(
        `transaction immunity must be a number of milliseconds >= 0, got ${immunityMs}`,
      );
    }
    const id = randomUUID();
    const transactionId = randomUUID();
    await this.#holding.hold(topic, message, {
      id,
      kind: 'transaction',
      dueAt: Date.now() + immunityMs,
      txId: transactionId,
    });
    return heldTransaction(id, transactionId, {
      commit: async () => {
        await this.#sendVia(topic, message, id);
        await this.#holding.decide(transactionId, 'commit');
      },
      rollback: () => this.#holding.decide(transactionId, 'rollback'),
    });
  }

  /** Holding statistics, for tests. */
  get holding(): Holding {
    return this.#holding;
  }

  counters(): BrokerCounters {
    return this.#holding.counters();
  }

  #logError(msg: string, err: unknown): void {
    this.#options.log?.warn({ url: this.url, err: err instanceof Error ? err.message : String(err) }, msg);
  }

  #checkOpen(): void {
    if (this.#closed) throw new ClosedError(`Kafka broker ${this.url} is closed`);
  }

  async connect(): Promise<void> {
    try {
      await this.#admin.metadata({ topics: [], forceUpdate: true });
      // Held messages an earlier gateway left are moved as soon as this one runs; without
      // holding topics there is nothing to move until the first held message starts the movers.
      this.#holdingCheck = this.#admin.listTopics().then(
        (topics) => {
          if (!this.#closed && topics.includes(`${this.#config.holdingTopics}_0`)) this.#holding.start();
        },
        () => {},
      );
    } catch (err) {
      throw new UnavailableError(
        `cannot reach Kafka at ${this.#config.brokers.join(',')}: ${err instanceof Error ? err.message : String(err)}; ` +
          'check that Kafka is running and its advertised listener is reachable from here',
        { cause: err },
      );
    }
  }

  /** Partition count of a topic, creating the topic when the URL allows it. */
  partitions(topic: string): Promise<number> {
    const cached = this.#topicInfo.get(topic);
    if (cached && Date.now() - cached.at < TOPIC_INFO_TTL_MS) return cached.count;
    const count = this.#resolveTopic(topic);
    this.#topicInfo.set(topic, { at: Date.now(), count });
    count.catch(() => {
      if (this.#topicInfo.get(topic)?.count === count) this.#topicInfo.delete(topic);
    });
    return count;
  }

  async #resolveTopic(topic: string): Promise<number> {
    if (!TOPIC_NAME.test(topic) || topic === '.' || topic === '..') {
      throw new InvalidArgumentError(
        `"${topic}" is not a valid Kafka topic name; use 1-249 characters from [A-Za-z0-9._-]`,
      );
    }
    try {
      // listTopics first: asking metadata for a missing topic makes the client retry for seconds.
      const existing = await this.#admin.listTopics();
      if (!existing.includes(topic)) {
        if (!this.#config.autoCreateTopics) {
          throw new TopicNotFoundError(
            `topic "${topic}" does not exist on Kafka at ${this.#config.brokers.join(',')}; create it with ` +
              `kafka-topics.sh --bootstrap-server ${this.#config.brokers[0]} --create --topic ${topic} --partitions ${this.#config.partitions}, ` +
              'or open the broker with ?autoCreateTopics=true',
          );
        }
        await this.#createTopic(topic);
      }
      return await this.#waitForLeaders(topic);
    } catch (err) {
      throw toKafkaMqError(err, `looking up Kafka topic "${topic}"`, topic);
    }
  }

  async #createTopic(topic: string): Promise<void> {
    try {
      await this.#admin.createTopics({
        topics: [topic],
        partitions: this.#config.partitions,
        replicas: this.#config.replicationFactor,
      });
      this.#options.log?.info({ topic, partitions: this.#config.partitions }, 'created Kafka topic');
    } catch (err) {
      // Another client (or a concurrent call) created it first: fine.
      if (!kafkaErrorHas(err, 'apiId', 'TOPIC_ALREADY_EXISTS')) throw err;
    }
  }

  /** A freshly created topic has no leaders for a moment; producing or fetching then fails. */
  async #waitForLeaders(topic: string): Promise<number> {
    const deadline = Date.now() + 15_000;
    for (;;) {
      let last: unknown;
      try {
        const md = await this.#admin.metadata({ topics: [topic], forceUpdate: true });
        const t = md.topics.get(topic);
        if (t && t.partitionsCount > 0 && t.partitions.every((p) => p !== undefined && p.leader >= 0)) {
          return t.partitionsCount;
        }
      } catch (err) {
        last = err;
      }
      if (Date.now() > deadline) {
        throw new UnavailableError(`Kafka topic "${topic}" has no leader for all its partitions after 15 s`, {
          cause: last,
        });
      }
      await delay(100);
    }
  }

  async producer(topic: string, _options?: ProducerOptions): Promise<Producer> {
    this.#checkOpen();
    await this.partitions(topic);
    this.#checkOpen();
    const producer = new KafkaTopicProducer(
      topic,
      this.#senderFor(),
      () => this.#producers.delete(producer),
      (t, m) => this.#hold(t, m),
      (t, m, o) => this.#prepare(t, m, o?.immunityMs ?? DEFAULT_IMMUNITY_MS),
    );
    this.#producers.add(producer);
    return producer;
  }

  subscribe(options: SubscribeOptions): Promise<Subscription> {
    return this.#subscribe(options, undefined);
  }

  async #subscribe(options: SubscribeOptions, fetchMaxWaitMs: number | undefined): Promise<Subscription> {
    this.#checkOpen();
    const settings = normaliseSubscribe(
      {
        kind: 'kafka',
        capabilities: CAPABILITIES,
        limits: LIMITS,
        defaultAckTimeoutMs: this.#options.ackTimeoutMs,
      },
      options,
    );
    await this.partitions(settings.topic);
    this.#checkOpen();
    const sub = new KafkaSubscription(settings, {
      config: this.#config,
      log: this.#options.log,
      onClosed: (s) => this.#subscriptions.delete(s),
      fetchMaxWaitMs,
    });
    this.#subscriptions.add(sub);
    try {
      await sub.start();
    } catch (err) {
      await sub.close().catch(() => {});
      throw err;
    }
    return sub;
  }

  async health(): Promise<HealthStatus> {
    if (this.#closed) return { ok: false, detail: 'closed' };
    const t0 = Date.now();
    try {
      const md = await this.#admin.metadata({ topics: [], forceUpdate: true });
      return {
        ok: true,
        detail: `Kafka cluster ${md.id}: ${md.brokers.size} broker(s), metadata in ${Date.now() - t0} ms`,
      };
    } catch (err) {
      return {
        ok: false,
        detail: `Kafka metadata request failed: ${err instanceof Error ? err.message : String(err)}`,
      };
    }
  }

  close = closeOnce(async () => {
    this.#closed = true;
    await closeAll([
      () => this.#holdingCheck,
      () => this.#holding.close(),
      () => Promise.all([...this.#subscriptions].map((s) => s.close())),
      () => Promise.all([...this.#producers].map((p) => p.close())),
      () => this.#sender?.close(),
      () => this.#admin.close(),
    ]);
  });

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/** Opens `kafka://host:port[?brokers=...&clientId=...&autoCreateTopics=...&partitions=...&replicationFactor=...]`. */
export async function openKafkaBroker(url: URL, options: BrokerOpenOptions = {}): Promise<Broker> {
  const broker = new KafkaBroker(parseKafkaUrl(url), options);
  try {
    await broker.connect();
  } catch (err) {
    await broker.close().catch(() => {});
    throw err;
  }
  return broker;
}
