import { backoffDelay as waitFor } from '../core/backoff.js';
import { InvalidArgumentError, toMqError } from '../core/errors.js';
import { delay } from '../core/lifecycle.js';

export interface BackoffOptions {
  /** First retry waits up to this long. Default 100 ms. */
  initialDelayMs?: number;
  /** Cap on any one wait. Default 2 s. */
  maxDelayMs?: number;
  /** Attempts in all, the first included. */
  maxAttempts?: number;
}

export interface ResolvedBackoff {
  initialDelayMs: number;
  maxDelayMs: number;
  maxAttempts: number;
}

export function resolveBackoff(options: BackoffOptions | undefined, maxAttempts: number): ResolvedBackoff {
  const r = {
    initialDelayMs: options?.initialDelayMs ?? 100,
    maxDelayMs: options?.maxDelayMs ?? 2000,
    maxAttempts: options?.maxAttempts ?? maxAttempts,
  };
  if (!(r.initialDelayMs > 0) || !(r.maxDelayMs >= r.initialDelayMs) || !(r.maxAttempts >= 1)) {
    throw new InvalidArgumentError(
      'retry options need initialDelayMs > 0, maxDelayMs >= initialDelayMs and maxAttempts >= 1',
    );
  }
  return r;
}

/**
 * Exponential backoff with full jitter: a uniform wait in [0, min(cap, initial * 2^attempt)).
 * Full jitter spreads the reconnects of many clients after a gateway restart instead of having
 * them arrive in waves.
 */
export function backoffDelay(b: ResolvedBackoff, attempt: number): number {
  return waitFor({ initialMs: b.initialDelayMs, maxMs: b.maxDelayMs, jitter: 'full' }, attempt);
}

/**
 * Runs `fn` until it succeeds, fails with a non-retryable error, or uses up the attempts, waiting
 * with backoff between attempts. The signal ends the waits (and is the caller's to pass into fn).
 */
export async function retrying<T>(
  backoff: ResolvedBackoff,
  signal: AbortSignal | undefined,
  fn: () => Promise<T>,
): Promise<T> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await fn();
    } catch (err) {
      const e = toMqError(err);
      if (!e.retryable || attempt + 1 >= backoff.maxAttempts) throw e;
      await delay(backoffDelay(backoff, attempt), signal);
    }
  }
}
