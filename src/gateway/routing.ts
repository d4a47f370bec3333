import type { Broker } from '../brokers/broker.js';
import { openBroker, redactUrl } from '../brokers/index.js';
import { InvalidArgumentError, quoteInput } from '../core/errors.js';
import { closeAll } from '../core/lifecycle.js';
import { digest } from './callers.js';
import type { BrokerEntry } from './config.js';
import type { Logger } from './log.js';

export interface BrokerRef {
  readonly index: number;
  readonly broker: Broker;
  readonly url: string;
}

/**
 * Maps a request's `endpoint` to one of the configured brokers. The gateway opens exactly the
 * brokers it was configured with, at start-up; the seed bound itself to the first endpoint any
 * client ever sent, forever.
 */
export class BrokerRouter {
  readonly refs: BrokerRef[] = [];
  readonly #byEndpoint = new Map<string, BrokerRef>();
  /** Digests of endpoints already logged: bounded, and never the client's text itself. */
  readonly #seen = new Set<string>();
  readonly #log: Logger;

  private constructor(log: Logger) {
    this.#log = log;
  }

  static async open(entries: BrokerEntry[], ackTimeoutMs: number, log: Logger): Promise<BrokerRouter> {
    const router = new BrokerRouter(log);
    try {
      for (const [index, entry] of entries.entries()) {
        const broker = await openBroker(entry.url, {
          ackTimeoutMs,
          log: log.child({ broker: redactUrl(entry.url) }),
        });
        const ref: BrokerRef = { index, broker, url: redactUrl(entry.url) };
        router.refs.push(ref);
        for (const e of entry.endpoints) router.#byEndpoint.set(e, ref);
      }
    } catch (err) {
      await router.close().catch(() => {});
      throw err;
    }
    return router;
  }

  route(endpoint: string): BrokerRef {
    const named = this.#byEndpoint.get(endpoint);
    if (named) return named;
    if (this.refs.length === 1) {
      const only = this.refs[0] as BrokerRef;
      const d = digest(endpoint);
      if (!this.#seen.has(d) && this.#seen.size < 1000) {
        this.#seen.add(d);
        this.#log.info(
          { endpoint: quoteInput(endpoint, 80), broker: only.url },
          'endpoint mapped to the only configured broker',
        );
      }
      return only;
    }
    const known = [...this.#byEndpoint.keys()];
    throw new InvalidArgumentError(
      `endpoint ${quoteInput(endpoint)} names no configured broker; configured endpoints: ${known.join(', ') || '(none)'} ` +
        "(set them in BROKERS as '<url> endpoints=a,b')",
    );
  }

  async close(): Promise<void> {
    await closeAll(this.refs.map((r) => () => r.broker.close()));
  }
}
