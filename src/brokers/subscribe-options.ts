import { InvalidArgumentError, UnsupportedError } from '../core/errors.js';
import { parseTagExpression, type TagFilter } from '../core/tags.js';
import {
  type BrokerCapabilities,
  type BrokerLimits,
  type Credentials,
  DEFAULT_ACK_TIMEOUT_MS,
  DEFAULT_MAX_IN_FLIGHT,
  type SubscribeOptions,
} from './broker.js';
import { checkStart, type StartPosition } from './start.js';

/** Subscribe options after checking: every field set, every value inside the broker's limits. */
export interface SubscribeSettings {
  readonly topic: string;
  readonly group: string;
  readonly filter: TagFilter;
  readonly maxInFlight: number;
  readonly ordered: boolean;
  /** 'latest' when the caller gave none (also on brokers that cannot choose: the group's own start). */
  readonly start: StartPosition;
  readonly ackTimeoutMs: number;
  readonly credentials: Credentials | undefined;
}

/** What a broker adapter tells the normaliser about itself. */
export interface SubscribeContract {
  /** 'memory', 'kafka', ...: named in every refusal. */
  readonly kind: string;
  readonly capabilities: BrokerCapabilities;
  readonly limits: BrokerLimits;
  /** The ack timeout the broker was opened with (URL or open option), before the project default. */
  readonly defaultAckTimeoutMs?: number | undefined;
  /** How to get what `start` would have done on a broker without startPosition. */
  readonly startHint?: string | undefined;
}

/**
 * The one check of SubscribeOptions every adapter runs first: an option the broker cannot honour
 * is an error naming the option, the accepted range and the broker, never silently ignored or
 * clamped. Topic and group name rules stay with the adapter (they are the broker's own).
 */
export function normaliseSubscribe(
  contract: SubscribeContract,
  options: SubscribeOptions,
): SubscribeSettings {
  const { kind, limits } = contract;
  if (options === null || typeof options !== 'object') {
    throw new InvalidArgumentError('subscribe options must be an object with topic and group');
  }
  if (typeof options.topic !== 'string' || options.topic === '') {
    throw new InvalidArgumentError('subscribe needs a topic (a non-empty string)');
  }
  if (typeof options.group !== 'string' || options.group === '') {
    throw new InvalidArgumentError('subscribe needs a consumer group (a non-empty string)');
  }
  const maxInFlight = options.maxInFlight ?? DEFAULT_MAX_IN_FLIGHT;
  if (!Number.isSafeInteger(maxInFlight) || maxInFlight < 1 || maxInFlight > limits.maxInFlight) {
    throw new InvalidArgumentError(
      `maxInFlight ${String(maxInFlight)} is not valid for ${kind}; use a whole number from 1 to ${limits.maxInFlight}`,
    );
  }
  const ackTimeoutMs = options.ackTimeoutMs ?? contract.defaultAckTimeoutMs ?? DEFAULT_ACK_TIMEOUT_MS;
  if (
    typeof ackTimeoutMs !== 'number' ||
    !Number.isFinite(ackTimeoutMs) ||
    ackTimeoutMs < limits.minAckTimeoutMs ||
    ackTimeoutMs > limits.maxAckTimeoutMs
  ) {
    throw new InvalidArgumentError(
      `ackTimeoutMs ${String(ackTimeoutMs)} is not valid for ${kind}; use ${limits.minAckTimeoutMs} to ${limits.maxAckTimeoutMs} ms`,
    );
  }
  if (options.ordered !== undefined && typeof options.ordered !== 'boolean') {
    throw new InvalidArgumentError(`ordered must be true or false, got ${String(options.ordered)}`);
  }
  const { capabilities } = contract;
  if (options.ordered === true && !capabilities.ordered) {
    throw new UnsupportedError(
      `${kind} cannot keep a key's messages in order (ordered); leave ordered unset`,
    );
  }
  const filter = parseTagExpression(options.filter);
  if (filter.tags !== undefined && !capabilities.tagFilter) {
    throw new UnsupportedError(
      `${kind} cannot filter by tag (filter "${filter.expression}"); use "*" or leave it unset`,
    );
  }
  const start = checkStart(options.start);
  if (options.start !== undefined && !capabilities.startPosition) {
    throw new UnsupportedError(
      `${kind} cannot choose where a new consumer group starts${contract.startHint ? `: ${contract.startHint}` : ''}; leave start unset`,
    );
  }
  return {
    topic: options.topic,
    group: options.group,
    filter,
    maxInFlight,
    ordered: options.ordered ?? false,
    start,
    ackTimeoutMs,
    credentials: options.credentials,
  };
}
