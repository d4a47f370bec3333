import { Base, Consumer, type ConsumerGroupJoinPayload } from '@platformatic/kafka';
import { InvalidArgumentError, toMqError } from '../../core/errors.js';
import { closeAll, closeOnce, delay, Notifier } from '../../core/lifecycle.js';
import { type ScheduledTask, Scheduler } from '../../core/scheduler.js';
import type { TagFilter } from '../../core/tags.js';
import type { BrokerLog, Delivery, Subscription } from '../broker.js';
import { deliveryIterator } from '../delivery/iterator.js';
import { type Ending, Ledger } from '../delivery/ledger.js';
import { type PullFailure, runPullLoop } from '../delivery/pull-loop.js';
import type { SubscribeSettings } from '../subscribe-options.js';
import { decodeRecord, recordTag } from './codec.js';
import type { KafkaConfig } from './config.js';
import { kafkaErrorHas, toKafkaMqError } from './errors.js';
import { FETCH_MAX_WAIT_MS, KafkaFetcher, type RawConsumer } from './fetcher.js';
import { KAFKA_RETRY, type MembershipDeps, RETRY_BACKOFF_MS, rejoin, startOffsets } from './membership.js';
import { type BufferedRecord, KafkaDelivery, PartitionState } from './partition.js';

/** Acked offsets are committed in one request at most this long after the ack. */
const COMMIT_DELAY_MS = 100;

export interface KafkaSubscriptionDeps {
  config: KafkaConfig;
  log: BrokerLog | undefined;
  onClosed: (sub: KafkaSubscription) => void;
  /**
   * Long-poll of one fetch (default 500 ms). A partition whose nack delay ends while a fetch is
   * on the wire waits for that fetch, so the holding's exact tier uses a shorter one.
   */
  fetchMaxWaitMs?: number | undefined;
}

/**
 * One consumer-group member per subscription, with our own fetch loop on the client's
 * primitives (joinGroup / fetch / commit) instead of the library's MessagesStream: the stream
 * has no seek, buffers up to `highWaterMark` records, and an in-flight fetch overwrites its
 * fetch position, which makes a rewind racy. Here a partition is fetched only when its buffer
 * is empty and the subscription is below its in-flight cap, so at most one fetch response
 * (PARTITION_MAX_BYTES) per partition is ever held.
 *
 * Delivery semantics (at-least-once):
 * - Records of a partition are handed out in offset order.
 * - ack() settles; the contiguous settled prefix is committed (commit = oldest unacked offset,
 *   i.e. highest contiguous acked offset + 1). Records the tag filter rejects count as settled.
 * - nack() or an ack timeout rewinds the partition to its oldest unacked offset: every
 *   unsettled delivery of that partition is dropped (its ack/nack then rejects NOT_FOUND) and
 *   every record from that offset on is delivered again, acked ones included.
 * - ordered: a record is held back while an earlier record with the same key is unsettled; as
 *   a partition is handed out in order, that blocks the partition behind it (head of line).
 * - Rebalance (eager, classic protocol): when the heartbeat reports a rebalance, before the
 *   client sends JoinGroup, the settled prefix is committed and every unsettled delivery is
 *   dropped, so the next owner redelivers them; positions are re-read from committed offsets
 *   after the join.
 */
export class KafkaSubscription implements Subscription {
  readonly topic: string;
  readonly group: string;
  readonly #consumer: RawConsumer;
  readonly #fetcher: KafkaFetcher;
  readonly #membership: MembershipDeps;
  readonly #filter: TagFilter;
  readonly #maxInFlight: number;
  readonly #ordered: boolean;
  readonly #deps: KafkaSubscriptionDeps;
  readonly #notifier = new Notifier();
  readonly #scheduler = new Scheduler({ onError: (err) => this.#warn('scheduled task failed', err) });
  readonly #abort = new AbortController();
  #partitions = new Map<number, PartitionState>();
  #order: PartitionState[] = [];
  #rr = 0;
  /** Bumped on every revoke; stale assignment work compares against it. */
  #generation = 0;
  /** Handed out and unsettled, with their ack clock; the partitions keep them by offset too. */
  readonly #ledger: Ledger<KafkaDelivery>;
  #closed = false;
  #fetchLoop: Promise<void> | undefined;
  #rejoinLoop: Promise<void> | undefined;
  #commitTask: ScheduledTask | undefined;
  #committing: Promise<void> | undefined;
  readonly #dirty = new Set<PartitionState>();

  constructor(options: SubscribeSettings, deps: KafkaSubscriptionDeps) {
    this.topic = options.topic;
    this.group = options.group;
    this.#deps = deps;
    this.#filter = options.filter;
    this.#maxInFlight = options.maxInFlight;
    this.#ordered = options.ordered;
    this.#ledger = new Ledger({
      scheduler: this.#scheduler,
      ackTimeoutMs: options.ackTimeoutMs,
      topic: options.topic,
      group: options.group,
      broker: 'Kafka',
      expired: (d) => {
        this.#deps.log?.debug(
          { topic: this.topic, group: this.group, partition: d.state.partition, offset: String(d.offset) },
          'kafka delivery not settled within the ack timeout; rewinding its partition',
        );
        // Still in its partition's offsets: the rewind goes back to it (or an older one).
        this.#rewind(d.state, 0);
      },
    });
    this.#consumer = new Consumer({
      clientId: `${deps.config.clientId}-consumer`,
      bootstrapBrokers: deps.config.brokers,
      groupId: options.group,
      sessionTimeout: 10_000,
      rebalanceTimeout: 10_000,
      heartbeatInterval: 1_000,
      autocommit: false,
      maxWaitTime: deps.fetchMaxWaitMs ?? FETCH_MAX_WAIT_MS,
      retries: 2,
      retryDelay: RETRY_BACKOFF_MS,
      connectTimeout: 5_000,
    });
    this.#fetcher = new KafkaFetcher({
      consumer: this.#consumer,
      topic: this.topic,
      maxWaitMs: deps.fetchMaxWaitMs ?? FETCH_MAX_WAIT_MS,
      isCurrent: (p) => this.#partitions.get(p.partition) === p,
      movedPast: (p) => this.#markDirty(p),
    });
    this.#membership = {
      consumer: this.#consumer,
      topic: this.topic,
      start: options.start,
      signal: this.#abort.signal,
      warn: (msg, err) => this.#warn(msg, err),
    };
    // Emitted when a rejoin ultimately fails; without a listener it would crash the process.
    this.#consumer.on('error', (err: unknown) => this.#onMembershipLost(err));
    // Synchronous, before JoinGroup goes out: drop what the next owner will redeliver.
    this.#consumer.on('consumer:group:rebalance', () => this.#revoke(true));
    this.#consumer.on('consumer:group:join', (payload: ConsumerGroupJoinPayload) => this.#onJoin(payload));
    this.#consumer.on('consumer:group:leave', () => this.#revoke(false));
  }

  /** Joins the group; resolves once this member has its first assignment. */
  async start(): Promise<void> {
    this.#consumer.topics.track(this.topic);
    try {
      await this.#consumer.joinGroup({});
    } catch (err) {
      throw toKafkaMqError(
        err,
        `joining Kafka consumer group "${this.group}" on topic "${this.topic}"`,
        this.topic,
      );
    }
    this.#fetchLoop = this.#runFetchLoop();
  }

  get inFlight(): number {
    return this.#ledger.size;
  }

  [Symbol.asyncIterator](): AsyncIterator<Delivery, undefined> {
    return deliveryIterator(() => this.#next(), this.close);
  }

  async #next(): Promise<IteratorResult<Delivery, undefined>> {
    for (;;) {
      if (this.#closed) return { value: undefined, done: true };
      if (this.#ledger.size < this.#maxInFlight) {
        const d = this.#take();
        if (d) return { value: d, done: false };
      }
      try {
        await this.#notifier.wait(this.#abort.signal);
      } catch {
        return { value: undefined, done: true };
      }
    }
  }

  /** Hands out the next deliverable record, visiting partitions round robin. */
  #take(): KafkaDelivery | undefined {
    const n = this.#order.length;
    const now = Date.now();
    for (let i = 0; i < n; i++) {
      const p = this.#order[(this.#rr + i) % n] as PartitionState;
      if (p.notBefore > now) continue;
      const d = this.#takeFrom(p);
      if (d) {
        this.#rr = (this.#rr + i + 1) % n;
        return d;
      }
    }
    return undefined;
  }

  #takeFrom(p: PartitionState): KafkaDelivery | undefined {
    while (p.head < p.buffer.length) {
      const item = p.buffer[p.head] as BufferedRecord;
      const tag = recordTag(item.record.headers);
      if (!this.#filter.matches(tag)) {
        p.head++;
        p.handedPos = item.offset + 1n;
        this.#afterPop(p);
        this.#markDirty(p);
        continue;
      }
      const keyId = item.record.key === null ? undefined : item.record.key.toString('latin1');
      if (this.#ordered && keyId !== undefined && p.inflightKeys.has(keyId)) return undefined;
      p.head++;
      p.handedPos = item.offset + 1n;
      this.#afterPop(p);
      const count = p.deliveredCount.get(item.offset) ?? 0;
      p.deliveredCount.set(item.offset, count + 1);
      const message = decodeRecord(this.topic, p.partition, item.offset, item.record, count);
      const d = new KafkaDelivery(message, this, p, item.offset, keyId);
      p.inflight.set(item.offset, d);
      if (keyId !== undefined) p.inflightKeys.set(keyId, (p.inflightKeys.get(keyId) ?? 0) + 1);
      this.#ledger.hold(d);
      return d;
    }
    return undefined;
  }

  #afterPop(p: PartitionState): void {
    if (p.head < p.buffer.length) return;
    p.clearBuffer();
    if (p.bufferEnd > p.handedPos) p.handedPos = p.bufferEnd;
    // The partition's buffer is empty: the fetch loop may fetch it again.
    this.#notifier.notifyAll();
  }

  /** Called by a delivery's ack() / nack(). */
  async settle(d: KafkaDelivery, how: 'ack' | 'nack', delayMs = 0, uncounted = false): Promise<void> {
    if (!this.#ledger.settle(d, how)) return;
    if (how === 'nack') {
      if (!Number.isFinite(delayMs) || delayMs < 0) {
        throw new InvalidArgumentError(
          `nack delayMs=${delayMs} is invalid; it accepts a number of milliseconds >= 0`,
        );
      }
      if (uncounted) {
        // The consumer never received it: this hand-out is not a delivery attempt.
        const n = d.state.deliveredCount.get(d.offset) ?? 0;
        if (n > 0) d.state.deliveredCount.set(d.offset, n - 1);
      }
      // Ended but still in its partition's offsets: the rewind goes back to it (or an older one).
      this.#ledger.end(d, 'nacked');
      this.#rewind(d.state, delayMs);
      return;
    }
    this.#drop(d, 'acked');
    this.#markDirty(d.state);
    this.#notifier.notifyAll();
  }

  /** Ends a delivery's hold (`how`) and removes it from its partition's offsets and keys. */
  #drop(d: KafkaDelivery, how: Ending): void {
    this.#ledger.end(d, how);
    const p = d.state;
    if (p.inflight.get(d.offset) !== d) return;
    p.inflight.delete(d.offset);
    if (d.keyId !== undefined) {
      const c = (p.inflightKeys.get(d.keyId) ?? 1) - 1;
      if (c <= 0) p.inflightKeys.delete(d.keyId);
      else p.inflightKeys.set(d.keyId, c);
    }
  }

  /** Seeks the partition back to its oldest unsettled offset (see the class comment). */
  #rewind(p: PartitionState, delayMs: number): void {
    if (this.#partitions.get(p.partition) !== p) return;
    const oldest = p.commitPoint();
    for (const d of [...p.inflight.values()]) this.#drop(d, 'rewound');
    p.clearBuffer();
    p.epoch++;
    p.fetchPos = oldest;
    p.bufferEnd = oldest;
    p.handedPos = oldest;
    if (delayMs > 0) {
      p.notBefore = Date.now() + delayMs;
      this.#scheduler.at(p.notBefore, () => this.#notifier.notifyAll());
    } else {
      p.notBefore = 0;
    }
    this.#notifier.notifyAll();
  }

  #markDirty(p: PartitionState, afterMs = COMMIT_DELAY_MS): void {
    this.#dirty.add(p);
    if (this.#closed) return;
    this.#commitTask ??= this.#scheduler.after(afterMs, () => {
      this.#commitTask = undefined;
      void this.#flushCommits();
    });
  }

  /** Commits every dirty partition's settled prefix in one request; one request at a time. */
  #flushCommits(): Promise<void> {
    if (this.#committing) {
      // Re-run after the one on the wire; its snapshot may predate the newest acks.
      return this.#committing.then(() => (this.#dirty.size > 0 ? this.#flushCommits() : undefined));
    }
    const offsets: Array<{ topic: string; partition: number; offset: bigint; leaderEpoch: number }> = [];
    const states: Array<[PartitionState, bigint]> = [];
    for (const p of this.#dirty) {
      if (this.#partitions.get(p.partition) !== p) continue;
      const point = p.commitPoint();
      if (point > p.committed) {
        offsets.push({ topic: this.topic, partition: p.partition, offset: point, leaderEpoch: -1 });
        states.push([p, point]);
      }
    }
    this.#dirty.clear();
    if (offsets.length === 0) return Promise.resolve();
    this.#committing = this.#consumer
      .commit({ offsets })
      .then(
        () => {
          for (const [p, point] of states) {
            if (point > p.committed) p.committed = point;
            p.pruneCounts(p.committed);
          }
        },
        (err: unknown) => {
          this.#warn('committing Kafka offsets failed; retrying', err);
          for (const [p] of states) {
            if (this.#partitions.get(p.partition) === p) this.#markDirty(p, RETRY_BACKOFF_MS * 2);
          }
        },
      )
      .finally(() => {
        this.#committing = undefined;
      });
    return this.#committing;
  }

  /**
   * Drops every partition: unsettled deliveries become NOT_FOUND, nothing is handed out until
   * the next assignment. With `commit`, the settled prefix is committed first (the member still
   * holds its generation while the rebalance is in progress, so the commit is accepted).
   */
  #revoke(commit: boolean): void {
    this.#generation++;
    if (commit && !this.#closed) {
      for (const p of this.#partitions.values()) this.#dirty.add(p);
      void this.#flushCommits();
    }
    this.#commitTask?.cancel();
    this.#commitTask = undefined;
    for (const p of this.#partitions.values()) {
      for (const d of [...p.inflight.values()]) this.#drop(d, this.#closed ? 'closed' : 'revoked');
      p.clearBuffer();
      p.epoch++;
    }
    this.#partitions = new Map();
    this.#order = [];
    this.#dirty.clear();
    this.#notifier.notifyAll();
  }

  #onJoin(payload: ConsumerGroupJoinPayload): void {
    if (this.#closed) return;
    this.#revoke(false);
    const mine = (payload.assignments ?? []).find((a) => a.topic === this.topic)?.partitions ?? [];
    void this.#assign(
      [...mine].sort((a, b) => a - b),
      this.#generation,
    );
  }

  /** Starts handing out the assigned partitions from their start offsets (see startOffsets). */
  async #assign(partitions: number[], generation: number): Promise<void> {
    if (partitions.length === 0) return;
    const current = (): boolean => !this.#closed && generation === this.#generation;
    const starts = await startOffsets(this.#membership, partitions, current);
    if (starts === undefined || !current()) return;
    const states = partitions.map((i) => new PartitionState(i, starts.get(i) ?? 0n));
    this.#partitions = new Map(states.map((s) => [s.partition, s]));
    this.#order = states;
    this.#notifier.notifyAll();
  }

  /** The client gave up rejoining (e.g. Kafka was down for long): keep trying in the background. */
  #onMembershipLost(err: unknown): void {
    if (this.#closed) return;
    this.#warn('Kafka consumer group membership lost; rejoining', err);
    this.#revoke(false);
    this.#rejoinLoop ??= rejoin(this.#membership).finally(() => {
      this.#rejoinLoop = undefined;
    });
  }

  #fetchable(): PartitionState[] {
    if (this.#ledger.size >= this.#maxInFlight) return [];
    const now = Date.now();
    return this.#order.filter((p) => !p.fetching && p.buffered === 0 && p.notBefore <= now);
  }

  async #runFetchLoop(): Promise<void> {
    await runPullLoop<PartitionState[]>({
      signal: this.#abort.signal,
      wake: this.#notifier,
      backoff: KAFKA_RETRY,
      log: this.#deps.log,
      context: { topic: this.topic, group: this.group },
      what: 'fetching from Kafka',
      ready: () => {
        const ready = this.#fetchable();
        return ready.length > 0 ? ready : undefined;
      },
      // A fetch on the wire is not cancelled: it ends within its long-poll (close waits for it).
      pull: async (ready) => {
        if (await this.#fetcher.fetch(ready)) this.#notifier.notifyAll();
      },
      failed: async (err, ready): Promise<PullFailure> => {
        if (kafkaErrorHas(err, 'apiId', 'OFFSET_OUT_OF_RANGE')) {
          await this.#fetcher
            .resetOutOfRange(ready)
            .catch((e) => this.#warn('resolving an out-of-range Kafka offset failed', e));
        }
        this.#consumer.clearMetadata();
        return 'retry';
      },
    });
  }

  #warn(msg: string, err: unknown): void {
    this.#deps.log?.warn(
      { topic: this.topic, group: this.group, err: toMqError(err, 'UNAVAILABLE').message },
      msg,
    );
  }

  /**
   * Commits the settled prefix, drops unsettled deliveries (they are redelivered to whoever
   * owns the partition next), leaves the group and closes the client.
   */
  close = closeOnce(async () => {
    await closeAll([
      async () => {
        // Commit while the member still holds its generation, then stop handing out.
        for (const p of this.#partitions.values()) this.#dirty.add(p);
        await this.#flushCommits();
        while (this.#committing) await this.#committing;
      },
      () => {
        this.#closed = true;
        this.#revoke(false);
        this.#abort.abort();
        this.#notifier.notifyAll();
      },
      async () => {
        // A fetch on the wire ends within its long-poll; bounded so an unreachable Kafka
        // cannot hold close() (closing the client below fails it anyway).
        if (!this.#fetchLoop) return;
        const timeout = new AbortController();
        await Promise.race([this.#fetchLoop, delay(FETCH_MAX_WAIT_MS * 4, timeout.signal).catch(() => {})]);
        timeout.abort();
      },
      () => this.#scheduler.close(),
      async () => {
        try {
          // leaveGroup() marks the membership inactive BEFORE it asks Kafka; close() alone leaves
          // it active while leaving, so a JoinGroup answer still on the wire (a rebalance under
          // way) would arm a new heartbeat timer after close() resolved.
          await this.#consumer.leaveGroup(true);
          await this.#consumer.close(true);
        } catch (err) {
          // Leaving failed (Kafka down): close() would return without closing its connections;
          // the base close still releases them and its retry timers.
          this.#warn('leaving the Kafka consumer group failed; closing the connections anyway', err);
          await Base.prototype.close.call(this.#consumer);
        }
      },
      async () => {
        await this.#fetchLoop;
        await this.#rejoinLoop;
      },
      () => this.#deps.onClosed(this),
    ]);
  });

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
