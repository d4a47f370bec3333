import type { Message, OutgoingMessage } from '../core/message.js';
import type { StartPosition } from './start.js';

export type { StartPosition } from './start.js';

/**
 * The one contract every broker adapter implements. Nothing above this file imports a broker
 * client library. Kept small on purpose: a capability a broker lacks is an UNSUPPORTED error
 * naming the broker, never a method that silently does nothing.
 */

export interface BrokerCapabilities {
  /** Same key delivered in publish order. */
  readonly ordered: boolean;
  /** deliverAt honoured by the broker. */
  readonly delay: boolean;
  /** Two-phase (half message, commit / rollback) publishing. */
  readonly transactions: boolean;
  /** Tag expressions (`a||b`) evaluated by the adapter or the broker. */
  readonly tagFilter: boolean;
  /** Messages survive a broker restart. */
  readonly durable: boolean;
  /** A subscriber can say where a new group starts (SubscribeOptions.start). */
  readonly startPosition: boolean;
}

/**
 * The ranges a broker accepts for subscribe options, declared beside its capabilities so a
 * caller can discover them (the gateway's `ackTimeout` must fit every broker it routes to).
 * A value outside them is refused with INVALID_ARGUMENT naming the option, the range and the
 * broker, never clamped.
 */
export interface BrokerLimits {
  /** Shortest ack timeout the broker can keep (its redelivery clock's resolution or minimum). */
  readonly minAckTimeoutMs: number;
  /** Longest ack timeout the broker can keep. */
  readonly maxAckTimeoutMs: number;
  /** Most unsettled deliveries one subscription may hold. */
  readonly maxInFlight: number;
}

/** Credentials a remote caller presented; adapters that authenticate per caller use them. */
export interface Credentials {
  readonly accessKeyId: string;
  readonly accessKeySecret: string;
}

export interface SendResult {
  readonly messageId: string;
}

/** A half message: invisible to consumers until committed, discarded on rollback. */
export interface PreparedTransaction {
  readonly messageId: string;
  readonly transactionId: string;
  commit(): Promise<void>;
  rollback(): Promise<void>;
}

export interface PrepareOptions {
  /**
   * How long the prepared message may stay undecided before it is committed anyway (the
   * transaction's immunity time). Adapters that hold the message themselves commit it at this
   * deadline even if the process that prepared it is gone; others leave it to the caller.
   */
  immunityMs?: number | undefined;
}

export interface ProducerOptions {
  credentials?: Credentials | undefined;
}

export interface Producer {
  readonly topic: string;
  send(message: OutgoingMessage): Promise<SendResult>;
  /** Two-phase publish; UNSUPPORTED where `capabilities.transactions` is false. */
  prepare(message: OutgoingMessage, options?: PrepareOptions): Promise<PreparedTransaction>;
  /** Idempotent; resolves when the producer's handles are released. */
  close(): Promise<void>;
}

export interface SubscribeOptions {
  topic: string;
  group: string;
  /** Tag expression: `*` (default) or `a||b`. */
  filter?: string | undefined;
  /** Deliveries handed out and not yet acked or nacked; the adapter pulls only below this. */
  maxInFlight?: number | undefined;
  /** Hold back a key's next message until the previous one is settled (where supported). */
  ordered?: boolean | undefined;
  /**
   * Where a group seen for the first time starts: 'latest' (default), 'earliest', or the first
   * message published at or after a time (epoch ms). A broker that cannot start somewhere refuses
   * with UNSUPPORTED naming itself, never silently starting elsewhere.
   */
  start?: StartPosition | undefined;
  /** An unsettled delivery is redelivered after this long. */
  ackTimeoutMs?: number | undefined;
  credentials?: Credentials | undefined;
}

export interface NackOptions {
  /** Redeliver no sooner than this; 0 (default) means as soon as possible. */
  delayMs?: number | undefined;
  /** Why processing failed; kept on the message if it ends up in a dead-letter topic. */
  reason?: string | undefined;
  /**
   * The consumer never received this delivery (its stream stopped reading before the message
   * could be written): where the adapter counts delivery attempts itself, this one is not
   * counted, so a stuck client cannot push a message to the dead-letter topic. Brokers that count
   * on the server (NATS, RocketMQ) count it anyway.
   */
  uncounted?: boolean | undefined;
}

export interface Delivery {
  readonly message: Message;
  /**
   * Settles the delivery. Acking twice is harmless; acking a delivery the subscription no longer
   * holds (closed, expired, revoked) rejects with NOT_FOUND: the message will be redelivered.
   */
  ack(): Promise<void>;
  /** Gives the message back for redelivery after `delayMs`. Same NOT_FOUND rule as ack(). */
  nack(options?: NackOptions): Promise<void>;
}

export interface Subscription extends AsyncIterable<Delivery> {
  readonly topic: string;
  readonly group: string;
  /** Deliveries handed out and not yet settled. */
  readonly inFlight: number;
  /**
   * Deliveries ready now, without waiting: at most `max`, within maxInFlight; [] when none is.
   * Optional: an adapter that holds deliveries in memory can hand several over in one call,
   * sparing a promise per delivery; without it callers take them one at a time from the iterator.
   */
  takeReady?(max: number): Delivery[];
  /**
   * Ends the iteration and releases every unsettled delivery for redelivery at once.
   * Idempotent; resolves when the subscription's handles are gone.
   */
  close(): Promise<void>;
}

export interface HealthStatus {
  readonly ok: boolean;
  readonly detail: string;
}

/** Counters an adapter may expose for the gateway's /metrics; every field is optional. */
export interface BrokerCounters {
  /** Consumer groups forgotten after their retention period without a subscription. */
  readonly groupsExpired?: number;
  /** Retained messages that no consumer group owed, dropped to make room for new ones. */
  readonly backlogDropped?: number;
  /** Bytes of messages the broker holds in this process (the embedded broker). */
  readonly retainedBytes?: number;
  /** Delayed messages this process wrote to the broker's holding storage (Kafka, NATS). */
  readonly heldDelay?: number;
  /** Prepared transactions this process wrote to the holding storage. */
  readonly heldTransaction?: number;
  /** Held messages this process's mover published to their topic when due or committed. */
  readonly holdingMoves?: number;
  /** Moves done twice (a crash or rebalance between publish and ack): duplicates, never losses. */
  readonly holdingDuplicates?: number;
  /** Sum and count of how late released messages were, in milliseconds. */
  readonly holdingLatenessSumMs?: number;
  readonly holdingLatenessCount?: number;
}

export interface Broker {
  /** 'memory', 'kafka', 'rocketmq', 'nats': used in error messages and metrics. */
  readonly kind: string;
  /** The URL this broker was opened with, credentials removed. */
  readonly url: string;
  readonly capabilities: BrokerCapabilities;
  readonly limits: BrokerLimits;
  producer(topic: string, options?: ProducerOptions): Promise<Producer>;
  subscribe(options: SubscribeOptions): Promise<Subscription>;
  health(): Promise<HealthStatus>;
  /** Cheap counters for a metrics scrape, where the adapter keeps any. */
  counters?(): BrokerCounters;
  /** Closes every producer and subscription it opened. Idempotent. */
  close(): Promise<void>;
}

/** Options every adapter accepts; adapter-specific settings travel in the URL's query. */
export interface BrokerOpenOptions {
  /** Default for SubscribeOptions.ackTimeoutMs. */
  ackTimeoutMs?: number | undefined;
  /** Diagnostics sink; adapters never write to the console on their own. */
  log?: BrokerLog | undefined;
}

export interface BrokerLog {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

export const DEFAULT_MAX_IN_FLIGHT = 64;
export const DEFAULT_ACK_TIMEOUT_MS = 30_000;
/**
 * Longest timer Node keeps: a setTimeout above 2^31 - 1 ms fires after 1 ms instead, which would
 * turn a long ack timeout into an immediate redelivery.
 */
export const MAX_TIMER_MS = 2 ** 31 - 1;
