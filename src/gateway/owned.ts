import type { MqError } from '../core/errors.js';
import type { Audit } from './audit.js';

/** A resource created by a caller on its own behalf. */
export interface Owned {
  /** Random (122 bits): with auth off, knowing the id is the only capability. */
  readonly id: string;
  /** The creating principal's name ('' for everyone when auth is off). */
  readonly owner: string;
}

/**
 * The one place ids are looked up: an id names a resource only for the principal that created it.
 * Anyone else gets exactly the error of a missing id, so the answer tells nothing about which
 * ids exist; the attempt is audited. Registries keep their resources here and take the caller's
 * principal on every lookup, so an RPC cannot reach a resource without naming who asks.
 */
export class OwnedMap<T extends Owned> {
  readonly #items = new Map<string, T>();

  constructor(
    readonly kind: string,
    readonly notFound: (id: string) => MqError,
    readonly audit: Audit,
  ) {}

  get size(): number {
    return this.#items.size;
  }

  values(): IterableIterator<T> {
    return this.#items.values();
  }

  add(item: T): void {
    this.#items.set(item.id, item);
  }

  /** Removes `item` if it is still the one stored under its id. */
  delete(item: T): boolean {
    if (this.#items.get(item.id) !== item) return false;
    this.#items.delete(item.id);
    return true;
  }

  /** The resource `id` names for `owner`, or the missing-id error. */
  get(id: string, owner: string): T {
    const item = this.find(id, owner);
    if (item === undefined) throw this.notFound(id);
    return item;
  }

  /** As get(), with undefined for a missing or foreign id. */
  find(id: string, owner: string): T | undefined {
    const item = this.#items.get(id);
    if (item === undefined) return undefined;
    if (item.owner !== owner) {
      this.audit.refuse('ownership', owner, `${this.kind} of another principal`);
      return undefined;
    }
    return item;
  }

  clear(): void {
    this.#items.clear();
  }
}
