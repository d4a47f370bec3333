import { InvalidArgumentError, quoteInput } from '../core/errors.js';

/**
 * Where a consumer group seen for the first time starts reading: at the next message published
 * ('latest', the default, as Kafka and RocketMQ do), at the oldest one the broker still keeps
 * ('earliest'), or at the first one published at or after a time (epoch milliseconds). A group
 * that already has a position keeps it.
 */
export type StartPosition = 'latest' | 'earliest' | number;

/** Checks a start position; undefined means 'latest'. */
export function checkStart(start: unknown): StartPosition {
  if (start === undefined || start === 'latest') return 'latest';
  if (start === 'earliest') return 'earliest';
  if (typeof start === 'number' && Number.isSafeInteger(start) && start >= 0) return start;
  throw new InvalidArgumentError(
    `start ${quoteInput(String(start))} is not valid; use "latest", "earliest" or a time in epoch milliseconds`,
  );
}

/**
 * Reads a start position written as text: latest, earliest, an ISO-8601 time
 * (2026-11-27T10:00:00Z) or epoch milliseconds. Empty text is undefined (the default).
 */
export function parseStart(text: string | undefined, what = 'start'): StartPosition | undefined {
  const t = (text ?? '').trim();
  if (t === '') return undefined;
  if (t === 'latest' || t === 'earliest') return t;
  if (/^\d{1,15}$/.test(t)) return Number(t);
  const ms = /^\d{4}-\d\d-\d\d/.test(t) ? Date.parse(t) : Number.NaN;
  if (Number.isFinite(ms) && ms >= 0) return ms;
  throw new InvalidArgumentError(
    `${what} ${quoteInput(t)} is not valid; use latest, earliest, an ISO-8601 time (e.g. 2026-11-27T10:00:00Z) or epoch milliseconds`,
  );
}
