import { readFileSync } from 'node:fs';
import {
  createServer,
  type Server as HttpServer,
  type IncomingMessage,
  type ServerResponse,
} from 'node:http';
import type { AddressInfo } from 'node:net';
import { fileURLToPath } from 'node:url';
import { loadPackageDefinition, Server, ServerCredentials, type ServiceDefinition } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { InvalidArgumentError, MqError } from '../core/errors.js';
import { closeAll } from '../core/lifecycle.js';
import { Authenticator } from './callers.js';
import { type GatewayConfig, isLoopback, loadConfig } from './config.js';
import { ConsumerRegistry } from './consumers.js';
import { createLogger, type Logger } from './log.js';
import { GatewayMetrics } from './metrics.js';
import { ProducerRegistry } from './producers.js';
import { BrokerRouter } from './routing.js';
import { createService } from './service.js';
import { TransactionRegistry } from './transactions.js';

/** proto/ ships next to dist/ and src/, two levels above this file in both layouts. */
export const PROTO_PATH = fileURLToPath(new URL('../../proto/rocketmq_proxy.proto', import.meta.url));

export const PROTO_LOADER_OPTIONS = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
} as const;

function loadServiceDefinition(): ServiceDefinition {
  const pkg = loadPackageDefinition(loadSync(PROTO_PATH, PROTO_LOADER_OPTIONS)) as unknown as {
    rocketmq: { RocketMQProxy: { service: ServiceDefinition } };
  };
  return pkg.rocketmq.RocketMQProxy.service;
}

export interface GatewayOptions {
  config?: Partial<GatewayConfig>;
  logger?: Logger;
}

/**
 * The gateway process's core: gRPC service, HTTP metrics/health, registries, reapers.
 * `start()` listens; `close()` shuts down in order and resolves when every handle is gone.
 */
export class Gateway {
  readonly config: GatewayConfig;
  readonly log: Logger;
  readonly metrics: GatewayMetrics;
  #router: BrokerRouter | undefined;
  #producers: ProducerRegistry;
  #consumers: ConsumerRegistry;
  #transactions: TransactionRegistry;
  #grpc: Server | undefined;
  #http: HttpServer | undefined;
  #sweepTimer: NodeJS.Timeout | undefined;
  #sweeping: Promise<void> | undefined;
  #closing = false;
  #closePromise: Promise<void> | undefined;
  #grpcPort = 0;
  #httpPort = 0;
  #inFlightCalls: () => number = () => 0;

  constructor(options: GatewayOptions = {}) {
    this.config = { ...loadConfig({}), ...options.config };
    this.log = options.logger ?? createLogger(this.config.logLevel);
    this.metrics = new GatewayMetrics(() => ({
      brokerProducers: this.#producers.brokerProducerCount,
      producerHandles: this.#producers.handleCount,
      sessions: this.#consumers.sessionCount,
      streams: this.#consumers.streamCount,
      inFlight: this.#consumers.inFlightCount,
      pendingTransactions: this.#transactions.size,
    }));
    const c = this.config;
    this.#producers = new ProducerRegistry({
      cleanupTimeoutMs: c.producerCleanupTimeoutMs,
      handleTtlMs: c.producerHandleTtlMs,
      maxPerCaller: c.maxProducersPerCaller,
      metrics: this.metrics,
      log: this.log,
    });
    this.#consumers = new ConsumerRegistry({
      bufferSize: c.messageBufferSize,
      ackTimeoutMs: c.ackTimeoutMs,
      cleanupTimeoutMs: c.consumerCleanupTimeoutMs,
      maxPerCaller: c.maxConsumersPerCaller,
      metrics: this.metrics,
      log: this.log,
    });
    this.#transactions = new TransactionRegistry(this.metrics, this.log);
  }

  get grpcPort(): number {
    return this.#grpcPort;
  }

  get metricsPort(): number {
    return this.#httpPort;
  }

  async start(): Promise<this> {
    const c = this.config;
    const tls = c.tlsCert !== '' && c.tlsKey !== '';
    if (!isLoopback(c.grpcHost) && c.authTokens.size === 0 && !tls && !c.insecure) {
      throw new InvalidArgumentError(
        `refusing to listen on ${c.grpcHost} without AUTH_TOKENS or TLS: anyone on the network could publish ` +
          'and consume; set AUTH_TOKENS or TLS_CERT/TLS_KEY, or pass --insecure (INSECURE=true) if that is intended',
      );
    }
    try {
      this.#router = await BrokerRouter.open(c.brokers, c.ackTimeoutMs, this.log);
      const service = createService({
        config: c,
        router: this.#router,
        producers: this.#producers,
        consumers: this.#consumers,
        transactions: this.#transactions,
        metrics: this.metrics,
        auth: new Authenticator(c.authTokens),
        log: this.log,
        isClosing: () => this.#closing,
      });
      this.#inFlightCalls = service.inFlightCalls;
      const grpc = new Server({
        // Leave room above MAX_MESSAGE_SIZE so an oversize body gets our INVALID_ARGUMENT naming
        // the limit instead of the transport's bare RESOURCE_EXHAUSTED.
        'grpc.max_receive_message_length': c.maxMessageSize * 2 + 64 * 1024,
        'grpc.max_send_message_length': c.maxMessageSize * 2 + 64 * 1024,
      });
      this.#grpc = grpc;
      grpc.addService(loadServiceDefinition(), service.implementation);
      const creds = tls
        ? ServerCredentials.createSsl(null, [
            { cert_chain: readFileSync(c.tlsCert), private_key: readFileSync(c.tlsKey) },
          ])
        : ServerCredentials.createInsecure();
      this.#grpcPort = await new Promise<number>((resolve, reject) => {
        grpc.bindAsync(`${hostPort(c.grpcHost, c.grpcPort)}`, creds, (err, port) =>
          err
            ? reject(
                new MqError(
                  'UNAVAILABLE',
                  `cannot listen on gRPC ${c.grpcHost}:${c.grpcPort}: ${err.message}`,
                  { cause: err },
                ),
              )
            : resolve(port),
        );
      });
      this.#http = createServer((req, res) => this.#serveHttp(req, res));
      await new Promise<void>((resolve, reject) => {
        const http = this.#http as HttpServer;
        http.once('error', (err) =>
          reject(
            new MqError(
              'UNAVAILABLE',
              `cannot listen on HTTP ${c.metricsHost}:${c.metricsPort}: ${err.message}`,
              { cause: err },
            ),
          ),
        );
        http.listen(c.metricsPort, c.metricsHost, () => resolve());
      });
      this.#httpPort = (this.#http.address() as AddressInfo).port;
      this.metrics.start();
      const period = Math.max(
        50,
        Math.min(1000, Math.min(c.ackTimeoutMs, c.consumerCleanupTimeoutMs, c.producerCleanupTimeoutMs) / 4),
      );
      // The one interval the gateway owns: every reaper runs from here, never overlapping.
      this.#sweepTimer = setInterval(() => {
        if (this.#sweeping) return;
        this.#sweeping = this.sweep()
          .catch((err) => this.log.error({ err }, 'sweep failed'))
          .finally(() => {
            this.#sweeping = undefined;
          });
      }, period);
      this.#sweepTimer.unref();
    } catch (err) {
      await this.close().catch(() => {});
      throw err;
    }
    this.log.info(
      {
        grpc: `${c.grpcHost}:${this.#grpcPort}`,
        metrics: `http://${c.metricsHost}:${this.#httpPort}/metrics`,
        brokers: this.#router?.refs.map((r) => r.url),
        tls,
        auth: c.authTokens.size > 0,
      },
      'mqgate gateway listening',
    );
    return this;
  }

  /** Runs the reapers once (the interval calls this; tests may too). */
  async sweep(): Promise<void> {
    await closeAll([() => this.#producers.sweep(), () => this.#consumers.sweep()]);
  }

  /**
   * Graceful shutdown: refuse new calls, end streams (releasing unacked deliveries), wait for
   * in-flight unary calls up to the deadline, then close registries, brokers and servers.
   */
  close(timeoutMs = this.config.shutdownTimeoutMs): Promise<void> {
    this.#closePromise ??= this.#close(timeoutMs);
    return this.#closePromise;
  }

  async #close(timeoutMs: number): Promise<void> {
    this.#closing = true;
    const deadline = Date.now() + timeoutMs;
    if (this.#sweepTimer) clearInterval(this.#sweepTimer);
    this.#consumers.endStreams(
      new MqError('UNAVAILABLE', 'the gateway is shutting down; reconnect to resume'),
    );
    while (this.#inFlightCalls() > 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 10));
    }
    const grpc = this.#grpc;
    const http = this.#http;
    await closeAll([
      () => this.#sweeping,
      () => this.#transactions.close(),
      () => this.#consumers.close(),
      () => this.#producers.close(),
      () => this.#router?.close(),
      grpc &&
        (() =>
          new Promise<void>((resolve) => {
            const force = setTimeout(() => grpc.forceShutdown(), Math.max(0, deadline - Date.now()));
            grpc.tryShutdown(() => {
              clearTimeout(force);
              resolve();
            });
          })),
      http &&
        (() =>
          new Promise<void>((resolve) => {
            http.close(() => resolve());
            http.closeAllConnections();
          })),
      () => this.metrics.stop(),
    ]);
    const m = this.metrics.json();
    this.log.info(
      {
        messages_sent: m.messages_sent,
        messages_delivered: m.messages_delivered,
        messages_acked: m.messages_acked,
        messages_redelivered: m.messages_redelivered,
      },
      'mqgate gateway stopped',
    );
  }

  async #serveHttp(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0];
    try {
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        send(res, 405, 'text/plain', 'GET only\n');
      } else if (path === '/metrics') {
        const accept = String(req.headers.accept ?? '');
        // Prometheus asks for OpenMetrics first and accepts text/plain 0.0.4, which we serve;
        // a plain `curl | jq` sends */* and gets the seed's JSON.
        if (/text\/plain|application\/openmetrics-text/.test(accept)) {
          send(res, 200, this.metrics.registry.contentType, await this.metrics.registry.metrics());
        } else {
          send(res, 200, 'application/json', `${JSON.stringify(this.metrics.json(), null, 2)}\n`);
        }
      } else if (path === '/health') {
        send(
          res,
          this.#closing ? 503 : 200,
          'application/json',
          JSON.stringify({ status: this.#closing ? 'shutting down' : 'ok' }),
        );
      } else if (path === '/ready') {
        const refs = this.#router?.refs ?? [];
        const checks = await Promise.all(
          refs.map(async (r) => ({
            broker: r.url,
            ...(await r.broker.health().catch((e: Error) => ({ ok: false, detail: e.message }))),
          })),
        );
        const ready = !this.#closing && checks.length > 0 && checks.every((c) => c.ok);
        send(res, ready ? 200 : 503, 'application/json', JSON.stringify({ ready, brokers: checks }));
      } else {
        send(res, 404, 'text/plain', 'not found: try /metrics, /health or /ready\n');
      }
    } catch (err) {
      this.log.error({ err }, 'HTTP handler failed');
      send(res, 500, 'text/plain', 'internal error\n');
    }
  }
}

function send(res: ServerResponse, status: number, type: string, body: string): void {
  res.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(body) });
  res.end(body);
}

function hostPort(host: string, port: number): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

/** Starts a gateway; the caller owns it and must close() it. */
export async function startGateway(options: GatewayOptions = {}): Promise<Gateway> {
  return new Gateway(options).start();
}
