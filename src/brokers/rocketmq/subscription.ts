/**
 * Consuming with the library's SimpleConsumer rather than its PushConsumer: a PushConsumer pulls
 * on its own schedule into its own cache and invokes a listener, while the broker contract says
 * "pull only while the downstream has room". A SimpleConsumer receives exactly the batch we ask
 * for (sized by the free room), keeps each message invisible for ackTimeoutMs, and settles with
 * ack / changeInvisibleDuration, which is the contract's ack / nack one to one.
 *
 * FIFO (ordered) consumption. A FIFO group's receive returns a batch that can hold several
 * messages of one message group; handing them out together lets a caller finish the second before
 * the first, and a nack sent to the broker (changeInvisibleDuration) lets the group's next message,
 * already received, overtake the retried one. So, as RocketMQ's own FIFO push consumer does:
 * - one message per message group is handed out at a time; the group's later messages wait here
 *   (invisible, their invisible time renewed) until it is settled;
 * - a nack or an ack timeout redelivers the message here, as its group's head, with reconsumeCount
 *   + 1, after the nack's delay; the broker is told only to keep it invisible meanwhile;
 * - after LOCAL_RETRY_LIMIT reconsumes a message goes back to the broker (its retry policy and
 *   dead-letter queue take over) and its group moves on.
 * A message the broker redelivers while we hold it (its invisible time ran out, e.g. during a
 * proxy outage) keeps its place, with the new receipt handle.
 */
import { FilterExpression, type MessageView } from 'rocketmq-client-nodejs';
import { BROKER_RETRY } from '../../core/backoff.js';
import { errorMessage } from '../../core/errors.js';
import { AsyncQueue, closeAll, closeOnce, Notifier, withTimeout } from '../../core/lifecycle.js';
import type { Message } from '../../core/message.js';
import { type ScheduledTask, Scheduler } from '../../core/scheduler.js';
import { parseTagExpression } from '../../core/tags.js';
import type { BrokerLog, Credentials, Delivery, NackOptions, Subscription } from '../broker.js';
import { deliveryIterator } from '../delivery/iterator.js';
import { KeyedHold } from '../delivery/keyed.js';
import { type Ending, Ledger, LedgerEntry } from '../delivery/ledger.js';
import { runPullLoop } from '../delivery/pull-loop.js';
import type { RocketMqUrl } from './config.js';
import {
  type ErrorContext,
  GuardedSimpleConsumer,
  LibraryGuard,
  libraryLogger,
  toRocketMqError,
} from './library.js';
import { SHARDING_KEY_PROPERTY } from './producer.js';

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
  /** FIFO messages: one in flight per message group, and a nack retried here, ahead of the group. */
  ordered: boolean;
  credentials: Credentials | undefined;
  log: BrokerLog | undefined;
  onClosed: (sub: RocketMqSubscription) => void;
}

/**
 * Reconsumes done here before a FIFO message goes back to the broker's retry policy: RocketMQ's
 * default max reconsume times for a group, so a poison message is dead-lettered by the broker as
 * it would be without the gateway.
 */
const LOCAL_RETRY_LIMIT = 16;
/** A FIFO head whose ack failed waits one invisible time plus this for the broker's redelivery. */
const AWAIT_REDELIVERY_MARGIN_MS = 10_000;

/** Redeliveries so far: the broker's (its delivery attempts after the first) plus the adapter's. */
function reconsumeCount(view: MessageView, localAttempts: number): number {
  return Math.max(0, (view.deliveryAttempt ?? 1) - 1) + localAttempts;
}

function toMessage(view: MessageView, localAttempts: number): Message {
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
    reconsumeCount: reconsumeCount(view, localAttempts),
  };
}

/**
 * One received, unsettled message. queued: waiting in the hand-out queue; held: behind its FIFO
 * group's head; out: handed out; settling: ack or nack under way; waiting: a FIFO retry waiting
 * for its nack delay; awaiting: a FIFO head whose ack or release failed (a proxy outage), kept
 * as its group's head until the broker redelivers it or a deadline passes.
 */
type EntryState = 'queued' | 'held' | 'out' | 'settling' | 'waiting' | 'awaiting';

class Entry {
  view: MessageView;
  readonly id: string;
  /** The FIFO message group, set only for an ordered subscription. */
  readonly key: string | undefined;
  state: EntryState = 'queued';
  localAttempts = 0;
  /** The delivery handed out now, while the ledger holds it. */
  current: RocketMqDelivery | undefined;
  /** Invisible-time renewal (while it waits here) or awaiting deadline: one at a time. */
  task: ScheduledTask | undefined;
  /** waiting: the end of the nack delay. */
  retry: ScheduledTask | undefined;
  retryAt = 0;
  /** A renewal in flight: a settle waits for it, so it uses the receipt handle the renewal returns. */
  renewing: Promise<void> | undefined;
  /** When the broker last (re)started the message's invisible time. */
  since = Date.now();
  /** The broker redelivered the message while a settle was under way. */
  redelivered: MessageView | undefined;

  constructor(view: MessageView, ordered: boolean) {
    this.view = view;
    this.id = view.messageId;
    this.key = ordered ? view.messageGroup || undefined : undefined;
  }
}

class RocketMqDelivery extends LedgerEntry implements Delivery {
  readonly message: Message;
  readonly entry: Entry;
  readonly #sub: RocketMqSubscription;
  #settling: Promise<void> | undefined;

  constructor(entry: Entry, sub: RocketMqSubscription) {
    super();
    this.entry = entry;
    this.message = toMessage(entry.view, entry.localAttempts);
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
  readonly #queue = new AsyncQueue<Entry>();
  /** Every received, unsettled message by id; its size bounds what is received. */
  readonly #entries = new Map<string, Entry>();
  /** ordered: FIFO group → its head (queued, out, waiting or awaiting) and the messages held behind it. */
  readonly #keys: KeyedHold<Entry>;
  readonly #settles = new Set<Promise<unknown>>();
  readonly #room = new Notifier();
  readonly #abort = new AbortController();
  #orphans: MessageView[] = [];
  #loop: Promise<void> = Promise.resolve();
  #closed = false;
  #received = false;
  #minInvisibleMs = DEFAULT_MIN_INVISIBLE_MS;
  readonly #scheduler = new Scheduler({ onError: () => {} });
  /**
   * Handed out and unsettled, with the ack clock: also when it equals the broker's invisible
   * time, as the broker's redelivery reaches us only while there is room to receive, and a lost
   * delivery must not hold its slot (and its FIFO group) forever.
   */
  readonly #ledger: Ledger<RocketMqDelivery>;

  private constructor(options: RocketMqSubscriptionOptions) {
    this.#options = options;
    this.#keys = new KeyedHold(this.#scheduler);
    this.#ledger = new Ledger({
      scheduler: this.#scheduler,
      ackTimeoutMs: options.ackTimeoutMs,
      topic: options.topic,
      group: options.group,
      broker: 'RocketMQ',
      expired: (d) => this.#expire(d.entry, d),
    });
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
    return this.#ledger.size;
  }

  /** Received and not settled (queued, held back, handed out, waiting to retry); for tests. */
  get pending(): number {
    return this.#entries.size;
  }

  /** The invisible time asked of the broker: the ack timeout, at least the proxy's minimum. */
  get #invisibleMs(): number {
    return Math.max(this.#options.ackTimeoutMs, this.#minInvisibleMs);
  }

  async #run(): Promise<void> {
    const { maxInFlight, log } = this.#options;
    const end = await runPullLoop<number>({
      signal: this.#abort.signal,
      wake: this.#room,
      backoff: BROKER_RETRY,
      log,
      context: { topic: this.topic, group: this.group },
      what: 'rocketmq receive',
      ready: () => {
        const room = maxInFlight - this.#entries.size;
        return room > 0 ? Math.min(room, MAX_BATCH) : undefined;
      },
      pull: async (n, signal) => {
        const views = await this.#consumer.receiveBatch(
          this.topic,
          this.#filter,
          n,
          this.#invisibleMs,
          LONG_POLL_MS,
          signal,
        );
        this.#received = true;
        for (const view of views) this.#accept(view);
      },
      failed: (err) => {
        const min = /invisibleTime is too small\. min is (\d+)/.exec(errorMessage(err))?.[1];
        if (min !== undefined && Number(min) > this.#minInvisibleMs) {
          this.#minInvisibleMs = Number(min);
          return 'again';
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
        return permanent && !this.#received ? { end: mapped } : 'retry';
      },
    });
    if (end !== undefined) this.#queue.end(end);
  }

  #accept(view: MessageView): void {
    if (this.#closed || this.#queue.ended) {
      this.#orphans.push(view);
      return;
    }
    const known = this.#entries.get(view.messageId);
    if (known !== undefined) {
      // The broker redelivered a message we still hold: its invisible time ran out (a slow
      // caller, or renewals lost in a proxy outage). The new receipt handle is the valid one.
      if (known.state === 'settling') {
        known.redelivered = view;
        return;
      }
      known.view = view;
      known.since = Date.now();
      if (known.state === 'out') {
        // The caller's delivery is void (its ack would fail); this one takes its place, first in
        // its FIFO group.
        this.#void(known, 'redelivered');
        this.#enqueue(known);
      } else if (known.state === 'awaiting') {
        this.#enqueue(known);
      }
      return;
    }
    const entry = new Entry(view, this.#options.ordered);
    this.#entries.set(entry.id, entry);
    if (entry.key !== undefined && !this.#keys.admit(entry.key, entry)) {
      entry.state = 'held';
      this.#keepAlive(entry);
      return;
    }
    this.#enqueue(entry);
  }

  #enqueue(entry: Entry): void {
    entry.state = 'queued';
    this.#keepAlive(entry);
    this.#queue.push(entry);
  }

  /** While a message waits here, renew its invisible time before the broker redelivers it. */
  #keepAlive(entry: Entry, dueMs?: number): void {
    entry.task?.cancel();
    const invisibleMs = this.#invisibleMs;
    const due = dueMs ?? Math.max(0, entry.since + invisibleMs / 2 - Date.now());
    entry.task = this.#scheduler.after(due, () => {
      if (entry.state !== 'queued' && entry.state !== 'held' && entry.state !== 'waiting') return;
      const head = entry.key === undefined ? undefined : this.#keys.head(entry.key);
      if (entry.state === 'held' && head?.state === 'awaiting') {
        // Its group's head awaits the broker's redelivery, which a FIFO queue gives only once
        // every unacked message of the batch is visible again: let this one lapse too, and
        // look again later (its redelivery resets `since`).
        this.#keepAlive(entry, invisibleMs / 2);
        return;
      }
      void this.#renew(entry, invisibleMs);
      this.#keepAlive(entry);
    });
  }

  /** Restarts the message's invisible time at `ms`; the library stores the new receipt handle. */
  #renew(entry: Entry, ms: number): Promise<void> {
    const previous = entry.renewing;
    entry.since = Date.now();
    const work = (async () => {
      await previous;
      try {
        // Read after the previous renewal: a redelivery may have brought a newer receipt handle.
        await this.#consumer.changeInvisibleDuration(entry.view, ms);
      } catch (err) {
        // The proxy may be restarting: the broker then redelivers the message, and #accept
        // gives its entry the new receipt handle.
        this.#options.log?.debug(
          { topic: this.topic, group: this.group, id: entry.id, err: String(err) },
          'rocketmq: renewing the invisible time of a held message failed',
        );
      }
    })();
    entry.renewing = work;
    this.#track(work);
    void work.finally(() => {
      if (entry.renewing === work) entry.renewing = undefined;
    });
    return work;
  }

  /** Hands an entry out as a new delivery. */
  #handOut(entry: Entry): RocketMqDelivery {
    entry.task?.cancel();
    entry.task = undefined;
    entry.state = 'out';
    const delivery = new RocketMqDelivery(entry, this);
    entry.current = delivery;
    const { ackTimeoutMs } = this.#options;
    // A message that waited here long enough to eat into the caller's ack timeout gets a fresh
    // invisible time, so the broker does not redeliver it while the caller still may ack it. (Not
    // on every hand-out: that would double the RPCs of a busy subscription; callers such as the
    // gateway time out before the adapter does anyway.)
    const invisibleLeft = entry.since + this.#invisibleMs - Date.now();
    if (invisibleLeft < ackTimeoutMs * 0.9) void this.#renew(entry, this.#invisibleMs);
    this.#ledger.hold(delivery);
    return delivery;
  }

  /** Ends the hold of an entry's handed-out delivery: a late ack or nack is refused. */
  #void(entry: Entry, how: Ending): void {
    if (entry.current === undefined) return;
    this.#ledger.end(entry.current, how);
    entry.current = undefined;
  }

  /** The ledger's ack timeout passed for a handed-out delivery (it is no longer held). */
  #expire(entry: Entry, delivery: RocketMqDelivery): void {
    if (this.#closed || entry.current !== delivery) return;
    entry.current = undefined;
    if (this.#retriesHere(entry)) {
      entry.localAttempts++;
      this.#enqueue(entry);
      return;
    }
    entry.state = 'settling';
    const work = (async () => {
      await entry.renewing;
      await this.#consumer.changeInvisibleDuration(entry.view, RELEASE_INVISIBLE_MS);
    })().catch((err) => {
      this.#options.log?.debug(
        { topic: this.topic, group: this.group, err: String(err) },
        'rocketmq: releasing an expired delivery failed; it is redelivered when its invisible time ends',
      );
    });
    this.#track(work.then(() => this.#forget(entry)));
  }

  /** A FIFO message under the reconsume limit is retried here, ahead of its group. */
  #retriesHere(entry: Entry): boolean {
    return entry.key !== undefined && reconsumeCount(entry.view, entry.localAttempts) < LOCAL_RETRY_LIMIT;
  }

  #track(work: Promise<unknown>): void {
    this.#settles.add(work);
    work.then(
      () => this.#settles.delete(work),
      () => this.#settles.delete(work),
    );
  }

  /** Drops a settled entry; its FIFO group's next message is handed out. */
  #forget(entry: Entry): void {
    entry.task?.cancel();
    entry.task = undefined;
    entry.retry?.cancel();
    entry.retry = undefined;
    if (this.#entries.get(entry.id) === entry) this.#entries.delete(entry.id);
    const redelivered = entry.redelivered;
    entry.redelivered = undefined;
    if (entry.key !== undefined && !this.#closed) {
      const next = this.#keys.advance(entry.key);
      if (next !== undefined) this.#enqueue(next);
    }
    this.#room.notifyAll();
    // A redelivery that came in while an ack failed is a delivery of its own.
    if (redelivered !== undefined) this.#accept(redelivered);
  }

  /** ack when delayMs is undefined, otherwise nack with that delay. */
  async settle(delivery: RocketMqDelivery, delayMs: number | undefined): Promise<void> {
    const entry = delivery.entry;
    const action = delayMs === undefined ? 'acking' : 'nacking';
    // Refuses a delivery that is no longer held (a repeat is answered by RocketMqDelivery's
    // cached settle before it gets here).
    if (!this.#ledger.settle(delivery, delayMs === undefined ? 'ack' : 'nack')) return;
    this.#void(entry, delayMs === undefined ? 'acked' : 'nacked');
    if (delayMs !== undefined && this.#retriesHere(entry)) {
      // FIFO retry, here and first in its group. The broker only keeps it invisible meanwhile.
      entry.localAttempts++;
      entry.state = 'waiting';
      entry.retryAt = Date.now() + delayMs;
      entry.retry = this.#scheduler.after(delayMs, () => {
        entry.retry = undefined;
        if (entry.state === 'waiting' && !this.#closed) this.#enqueue(entry);
      });
      // Kept invisible meanwhile by the keep-alive, like a held message: one long renewal that
      // failed (a proxy outage) would let the broker redeliver it, and count an attempt, while
      // it is still ours.
      await this.#renew(entry, this.#invisibleMs);
      if (entry.state === 'waiting') this.#keepAlive(entry);
      return;
    }
    entry.state = 'settling';
    const work = (async () => {
      try {
        await entry.renewing;
        if (delayMs === undefined) await this.#consumer.ack(entry.view);
        else await this.#consumer.changeInvisibleDuration(entry.view, delayMs || RELEASE_INVISIBLE_MS);
      } catch (err) {
        this.#settleFailed(entry);
        throw toRocketMqError(err, this.#ctx(action));
      }
      // Settled; a redelivery seen meanwhile is a duplicate of an acked message.
      entry.redelivered = undefined;
      this.#forget(entry);
    })();
    this.#track(work);
    await work;
  }

  /**
   * The ack or release did not reach the broker (the proxy restarting), so the broker will
   * redeliver the message. A FIFO head keeps its group blocked until that redelivery arrives, so
   * the group's next message cannot overtake it; if none comes (the ack did land after all), the
   * group moves on after one invisible time plus a margin.
   */
  #settleFailed(entry: Entry): void {
    if (entry.key === undefined || this.#closed) {
      this.#forget(entry);
      return;
    }
    const redelivered = entry.redelivered;
    entry.redelivered = undefined;
    if (redelivered !== undefined) {
      entry.view = redelivered;
      entry.since = Date.now();
      this.#enqueue(entry);
      return;
    }
    entry.state = 'awaiting';
    // Its held followers stop being renewed now, so all of them are visible again, and the
    // broker re-serves the queue from this head, within one invisible time.
    entry.task = this.#scheduler.after(this.#invisibleMs + AWAIT_REDELIVERY_MARGIN_MS, () => {
      if (entry.state === 'awaiting') this.#forget(entry);
    });
  }

  [Symbol.asyncIterator](): AsyncIterator<Delivery, undefined> {
    return deliveryIterator(async () => {
      for (;;) {
        const result = await this.#queue.next();
        if (result.done) return result;
        const entry = result.value;
        if (entry.state !== 'queued' || this.#entries.get(entry.id) !== entry) continue;
        if (this.#closed) return { done: true, value: undefined };
        return { done: false, value: this.#handOut(entry) };
      }
    }, this.close);
  }

  readonly close = closeOnce(async () => {
    this.#closed = true;
    this.#abort.abort();
    // From now on an ack or nack is refused: #releaseAll gives every message back.
    this.#ledger.close();
    this.#ledger.endAll('closed');
    this.#scheduler.close();
    this.#queue.drain();
    this.#queue.end();
    this.#room.notifyAll();
    await closeAll([
      () => this.#loop,
      () => Promise.allSettled([...this.#settles]),
      () => this.#releaseAll(),
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
  async #releaseAll(): Promise<void> {
    const releases: Array<{ view: MessageView; invisibleMs: number }> = [];
    const now = Date.now();
    for (const entry of this.#entries.values()) {
      entry.current = undefined;
      entry.task = undefined;
      entry.retry = undefined;
      // A nacked message keeps what is left of its nack delay.
      const invisibleMs =
        entry.state === 'waiting'
          ? Math.max(RELEASE_INVISIBLE_MS, entry.retryAt - now)
          : RELEASE_INVISIBLE_MS;
      releases.push({ view: entry.redelivered ?? entry.view, invisibleMs });
    }
    for (const view of this.#orphans) releases.push({ view, invisibleMs: RELEASE_INVISIBLE_MS });
    this.#entries.clear();
    this.#keys.drain();
    this.#orphans = [];
    if (releases.length === 0) return;
    const results = await Promise.allSettled(
      releases.map((r) => this.#consumer.changeInvisibleDuration(r.view, r.invisibleMs)),
    );
    const failed = results.filter((r) => r.status === 'rejected').length;
    if (failed > 0) {
      this.#options.log?.warn(
        {
          topic: this.topic,
          group: this.group,
          failed,
          total: releases.length,
          invisibleMs: this.#invisibleMs,
        },
        'rocketmq: could not release some deliveries on close; they become visible when their invisible time ends',
      );
    }
  }
}
