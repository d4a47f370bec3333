import { Deque } from '../../core/deque.js';
import type { ScheduledTask, Scheduler } from '../../core/scheduler.js';

/**
 * Per-key order for a consumer: one message of a key is out at a time (the key's head), the
 * key's later messages wait here in arrival order, and settling the head hands out the next.
 *
 * A head that went back to the broker (nacked or timed out, where the broker does the
 * redelivering) keeps its key blocked until the broker brings that same message back, so a
 * retry is never overtaken by the key's later messages. The wait is bounded: if the redelivery
 * goes to another consumer of the group instead, the key moves on at the deadline.
 *
 * Every adapter with an `ordered` subscription keeps its keys here; what an item is (a stored
 * entry, a broker's message handle) is the adapter's business.
 */
export class KeyedHold<T> {
  readonly #chains = new Map<string, Chain<T>>();
  readonly #scheduler: Scheduler;
  #held = 0;

  constructor(scheduler: Scheduler) {
    this.#scheduler = scheduler;
  }

  /**
   * Takes in a message of `key`: true when the key was free and `item` is its head now (hand it
   * out), false when it waits behind the key's head.
   */
  admit(key: string, item: T): boolean {
    const chain = this.#chains.get(key);
    if (chain === undefined) {
      this.#chains.set(key, { head: item, held: undefined, awaiting: undefined });
      return true;
    }
    chain.held ??= new Deque<T>(4);
    chain.held.push(item);
    this.#held++;
    return false;
  }

  /** The key's head: out, queued to go out, or undefined while the key awaits a redelivery. */
  head(key: string): T | undefined {
    return this.#chains.get(key)?.head;
  }

  /** The head's message is now carried by another item (the broker handed out a fresh copy). */
  replaceHead(key: string, item: T): void {
    const chain = this.#chains.get(key);
    if (chain !== undefined) chain.head = item;
  }

  /**
   * The key's head is settled: its next waiting item becomes the head and is returned (the
   * caller hands it out); undefined when nothing waits, and the key is free again.
   */
  advance(key: string): T | undefined {
    const chain = this.#chains.get(key);
    if (chain === undefined) return undefined;
    if (chain.awaiting !== undefined) {
      chain.awaiting.task.cancel();
      chain.awaiting = undefined;
    }
    const next = chain.held?.shift();
    if (next === undefined) {
      this.#chains.delete(key);
      return undefined;
    }
    this.#held--;
    chain.head = next;
    return next;
  }

  /**
   * The head went back to the broker, which will deliver it again as `identity` (e.g. a stream
   * sequence): the key stays blocked, with no head, until claim() sees it or `ms` passes; then the
   * key advances and `handOut` gets its next item, if any.
   */
  awaitRedelivery(key: string, identity: unknown, ms: number, handOut: (next: T) => void): void {
    const chain = this.#chains.get(key);
    if (chain === undefined) return;
    chain.awaiting?.task.cancel();
    chain.head = undefined;
    const task = this.#scheduler.after(ms, () => {
      if (this.#chains.get(key) !== chain || chain.awaiting?.task !== task) return;
      chain.awaiting = undefined;
      const next = this.advance(key);
      if (next !== undefined) handOut(next);
    });
    chain.awaiting = { identity, task };
  }

  /**
   * A message of `key` arrived as `identity`: true when it is the awaited redelivery of the key's
   * head, which `item` now is (hand it out ahead of the key's waiting items).
   */
  claim(key: string, identity: unknown, item: T): boolean {
    const chain = this.#chains.get(key);
    if (chain?.awaiting === undefined || chain.awaiting.identity !== identity) return false;
    chain.awaiting.task.cancel();
    chain.awaiting = undefined;
    chain.head = item;
    return true;
  }

  /** Whether the key has a head or awaits one: a new message of it must wait. */
  has(key: string): boolean {
    return this.#chains.has(key);
  }

  /** Items waiting behind a head, over all keys. */
  get held(): number {
    return this.#held;
  }

  /** Keys with a head, or awaiting one. */
  get keys(): number {
    return this.#chains.size;
  }

  /** Empties the hold (a subscription closing): returns the waiting items, heads not included. */
  drain(): T[] {
    const out: T[] = [];
    for (const chain of this.#chains.values()) {
      chain.awaiting?.task.cancel();
      if (chain.held !== undefined) for (const item of chain.held) out.push(item);
    }
    this.#chains.clear();
    this.#held = 0;
    return out;
  }
}

interface Chain<T> {
  /** undefined while the key awaits the broker's redelivery of its head. */
  head: T | undefined;
  /** Created on the first waiting item: most keys never have one. */
  held: Deque<T> | undefined;
  awaiting: { readonly identity: unknown; readonly task: ScheduledTask } | undefined;
}
