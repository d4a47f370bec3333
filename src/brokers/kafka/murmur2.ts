/**
 * Kafka's default partitioner, bit for bit, so a Java (or librdkafka "murmur2_random") client
 * and this adapter agree on where a key lives: `toPositive(murmur2(keyBytes)) % partitions`.
 *
 * @platformatic/kafka 1.x ships a murmur2 but its default partitioner makes the hash positive
 * with `>>> 0` instead of Java's `& 0x7fffffff`; the two disagree for every negative hash unless
 * the partition count is a power of two, so we partition ourselves.
 */

const SEED = 0x9747b28c;
const M = 0x5bd1e995;

/** Port of org.apache.kafka.common.utils.Utils.murmur2 with 32-bit integer arithmetic. */
export function murmur2(data: Uint8Array): number {
  const length = data.length;
  let h = (SEED ^ length) | 0;
  const words = length >> 2;
  for (let i = 0; i < words; i++) {
    const j = i * 4;
    let k =
      ((data[j] as number) & 0xff) |
      (((data[j + 1] as number) & 0xff) << 8) |
      (((data[j + 2] as number) & 0xff) << 16) |
      (((data[j + 3] as number) & 0xff) << 24);
    k = Math.imul(k, M);
    k ^= k >>> 24;
    k = Math.imul(k, M);
    h = Math.imul(h, M);
    h ^= k;
  }
  const tail = words * 4;
  // Java's switch falls through from the highest remaining byte down.
  const rest = length & 3;
  if (rest >= 3) h ^= ((data[tail + 2] as number) & 0xff) << 16;
  if (rest >= 2) h ^= ((data[tail + 1] as number) & 0xff) << 8;
  if (rest >= 1) {
    h ^= (data[tail] as number) & 0xff;
    h = Math.imul(h, M);
  }
  h ^= h >>> 13;
  h = Math.imul(h, M);
  h ^= h >>> 15;
  return h | 0;
}

/** Utils.toPositive: clears the sign bit (not Math.abs, which is wrong for MIN_VALUE). */
export function toPositive(n: number): number {
  return n & 0x7fffffff;
}

/** The partition Kafka's Java producer picks for a record with these key bytes. */
export function partitionForKey(key: Uint8Array, partitions: number): number {
  return toPositive(murmur2(key)) % partitions;
}
