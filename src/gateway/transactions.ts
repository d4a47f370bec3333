import { randomUUID } from 'node:crypto';
import type { PreparedTransaction } from '../brokers/broker.js';
import { MqError, NotFoundError } from '../core/errors.js';
import { type ScheduledTask, Scheduler } from '../core/scheduler.js';
import type { Logger } from './log.js';
import type { GatewayMetrics } from './metrics.js';

interface Pending {
  readonly id: string;
  readonly prepared: PreparedTransaction;
  readonly task: ScheduledTask;
}

/**
 * Half messages awaiting EndTransaction. A transaction left unresolved past its
 * trans_check_immunity_time is committed, so clients that never call EndTransaction (every
 * client of the original gateway) still see their message. Deadlines share one scheduler.
 */
export class TransactionRegistry {
  readonly #pending = new Map<string, Pending>();
  /** Outcomes of recently finished transactions, so a late EndTransaction gets a clear answer. */
  readonly #finished = new Map<string, 'committed' | 'rolled back' | 'auto-committed'>();
  readonly #scheduler: Scheduler;
  readonly #metrics: GatewayMetrics;
  readonly #log: Logger;

  constructor(metrics: GatewayMetrics, log: Logger) {
    this.#metrics = metrics;
    this.#log = log;
    this.#scheduler = new Scheduler({ onError: (err) => log.error({ err }, 'transaction timer failed') });
  }

  get size(): number {
    return this.#pending.size;
  }

  add(prepared: PreparedTransaction, immunityMs: number): string {
    const id = prepared.transactionId || randomUUID();
    const task = this.#scheduler.after(immunityMs, () => {
      if (this.#pending.get(id)?.prepared !== prepared) return;
      this.#pending.delete(id);
      prepared.commit().then(
        () => {
          this.#remember(id, 'auto-committed');
          this.#metrics.counts.transactionsAutoCommitted++;
        },
        (err) =>
          this.#log.error({ err, transactionId: id }, 'auto-commit of an unresolved transaction failed'),
      );
    });
    this.#pending.set(id, { id, prepared, task });
    return id;
  }

  async end(id: string, commit: boolean): Promise<void> {
    const p = this.#pending.get(id);
    if (!p) {
      const outcome = this.#finished.get(id);
      const wanted = commit ? 'committed' : 'rolled back';
      if (outcome === wanted || (commit && outcome === 'auto-committed')) return;
      if (outcome) {
        throw new MqError(
          'FAILED_PRECONDITION',
          `transaction "${id}" was already ${outcome}` +
            (outcome === 'auto-committed' ? ' after its trans_check_immunity_time passed' : ''),
        );
      }
      throw new NotFoundError(`transaction "${id}" not found: unknown id, or resolved long ago`);
    }
    this.#pending.delete(id);
    p.task.cancel();
    if (commit) {
      await p.prepared.commit();
      this.#metrics.counts.transactionsCommitted++;
    } else {
      await p.prepared.rollback();
      this.#metrics.counts.transactionsRolledBack++;
    }
    this.#remember(id, commit ? 'committed' : 'rolled back');
  }

  /**
   * Stops the deadlines. Unresolved transactions stay unresolved at the broker: a durable broker's
   * own transaction check decides them; the embedded broker loses them with everything else.
   */
  close(): void {
    this.#scheduler.close();
    this.#pending.clear();
    this.#finished.clear();
  }

  #remember(id: string, outcome: 'committed' | 'rolled back' | 'auto-committed'): void {
    this.#finished.set(id, outcome);
    if (this.#finished.size > 10_000) {
      const oldest = this.#finished.keys().next().value;
      if (oldest !== undefined) this.#finished.delete(oldest);
    }
  }
}
