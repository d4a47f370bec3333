/** How long a stream ended for not reading may take to finish before its connection is cut. */
export const ABORT_GRACE_MS = 2000;

/**
 * Called right after a stream whose peer stopped reading was ended. Its status queues behind data
 * the client never reads, so if the call has not closed within ABORT_GRACE_MS the connection is
 * cut, and the transport lets go of that data.
 */
export function cutIfStuck(
  call: { once(event: 'close', listener: () => void): unknown },
  cut: () => void,
): void {
  const timer = setTimeout(cut, ABORT_GRACE_MS);
  timer.unref();
  call.once('close', () => clearTimeout(timer));
}
