import { InvalidArgumentError } from '../core/errors.js';

/** Name rules shared by every broker: what RocketMQ, Kafka and NATS all accept (after mapping). */
const NAME = /^[A-Za-z0-9_%.-]+$/;
const TAG = /^[^\s|*]+$/;

export const DELAY_LEVELS_MS = [
  1_000, 5_000, 10_000, 30_000, 60_000, 120_000, 180_000, 240_000, 300_000, 360_000, 420_000, 480_000,
  540_000, 600_000, 1_200_000, 1_800_000, 3_600_000, 7_200_000,
] as const;

export function requireId(value: string | undefined, field: string, rpc: string): string {
  if (!value) throw new InvalidArgumentError(`${field} is required: pass the id ${rpc} returned`);
  if (value.length > 200) throw new InvalidArgumentError(`${field} is longer than 200 characters`);
  return value;
}

export function checkName(value: string | undefined, field: 'topic' | 'group_id', max: number): string {
  if (!value) throw new InvalidArgumentError(`${field} is required`);
  if (value.length > max)
    throw new InvalidArgumentError(`${field} "${value.slice(0, 40)}..." is longer than ${max} characters`);
  if (!NAME.test(value)) {
    throw new InvalidArgumentError(
      `${field} "${value}" has characters brokers do not accept: use letters, digits, '_', '-', '.', '%'`,
    );
  }
  return value;
}

export function checkTag(tag: string | undefined): string | undefined {
  if (!tag) return undefined;
  if (tag.length > 128 || !TAG.test(tag)) {
    throw new InvalidArgumentError(
      `tag "${tag.slice(0, 40)}" is invalid: at most 128 characters, without spaces, '|' or '*' (those belong to tag expressions on the consumer side)`,
    );
  }
  return tag;
}

export function checkProperties(
  props: Record<string, string> | undefined,
  max: number,
): Record<string, string> {
  if (!props) return {};
  const keys = Object.keys(props);
  if (keys.length > max) {
    throw new InvalidArgumentError(
      `message has ${keys.length} properties; the limit is ${max} (MAX_PROPERTIES)`,
    );
  }
  for (const k of keys) {
    if (k === '' || k.length > 256)
      throw new InvalidArgumentError('property names must be 1 to 256 characters');
  }
  return props;
}

/** int64 fields arrive as strings (longs: String); negative or non-integer values are refused. */
export function nonNegativeInt(value: string | number | undefined, field: string): number {
  if (value === undefined || value === '') return 0;
  const n = typeof value === 'number' ? value : Number(value);
  if (!Number.isSafeInteger(n) || n < 0) {
    throw new InvalidArgumentError(`${field} must be a non-negative integer, got ${String(value)}`);
  }
  return n;
}
