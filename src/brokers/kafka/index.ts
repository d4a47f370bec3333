import { Admin } from '@platformatic/kafka';
import {
  ClosedError,
  InvalidArgumentError,
  TopicNotFoundError,
  UnavailableError,
} from '../../core/errors.js';
import { closeAll, closeOnce, delay } from '../../core/lifecycle.js';
import type {
  Broker,
  BrokerCapabilities,
  BrokerOpenOptions,
  HealthStatus,
  Producer,
  ProducerOptions,
  SubscribeOptions,
  Subscription,
} from '../broker.js';
import { type KafkaConfig, parseKafkaUrl } from './config.js';
import { kafkaErrorHas, toKafkaMqError } from './errors.js';
import { KafkaSender, KafkaTopicProducer, type TopicInfo } from './producer.js';
import { KafkaSubscription } from './subscription.js';

export { HEADER_BORN_AT, HEADER_BUSINESS_KEY, HEADER_TAG } from './codec.js';
export { parseKafkaUrl } from './config.js';
export { murmur2, partitionForKey } from './murmur2.js';

const CAPABILITIES: BrokerCapabilities = Object.freeze({
  ordered: true,
  delay: false,
  transactions: true,
  tagFilter: true,
  durable: true,
  startPosition: true,
});

const TOPIC_NAME = /^[A-Za-z0-9._-]{1,249}$/;
/** A topic's partition count is re-read after this long (partitions can be added). */
const TOPIC_INFO_TTL_MS = 30_000;

class KafkaBroker implements Broker, TopicInfo {
  readonly kind = 'kafka';
  readonly url: string;
  readonly capabilities = CAPABILITIES;
  readonly #config: KafkaConfig;
  readonly #options: BrokerOpenOptions;
  readonly #admin: Admin;
  #sender: KafkaSender | undefined;
  readonly #producers = new Set<KafkaTopicProducer>();
  readonly #subscriptions = new Set<KafkaSubscription>();
  readonly #topicInfo = new Map<string, { at: number; count: Promise<number> }>();
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
    this.#sender ??= new KafkaSender(this.#config, this, (err) =>
      this.#logError('Kafka producer error', err),
    );
    const producer = new KafkaTopicProducer(topic, this.#sender, () => this.#producers.delete(producer));
    this.#producers.add(producer);
    return producer;
  }

  async subscribe(options: SubscribeOptions): Promise<Subscription> {
    this.#checkOpen();
    KafkaSubscription.validate(options);
    await this.partitions(options.topic);
    this.#checkOpen();
    const sub = new KafkaSubscription(options, {
      config: this.#config,
      log: this.#options.log,
      defaultAckTimeoutMs: this.#options.ackTimeoutMs,
      onClosed: (s) => this.#subscriptions.delete(s),
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
