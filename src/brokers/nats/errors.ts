import { JetStreamApiError } from '@nats-io/jetstream';

/** How the NATS client's errors are told apart: by name and JetStream API code. */

/** The message of anything thrown (core's errorMessage, under the name the NATS adapter uses). */
export { errorMessage as text } from '../../core/errors.js';

export function apiCode(err: unknown): number | undefined {
  return err instanceof JetStreamApiError ? err.code : undefined;
}

/** Failures a retry with the same message id may fix: no reply, no responder, JetStream restarting. */
export function isTransient(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  if (err.name === 'TimeoutError' || err.name === 'NoResponders' || err.name === 'JetStreamNotEnabled')
    return true;
  if (err.name === 'RequestError') return true;
  return err instanceof JetStreamApiError && err.status === 503;
}

export function isClosedConnection(err: unknown): boolean {
  return (
    err instanceof Error && (err.name === 'ClosedConnectionError' || err.name === 'DrainingConnectionError')
  );
}
