import { Backoff, type BackoffPolicy } from '../../core/backoff.js';
import { delay } from '../../core/lifecycle.js';
import type { StartPosition } from '../start.js';
import type { RawConsumer } from './fetcher.js';

export const RETRY_BACKOFF_MS = 500;
/** Kafka requests retried by the subscription: the client's own retry delay first, growing. */
export const KAFKA_RETRY: BackoffPolicy = { initialMs: RETRY_BACKOFF_MS, maxMs: 5_000, jitter: 'equal' };

export interface MembershipDeps {
  readonly consumer: RawConsumer;
  readonly topic: string;
  readonly start: StartPosition;
  readonly signal: AbortSignal;
  warn(msg: string, err: unknown): void;
}

/**
 * Where each newly assigned partition starts: its committed offset, else the `start` policy,
 * which is committed at once, so a group seen for the first time keeps the position it started
 * from even if it rebalances before its first ack ("latest" would otherwise move forward and
 * skip what arrived in between). Retries until it succeeds; undefined once `current()` turns
 * false (another rebalance, or close) or the signal fires.
 */
export async function startOffsets(
  deps: MembershipDeps,
  partitions: number[],
  current: () => boolean,
): Promise<Map<number, bigint> | undefined> {
  const { consumer, topic, start } = deps;
  const backoff = new Backoff(KAFKA_RETRY);
  for (;;) {
    if (!current()) return undefined;
    try {
      const committed = await consumer.listCommittedOffsets({ topics: [{ topic, partitions }] });
      const byPartition = committed.get(topic) ?? [];
      const missing = partitions.filter((i) => (byPartition[i] ?? -1n) < 0n);
      const starts = new Map<number, bigint>();
      for (const i of partitions) {
        const c = byPartition[i];
        if (c !== undefined && c >= 0n) starts.set(i, c);
      }
      if (missing.length > 0) {
        // -2: the earliest offset, -1: the end; a time gives the first offset at or after it,
        // or -1 where the partition has nothing that recent (then it starts at the end).
        const timestamp = start === 'earliest' ? -2n : start === 'latest' ? -1n : BigInt(start);
        const listed = await consumer.listOffsets({
          topics: [topic],
          partitions: { [topic]: missing },
          timestamp,
        });
        const at = listed.get(topic) ?? [];
        const pastTheEnd = missing.filter((i) => (at[i] ?? -1n) < 0n);
        if (timestamp >= 0n && pastTheEnd.length > 0) {
          const ends = await consumer.listOffsets({
            topics: [topic],
            partitions: { [topic]: pastTheEnd },
            timestamp: -1n,
          });
          const end = ends.get(topic) ?? [];
          for (const i of pastTheEnd) at[i] = end[i] ?? 0n;
        }
        const offsets = [];
        for (const i of missing) {
          const o = at[i] ?? 0n;
          starts.set(i, o);
          offsets.push({ topic, partition: i, offset: o, leaderEpoch: -1 });
        }
        if (!current()) return undefined;
        await consumer.commit({ offsets });
      }
      return current() ? starts : undefined;
    } catch (err) {
      if (!current()) return undefined;
      deps.warn('resolving start offsets of assigned Kafka partitions failed; retrying', err);
      try {
        await delay(backoff.next(), deps.signal);
      } catch {
        return undefined;
      }
    }
  }
}

/**
 * Joins the group again after the client gave up rejoining (Kafka away for long), until it
 * succeeds or the signal fires.
 */
export async function rejoin(deps: MembershipDeps): Promise<void> {
  while (!deps.signal.aborted) {
    try {
      await delay(RETRY_BACKOFF_MS * 2, deps.signal);
      await deps.consumer.joinGroup({});
      return;
    } catch (err) {
      if (deps.signal.aborted) return;
      deps.warn('rejoining the Kafka consumer group failed; retrying', err);
    }
  }
}
