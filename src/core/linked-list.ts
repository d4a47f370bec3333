/** What an item of a LinkedList carries: its own links, so the list allocates nothing per item. */
export interface Linked<T> {
  prev: T | undefined;
  next: T | undefined;
}

/**
 * A doubly linked list whose links live on the items (an item is in at most one such list):
 * append and remove in O(1) without a node object per item, for lists that hold one entry per
 * message (the embedded broker's retained messages, a subscription's unsettled deliveries).
 */
export class LinkedList<T extends Linked<T>> {
  #first: T | undefined;
  #last: T | undefined;
  #size = 0;

  get first(): T | undefined {
    return this.#first;
  }

  get size(): number {
    return this.#size;
  }

  push(item: T): void {
    item.prev = this.#last;
    item.next = undefined;
    if (this.#last) this.#last.next = item;
    else this.#first = item;
    this.#last = item;
    this.#size++;
  }

  /** Removes an item that is in this list. */
  remove(item: T): void {
    if (item.prev) item.prev.next = item.next;
    else this.#first = item.next;
    if (item.next) item.next.prev = item.prev;
    else this.#last = item.prev;
    item.prev = undefined;
    item.next = undefined;
    this.#size--;
  }
}
