import { ClosedError, MqError } from '../../core/errors.js';
import { closeOnce } from '../../core/lifecycle.js';
import type { OutgoingMessage } from '../../core/message.js';
import type { PreparedTransaction, Producer, SendResult } from '../broker.js';
import type { Engine } from './engine.js';
import type { Slot, Topic } from './topic.js';

/** A producer of the embedded broker: sends, and two-phase transactions held until decided. */

interface Half {
  readonly slot: Slot;
  readonly topic: Topic;
  state: 'prepared' | 'committed' | 'rolledBack';
}

export class MemoryProducer implements Producer {
  readonly topic: string;
  readonly #halves = new Set<Half>();
  #closed = false;
  readonly close: () => Promise<void>;

  constructor(
    readonly engine: Engine,
    readonly topicState: Topic,
  ) {
    this.topic = topicState.name;
    this.close = closeOnce(async () => {
      this.#closed = true;
      this.engine.producers.delete(this);
      // A producer that goes away without resolving its transactions cannot be asked about them
      // later (there is no check-back here), so they are rolled back rather than kept forever.
      for (const half of this.#halves) this.#rollback(half);
      this.#halves.clear();
    });
  }

  #assertOpen(): void {
    this.engine.assertOpen();
    if (this.#closed) {
      throw new ClosedError(
        `producer for topic "${this.topic}" is closed; open a new one with broker.producer()`,
      );
    }
  }

  async send(message: OutgoingMessage): Promise<SendResult> {
    this.#assertOpen();
    const slot = this.engine.makeSlot(this.topicState, message, Date.now());
    this.topicState.reserve(slot);
    this.engine.publish(this.topicState, slot);
    return { messageId: slot.msg.id };
  }

  async prepare(message: OutgoingMessage): Promise<PreparedTransaction> {
    this.#assertOpen();
    const topic = this.topicState;
    const slot = this.engine.makeSlot(topic, message, Date.now());
    topic.reserve(slot);
    topic.prepared++;
    const half: Half = { slot, topic, state: 'prepared' };
    this.#halves.add(half);
    const id = slot.msg.id;
    return {
      messageId: id,
      transactionId: id,
      commit: async () => {
        this.engine.assertOpen();
        if (half.state === 'committed') return;
        if (half.state === 'rolledBack') {
          throw new MqError(
            'FAILED_PRECONDITION',
            `transaction ${id} on topic "${this.topic}" was rolled back${this.#closed ? ' when its producer closed' : ''}; it cannot be committed, publish the message again`,
          );
        }
        half.state = 'committed';
        this.#halves.delete(half);
        topic.prepared--;
        this.engine.publish(topic, slot);
      },
      rollback: async () => {
        this.engine.assertOpen();
        if (half.state === 'rolledBack') return;
        if (half.state === 'committed') {
          throw new MqError(
            'FAILED_PRECONDITION',
            `transaction ${id} on topic "${this.topic}" was already committed; it cannot be rolled back`,
          );
        }
        this.#rollback(half);
        this.#halves.delete(half);
      },
    };
  }

  #rollback(half: Half): void {
    if (half.state !== 'prepared') return;
    half.state = 'rolledBack';
    half.topic.prepared--;
    half.topic.unreserve(half.slot);
  }
}

/** The shared state of one broker: topics, the scheduler, settings. */
