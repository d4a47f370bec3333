import { randomBytes } from 'node:crypto';
import { Deque } from '../../core/deque.js';
import {
  ClosedError,
  InvalidArgumentError,
  MqError,
  NotFoundError,
  ResourceExhaustedError,
} from '../../core/errors.js';
import { closeAll, closeOnce } from '../../core/lifecycle.js';
import { type Message, type OutgoingMessage, toBytes } from '../../core/message.js';
import { type ScheduledTask, Scheduler } from '../../core/scheduler.js';
import type { TagFilter } from '../../core/tags.js';
import {
  type Broker,
  type BrokerCapabilities,
  type BrokerCounters,
  type BrokerLimits,
  type BrokerLog,
  type BrokerOpenOptions,
  DEFAULT_ACK_TIMEOUT_MS,
  type Delivery,
  type HealthStatus,
  MAX_TIMER_MS,
  type NackOptions,
  type PreparedTransaction,
  type Producer,
  type ProducerOptions,
  type SendResult,
  type SubscribeOptions,
  type Subscription,
} from '../broker.js';
import { deliveryIterator } from '../delivery/iterator.js';
import { KeyedHold } from '../delivery/keyed.js';
import { normaliseSubscribe } from '../subscribe-options.js';
import {
  DEFAULT_GROUP_RETENTION_MS,
  DEFAULT_MAX_ATTEMPTS,
  DEFAULT_MAX_MESSAGE_BYTES,
  DEFAULT_MAX_TOPIC_BYTES,
  defaultMaxBytes,
  type MemoryBrokerSettings,
} from './options.js';

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

export const DLQ_PREFIX = '%DLQ%';

/** Properties added to a message when it moves to a dead-letter topic. */
export const DLQ_PROPERTIES = {
  originTopic: 'DLQ_ORIGIN_TOPIC',
  originMessageId: 'DLQ_ORIGIN_MESSAGE_ID',
  group: 'DLQ_GROUP',
  attempts: 'DLQ_ATTEMPTS',
  reason: 'DLQ_REASON',
} as const;

/** The dead-letter topic of a consumer group (RocketMQ's naming). */
export function deadLetterTopic(group: string): string {
  return `${DLQ_PREFIX}${group}`;
}

/*
 * What a retained message is charged: an estimate of the heap it really takes, so that
 * maxTopicBytes and maxBytes bound the process's memory rather than just its payload bytes.
 * Sizes are V8's on 64-bit Node without pointer compression (Node's default build): an object
 * is 24 bytes plus 8 per field, a string 16 bytes plus its characters rounded up to 8.
 *
 * Measured with `npx tsx --expose-gc --test test/unit/brokers/memory-accounting.test.ts` (its
 * diagnostics print these figures; Node 20, x64): heap plus ArrayBuffer bytes per retained
 * message after a forced GC, for 50,000 small messages (10-byte body, a key, a tag and 2
 * properties, all fresh strings) and 1,000 with a 64 KiB body, with 0, 1 and 3 consumer groups
 * that have not read them, and for 20,000 a group read and nacked with an hour's delay:
 *
 *   case                          measured   charged   charged/measured
 *   small, 0 groups                  ~650       706        ~1.09
 *   small, 1 group                   ~640       738        ~1.15
 *   small, 3 groups                  ~660       802        ~1.21
 *   small, 1 group, nack-delayed     ~915     1,002        ~1.10
 *   64 KiB, 0 groups              ~66,130    66,232        ~1.00
 *   64 KiB, 1 group               ~66,060    66,264        ~1.00
 *   64 KiB, 3 groups              ~66,165    66,328        ~1.00
 *
 * The charge errs high for small messages: strings shared between messages (a constant tag,
 * property names) are charged to each, and unread group references cost less than read ones.
 * A charge of 64 bytes plus string lengths, without these constants, came to 110 bytes for the
 * small message: 0.18 of its heap, so a flood of small messages could use 5 times the limit.
 */

/**
 * Per message: the Slot (8 fields, 88), the stored message (9 fields, 96), its id (56: a cons
 * string joining the 20-char prefix shared by ids of the same millisecond to its own 8 chars)
 * and its frozen properties object (56).
 */
const MESSAGE_BASE_BYTES = 296;

/**
 * A body's Uint8Array and ArrayBuffer objects; measured 184 to 200 bytes on top of the bytes
 * themselves (bodies up to 64 bytes live in the V8 heap, larger ones in a malloc'd store).
 */
const BODY_OVERHEAD_BYTES = 192;

/** A string's header; its characters are added at 1 byte each (Latin-1) or 2 (anything else). */
const STRING_HEADER_BYTES = 16;

/**
 * Per property on top of its name and value strings: a slot in the properties object, which
 * turns into a hash table above a handful of properties (measured ~46 bytes per property at 20).
 * Names are usually shared by many messages; charging them anyway pays for the hidden class
 * V8 builds when names are unique per message (~200 bytes each).
 */
const PROPERTY_BYTES = 32;

/**
 * Per consumer group that owes the message: between an unread reference (a deque slot, 8 bytes
 * plus the deque's spare room, ~12) and an entry the group has read and keeps (an Entry object,
 * 48, plus its deque slot). Charged when a group takes the message on, credited when it is done.
 */
const GROUP_ENTRY_BYTES = 32;

/**
 * Extra while a group's entry waits out a nack delay: its Entry object, its scheduler entry,
 * the callback's closure and context, and its place in the group's map of sleepers (~265 bytes
 * measured, see the table above). Without it a consumer that nacks everything with a long
 * delay would hold a quarter more memory than the limit allows. Charged when the entry goes to sleep,
 * credited when it wakes or its group is forgotten.
 */
const SLEEPING_ENTRY_BYTES = 264;

/** Any code unit outside Latin-1 makes V8 store the whole string at 2 bytes per character. */
const TWO_BYTE = /[\u0100-\uffff]/;

/** When a dead-letter topic cannot take a message, it stays with its group and is retried. */
const DEAD_LETTER_RETRY_MS = 1000;

const NAME_PATTERN = /^\S{1,255}$/;

const MAX_REASON_LENGTH = 1024;

interface StoredMessage {
  readonly id: string;
  readonly topic: string;
  readonly body: Uint8Array;
  readonly key: string | undefined;
  readonly tag: string | undefined;
  readonly businessKey: string | undefined;
  readonly properties: Readonly<Record<string, string>>;
  readonly deliverAt: number | undefined;
  readonly bornAt: number;
}

/** One message retained by a topic. */
class Slot {
  /** Groups that still have to ack (or skip, or dead-letter) this message. */
  refs = 0;
  /** In the topic's live list (appended and not yet freed). */
  live = false;
  prev: Slot | undefined;
  next: Slot | undefined;
  /** Neighbours in the broker's list of orphans (messages no group owes), oldest first. */
  olderOrphan: Slot | undefined;
  newerOrphan: Slot | undefined;
  constructor(
    readonly msg: StoredMessage,
    readonly bytes: number,
  ) {}
}

/** A message as one group tracks it once read: attempts and whether it holds its key's lock. */
interface Entry {
  readonly slot: Slot;
  attempts: number;
  locked: boolean;
}

export interface MemoryGroupStats {
  readonly group: string;
  /** Messages the group has not finished: unread, waiting for redelivery, or held behind a key. */
  readonly backlog: number;
  readonly inFlight: number;
  readonly subscriptions: number;
}

export interface MemoryTopicStats {
  readonly topic: string;
  /**
   * Bytes retained (live, delayed and prepared messages), counted against maxTopicBytes: an
   * estimate of their heap cost, including the broker's bookkeeping per message and per group.
   */
  readonly bytes: number;
  readonly maxBytes: number;
  /** Messages visible to groups and not yet freed. */
  readonly messages: number;
  readonly delayed: number;
  readonly prepared: number;
  readonly groups: readonly MemoryGroupStats[];
}

/** Monotonic-ish ids: 12 hex digits of epoch ms, 8 of broker instance, 8 of sequence. */
class IdGenerator {
  readonly #instance = randomBytes(4).toString('hex');
  #seq = 0;
  #lastMs = -1;
  #prefix = '';

  next(now: number): string {
    if (now !== this.#lastMs) {
      this.#lastMs = now;
      this.#prefix = now.toString(16).padStart(12, '0') + this.#instance;
    }
    this.#seq = (this.#seq + 1) >>> 0;
    return this.#prefix + this.#seq.toString(16).padStart(8, '0');
  }
}

function stringBytes(s: string | undefined): number {
  if (s === undefined) return 0;
  const chars = TWO_BYTE.test(s) ? 2 * s.length : s.length;
  return STRING_HEADER_BYTES + Math.ceil(chars / 8) * 8;
}

function checkName(value: unknown, what: string): string {
  if (typeof value !== 'string' || !NAME_PATTERN.test(value)) {
    throw new InvalidArgumentError(
      `${what} ${JSON.stringify(value)} is not valid; use 1 to 255 characters without spaces`,
    );
  }
  return value;
}

function formatBytes(n: number): string {
  if (n >= 1024 ** 3 && n % 1024 ** 3 === 0) return `${n / 1024 ** 3}GiB`;
  if (n >= 1024 ** 2 && n % 1024 ** 2 === 0) return `${n / 1024 ** 2}MiB`;
  if (n >= 1024 && n % 1024 === 0) return `${n / 1024}KiB`;
  return `${n}B`;
}

/**
 * Every orphan of the broker in the order they were appended, so the broker-wide limit drops
 * the oldest first whatever their topic. Linked through the slots, so removing one from the
 * middle (its own topic's limit dropped it, or a group adopted it) is O(1) and leaves nothing
 * behind that would keep a dropped message alive.
 */
class OrphanList {
  oldest: Slot | undefined;
  #newest: Slot | undefined;
  /** Bytes charged for the slots in the list: what dropping all of them would free. */
  bytes = 0;

  add(slot: Slot): void {
    slot.olderOrphan = this.#newest;
    if (this.#newest) this.#newest.newerOrphan = slot;
    else this.oldest = slot;
    this.#newest = slot;
    this.bytes += slot.bytes;
  }

  remove(slot: Slot): void {
    if (slot.olderOrphan) slot.olderOrphan.newerOrphan = slot.newerOrphan;
    else this.oldest = slot.newerOrphan;
    if (slot.newerOrphan) slot.newerOrphan.olderOrphan = slot.olderOrphan;
    else this.#newest = slot.olderOrphan;
    slot.olderOrphan = undefined;
    slot.newerOrphan = undefined;
    this.bytes -= slot.bytes;
  }

  clear(): void {
    this.oldest = undefined;
    this.#newest = undefined;
    this.bytes = 0;
  }
}

class Topic {
  readonly groups = new Map<string, Group>();
  /** Charged bytes of live, delayed and prepared messages; counted against maxTopicBytes. */
  bytes = 0;
  messages = 0;
  delayed = 0;
  prepared = 0;
  #head: Slot | undefined;
  #tail: Slot | undefined;
  /**
   * Messages published while the topic had no group. Nobody owes them an ack, so they are kept
   * only as a best-effort backlog for a later group that subscribes with start: 'earliest' (the
   * way Kafka or RocketMQ keep messages nobody consumes), and the oldest are dropped when a send
   * needs their room: in this topic, or anywhere in the broker (engine.orphans has them all). The alternative, failing sends on a topic nobody listens to, would turn
   * "publish before the consumers start" into an outage once the limit is reached; dropping them
   * all at once would make 'earliest' useless, e.g. for reading a dead-letter topic.
   */
  readonly #orphans = new Deque<Slot>();
  /** Bytes charged for #orphans: what dropping all of them would free. */
  #orphanBytes = 0;

  constructor(
    readonly name: string,
    readonly engine: Engine,
  ) {}

  /** Adds `delta` (negative to credit) to the topic's and the broker's retained bytes. */
  charge(delta: number): void {
    this.bytes += delta;
    this.engine.retainedBytes += delta;
  }

  /**
   * Charges a new message to the topic and the broker, dropping unowned backlog first (the
   * topic's own for its limit, the oldest of any topic for the broker's); throws when it still
   * does not fit. Nothing is dropped for a send that would fail anyway.
   */
  reserve(slot: Slot): void {
    // Checked with the groups existing now, which each take the message on when it is appended.
    // A delayed or prepared message is appended later and may then go over by that part.
    const need = slot.bytes + GROUP_ENTRY_BYTES * this.groups.size;
    const limit = this.engine.settings.maxTopicBytes;
    if (this.bytes - this.#orphanBytes + need > limit) {
      throw new ResourceExhaustedError(
        `topic "${this.name}" is full: ${this.bytes} bytes retained of its ${formatBytes(limit)} limit ` +
          `(maxTopicBytes) until its consumer groups ack them; retry after consumers catch up, ` +
          `or raise maxTopicBytes in the broker URL (e.g. memory://?maxTopicBytes=256MiB)`,
        { retryable: true },
      );
    }
    this.engine.checkRoom(need);
    while (this.bytes + need > limit && this.#orphans.length > 0) this.#dropOrphan();
    this.engine.makeRoom(need);
    this.charge(slot.bytes);
  }

  /** Credits a reserved message that will never be appended (a rolled-back transaction). */
  unreserve(slot: Slot): void {
    this.charge(-slot.bytes);
  }

  /**
   * Frees `slot`, which must be the topic's oldest orphan, to make room for the broker; false
   * when it is not (then nothing changes).
   */
  dropOldestOrphan(slot: Slot): boolean {
    if (this.#orphans.peek() !== slot) return false;
    this.#dropOrphan();
    return true;
  }

  /** Frees the topic's oldest orphan; counted in backlogDropped. */
  #dropOrphan(): void {
    const slot = this.#orphans.shift();
    if (slot === undefined) return;
    this.#orphanBytes -= slot.bytes;
    this.engine.orphans.remove(slot);
    this.#free(slot);
    this.engine.backlogDropped++;
  }

  /** Makes a message visible: every group existing now owes it an ack. */
  append(slot: Slot): void {
    slot.live = true;
    slot.prev = this.#tail;
    if (this.#tail) this.#tail.next = slot;
    else this.#head = slot;
    this.#tail = slot;
    this.messages++;
    slot.refs = this.groups.size;
    if (slot.refs === 0) {
      this.#orphans.push(slot);
      this.#orphanBytes += slot.bytes;
      this.engine.orphans.add(slot);
      return;
    }
    this.charge(GROUP_ENTRY_BYTES * slot.refs);
    for (const group of this.groups.values()) group.offer(slot);
  }

  /** One group is done with the message. */
  release(slot: Slot): void {
    slot.refs--;
    this.charge(-GROUP_ENTRY_BYTES);
    if (slot.refs <= 0 && slot.live) this.#free(slot);
  }

  /** Forgets a group that had no subscription for groupRetentionMs, releasing what it owes. */
  expire(group: Group): void {
    if (this.groups.get(group.name) !== group || group.subs.size > 0) return;
    this.groups.delete(group.name);
    const released = group.releaseAll();
    this.engine.groupsExpired++;
    this.engine.log?.info(
      {
        topic: this.name,
        group: group.name,
        released,
        retentionMs: this.engine.settings.groupRetentionMs,
      },
      'memory broker: consumer group forgotten after its retention period without a subscription',
    );
  }

  /**
   * A new group reading from the earliest retained message owes every one of them an ack. Its
   * per-group part is charged without a limit check: the messages are already here, and
   * refusing the subscription would not free them.
   */
  adoptAll(group: Group, since = 0): void {
    for (let s = this.#head; s !== undefined; s = s.next) {
      // A time start skips what was born before it (bornAt is the publish time).
      if (s.msg.bornAt < since) continue;
      s.refs++;
      this.charge(GROUP_ENTRY_BYTES);
      group.offer(s);
    }
    // What the group now owes is no longer unowned backlog; what a time start skipped still is.
    const kept: Slot[] = [];
    for (const slot of this.#orphans) {
      if (slot.refs === 0) kept.push(slot);
      else this.engine.orphans.remove(slot);
    }
    this.#orphans.clear();
    this.#orphanBytes = 0;
    for (const slot of kept) {
      this.#orphans.push(slot);
      this.#orphanBytes += slot.bytes;
    }
  }

  #free(slot: Slot): void {
    slot.live = false;
    if (slot.prev) slot.prev.next = slot.next;
    else this.#head = slot.next;
    if (slot.next) slot.next.prev = slot.prev;
    else this.#tail = slot.prev;
    slot.prev = undefined;
    slot.next = undefined;
    this.charge(-slot.bytes);
    this.messages--;
  }

  stats(): MemoryTopicStats {
    return {
      topic: this.name,
      bytes: this.bytes,
      maxBytes: this.engine.settings.maxTopicBytes,
      messages: this.messages,
      delayed: this.delayed,
      prepared: this.prepared,
      groups: [...this.groups.values()].map((g) => g.stats()),
    };
  }
}

class Group {
  readonly subs = new Set<MemorySubscription>();
  /** Subscriptions with room that found nothing to take; woken when something arrives. */
  readonly waiting = new Set<MemorySubscription>();
  filter: TagFilter;
  /**
   * Becomes true when an ordered subscription joins and stays so: the key locks then apply to
   * every subscription of the group, because one unordered member could otherwise take a key's
   * next message while an ordered member still holds the previous one.
   */
  ordered = false;
  /** Slots not yet read by this group, in publish order. */
  readonly #unread = new Deque<Slot>();
  /** Entries ready to deliver again (nacked, expired, released) or just unlocked. */
  readonly #ready = new Deque<Entry>();
  /** ordered: each key's head (read, not finished) and the entries waiting behind it. */
  readonly #keys: KeyedHold<Entry>;
  /** Entries waiting out a nack delay (or a dead-letter retry), with their scheduler entries. */
  readonly #sleeping = new Map<Entry, ScheduledTask>();
  /** When the last subscription closed; undefined while the group has one. */
  #idleSince: number | undefined;
  /** Whether a retention check is in the scheduler (at most one per group). */
  #expiryArmed = false;
  /** Set once the topic forgot the group: it hands nothing out, and a late wake-up does nothing. */
  #expired = false;

  constructor(
    readonly name: string,
    readonly topic: Topic,
    filter: TagFilter,
  ) {
    this.filter = filter;
    this.#keys = new KeyedHold(topic.engine.scheduler);
  }

  offer(slot: Slot): void {
    this.#unread.push(slot);
    this.notify();
  }

  /** A subscription joined: the group is in use again and keeps everything it owes. */
  active(): void {
    this.#idleSince = undefined;
  }

  /**
   * The last subscription closed: the group is forgotten after groupRetentionMs unless one joins
   * before. Rejoining does not cancel the scheduler entry: a cancelled entry stays in the
   * scheduler's heap until its due time, so a client reconnecting in a loop would pile up one
   * per reconnect. Instead the one entry checks when it fires and re-arms if the group went idle
   * again later, or does nothing if it is in use.
   */
  idle(): void {
    const engine = this.topic.engine;
    if (this.subs.size > 0 || engine.closed) return;
    this.#idleSince = Date.now();
    if (!this.#expiryArmed) this.#armExpiry(this.#idleSince + engine.settings.groupRetentionMs);
  }

  #armExpiry(at: number): void {
    this.#expiryArmed = true;
    this.topic.engine.scheduler.at(at, () => {
      this.#expiryArmed = false;
      if (this.#idleSince === undefined) return;
      const due = this.#idleSince + this.topic.engine.settings.groupRetentionMs;
      if (due > Date.now()) this.#armExpiry(due);
      else this.topic.expire(this);
    });
  }

  /**
   * Releases every message the group still owes (unread, ready, parked behind a key, sleeping
   * on a nack delay) so the topic can free them; returns how many. Only for a group without
   * subscriptions, which therefore has nothing in flight.
   */
  releaseAll(): number {
    this.#expired = true;
    const topic = this.topic;
    let released = 0;
    for (const slot of this.#unread) {
      topic.release(slot);
      released++;
    }
    this.#unread.clear();
    // Key holders are in #ready or #sleeping (nothing is in flight), so each entry is released
    // exactly once: from where it waits, not from the lock that names it.
    for (const entry of this.#ready) {
      topic.release(entry.slot);
      released++;
    }
    this.#ready.clear();
    for (const entry of this.#keys.drain()) {
      topic.release(entry.slot);
      released++;
    }
    for (const [entry, task] of this.#sleeping) {
      task.cancel();
      topic.charge(-SLEEPING_ENTRY_BYTES);
      topic.release(entry.slot);
      released++;
    }
    this.#sleeping.clear();
    this.waiting.clear();
    return released;
  }

  notify(): void {
    if (this.waiting.size === 0) return;
    // wake() only resolves promises, so the set is not modified while iterating it.
    for (const sub of this.waiting) sub.wake();
    this.waiting.clear();
  }

  /** The next entry this group may deliver, or undefined when there is none right now. */
  take(): Entry | undefined {
    if (this.#expired) return undefined;
    for (;;) {
      const entry = this.#ready.shift();
      if (entry === undefined) break;
      // The filter can change while a group has no subscriptions; re-check redeliveries too.
      if (this.filter.matches(entry.slot.msg.tag)) return entry;
      this.finish(entry);
    }
    for (;;) {
      const slot = this.#unread.shift();
      if (slot === undefined) return undefined;
      if (!this.filter.matches(slot.msg.tag)) {
        // Filtered out for this group: counts as consumed.
        this.topic.release(slot);
        continue;
      }
      const entry: Entry = { slot, attempts: 0, locked: false };
      const key = slot.msg.key;
      if (this.ordered && key !== undefined) {
        if (!this.#keys.admit(key, entry)) continue;
        entry.locked = true;
      }
      return entry;
    }
  }

  /** The group is done with the entry (acked, filtered or dead-lettered). */
  finish(entry: Entry): void {
    this.topic.release(entry.slot);
    if (!entry.locked) return;
    entry.locked = false;
    const key = entry.slot.msg.key as string;
    if (this.#keys.head(key) !== entry) return;
    const next = this.#keys.advance(key);
    if (next === undefined) return;
    next.locked = true;
    this.#ready.push(next);
    this.notify();
  }

  /** A delivery failed; redeliver it (keeping its key lock) or move it to the dead-letter topic. */
  requeue(entry: Entry, reason: string, delayMs: number): void {
    const engine = this.topic.engine;
    let wait = delayMs;
    if (entry.attempts >= engine.settings.maxAttempts) {
      if (engine.deadLetter(this, entry, reason)) {
        this.finish(entry);
        return;
      }
      wait = Math.max(wait, DEAD_LETTER_RETRY_MS);
    }
    if (wait <= 0) {
      this.#ready.push(entry);
      this.notify();
      return;
    }
    const task = engine.scheduler.after(wait, () => {
      // releaseAll() cancels these, so this runs only for a group that still exists; the check
      // keeps an expired group from taking back a message it has already released.
      if (!this.#sleeping.delete(entry) || this.#expired) return;
      this.topic.charge(-SLEEPING_ENTRY_BYTES);
      this.#ready.push(entry);
      this.notify();
    });
    this.#sleeping.set(entry, task);
    this.topic.charge(SLEEPING_ENTRY_BYTES);
  }

  stats(): MemoryGroupStats {
    let inFlight = 0;
    for (const sub of this.subs) inFlight += sub.inFlight;
    return {
      group: this.name,
      backlog: this.#unread.length + this.#ready.length + this.#keys.held + this.#sleeping.size,
      inFlight,
      subscriptions: this.subs.size,
    };
  }
}

const IN_FLIGHT = 0;
const ACKED = 1;
const NACKED = 2;
const EXPIRED = 3;
const CLOSED = 4;
type DeliveryState = typeof IN_FLIGHT | typeof ACKED | typeof NACKED | typeof EXPIRED | typeof CLOSED;

class MemoryDelivery implements Delivery {
  state: DeliveryState = IN_FLIGHT;
  prev: MemoryDelivery | undefined;
  next: MemoryDelivery | undefined;

  constructor(
    readonly message: Message,
    readonly entry: Entry,
    readonly subscription: MemorySubscription,
    readonly deadline: number,
  ) {}

  async ack(): Promise<void> {
    this.subscription.settle(this, true, undefined);
  }

  async nack(options?: NackOptions): Promise<void> {
    this.subscription.settle(this, false, options);
  }
}

class MemorySubscription implements Subscription {
  readonly topic: string;
  readonly group: string;
  readonly maxInFlight: number;
  readonly ackTimeoutMs: number;
  #inFlight = 0;
  #first: MemoryDelivery | undefined;
  #last: MemoryDelivery | undefined;
  #expiry: ScheduledTask | undefined;
  #closed = false;
  #waiters: Array<() => void> = [];
  readonly close: () => Promise<void>;

  constructor(
    readonly engine: Engine,
    readonly groupState: Group,
    options: { maxInFlight: number; ackTimeoutMs: number },
  ) {
    this.topic = groupState.topic.name;
    this.group = groupState.name;
    this.maxInFlight = options.maxInFlight;
    this.ackTimeoutMs = options.ackTimeoutMs;
    this.close = closeOnce(async () => this.#close());
  }

  get inFlight(): number {
    return this.#inFlight;
  }

  get closed(): boolean {
    return this.#closed;
  }

  wake(): void {
    if (this.#waiters.length === 0) return;
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const w of waiters) w();
  }

  /** Iterating twice gives two cursors over the same deliveries. */
  [Symbol.asyncIterator](): AsyncIterator<Delivery, undefined> {
    return deliveryIterator(() => this.#next(), this.close);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  takeReady(max: number): Delivery[] {
    const out: Delivery[] = [];
    while (out.length < max && !this.#closed && !this.engine.closed && this.#inFlight < this.maxInFlight) {
      const entry = this.groupState.take();
      if (entry === undefined) break;
      out.push(this.#deliver(entry));
    }
    return out;
  }

  async #next(): Promise<IteratorResult<Delivery, undefined>> {
    for (;;) {
      // The broker check stops hand-outs while broker.close() is still closing subscriptions.
      if (this.#closed || this.engine.closed) return { value: undefined, done: true };
      if (this.#inFlight < this.maxInFlight) {
        const entry = this.groupState.take();
        if (entry !== undefined) return { value: this.#deliver(entry), done: false };
        this.groupState.waiting.add(this);
      }
      // Woken by the group (something to take), by a settle (room) or by close.
      await new Promise<void>((resolve) => this.#waiters.push(resolve));
    }
  }

  #deliver(entry: Entry): MemoryDelivery {
    const m = entry.slot.msg;
    const message: Message = {
      id: m.id,
      topic: m.topic,
      body: m.body,
      key: m.key,
      tag: m.tag,
      businessKey: m.businessKey,
      properties: m.properties,
      deliverAt: m.deliverAt,
      bornAt: m.bornAt,
      reconsumeCount: entry.attempts,
    };
    entry.attempts++;
    const now = Date.now();
    const d = new MemoryDelivery(message, entry, this, now + this.ackTimeoutMs);
    d.prev = this.#last;
    if (this.#last) this.#last.next = d;
    else this.#first = d;
    this.#last = d;
    this.#inFlight++;
    if (this.#expiry === undefined) this.#armExpiry(d.deadline);
    return d;
  }

  #unlink(d: MemoryDelivery): void {
    if (d.prev) d.prev.next = d.next;
    else this.#first = d.next;
    if (d.next) d.next.prev = d.prev;
    else this.#last = d.prev;
    d.prev = undefined;
    d.next = undefined;
    this.#inFlight--;
  }

  #armExpiry(at: number): void {
    this.#expiry = this.engine.scheduler.at(at, () => {
      this.#expiry = undefined;
      this.#expire();
    });
  }

  #expire(): void {
    const now = Date.now();
    let released = false;
    for (let d = this.#first; d !== undefined && d.deadline <= now; d = this.#first) {
      this.#unlink(d);
      d.state = EXPIRED;
      released = true;
      this.groupState.requeue(d.entry, `not acked within the ${this.ackTimeoutMs} ms ack timeout`, 0);
    }
    if (this.#first !== undefined) this.#armExpiry(this.#first.deadline);
    if (released) this.wake();
  }

  settle(d: MemoryDelivery, ack: boolean, options: NackOptions | undefined): void {
    this.engine.assertOpen();
    if (d.state !== IN_FLIGHT) {
      if (d.state === (ack ? ACKED : NACKED)) return;
      if (d.state === ACKED) {
        throw new MqError(
          'FAILED_PRECONDITION',
          `message ${d.message.id} was already acked on topic "${this.topic}" (group "${this.group}"); it cannot be nacked`,
        );
      }
      const why =
        d.state === NACKED
          ? 'it was nacked'
          : d.state === EXPIRED
            ? `its ${this.ackTimeoutMs} ms ack timeout passed`
            : 'its subscription was closed';
      throw new NotFoundError(
        `delivery of message ${d.message.id} on topic "${this.topic}" (group "${this.group}") is no longer held: ` +
          `${why}; the message is (or will be) delivered again`,
      );
    }
    let delayMs = 0;
    if (!ack && options?.delayMs !== undefined) {
      delayMs = options.delayMs;
      if (!Number.isFinite(delayMs) || delayMs < 0) {
        throw new InvalidArgumentError(
          `nack delayMs ${String(delayMs)} is not valid; use a number of milliseconds >= 0`,
        );
      }
    }
    this.#unlink(d);
    if (ack) {
      d.state = ACKED;
      this.groupState.finish(d.entry);
    } else {
      d.state = NACKED;
      // The consumer never received it: this hand-out was not a delivery attempt.
      if (options?.uncounted === true && d.entry.attempts > 0) d.entry.attempts--;
      // Bounded: a reason is often an error's stack, and it is kept with the dead letter.
      const reason = options?.reason
        ? `nacked: ${String(options.reason).slice(0, MAX_REASON_LENGTH)}`
        : 'nacked';
      this.groupState.requeue(d.entry, reason, delayMs);
    }
    this.wake();
  }

  async #close(): Promise<void> {
    this.#closed = true;
    this.#expiry?.cancel();
    this.#expiry = undefined;
    const group = this.groupState;
    group.subs.delete(this);
    group.waiting.delete(this);
    this.engine.subscriptions.delete(this);
    // Release in delivery order so redeliveries keep that order.
    for (let d = this.#first; d !== undefined; d = this.#first) {
      this.#unlink(d);
      d.state = CLOSED;
      group.requeue(d.entry, 'its subscription closed before it was acked', 0);
    }
    group.idle();
    this.wake();
  }
}

interface Half {
  readonly slot: Slot;
  readonly topic: Topic;
  state: 'prepared' | 'committed' | 'rolledBack';
}

class MemoryProducer implements Producer {
  readonly topic: string;
  readonly #halves = new Set<Half>();
  #closed = false;
  readonly close: () => Promise<void>;

  constructor(
    readonly engine: Engine,
    readonly topicState: Topic,
  ) {
    this.topic = topicState.name;
    this.close = closeOnce(async () => {
      this.#closed = true;
      this.engine.producers.delete(this);
      // A producer that goes away without resolving its transactions cannot be asked about them
      // later (there is no check-back here), so they are rolled back rather than kept forever.
      for (const half of this.#halves) this.#rollback(half);
      this.#halves.clear();
    });
  }

  #assertOpen(): void {
    this.engine.assertOpen();
    if (this.#closed) {
      throw new ClosedError(
        `producer for topic "${this.topic}" is closed; open a new one with broker.producer()`,
      );
    }
  }

  async send(message: OutgoingMessage): Promise<SendResult> {
    this.#assertOpen();
    const slot = this.engine.makeSlot(this.topicState, message, Date.now());
    this.topicState.reserve(slot);
    this.engine.publish(this.topicState, slot);
    return { messageId: slot.msg.id };
  }

  async prepare(message: OutgoingMessage): Promise<PreparedTransaction> {
    this.#assertOpen();
    const topic = this.topicState;
    const slot = this.engine.makeSlot(topic, message, Date.now());
    topic.reserve(slot);
    topic.prepared++;
    const half: Half = { slot, topic, state: 'prepared' };
    this.#halves.add(half);
    const id = slot.msg.id;
    return {
      messageId: id,
      transactionId: id,
      commit: async () => {
        this.engine.assertOpen();
        if (half.state === 'committed') return;
        if (half.state === 'rolledBack') {
          throw new MqError(
            'FAILED_PRECONDITION',
            `transaction ${id} on topic "${this.topic}" was rolled back${this.#closed ? ' when its producer closed' : ''}; it cannot be committed, publish the message again`,
          );
        }
        half.state = 'committed';
        this.#halves.delete(half);
        topic.prepared--;
        this.engine.publish(topic, slot);
      },
      rollback: async () => {
        this.engine.assertOpen();
        if (half.state === 'rolledBack') return;
        if (half.state === 'committed') {
          throw new MqError(
            'FAILED_PRECONDITION',
            `transaction ${id} on topic "${this.topic}" was already committed; it cannot be rolled back`,
          );
        }
        this.#rollback(half);
        this.#halves.delete(half);
      },
    };
  }

  #rollback(half: Half): void {
    if (half.state !== 'prepared') return;
    half.state = 'rolledBack';
    half.topic.prepared--;
    half.topic.unreserve(half.slot);
  }
}

/** The shared state of one broker: topics, the scheduler, settings. */
class Engine {
  readonly topics = new Map<string, Topic>();
  readonly subscriptions = new Set<MemorySubscription>();
  readonly producers = new Set<MemoryProducer>();
  readonly scheduler: Scheduler;
  readonly ids = new IdGenerator();
  closed = false;
  /** Groups forgotten after groupRetentionMs without a subscription. */
  groupsExpired = 0;
  /** Messages no group owed, dropped to make room for new ones. */
  backlogDropped = 0;
  /** Charged bytes of every topic together; counted against maxBytes. */
  retainedBytes = 0;
  readonly orphans = new OrphanList();

  constructor(
    readonly settings: MemoryBrokerSettings,
    readonly log: BrokerLog | undefined,
  ) {
    this.scheduler = new Scheduler({
      onError: (err) => {
        if (!log) throw err;
        log.error({ err }, 'memory broker: scheduled task failed');
      },
    });
  }

  assertOpen(): void {
    if (this.closed) {
      throw new ClosedError('memory broker is closed; open a new one with openBroker("memory://")');
    }
  }

  /** Throws when `need` more bytes would not fit in maxBytes even after dropping every orphan. */
  checkRoom(need: number): void {
    const limit = this.settings.maxBytes;
    if (this.retainedBytes - this.orphans.bytes + need <= limit) return;
    throw new ResourceExhaustedError(
      `memory broker is full: ${this.retainedBytes} bytes retained across ${this.topics.size} topics of its ` +
        `${formatBytes(limit)} limit (maxBytes), ${this.retainedBytes - this.orphans.bytes} of them owed to ` +
        `consumer groups that have not acked them (or delayed, or prepared); retry after consumers catch up, ` +
        `or raise maxBytes in the broker URL (e.g. memory://?maxBytes=1GiB)`,
      { retryable: true },
    );
  }

  /** Drops the oldest orphans of any topic until `need` more bytes fit in maxBytes. */
  makeRoom(need: number): void {
    const limit = this.settings.maxBytes;
    for (let slot = this.orphans.oldest; slot !== undefined; slot = this.orphans.oldest) {
      if (this.retainedBytes + need <= limit) return;
      // A topic's orphans are appended to its deque and to this list together and leave both
      // together, so the oldest here is its topic's oldest. Unlinking it regardless guarantees
      // progress should that ever not hold.
      if (this.topics.get(slot.msg.topic)?.dropOldestOrphan(slot) !== true) this.orphans.remove(slot);
    }
  }

  /** Forgets every topic and message (the broker is closing). */
  clear(): void {
    this.topics.clear();
    this.orphans.clear();
    this.retainedBytes = 0;
  }

  topic(name: string): Topic {
    let topic = this.topics.get(name);
    if (topic === undefined) {
      topic = new Topic(name, this);
      this.topics.set(name, topic);
    }
    return topic;
  }

  makeSlot(topic: Topic, message: OutgoingMessage, now: number): Slot {
    if (message === null || typeof message !== 'object') {
      throw new InvalidArgumentError('message must be an object with a body');
    }
    const { body: rawBody, key, tag, businessKey, properties, deliverAt } = message;
    let body: Uint8Array;
    // A fresh array either way: Buffer.from(string) may return a view into a shared pool slab,
    // and a caller's Uint8Array may be reused by the caller or be a view pinning a larger buffer.
    if (typeof rawBody === 'string') body = toBytes(rawBody);
    else if (rawBody instanceof Uint8Array) body = new Uint8Array(rawBody);
    else throw new InvalidArgumentError('message body must be a string or a Uint8Array');
    checkOptionalString(key, 'message key');
    checkOptionalString(tag, 'message tag');
    checkOptionalString(businessKey, 'message businessKey');
    let size =
      MESSAGE_BASE_BYTES +
      BODY_OVERHEAD_BYTES +
      body.byteLength +
      stringBytes(key) +
      stringBytes(tag) +
      stringBytes(businessKey);
    const props: Record<string, string> = {};
    if (properties !== undefined) {
      for (const name of Object.keys(properties)) {
        const value = properties[name];
        if (typeof value !== 'string') {
          throw new InvalidArgumentError(`message property "${name}" must be a string`);
        }
        props[name] = value;
        size += PROPERTY_BYTES + stringBytes(name) + stringBytes(value);
      }
    }
    if (deliverAt !== undefined && !Number.isFinite(deliverAt)) {
      throw new InvalidArgumentError(`message deliverAt ${String(deliverAt)} is not an epoch-ms timestamp`);
    }
    const max = Math.min(this.settings.maxMessageBytes, this.settings.maxTopicBytes);
    if (size > max) {
      throw new InvalidArgumentError(
        `message for topic "${topic.name}" is ${size} bytes with metadata and the broker's bookkeeping; ` +
          `the limit is ${formatBytes(max)} (maxMessageBytes / maxTopicBytes in the broker URL)`,
      );
    }
    // Frozen because every group and every redelivery hands out this same object.
    Object.freeze(props);
    const msg: StoredMessage = {
      id: this.ids.next(now),
      topic: topic.name,
      body,
      key,
      tag,
      businessKey,
      properties: props,
      deliverAt,
      bornAt: now,
    };
    return new Slot(msg, size);
  }

  /**
   * Bytes are already reserved; makes the message visible now or at its deliverAt. A delayed
   * message belongs to the groups that exist when it becomes visible, as in RocketMQ, so a group
   * created in between ('latest') receives it.
   */
  publish(topic: Topic, slot: Slot): void {
    const at = slot.msg.deliverAt;
    if (at !== undefined && at > Date.now()) {
      topic.delayed++;
      this.scheduler.at(at, () => {
        topic.delayed--;
        topic.append(slot);
      });
      return;
    }
    topic.append(slot);
  }

  /** Moves an exhausted message to `%DLQ%<group>`; false when that topic cannot take it now. */
  deadLetter(group: Group, entry: Entry, reason: string): boolean {
    if (this.closed) return false;
    const m = entry.slot.msg;
    const dlq = this.topic(deadLetterTopic(group.name));
    try {
      const slot = this.makeSlot(
        dlq,
        {
          body: m.body,
          key: m.key,
          tag: m.tag,
          businessKey: m.businessKey,
          properties: {
            ...m.properties,
            [DLQ_PROPERTIES.originTopic]: m.topic,
            [DLQ_PROPERTIES.originMessageId]: m.id,
            [DLQ_PROPERTIES.group]: group.name,
            [DLQ_PROPERTIES.attempts]: String(entry.attempts),
            [DLQ_PROPERTIES.reason]: reason,
          },
        },
        Date.now(),
      );
      dlq.reserve(slot);
      dlq.append(slot);
      this.log?.warn(
        { topic: m.topic, group: group.name, messageId: m.id, attempts: entry.attempts, reason },
        'memory broker: message moved to dead-letter topic',
      );
      return true;
    } catch (err) {
      this.log?.error(
        { err, topic: m.topic, group: group.name, messageId: m.id },
        'memory broker: dead-letter topic cannot take the message; it stays with its group',
      );
      return false;
    }
  }
}

function checkOptionalString(value: unknown, what: string): void {
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
