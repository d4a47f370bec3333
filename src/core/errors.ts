/**
 * One error base for the whole package. `code` is stable and part of the public API: the
 * gateway maps it to a gRPC status in one table, callers branch on it, logs index it.
 */
export const ERROR_CODES = [
  'INVALID_ARGUMENT',
  'NOT_FOUND',
  'TOPIC_NOT_FOUND',
  'ALREADY_EXISTS',
  'UNSUPPORTED',
  'RESOURCE_EXHAUSTED',
  'UNAVAILABLE',
  'CLOSED',
  'TIMEOUT',
  'ABORTED',
  'UNAUTHENTICATED',
  'PERMISSION_DENIED',
  'FAILED_PRECONDITION',
  'INTERNAL',
] as const;

export type ErrorCode = (typeof ERROR_CODES)[number];

export interface MqErrorOptions {
  cause?: unknown;
  /** Whether the same call may succeed if simply tried again later. */
  retryable?: boolean;
}

/** Codes whose failures are transient by nature unless the thrower says otherwise. */
const RETRYABLE_BY_DEFAULT: ReadonlySet<ErrorCode> = new Set([
  'UNAVAILABLE',
  'TIMEOUT',
  'RESOURCE_EXHAUSTED',
]);

export class MqError extends Error {
  readonly code: ErrorCode;
  readonly retryable: boolean;

  constructor(code: ErrorCode, message: string, options: MqErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'MqError';
    this.code = code;
    this.retryable = options.retryable ?? RETRYABLE_BY_DEFAULT.has(code);
  }
}

export class InvalidArgumentError extends MqError {
  static readonly code = 'INVALID_ARGUMENT' as const;
  constructor(message: string, options?: MqErrorOptions) {
    super('INVALID_ARGUMENT', message, options);
    this.name = 'InvalidArgumentError';
  }
}

export class NotFoundError extends MqError {
  static readonly code = 'NOT_FOUND' as const;
  constructor(message: string, options?: MqErrorOptions) {
    super('NOT_FOUND', message, options);
    this.name = 'NotFoundError';
  }
}

export class TopicNotFoundError extends MqError {
  static readonly code = 'TOPIC_NOT_FOUND' as const;
  constructor(message: string, options?: MqErrorOptions) {
    super('TOPIC_NOT_FOUND', message, options);
    this.name = 'TopicNotFoundError';
  }
}

export class UnsupportedError extends MqError {
  static readonly code = 'UNSUPPORTED' as const;
  constructor(message: string, options?: MqErrorOptions) {
    super('UNSUPPORTED', message, options);
    this.name = 'UnsupportedError';
  }
}

export class ResourceExhaustedError extends MqError {
  static readonly code = 'RESOURCE_EXHAUSTED' as const;
  constructor(message: string, options?: MqErrorOptions) {
    super('RESOURCE_EXHAUSTED', message, options);
    this.name = 'ResourceExhaustedError';
  }
}

export class UnavailableError extends MqError {
  static readonly code = 'UNAVAILABLE' as const;
  constructor(message: string, options?: MqErrorOptions) {
    super('UNAVAILABLE', message, options);
    this.name = 'UnavailableError';
  }
}

export class ClosedError extends MqError {
  static readonly code = 'CLOSED' as const;
  constructor(message: string, options?: MqErrorOptions) {
    super('CLOSED', message, options);
    this.name = 'ClosedError';
  }
}

export class TimeoutError extends MqError {
  static readonly code = 'TIMEOUT' as const;
  constructor(message: string, options?: MqErrorOptions) {
    super('TIMEOUT', message, options);
    this.name = 'TimeoutError';
  }
}

export function isMqError(err: unknown): err is MqError {
  return err instanceof MqError;
}

/** Wraps anything thrown into an MqError, keeping MqErrors as they are. */
/** The message of anything thrown, for logs and error texts. */
export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

export function toMqError(err: unknown, code: ErrorCode = 'INTERNAL', context?: string): MqError {
  if (err instanceof MqError) return err;
  const text = errorMessage(err);
  return new MqError(code, context ? `${context}: ${text}` : text, { cause: err });
}

/**
 * Quotes a caller's input for an error message or a log line: at most `max` characters, then the
 * length. A message that echoed a 4 MiB topic name or tag expression in full would cost the
 * gateway (and every log reader) that much again per refused call.
 */
export function quoteInput(value: unknown, max = 40): string {
  const text = typeof value === 'string' ? value : String(value);
  if (text.length <= max) return JSON.stringify(text);
  return `${JSON.stringify(text.slice(0, max))}... (${text.length} characters)`;
}

/** Turns an AbortSignal's reason into the ABORTED error callers see. */
export function abortError(signal: AbortSignal, what: string): MqError {
  return new MqError('ABORTED', `${what} was aborted`, { cause: signal.reason });
}

/**
 * Refuses an options object with a key the callee does not know, naming it: a misspelt option
 * (`{ grop: 'x' }`) that is silently ignored does something the caller did not ask for.
 */
export function checkOptionNames(options: object | undefined, known: readonly string[], what: string): void {
  if (options === undefined || options === null) return;
  for (const key of Object.keys(options)) {
    if (!known.includes(key)) {
      throw new InvalidArgumentError(
        `unknown option ${quoteInput(key)} for ${what}; the options are: ${known.join(', ')}`,
      );
    }
  }
}
