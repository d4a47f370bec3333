import { MqError, NotFoundError } from '../../core/errors.js';
import { type Linked, LinkedList } from '../../core/linked-list.js';
import type { Message } from '../../core/message.js';
import type { ScheduledTask, Scheduler } from '../../core/scheduler.js';

/**
 * What ended a delivery's hold. A delivery that ended cannot be settled any more: a late ack or
 * nack is answered from here, and the answer says why (see `settle`).
 */
export type Ending =
  /** Acked by the caller. */
  | 'acked'
  /** Nacked by the caller (given back for redelivery). */
  | 'nacked'
  /** Not settled within the ack timeout: given back for redelivery. */
  | 'expired'
  /** The subscription closed and gave it back. */
  | 'closed'
  /** The broker redelivered the message while it was handed out: the new delivery replaces it. */
  | 'redelivered'
  /** Kafka: its partition was rewound (a nack or expiry of an earlier record), so it comes again. */
  | 'rewound'
  /** Kafka: its partition went to another member in a rebalance. */
  | 'revoked';

const WHY: Record<Exclude<Ending, 'acked'>, string> = {
  nacked: 'it was nacked',
  expired: 'its ack timeout passed',
  closed: 'its subscription was closed',
  redelivered: 'the broker redelivered the message meanwhile',
  rewound: 'its partition was rewound to an earlier unacked record',
  revoked: 'its partition was reassigned to another group member',
};

/**
 * The ledger's bookkeeping on a delivery. Adapters' delivery classes extend it, so holding a
 * delivery costs no object besides the delivery itself (the gateway holds thousands).
 */
export abstract class LedgerEntry implements Linked<LedgerEntry> {
  abstract readonly message: Message;
  /** undefined: not handed out yet; 'held': handed out and unsettled; else what ended it. */
  hold: 'held' | Ending | undefined = undefined;
  /** When the ack timeout passes (epoch ms); set when handed out. */
  dueAt = 0;
  /** The ledger's links (hand-out order). */
  prev: LedgerEntry | undefined = undefined;
  next: LedgerEntry | undefined = undefined;

  /** Handed out and not settled, expired, released or voided. */
  get held(): boolean {
    return this.hold === 'held';
  }
}

export interface LedgerOptions<T extends LedgerEntry> {
  readonly scheduler: Scheduler;
  readonly ackTimeoutMs: number;
  /** For error texts: the subscription's topic and group, and who redelivers ('Kafka'). */
  readonly topic: string;
  readonly group: string;
  readonly broker: string;
  /**
   * A delivery's ack timeout passed. It has already left the ledger (ended 'expired'); the
   * adapter gives it back to the broker its own way. Called in hand-out order.
   */
  expired(d: T): void;
}

/**
 * The deliveries a subscription has handed out and not settled: their count (the in-flight
 * window), their ack deadlines, why one that left is unknown, and giving them all back.
 *
 * Every delivery of a subscription gets the same ack timeout, so deadlines fall in hand-out
 * order: the ledger is a list in that order with ONE scheduler entry, armed for its first
 * deadline, however many deliveries it holds. Settling is O(1) (unlink).
 */
export class Ledger<T extends LedgerEntry> {
  // The options' fields, not the options object: a gateway holds a ledger per idle session.
  readonly #scheduler: Scheduler;
  readonly #ackTimeoutMs: number;
  readonly #topic: string;
  readonly #group: string;
  readonly #broker: string;
  readonly #expired: (d: T) => void;
  /** Held deliveries in hand-out order, which is also due order. */
  readonly #held = new LinkedList<LedgerEntry>();
  #timer: ScheduledTask | undefined;
  #closed = false;

  constructor(options: LedgerOptions<T>) {
    this.#scheduler = options.scheduler;
    this.#ackTimeoutMs = options.ackTimeoutMs;
    this.#topic = options.topic;
    this.#group = options.group;
    this.#broker = options.broker;
    this.#expired = options.expired;
  }

  /** Deliveries held now. */
  get size(): number {
    return this.#held.size;
  }

  /** Starts a delivery's hold and its ack clock (at hand-out). */
  hold(d: T, now = Date.now()): void {
    if (d.hold === 'held') return;
    d.hold = 'held';
    d.dueAt = now + this.#ackTimeoutMs;
    this.#held.push(d);
    if (this.#timer === undefined && !this.#closed) this.#arm(d.dueAt);
  }

  /**
   * The check every ack and nack starts with. Returns true when the delivery is held (the caller
   * then ends it and tells the broker), false when the caller settled it already: the answer is
   * OK, as a caller may retry a settle whose answer it lost (an ack after its own nack too: the
   * message comes again either way). Otherwise it throws: FAILED_PRECONDITION for a nack after
   * an ack (an ack cannot be undone), NOT_FOUND naming why the delivery is no longer held.
   */
  settle(d: T, how: 'ack' | 'nack'): boolean {
    const hold = d.hold;
    if (hold === 'held') return true;
    if (hold === 'nacked' || (hold === 'acked' && how === 'ack')) return false;
    const topic = this.#topic;
    const group = this.#group;
    const broker = this.#broker;
    if (hold === 'acked') {
      throw new MqError(
        'FAILED_PRECONDITION',
        `message ${d.message.id} was already acked on topic "${topic}" (group "${group}"); it cannot be nacked`,
      );
    }
    const why =
      hold === 'expired'
        ? `its ack timeout (${this.#ackTimeoutMs} ms) passed`
        : hold === undefined
          ? 'it was never handed out'
          : WHY[hold];
    throw new NotFoundError(
      `delivery of message ${d.message.id} on topic "${topic}" (group "${group}") is no longer held: ${why}; ${broker} delivers it again`,
    );
  }

  /** Ends a delivery's hold with `how`; false when it was not held (nothing changed then). */
  end(d: T, how: Ending): boolean {
    if (d.hold !== 'held') return false;
    this.#held.remove(d);
    d.hold = how;
    return true;
  }

  /**
   * Ends every hold with `how` and returns those deliveries in hand-out order, so the caller can
   * give them back in that order.
   */
  endAll(how: Ending): T[] {
    const out: T[] = [];
    for (let d = this.#held.first; d !== undefined; d = this.#held.first) {
      this.#held.remove(d);
      d.hold = how;
      out.push(d as T);
    }
    return out;
  }

  /** Stops the ack clock; what is still held stays held (end it with endAll first). */
  close(): void {
    this.#closed = true;
    this.#timer?.cancel();
    this.#timer = undefined;
  }

  #arm(at: number): void {
    this.#timer = this.#scheduler.at(at, () => {
      this.#timer = undefined;
      this.#expire();
    });
  }

  #expire(): void {
    if (this.#closed) return;
    const now = Date.now();
    // The callback may end other holds (a Kafka rewind ends its partition's): re-read the head.
    for (let d = this.#held.first; d !== undefined && d.dueAt <= now; d = this.#held.first) {
      this.#held.remove(d);
      d.hold = 'expired';
      this.#expired(d as T);
    }
    const first = this.#held.first;
    if (first !== undefined && this.#timer === undefined && !this.#closed) this.#arm(first.dueAt);
  }
}
