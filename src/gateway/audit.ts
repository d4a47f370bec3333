import type { Logger } from './log.js';

/** Why a call or a connection was refused. */
export type RefusalReason = 'auth' | 'ownership' | 'permission' | 'quota';

export const REFUSAL_REASONS: readonly RefusalReason[] = ['auth', 'ownership', 'permission', 'quota'];

/** Distinct (reason, who) pairs logged per interval; more are counted, and summed up once. */
const MAX_KEYS_PER_INTERVAL = 1000;

/**
 * The audit trail of refusals. Every refusal is counted (mqgate_refusals_total{reason}); each
 * (reason, who) pair is logged once per interval, so a client hammering the gateway with a bad
 * token costs one log line a minute, not one per call. `who` is a principal name or a peer
 * address, never a token or a secret.
 */
export class Audit {
  readonly counts: Record<RefusalReason, number> = { auth: 0, ownership: 0, permission: 0, quota: 0 };
  readonly #log: Logger;
  readonly #intervalMs: number;
  readonly #now: () => number;
  #seen = new Map<string, number>();
  #since = 0;
  #suppressed = 0;

  constructor(log: Logger, options: { intervalMs?: number; now?: () => number } = {}) {
    this.#log = log;
    this.#intervalMs = options.intervalMs ?? 60_000;
    this.#now = options.now ?? Date.now;
    this.#since = this.#now();
  }

  refuse(reason: RefusalReason, who: string, detail: string): void {
    this.counts[reason]++;
    const now = this.#now();
    if (now - this.#since >= this.#intervalMs) this.#roll(now);
    const key = `${reason}\u0000${who}`;
    const n = this.#seen.get(key);
    if (n !== undefined) {
      this.#seen.set(key, n + 1);
      return;
    }
    if (this.#seen.size >= MAX_KEYS_PER_INTERVAL) {
      this.#suppressed++;
      return;
    }
    this.#seen.set(key, 1);
    this.#log.warn({ reason, who, detail: detail.slice(0, 300) }, `refused: ${reason}`);
  }

  #roll(now: number): void {
    let repeats = 0;
    for (const n of this.#seen.values()) repeats += n - 1;
    if (repeats > 0 || this.#suppressed > 0) {
      this.#log.warn(
        { repeats, suppressed: this.#suppressed, intervalMs: this.#intervalMs },
        'refusals not logged individually in the last interval (each caller and reason is logged once per interval)',
      );
    }
    this.#seen = new Map();
    this.#suppressed = 0;
    this.#since = now;
  }
}
