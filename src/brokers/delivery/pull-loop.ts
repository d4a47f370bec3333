import { Backoff, type BackoffPolicy } from '../../core/backoff.js';
import { errorMessage } from '../../core/errors.js';
import { delay, type Notifier } from '../../core/lifecycle.js';
import type { BrokerLog } from '../broker.js';

/** What to do after a failed pull. */
export type PullFailure =
  /** Wait the backoff, then pull again (the broker is away: a restart, a network blip). */
  | 'retry'
  /** Pull again at once: the failure taught the adapter something (e.g. a server's minimum). */
  | 'again'
  /** A permanent mistake (a missing topic, a refused credential): the loop ends with it. */
  | { readonly end: Error };

export interface PullLoopOptions<W> {
  /** Aborted by the subscription's close(): ends the loop, its waits and its pull. */
  readonly signal: AbortSignal;
  /** Notified when room may have appeared (a settle, a reconnect). */
  readonly wake: Notifier;
  readonly backoff: BackoffPolicy;
  /** What to pull now (e.g. how many), or undefined to wait for `wake`: no room, or disconnected. */
  ready(): W | undefined;
  /** One pull; hands what it receives to the subscription itself. */
  pull(work: W, signal: AbortSignal): Promise<void>;
  /** A pull failed while the loop runs; its outcome. */
  failed(err: unknown, work: W): PullFailure | Promise<PullFailure>;
  /** Where a retried failure is logged, with `context`. */
  readonly log: BrokerLog | undefined;
  readonly context: object;
  /** Names the pull in the log ("nats pull", "rocketmq receive"). */
  readonly what: string;
}

/**
 * The pull loop of a subscription: pull only while there is room, wait for room without polling,
 * back off with jitter after a failure and start over after a success, end on close or on a
 * permanent error (returned, for the subscription to hand to its reader).
 *
 * Flow control is the caller's `ready()`: a subscription that counts everything it pulled and has
 * not settled, and pulls at most the difference to its maxInFlight, never buffers without bound.
 */
export async function runPullLoop<W>(o: PullLoopOptions<W>): Promise<Error | undefined> {
  const { signal } = o;
  const backoff = new Backoff(o.backoff);
  while (!signal.aborted) {
    const work = o.ready();
    if (work === undefined) {
      await o.wake.wait(signal).catch(() => {});
      continue;
    }
    try {
      await o.pull(work, signal);
      backoff.reset();
    } catch (err) {
      if (signal.aborted) break;
      const outcome = await o.failed(err, work);
      if (outcome === 'again') continue;
      if (outcome !== 'retry') return outcome.end;
      const wait = backoff.next();
      o.log?.warn(
        { ...o.context, err: errorMessage(err), failures: backoff.failures, retryInMs: Math.round(wait) },
        `${o.what} failed; retrying`,
      );
      await delay(wait, signal).catch(() => {});
    }
  }
  return undefined;
}
