import { Deque } from '../../core/deque.js';
import type { ScheduledTask } from '../../core/scheduler.js';
import type { TagFilter } from '../../core/tags.js';
import { KeyedHold } from '../delivery/keyed.js';
import type { MemorySubscription } from './subscription.js';
import {
  DEAD_LETTER_RETRY_MS,
  type Entry,
  type MemoryGroupStats,
  SLEEPING_ENTRY_BYTES,
  type Slot,
  type Topic,
} from './topic.js';

/**
 * A consumer group's view of one topic: its unread slots, the entries ready for redelivery, the
 * per-key holding of an ordered group, entries sleeping out a nack delay, and its retention once
 * no subscription is left.
 */

export class Group {
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
