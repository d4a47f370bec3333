import { abortError, ClosedError, TimeoutError } from './errors.js';

/**
 * Runs every cleanup step even when an earlier one throws, then reports all failures at once.
 * One failing close must not leave the rest open (a connection or timer kept alive by it).
 */
export async function closeAll(steps: Iterable<(() => unknown) | undefined>): Promise<void> {
  const errors: unknown[] = [];
  for (const step of steps) {
    if (step === undefined) continue;
    try {
      await step();
    } catch (err) {
      errors.push(err);
    }
  }
  if (errors.length === 1) throw errors[0];
  if (errors.length > 1) throw new AggregateError(errors, `${errors.length} cleanup steps failed`);
}

/** Memoizes a close function so concurrent and repeated calls share one run. */
export function closeOnce(fn: () => Promise<void>): () => Promise<void> {
  let closing: Promise<void> | undefined;
  return () => {
    closing ??= Promise.resolve().then(fn);
    return closing;
  };
}

/** A promise that resolves when signalled; re-armable. Used for "wait until there is room". */
export class Notifier {
  #waiters: Array<() => void> = [];

  /** Resolves on the next notify(), or rejects when the signal aborts. */
  wait(signal?: AbortSignal): Promise<void> {
    if (signal?.aborted) return Promise.reject(abortError(signal, 'wait'));
    return new Promise<void>((resolve, reject) => {
      const onAbort = (): void => {
        const i = this.#waiters.indexOf(done);
        if (i >= 0) this.#waiters.splice(i, 1);
        reject(abortError(signal as AbortSignal, 'wait'));
      };
      const done = (): void => {
        signal?.removeEventListener('abort', onAbort);
        resolve();
      };
      this.#waiters.push(done);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  notifyAll(): void {
    const waiters = this.#waiters;
    if (waiters.length === 0) return;
    this.#waiters = [];
    for (const w of waiters) w();
  }

  get waiting(): number {
    return this.#waiters.length;
  }
}

/**
 * An unbounded FIFO with an async iterator. Bounding is the producer side's job (adapters only
 * pull from the broker while their in-flight count is below the cap), so this never drops.
 */
export class AsyncQueue<T> implements AsyncIterable<T> {
  #items: T[] = [];
  #head = 0;
  #ended = false;
  #error: unknown;
  #notifier = new Notifier();

  push(item: T): void {
    if (this.#ended) throw new ClosedError('queue is closed');
    this.#items.push(item);
    this.#notifier.notifyAll();
  }

  /** Ends the iteration after the queued items; with an error, iteration throws it instead. */
  end(error?: unknown): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#error = error;
    this.#notifier.notifyAll();
  }

  get size(): number {
    return this.#items.length - this.#head;
  }

  get ended(): boolean {
    return this.#ended;
  }

  /** Removes and returns everything queued (used to release undelivered items on close). */
  drain(): T[] {
    const rest = this.#items.slice(this.#head);
    this.#items = [];
    this.#head = 0;
    return rest;
  }

  async next(signal?: AbortSignal): Promise<IteratorResult<T, undefined>> {
    for (;;) {
      if (this.#head < this.#items.length) {
        const item = this.#items[this.#head] as T;
        this.#head++;
        if (this.#head > 1024 && this.#head * 2 > this.#items.length) {
          this.#items = this.#items.slice(this.#head);
          this.#head = 0;
        }
        return { value: item, done: false };
      }
      if (this.#ended) {
        if (this.#error !== undefined) throw this.#error;
        return { value: undefined, done: true };
      }
      await this.#notifier.wait(signal);
    }
  }

  [Symbol.asyncIterator](): AsyncIterator<T, undefined> {
    return {
      next: () => this.next(),
      return: async () => {
        this.end();
        return { value: undefined, done: true };
      },
    };
  }
}

/**
 * Sleeps; rejects with ABORTED when the signal fires. The timer is ref'd on purpose: a retry
 * waiting for its next attempt keeps the process alive, and a leak test sees a sleep nobody
 * cancelled.
 */
export function delay(ms: number, signal?: AbortSignal): Promise<void> {
  if (signal?.aborted) return Promise.reject(abortError(signal, 'delay'));
  return new Promise((resolve, reject) => {
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(abortError(signal as AbortSignal, 'delay'));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** Settles with `promise`, or rejects with ABORTED as soon as `signal` aborts (leaving no listener). */
export function abortable<T>(promise: Promise<T>, signal: AbortSignal | undefined, what: string): Promise<T> {
  if (!signal) return promise;
  if (signal.aborted) {
    // The work goes on; its failure is nobody's business now, and must not be an unhandled rejection.
    promise.catch(() => {});
    return Promise.reject(abortError(signal, what));
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => reject(abortError(signal, what));
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (err: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(err);
      },
    );
  });
}

/**
 * Resolves with `promise`, or rejects with TIMEOUT after `ms`; the promise keeps running and the
 * caller cleans up after it. The timer is cleared as soon as either settles.
 */
export async function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new TimeoutError(`${what} did not finish within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
