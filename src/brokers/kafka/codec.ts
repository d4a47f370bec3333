import { InvalidArgumentError } from '../../core/errors.js';
import { type Message, type OutgoingMessage, toBytes } from '../../core/message.js';

/**
 * What the contract's message fields become on a Kafka record. Properties travel as plain
 * headers under their own names (so Java consumers see them as such, and headers a Java
 * producer sets arrive as properties); our own fields use three reserved header names. Only
 * those names are reserved, not their `mqgate-` prefix: the event bus records its own
 * properties (mqgate-error, mqgate-attempts) on dead letters, and they must travel as headers.
 */
export const HEADER_TAG = 'mqgate-tag';
export const HEADER_BUSINESS_KEY = 'mqgate-business-key';
export const HEADER_BORN_AT = 'mqgate-born-at';
/**
 * The message id of a record the holding mechanism released (a delayed message): the id its
 * publisher was given before the record existed, used instead of topic/partition/offset.
 */
export const HEADER_ID = 'mqgate-id';
const RESERVED_HEADERS: ReadonlySet<string> = new Set([
  HEADER_TAG,
  HEADER_BUSINESS_KEY,
  HEADER_BORN_AT,
  HEADER_ID,
]);

export interface EncodedRecord {
  key: Buffer | undefined;
  value: Buffer;
  headers: Map<Buffer, Buffer>;
  timestamp: bigint;
}

export function encodeMessage(message: OutgoingMessage, now: number, id?: string): EncodedRecord {
  const headers = new Map<Buffer, Buffer>();
  if (id !== undefined) headers.set(Buffer.from(HEADER_ID), Buffer.from(id));
  if (message.tag !== undefined) headers.set(Buffer.from(HEADER_TAG), Buffer.from(message.tag));
  if (message.businessKey !== undefined) {
    headers.set(Buffer.from(HEADER_BUSINESS_KEY), Buffer.from(message.businessKey));
  }
  headers.set(Buffer.from(HEADER_BORN_AT), Buffer.from(String(now)));
  for (const [name, value] of Object.entries(message.properties ?? {})) {
    if (RESERVED_HEADERS.has(name)) {
      throw new InvalidArgumentError(
        `message property "${name}" is a header name the Kafka adapter reserves for the message's own fields (${[...RESERVED_HEADERS].join(', ')}); rename the property`,
      );
    }
    headers.set(Buffer.from(name), Buffer.from(value));
  }
  const body = toBytes(message.body);
  return {
    key: message.key === undefined ? undefined : Buffer.from(message.key),
    value: Buffer.from(body.buffer, body.byteOffset, body.byteLength),
    headers,
    timestamp: BigInt(now),
  };
}

export interface RawRecord {
  key: Buffer | null;
  value: Buffer | null;
  headers: Array<[Buffer | null, Buffer | null]>;
  timestamp: bigint;
}

/** The tag header alone, read before decoding so filtered records cost no allocation. */
export function recordTag(headers: Array<[Buffer | null, Buffer | null]>): string | undefined {
  for (const [k, v] of headers) {
    if (k !== null && k.length === HEADER_TAG.length && k.toString() === HEADER_TAG) {
      return v === null ? undefined : v.toString();
    }
  }
  return undefined;
}

export function messageId(topic: string, partition: number, offset: bigint): string {
  return `${topic}/${partition}/${offset}`;
}

export function decodeRecord(
  topic: string,
  partition: number,
  offset: bigint,
  record: RawRecord,
  reconsumeCount: number,
): Message {
  let tag: string | undefined;
  let businessKey: string | undefined;
  let id: string | undefined;
  let bornAt = Number(record.timestamp);
  const properties: Record<string, string> = {};
  for (const [k, v] of record.headers) {
    if (k === null) continue;
    const name = k.toString();
    const value = v === null ? '' : v.toString();
    if (name === HEADER_TAG) tag = v === null ? undefined : value;
    else if (name === HEADER_BUSINESS_KEY) businessKey = v === null ? undefined : value;
    else if (name === HEADER_ID) id = value || undefined;
    else if (name === HEADER_BORN_AT) {
      const n = Number(value);
      if (Number.isFinite(n) && n > 0) bornAt = n;
    } else properties[name] = value;
  }
  const value = record.value ?? Buffer.alloc(0);
  return {
    id: id ?? messageId(topic, partition, offset),
    topic,
    // A copy: a view would keep the whole fetch response alive as long as the message lives.
    body: new Uint8Array(value),
    key: record.key === null ? undefined : record.key.toString(),
    tag,
    businessKey,
    properties,
    deliverAt: undefined,
    bornAt,
    reconsumeCount,
  };
}
