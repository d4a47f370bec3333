import { randomBytes } from 'node:crypto';
import { Deque } from '../../core/deque.js';
import { InvalidArgumentError, ResourceExhaustedError } from '../../core/errors.js';
import { type Linked, LinkedList } from '../../core/linked-list.js';
import type { Engine } from './engine.js';
import type { Group } from './group.js';

/**
 * A topic of the embedded broker: each message stored once (a Slot) with a count of the groups
 * that still owe it an ack, the bytes it is charged, and the orphans (owed by no group) that are
 * the only messages ever dropped when a limit is reached.
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
export const MESSAGE_BASE_BYTES = 296;

/**
 * A body's Uint8Array and ArrayBuffer objects; measured 184 to 200 bytes on top of the bytes
 * themselves (bodies up to 64 bytes live in the V8 heap, larger ones in a malloc'd store).
 */
export const BODY_OVERHEAD_BYTES = 192;

/** A string's header; its characters are added at 1 byte each (Latin-1) or 2 (anything else). */
const STRING_HEADER_BYTES = 16;

/**
 * Per property on top of its name and value strings: a slot in the properties object, which
 * turns into a hash table above a handful of properties (measured ~46 bytes per property at 20).
 * Names are usually shared by many messages; charging them anyway pays for the hidden class
 * V8 builds when names are unique per message (~200 bytes each).
 */
export const PROPERTY_BYTES = 32;

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
export const SLEEPING_ENTRY_BYTES = 264;

/** Any code unit outside Latin-1 makes V8 store the whole string at 2 bytes per character. */
const TWO_BYTE = /[\u0100-\uffff]/;

/** When a dead-letter topic cannot take a message, it stays with its group and is retried. */
export const DEAD_LETTER_RETRY_MS = 1000;

const NAME_PATTERN = /^\S{1,255}$/;

export const MAX_REASON_LENGTH = 1024;

export interface StoredMessage {
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
export class Slot implements Linked<Slot> {
  /** Groups that still have to ack (or skip, or dead-letter) this message. */
  refs = 0;
  /** In the topic's live list (appended and not yet freed). */
  live = false;
  prev: Slot | undefined = undefined;
  next: Slot | undefined = undefined;
  /** Neighbours in the broker's list of orphans (messages no group owes), oldest first. */
  olderOrphan: Slot | undefined;
  newerOrphan: Slot | undefined;
  constructor(
    readonly msg: StoredMessage,
    readonly bytes: number,
  ) {}
}

/** A message as one group tracks it once read: attempts and whether it holds its key's lock. */
export interface Entry {
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
export class IdGenerator {
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

export function stringBytes(s: string | undefined): number {
  if (s === undefined) return 0;
  const chars = TWO_BYTE.test(s) ? 2 * s.length : s.length;
  return STRING_HEADER_BYTES + Math.ceil(chars / 8) * 8;
}

export function checkName(value: unknown, what: string): string {
  if (typeof value !== 'string' || !NAME_PATTERN.test(value)) {
    throw new InvalidArgumentError(
      `${what} ${JSON.stringify(value)} is not valid; use 1 to 255 characters without spaces`,
    );
  }
  return value;
}

export function formatBytes(n: number): string {
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
export class OrphanList {
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

export class Topic {
  readonly groups = new Map<string, Group>();
  /** Charged bytes of live, delayed and prepared messages; counted against maxTopicBytes. */
  bytes = 0;
  messages = 0;
  delayed = 0;
  prepared = 0;
  /** Appended and not yet freed, oldest first. */
  readonly #live = new LinkedList<Slot>();
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
    this.#live.push(slot);
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
    for (let s = this.#live.first; s !== undefined; s = s.next) {
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
    this.#live.remove(slot);
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
