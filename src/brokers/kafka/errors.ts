import {
  ClosedError,
  isMqError,
  MqError,
  TimeoutError,
  TopicNotFoundError,
  UnavailableError,
} from '../../core/errors.js';

interface Findable {
  findBy?: (property: string, value: unknown) => unknown;
}

/** Looks through @platformatic/kafka's nested errors (MultipleErrors, ResponseError) for a property. */
export function kafkaErrorHas(err: unknown, property: string, value: unknown): boolean {
  if (typeof err !== 'object' || err === null) return false;
  const findBy = (err as Findable).findBy;
  if (typeof findBy !== 'function') return false;
  try {
    return Boolean(findBy.call(err, property, value));
  } catch {
    return false;
  }
}

export function isUnknownTopic(err: unknown): boolean {
  return (
    kafkaErrorHas(err, 'apiId', 'UNKNOWN_TOPIC_OR_PARTITION') ||
    kafkaErrorHas(err, 'apiId', 'UNKNOWN_TOPIC_ID')
  );
}

/** Maps a client-library error to the package's errors, keeping the original as `cause`. */
export function toKafkaMqError(err: unknown, what: string, topic?: string): MqError {
  if (isMqError(err)) return err;
  const text = err instanceof Error ? err.message : String(err);
  if (topic !== undefined && isUnknownTopic(err)) {
    return new TopicNotFoundError(`${what}: topic "${topic}" does not exist on Kafka`, { cause: err });
  }
  if (kafkaErrorHas(err, 'closed', true)) {
    return new ClosedError(`${what}: the Kafka client is closed`, { cause: err });
  }
  if (kafkaErrorHas(err, 'code', 'PLT_KFK_TIMEOUT')) {
    return new TimeoutError(`${what}: Kafka did not answer in time (${text})`, { cause: err });
  }
  if (kafkaErrorHas(err, 'code', 'PLT_KFK_NETWORK') || kafkaErrorHas(err, 'canRetry', true)) {
    return new UnavailableError(`${what}: Kafka is unavailable (${text}); retry later`, { cause: err });
  }
  return new MqError('INTERNAL', `${what}: ${text}`, { cause: err });
}
