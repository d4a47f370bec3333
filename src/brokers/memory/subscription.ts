import { InvalidArgumentError } from '../../core/errors.js';
import { closeOnce } from '../../core/lifecycle.js';
import type { Message } from '../../core/message.js';
import type { Delivery, NackOptions, Subscription } from '../broker.js';
import { deliveryIterator } from '../delivery/iterator.js';
import { Ledger, LedgerEntry } from '../delivery/ledger.js';
import type { Engine } from './engine.js';
import type { Group } from './group.js';
import { type Entry, MAX_REASON_LENGTH } from './topic.js';

/**
 * One member of a consumer group: hands out deliveries within maxInFlight; its ledger expires
 * them after the ack timeout (one scheduler entry per subscription).
 */

class MemoryDelivery extends LedgerEntry implements Delivery {
  constructor(
    readonly message: Message,
    readonly entry: Entry,
    readonly subscription: MemorySubscription,
  ) {
    super();
  }

  async ack(): Promise<void> {
    this.subscription.settle(this, true, undefined);
  }

  async nack(options?: NackOptions): Promise<void> {
    this.subscription.settle(this, false, options);
  }
}

export class MemorySubscription implements Subscription {
  readonly topic: string;
  readonly group: string;
  readonly maxInFlight: number;
  readonly ackTimeoutMs: number;
  /** Made at the first hand-out: a gateway keeps a subscription per session, many of them idle. */
  #ledger: Ledger<MemoryDelivery> | undefined;
  #closed = false;
  #waiters: Array<() => void> = [];
  readonly close: () => Promise<void>;

  constructor(
    readonly engine: Engine,
    readonly groupState: Group,
    options: { maxInFlight: number; ackTimeoutMs: number },
  ) {
    this.topic = groupState.topic.name;
    this.group = groupState.name;
    this.maxInFlight = options.maxInFlight;
    this.ackTimeoutMs = options.ackTimeoutMs;
    this.close = closeOnce(async () => this.#close());
  }

  #clock(): Ledger<MemoryDelivery> {
    this.#ledger ??= new Ledger({
      scheduler: this.engine.scheduler,
      ackTimeoutMs: this.ackTimeoutMs,
      topic: this.topic,
      group: this.group,
      broker: 'the embedded broker',
      expired: (d) => {
        this.groupState.requeue(d.entry, `not acked within the ${this.ackTimeoutMs} ms ack timeout`, 0);
        this.wake();
      },
    });
    return this.#ledger;
  }

  get inFlight(): number {
    return this.#ledger?.size ?? 0;
  }

  get closed(): boolean {
    return this.#closed;
  }

  wake(): void {
    if (this.#waiters.length === 0) return;
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const w of waiters) w();
  }

  /** Iterating twice gives two cursors over the same deliveries. */
  [Symbol.asyncIterator](): AsyncIterator<Delivery, undefined> {
    return deliveryIterator(() => this.#next(), this.close);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  takeReady(max: number): Delivery[] {
    const out: Delivery[] = [];
    while (out.length < max && !this.#closed && !this.engine.closed && this.inFlight < this.maxInFlight) {
      const entry = this.groupState.take();
      if (entry === undefined) break;
      out.push(this.#deliver(entry));
    }
    return out;
  }

  async #next(): Promise<IteratorResult<Delivery, undefined>> {
    for (;;) {
      // The broker check stops hand-outs while broker.close() is still closing subscriptions.
      if (this.#closed || this.engine.closed) return { value: undefined, done: true };
      if (this.inFlight < this.maxInFlight) {
        const entry = this.groupState.take();
        if (entry !== undefined) return { value: this.#deliver(entry), done: false };
        this.groupState.waiting.add(this);
      }
      // Woken by the group (something to take), by a settle (room) or by close.
      await new Promise<void>((resolve) => this.#waiters.push(resolve));
    }
  }

  #deliver(entry: Entry): MemoryDelivery {
    const m = entry.slot.msg;
    const message: Message = {
      id: m.id,
      topic: m.topic,
      body: m.body,
      key: m.key,
      tag: m.tag,
      businessKey: m.businessKey,
      properties: m.properties,
      deliverAt: m.deliverAt,
      bornAt: m.bornAt,
      reconsumeCount: entry.attempts,
    };
    entry.attempts++;
    const d = new MemoryDelivery(message, entry, this);
    this.#clock().hold(d);
    return d;
  }

  settle(d: MemoryDelivery, ack: boolean, options: NackOptions | undefined): void {
    this.engine.assertOpen();
    const ledger = this.#clock();
    if (!ledger.settle(d, ack ? 'ack' : 'nack')) return;
    let delayMs = 0;
    if (!ack && options?.delayMs !== undefined) {
      delayMs = options.delayMs;
      if (!Number.isFinite(delayMs) || delayMs < 0) {
        throw new InvalidArgumentError(
          `nack delayMs ${String(delayMs)} is not valid; use a number of milliseconds >= 0`,
        );
      }
    }
    ledger.end(d, ack ? 'acked' : 'nacked');
    if (ack) {
      this.groupState.finish(d.entry);
    } else {
      // The consumer never received it: this hand-out was not a delivery attempt.
      if (options?.uncounted === true && d.entry.attempts > 0) d.entry.attempts--;
      // Bounded: a reason is often an error's stack, and it is kept with the dead letter.
      const reason = options?.reason
        ? `nacked: ${String(options.reason).slice(0, MAX_REASON_LENGTH)}`
        : 'nacked';
      this.groupState.requeue(d.entry, reason, delayMs);
    }
    this.wake();
  }

  async #close(): Promise<void> {
    this.#closed = true;
    this.#ledger?.close();
    const group = this.groupState;
    group.subs.delete(this);
    group.waiting.delete(this);
    this.engine.subscriptions.delete(this);
    // Release in delivery order so redeliveries keep that order.
    for (const d of this.#ledger?.endAll('closed') ?? []) {
      group.requeue(d.entry, 'its subscription closed before it was acked', 0);
    }
    group.idle();
    this.wake();
  }
}
