import { randomUUID } from 'node:crypto';
import type { PreparedTransaction } from '../brokers/broker.js';
import { BoundedMap } from '../core/bounded.js';
import { MqError, NotFoundError, quoteInput } from '../core/errors.js';
import { type ScheduledTask, Scheduler } from '../core/scheduler.js';
import type { Audit } from './audit.js';
import type { Caller } from './callers.js';
import type { Logger } from './log.js';
import type { GatewayMetrics } from './metrics.js';
import { type Owned, OwnedMap } from './owned.js';
import { Quota } from './quota.js';

interface Pending extends Owned {
  readonly quotaKey: string;
  readonly prepared: PreparedTransaction;
  readonly task: ScheduledTask;
}

type Outcome = 'committed' | 'rolled back' | 'auto-committed';

const notFound = (id: string): NotFoundError =>
  new NotFoundError(`transaction ${quoteInput(id)} not found: unknown id, or resolved long ago`);

export interface TransactionRegistryOptions {
  maxPerCaller: number;
  maxPending: number;
  metrics: GatewayMetrics;
  audit: Audit;
  log: Logger;
}

/**
 * Half messages awaiting EndTransaction. A transaction left unresolved past its
 * trans_check_immunity_time is committed, so clients that never call EndTransaction still see
 * their message. Deadlines share one scheduler.
 *
 * A transaction id is random and owned by the principal that sent the message; it is never the
 * broker's message id, which is guessable from one's own ids on some brokers.
 */
export class TransactionRegistry {
  readonly #pending: OwnedMap<Pending>;
  /** Outcomes of recently finished transactions, so a late EndTransaction gets a clear answer. */
  readonly #finished = new BoundedMap<string, { owner: string; outcome: Outcome }>(10_000);
  readonly #quota: Quota;
  readonly #scheduler: Scheduler;
  readonly #metrics: GatewayMetrics;
  readonly #log: Logger;

  constructor(options: TransactionRegistryOptions) {
    this.#metrics = options.metrics;
    this.#log = options.log;
    this.#pending = new OwnedMap('transaction', notFound, options.audit);
    this.#quota = new Quota(
      'pending transactions',
      { limit: options.maxPerCaller, setting: 'MAX_TRANSACTIONS_PER_CALLER' },
      { limit: options.maxPending, setting: 'MAX_PENDING_TRANSACTIONS' },
      options.audit,
    );
    this.#scheduler = new Scheduler({
      onError: (err) => options.log.error({ err }, 'transaction timer failed'),
    });
  }

  get size(): number {
    return this.#pending.size;
  }

  /** Reserves the caller's room for one more pending transaction before its half message is sent. */
  reserve(caller: Caller): void {
    this.#quota.acquire(caller.quotaKey, caller.label, 'commit or roll back some with EndTransaction');
  }

  /** Gives back a reservation whose half message could not be sent. */
  unreserve(caller: Caller): void {
    this.#quota.release(caller.quotaKey);
  }

  /** Registers a prepared (and reserved) transaction; returns its id. */
  add(caller: Caller, prepared: PreparedTransaction, immunityMs: number): string {
    const id = randomUUID();
    const task = this.#scheduler.after(immunityMs, () => {
      const p = this.#pending.find(id, caller.owner);
      if (p?.prepared !== prepared) return;
      this.#forget(p);
      prepared.commit().then(
        () => {
          this.#remember(p, 'auto-committed');
          this.#metrics.counts.transactionsAutoCommitted++;
        },
        (err) =>
          this.#log.error({ err, transactionId: id }, 'auto-commit of an unresolved transaction failed'),
      );
    });
    this.#pending.add({ id, owner: caller.owner, quotaKey: caller.quotaKey, prepared, task });
    return id;
  }

  async end(id: string, owner: string, commit: boolean): Promise<void> {
    const p = this.#pending.find(id, owner);
    if (!p) {
      const done = this.#finished.get(id);
      const outcome = done?.owner === owner ? done.outcome : undefined;
      const wanted = commit ? 'committed' : 'rolled back';
      if (outcome === wanted || (commit && outcome === 'auto-committed')) return;
      if (outcome) {
        throw new MqError(
          'FAILED_PRECONDITION',
          `transaction ${quoteInput(id)} was already ${outcome}` +
            (outcome === 'auto-committed' ? ' after its trans_check_immunity_time passed' : ''),
        );
      }
      throw notFound(id);
    }
    this.#forget(p);
    p.task.cancel();
    if (commit) {
      await p.prepared.commit();
      this.#metrics.counts.transactionsCommitted++;
    } else {
      await p.prepared.rollback();
      this.#metrics.counts.transactionsRolledBack++;
    }
    this.#remember(p, commit ? 'committed' : 'rolled back');
  }

  /**
   * Stops the deadlines. Unresolved transactions stay unresolved at the broker: a durable broker's
   * own transaction check decides them; the embedded broker loses them with everything else.
   */
  close(): void {
    this.#scheduler.close();
    this.#pending.clear();
    this.#finished.clear();
    this.#quota.clear();
  }

  #forget(p: Pending): void {
    if (this.#pending.delete(p)) this.#quota.release(p.quotaKey);
  }

  #remember(p: Pending, outcome: Outcome): void {
    this.#finished.set(p.id, { owner: p.owner, outcome });
  }
}
