/**
 * One timer for any number of due times: a binary min-heap and a single unref'd setTimeout
 * re-armed to the earliest entry. The embedded broker and the gateway's reapers schedule
 * thousands of deadlines (visibility timeouts, delayed messages) without a timer each.
 */
export interface ScheduledTask {
  cancel(): void;
}

const NOOP = (): void => {};

/**
 * A heap entry is also the handle returned to the caller, so scheduling allocates one object
 * rather than an entry plus a handle, a closure and its context (~175 bytes more per task,
 * which adds up when callers keep a handle per message, e.g. the embedded broker's nack delays).
 */
class Entry implements ScheduledTask {
  cancelled = false;
  constructor(
    readonly at: number,
    readonly seq: number,
    public fn: () => void,
  ) {}

  cancel(): void {
    this.cancelled = true;
    // The heap keeps the entry until its due time: drop the callback now so whatever it
    // closes over (a closed subscription, a delivery) can be collected at once.
    this.fn = NOOP;
  }
}

export class Scheduler {
  #heap: Entry[] = [];
  #seq = 0;
  #timer: NodeJS.Timeout | undefined;
  #armedAt = Number.POSITIVE_INFINITY;
  #closed = false;
  readonly #now: () => number;
  readonly #onError: (err: unknown) => void;

  constructor(options: { now?: () => number; onError?: (err: unknown) => void } = {}) {
    this.#now = options.now ?? Date.now;
    this.#onError =
      options.onError ??
      ((err) =>
        queueMicrotask(() => {
          throw err;
        }));
  }

  /** Runs fn at (or soon after) epoch-ms `at`. */
  at(at: number, fn: () => void): ScheduledTask {
    const entry = new Entry(at, this.#seq++, fn);
    if (this.#closed) {
      entry.cancel();
      return entry;
    }
    this.#push(entry);
    if (at < this.#armedAt) this.#arm();
    return entry;
  }

  after(ms: number, fn: () => void): ScheduledTask {
    return this.at(this.#now() + ms, fn);
  }

  /** Entries not yet run or cancelled-and-collected (cancelled ones are dropped lazily). */
  get size(): number {
    return this.#heap.length;
  }

  close(): void {
    this.#closed = true;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#heap = [];
  }

  #arm(): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#armedAt = Number.POSITIVE_INFINITY;
    while (this.#heap.length > 0 && (this.#heap[0] as Entry).cancelled) this.#pop();
    const first = this.#heap[0];
    if (!first) return;
    this.#armedAt = first.at;
    // setTimeout caps at 2^31-1 ms; a longer wait simply re-arms when it fires.
    const wait = Math.min(Math.max(0, first.at - this.#now()), 2_147_483_647);
    this.#timer = setTimeout(() => this.#fire(), wait);
    this.#timer.unref();
  }

  #fire(): void {
    this.#timer = undefined;
    this.#armedAt = Number.POSITIVE_INFINITY;
    const now = this.#now();
    while (this.#heap.length > 0 && (this.#heap[0] as Entry).at <= now) {
      const entry = this.#pop() as Entry;
      if (entry.cancelled) continue;
      const fn = entry.fn;
      // A caller may keep the handle after the task ran; it must not keep the callback alive.
      entry.cancel();
      try {
        fn();
      } catch (err) {
        this.#onError(err);
      }
      if (this.#closed) return;
    }
    this.#arm();
  }

  #less(a: Entry, b: Entry): boolean {
    return a.at < b.at || (a.at === b.at && a.seq < b.seq);
  }

  #push(entry: Entry): void {
    const h = this.#heap;
    h.push(entry);
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.#less(h[i] as Entry, h[p] as Entry)) break;
      [h[i], h[p]] = [h[p] as Entry, h[i] as Entry];
      i = p;
    }
  }

  #pop(): Entry | undefined {
    const h = this.#heap;
    const top = h[0];
    const last = h.pop();
    if (h.length > 0 && last) {
      h[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && this.#less(h[l] as Entry, h[m] as Entry)) m = l;
        if (r < h.length && this.#less(h[r] as Entry, h[m] as Entry)) m = r;
        if (m === i) break;
        [h[i], h[m]] = [h[m] as Entry, h[i] as Entry];
        i = m;
      }
    }
    return top;
  }
}
