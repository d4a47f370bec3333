/**
 * The one retry wait of the project: exponential, capped, with jitter. Every loop that retries
 * (a broker pull loop, the holding mover, a publish retry, the SDK's reconnects) takes its wait
 * from here, so a change to how the project backs off is made once.
 */

export interface BackoffPolicy {
  /** The first retry's wait (its ceiling, with jitter). */
  readonly initialMs: number;
  /** No wait is longer than this. */
  readonly maxMs: number;
  /** Growth per failed attempt; default 2. */
  readonly factor?: number | undefined;
  /**
   * full: uniform in [0, ceiling), which spreads many clients reconnecting after a restart best;
   * equal: uniform in [ceiling / 2, ceiling), spread out but never an immediate retry (a server
   * loop that retries at once against a broker that is down spins);
   * none: the ceiling itself, for waits a caller asked for by number (a bus retry delay).
   */
  readonly jitter?: 'full' | 'equal' | 'none' | undefined;
}

/** The wait before retry number `attempt` (0 for the first retry). */
export function backoffDelay(policy: BackoffPolicy, attempt: number): number {
  const factor = policy.factor ?? 2;
  // Bounded exponent: factor ** attempt overflows to Infinity for long outages, and the cap is
  // reached long before 30 doublings anyway.
  const ceiling = Math.min(policy.maxMs, policy.initialMs * factor ** Math.min(Math.max(0, attempt), 30));
  switch (policy.jitter ?? 'full') {
    case 'none':
      return ceiling;
    case 'equal':
      return ceiling / 2 + Math.random() * (ceiling / 2);
    default:
      return Math.random() * ceiling;
  }
}

/** A retry loop's count of consecutive failures, and the wait each one earns. */
export class Backoff {
  #failures = 0;

  constructor(readonly policy: BackoffPolicy) {}

  /** Counts a failure and returns how long to wait before the next try. */
  next(): number {
    return backoffDelay(this.policy, this.#failures++);
  }

  /** A success: the next failure waits the initial time again. */
  reset(): void {
    this.#failures = 0;
  }

  get failures(): number {
    return this.#failures;
  }
}

/** The broker adapters' pull and subscribe loops: 200 ms doubling to 5 s, never at once. */
export const BROKER_RETRY: BackoffPolicy = { initialMs: 200, maxMs: 5_000, jitter: 'equal' };
