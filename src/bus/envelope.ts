import { randomFillSync } from 'node:crypto';
import { z } from 'zod';
import { InvalidArgumentError } from '../core/errors.js';

/**
 * Event envelopes: a small, versioned wrapper around a domain event. `aggregateId` is the
 * ordering key, so every event of one aggregate reaches handlers in publish order.
 */

/** Random bytes drawn in batches: one syscall per 32 ids instead of one per id. */
const pool = Buffer.alloc(10 * 32);
let poolOffset = pool.length;
let lastMs = -1;
let counter = 0;

const hex: string[] = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));

/**
 * A UUID version 7 (RFC 9562): 48-bit Unix milliseconds, then randomness. Ids from one process
 * are strictly increasing: within one millisecond the 12-bit `rand_a` field is a counter seeded
 * at random (RFC 9562 section 6.2, method 1), and when it overflows, or the clock steps back,
 * the timestamp is carried forward instead of going backwards.
 */
export function uuidv7(): string {
  if (poolOffset + 10 > pool.length) {
    randomFillSync(pool);
    poolOffset = 0;
  }
  const r = poolOffset;
  poolOffset += 10;
  let ms = Date.now();
  if (ms > lastMs) {
    lastMs = ms;
    // Seed below 0x800 so a millisecond has at least 2048 increments before it overflows.
    counter = (((pool[r] as number) << 8) | (pool[r + 1] as number)) & 0x7ff;
  } else {
    ms = lastMs;
    counter++;
    if (counter > 0xfff) {
      lastMs = ++ms;
      counter = 0;
    }
  }
  const b = new Uint8Array(16);
  // 48-bit big-endian timestamp; split because bitwise operators truncate to 32 bits.
  const hi = Math.floor(ms / 0x100000000);
  const lo = ms >>> 0;
  b[0] = (hi >>> 8) & 0xff;
  b[1] = hi & 0xff;
  b[2] = lo >>> 24;
  b[3] = (lo >>> 16) & 0xff;
  b[4] = (lo >>> 8) & 0xff;
  b[5] = lo & 0xff;
  b[6] = 0x70 | (counter >>> 8);
  b[7] = counter & 0xff;
  b[8] = 0x80 | ((pool[r + 2] as number) & 0x3f);
  for (let i = 9; i < 16; i++) b[i] = pool[r + i - 6] as number;
  let s = '';
  for (let i = 0; i < 16; i++) {
    if (i === 4 || i === 6 || i === 8 || i === 10) s += '-';
    s += hex[b[i] as number];
  }
  return s;
}

/** The epoch milliseconds encoded in a UUIDv7. */
export function uuidv7Time(id: string): number {
  return Number.parseInt(id.slice(0, 8) + id.slice(9, 13), 16);
}

const fields = {
  eventId: z.uuid({ version: 'v7', error: 'must be a UUIDv7 (use uuidv7() or createEnvelope())' }),
  aggregateId: z.string({ error: 'must be a non-empty string' }).min(1, 'must be a non-empty string'),
  eventType: z.string({ error: 'must be a non-empty string' }).min(1, 'must be a non-empty string'),
  eventVersion: z
    .number({ error: 'must be an integer greater than 0' })
    .int('must be an integer greater than 0')
    .positive('must be an integer greater than 0'),
  occurredAt: z.iso.datetime({
    offset: true,
    error: 'must be an ISO 8601 date-time, e.g. 2025-01-31T12:00:00Z',
  }),
  payload: z.unknown().refine((v) => v !== undefined, 'is required'),
  traceId: z.string().min(1).optional(),
  correlationId: z.string().min(1).optional(),
  tenantId: z.string().min(1).optional(),
};

/**
 * Publishing is strict (an unknown field is most likely a typo the caller wants to hear about);
 * receiving is lenient and drops unknown fields, so newer publishers can add fields without
 * sending every older consumer's messages to the dead-letter topic.
 */
const outgoingSchema = z.strictObject(fields);
const incomingSchema = z.object(fields);

export interface Envelope<P = unknown> {
  /** UUIDv7: unique, and sortable by creation time. */
  eventId: string;
  /** The ordering key: events of one aggregate are handled in publish order. */
  aggregateId: string;
  eventType: string;
  /** Schema version of `payload`, an integer > 0. */
  eventVersion: number;
  /** ISO 8601 date-time. */
  occurredAt: string;
  payload: P;
  traceId?: string | undefined;
  correlationId?: string | undefined;
  tenantId?: string | undefined;
}

export type EnvelopeInit<P = unknown> = Omit<Envelope<P>, 'eventId' | 'occurredAt' | 'eventVersion'> &
  Partial<Pick<Envelope<P>, 'eventId' | 'occurredAt' | 'eventVersion'>>;

/** Fills in eventId (a fresh UUIDv7), occurredAt (now) and eventVersion (1) when absent. */
export function createEnvelope<P>(init: EnvelopeInit<P>): Envelope<P> {
  const eventId = init.eventId ?? uuidv7();
  return {
    ...init,
    eventId,
    eventVersion: init.eventVersion ?? 1,
    occurredAt: init.occurredAt ?? new Date(uuidv7Time(eventId)).toISOString(),
  };
}

function describeIssues(error: z.ZodError): string {
  return error.issues
    .map((issue) => {
      const path = issue.path.length > 0 ? issue.path.join('.') : '(root)';
      if (issue.code === 'unrecognized_keys') return `unknown field(s) ${issue.keys.join(', ')}`;
      return `field "${path}" ${issue.message}`;
    })
    .join('; ');
}

/** Throws InvalidArgumentError naming every invalid field. */
export function validateEnvelope(value: unknown): Envelope {
  const parsed = outgoingSchema.safeParse(value);
  if (!parsed.success) throw new InvalidArgumentError(`invalid envelope: ${describeIssues(parsed.error)}`);
  return parsed.data as Envelope;
}

/** Decodes a received body; throws InvalidArgumentError naming every invalid field. */
export function decodeEnvelope(body: string): Envelope {
  let json: unknown;
  try {
    json = JSON.parse(body);
  } catch (cause) {
    throw new InvalidArgumentError(`invalid envelope: body is not JSON (${(cause as Error).message})`, {
      cause,
    });
  }
  const parsed = incomingSchema.safeParse(json);
  if (!parsed.success) throw new InvalidArgumentError(`invalid envelope: ${describeIssues(parsed.error)}`);
  return parsed.data as Envelope;
}
