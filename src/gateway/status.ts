import { status as GrpcStatus } from '@grpc/grpc-js';
import { type ErrorCode, MqError } from '../core/errors.js';
import type { Redactor } from './redact.js';

/** The one table from error codes to gRPC statuses. */
export const STATUS_BY_CODE: Record<ErrorCode, GrpcStatus> = {
  INVALID_ARGUMENT: GrpcStatus.INVALID_ARGUMENT,
  NOT_FOUND: GrpcStatus.NOT_FOUND,
  TOPIC_NOT_FOUND: GrpcStatus.NOT_FOUND,
  ALREADY_EXISTS: GrpcStatus.ALREADY_EXISTS,
  UNSUPPORTED: GrpcStatus.UNIMPLEMENTED,
  RESOURCE_EXHAUSTED: GrpcStatus.RESOURCE_EXHAUSTED,
  UNAVAILABLE: GrpcStatus.UNAVAILABLE,
  CLOSED: GrpcStatus.UNAVAILABLE,
  TIMEOUT: GrpcStatus.DEADLINE_EXCEEDED,
  ABORTED: GrpcStatus.ABORTED,
  UNAUTHENTICATED: GrpcStatus.UNAUTHENTICATED,
  PERMISSION_DENIED: GrpcStatus.PERMISSION_DENIED,
  FAILED_PRECONDITION: GrpcStatus.FAILED_PRECONDITION,
  INTERNAL: GrpcStatus.INTERNAL,
};

export const STATUS_NAME: Record<number, string> = Object.fromEntries(
  Object.entries(GrpcStatus)
    .filter(([, v]) => typeof v === 'number')
    .map(([k, v]) => [v as number, k]),
);

/** Longest status detail sent: broker errors can carry whole stack-like texts. */
const MAX_DETAILS = 2000;

export interface StatusObject {
  code: GrpcStatus;
  details: string;
}

export type StatusMapper = (err: unknown) => StatusObject;

/** Maps any error to the status a client sees, with every known secret scrubbed from its text. */
export function statusMapper(redactor: Redactor): StatusMapper {
  return (err) => {
    const { code, details } = toStatus(err);
    const text = redactor.scrub(details);
    return { code, details: text.length > MAX_DETAILS ? `${text.slice(0, MAX_DETAILS)}...` : text };
  };
}

function toStatus(err: unknown): StatusObject {
  if (err instanceof MqError) {
    return { code: STATUS_BY_CODE[err.code], details: `${err.code}: ${err.message}` };
  }
  return {
    code: GrpcStatus.INTERNAL,
    details: `INTERNAL: ${err instanceof Error ? err.message : String(err)}`,
  };
}
