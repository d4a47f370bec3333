import { InvalidArgumentError, MqError, NotFoundError } from '../../core/errors.js';
import { closeOnce } from '../../core/lifecycle.js';
import type { Message } from '../../core/message.js';
import type { ScheduledTask } from '../../core/scheduler.js';
import type { Delivery, NackOptions, Subscription } from '../broker.js';
import { deliveryIterator } from '../delivery/iterator.js';
import type { Engine } from './engine.js';
import type { Group } from './group.js';
import { type Entry, MAX_REASON_LENGTH } from './topic.js';

/**
 * One member of a consumer group: hands out deliveries within maxInFlight and expires them after
 * the ack timeout with one scheduler entry per subscription (deliveries share one timeout, so
 * they expire in the order they were handed out).
 */

const IN_FLIGHT = 0;
const ACKED = 1;
const NACKED = 2;
const EXPIRED = 3;
const CLOSED = 4;
type DeliveryState = typeof IN_FLIGHT | typeof ACKED | typeof NACKED | typeof EXPIRED | typeof CLOSED;

class MemoryDelivery implements Delivery {
  state: DeliveryState = IN_FLIGHT;
  prev: MemoryDelivery | undefined;
  next: MemoryDelivery | undefined;

  constructor(
    readonly message: Message,
    readonly entry: Entry,
    readonly subscription: MemorySubscription,
    readonly deadline: number,
  ) {}

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
  #inFlight = 0;
  #first: MemoryDelivery | undefined;
  #last: MemoryDelivery | undefined;
  #expiry: ScheduledTask | undefined;
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

  get inFlight(): number {
    return this.#inFlight;
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
    while (out.length < max && !this.#closed && !this.engine.closed && this.#inFlight < this.maxInFlight) {
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
      if (this.#inFlight < this.maxInFlight) {
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
    const now = Date.now();
    const d = new MemoryDelivery(message, entry, this, now + this.ackTimeoutMs);
    d.prev = this.#last;
    if (this.#last) this.#last.next = d;
    else this.#first = d;
    this.#last = d;
    this.#inFlight++;
    if (this.#expiry === undefined) this.#armExpiry(d.deadline);
    return d;
  }

  #unlink(d: MemoryDelivery): void {
    if (d.prev) d.prev.next = d.next;
    else this.#first = d.next;
    if (d.next) d.next.prev = d.prev;
    else this.#last = d.prev;
    d.prev = undefined;
    d.next = undefined;
    this.#inFlight--;
  }

  #armExpiry(at: number): void {
    this.#expiry = this.engine.scheduler.at(at, () => {
      this.#expiry = undefined;
      this.#expire();
    });
  }

  #expire(): void {
    const now = Date.now();
    let released = false;
    for (let d = this.#first; d !== undefined && d.deadline <= now; d = this.#first) {
      this.#unlink(d);
      d.state = EXPIRED;
      released = true;
      this.groupState.requeue(d.entry, `not acked within the ${this.ackTimeoutMs} ms ack timeout`, 0);
    }
    if (this.#first !== undefined) this.#armExpiry(this.#first.deadline);
    if (released) this.wake();
  }

  settle(d: MemoryDelivery, ack: boolean, options: NackOptions | undefined): void {
    this.engine.assertOpen();
    if (d.state !== IN_FLIGHT) {
      if (d.state === (ack ? ACKED : NACKED)) return;
      if (d.state === ACKED) {
        throw new MqError(
          'FAILED_PRECONDITION',
          `message ${d.message.id} was already acked on topic "${this.topic}" (group "${this.group}"); it cannot be nacked`,
        );
      }
      const why =
        d.state === NACKED
          ? 'it was nacked'
          : d.state === EXPIRED
            ? `its ${this.ackTimeoutMs} ms ack timeout passed`
            : 'its subscription was closed';
      throw new NotFoundError(
        `delivery of message ${d.message.id} on topic "${this.topic}" (group "${this.group}") is no longer held: ` +
          `${why}; the message is (or will be) delivered again`,
      );
    }
    let delayMs = 0;
    if (!ack && options?.delayMs !== undefined) {
      delayMs = options.delayMs;
      if (!Number.isFinite(delayMs) || delayMs < 0) {
        throw new InvalidArgumentError(
          `nack delayMs ${String(delayMs)} is not valid; use a number of milliseconds >= 0`,
        );
      }
    }
    this.#unlink(d);
    if (ack) {
      d.state = ACKED;
      this.groupState.finish(d.entry);
    } else {
      d.state = NACKED;
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
    this.#expiry?.cancel();
    this.#expiry = undefined;
    const group = this.groupState;
    group.subs.delete(this);
    group.waiting.delete(this);
    this.engine.subscriptions.delete(this);
    // Release in delivery order so redeliveries keep that order.
    for (let d = this.#first; d !== undefined; d = this.#first) {
      this.#unlink(d);
      d.state = CLOSED;
      group.requeue(d.entry, 'its subscription closed before it was acked', 0);
    }
    group.idle();
    this.wake();
  }
}
