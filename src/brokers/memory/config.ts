import { parseDuration } from '../../core/duration.js';
import { InvalidArgumentError } from '../../core/errors.js';
import { parseSize, SIZE_FORMAT } from '../../core/size.js';

/** Settings of one embedded broker; every field has a default a user can run with. */
export interface MemoryBrokerSettings {
  /**
   * Bytes one topic may retain before sends fail: an estimate of the heap its messages take
   * (bodies, metadata and the broker's own bookkeeping per message and per consumer group).
   */
  maxTopicBytes: number;
  /** The same estimate summed over every topic of the broker; never below maxTopicBytes. */
  maxBytes: number;
  /** Largest single message (body plus metadata) accepted. */
  maxMessageBytes: number;
  /** Deliveries without an ack before a message moves to the group's dead-letter topic. */
  maxAttempts: number;
  /** Default visibility timeout when neither the subscription nor the open options set one. */
  ackTimeoutMs: number | undefined;
  /**
   * How long a consumer group with no subscription keeps the messages it has not acked. After
   * that it is forgotten, so a group nobody uses any more stops holding its topic's memory.
   */
  groupRetentionMs: number;
}

export const DEFAULT_MAX_TOPIC_BYTES = 64 * 1024 * 1024;
export const DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024;
export const DEFAULT_MAX_ATTEMPTS = 16;
/**
 * 256MiB: four topics at the default maxTopicBytes. The byte estimate follows the real heap
 * (see MESSAGE_BASE_BYTES in broker.ts), so this is roughly what full topics cost, and it stays
 * at half of the smallest heap limit Node usually picks (V8 gives its old space about a quarter
 * of physical memory: 512MiB on a 2GiB machine), leaving the rest for the gateway itself.
 */
const DEFAULT_MAX_BYTES = 256 * 1024 * 1024;
/**
 * 10 minutes: long enough for a consumer to restart or reconnect without losing its place,
 * short enough that a group nobody comes back for does not block its topic for long.
 */
export const DEFAULT_GROUP_RETENTION_MS = 10 * 60_000;

/**
 * maxBytes when it is not set: the default, or maxTopicBytes if that is larger, so raising only
 * maxTopicBytes still lets one topic fill up to its own limit.
 */
export function defaultMaxBytes(maxTopicBytes: number): number {
  return Math.max(DEFAULT_MAX_BYTES, maxTopicBytes);
}

/** A size setting: `64MiB`, `512KiB`, `1GB` or a plain number of bytes. */
function sizeSetting(text: string, what: string): number {
  const n = parseSize(text);
  if (n === undefined)
    throw new InvalidArgumentError(`${what}: "${text}" is not a size; write ${SIZE_FORMAT}`);
  return n;
}

function parseInteger(text: string, what: string, min: number, max: number): number {
  const n = /^\d+$/.test(text.trim()) ? Number(text.trim()) : Number.NaN;
  if (!Number.isSafeInteger(n) || n < min || n > max) {
    throw new InvalidArgumentError(
      `${what}: "${text}" is not valid; use a whole number from ${min} to ${max}`,
    );
  }
  return n;
}

const PARAMS = [
  'maxTopicBytes',
  'maxBytes',
  'maxMessageBytes',
  'maxAttempts',
  'ackTimeout',
  'groupRetention',
] as const;

/**
 * Reads `memory://?maxTopicBytes=64MiB&maxBytes=256MiB&maxAttempts=16&ackTimeout=30s&groupRetention=10m`.
 * Unknown parameters are rejected: a misspelt limit that silently falls back to the default is
 * worse than no start. maxBytes below maxTopicBytes is refused when the broker is created.
 */
export function parseMemoryUrl(url: URL): MemoryBrokerSettings {
  const settings: MemoryBrokerSettings = {
    maxTopicBytes: DEFAULT_MAX_TOPIC_BYTES,
    maxBytes: DEFAULT_MAX_BYTES,
    maxMessageBytes: DEFAULT_MAX_MESSAGE_BYTES,
    maxAttempts: DEFAULT_MAX_ATTEMPTS,
    ackTimeoutMs: undefined,
    groupRetentionMs: DEFAULT_GROUP_RETENTION_MS,
  };
  let maxBytes: number | undefined;
  for (const [name, value] of url.searchParams) {
    const what = `memory broker URL parameter ${name}`;
    switch (name) {
      case 'maxTopicBytes':
        settings.maxTopicBytes = sizeSetting(value, what);
        if (settings.maxTopicBytes < 1024) {
          throw new InvalidArgumentError(`${what}: "${value}" is too small; use at least 1KiB, e.g. 64MiB`);
        }
        break;
      case 'maxBytes':
        maxBytes = sizeSetting(value, what);
        if (maxBytes < 1024) {
          throw new InvalidArgumentError(`${what}: "${value}" is too small; use at least 1KiB, e.g. 256MiB`);
        }
        break;
      case 'maxMessageBytes':
        settings.maxMessageBytes = sizeSetting(value, what);
        if (settings.maxMessageBytes < 1) {
          throw new InvalidArgumentError(`${what}: "${value}" must be at least 1 byte, e.g. 4MiB`);
        }
        break;
      case 'maxAttempts':
        settings.maxAttempts = parseInteger(value, what, 1, 1000);
        break;
      case 'ackTimeout':
        settings.ackTimeoutMs = parseDuration(value, what);
        if (settings.ackTimeoutMs < 1) {
          throw new InvalidArgumentError(`${what}: "${value}" must be longer than 0, e.g. 30s`);
        }
        break;
      case 'groupRetention':
        settings.groupRetentionMs = parseDuration(value, what);
        if (settings.groupRetentionMs < 1) {
          throw new InvalidArgumentError(`${what}: "${value}" must be longer than 0, e.g. 10m`);
        }
        break;
      default:
        throw new InvalidArgumentError(
          `memory broker URL has unknown parameter "${name}"; supported: ${PARAMS.join(', ')}`,
        );
    }
  }
  settings.maxBytes = maxBytes ?? defaultMaxBytes(settings.maxTopicBytes);
  return settings;
}
