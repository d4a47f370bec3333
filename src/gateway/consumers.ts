import { randomUUID } from 'node:crypto';
import type { Context, Link, Span } from '@opentelemetry/api';
import type { Delivery, StartPosition, Subscription } from '../brokers/broker.js';
import { Ledger, LedgerEntry } from '../brokers/delivery/ledger.js';
import { BoundedMap } from '../core/bounded.js';
import { MqError, NotFoundError, quoteInput } from '../core/errors.js';
import { closeAll, Notifier } from '../core/lifecycle.js';
import type { Message } from '../core/message.js';
import { Scheduler } from '../core/scheduler.js';
import { ATTR, messageLink, messagingSystem, startMessagingSpan, tracingOn } from '../core/tracing.js';
import type { Audit } from './audit.js';
import type { Caller } from './callers.js';
import type { Logger } from './log.js';
import type { GatewayMetrics } from './metrics.js';
import { type Owned, OwnedMap } from './owned.js';
import { Quota } from './quota.js';
import type { BrokerRef } from './routing.js';

/**
 * Consumer sessions. A session is what CreateConsumer returns: one broker subscription (group,
 * topic, tag expression) that outlives any single ReceiveMessages stream.
 *
 * A delivery stays unacked until AckMessage; when the stream ends every unacked delivery goes back
 * to the broker at once, and one unacked past ACK_TIMEOUT is released for redelivery
 * (reconsume_times + 1). The session pulls from the broker only while its unacked deliveries are
 * under MESSAGE_BUFFER_SIZE and the stream's unwritten bytes are under STREAM_BUFFER_BYTES:
 * backpressure, never a drop.
 *
 * A client that stops reading its stream gets no more writes (the transport holds what was
 * written, and nothing is written again while it does), its deliveries' ack clocks do not start
 * until the transport has taken them, and after STREAM_STALL_TIMEOUT without progress the stream
 * is ended and its deliveries released without counting as delivery attempts.
 */

/** A delivery on its way to a client. */
export interface Outgoing {
  readonly message: Message;
  readonly receiptHandle: string;
}

/** Where a session writes: the gRPC layer adapts its server stream to this. */
export interface DeliverySink {
  /** The RPC carrying the deliveries (ReceiveMessages, Subscribe), for their receive spans. */
  readonly rpc: string;
  /** Most messages handed to one write() call. */
  readonly maxBatch: number;
  /** Most bytes of messages handed to one write() call (one message always may). */
  readonly maxBatchBytes: number;
  /** Messages the client can take now: its credit, or Infinity for a stream without credit. */
  credit(): number;
  /** Unacked deliveries this stream wants at most (MESSAGE_BUFFER_SIZE caps it); 0: the cap. */
  readonly maxInFlight: number;
  /**
   * Bytes the stream's connection has written so far. A large message can take long to drain to
   * a slow reader; the connection moving at all means the client reads, so it is not stalled.
   */
  transportBytes(): number;
  /**
   * Writes messages (spending credit). `flushed` runs once the transport has taken their bytes,
   * which needs the peer's flow-control window: a client that does not read never lets it run.
   */
  write(batch: readonly Outgoing[], flushed: () => void): void;
  /** Ends the stream: OK when error is undefined. */
  end(error?: MqError): void;
  /**
   * Ends a stream whose peer stopped reading. Its status cannot get past the unread data, so the
   * sink cuts the transport when the call has not finished shortly after.
   */
  abort(error: MqError): void;
}

/**
 * A delivery handed to a stream; it is also what the stream's sink writes. The session's ledger
 * holds it from the moment the transport took it (the ack clock starts there) until it is
 * settled or released.
 */
class InFlight extends LedgerEntry implements Outgoing {
  /** The transport took it: the client has it, and giving it back counts as an attempt. */
  flushed = false;
  /** An ack or nack under way: the entry stays until the broker confirms it. */
  settling: Promise<void> | undefined = undefined;

  constructor(
    readonly receiptHandle: string,
    readonly message: Message,
    readonly delivery: Delivery,
    readonly bytes: number,
  ) {
    super();
  }
}

const DETACHED = Symbol('detached');
/** What a pull that has not completed yet looks like while a batch is gathered. */
const NOT_READY = Symbol('not ready');
const notReady = Promise.resolve(NOT_READY);
const RECENT_ACKS = 4096;
/**
 * Messages a stream may have in transit before the pump waits, whatever their size: grpc-js's
 * own write queue for a stream holds 16 before it asks for a pause.
 */
const MAX_UNFLUSHED_MESSAGES = 16;

/** A stream's footprint in transit; nothing more is written while it is at the limit. */
class Attachment {
  unflushedBytes = 0;
  unflushedCount = 0;
  /** Last time the stream made progress: a write taken, its connection writing, or a write begun. */
  progressAt = Date.now();
  /** The connection's written bytes when the sweep last looked. */
  transportBytes = -1;
  readonly detached: Promise<typeof DETACHED>;
  #resolve!: (v: typeof DETACHED) => void;

  constructor(readonly sink: DeliverySink) {
    this.detached = new Promise((resolve) => {
      this.#resolve = resolve;
    });
  }

  detach(): void {
    this.#resolve(DETACHED);
  }
}

/** Rough bytes a message costs while it waits in a stream (body, metadata, framing). */
function messageBytes(m: Message): number {
  let n = m.body.byteLength + m.id.length + m.topic.length + 64;
  for (const k in m.properties) n += k.length + (m.properties[k]?.length ?? 0);
  return n;
}

const notFound = (id: string): NotFoundError =>
  new NotFoundError(
    `consumer ${quoteInput(id)} not found: it was cleaned up, or expired after CONSUMER_CLEANUP_TIMEOUT without a stream; call CreateConsumer again`,
  );

export interface ConsumerRegistryOptions {
  bufferSize: number;
  /** Unwritten bytes one stream may hold in transit (one message is always allowed). */
  streamBufferBytes: number;
  /** A stream with unwritten deliveries and no progress for this long is ended. */
  streamStallTimeoutMs: number;
  ackTimeoutMs: number;
  cleanupTimeoutMs: number;
  maxPerCaller: number;
  maxSessions: number;
  maxStreams: number;
  metrics: GatewayMetrics;
  audit: Audit;
  log: Logger;
}

export interface SessionInput {
  ref: BrokerRef;
  endpoint: string;
  caller: Caller;
  accessKeySecret: string;
  topic: string;
  group: string;
  tagExpression: string;
  /** Where a group seen for the first time starts. */
  start?: StartPosition | undefined;
}

/** One consumer session: its broker subscription, its unacked deliveries and its stream. */
export class Session implements Owned {
  readonly id = randomUUID();
  readonly owner: string;
  readonly inFlight = new Map<string, InFlight>();
  /** Handles acked lately: a repeated ack of one of them is answered OK. */
  readonly #recentAcks = new BoundedMap<string, true>(RECENT_ACKS);
  readonly #room = new Notifier();
  /**
   * The ack clock of the deliveries the client has (written and not settled); made at the first
   * write, as most of a gateway's sessions may sit idle.
   */
  #ledger: Ledger<InFlight> | undefined;
  readonly #scheduler: Scheduler;
  readonly #iterator: AsyncIterator<Delivery>;
  #pendingNext: Promise<IteratorResult<Delivery>> | undefined;
  /** A delivery pulled that did not fit the last batch's bytes: first of the next one. */
  #carry: Delivery | undefined;
  #attachment: Attachment | undefined;
  #pump: Promise<void> | undefined;
  #full = false;
  #closed = false;
  /** When the last stream ended (or the session was created): the cleanup clock. */
  detachedAt = Date.now();

  constructor(
    readonly caller: Caller,
    readonly input: SessionInput,
    readonly subscription: Subscription,
    readonly registry: ConsumerRegistry,
    readonly opts: ConsumerRegistryOptions,
    scheduler: Scheduler,
  ) {
    this.owner = caller.owner;
    this.#iterator = subscription[Symbol.asyncIterator]();
    this.#scheduler = scheduler;
  }

  #clock(): Ledger<InFlight> {
    this.#ledger ??= new Ledger({
      scheduler: this.#scheduler,
      ackTimeoutMs: this.opts.ackTimeoutMs,
      topic: this.input.topic,
      group: this.input.group,
      broker: 'the gateway',
      // Not acked within ACK_TIMEOUT of reaching the client: back to the broker for redelivery.
      expired: (e) => {
        if (this.inFlight.get(e.receiptHandle) !== e) return;
        this.inFlight.delete(e.receiptHandle);
        this.#release(e, true);
        this.#room.notifyAll();
      },
    });
    return this.#ledger;
  }

  /** The stream's credit grew, or something else may have made room: the pump looks again. */
  wake(): void {
    this.#room.notifyAll();
  }

  get attached(): boolean {
    return this.#attachment !== undefined;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Starts writing to `sink`; resolves when this stream's pump stops. */
  attach(sink: DeliverySink): { detach: () => void; done: Promise<void> } {
    if (this.#attachment) {
      throw new MqError(
        'FAILED_PRECONDITION',
        `consumer ${quoteInput(this.id)} already has an active stream; one stream per consumer: close it first or create another consumer in the same group`,
      );
    }
    const a = new Attachment(sink);
    this.#attachment = a;
    const done = this.#runPump(a).catch((err) => {
      this.opts.log.error({ err, consumerId: this.id }, 'consumer stream pump failed');
      sink.end(
        err instanceof MqError ? err : new MqError('INTERNAL', 'delivery loop failed', { cause: err }),
      );
    });
    this.#pump = done;
    return { detach: () => this.#detach(a), done };
  }

  /**
   * Acks a delivery. It counts as acked only once the broker confirmed it: a retry after a failed
   * ack acks again instead of being told it succeeded.
   */
  ack(receiptHandle: string, remember = true): Promise<void> {
    const e = this.inFlight.get(receiptHandle);
    if (!e) {
      if (this.#recentAcks.has(receiptHandle)) return Promise.resolve();
      return Promise.reject(this.#notPending(receiptHandle));
    }
    return this.#settle(e, () => e.delivery.ack(), remember ? 'remembered ack' : 'ack');
  }

  nack(receiptHandle: string, delayMs: number): Promise<void> {
    const e = this.inFlight.get(receiptHandle);
    if (!e) return Promise.reject(this.#notPending(receiptHandle));
    return this.#settle(e, () => e.delivery.nack({ delayMs }), 'nack');
  }

  /**
   * A 'remembered ack' is answered OK when repeated (unary AckMessage: a client may retry an ack
   * whose answer it lost). In-stream acks are not remembered: a repeat only earns a NOT_FOUND
   * failure frame, and remembering every handle is a hash-table write per message.
   */
  #settle(e: InFlight, op: () => Promise<void>, how: 'remembered ack' | 'ack' | 'nack'): Promise<void> {
    // A second ack of the same delivery while the first is under way shares its outcome.
    if (e.settling) return e.settling;
    const counts = this.opts.metrics.counts;
    // The ack clock stops while the broker is asked (and restarts if that fails).
    this.#ledger?.end(e, how === 'nack' ? 'nacked' : 'acked');
    e.settling = op().then(
      () => {
        if (this.inFlight.get(e.receiptHandle) === e) this.inFlight.delete(e.receiptHandle);
        if (how === 'nack') counts.messagesNacked++;
        else {
          if (how === 'remembered ack') this.#recentAcks.set(e.receiptHandle, true);
          counts.messagesAcked++;
        }
        this.#room.notifyAll();
      },
      (err: unknown) => {
        e.settling = undefined;
        // The stream ended while the broker was asked: nobody holds the delivery any more.
        if (this.inFlight.get(e.receiptHandle) !== e) this.#release(e, true);
        else if (e.flushed) this.#clock().hold(e);
        throw err;
      },
    );
    return e.settling;
  }

  #notPending(rh: string): NotFoundError {
    return new NotFoundError(
      `receipt handle ${quoteInput(rh)} is not pending on consumer ${quoteInput(this.id)}: unknown, or already released for redelivery (ack timeout or stream end)`,
    );
  }

  /**
   * Periodic work: ends a stream that has stopped reading. Returns true when the session has been
   * without a stream too long. (Deliveries past the ack timeout are released by the ledger.)
   */
  sweep(now: number): boolean {
    const a = this.#attachment;
    if (a && a.unflushedCount > 0) {
      const written = a.sink.transportBytes();
      if (written !== a.transportBytes) {
        a.transportBytes = written;
        a.progressAt = now;
      } else if (now - a.progressAt > this.opts.streamStallTimeoutMs) this.#stall(a);
    }
    return !this.#attachment && now - this.detachedAt > this.opts.cleanupTimeoutMs;
  }

  #stall(a: Attachment): void {
    const count = a.unflushedCount;
    const bytes = a.unflushedBytes;
    this.opts.metrics.counts.streamsStalled++;
    this.opts.log.warn(
      { consumerId: this.id, owner: this.owner, unwritten: count, bytes },
      'stream read nothing for STREAM_STALL_TIMEOUT: ended, its deliveries released',
    );
    this.#detach(a);
    a.sink.abort(
      new MqError(
        'RESOURCE_EXHAUSTED',
        `the stream read nothing for ${this.opts.streamStallTimeoutMs} ms (STREAM_STALL_TIMEOUT) while ${count} deliveries (${bytes} bytes) waited to be written; they were released for redelivery. Read the stream continuously, then reconnect`,
      ),
    );
  }

  /** Ends the stream (if any) with `error`, releasing its unacked deliveries. */
  endStream(error: MqError): void {
    const a = this.#attachment;
    if (!a) return;
    this.#detach(a);
    a.sink.end(error);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#ledger?.close();
    const a = this.#attachment;
    if (a) {
      this.#detach(a);
      a.sink.end();
    }
    this.#room.notifyAll();
    const carry = this.#carry;
    this.#carry = undefined;
    if (carry) this.#release(carry, false);
    // The pending pull often completes in the same turn, with a delivery the detach just gave
    // back; let it arrive and go back uncounted (#detach arranged that) before the subscription
    // closes, or closing would count it as an attempt the client never saw.
    if (this.#pendingNext) await new Promise((resolve) => setImmediate(resolve));
    await closeAll([() => this.subscription.close(), () => this.#pump]);
  }

  async #runPump(a: Attachment): Promise<void> {
    const maxBytes = this.opts.streamBufferBytes;
    const counts = this.opts.metrics.counts;
    const sink = a.sink;
    const cap =
      sink.maxInFlight > 0 ? Math.min(sink.maxInFlight, this.opts.bufferSize) : this.opts.bufferSize;
    while (this.#attachment === a && !this.#closed) {
      const free = cap - this.inFlight.size;
      const room = Math.min(free, sink.credit());
      const transit =
        a.unflushedCount >= MAX_UNFLUSHED_MESSAGES || (a.unflushedCount > 0 && a.unflushedBytes >= maxBytes);
      if (room <= 0 || transit) {
        if (free <= 0 && !this.#full) {
          this.#full = true;
          counts.channelFullEvents++;
        }
        // Woken by an ack, a nack, a release, a flush, more credit or the end of the stream.
        // A wait left behind by a detach is released by the notify every detach makes.
        await Promise.race([this.#room.wait(), a.detached]);
        continue;
      }
      this.#full = false;
      let first = this.#carry;
      this.#carry = undefined;
      if (first === undefined) {
        this.#pendingNext ??= this.#iterator.next();
        const r = await Promise.race([this.#pendingNext, a.detached]);
        // On detach the pending pull stays with the session (the broker is not asked twice),
        // but whatever it brings while no stream is attached goes straight back (#detach).
        if (r === DETACHED) return;
        this.#pendingNext = undefined;
        if (r.done) {
          this.#endOfSubscription(a);
          return;
        }
        first = r.value;
      }
      // Whatever else is ready right now goes in the same write: a pull that would have to wait
      // ends the batch, so batching never delays a message. A batch stays within maxBatchBytes
      // unless its one message is larger.
      const batch: Delivery[] = [first];
      let bytes = messageBytes(first.message);
      const sizes = [bytes];
      let ended = false;
      const most = Math.min(room, sink.maxBatch);
      const ready = this.subscription.takeReady?.bind(this.subscription);
      while (batch.length < most && bytes < sink.maxBatchBytes) {
        let d: Delivery | undefined;
        if (ready) {
          d = ready(1)[0];
          if (d === undefined) break;
        } else {
          const next = this.#iterator.next();
          const more = await Promise.race([next, notReady]);
          if (more === NOT_READY) {
            this.#pendingNext = next;
            break;
          }
          if (more.done) {
            ended = true;
            break;
          }
          d = more.value;
        }
        const size = messageBytes(d.message);
        if (bytes + size > sink.maxBatchBytes) {
          this.#carry = d;
          break;
        }
        batch.push(d);
        sizes.push(size);
        bytes += size;
      }
      if (this.#attachment !== a || this.#closed) {
        for (const delivery of batch) this.#release(delivery, false);
        return;
      }
      const entries: InFlight[] = [];
      for (let i = 0; i < batch.length; i++) {
        const delivery = batch[i] as Delivery;
        const e = new InFlight(randomUUID(), delivery.message, delivery, sizes[i] as number);
        this.inFlight.set(e.receiptHandle, e);
        entries.push(e);
      }
      if (tracingOn()) this.#traceReceive(entries, sink.rpc);
      // The stall clock runs only while something waits to be written.
      if (a.unflushedCount === 0) a.progressAt = Date.now();
      a.unflushedBytes += bytes;
      a.unflushedCount += batch.length;
      counts.messagesDelivered += batch.length;
      sink.write(entries, () => {
        const now = Date.now();
        a.unflushedBytes -= bytes;
        a.unflushedCount -= entries.length;
        a.progressAt = now;
        // Settled or released entries are out of the map already: they need no clock.
        for (const e of entries) {
          e.flushed = true;
          if (e.settling === undefined && this.inFlight.get(e.receiptHandle) === e)
            this.#clock().hold(e, now);
        }
        this.#room.notifyAll();
      });
      if (ended) {
        this.#endOfSubscription(a);
        return;
      }
    }
  }

  /** One receive span per delivery, linked to the context the message was created in. */
  #traceReceive(entries: readonly InFlight[], rpc: string): void {
    const system = messagingSystem(this.input.ref.broker.kind);
    for (const e of entries) {
      const link = messageLink(e.message.properties);
      startMessagingSpan({
        operation: 'receive',
        operationName: rpc,
        destination: this.input.topic,
        system,
        group: this.input.group,
        messageId: e.message.id,
        links: link ? [link] : undefined,
      }).end();
    }
  }

  /**
   * One settle span for the acks or nacks of one call or frame (messaging.batch.message_count
   * when several), linked to each message's creation context; undefined when tracing is off.
   */
  settleSpan(rpc: string, receiptHandles: readonly string[], parent: Context | undefined): Span | undefined {
    if (!tracingOn()) return undefined;
    const links: Link[] = [];
    for (const rh of receiptHandles) {
      const link = messageLink(this.inFlight.get(rh)?.message.properties);
      if (link) links.push(link);
    }
    return startMessagingSpan({
      operation: 'settle',
      operationName: rpc,
      destination: this.input.topic,
      system: messagingSystem(this.input.ref.broker.kind),
      group: this.input.group,
      parent,
      links,
      attributes: receiptHandles.length > 1 ? { [ATTR.batchCount]: receiptHandles.length } : undefined,
    });
  }

  #endOfSubscription(a: Attachment): void {
    if (this.#attachment !== a) return;
    this.#detach(a);
    a.sink.end(new MqError('UNAVAILABLE', 'the broker subscription ended; reconnect to resume'));
  }

  #detach(a: Attachment): void {
    if (this.#attachment !== a) return;
    this.#attachment = undefined;
    this.detachedAt = Date.now();
    a.detach();
    this.registry.streamEnded(this);
    // Every delivery the stream held goes back to the broker at once; one the client never
    // received (still unwritten) does not count as a delivery attempt.
    this.#ledger?.endAll('closed');
    for (const e of this.inFlight.values()) {
      if (!e.settling) this.#release(e, e.flushed);
    }
    this.inFlight.clear();
    // Nothing stays with a session that has no stream: the group's other members may take it.
    const carry = this.#carry;
    this.#carry = undefined;
    if (carry) this.#release(carry, false);
    this.#returnWhatThePendingPullBrings();
    this.#room.notifyAll();
  }

  /**
   * The pull left pending by a stream that ended resolves later, often with a delivery released
   * by that very stream. While no stream is attached it goes back to the group at once,
   * uncounted (no client saw it), instead of waiting with a session nobody reads.
   */
  #returnWhatThePendingPullBrings(): void {
    const pending = this.#pendingNext;
    if (!pending) return;
    pending.then(
      (r) => {
        if (this.#pendingNext !== pending || this.#attachment !== undefined) return;
        this.#pendingNext = undefined;
        if (!r.done) this.#release(r.value, false);
      },
      () => {
        if (this.#pendingNext === pending) this.#pendingNext = undefined;
      },
    );
  }

  #release(e: InFlight | Delivery, attempted: boolean): void {
    this.opts.metrics.counts.messagesRedelivered++;
    const delivery = 'delivery' in e ? e.delivery : e;
    delivery.nack({ delayMs: 0, uncounted: !attempted }).catch((err: unknown) => {
      // NOT_FOUND means the broker already took it back (its own visibility timeout): fine.
      if (!(err instanceof MqError && err.code === 'NOT_FOUND')) {
        this.opts.log.warn(
          { err },
          'could not release a delivery; the broker redelivers it after its ack timeout',
        );
      }
    });
  }
}

export class ConsumerRegistry {
  readonly #sessions: OwnedMap<Session>;
  readonly #quota: Quota;
  readonly #streams: Quota;
  readonly #opts: ConsumerRegistryOptions;
  /** The ack clocks of every session's deliveries: one timer for all of them. */
  readonly #scheduler: Scheduler;
  /** Sessions with a stream attached (the quota counts Publish streams too). */
  #attached = 0;
  #closed = false;

  constructor(options: ConsumerRegistryOptions) {
    this.#opts = options;
    this.#scheduler = new Scheduler({
      onError: (err) => options.log.error({ err }, 'releasing a delivery past ACK_TIMEOUT failed'),
    });
    this.#sessions = new OwnedMap('consumer', notFound, options.audit);
    this.#quota = new Quota(
      'consumer sessions',
      { limit: options.maxPerCaller, setting: 'MAX_CONSUMERS_PER_CALLER' },
      { limit: options.maxSessions, setting: 'MAX_SESSIONS' },
      options.audit,
    );
    this.#streams = new Quota(
      'streams',
      undefined,
      { limit: options.maxStreams, setting: 'MAX_STREAMS' },
      options.audit,
    );
  }

  get sessionCount(): number {
    return this.#sessions.size;
  }

  /** Consumer streams attached to sessions (ReceiveMessages and Subscribe). */
  get streamCount(): number {
    return this.#attached;
  }

  get inFlightCount(): number {
    let n = 0;
    for (const s of this.#sessions.values()) n += s.inFlight.size;
    return n;
  }

  /**
   * Read-only, for the status page: per owner (principal name, '' when auth is off) its sessions,
   * the streams attached to them and their unacked deliveries.
   */
  sessionsByOwner(): Map<string, { sessions: number; streams: number; inFlight: number }> {
    const out = new Map<string, { sessions: number; streams: number; inFlight: number }>();
    for (const s of this.#sessions.values()) {
      let e = out.get(s.owner);
      if (!e) {
        e = { sessions: 0, streams: 0, inFlight: 0 };
        out.set(s.owner, e);
      }
      e.sessions++;
      if (s.attached) e.streams++;
      e.inFlight += s.inFlight.size;
    }
    return out;
  }

  async create(input: SessionInput): Promise<Session> {
    if (this.#closed)
      throw new MqError('UNAVAILABLE', 'the gateway is shutting down; retry against another instance');
    const { caller } = input;
    this.#quota.acquire(caller.quotaKey, caller.label, 'release some with CleanupConsumer');
    let subscription: Subscription;
    try {
      subscription = await input.ref.broker.subscribe({
        topic: input.topic,
        group: input.group,
        filter: input.tagExpression,
        start: input.start,
        maxInFlight: this.#opts.bufferSize,
        // The gateway releases unacked deliveries itself at ACK_TIMEOUT (sweep); the broker's own
        // timeout is a safety net for a gateway that dies, so it must fire later or the two race
        // and the gateway holds a stale delivery that the broker already handed out again. A
        // delivery waiting to be written is not on the gateway's clock yet, so the broker's
        // allows for the stall timeout too.
        ackTimeoutMs:
          this.#opts.ackTimeoutMs +
          this.#opts.streamStallTimeoutMs +
          Math.max(1000, this.#opts.ackTimeoutMs / 10),
        // Keyed (sharding-key) messages keep their order across the group's sessions.
        ordered: true,
        credentials: caller.accessKeyId
          ? { accessKeyId: caller.accessKeyId, accessKeySecret: input.accessKeySecret }
          : undefined,
      });
    } catch (err) {
      this.#quota.release(caller.quotaKey);
      throw err;
    }
    const session = new Session(caller, input, subscription, this, this.#opts, this.#scheduler);
    this.#sessions.add(session);
    return session;
  }

  /** The session `id` names, if `owner` created it; NOT_FOUND otherwise. */
  get(id: string, owner: string): Session {
    return this.#sessions.get(id, owner);
  }

  /** Attaches a stream to the owner's session; one stream per session, MAX_STREAMS in all. */
  attach(id: string, owner: string, sink: DeliverySink): { detach: () => void; done: Promise<void> } {
    const s = this.get(id, owner);
    if (s.attached) return s.attach(sink); // refuses with FAILED_PRECONDITION
    this.#streams.acquire('', s.caller.label, 'end a stream first');
    try {
      const attached = s.attach(sink);
      this.#attached++;
      return attached;
    } catch (err) {
      this.#streams.release('');
      throw err;
    }
  }

  /** Called by a session when its stream ends. */
  streamEnded(_s: Session): void {
    this.#attached--;
    this.#streams.release('');
  }

  /** Counts a stream that is not a session's (a Publish stream) against MAX_STREAMS. */
  acquireStream(label: string): void {
    this.#streams.acquire('', label, 'end a stream first');
  }

  releaseStream(): void {
    this.#streams.release('');
  }

  /** Closes the owner's session on its request (not counted as a leak). */
  async cleanup(id: string, owner: string): Promise<boolean> {
    const s = this.#sessions.find(id, owner);
    if (!s) return false;
    await this.#close(s);
    return true;
  }

  /** Closes the caller's own sessions of a group (and topic when given); never another caller's. */
  async cleanupByGroup(caller: Caller, group: string, topic: string): Promise<number> {
    const mine = [...this.#sessions.values()].filter(
      (s) =>
        s.caller.identity === caller.identity &&
        s.input.group === group &&
        (topic === '' || s.input.topic === topic),
    );
    await closeAll(mine.map((s) => () => this.#close(s)));
    return mine.length;
  }

  /** Releases deliveries past the ack timeout, ends stalled streams, closes abandoned sessions. */
  async sweep(now = Date.now()): Promise<void> {
    const steps: Array<() => Promise<void>> = [];
    for (const s of this.#sessions.values()) {
      if (!s.sweep(now)) continue;
      this.#opts.metrics.counts.consumerLeakDetections++;
      this.#opts.log.warn(
        { consumerId: s.id, topic: s.input.topic, group: s.input.group, owner: s.owner },
        'consumer session without a stream for CONSUMER_CLEANUP_TIMEOUT: closed (leak detection)',
      );
      steps.push(() => this.#close(s));
    }
    await closeAll(steps);
  }

  /** Ends every stream (releasing its unacked deliveries) so shutdown can proceed. */
  endStreams(error: MqError): void {
    for (const s of this.#sessions.values()) s.endStream(error);
  }

  async close(): Promise<void> {
    this.#closed = true;
    const all = [...this.#sessions.values()];
    await closeAll(all.map((s) => () => this.#close(s)));
    this.#scheduler.close();
  }

  async #close(s: Session): Promise<void> {
    if (!this.#sessions.delete(s)) return;
    this.#quota.release(s.caller.quotaKey);
    await s.close();
  }
}
