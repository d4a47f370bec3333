import type { Message } from '../../core/message.js';
import type { Delivery, NackOptions } from '../broker.js';
import { LedgerEntry } from '../delivery/ledger.js';
import type { RawRecord } from './codec.js';
import type { KafkaSubscription } from './subscription.js';

export interface BufferedRecord {
  offset: bigint;
  record: RawRecord;
}

/**
 * What the subscription knows about one assigned partition.
 *
 * Positions: `fetchPos` is the next offset to fetch; `handedPos` the offset after the last
 * record handed out or filtered (or after a fetch's control markers). The commit point is the
 * oldest unacked delivery's offset, or `handedPos` when none is in flight: always a contiguous
 * prefix of settled records.
 */
export class PartitionState {
  /** Bumped on every rewind: a fetch started under an older epoch is discarded. */
  epoch = 0;
  buffer: BufferedRecord[] = [];
  head = 0;
  fetching = false;
  /** Epoch ms before which nothing of this partition is handed out (nack delay). */
  notBefore = 0;
  bufferEnd: bigint;
  handedPos: bigint;
  committed: bigint;
  /** Unsettled deliveries by offset; insertion order is offset order. */
  readonly inflight = new Map<bigint, KafkaDelivery>();
  /** In ordered mode: keys (latin1 of the key bytes) with a delivery in flight. */
  readonly inflightKeys = new Map<string, number>();
  /**
   * How often each offset past the commit point was handed out, for reconsumeCount. In memory
   * and per subscription: a redelivery to another group member (after a rebalance) starts at 0.
   */
  readonly deliveredCount = new Map<bigint, number>();

  constructor(
    readonly partition: number,
    public fetchPos: bigint,
  ) {
    this.bufferEnd = fetchPos;
    this.handedPos = fetchPos;
    this.committed = fetchPos;
  }

  get buffered(): number {
    return this.buffer.length - this.head;
  }

  clearBuffer(): void {
    this.buffer = [];
    this.head = 0;
  }

  commitPoint(): bigint {
    for (const offset of this.inflight.keys()) return offset;
    return this.handedPos;
  }

  pruneCounts(below: bigint): void {
    for (const offset of this.deliveredCount.keys()) {
      if (offset >= below) break;
      this.deliveredCount.delete(offset);
    }
  }
}

export class KafkaDelivery extends LedgerEntry implements Delivery {
  constructor(
    readonly message: Message,
    readonly sub: KafkaSubscription,
    readonly state: PartitionState,
    readonly offset: bigint,
    readonly keyId: string | undefined,
  ) {
    super();
  }

  ack(): Promise<void> {
    return this.sub.settle(this, 'ack');
  }

  nack(options?: NackOptions): Promise<void> {
    return this.sub.settle(this, 'nack', options?.delayMs ?? 0, options?.uncounted === true);
  }
}
