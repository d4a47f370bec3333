import { ClosedError } from '../../core/errors.js';
import type { OutgoingMessage } from '../../core/message.js';
import type { PreparedTransaction, PrepareOptions, Producer, SendResult } from '../broker.js';
import { DEFAULT_IMMUNITY_MS } from '../holding/transaction.js';
import type { NatsBroker } from './broker.js';

/** A producer handle: sends and prepares through its broker's one connection. */
export class NatsProducer implements Producer {
  #closed = false;

  constructor(
    readonly topic: string,
    readonly broker: NatsBroker,
  ) {}

  send(message: OutgoingMessage): Promise<SendResult> {
    if (this.#closed) {
      return Promise.reject(new ClosedError(`producer for topic "${this.topic}" is closed; open a new one`));
    }
    return this.broker.publish(this.topic, message);
  }

  prepare(message: OutgoingMessage, options?: PrepareOptions): Promise<PreparedTransaction> {
    if (this.#closed) {
      return Promise.reject(new ClosedError(`producer for topic "${this.topic}" is closed; open a new one`));
    }
    return this.broker.prepare(this.topic, message, options?.immunityMs ?? DEFAULT_IMMUNITY_MS);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.broker.producerClosed(this);
  }
}
