import { Producer as KafkaProducer, type MessageToProduce } from '@platformatic/kafka';
import { ClosedError, UnsupportedError } from '../../core/errors.js';
import { closeAll, closeOnce } from '../../core/lifecycle.js';
import type { OutgoingMessage } from '../../core/message.js';
import type { PreparedTransaction, PrepareOptions, Producer, SendResult } from '../broker.js';
import { type EncodedRecord, encodeMessage, messageId } from './codec.js';
import type { KafkaConfig } from './config.js';
import { toKafkaMqError } from './errors.js';
import { partitionForKey } from './murmur2.js';

/** Concurrent send() calls are gathered into one produce request, up to this many records. */
const MAX_BATCH = 500;

type RawProducer = KafkaProducer<Buffer, Buffer, Buffer, Buffer>;

interface Pending {
  topic: string;
  record: EncodedRecord;
  resolve: (result: SendResult) => void;
  reject: (err: unknown) => void;
}

export interface TopicInfo {
  /** Resolves the topic's partition count, creating the topic when allowed. */
  partitions(topic: string): Promise<number>;
}

export function rejectDeliverAt(message: OutgoingMessage): void {
  if (message.deliverAt !== undefined) {
    throw new UnsupportedError(
      'a Kafka transaction cannot also be delayed: prepare() with a deliverAt is not supported on a kafka:// broker; ' +
        'send the delayed message without a transaction, or prepare it without deliverAt',
    );
  }
}

/**
 * Picks partitions ourselves so they are Java's: keyed records by murmur2 (see murmur2.ts),
 * keyless records round robin per topic (the library's default for keyless records; Java's
 * sticky partitioner differs, but nothing depends on where a keyless record lands).
 */
class Partitioner {
  #roundRobin = new Map<string, number>();

  pick(topic: string, key: Buffer | undefined, partitions: number): number {
    if (key !== undefined) return partitionForKey(key, partitions);
    const next = this.#roundRobin.get(topic) ?? 0;
    this.#roundRobin.set(topic, (next + 1) % 0x7fffffff);
    return next % partitions;
  }
}

/**
 * One idempotent producer (acks=all) per broker, shared by every topic handle. Sends that
 * arrive while a produce request is on the wire are batched into the next one, which keeps
 * publish order per key (one request at a time, records in call order) and makes 10k sends cost
 * tens of requests rather than 10k round trips.
 */
export class KafkaSender {
  readonly #raw: RawProducer;
  readonly #topics: TopicInfo;
  readonly #partitioner = new Partitioner();
  #queue: Pending[] = [];
  #flushing: Promise<void> | undefined;
  #closed = false;

  constructor(config: KafkaConfig, topics: TopicInfo, onError: (err: unknown) => void) {
    this.#topics = topics;
    this.#raw = new KafkaProducer({
      clientId: `${config.clientId}-producer`,
      bootstrapBrokers: config.brokers,
      idempotent: true,
      // Idempotence makes the library retry forever by default; a bounded budget lets send()
      // fail with UNAVAILABLE while Kafka is down instead of hanging.
      retries: 20,
      retryDelay: 500,
      connectTimeout: 5000,
      autocreateTopics: false,
    });
    this.#raw.on('error', onError);
  }

  /** `id`: a released held message's id, carried in a header (see codec.ts HEADER_ID). */
  send(topic: string, message: OutgoingMessage, id?: string): Promise<SendResult> {
    if (this.#closed) return Promise.reject(new ClosedError('the Kafka broker is closed'));
    let record: EncodedRecord;
    try {
      record = encodeMessage(message, Date.now(), id);
    } catch (err) {
      return Promise.reject(err);
    }
    return new Promise<SendResult>((resolve, reject) => {
      this.#queue.push({ topic, record, resolve, reject });
      this.#flushing ??= this.#flushLoop();
    });
  }

  async #flushLoop(): Promise<void> {
    // Let every send() of the current tick join the first batch.
    await new Promise((r) => setImmediate(r));
    try {
      while (this.#queue.length > 0) {
        const batch = this.#queue.splice(0, MAX_BATCH);
        await this.#produce(batch);
      }
    } finally {
      this.#flushing = undefined;
    }
  }

  async #produce(batch: Pending[]): Promise<void> {
    const counts = new Map<string, number>();
    try {
      for (const p of batch) {
        if (!counts.has(p.topic)) counts.set(p.topic, await this.#topics.partitions(p.topic));
      }
    } catch (err) {
      for (const p of batch) p.reject(err);
      return;
    }
    const messages: MessageToProduce<Buffer, Buffer, Buffer, Buffer>[] = [];
    // Index of each record among the batch's records for the same partition: its offset is the
    // partition's base offset plus this index.
    const indexInPartition: number[] = [];
    const perPartition = new Map<string, number>();
    for (const p of batch) {
      const partition = this.#partitioner.pick(p.topic, p.record.key, counts.get(p.topic) as number);
      const tp = `${p.topic}:${partition}`;
      const i = perPartition.get(tp) ?? 0;
      perPartition.set(tp, i + 1);
      indexInPartition.push(i);
      messages.push({
        topic: p.topic,
        partition,
        key: p.record.key,
        value: p.record.value,
        headers: p.record.headers,
        timestamp: p.record.timestamp,
      });
    }
    try {
      const result = await this.#raw.send({ messages });
      const base = new Map<string, bigint>();
      for (const o of result.offsets ?? []) base.set(`${o.topic}:${o.partition}`, o.offset);
      batch.forEach((p, i) => {
        const m = messages[i] as MessageToProduce<Buffer, Buffer, Buffer, Buffer>;
        const b = base.get(`${m.topic}:${m.partition}`);
        const offset = b === undefined ? -1n : b + BigInt(indexInPartition[i] as number);
        p.resolve({ messageId: messageId(m.topic, m.partition as number, offset) });
      });
    } catch (err) {
      for (const p of batch) p.reject(toKafkaMqError(err, `publishing to Kafka topic "${p.topic}"`, p.topic));
    }
  }

  close = closeOnce(async () => {
    this.#closed = true;
    await closeAll([
      async () => {
        while (this.#flushing) await this.#flushing;
      },
      () => this.#raw.close(true),
    ]);
  });
}

/** What broker.producer(topic) hands out: a topic-bound view of the shared sender. */
export class KafkaTopicProducer implements Producer {
  readonly topic: string;
  readonly #sender: KafkaSender;
  readonly #pending = new Set<Promise<unknown>>();
  #closed = false;
  readonly #onClose: () => void;

  readonly #hold: (topic: string, message: OutgoingMessage) => Promise<SendResult>;

  constructor(
    topic: string,
    sender: KafkaSender,
    onClose: () => void,
    hold: (topic: string, message: OutgoingMessage) => Promise<SendResult>,
    prepareHeld: (
      topic: string,
      message: OutgoingMessage,
      options?: PrepareOptions,
    ) => Promise<PreparedTransaction>,
  ) {
    this.topic = topic;
    this.#sender = sender;
    this.#onClose = onClose;
    this.#hold = hold;
    this.#prepareHeld = prepareHeld;
  }

  readonly #prepareHeld: (
    topic: string,
    message: OutgoingMessage,
    options?: PrepareOptions,
  ) => Promise<PreparedTransaction>;

  async send(message: OutgoingMessage): Promise<SendResult> {
    if (this.#closed) throw new ClosedError(`producer for Kafka topic "${this.topic}" is closed`);
    if (message.deliverAt !== undefined && message.deliverAt > Date.now()) {
      return this.#track(this.#hold(this.topic, message));
    }
    const { deliverAt: _due, ...now } = message;
    return this.#track(this.#sender.send(this.topic, now));
  }

  async prepare(message: OutgoingMessage, options?: PrepareOptions): Promise<PreparedTransaction> {
    if (this.#closed) throw new ClosedError(`producer for Kafka topic "${this.topic}" is closed`);
    rejectDeliverAt(message);
    return this.#track(this.#prepareHeld(this.topic, message, options));
  }

  #track<T>(p: Promise<T>): Promise<T> {
    this.#pending.add(p);
    const done = (): void => {
      this.#pending.delete(p);
    };
    p.then(done, done);
    return p;
  }

  close = closeOnce(async () => {
    this.#closed = true;
    await Promise.allSettled([...this.#pending]);
    this.#onClose();
  });

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
