/**
 * A map that keeps at most `capacity` entries, forgetting the oldest insertion first.
 *
 * The obvious version (a Map, deleting `keys().next().value` when full) is slow in V8 under
 * steady churn: deleted entries stay in the hash table's order until it is rebuilt, and
 * iterating from the start walks over all of them. Here a ring of the inserted keys says which
 * one is oldest, so eviction never iterates. A key deleted and set again may be forgotten early
 * (its first insertion's slot comes round first): this is a cache of recent keys, not a store.
 *
 * The ring grows with use up to `capacity` instead of being allocated whole: every consumer
 * session keeps one of 4,096 keys, and a preallocated ring is 32 KiB per idle session.
 */
export class BoundedMap<K, V> {
  readonly #map = new Map<K, V>();
  #ring: Array<K | undefined> = [];
  /** Once the ring is full: the slot of the oldest insertion, overwritten next. */
  #next = 0;

  constructor(readonly capacity: number) {}

  get size(): number {
    return this.#map.size;
  }

  has(key: K): boolean {
    return this.#map.has(key);
  }

  get(key: K): V | undefined {
    return this.#map.get(key);
  }

  set(key: K, value: V): void {
    if (this.#ring.length < this.capacity) {
      this.#ring.push(key);
    } else {
      const old = this.#ring[this.#next];
      if (old !== undefined) this.#map.delete(old);
      this.#ring[this.#next] = key;
      this.#next = (this.#next + 1) % this.capacity;
    }
    this.#map.set(key, value);
  }

  delete(key: K): boolean {
    return this.#map.delete(key);
  }

  clear(): void {
    this.#map.clear();
    this.#ring = [];
    this.#next = 0;
  }
}
