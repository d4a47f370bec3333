/**
 * A FIFO on a power-of-two ring buffer: O(1) push and shift with no array re-slicing, so a
 * group's backlog of a million messages costs one slot per message and nothing per read.
 */
export class Deque<T> {
  #buf: Array<T | undefined>;
  #head = 0;
  #size = 0;

  constructor(initialCapacity = 16) {
    let cap = 4;
    while (cap < initialCapacity) cap *= 2;
    this.#buf = new Array<T | undefined>(cap);
  }

  get length(): number {
    return this.#size;
  }

  push(item: T): void {
    if (this.#size === this.#buf.length) this.#resize(this.#buf.length * 2);
    this.#buf[(this.#head + this.#size) & (this.#buf.length - 1)] = item;
    this.#size++;
  }

  shift(): T | undefined {
    if (this.#size === 0) return undefined;
    const item = this.#buf[this.#head];
    // Clear the slot so a consumed message is not kept alive by the buffer.
    this.#buf[this.#head] = undefined;
    this.#head = (this.#head + 1) & (this.#buf.length - 1);
    this.#size--;
    if (this.#size === 0) this.#head = 0;
    // Give back the room a burst needed once the backlog is small again.
    else if (this.#buf.length > 1024 && this.#size < this.#buf.length >> 2)
      this.#resize(this.#buf.length >> 1);
    return item;
  }

  peek(): T | undefined {
    return this.#size === 0 ? undefined : this.#buf[this.#head];
  }

  clear(): void {
    this.#buf = new Array<T | undefined>(4);
    this.#head = 0;
    this.#size = 0;
  }

  *[Symbol.iterator](): Iterator<T> {
    const mask = this.#buf.length - 1;
    for (let i = 0; i < this.#size; i++) yield this.#buf[(this.#head + i) & mask] as T;
  }

  #resize(capacity: number): void {
    const old = this.#buf;
    const mask = old.length - 1;
    const next = new Array<T | undefined>(capacity);
    for (let i = 0; i < this.#size; i++) next[i] = old[(this.#head + i) & mask];
    this.#buf = next;
    this.#head = 0;
  }
}
