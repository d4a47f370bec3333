import type { Delivery } from '../broker.js';

/**
 * The iterator every subscription hands to `for await`. Leaving the loop early (break, return,
 * throw) calls return(), which closes the subscription, as a nats.js subscription or a Node
 * stream does: the loop was its only reader, and its unsettled deliveries go back for
 * redelivery at once instead of after their ack timeout. Written once so no adapter can forget it.
 */
export function deliveryIterator(
  next: () => Promise<IteratorResult<Delivery, undefined>>,
  close: () => Promise<void>,
): AsyncIterator<Delivery, undefined> {
  return {
    next,
    return: async () => {
      await close();
      return { value: undefined, done: true };
    },
  };
}
