import { ClientException } from 'rocketmq-client-nodejs';
import { ClosedError, InvalidArgumentError } from '../../core/errors.js';
import { closeAll, closeOnce } from '../../core/lifecycle.js';
import type {
  Broker,
  BrokerCapabilities,
  BrokerLimits,
  BrokerOpenOptions,
  Credentials,
  HealthStatus,
  Producer,
  ProducerOptions,
  SubscribeOptions,
  Subscription,
} from '../broker.js';
import { normaliseSubscribe } from '../subscribe-options.js';
import { credentialDigest, parseRocketMqUrl, type RocketMqUrl } from './config.js';
import { Code, toRocketMqError } from './library.js';
import { ProducerEntry, RocketMqProducer, TransactionLedger } from './producer.js';
import { RouteClient, RouteStatusError, type TopicRoute } from './route.js';
import { RocketMqSubscription } from './subscription.js';

const CAPABILITIES: BrokerCapabilities = {
  ordered: true,
  delay: true,
  transactions: true,
  tagFilter: true,
  durable: true,
  // Where a new group starts is the group's own setting on the broker (consumeFromMinEnable).
  startPosition: false,
};

const LIMITS: BrokerLimits = Object.freeze({
  // The ack timeout is the message's invisible duration: the proxy's range for it, 1 s to 12 h.
  minAckTimeoutMs: 1_000,
  maxAckTimeoutMs: 12 * 3_600_000,
  maxInFlight: Number.MAX_SAFE_INTEGER,
});

/** Topic probed by health(): "not found" is a complete answer from proxy and name server. */
const HEALTH_TOPIC = 'mqgate-health-probe';

function validName(kind: string, name: string): void {
  if (!/^[%|a-zA-Z0-9_-]{1,127}$/.test(name)) {
    throw new InvalidArgumentError(
      `${kind} "${name}" is not a valid RocketMQ name: use 1-127 characters from a-z, A-Z, 0-9, "_", "-", "%", "|"`,
    );
  }
}

class RocketMqBroker implements Broker {
  readonly kind = 'rocketmq';
  readonly url: string;
  readonly capabilities = CAPABILITIES;
  readonly limits = LIMITS;
  readonly #config: RocketMqUrl;
  readonly #options: BrokerOpenOptions;
  readonly #routes: RouteClient;
  readonly #ledger = new TransactionLedger();
  /** Library producers by credential digest and topic: never shared across credentials. */
  readonly #entries = new Map<string, Promise<ProducerEntry>>();
  readonly #liveEntries = new Set<ProducerEntry>();
  readonly #subscriptions = new Set<RocketMqSubscription>();
  readonly #opening = new Set<Promise<unknown>>();
  #closed = false;

  constructor(config: RocketMqUrl, options: BrokerOpenOptions) {
    this.#config = config;
    this.#options = options;
    this.url = config.redacted;
    this.#routes = new RouteClient(config.endpoint, config.namespace, config.requestTimeoutMs);
  }

  #credentials(given: Credentials | undefined): Credentials | undefined {
    return this.#config.mode === 'client' ? given : this.#config.staticCredentials;
  }

  #check(): void {
    if (this.#closed) throw new ClosedError(`RocketMQ broker ${this.url} is closed`);
  }

  /** Tracks an open-in-progress so close() waits for it (and the opener sees the close). */
  async #track<T>(work: Promise<T>): Promise<T> {
    this.#opening.add(work);
    try {
      return await work;
    } finally {
      this.#opening.delete(work);
    }
  }

  async #route(topic: string, credentials: Credentials | undefined, action: string): Promise<TopicRoute> {
    try {
      return await this.#routes.queryRoute(topic, credentials);
    } catch (err) {
      if (err instanceof RouteStatusError) {
        throw toRocketMqError(new ClientException(err.code, err.message), {
          action,
          topic,
          cluster: this.#config.cluster,
        });
      }
      throw toRocketMqError(err, { action, topic, cluster: this.#config.cluster });
    }
  }

  async producer(topic: string, options: ProducerOptions = {}): Promise<Producer> {
    this.#check();
    validName('topic', topic);
    const credentials = this.#credentials(options.credentials);
    const key = `${credentialDigest(credentials)}/${topic}`;
    return this.#track(
      (async () => {
        for (;;) {
          let pending = this.#entries.get(key);
          if (!pending) {
            pending = this.#openEntry(key, topic, credentials);
            this.#entries.set(key, pending);
            pending.catch(() => {
              if (this.#entries.get(key) === pending) this.#entries.delete(key);
            });
          }
          const entry = await pending;
          this.#check();
          // An entry whose last handle just let go is shutting down: open a fresh one.
          if (entry.closing) {
            if (this.#entries.get(key) === pending) this.#entries.delete(key);
            continue;
          }
          return new RocketMqProducer(entry, { url: this.#config, ledger: this.#ledger });
        }
      })(),
    );
  }

  async #openEntry(key: string, topic: string, credentials: Credentials | undefined): Promise<ProducerEntry> {
    const route = await this.#route(topic, credentials, 'opening producer');
    this.#check();
    const entry: ProducerEntry = new ProducerEntry({
      url: this.#config,
      topic,
      route,
      credentials,
      ledger: this.#ledger,
      log: this.#options.log,
      onIdle: async (idle) => {
        if (this.#entries.get(key) !== undefined) {
          const current = await this.#entries.get(key)?.catch(() => undefined);
          if (current === idle) this.#entries.delete(key);
        }
        await idle.close();
        this.#liveEntries.delete(idle);
      },
    });
    this.#liveEntries.add(entry);
    try {
      await entry.start();
    } catch (err) {
      this.#liveEntries.delete(entry);
      await entry.close().catch(() => {});
      throw err;
    }
    return entry;
  }

  async subscribe(options: SubscribeOptions): Promise<Subscription> {
    this.#check();
    validName('topic', options.topic);
    validName('group', options.group);
    // Where a new group starts is the group's own setting on the broker: the proxy takes no
    // start position from a client, so accepting one here would be a promise nobody keeps.
    const { maxInFlight, ackTimeoutMs, ordered } = normaliseSubscribe(
      {
        kind: 'RocketMQ',
        capabilities: CAPABILITIES,
        limits: LIMITS,
        defaultAckTimeoutMs: this.#options.ackTimeoutMs,
        startHint:
          'a new consumer group starts where its broker-side setting says (the oldest message with ' +
          'consumeFromMinEnable, set by `mqadmin updateSubGroup -g <group> -m true`; else the newest), and an ' +
          'existing group is moved with `mqadmin resetOffsetByTime -g <group> -t <topic> -s <epoch ms>`',
      },
      options,
    );
    const credentials = this.#credentials(options.credentials);
    return this.#track(
      (async () => {
        await this.#route(options.topic, credentials, 'subscribing');
        this.#check();
        return RocketMqSubscription.open(
          {
            url: this.#config,
            topic: options.topic,
            group: options.group,
            filter: options.filter,
            maxInFlight,
            ackTimeoutMs,
            ordered,
            credentials,
            log: this.#options.log,
            onClosed: (sub) => this.#subscriptions.delete(sub),
          },
          (sub) => this.#subscriptions.add(sub),
        );
      })(),
    );
  }

  async health(): Promise<HealthStatus> {
    if (this.#closed) return { ok: false, detail: 'closed' };
    const started = Date.now();
    try {
      await this.#routes.queryRoute(HEALTH_TOPIC, this.#config.staticCredentials);
      return {
        ok: true,
        detail: `RocketMQ proxy ${this.#config.endpoint} answered a route query in ${Date.now() - started} ms`,
      };
    } catch (err) {
      if (err instanceof RouteStatusError && err.code === Code.TOPIC_NOT_FOUND) {
        return {
          ok: true,
          detail: `RocketMQ proxy ${this.#config.endpoint} answered a route query in ${Date.now() - started} ms`,
        };
      }
      const mapped = toRocketMqError(err instanceof RouteStatusError ? new Error(err.message) : err, {
        action: 'health check',
        cluster: this.#config.cluster,
      });
      return { ok: false, detail: `RocketMQ proxy ${this.#config.endpoint}: ${mapped.message}` };
    }
  }

  readonly close = closeOnce(async () => {
    this.#closed = true;
    await closeAll([
      () => Promise.allSettled([...this.#opening]),
      () => closeAll([...this.#subscriptions].map((s) => () => s.close())),
      () => closeAll([...this.#liveEntries].map((e) => () => e.close())),
      () => this.#routes.close(),
    ]);
    this.#entries.clear();
    this.#liveEntries.clear();
  });

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

/** Opens `rocketmq://host:grpcPort[?namespace=&credentials=client|none&accessKey=&secretKey=&cluster=]`. */
export async function openRocketMqBroker(url: URL, options: BrokerOpenOptions): Promise<Broker> {
  return new RocketMqBroker(parseRocketMqUrl(url), options);
}
