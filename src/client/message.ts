import { InvalidArgumentError } from '../core/errors.js';
import type { WireMessage, WireProperties } from './wire.js';

/**
 * Builds the `properties` of a send request, the way existing clients of the gateway do:
 * `new MessageProperties().messageKey('order-1').putProperty('source', 'web')`.
 */
export class MessageProperties {
  readonly #props: Record<string, string> = {};
  #messageKey = '';
  #shardingKey = '';
  #startDeliverTime = 0;
  #transCheckImmunityTime = 0;

  /** A user property; the value is converted to a string. */
  putProperty(key: string, value: string | number | boolean): this {
    if (typeof key !== 'string' || key === '')
      throw new InvalidArgumentError('property names must be non-empty');
    this.#props[key] = String(value);
    return this;
  }

  /** The business key ("KEYS" in RocketMQ) used to look a message up. */
  messageKey(key: string): this {
    this.#messageKey = key;
    return this;
  }

  /** The ordering key: messages with the same key are delivered in publish order. */
  shardingKey(key: string): this {
    this.#shardingKey = key;
    return this;
  }

  /** Milliseconds since the epoch before which the message is not delivered. */
  startDeliverTime(epochMs: number): this {
    if (!Number.isSafeInteger(epochMs) || epochMs < 0) {
      throw new InvalidArgumentError(`startDeliverTime must be ms since the epoch, got ${String(epochMs)}`);
    }
    this.#startDeliverTime = epochMs;
    return this;
  }

  /** Seconds a transaction may stay unresolved before the gateway commits it. */
  transCheckImmunityTime(seconds: number): this {
    if (!Number.isInteger(seconds) || seconds < 0) {
      throw new InvalidArgumentError(
        `transCheckImmunityTime must be whole seconds >= 0, got ${String(seconds)}`,
      );
    }
    this.#transCheckImmunityTime = seconds;
    return this;
  }

  /** The wire `MessageProperties` object. */
  toWire(): WireProperties {
    return {
      properties: { ...this.#props },
      message_key: this.#messageKey,
      sharding_key: this.#shardingKey,
      start_deliver_time: String(this.#startDeliverTime),
      trans_check_immunity_time: this.#transCheckImmunityTime,
    };
  }
}

/** What publish methods accept as properties: the builder or the wire object itself. */
export type PropertiesInput = MessageProperties | WireProperties | undefined;

export function wireProperties(input: PropertiesInput): WireProperties {
  if (input === undefined || input === null) return {};
  if (input instanceof MessageProperties) return input.toWire();
  return input;
}

/**
 * A body: text goes in message_body, bytes in message_body_bytes (binary-safe), anything else is
 * sent as its JSON text.
 */
export type MessageBody = string | Uint8Array | object | number | boolean | null;

export function wireBody(body: MessageBody): { message_body: string; message_body_bytes?: Buffer } {
  if (typeof body === 'string') return { message_body: body };
  if (body instanceof Uint8Array) {
    return {
      message_body: '',
      message_body_bytes: Buffer.isBuffer(body)
        ? body
        : Buffer.from(body.buffer, body.byteOffset, body.byteLength),
    };
  }
  let text: string | undefined;
  try {
    text = JSON.stringify(body);
  } catch (err) {
    throw new InvalidArgumentError(`message body cannot be serialised as JSON: ${(err as Error).message}`, {
      cause: err,
    });
  }
  if (text === undefined) {
    throw new InvalidArgumentError('message body must be a string, bytes, or a JSON-serialisable value');
  }
  return { message_body: text };
}

/** How a received message reaches back to its consumer for ack and nack. */
export interface AckTarget {
  ackWith(consumerId: string, receiptHandle: string, generation: number): Promise<void>;
  nackWith(consumerId: string, receiptHandle: string, delayMs: number, generation: number): Promise<void>;
}

const EMPTY = Buffer.alloc(0);

/** A message delivered to a consumer. */
export class ReceivedMessage {
  readonly messageId: string;
  readonly receiptHandle: string;
  readonly topic: string;
  readonly tag: string;
  readonly properties: Readonly<Record<string, string>>;
  /** Epoch milliseconds when the broker accepted the message. */
  readonly bornTimestamp: number;
  /** How many times it was delivered before this delivery. */
  readonly reconsumeTimes: number;
  /** The body byte for byte. */
  readonly bodyBytes: Buffer;
  #body: string | undefined;
  readonly #target: AckTarget;
  readonly #consumerId: string;
  readonly #generation: number;

  constructor(wire: WireMessage, target: AckTarget, consumerId: string, generation: number) {
    this.messageId = wire.message_id;
    this.receiptHandle = wire.receipt_handle;
    this.topic = wire.topic ?? '';
    this.tag = wire.tag ?? '';
    this.properties = wire.properties ?? {};
    this.bornTimestamp = Number(wire.born_timestamp ?? 0);
    this.reconsumeTimes = wire.reconsume_times ?? 0;
    const bytes = wire.message_body_bytes;
    // Subscribe and binary bodies come as bytes (text empty); ReceiveMessages sends a text body
    // as text only (an older gateway sent both).
    if (bytes !== undefined && bytes !== null && bytes.length > 0) this.bodyBytes = bytes;
    else {
      this.#body = wire.message_body ?? '';
      this.bodyBytes = this.#body === '' ? EMPTY : Buffer.from(this.#body);
    }
    this.#target = target;
    this.#consumerId = consumerId;
    this.#generation = generation;
  }

  /** The body as text (lossy for binary bodies: use bodyBytes); decoded on first use. */
  get body(): string {
    this.#body ??= this.bodyBytes.toString('utf8');
    return this.#body;
  }

  /** The business key (message_key at publish time), if any. */
  get messageKey(): string | undefined {
    return this.properties.KEYS;
  }

  /** The ordering key, if any. */
  get shardingKey(): string | undefined {
    return this.properties.SHARDING_KEY;
  }

  /** The body parsed as JSON. */
  json<T = unknown>(): T {
    return JSON.parse(this.bodyBytes.toString('utf8')) as T;
  }

  /** @internal Which stream of its consumer delivered it. */
  generationOf(): number {
    return this.#generation;
  }

  /** Acknowledges this delivery on the consumer session it arrived on. */
  ack(): Promise<void> {
    return this.#target.ackWith(this.#consumerId, this.receiptHandle, this.#generation);
  }

  /** Gives the message back for redelivery after `delayMs` instead of waiting for the ack timeout. */
  nack(delayMs = 0): Promise<void> {
    return this.#target.nackWith(this.#consumerId, this.receiptHandle, delayMs, this.#generation);
  }
}
