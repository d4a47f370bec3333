import { abortError, ClosedError, InvalidArgumentError } from '../core/errors.js';
import { Notifier } from '../core/lifecycle.js';

/**
 * Keyed worker lanes: N promise loops, each running one task at a time from its own bounded
 * queue. A key always maps to the same lane (stable hash), so tasks with one key run in submit
 * order while different keys run concurrently; keyless tasks go to the least loaded lane.
 *
 * A worker pool whose close waits for its workers but not for the loop feeding them leaves that
 * loop running after close. Here there is no dispatcher at all: submitters hand tasks straight
 * to a lane (or wait in that lane's FIFO for a slot), and close() awaits every lane loop it
 * started, so nothing this class starts outlives the promise close() returns.
 */

/** A unit of work. The signal fires when the lanes are closed with `{ abort: true }`. */
export type LaneTask<T> = (signal: AbortSignal) => T | PromiseLike<T>;

export interface KeyedLanesOptions {
  /** Number of lanes, i.e. how many tasks run at once. */
  lanes: number;
  /** Tasks each lane may hold waiting to run (not counting the running one). */
  queueSize: number;
  /**
   * Called for every task that throws or rejects, in addition to the task's `result` promise.
   * Errors thrown by this hook are swallowed so that reporting can never stop a lane.
   */
  onError?: ((error: unknown, info: { key: string | undefined; lane: number }) => void) | undefined;
}

export interface SubmitOptions {
  /** Ordering key; tasks with the same key run one at a time in submit order. */
  key?: string | undefined;
  /** Aborts the wait for room (rejects with ABORTED); has no effect once the task is queued. */
  signal?: AbortSignal | undefined;
}

/** What submit() resolves to once the task is queued. */
export interface SubmittedTask<T> {
  /** The lane the task was queued on. */
  readonly lane: number;
  /**
   * Settles with the task's outcome; rejects with CLOSED if the lanes were closed with
   * `{ abort: true }` before it ran. Created on first access, so ignoring it never causes an
   * unhandled rejection.
   */
  readonly result: Promise<T>;
}

export interface LaneStats {
  /** Tasks accepted and waiting in a lane queue. */
  readonly queued: number;
  /** Tasks whose handler is running. */
  readonly running: number;
  /** Tasks that completed. */
  readonly done: number;
  /** Tasks that threw or rejected. */
  readonly failed: number;
  /** Queued tasks dropped by an aborting close (their result rejects with CLOSED). */
  readonly cancelled: number;
  /** submit() calls waiting for room. */
  readonly waiting: number;
  readonly lanes: number;
}

export interface CloseLanesOptions {
  /**
   * false (default): finish every queued task first. true: abort running handlers through their
   * signal and reject queued tasks with CLOSED. Either way close() resolves only when every lane
   * loop has returned, which includes waiting for handlers that ignore their signal.
   */
  abort?: boolean | undefined;
}

const PENDING = 0;
const FULFILLED = 1;
const REJECTED = 2;

class Job<T> implements SubmittedTask<T> {
  lane = -1;
  state: 0 | 1 | 2 = PENDING;
  value: T | undefined;
  error: unknown;
  #promise: Promise<T> | undefined;
  #resolve: ((value: T) => void) | undefined;
  #reject: ((error: unknown) => void) | undefined;

  constructor(
    readonly task: LaneTask<T>,
    readonly key: string | undefined,
  ) {}

  get result(): Promise<T> {
    if (this.#promise) return this.#promise;
    if (this.state === FULFILLED) this.#promise = Promise.resolve(this.value as T);
    else if (this.state === REJECTED) {
      this.#promise = Promise.reject(this.error);
      // The same error already went to onError; only a caller that awaits it should see it.
      this.#promise.catch(noop);
    } else {
      this.#promise = new Promise<T>((resolve, reject) => {
        this.#resolve = resolve;
        this.#reject = reject;
      });
      this.#promise.catch(noop);
    }
    return this.#promise;
  }

  fulfil(value: T): void {
    this.state = FULFILLED;
    this.value = value;
    this.#resolve?.(value);
  }

  fail(error: unknown): void {
    this.state = REJECTED;
    this.error = error;
    this.#reject?.(error);
  }
}

interface Waiter {
  // biome-ignore lint/suspicious/noExplicitAny: jobs of any result type share one wait list
  job: Job<any>;
  resolve: () => void;
  reject: (error: unknown) => void;
  signal: AbortSignal | undefined;
  onAbort: (() => void) | undefined;
}

/** A FIFO over an array with a moving head, compacted now and then instead of shift()ing. */
class Fifo<T> {
  #items: Array<T | undefined> = [];
  #head = 0;

  get size(): number {
    return this.#items.length - this.#head;
  }

  push(item: T): void {
    this.#items.push(item);
  }

  shift(): T | undefined {
    if (this.#head >= this.#items.length) return undefined;
    const item = this.#items[this.#head];
    this.#items[this.#head] = undefined;
    this.#head++;
    if (this.#head === this.#items.length) {
      this.#items.length = 0;
      this.#head = 0;
    } else if (this.#head > 1024 && this.#head * 2 > this.#items.length) {
      this.#items = this.#items.slice(this.#head);
      this.#head = 0;
    }
    return item;
  }

  remove(item: T): boolean {
    const i = this.#items.indexOf(item, this.#head);
    if (i < 0) return false;
    this.#items.splice(i, 1);
    return true;
  }

  takeAll(): T[] {
    const rest = this.#items.slice(this.#head) as T[];
    this.#items = [];
    this.#head = 0;
    return rest;
  }
}

class Lane {
  // biome-ignore lint/suspicious/noExplicitAny: jobs of any result type share one queue
  readonly queue = new Fifo<Job<any>>();
  /** Keyed submitters waiting for a slot in this lane, in arrival order. */
  readonly waiting = new Fifo<Waiter>();
  readonly wake = new Notifier();
  readonly abort = new AbortController();
  running = false;
  loop: Promise<void> = Promise.resolve();

  constructor(readonly index: number) {}

  get load(): number {
    return this.queue.size + (this.running ? 1 : 0);
  }
}

function noop(): void {}

/** FNV-1a over UTF-16 code units: stable across processes and runs, cheap for short keys. */
export function hashKey(key: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < key.length; i++) {
    h ^= key.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

export class KeyedLanes implements AsyncDisposable {
  readonly #lanes: Lane[];
  readonly #queueSize: number;
  readonly #onError: KeyedLanesOptions['onError'];
  /** Keyless submitters waiting for a slot in any lane. */
  readonly #waitingAny = new Fifo<Waiter>();
  #waitingCount = 0;
  #queued = 0;
  #running = 0;
  #done = 0;
  #failed = 0;
  #cancelled = 0;
  #cursor = 0;
  #closed = false;
  #aborted = false;
  #closing: Promise<void> | undefined;

  constructor(options: KeyedLanesOptions) {
    const { lanes, queueSize } = options;
    if (!Number.isInteger(lanes) || lanes < 1) {
      throw new InvalidArgumentError(`lanes must be an integer >= 1, got ${lanes}`);
    }
    if (!Number.isInteger(queueSize) || queueSize < 1) {
      throw new InvalidArgumentError(`queueSize must be an integer >= 1, got ${queueSize}`);
    }
    this.#queueSize = queueSize;
    this.#onError = options.onError;
    this.#lanes = [];
    for (let i = 0; i < lanes; i++) {
      const lane = new Lane(i);
      this.#lanes.push(lane);
      lane.loop = this.#runLane(lane);
    }
  }

  /** The lane a key runs on. */
  laneOf(key: string): number {
    return hashKey(key) % this.#lanes.length;
  }

  /**
   * Queues a task, waiting for room when its lane (or, without a key, every lane) is full.
   * Resolves once the task is queued; its outcome is on the returned `result`. Rejects with
   * CLOSED after close() and with ABORTED when `signal` fires while waiting.
   *
   * A task must not await a submit to its own lane: with the queue full it would wait for itself.
   */
  submit<T>(task: LaneTask<T>, options: SubmitOptions = {}): Promise<SubmittedTask<T>> {
    if (this.#closed) return Promise.reject(this.#closedError());
    const { key, signal } = options;
    if (signal?.aborted) return Promise.reject(abortError(signal, 'submit'));
    const job = new Job(task, key);
    if (key !== undefined) {
      const lane = this.#lanes[this.laneOf(key)] as Lane;
      // Never overtake earlier waiters of the same lane: that would break per-key order.
      if (lane.waiting.size === 0 && lane.queue.size < this.#queueSize) {
        this.#enqueue(lane, job);
        return Promise.resolve(job);
      }
      return this.#wait(lane.waiting, job, signal);
    }
    if (this.#waitingAny.size === 0) {
      const lane = this.#leastLoaded();
      if (lane) {
        this.#enqueue(lane, job);
        return Promise.resolve(job);
      }
    }
    return this.#wait(this.#waitingAny, job, signal);
  }

  stats(): LaneStats {
    return {
      queued: this.#queued,
      running: this.#running,
      done: this.#done,
      failed: this.#failed,
      cancelled: this.#cancelled,
      waiting: this.#waitingCount,
      lanes: this.#lanes.length,
    };
  }

  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Stops accepting tasks and rejects waiting submits with CLOSED, then drains (default) or
   * aborts (`{ abort: true }`). Idempotent; an aborting call during a drain escalates it. Resolves
   * when every lane loop has returned, so a task must not await close() of its own lanes.
   */
  close(options: CloseLanesOptions = {}): Promise<void> {
    this.#closed = true;
    this.#rejectWaiters();
    if (options.abort) this.#abortAll();
    this.#closing ??= this.#stop();
    return this.#closing;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  async #stop(): Promise<void> {
    for (const lane of this.#lanes) lane.wake.notifyAll();
    await Promise.all(this.#lanes.map((lane) => lane.loop));
  }

  #abortAll(): void {
    if (this.#aborted) return;
    this.#aborted = true;
    for (const lane of this.#lanes) {
      for (const job of lane.queue.takeAll()) {
        this.#queued--;
        this.#cancelled++;
        job.fail(new ClosedError('task was not run: the lanes were closed with abort'));
      }
      lane.abort.abort(new ClosedError('lanes closed with abort'));
      lane.wake.notifyAll();
    }
  }

  #rejectWaiters(): void {
    const reject = (w: Waiter): void => {
      this.#waitingCount--;
      if (w.onAbort) w.signal?.removeEventListener('abort', w.onAbort);
      w.reject(this.#closedError());
    };
    for (const w of this.#waitingAny.takeAll()) reject(w);
    for (const lane of this.#lanes) for (const w of lane.waiting.takeAll()) reject(w);
  }

  #closedError(): ClosedError {
    return new ClosedError('keyed lanes are closed; create a new KeyedLanes to submit more work');
  }

  // biome-ignore lint/suspicious/noExplicitAny: jobs of any result type share one queue
  #enqueue(lane: Lane, job: Job<any>): void {
    job.lane = lane.index;
    lane.queue.push(job);
    this.#queued++;
    if (!lane.running) lane.wake.notifyAll();
  }

  #leastLoaded(): Lane | undefined {
    const lanes = this.#lanes;
    const n = lanes.length;
    let best: Lane | undefined;
    // Start after the last pick so ties rotate instead of piling onto lane 0.
    const start = this.#cursor;
    for (let i = 0; i < n; i++) {
      const lane = lanes[(start + i) % n] as Lane;
      if (lane.queue.size >= this.#queueSize) continue;
      if (best === undefined || lane.load < best.load) {
        best = lane;
        if (lane.load === 0) break;
      }
    }
    if (best) this.#cursor = (best.index + 1) % n;
    return best;
  }

  #wait<T>(list: Fifo<Waiter>, job: Job<T>, signal: AbortSignal | undefined): Promise<SubmittedTask<T>> {
    return new Promise<SubmittedTask<T>>((resolve, reject) => {
      const waiter: Waiter = {
        job,
        resolve: () => resolve(job),
        reject,
        signal,
        onAbort: undefined,
      };
      if (signal) {
        waiter.onAbort = () => {
          if (list.remove(waiter)) {
            this.#waitingCount--;
            reject(abortError(signal, 'submit'));
          }
        };
        signal.addEventListener('abort', waiter.onAbort, { once: true });
      }
      list.push(waiter);
      this.#waitingCount++;
    });
  }

  /** A slot in `lane` just freed: hand it to the longest waiting submitter that fits there. */
  #admit(lane: Lane): void {
    const waiter = lane.waiting.shift() ?? this.#waitingAny.shift();
    if (!waiter) return;
    this.#waitingCount--;
    if (waiter.onAbort) waiter.signal?.removeEventListener('abort', waiter.onAbort);
    this.#enqueue(lane, waiter.job);
    waiter.resolve();
  }

  async #runLane(lane: Lane): Promise<void> {
    const signal = lane.abort.signal;
    for (;;) {
      const job = lane.queue.shift();
      if (job === undefined) {
        if (this.#closed) return;
        await lane.wake.wait();
        continue;
      }
      this.#queued--;
      lane.running = true;
      this.#running++;
      this.#admit(lane);
      try {
        const value = await job.task(signal);
        this.#done++;
        job.fulfil(value);
      } catch (error) {
        this.#failed++;
        job.fail(error);
        if (this.#onError) {
          try {
            this.#onError(error, { key: job.key, lane: lane.index });
          } catch {
            // A failing error hook must not take the lane down with it.
          }
        }
      }
      this.#running--;
      lane.running = false;
    }
  }
}
