import { randomUUID } from 'node:crypto';
import type { Delivery, Subscription } from '../brokers/broker.js';
import { MqError, NotFoundError, ResourceExhaustedError } from '../core/errors.js';
import { closeAll, Notifier } from '../core/lifecycle.js';
import type { Message } from '../core/message.js';
import type { Caller } from './callers.js';
import type { Logger } from './log.js';
import type { GatewayMetrics } from './metrics.js';
import type { BrokerRef } from './routing.js';

/**
 * Consumer sessions. A session is what CreateConsumer returns: one broker subscription (group,
 * topic, tag expression) that outlives any single ReceiveMessages stream.
 *
 * The seed counted a message as consumed once buffered, lost the buffer when a stream ended, and
 * its AckMessage did nothing. Here a delivery stays unacked until AckMessage; when the stream ends
 * every unacked delivery goes back to the broker at once, and one unacked past ACK_TIMEOUT is
 * released for redelivery (reconsume_times + 1). The session pulls from the broker only while its
 * unacked deliveries are under MESSAGE_BUFFER_SIZE and the stream accepts writes: backpressure,
 * never a drop.
 */

/** Where a session writes: the gRPC layer adapts its server stream to this. */
export interface DeliverySink {
  /** Writes one message; false means the transport buffer is full: wait for drained(). */
  write(message: Message, receiptHandle: string): boolean;
  drained(): Promise<void>;
  /** Ends the stream: OK when error is undefined. */
  end(error?: MqError): void;
}

interface InFlight {
  readonly delivery: Delivery;
  readonly at: number;
}

interface Attachment {
  readonly sink: DeliverySink;
  readonly detached: Promise<typeof DETACHED>;
  detach: () => void;
}

const DETACHED = Symbol('detached');
const RECENT_ACKS = 4096;

export interface Session {
  readonly id: string;
  readonly caller: Caller;
  readonly endpoint: string;
  readonly topic: string;
  readonly group: string;
  readonly tagExpression: string;
  readonly subscription: Subscription;
  readonly iterator: AsyncIterator<Delivery>;
  pendingNext: Promise<IteratorResult<Delivery>> | undefined;
  readonly inFlight: Map<string, InFlight>;
  readonly recentAcks: Set<string>;
  readonly room: Notifier;
  attachment: Attachment | undefined;
  pump: Promise<void> | undefined;
  detachedAt: number;
  seq: number;
  full: boolean;
  closed: boolean;
}

export interface ConsumerRegistryOptions {
  bufferSize: number;
  ackTimeoutMs: number;
  cleanupTimeoutMs: number;
  maxPerCaller: number;
  metrics: GatewayMetrics;
  log: Logger;
}

export class ConsumerRegistry {
  readonly #sessions = new Map<string, Session>();
  readonly #perCaller = new Map<string, number>();
  readonly #opts: ConsumerRegistryOptions;
  #closed = false;

  constructor(options: ConsumerRegistryOptions) {
    this.#opts = options;
  }

  get sessionCount(): number {
    return this.#sessions.size;
  }

  get streamCount(): number {
    let n = 0;
    for (const s of this.#sessions.values()) if (s.attachment) n++;
    return n;
  }

  get inFlightCount(): number {
    let n = 0;
    for (const s of this.#sessions.values()) n += s.inFlight.size;
    return n;
  }

  async create(input: {
    ref: BrokerRef;
    endpoint: string;
    caller: Caller;
    accessKeySecret: string;
    topic: string;
    group: string;
    tagExpression: string;
  }): Promise<Session> {
    if (this.#closed)
      throw new MqError('UNAVAILABLE', 'the gateway is shutting down; retry against another instance');
    const { caller } = input;
    const owned = this.#perCaller.get(caller.owner) ?? 0;
    if (owned >= this.#opts.maxPerCaller) {
      throw new ResourceExhaustedError(
        `caller "${caller.accessKeyId || '(no key)'}" already holds ${owned} consumer sessions, the limit ` +
          `(MAX_CONSUMERS_PER_CALLER=${this.#opts.maxPerCaller}); release some with CleanupConsumer`,
        { retryable: false },
      );
    }
    this.#perCaller.set(caller.owner, owned + 1);
    let subscription: Subscription;
    try {
      subscription = await input.ref.broker.subscribe({
        topic: input.topic,
        group: input.group,
        filter: input.tagExpression,
        maxInFlight: this.#opts.bufferSize,
        // The gateway releases unacked deliveries itself at ACK_TIMEOUT (sweep); the broker's own
        // timeout is a safety net for a gateway that dies, so it must fire later or the two race
        // and the gateway holds a stale delivery that the broker already handed out again.
        ackTimeoutMs: this.#opts.ackTimeoutMs + Math.max(1000, this.#opts.ackTimeoutMs / 10),
        // Keyed (sharding-key) messages keep their order across the group's sessions.
        ordered: true,
        credentials: caller.accessKeyId
          ? { accessKeyId: caller.accessKeyId, accessKeySecret: input.accessKeySecret }
          : undefined,
      });
    } catch (err) {
      this.#uncount(caller.owner);
      throw err;
    }
    const session: Session = {
      id: randomUUID(),
      caller,
      endpoint: input.endpoint,
      topic: input.topic,
      group: input.group,
      tagExpression: input.tagExpression,
      subscription,
      iterator: subscription[Symbol.asyncIterator](),
      pendingNext: undefined,
      inFlight: new Map(),
      recentAcks: new Set(),
      room: new Notifier(),
      attachment: undefined,
      pump: undefined,
      // A session never attached is abandoned just like one whose stream ended.
      detachedAt: Date.now(),
      seq: 0,
      full: false,
      closed: false,
    };
    this.#sessions.set(session.id, session);
    return session;
  }

  get(id: string): Session {
    const s = this.#sessions.get(id);
    if (!s) {
      throw new NotFoundError(
        `consumer "${id}" not found: it was cleaned up, or expired after CONSUMER_CLEANUP_TIMEOUT without a stream; call CreateConsumer again`,
      );
    }
    return s;
  }

  /** Attaches a stream; refuses a second concurrent one. Resolves when the stream's pump ends. */
  attach(id: string, sink: DeliverySink): { detach: () => void; done: Promise<void> } {
    const s = this.get(id);
    if (s.attachment) {
      throw new MqError(
        'FAILED_PRECONDITION',
        `consumer "${id}" already has an active ReceiveMessages stream; one stream per consumer: close it first or create another consumer in the same group`,
      );
    }
    let detach!: () => void;
    const detached = new Promise<typeof DETACHED>((resolve) => {
      detach = () => resolve(DETACHED);
    });
    const attachment: Attachment = { sink, detached, detach };
    s.attachment = attachment;
    const done = this.#pump(s, attachment).catch((err) => {
      this.#opts.log.error({ err, consumerId: s.id }, 'consumer stream pump failed');
      sink.end(
        err instanceof MqError ? err : new MqError('INTERNAL', 'delivery loop failed', { cause: err }),
      );
    });
    s.pump = done;
    return { detach: () => this.#detach(s, attachment), done };
  }

  async ack(id: string, receiptHandle: string): Promise<void> {
    const s = this.get(id);
    const entry = s.inFlight.get(receiptHandle);
    if (!entry) {
      if (s.recentAcks.has(receiptHandle)) return;
      throw new NotFoundError(
        `receipt handle "${receiptHandle}" is not pending on consumer "${id}": unknown, or already released for redelivery (ack timeout or stream end)`,
      );
    }
    s.inFlight.delete(receiptHandle);
    s.recentAcks.add(receiptHandle);
    if (s.recentAcks.size > RECENT_ACKS) {
      const oldest = s.recentAcks.values().next().value;
      if (oldest !== undefined) s.recentAcks.delete(oldest);
    }
    s.room.notifyAll();
    await entry.delivery.ack();
    this.#opts.metrics.counts.messagesAcked++;
  }

  async nack(id: string, receiptHandle: string, delayMs: number): Promise<void> {
    const s = this.get(id);
    const entry = s.inFlight.get(receiptHandle);
    if (!entry) {
      throw new NotFoundError(
        `receipt handle "${receiptHandle}" is not pending on consumer "${id}": unknown, acked, or already released for redelivery`,
      );
    }
    s.inFlight.delete(receiptHandle);
    s.room.notifyAll();
    await entry.delivery.nack({ delayMs });
    this.#opts.metrics.counts.messagesNacked++;
  }

  /** Closes a session on its client's request (not counted as a leak). */
  async cleanup(id: string): Promise<boolean> {
    const s = this.#sessions.get(id);
    if (!s) return false;
    await this.#close(s);
    return true;
  }

  /** Closes the caller's own sessions of a group (and topic when given); never another caller's. */
  async cleanupByGroup(caller: Caller, group: string, topic: string): Promise<number> {
    const mine = [...this.#sessions.values()].filter(
      (s) => s.caller.owner === caller.owner && s.group === group && (topic === '' || s.topic === topic),
    );
    await closeAll(mine.map((s) => () => this.#close(s)));
    return mine.length;
  }

  /** Releases deliveries past the ack timeout; closes sessions left without a stream too long. */
  async sweep(now = Date.now()): Promise<void> {
    const steps: Array<() => Promise<void>> = [];
    for (const s of this.#sessions.values()) {
      let released = false;
      for (const [rh, entry] of s.inFlight) {
        // Insertion order is delivery order, so the first young entry ends the scan.
        if (now - entry.at < this.#opts.ackTimeoutMs) break;
        s.inFlight.delete(rh);
        this.#release(entry.delivery);
        released = true;
      }
      if (released) s.room.notifyAll();
      if (!s.attachment && now - s.detachedAt > this.#opts.cleanupTimeoutMs) {
        this.#opts.metrics.counts.consumerLeakDetections++;
        this.#opts.log.warn(
          { consumerId: s.id, topic: s.topic, group: s.group, accessKeyId: s.caller.accessKeyId },
          'consumer session without a stream for CONSUMER_CLEANUP_TIMEOUT: closed (leak detection)',
        );
        steps.push(() => this.#close(s));
      }
    }
    await closeAll(steps);
  }

  /** Ends every stream (releasing its unacked deliveries) so shutdown can proceed. */
  endStreams(error: MqError): void {
    for (const s of this.#sessions.values()) {
      const a = s.attachment;
      if (!a) continue;
      this.#detach(s, a);
      a.sink.end(error);
    }
  }

  async close(): Promise<void> {
    this.#closed = true;
    const all = [...this.#sessions.values()];
    await closeAll(all.map((s) => () => this.#close(s)));
  }

  async #pump(s: Session, a: Attachment): Promise<void> {
    const cap = this.#opts.bufferSize;
    const counts = this.#opts.metrics.counts;
    while (s.attachment === a && !s.closed) {
      if (s.inFlight.size >= cap) {
        if (!s.full) {
          s.full = true;
          counts.channelFullEvents++;
        }
        // Wait for an ack, a nack or a timeout release; the detach promise ends the wait too.
        const ac = new AbortController();
        await Promise.race([s.room.wait(ac.signal).catch(() => {}), a.detached]);
        ac.abort();
        continue;
      }
      s.full = false;
      s.pendingNext ??= s.iterator.next();
      const r = await Promise.race([s.pendingNext, a.detached]);
      // On detach the pending pull stays with the session: the next stream picks it up, so no
      // delivery is orphaned and the broker is not asked twice.
      if (r === DETACHED) return;
      s.pendingNext = undefined;
      if (r.done) {
        if (s.attachment === a) {
          this.#detach(s, a);
          a.sink.end(new MqError('UNAVAILABLE', 'the broker subscription ended; reconnect to resume'));
        }
        return;
      }
      const delivery = r.value;
      if (s.attachment !== a || s.closed) {
        this.#release(delivery);
        return;
      }
      const rh = `${(++s.seq).toString(36)}.${s.id.slice(0, 8)}`;
      s.inFlight.set(rh, { delivery, at: Date.now() });
      counts.messagesDelivered++;
      if (!a.sink.write(delivery.message, rh)) {
        await Promise.race([a.sink.drained(), a.detached]);
      }
    }
  }

  #detach(s: Session, a: Attachment): void {
    if (s.attachment !== a) return;
    s.attachment = undefined;
    s.detachedAt = Date.now();
    a.detach();
    // Every delivery the stream held goes back to the broker at once.
    for (const entry of s.inFlight.values()) this.#release(entry.delivery);
    s.inFlight.clear();
    s.room.notifyAll();
  }

  #release(delivery: Delivery): void {
    this.#opts.metrics.counts.messagesRedelivered++;
    delivery.nack({ delayMs: 0 }).catch((err: unknown) => {
      // NOT_FOUND means the broker already took it back (its own visibility timeout): fine.
      if (!(err instanceof MqError && err.code === 'NOT_FOUND')) {
        this.#opts.log.warn(
          { err },
          'could not release a delivery; the broker redelivers it after its ack timeout',
        );
      }
    });
  }

  async #close(s: Session): Promise<void> {
    if (s.closed) return;
    s.closed = true;
    this.#sessions.delete(s.id);
    this.#uncount(s.caller.owner);
    const a = s.attachment;
    if (a) {
      this.#detach(s, a);
      a.sink.end();
    }
    s.room.notifyAll();
    await closeAll([() => s.subscription.close(), () => s.pump]);
  }

  #uncount(owner: string): void {
    const n = (this.#perCaller.get(owner) ?? 1) - 1;
    if (n <= 0) this.#perCaller.delete(owner);
    else this.#perCaller.set(owner, n);
  }
}
