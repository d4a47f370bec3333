import type { Broker, HealthStatus } from '../brokers/broker.js';
import { openBroker, redactUrl } from '../brokers/index.js';
import { InvalidArgumentError, quoteInput } from '../core/errors.js';
import { closeAll } from '../core/lifecycle.js';
import { digest } from './callers.js';
import type { BrokerEntry } from './config.js';
import type { Logger } from './log.js';

/** How long one health probe's result answers every health call. */
const HEALTH_REUSE_MS = 1000;

export interface BrokerRef {
  readonly index: number;
  readonly broker: Broker;
  readonly url: string;
}

/**
 * Maps a request's `endpoint` to one of the configured brokers. The gateway opens exactly the
 * brokers it was configured with, at start-up, so a client's `endpoint` value can select among
 * them but never make the gateway connect anywhere else.
 */
export class BrokerRouter {
  readonly refs: BrokerRef[] = [];
  readonly #byEndpoint = new Map<string, BrokerRef>();
  /** Digests of endpoints already logged: bounded, and never the client's text itself. */
  readonly #seen = new Set<string>();
  readonly #log: Logger;
  #health: { at: number; result: Promise<HealthStatus[]> } | undefined;

  private constructor(log: Logger) {
    this.#log = log;
  }

  /**
   * Every broker's health, one probe at a time: concurrent callers (HealthCheck and /ready need
   * no token) share the probe under way, and a result is reused for a second, so a flood of
   * health calls costs the brokers one probe a second.
   */
  health(): Promise<HealthStatus[]> {
    const now = Date.now();
    if (this.#health && now - this.#health.at < HEALTH_REUSE_MS) return this.#health.result;
    const result = Promise.all(
      this.refs.map((r) =>
        r.broker
          .health()
          .catch((e: unknown) => ({ ok: false, detail: e instanceof Error ? e.message : String(e) })),
      ),
    );
    this.#health = { at: now, result };
    return result;
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
