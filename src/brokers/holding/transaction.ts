import { MqError } from '../../core/errors.js';
import type { PreparedTransaction } from '../broker.js';

/** Immunity of a prepared message when the caller gives none (the gateway always gives one). */
export const DEFAULT_IMMUNITY_MS = 60_000;

/**
 * The state of a transaction prepared through the holding mechanism, the same for every
 * backend: repeating the same decision is harmless (and shares the first call's promise), the
 * other decision after one is FAILED_PRECONDITION, and a decision that failed can be retried.
 */
export function heldTransaction(
  messageId: string,
  transactionId: string,
  finish: { commit(): Promise<void>; rollback(): Promise<void> },
): PreparedTransaction {
  let state: 'prepared' | 'committed' | 'rolled back' = 'prepared';
  let finishing: Promise<void> | undefined;
  const decide = (commit: boolean): Promise<void> => {
    const wanted = commit ? 'committed' : 'rolled back';
    if (state === wanted) return finishing ?? Promise.resolve();
    if (state !== 'prepared') {
      return Promise.reject(
        new MqError(
          'FAILED_PRECONDITION',
          `transaction ${transactionId} was already ${state}; it cannot be ${wanted}`,
        ),
      );
    }
    state = wanted;
    const run = commit ? finish.commit() : finish.rollback();
    finishing = run;
    run.catch(() => {
      if (finishing === run) {
        state = 'prepared';
        finishing = undefined;
      }
    });
    return run;
  };
  return { messageId, transactionId, commit: () => decide(true), rollback: () => decide(false) };
}
