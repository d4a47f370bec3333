/**
 * The message model shared by every layer. Bodies are bytes, so binary payloads
 * pass unchanged (a proto3 string field must be valid UTF-8; the wire's bytes field carries them).
 */

/** What a publisher hands to a producer. */
export interface OutgoingMessage {
  body: Uint8Array | string;
  /** Ordering key: messages with the same key are delivered in publish order. */
  key?: string | undefined;
  tag?: string | undefined;
  /** A business key for look-ups (RocketMQ "keys", message_key on the wire). */
  businessKey?: string | undefined;
  properties?: Readonly<Record<string, string>> | undefined;
  /** Epoch milliseconds before which the message must not be delivered. */
  deliverAt?: number | undefined;
}

/** A message as a consumer sees it. */
export interface Message {
  readonly id: string;
  readonly topic: string;
  readonly body: Uint8Array;
  readonly key: string | undefined;
  readonly tag: string | undefined;
  readonly businessKey: string | undefined;
  readonly properties: Readonly<Record<string, string>>;
  readonly deliverAt: number | undefined;
  /** Epoch milliseconds when the broker accepted the message. */
  readonly bornAt: number;
  /** How many times this message was delivered before this delivery. */
  readonly reconsumeCount: number;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export function toBytes(body: Uint8Array | string): Uint8Array {
  return typeof body === 'string' ? encoder.encode(body) : body;
}

/** The body as UTF-8 text (invalid sequences become U+FFFD; use `body` for binary data). */
export function bodyText(message: Pick<Message, 'body'>): string {
  return decoder.decode(message.body);
}

/** Parses the body as JSON. */
export function bodyJson<T = unknown>(message: Pick<Message, 'body'>): T {
  return JSON.parse(bodyText(message)) as T;
}
