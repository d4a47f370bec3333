import { randomUUID } from 'node:crypto';
import { Producer as KafkaProducer, type MessageToProduce } from '@platformatic/kafka';
import { ClosedError, MqError, ResourceExhaustedError, UnsupportedError } from '../../core/errors.js';
import { closeAll, closeOnce } from '../../core/lifecycle.js';
import type { OutgoingMessage } from '../../core/message.js';
import type { PreparedTransaction, PrepareOptions, Producer, SendResult } from '../broker.js';
import { type EncodedRecord, encodeMessage, messageId } from './codec.js';
import type { KafkaConfig } from './config.js';
import { toKafkaMqError } from './errors.js';
import { partitionForKey } from './murmur2.js';

/** Concurrent send() calls are gathered into one produce request, up to this many records. */
const MAX_BATCH = 500;
/** Prepared (open) transactions a broker holds at once; each owns a transactional producer. */
const MAX_OPEN_TRANSACTIONS = 64;

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
  readonly #config: KafkaConfig;
  readonly #transactions = new Set<KafkaTransaction>();

  constructor(config: KafkaConfig, topics: TopicInfo, onError: (err: unknown) => void) {
    this.#config = config;
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

  get openTransactions(): number {
    return this.#transactions.size;
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

  /**
   * Two-phase publish on Kafka transactions. A Kafka producer runs one transaction at a time,
   * and the commit may come much later from another call, so each prepared message gets its
   * own transactional producer (own transactional.id). Consequences worth knowing:
   * - read_committed consumers (ours) do not see the record until commit; aborted ones never.
   * - Kafka aborts a transaction left open longer than its timeout (60 s here).
   * - While it is open, read_committed consumers of that partition stop at the open record
   *   (the last stable offset), so later records of the partition wait for the outcome too.
   */
  async prepare(topic: string, message: OutgoingMessage): Promise<PreparedTransaction> {
    if (this.#closed) throw new ClosedError('the Kafka broker is closed');
    if (this.#transactions.size >= MAX_OPEN_TRANSACTIONS) {
      throw new ResourceExhaustedError(
        `${MAX_OPEN_TRANSACTIONS} prepared Kafka transactions are already open on this broker; commit or roll back some first`,
      );
    }
    const partitions = await this.#topics.partitions(topic);
    const record = encodeMessage(message, Date.now());
    const tx = new KafkaTransaction(this.#config, () => this.#transactions.delete(tx));
    this.#transactions.add(tx);
    try {
      const partition = this.#partitioner.pick(topic, record.key, partitions);
      await tx.begin(topic, partition, record);
    } catch (err) {
      await tx.rollback().catch(() => {});
      throw toKafkaMqError(err, `preparing a transactional message on Kafka topic "${topic}"`, topic);
    }
    return tx;
  }

  close = closeOnce(async () => {
    this.#closed = true;
    await closeAll([
      async () => {
        while (this.#flushing) await this.#flushing;
      },
      async () => {
        const open = [...this.#transactions];
        await Promise.allSettled(open.map((t) => t.rollback()));
      },
      () => this.#raw.close(true),
    ]);
  });
}

class KafkaTransaction implements PreparedTransaction {
  messageId = '';
  readonly transactionId: string;
  readonly #raw: RawProducer;
  #tx: Awaited<ReturnType<RawProducer['beginTransaction']>> | undefined;
  #settled: Promise<void> | undefined;
  /** true once committed (or committing), false once rolled back. */
  #outcome: boolean | undefined;
  readonly #onDone: () => void;

  constructor(config: KafkaConfig, onDone: () => void) {
    this.transactionId = `mqgate-${randomUUID()}`;
    this.#onDone = onDone;
    this.#raw = new KafkaProducer({
      clientId: `${config.clientId}-tx`,
      bootstrapBrokers: config.brokers,
      idempotent: true,
      transactionalId: this.transactionId,
      // The library sends its request timeout as the transaction timeout in InitProducerId.
      timeout: 60_000,
      retries: 3,
      retryDelay: 500,
    });
    this.#raw.on('error', () => {});
  }

  async begin(topic: string, partition: number, record: EncodedRecord): Promise<void> {
    this.#tx = await this.#raw.beginTransaction();
    const result = await this.#tx.send({
      messages: [
        {
          topic,
          partition,
          key: record.key,
          value: record.value,
          headers: record.headers,
          timestamp: record.timestamp,
        },
      ],
    });
    const offset = result.offsets?.[0]?.offset ?? -1n;
    this.messageId = messageId(topic, partition, offset);
  }

  commit(): Promise<void> {
    return this.#finish(true);
  }

  rollback(): Promise<void> {
    return this.#finish(false);
  }

  #finish(commit: boolean): Promise<void> {
    if (this.#outcome !== undefined && this.#outcome !== commit) {
      const done = this.#outcome ? 'committed' : 'rolled back';
      return Promise.reject(
        new MqError(
          'FAILED_PRECONDITION',
          `Kafka transaction ${this.transactionId} was already ${done}; it cannot be ${commit ? 'committed' : 'rolled back'} now`,
        ),
      );
    }
    this.#outcome = commit;
    this.#settled ??= (async () => {
      try {
        await closeAll([
          async () => {
            if (!this.#tx) return;
            try {
              if (commit) await this.#tx.commit();
              else await this.#tx.abort();
            } catch (err) {
              throw toKafkaMqError(
                err,
                `${commit ? 'committing' : 'rolling back'} Kafka transaction ${this.transactionId}`,
              );
            }
          },
          () => this.#raw.close(true),
        ]);
      } finally {
        this.#onDone();
      }
    })();
    return this.#settled;
  }
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
