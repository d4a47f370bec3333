import { KeyedLanes } from '../../bus/lanes.js';
import { Backoff, BROKER_RETRY } from '../../core/backoff.js';
import { ClosedError, errorMessage, isMqError } from '../../core/errors.js';
import { delay } from '../../core/lifecycle.js';
import type { OutgoingMessage } from '../../core/message.js';
import type { BrokerCounters, BrokerLog, Delivery, Subscription } from '../broker.js';
import {
  checkHoldable,
  type Decision,
  decodeDecision,
  decodeHeld,
  encodeDecision,
  encodeHeld,
  type HeldKind,
  type HeldMessage,
} from './record.js';

/**
 * Delayed and transactional messages on brokers that cannot hold a message themselves (Kafka,
 * NATS JetStream 2.9): ONE mechanism for both. A held message is written as an ordinary record
 * to an internal topic of the same broker (so it is as durable as the broker, survives a gateway
 * restart, and several gateways share the work through one consumer group), and a mover
 * consuming those topics publishes it to its target topic when due, with its original key, tag,
 * properties, body and message id, THEN acks the holding record: a crash between the two gives
 * a duplicate (counted), never a loss.
 *
 * Waiting is the broker's own: a record not yet due is nacked with `delayMs = due - now`, which
 * on NATS is a JetStream nak with delay (the server redelivers it at the due time, per message)
 * and on Kafka pauses the record's partition until its head is due (the adapter's nack rewinds
 * and schedules the partition on its Scheduler). So there is no timer here, no in-memory index
 * of held messages, and nothing to rebuild after a restart.
 *
 * Tiers: a Kafka partition can only wait for its head, so a record due in an hour must not sit
 * in front of one due in a second. A backend therefore offers tiers: a record goes to the tier
 * with the longest span not longer than its remaining delay, waits there at most that span
 * (records of one tier are in due order up to clock skew, because they all wait the same span),
 * then moves on to the tier for what remains (a "hop"), RocketMQ 4 style. A hop counts the
 * next wait from when the record was due to leave, so hop latency does not accumulate. The last part (less
 * than the shortest span) waits in the exact tier (span Infinity) until its due time. NATS has
 * per-message redelivery times, so it uses the exact tier alone.
 *
 * Transactions: a prepared message is held with its immunity deadline as due time, so it is
 * committed at that deadline by whichever gateway runs the mover, even after the gateway that
 * prepared it stopped. How EndTransaction finishes it early is the backend's business: NATS
 * deletes the held record by sequence (after publishing it, or instead); Kafka cannot delete a
 * record, so commit publishes the message and then writes a decision record, rollback writes
 * one, to a decisions topic every mover reads in full (`HoldingBackend.decisions`); a mover
 * drops a held transaction whose decision it has seen, and commits an undecided one only
 * DECISION_GRACE_MS after its deadline, so a decision written before the deadline is seen first.
 */
export interface HoldingTier {
  /** The internal topic of this tier. */
  readonly topic: string;
  /** How long a record waits in this tier at most; Infinity: until its due time. */
  readonly spanMs: number;
}

/** What the holding stored: an adapter-specific reference to the record (NATS: stream sequence). */
export interface StoredRecord {
  readonly ref?: number | undefined;
}

export interface HoldingBackend {
  /** The broker's name for messages ('Kafka', 'NATS JetStream'). */
  readonly broker: string;
  /** Exactly one tier with spanMs Infinity; the others finite. */
  readonly tiers: readonly HoldingTier[];
  /** Writes a holding record to a tier's topic; resolves once the broker stored it. */
  store(tier: HoldingTier, record: OutgoingMessage, held: HeldMessage): Promise<StoredRecord>;
  /** Publishes the held message to its target topic with its id; `duplicate` if it was there already. */
  release(held: HeldMessage): Promise<{ duplicate: boolean }>;
  /** A subscription of the shared mover group on a tier's topic. */
  subscribe(tier: HoldingTier, group: string): Promise<Subscription>;
  /**
   * Set where a nack rewinds the record's whole partition (Kafka): every delivery of it handed
   * out after the nacked one is void and comes back. `laneKey` names the partition of a delivery;
   * the mover then handles a partition's records one at a time and skips the voided ones, so a
   * record is never moved while an earlier one of its partition waits (which would move it twice).
   * `isVoid` tells whether a rewind has already dropped a delivery: one handed out just before a
   * rewind can reach the mover just after it, and moving it would move its record twice (the
   * rewind delivers it again).
   */
  readonly rewind?: { laneKey(d: Delivery): string; isVoid(d: Delivery): boolean };
  /** Where transaction decisions are kept as records (brokers that cannot delete a held record). */
  readonly decisions?: {
    write(record: OutgoingMessage): Promise<void>;
    /** A subscription reading every decision from the start (a group of this process's own). */
    subscribe(): Promise<Subscription>;
  };
}

/** An undecided transaction is committed this long after its immunity deadline (decision records only). */
export const DECISION_GRACE_MS = 2_000;
/** Decisions are remembered this long after they were read. */
const DECISION_MEMORY_MS = 24 * 3_600_000;

/** Lateness buckets (ms, upper bounds) of released messages; the last bucket is everything above. */
export const LATENESS_BUCKETS_MS = [10, 50, 100, 250, 500, 1000, 5000] as const;

export interface HoldingStats {
  /** Messages written to the holding storage by this process, by kind (hops not included). */
  heldDelay: number;
  heldTransaction: number;
  /** Held messages this process published to their target topic. */
  moved: number;
  /** Records moved from one tier to a shorter one. */
  hops: number;
  /** Moves that were (or will be) done twice: a release the broker saw before, or an ack that came too late. */
  duplicates: number;
  /** Records in a holding topic that are not holding records (acked and dropped). */
  malformed: number;
  /** Release or hop attempts that failed and were retried. */
  failures: number;
  /** How late releases were (publish done minus due time). */
  latenessCount: number;
  latenessSumMs: number;
  latenessMaxMs: number;
  /** Count per LATENESS_BUCKETS_MS bucket, plus one for above the last bound. */
  latenessBuckets: number[];
}

export interface HoldingOptions {
  log?: BrokerLog | undefined;
  /** The consumer group every gateway's mover shares. */
  group?: string | undefined;
  /** Records moved at once (different keys); a key's records move one at a time. */
  concurrency?: number | undefined;
}

export const HOLDING_GROUP = 'mqgate-holding';

type Plan =
  | { kind: 'drop' }
  | { kind: 'wait'; releaseAt: number }
  | { kind: 'move'; held: HeldMessage; dueAt: number; releaseAt: number };

interface PartitionMoves {
  readonly moving: Set<Promise<void>>;
  nacking: boolean;
  /** Deliveries skipped while a nack was pending: void once it rewinds the partition. */
  skipped: Delivery[];
}
/** A release or hop that failed is retried after this long. */
const FAILED_MOVE_RETRY_MS = 1_000;

function ignoreNotFound(err: unknown): void {
  if (isMqError(err) && (err.code === 'NOT_FOUND' || err.code === 'CLOSED')) return;
  throw err;
}

export class Holding {
  readonly stats: HoldingStats = {
    heldDelay: 0,
    heldTransaction: 0,
    moved: 0,
    hops: 0,
    duplicates: 0,
    malformed: 0,
    failures: 0,
    latenessCount: 0,
    latenessSumMs: 0,
    latenessMaxMs: 0,
    latenessBuckets: new Array<number>(LATENESS_BUCKETS_MS.length + 1).fill(0),
  };

  /** The figures the gateway exports for this broker (`mqgate_broker_held_*`, `..._holding_*`). */
  counters(): BrokerCounters {
    const s = this.stats;
    return {
      heldDelay: s.heldDelay,
      heldTransaction: s.heldTransaction,
      holdingMoves: s.moved,
      holdingDuplicates: s.duplicates,
      holdingLatenessSumMs: s.latenessSumMs,
      holdingLatenessCount: s.latenessCount,
    };
  }
  readonly #backend: HoldingBackend;
  readonly #log: BrokerLog | undefined;
  readonly #group: string;
  readonly #exact: HoldingTier;
  /** Finite tiers, longest span first. */
  readonly #finite: HoldingTier[];
  readonly #lanes: KeyedLanes;
  readonly #abort = new AbortController();
  readonly #subscriptions = new Set<Subscription>();
  #loops: Promise<void>[] | undefined;
  /** Backends with `rewind`: moves and nacks per partition (lane key). */
  readonly #partitions = new Map<string, PartitionMoves>();
  /** Moves and nacks started outside the lanes, awaited by close(). */
  readonly #tasks = new Set<Promise<unknown>>();
  /** Transaction decisions read from the decisions topic, in read order (for pruning). */
  readonly #decided = new Map<string, { decision: Decision; at: number }>();
  #closing: Promise<void> | undefined;

  constructor(backend: HoldingBackend, options: HoldingOptions = {}) {
    this.#backend = backend;
    this.#log = options.log;
    this.#group = options.group ?? HOLDING_GROUP;
    const exact = backend.tiers.filter((t) => t.spanMs === Number.POSITIVE_INFINITY);
    if (exact.length !== 1) throw new Error('a holding backend needs exactly one tier with spanMs Infinity');
    this.#exact = exact[0] as HoldingTier;
    this.#finite = backend.tiers.filter((t) => Number.isFinite(t.spanMs)).sort((a, b) => b.spanMs - a.spanMs);
    const concurrency = options.concurrency ?? 16;
    this.#lanes = new KeyedLanes({
      lanes: concurrency,
      queueSize: 4,
      onError: (err) => this.#log?.error({ err: errorMessage(err) }, 'holding move failed unexpectedly'),
    });
  }

  /** Whether the movers run (started by start(), or by the first hold()). */
  get started(): boolean {
    return this.#loops !== undefined;
  }

  /** The tier a record with `remainingMs` to wait goes to. */
  tierFor(remainingMs: number): HoldingTier {
    for (const t of this.#finite) if (t.spanMs <= remainingMs) return t;
    return this.#exact;
  }

  /**
   * Holds a message until `dueAt` on the broker; starts the movers if they do not run yet.
   * Resolves once the broker stored it.
   */
  async hold(
    topic: string,
    message: OutgoingMessage,
    options: { id: string; kind: HeldKind; dueAt: number; txId?: string | undefined },
  ): Promise<StoredRecord> {
    if (this.#closing !== undefined) throw new ClosedError(`${this.#backend.broker} holding is closed`);
    checkHoldable(message);
    const held: HeldMessage = {
      id: options.id,
      topic,
      kind: options.kind,
      dueAt: options.dueAt,
      heldAt: Date.now(),
      txId: options.txId,
      body: message.body,
      key: message.key,
      tag: message.tag,
      businessKey: message.businessKey,
      properties: message.properties ?? {},
    };
    this.start();
    const stored = await this.#store(held);
    if (options.kind === 'delay') this.stats.heldDelay++;
    else this.stats.heldTransaction++;
    return stored;
  }

  /** When a held record is released: its due time, plus the grace where decisions are records. */
  #releaseTime(held: HeldMessage): number {
    return held.kind === 'transaction' && this.#backend.decisions !== undefined
      ? held.dueAt + DECISION_GRACE_MS
      : held.dueAt;
  }

  #store(held: HeldMessage): Promise<StoredRecord> {
    const tier = this.tierFor(this.#releaseTime(held) - held.heldAt);
    return this.#backend.store(tier, encodeHeld(held), held);
  }

  /** Starts one mover per tier (idempotent); they retry on their own until close(). */
  start(): void {
    if (this.#loops !== undefined || this.#closing !== undefined) return;
    this.#loops = this.#backend.tiers.map((t) =>
      this.#consume(
        t.topic,
        () => this.#backend.subscribe(t, this.#group),
        (d) => this.#handle(t, d),
        this.#backend.rewind === undefined ? undefined : t,
      ),
    );
    const decisions = this.#backend.decisions;
    if (decisions !== undefined) {
      this.#loops.push(
        this.#consume(
          'decisions',
          () => decisions.subscribe(),
          (d) => this.#decision(d),
        ),
      );
    }
  }

  /** Records a transaction's outcome where the backend keeps decision records. */
  async decide(txId: string, decision: Decision): Promise<void> {
    const decisions = this.#backend.decisions;
    if (decisions === undefined) throw new Error('this holding backend keeps no decision records');
    if (this.#closing !== undefined) throw new ClosedError(`${this.#backend.broker} holding is closed`);
    this.start();
    await decisions.write(encodeDecision(txId, decision));
  }

  async #decision(d: Delivery): Promise<void> {
    const r = decodeDecision(d.message);
    if (r !== undefined) {
      const now = Date.now();
      this.#decided.delete(r.txId);
      this.#decided.set(r.txId, { decision: r.decision, at: now });
      for (const [tx, v] of this.#decided) {
        if (now - v.at < DECISION_MEMORY_MS) break;
        this.#decided.delete(tx);
      }
    }
    await d.ack().catch(ignoreNotFound);
  }

  async #consume(
    what: string,
    subscribe: () => Promise<Subscription>,
    handle: (d: Delivery) => Promise<void>,
    /** Set for a tier of a backend whose nack rewinds a partition: see #dispatchPartitioned. */
    partitioned?: HoldingTier,
  ): Promise<void> {
    const signal = this.#abort.signal;
    const backoff = new Backoff(BROKER_RETRY);
    while (!signal.aborted) {
      let sub: Subscription;
      try {
        sub = await subscribe();
      } catch (err) {
        if (signal.aborted) return;
        const wait = backoff.next();
        this.#log?.warn(
          { err: errorMessage(err), topic: what, failures: backoff.failures },
          'holding mover cannot subscribe; retrying',
        );
        await delay(wait, signal).catch(() => {});
        continue;
      }
      backoff.reset();
      this.#subscriptions.add(sub);
      try {
        if (signal.aborted) return;
        const rewind = this.#backend.rewind;
        for await (const d of sub) {
          if (partitioned !== undefined && rewind !== undefined) {
            // Rewound already: the partition hands this record out again, from its rewind point.
            if (rewind.isVoid(d)) continue;
            this.#dispatchPartitioned(partitioned, `${what}\u0000${rewind.laneKey(d)}`, d);
            continue;
          }
          await this.#lanes.submit(() => handle(d), { key: d.message.key, signal });
        }
      } catch (err) {
        if (!signal.aborted)
          this.#log?.warn({ err: errorMessage(err), topic: what }, 'holding mover stopped; restarting');
      } finally {
        this.#subscriptions.delete(sub);
        await sub.close().catch(() => {});
      }
    }
  }

  /**
   * Kafka-style backends, where a nack rewinds the record's partition: a partition's due records
   * are moved concurrently (their publishes share produce requests), in offset order as handed
   * out. The first record not due yet waits until every earlier move of its partition settled,
   * then is nacked with its remaining delay; the records handed out after it are void (the rewind
   * drops them and delivers them again), so they are skipped until the nack is sent.
   */
  #dispatchPartitioned(tier: HoldingTier, key: string, d: Delivery): void {
    // Closing: no new move; the subscription gives the record back when it closes.
    if (this.#abort.signal.aborted) return;
    let state = this.#partitions.get(key);
    if (state === undefined) {
      state = { moving: new Set(), nacking: false, skipped: [] };
      this.#partitions.set(key, state);
    }
    const st = state;
    if (st.nacking) {
      st.skipped.push(d);
      return;
    }
    const plan = this.#plan(tier, d);
    if (plan.kind === 'wait') {
      this.#nackPartition(st, d, () => plan.releaseAt - Date.now());
      return;
    }
    const move = this.#execute(d, plan).then((ok) => {
      st.moving.delete(move);
      if (!ok) this.#nackPartition(st, d, () => FAILED_MOVE_RETRY_MS);
    });
    st.moving.add(move);
    this.#track(move);
  }

  #nackPartition(st: PartitionMoves, d: Delivery, delayMs: () => number): void {
    // Already nacking: that rewind voids this delivery too.
    if (st.nacking) return;
    st.nacking = true;
    const earlier = [...st.moving];
    this.#track(
      (async () => {
        try {
          await Promise.allSettled(earlier);
          // The rewind happens when nack() is called: what is handed out from then on is valid
          // again (a delivery skipped after it would never be settled).
          const sent = d.nack({ delayMs: Math.max(0, delayMs()) });
          const skipped = st.skipped;
          st.skipped = [];
          st.nacking = false;
          try {
            await sent;
          } catch (err) {
            ignoreNotFound(err);
            // d itself was void (handed out before an earlier rewind), so nothing was rewound and
            // the deliveries skipped meanwhile may be live: give back the oldest live one, which
            // rewinds the partition to it (the skipped ones were never moved, so nothing moves twice).
            for (const s of skipped) {
              try {
                await s.nack({ delayMs: 0 });
                break;
              } catch (e) {
                ignoreNotFound(e);
              }
            }
          }
        } finally {
          st.nacking = false;
        }
      })(),
    );
  }

  #track(p: Promise<unknown>): void {
    this.#tasks.add(p);
    p.then(
      () => this.#tasks.delete(p),
      () => this.#tasks.delete(p),
    );
  }

  /** What to do with a holding record now. */
  #plan(tier: HoldingTier, d: Delivery): Plan {
    const held = decodeHeld(d.message);
    if (held === undefined) {
      this.stats.malformed++;
      this.#log?.warn({ topic: tier.topic, id: d.message.id }, 'not a holding record; dropped');
      return { kind: 'drop' };
    }
    if (
      held.kind === 'transaction' &&
      this.#backend.decisions !== undefined &&
      held.txId !== undefined &&
      this.#decided.has(held.txId)
    ) {
      // Committed (commit() published it) or rolled back: nothing left to move.
      return { kind: 'drop' };
    }
    const dueAt = this.#releaseTime(held);
    const releaseAt = Number.isFinite(tier.spanMs) ? Math.min(dueAt, held.heldAt + tier.spanMs) : dueAt;
    if (releaseAt > Date.now()) return { kind: 'wait', releaseAt };
    return { kind: 'move', held, dueAt, releaseAt };
  }

  async #handle(tier: HoldingTier, d: Delivery): Promise<void> {
    const plan = this.#plan(tier, d);
    if (plan.kind === 'wait') {
      await d.nack({ delayMs: Math.max(0, plan.releaseAt - Date.now()) }).catch(ignoreNotFound);
      return;
    }
    if (!(await this.#execute(d, plan))) {
      await d.nack({ delayMs: FAILED_MOVE_RETRY_MS }).catch(ignoreNotFound);
    }
  }

  /** Drops, hops or releases, then acks; false when the move failed (the record is not acked). */
  async #execute(d: Delivery, plan: Exclude<Plan, { kind: 'wait' }>): Promise<boolean> {
    if (plan.kind === 'drop') {
      await d.ack().catch(ignoreNotFound);
      return true;
    }
    const { held, dueAt, releaseAt } = plan;
    const now = Date.now();
    try {
      if (dueAt > now) {
        // heldAt is when it was due to leave this tier, not now: the next tier's wait is counted
        // from there, so the time a hop takes is absorbed instead of adding up over the hops.
        await this.#store({ ...held, heldAt: releaseAt });
        this.stats.hops++;
      } else {
        const r = await this.#backend.release(held);
        this.stats.moved++;
        if (r.duplicate) this.stats.duplicates++;
        this.#lateness(Date.now() - dueAt);
      }
    } catch (err) {
      this.stats.failures++;
      this.#log?.warn(
        { err: errorMessage(err), id: held.id, topic: held.topic },
        'holding move failed; retrying',
      );
      return false;
    }
    try {
      await d.ack();
    } catch (err) {
      // The record is delivered again (its subscription closed, or a rebalance took it): the
      // move will be done a second time.
      ignoreNotFound(err);
      this.stats.duplicates++;
    }
    return true;
  }

  #lateness(ms: number): void {
    const late = Math.max(0, ms);
    const s = this.stats;
    s.latenessCount++;
    s.latenessSumMs += late;
    if (late > s.latenessMaxMs) s.latenessMaxMs = late;
    let i = 0;
    while (i < LATENESS_BUCKETS_MS.length && late > (LATENESS_BUCKETS_MS[i] as number)) i++;
    s.latenessBuckets[i] = (s.latenessBuckets[i] ?? 0) + 1;
  }

  /** Stops the movers; records they held go back to the broker for another mover. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    this.#abort.abort();
    const lanes = this.#lanes.close({ abort: true });
    // Moves under way finish and ack first, so their subscriptions commit them on close rather
    // than leave them to be moved again by the next mover.
    await Promise.allSettled([...this.#tasks]);
    await Promise.allSettled([...this.#subscriptions].map((s) => s.close()));
    await Promise.allSettled(this.#loops ?? []);
    await Promise.allSettled([...this.#tasks]);
    await lanes;
  }
}
