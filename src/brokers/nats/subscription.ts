import type { Consumer, ConsumerMessages, JsMsg } from '@nats-io/jetstream';
import { BROKER_RETRY } from '../../core/backoff.js';
import { UnavailableError } from '../../core/errors.js';
import { AsyncQueue, abortable, Notifier } from '../../core/lifecycle.js';
import type { Message } from '../../core/message.js';
import { type ScheduledTask, Scheduler } from '../../core/scheduler.js';
import type { TagFilter } from '../../core/tags.js';
import type { BrokerLog, Delivery, NackOptions, Subscription } from '../broker.js';
import { deliveryIterator } from '../delivery/iterator.js';
import { KeyedHold } from '../delivery/keyed.js';
import { Ledger, LedgerEntry } from '../delivery/ledger.js';
import { runPullLoop } from '../delivery/pull-loop.js';
import { text } from './errors.js';
import { toMessage } from './message.js';

/** How long one pull request waits at the server before it is renewed. */
const FETCH_EXPIRES_MS = 10_000;

/** What a subscription needs from its broker; kept narrow so the pull loop is testable. */
export interface NatsSubscriptionDeps {
  topic: string;
  group: string;
  prefix: string;
  maxInFlight: number;
  ackTimeoutMs: number;
  ordered: boolean;
  /** Set when the server cannot filter the expression (a||b on NATS 2.9): filter here. */
  localFilter: TagFilter | undefined;
  /** The bound durable consumer; `recover` re-creates it (and its stream) if it vanished. */
  consumer: Consumer;
  recover(): Promise<Consumer>;
  connection: ConnectionState;
  log: BrokerLog | undefined;
  onClosed(): void;
}

/** The broker's view of its connection; it calls connectionChanged() on every change. */
export interface ConnectionState {
  readonly connected: boolean;
}

/** queued: for the iterator; held: behind its key's head; out: handed out (the ledger holds it). */
type State = 'queued' | 'held' | 'out' | 'released';

class NatsDelivery extends LedgerEntry implements Delivery {
  state: State = 'queued';
  /** When it became visible to the iterator (queued), for the hand-out keep-alive below. */
  queuedAt = 0;
  /** "In progress" renewals while it waits here (queued or held). */
  task: ScheduledTask | undefined;

  constructor(
    readonly owner: NatsSubscription,
    /** Replaced when the server redelivers the message before it was handed out. */
    public raw: JsMsg,
    public message: Message,
  ) {
    super();
  }

  ack(): Promise<void> {
    return this.owner.settle(this, 'ack', 0);
  }

  nack(options?: NackOptions): Promise<void> {
    const delayMs = options?.delayMs ?? 0;
    return this.owner.settle(this, 'nak', Number.isFinite(delayMs) && delayMs > 0 ? Math.ceil(delayMs) : 0);
  }
}

/**
 * One member of a consumer group: a pull loop on the group's durable consumer.
 *
 * Flow control: every message pulled is counted until it is settled (queued for the iterator,
 * held behind its key, or handed out), and a pull asks for at most `maxInFlight - that count`
 * messages, with one pull outstanding at a time. So the subscription never holds more than
 * maxInFlight messages and never buffers without bound.
 *
 * Ack timeout: the server redelivers after ack_wait (= ackTimeoutMs). The subscription mirrors
 * that for handed-out deliveries (after ackTimeoutMs an unsettled delivery expires: its ack
 * rejects with NOT_FOUND and it no longer counts in flight), and sends "in progress" for
 * messages it has pulled but not handed out yet, so waiting in the subscription (queued, or held
 * behind an earlier message of the same key) does not eat into the caller's ack timeout.
 */
export class NatsSubscription implements Subscription {
  readonly topic: string;
  readonly group: string;
  readonly #deps: NatsSubscriptionDeps;
  readonly #queue = new AsyncQueue<NatsDelivery>();
  /** Everything pulled and not settled: bounded by maxInFlight. */
  readonly #unsettled = new Set<NatsDelivery>();
  /** Unsettled deliveries by stream sequence, to recognise the server's redeliveries. */
  readonly #bySeq = new Map<number, NatsDelivery>();
  /**
   * ordered: each key's head and the deliveries waiting behind it; a nacked or expired head is
   * awaited by its stream sequence, so its redelivery comes before the key's later messages.
   */
  readonly #keys: KeyedHold<NatsDelivery>;
  readonly #wake = new Notifier();
  readonly #abort = new AbortController();
  readonly #scheduler: Scheduler;
  /** Handed out and unsettled, with their ack clock. */
  readonly #ledger: Ledger<NatsDelivery>;
  #consumer: Consumer | undefined;
  #fetch: ConsumerMessages | undefined;
  #closing = false;
  #closePromise: Promise<void> | undefined;
  readonly #loop: Promise<void>;

  constructor(deps: NatsSubscriptionDeps) {
    this.#deps = deps;
    this.topic = deps.topic;
    this.group = deps.group;
    this.#consumer = deps.consumer;
    this.#scheduler = new Scheduler({
      onError: (err) =>
        deps.log?.error({ err, topic: deps.topic, group: deps.group }, 'nats subscription timer failed'),
    });
    this.#keys = new KeyedHold(this.#scheduler);
    this.#ledger = new Ledger({
      scheduler: this.#scheduler,
      ackTimeoutMs: deps.ackTimeoutMs,
      topic: deps.topic,
      group: deps.group,
      broker: 'NATS JetStream',
      // The server redelivers after its own ack_wait (the same timeout): keep the key for it.
      expired: (d) => this.#forget(d, deps.ackTimeoutMs),
    });
    this.#loop = this.#run();
  }

  /** @internal called by the broker on every disconnect and reconnect. */
  connectionChanged(): void {
    // A pull sent before a disconnect is gone with the old server connection (or, on the same
    // server, would be re-sent by the client on top of ours): end it and pull afresh.
    if (!this.#deps.connection.connected) void this.#fetch?.close();
    this.#wake.notifyAll();
  }

  get inFlight(): number {
    return this.#ledger.size;
  }

  /** Pulled and not settled (queued + held + handed out); for tests and metrics. */
  get pending(): number {
    return this.#unsettled.size;
  }

  async #run(): Promise<void> {
    // Pull only once a quarter of the window is free (or nothing is in flight): acks arrive one
    // by one, and a pull per ack is a request and an iterator per message.
    const lowWater = Math.max(1, Math.floor(this.#deps.maxInFlight / 4));
    await runPullLoop<number>({
      signal: this.#abort.signal,
      wake: this.#wake,
      backoff: BROKER_RETRY,
      log: this.#deps.log,
      context: { topic: this.topic, group: this.group },
      what: 'nats pull',
      ready: () => {
        const room = this.#deps.maxInFlight - this.#unsettled.size;
        if (!this.#deps.connection.connected || room <= 0 || (room < lowWater && this.#unsettled.size > 0)) {
          return undefined;
        }
        return room;
      },
      pull: async (room, signal) => {
        try {
          if (this.#consumer === undefined) {
            this.#consumer = await abortable(this.#deps.recover(), signal, 'subscription');
          }
          const batch = await abortable(
            this.#consumer.fetch({ max_messages: room, expires: FETCH_EXPIRES_MS }),
            signal,
            'subscription',
          );
          this.#fetch = batch;
          if (this.#closing || !this.#deps.connection.connected) void batch.close();
          for await (const m of batch) this.#accept(m);
        } finally {
          this.#fetch = undefined;
        }
      },
      failed: () => {
        // The consumer or its stream may be gone (deleted, or a memory-storage server
        // restarted): look it up again before the next pull.
        this.#consumer = undefined;
        return 'retry';
      },
    });
  }

  #accept(m: JsMsg): void {
    if (this.#closing) {
      safely(() => m.nak());
      return;
    }
    const message = toMessage(m, this.topic, this.#deps.prefix);
    const filter = this.#deps.localFilter;
    if (filter !== undefined && !filter.matches(message.tag)) {
      // The consumer's filter is the whole topic (NATS 2.9 has one filter subject per
      // consumer); a tag this group does not want is settled here so it is never redelivered.
      safely(() => m.ack());
      return;
    }
    const seq = m.info.streamSequence;
    const previous = this.#bySeq.get(seq);
    if (previous !== undefined && (previous.state === 'queued' || previous.state === 'held')) {
      // The server redelivered a message we still hold unseen: keep its place, take the new handle.
      previous.raw = m;
      previous.message = message;
      return;
    }
    const d = new NatsDelivery(this, m, message);
    this.#unsettled.add(d);
    this.#bySeq.set(seq, d);
    if (previous !== undefined && previous.state === 'out') {
      // The server's ack timer fired just before ours: the handed-out delivery is void now, and
      // the redelivery takes its place (for ordered, as the head of its key). The server's timer
      // is the same ack timeout, so that is what the late ack is told.
      this.#ledger.end(previous, 'expired');
      this.#unsettled.delete(previous);
      const key = message.key;
      if (this.#deps.ordered && key !== undefined && this.#keys.head(key) === previous) {
        this.#keys.replaceHead(key, d);
      }
      this.#enqueue(d);
      return;
    }
    const key = message.key;
    if (this.#deps.ordered && key !== undefined) {
      // The retried head of its key is back: it goes first; the key's later messages still wait.
      if (this.#keys.claim(key, seq, d)) {
        this.#enqueue(d);
        return;
      }
      if (!this.#keys.admit(key, d)) {
        d.state = 'held';
        this.#keepAlive(d);
        return;
      }
    }
    this.#enqueue(d);
  }

  #enqueue(d: NatsDelivery): void {
    d.state = 'queued';
    d.queuedAt = Date.now();
    if (d.task === undefined) this.#keepAlive(d);
    this.#queue.push(d);
  }

  /** While pulled but not handed out, tell the server the message is being worked on. */
  #keepAlive(d: NatsDelivery): void {
    d.task = this.#scheduler.after(Math.max(50, Math.floor(this.#deps.ackTimeoutMs / 2)), () => {
      if (d.state !== 'queued' && d.state !== 'held') return;
      safely(() => d.raw.working());
      this.#keepAlive(d);
    });
  }

  #handOut(d: NatsDelivery): void {
    d.task?.cancel();
    d.task = undefined;
    d.state = 'out';
    // Restart the server's ack timer at hand-out when the message waited here noticeably,
    // so the caller gets its full ack timeout and the server's clock matches ours.
    if (Date.now() - d.queuedAt > Math.min(1000, this.#deps.ackTimeoutMs / 10)) safely(() => d.raw.working());
    this.#ledger.hold(d);
  }

  /**
   * Drops a delivery the ledger no longer holds (settled or expired). With `awaitRedeliveryMs` (a
   * nack or an expiry in an ordered subscription) the key stays blocked until that message comes
   * back, so a retry never lets the key's later messages overtake it.
   */
  #forget(d: NatsDelivery, awaitRedeliveryMs?: number): void {
    this.#unsettled.delete(d);
    const seq = d.raw.info.streamSequence;
    if (this.#bySeq.get(seq) === d) this.#bySeq.delete(seq);
    const key = d.message.key;
    if (this.#deps.ordered && key !== undefined && !this.#closing) {
      // Bounded: if the redelivery goes to another member instead, the key moves on at the deadline.
      if (awaitRedeliveryMs !== undefined && this.#keys.has(key)) {
        this.#keys.awaitRedelivery(key, seq, awaitRedeliveryMs + this.#deps.ackTimeoutMs, (next) => {
          if (!this.#closing) this.#enqueue(next);
        });
      } else {
        const next = this.#keys.advance(key);
        if (next !== undefined) this.#enqueue(next);
      }
    }
    this.#wake.notifyAll();
  }

  /** @internal called by NatsDelivery. */
  async settle(d: NatsDelivery, how: 'ack' | 'nak', delayMs: number): Promise<void> {
    if (!this.#ledger.settle(d, how === 'ack' ? 'ack' : 'nack')) return;
    this.#ledger.end(d, how === 'ack' ? 'acked' : 'nacked');
    this.#forget(d, how === 'nak' ? delayMs : undefined);
    try {
      if (how === 'ack') d.raw.ack();
      else d.raw.nak(delayMs);
    } catch (err) {
      throw new UnavailableError(
        `could not ${how} message ${d.message.id} on topic "${this.topic}": ${text(err)}; NATS JetStream will redeliver it after the ack timeout`,
        { cause: err },
      );
    }
  }

  [Symbol.asyncIterator](): AsyncIterator<Delivery, undefined> {
    return deliveryIterator(async () => {
      for (;;) {
        const r = await this.#queue.next();
        if (r.done) return r;
        // Released by close() between push and pop: skip it.
        if (r.value.state !== 'queued') continue;
        this.#handOut(r.value);
        return r;
      }
    }, this.close.bind(this));
  }

  close(): Promise<void> {
    this.#closePromise ??= this.#close();
    return this.#closePromise;
  }

  async #close(): Promise<void> {
    this.#closing = true;
    this.#abort.abort();
    try {
      await this.#fetch?.close();
    } catch {
      // The fetch ends either way; its error is the pull loop's business.
    }
    await this.#loop;
    // Give every message back at once rather than after ack_wait.
    this.#ledger.close();
    this.#ledger.endAll('closed');
    for (const d of this.#unsettled) {
      d.task?.cancel();
      d.task = undefined;
      d.state = 'released';
      safely(() => d.raw.nak());
    }
    this.#unsettled.clear();
    this.#bySeq.clear();
    this.#keys.drain();
    this.#queue.drain();
    this.#queue.end();
    this.#scheduler.close();
    this.#deps.onClosed();
  }

  /** @internal for error messages and tests. */
  get closed(): boolean {
    return this.#closing;
  }
}

function safely(fn: () => void): void {
  try {
    fn();
  } catch {
    // The connection is closed: the server redelivers after ack_wait.
  }
}
