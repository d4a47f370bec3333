import { formatDuration } from '../core/duration.js';
import { InvalidArgumentError, quoteInput } from '../core/errors.js';

/**
 * Bounds on every string a client sends. Anything unbounded is memory a client can make the
 * gateway hold (in maps, logs and error messages); these are generous for real names and keys.
 */
export const LIMITS = {
  /** producer_id, consumer_id, receipt_handle, transaction_id: the gateway issues 36-character UUIDs. */
  id: 64,
  endpoint: 256,
  instanceId: 128,
  accessKeyId: 256,
  accessKeySecret: 1024,
  topic: 127,
  group: 255,
  tag: 128,
  tagExpression: 1024,
  messageKey: 1024,
  shardingKey: 256,
  propertyName: 256,
} as const;

/** Name rules shared by every broker: what RocketMQ, Kafka and NATS all accept (after mapping). */
const NAME = /^[A-Za-z0-9_%.-]+$/;
const TAG = /^[^\s|*]+$/;

export const DELAY_LEVELS_MS = [
  1_000, 5_000, 10_000, 30_000, 60_000, 120_000, 180_000, 240_000, 300_000, 360_000, 420_000, 480_000,
  540_000, 600_000, 1_200_000, 1_800_000, 3_600_000, 7_200_000,
] as const;

/** Refuses a string longer than `max` characters, naming the field and the limit. */
export function bounded(value: string | undefined, field: string, max: number): string {
  const v = value ?? '';
  if (v.length > max) {
    throw new InvalidArgumentError(`${field} is ${v.length} characters; the limit is ${max}`);
  }
  return v;
}

export function requireId(value: string | undefined, field: string, rpc: string): string {
  if (!value) throw new InvalidArgumentError(`${field} is required: pass the id ${rpc} returned`);
  return bounded(value, field, LIMITS.id);
}

export function checkName(value: string | undefined, field: 'topic' | 'group_id'): string {
  const max = field === 'topic' ? LIMITS.topic : LIMITS.group;
  if (!value) throw new InvalidArgumentError(`${field} is required`);
  if (value.length > max) {
    throw new InvalidArgumentError(`${field} ${quoteInput(value)} is longer than ${max} characters`);
  }
  if (!NAME.test(value) || value === '.' || value === '..') {
    throw new InvalidArgumentError(
      `${field} ${quoteInput(value)} has characters brokers do not accept: use letters, digits, '_', '-', '.', '%' (and not "." or ".." alone)`,
    );
  }
  return value;
}

export function checkTag(tag: string | undefined): string | undefined {
  if (!tag) return undefined;
  if (tag.length > LIMITS.tag || !TAG.test(tag)) {
    throw new InvalidArgumentError(
      `tag ${quoteInput(tag)} is invalid: at most ${LIMITS.tag} characters, without spaces, '|' or '*' (those belong to tag expressions on the consumer side)`,
    );
  }
  return tag;
}

/** Checks property names and returns the bytes the properties take (counted in the message size). */
export function checkProperties(props: Record<string, string> | undefined, max: number): number {
  if (!props) return 0;
  let bytes = 0;
  let n = 0;
  for (const k in props) {
    if (++n > max) {
      throw new InvalidArgumentError(
        `message has more than ${max} properties; the limit is ${max} (MAX_PROPERTIES)`,
      );
    }
    if (k === '' || k.length > LIMITS.propertyName) {
      throw new InvalidArgumentError(
        `property names must be 1 to ${LIMITS.propertyName} characters; got ${quoteInput(k)}`,
      );
    }
    bytes += Buffer.byteLength(k) + Buffer.byteLength(props[k] ?? '');
  }
  return bytes;
}

/** int64 fields arrive as strings (longs: String); negative or non-integer values are refused. */
export function nonNegativeInt(value: string | number | undefined, field: string): number {
  if (value === undefined || value === '') return 0;
  const n = typeof value === 'number' ? value : Number(value);
  if (!Number.isSafeInteger(n) || n < 0) {
    throw new InvalidArgumentError(
      `${field} must be a non-negative integer, got ${quoteInput(String(value))}`,
    );
  }
  return n;
}

/** Refuses a duration above its configured maximum, naming the setting. */
export function atMost(ms: number, max: number, field: string, setting: string): number {
  if (ms > max) {
    throw new InvalidArgumentError(
      `${field} is ${formatDuration(Math.round(ms))}; the limit is ${formatDuration(max)} (${setting})`,
    );
  }
  return ms;
}
