import { type Consumer, IS_CONTROL } from '@platformatic/kafka';
import type { PartitionState } from './partition.js';

export type RawConsumer = Consumer<Buffer, Buffer, Buffer, Buffer>;
type FetchResponse = Awaited<ReturnType<RawConsumer['fetch']>>;

/** Long-poll of one fetch; also how long close() may wait for a fetch on the wire. */
export const FETCH_MAX_WAIT_MS = 500;
/** Per-partition bytes of one fetch: the bound of what a subscription buffers per partition. */
const PARTITION_MAX_BYTES = 1024 * 1024;
const FETCH_MAX_BYTES = 4 * 1024 * 1024;

export interface FetcherDeps {
  readonly consumer: RawConsumer;
  readonly topic: string;
  readonly maxWaitMs: number;
  /** False once the partition was revoked (a rebalance): what was fetched for it is dropped. */
  isCurrent(p: PartitionState): boolean;
  /** A fetch moved the partition past control markers only: its commit point moved. */
  movedPast(p: PartitionState): void;
}

/**
 * The subscription's data path: fetches the ready partitions from their leaders (one request per
 * leader) into their buffers, dropping what a rewind or revoke made stale meanwhile, and resolves
 * an out-of-range position. It holds no state of its own; the partitions do.
 */
export class KafkaFetcher {
  readonly #deps: FetcherDeps;

  constructor(deps: FetcherDeps) {
    this.#deps = deps;
  }

  /** Fetches once; resolves true when a buffer received records. */
  async fetch(ready: PartitionState[]): Promise<boolean> {
    const { consumer, topic: name } = this.#deps;
    const metadata = await consumer.metadata({ topics: [name] });
    const topic = metadata.topics.get(name);
    if (!topic) throw new Error(`no metadata for topic ${name}`);
    const byLeader = new Map<number, PartitionState[]>();
    for (const p of ready) {
      const leader = topic.partitions[p.partition]?.leader ?? -1;
      if (leader < 0) continue;
      const list = byLeader.get(leader);
      if (list) list.push(p);
      else byLeader.set(leader, [p]);
    }
    if (byLeader.size === 0) throw new Error(`no leader for the assigned partitions of ${name}`);
    const changed = await Promise.all(
      [...byLeader].map(async ([leader, parts]) => {
        const requested = parts.map((p) => ({ p, epoch: p.epoch, offset: p.fetchPos }));
        for (const p of parts) p.fetching = true;
        let response: FetchResponse;
        try {
          response = await consumer.fetch({
            node: leader,
            maxWaitTime: this.#deps.maxWaitMs,
            minBytes: 1,
            maxBytes: FETCH_MAX_BYTES,
            topics: [
              {
                topicId: topic.id,
                partitions: requested.map((r) => ({
                  partition: r.p.partition,
                  fetchOffset: r.offset,
                  partitionMaxBytes: PARTITION_MAX_BYTES,
                  currentLeaderEpoch: -1,
                  lastFetchedEpoch: -1,
                })),
              },
            ],
          });
        } finally {
          for (const p of parts) p.fetching = false;
        }
        return this.#absorb(response, requested);
      }),
    );
    return changed.includes(true);
  }

  #absorb(
    response: FetchResponse,
    requested: Array<{ p: PartitionState; epoch: number; offset: bigint }>,
  ): boolean {
    const byPartition = new Map(requested.map((r) => [r.p.partition, r]));
    let changed = false;
    for (const t of response.responses) {
      for (const part of t.partitions) {
        const r = byPartition.get(part.partitionIndex);
        // Revoked or rewound while the fetch was on the wire: its records are stale.
        if (!r || r.epoch !== r.p.epoch || !this.#deps.isCurrent(r.p)) continue;
        const batches = part.records ?? [];
        if (batches.length === 0) continue;
        const p = r.p;
        for (const batch of batches) {
          if (batch.attributes & IS_CONTROL) continue;
          for (const record of batch.records) {
            const offset = batch.firstOffset + BigInt(record.offsetDelta);
            if (offset < r.offset) continue;
            p.buffer.push({
              offset,
              record: {
                key: record.key,
                value: record.value,
                headers: record.headers,
                timestamp: batch.firstTimestamp + record.timestampDelta,
              },
            });
          }
        }
        const last = batches[batches.length - 1];
        if (last) {
          const end = last.firstOffset + BigInt(last.lastOffsetDelta) + 1n;
          if (end > p.fetchPos) p.fetchPos = end;
          p.bufferEnd = p.fetchPos;
        }
        if (p.buffered === 0 && p.bufferEnd > p.handedPos) {
          // Only control markers (transaction commits / aborts) were read: move past them.
          p.handedPos = p.bufferEnd;
          this.#deps.movedPast(p);
        }
        changed = true;
      }
    }
    return changed;
  }

  /** Moves partitions whose position Kafka no longer has (retention) into the range it has. */
  async resetOutOfRange(parts: PartitionState[]): Promise<void> {
    const { consumer, topic } = this.#deps;
    const ids = parts.map((p) => p.partition);
    const [earliest, latest] = await Promise.all([
      consumer.listOffsets({ topics: [topic], partitions: { [topic]: ids }, timestamp: -2n }),
      consumer.listOffsets({ topics: [topic], partitions: { [topic]: ids }, timestamp: -1n }),
    ]);
    for (const p of parts) {
      if (!this.#deps.isCurrent(p) || p.inflight.size > 0) continue;
      const lo = earliest.get(topic)?.[p.partition] ?? 0n;
      const hi = latest.get(topic)?.[p.partition] ?? lo;
      const to = p.fetchPos < lo ? lo : p.fetchPos > hi ? hi : p.fetchPos;
      p.epoch++;
      p.fetchPos = to;
      p.bufferEnd = to;
      p.handedPos = to;
    }
  }
}
