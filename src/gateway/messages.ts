import { isUtf8 } from 'node:buffer';
import { InvalidArgumentError } from '../core/errors.js';
import type { Message, OutgoingMessage } from '../core/message.js';
import {
  atMost,
  bounded,
  checkProperties,
  checkTag,
  DELAY_LEVELS_MS,
  LIMITS,
  nonNegativeInt,
} from './validate.js';
import type { WireMessage, WireProperties } from './wire.js';

/**
 * Wire fields to messages and back, for every RPC that sends or delivers: the unary sends, the
 * SendMessages batch, the Publish stream, ReceiveMessages and Subscribe.
 */

/** The send fields any send request or stream entry may carry. */
export interface WireSendFields {
  message_body?: string;
  message_body_bytes?: Buffer;
  tag?: string;
  properties?: WireProperties | null;
  sharding_key?: string;
  start_deliver_time?: string;
  delay_time_level?: string;
}

export interface MessageLimits {
  maxMessageSize: number;
  maxProperties: number;
  maxDelayMs: number;
}

/**
 * Builds a broker message from send fields, refusing anything over a limit with INVALID_ARGUMENT
 * naming it. The ordering key is `sharding_key` (or the property of that name), the delivery
 * time `start_deliver_time`, else `delay_time_level`, else the property `start_deliver_time`.
 */
export function messageOf(req: WireSendFields, limits: MessageLimits): OutgoingMessage {
  const bytes =
    req.message_body_bytes && req.message_body_bytes.length > 0 ? req.message_body_bytes : undefined;
  const text = req.message_body ?? '';
  const props = req.properties ?? {};
  const businessKey = bounded(props.message_key, 'properties.message_key', LIMITS.messageKey);
  const key = req.sharding_key
    ? bounded(req.sharding_key, 'sharding_key', LIMITS.shardingKey)
    : bounded(props.sharding_key, 'properties.sharding_key', LIMITS.shardingKey);
  const tag = checkTag(req.tag);
  // Everything the broker stores counts against MAX_MESSAGE_SIZE, not just the body.
  const size =
    (bytes ? bytes.length : Buffer.byteLength(text)) +
    checkProperties(props.properties, limits.maxProperties) +
    Buffer.byteLength(businessKey) +
    Buffer.byteLength(key) +
    (tag?.length ?? 0);
  if (size > limits.maxMessageSize) {
    throw new InvalidArgumentError(
      `message is ${size} bytes (body, properties and keys); the limit is ${limits.maxMessageSize} (MAX_MESSAGE_SIZE)`,
    );
  }
  return {
    body: bytes ?? text,
    tag,
    key: key || undefined,
    businessKey: businessKey || undefined,
    properties: props.properties ?? {},
    deliverAt: deliverAtOf(req, props, limits.maxDelayMs),
  };
}

function deliverAtOf(req: WireSendFields, props: WireProperties, maxDelayMs: number): number | undefined {
  const bounded = (at: number, field: string): number => {
    atMost(at - Date.now(), maxDelayMs, `${field} (from now)`, 'MAX_DELAY');
    return at;
  };
  const at = nonNegativeInt(req.start_deliver_time, 'start_deliver_time');
  if (at > 0) return bounded(at, 'start_deliver_time');
  const level = nonNegativeInt(req.delay_time_level, 'delay_time_level');
  if (level > 0) {
    const ms = DELAY_LEVELS_MS[level - 1];
    if (ms === undefined) {
      throw new InvalidArgumentError(`delay_time_level ${level} is out of range: use 1-18 (1s ... 2h)`);
    }
    return Date.now() + ms;
  }
  const propAt = nonNegativeInt(props.start_deliver_time, 'properties.start_deliver_time');
  return propAt > 0 ? bounded(propAt, 'properties.start_deliver_time') : undefined;
}

const EMPTY = Buffer.alloc(0);

/**
 * A delivery as the wire carries it. ReceiveMessages sends a UTF-8 body as text (existing clients
 * read message_body); Subscribe (`bytesOnly`) always sends the bytes, sparing a UTF-8 check and
 * a decode and re-encode of every text body.
 */
export function wireMessage(m: Message, receiptHandle: string, bytesOnly = false): WireMessage {
  const body = Buffer.from(m.body.buffer, m.body.byteOffset, m.body.byteLength);
  let properties = m.properties as Record<string, string>;
  if (m.businessKey !== undefined || m.key !== undefined) {
    properties = { ...properties };
    if (m.businessKey !== undefined) properties.KEYS = m.businessKey;
    if (m.key !== undefined) properties.SHARDING_KEY = m.key;
  }
  // A body is sent once: as text when it is UTF-8, else as bytes only. A lossy text copy of a
  // binary body would cost up to 3x its size and push it past clients' 4 MiB receive limit.
  const text = !bytesOnly && isUtf8(body);
  return {
    message_id: m.id,
    receipt_handle: receiptHandle,
    message_body: text ? body.toString('utf8') : '',
    tag: m.tag ?? '',
    properties,
    // A number: encoding an int64 from a string would parse it into a Long first.
    born_timestamp: m.bornAt,
    reconsume_times: m.reconsumeCount,
    topic: m.topic,
    message_body_bytes: text ? EMPTY : body,
  };
}
