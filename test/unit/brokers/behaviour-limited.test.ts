/**
 * Runs the behaviour suite on a broker that lacks every optional capability (the embedded broker
 * behind a wrapper that refuses them), so the suite's UNSUPPORTED branches are exercised too.
 */
import type {
  Broker,
  BrokerCapabilities,
  Producer,
  SubscribeOptions,
  Subscription,
} from '../../../src/brokers/broker.js';
import { MemoryBroker } from '../../../src/brokers/memory/index.js';
import { normaliseSubscribe } from '../../../src/brokers/subscribe-options.js';
import { UnsupportedError } from '../../../src/core/errors.js';
import type { OutgoingMessage } from '../../../src/core/message.js';
import { runBrokerBehaviourSuite } from '../../support/behaviour.js';

class LimitedBroker implements Broker {
  readonly kind = 'limited';
  readonly url = 'limited://';
  readonly capabilities: BrokerCapabilities = {
    ordered: false,
    delay: false,
    transactions: false,
    tagFilter: false,
    durable: false,
    startPosition: true,
  };
  readonly #inner = new MemoryBroker();
  readonly limits = this.#inner.limits;

  async producer(topic: string): Promise<Producer> {
    const inner = await this.#inner.producer(topic);
    return {
      topic,
      send: async (message: OutgoingMessage) => {
        if (message.deliverAt !== undefined) {
          throw new UnsupportedError('the limited broker cannot delay messages (deliverAt)');
        }
        return inner.send(message);
      },
      prepare: async () => {
        throw new UnsupportedError('the limited broker has no transactions');
      },
      close: () => inner.close(),
    };
  }

  async subscribe(options: SubscribeOptions): Promise<Subscription> {
    // What a fifth adapter does first: the one check of subscribe options against what it declares.
    normaliseSubscribe({ kind: this.kind, capabilities: this.capabilities, limits: this.limits }, options);
    return this.#inner.subscribe(options);
  }

  health() {
    return this.#inner.health();
  }

  close() {
    return this.#inner.close();
  }
}

runBrokerBehaviourSuite('memory without optional capabilities', async () => new LimitedBroker(), {
  ackTimeoutMs: 300,
});
