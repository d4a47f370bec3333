import { readFileSync } from 'node:fs';
import type { Server as HttpServer, IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Server, ServerCredentials, type ServiceDefinition } from '@grpc/grpc-js';
import { InvalidArgumentError, MqError } from '../core/errors.js';
import { closeAll } from '../core/lifecycle.js';
import { directEncoder, serviceDefinition } from '../proto.js';
import { Audit } from './audit.js';
import { Authenticator, entriesFromTokens, readAuthFile } from './auth.js';
import { createCallGuard, guardDecoders, requestLimits } from './calls.js';
import { type GatewayConfig, isLoopback, loadConfig } from './config.js';
import { ConsumerRegistry } from './consumers.js';
import { createHttpListener, GrpcListener } from './listeners.js';
import { createLogger, type Logger } from './log.js';
import { GatewayMetrics } from './metrics.js';
import { ProducerRegistry } from './producers.js';
import { brokerRedactor, type Redactor } from './redact.js';
import { BrokerRouter } from './routing.js';
import { createService, type Service } from './service.js';
import { statusMapper } from './status.js';
import { brokersUp, StatusPage, statusSnapshot } from './status-feed.js';
import { TransactionRegistry } from './transactions.js';
import { LIMITS } from './validate.js';

export { PROTO_LOADER_OPTIONS, PROTO_PATH } from '../proto.js';

/**
 * The service with direct encoders on the streams that carry every delivery and publish result:
 * what they send is built by the gateway, so proto-loader's copy into a message object is skipped.
 */
function loadServiceDefinition(): ServiceDefinition {
  const def = serviceDefinition();
  const direct: Record<string, string> = {
    ReceiveMessages: 'Message',
    Subscribe: 'SubscribeResponse',
    Publish: 'PublishResponse',
  };
  const out: Record<string, unknown> = {};
  for (const [name, method] of Object.entries(def)) {
    const type = direct[name];
    out[name] = type ? { ...method, responseSerialize: directEncoder(type) } : method;
  }
  return out as ServiceDefinition;
}

/** A default gRPC client refuses messages over 4 MiB. */
const DEFAULT_CLIENT_RECEIVE_LIMIT = 4 * 1024 * 1024;
/** A delivery's fields besides what MAX_MESSAGE_SIZE counts: ids, topic, tag, framing. */
const DELIVERY_FIELDS_BYTES = 16 * 1024;

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
  readonly audit: Audit;
  readonly redactor: Redactor;
  #router: BrokerRouter | undefined;
  #producers: ProducerRegistry;
  #consumers: ConsumerRegistry;
  #transactions: TransactionRegistry;
  #grpc: Server | undefined;
  #listener: GrpcListener | undefined;
  #http: HttpServer | undefined;
  #sweepTimer: NodeJS.Timeout | undefined;
  #sweeping: Promise<void> | undefined;
  #closing = false;
  #closePromise: Promise<void> | undefined;
  #grpcPort = 0;
  #httpPort = 0;
  #activeUnary: () => number = () => 0;
  #service: Service | undefined;
  #status: StatusPage | undefined;

  constructor(options: GatewayOptions = {}) {
    this.config = { ...loadConfig({}), ...options.config };
    const c = this.config;
    this.redactor = brokerRedactor(c.brokers.map((b) => b.url));
    this.log = options.logger ?? createLogger(c.logLevel, this.redactor);
    this.audit = new Audit(this.log);
    this.metrics = new GatewayMetrics({
      live: () => ({
        brokerProducers: this.#producers.brokerProducerCount,
        producerHandles: this.#producers.handleCount,
        sessions: this.#consumers.sessionCount,
        streams: this.#consumers.streamCount,
        inFlight: this.#consumers.inFlightCount,
        pendingTransactions: this.#transactions.size,
        connections: this.#listener?.count ?? 0,
        publishStreams: this.#service?.publishStreams() ?? 0,
      }),
      refusals: () => this.audit.counts,
      brokers: () =>
        (this.#router?.refs ?? []).map((r) => ({
          broker: `${r.broker.kind}#${r.index}`,
          counters: r.broker.counters?.() ?? {},
        })),
      brokerHealth: () => brokersUp(this.#router),
    });
    const common = { metrics: this.metrics, audit: this.audit, log: this.log };
    this.#producers = new ProducerRegistry({
      cleanupTimeoutMs: c.producerCleanupTimeoutMs,
      handleTtlMs: c.producerHandleTtlMs,
      maxPerCaller: c.maxProducersPerCaller,
      maxHandles: c.maxProducerHandles,
      ...common,
    });
    this.#consumers = new ConsumerRegistry({
      bufferSize: c.messageBufferSize,
      streamBufferBytes: c.streamBufferBytes,
      streamStallTimeoutMs: c.streamStallTimeoutMs,
      ackTimeoutMs: c.ackTimeoutMs,
      cleanupTimeoutMs: c.consumerCleanupTimeoutMs,
      maxPerCaller: c.maxConsumersPerCaller,
      maxSessions: c.maxSessions,
      maxStreams: c.maxStreams,
      ...common,
    });
    this.#transactions = new TransactionRegistry({
      maxPerCaller: c.maxTransactionsPerCaller,
      maxPending: c.maxPendingTransactions,
      ...common,
    });
  }

  get grpcPort(): number {
    return this.#grpcPort;
  }

  get metricsPort(): number {
    return this.#httpPort;
  }

  /** The /status page (undefined before start): its event streams and timer, for tests. */
  get statusPage(): StatusPage | undefined {
    return this.#status;
  }

  async start(): Promise<this> {
    const c = this.config;
    const tls = c.tlsCert !== '' && c.tlsKey !== '';
    try {
      const entries = entriesFromTokens(c.authTokens);
      if (c.authFile !== '') entries.push(...readAuthFile(c.authFile));
      const auth = new Authenticator(entries);
      if (!isLoopback(c.grpcHost) && !auth.enabled && !tls && !c.insecure) {
        throw new InvalidArgumentError(
          `refusing to listen on ${c.grpcHost} without AUTH_TOKENS, AUTH_FILE or TLS: anyone on the network could publish ` +
            'and consume; set AUTH_TOKENS or AUTH_FILE, or TLS_CERT/TLS_KEY, or pass --insecure (INSECURE=true) if that is intended',
        );
      }
      if (c.maxMessageSize > DEFAULT_CLIENT_RECEIVE_LIMIT - DELIVERY_FIELDS_BYTES) {
        this.log.warn(
          { maxMessageSize: c.maxMessageSize },
          "MAX_MESSAGE_SIZE leaves no room for a delivery's other fields within 4 MiB: clients with the default gRPC receive limit cannot receive the largest messages",
        );
      }
      this.#router = await BrokerRouter.open(c.brokers, c.ackTimeoutMs, this.log);
      this.#status = new StatusPage({
        auth,
        audit: this.audit,
        log: this.log,
        // Event streams may take at most half the HTTP port's connections.
        maxClients: Math.max(1, Math.min(16, Math.floor(c.maxHttpConnections / 2))),
        snapshot: () =>
          statusSnapshot({
            metrics: this.metrics,
            authEnabled: auth.enabled,
            sessionsByOwner: () => this.#consumers.sessionsByOwner(),
            handlesByOwner: () => this.#producers.handlesByOwner(),
            brokers: () => brokersUp(this.#router),
            closing: () => this.#closing,
          }),
      });
      const toStatus = statusMapper(this.redactor);
      const limits = requestLimits({ ...c, idLength: LIMITS.id });
      const guard = createCallGuard({
        auth,
        audit: this.audit,
        metrics: this.metrics,
        toStatus,
        maxConcurrent: c.maxConcurrent,
        isClosing: () => this.#closing,
        openMethods: new Set(['HealthCheck']),
        onCall: (peer) => this.#listener?.onCall(peer),
      });
      this.#activeUnary = guard.activeUnary;
      const service = createService({
        config: c,
        router: this.#router,
        producers: this.#producers,
        consumers: this.#consumers,
        transactions: this.#transactions,
        metrics: this.metrics,
        audit: this.audit,
        redactor: this.redactor,
        toStatus,
        log: this.log,
        isClosing: () => this.#closing,
        cutConnection: (peer) => this.#listener?.cut(peer),
        transportBytes: (peer) => this.#listener?.bytesWritten(peer) ?? 0,
      });
      const largestRequest = Math.max(...Object.values(limits).map((l) => l.maxBytes));
      const grpc = new Server({
        interceptors: [guard.interceptor],
        // Per-method limits are enforced before decoding (calls.ts); this is only the ceiling.
        'grpc.max_receive_message_length': largestRequest,
        'grpc.max_send_message_length': c.maxMessageSize * 2 + 64 * 1024,
        'grpc.max_connection_idle_ms': c.connectionIdleTimeoutMs,
      });
      this.#grpc = grpc;
      grpc.addService(guardDecoders(loadServiceDefinition(), limits), service.implementation);
      this.#service = service;
      const creds = tls
        ? ServerCredentials.createSsl(null, [
            { cert_chain: readFileSync(c.tlsCert), private_key: readFileSync(c.tlsKey) },
          ])
        : ServerCredentials.createInsecure();
      const injector = grpc.createConnectionInjector(creds);
      this.#listener = new GrpcListener((socket) => injector.injectConnection(socket), {
        maxConnections: c.maxConnections,
        headersTimeoutMs: c.headersTimeoutMs,
        audit: this.audit,
        log: this.log,
      });
      this.#grpcPort = await this.#listener.listen(c.grpcHost, c.grpcPort);
      const http = createHttpListener((req, res) => void this.#serveHttp(req, res), {
        maxConnections: c.maxHttpConnections,
        headersTimeoutMs: c.headersTimeoutMs,
        idleTimeoutMs: c.connectionIdleTimeoutMs,
      });
      this.#http = http;
      await new Promise<void>((resolve, reject) => {
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
      this.#httpPort = (http.address() as AddressInfo).port;
      this.metrics.start();
      const period = Math.max(
        50,
        Math.min(
          1000,
          Math.min(
            c.ackTimeoutMs,
            c.consumerCleanupTimeoutMs,
            c.producerCleanupTimeoutMs,
            c.streamStallTimeoutMs,
            c.headersTimeoutMs,
          ) / 4,
        ),
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
      this.log.info(
        {
          grpc: `${c.grpcHost}:${this.#grpcPort}`,
          metrics: `http://${c.metricsHost}:${this.#httpPort}/metrics`,
          brokers: this.#router.refs.map((r) => r.url),
          tls,
          auth: auth.enabled,
        },
        'mqgate gateway listening',
      );
    } catch (err) {
      await this.close().catch(() => {});
      throw err;
    }
    return this;
  }

  /** Runs the reapers once (the interval calls this; tests may too). */
  async sweep(): Promise<void> {
    const now = Date.now();
    this.#listener?.sweep(now);
    this.#service?.sweep(now);
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
    this.#status?.close();
    const shuttingDown = new MqError('UNAVAILABLE', 'the gateway is shutting down; reconnect to resume');
    this.#consumers.endStreams(shuttingDown);
    this.#service?.endStreams(shuttingDown);
    // In-flight unary calls finish, and Publish streams report the sends they started.
    while ((this.#activeUnary() > 0 || (this.#service?.publishStreams() ?? 0) > 0) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 10));
    }
    const grpc = this.#grpc;
    const listener = this.#listener;
    const http = this.#http;
    listener?.stopAccepting();
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
      listener && (() => listener.close()),
      http &&
        (() =>
          new Promise<void>((resolve) => {
            http.close(() => resolve());
            http.closeAllConnections();
          })),
      () => this.metrics.stop(),
    ]);
    // A gateway that never started has nothing to report.
    if (this.#grpcPort === 0) return;
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
        // a plain `curl | jq` sends */* and gets JSON (Metrics.json's field names).
        if (/text\/plain|application\/openmetrics-text/.test(accept)) {
          send(res, 200, this.metrics.registry.contentType, await this.metrics.registry.metrics());
        } else {
          send(res, 200, 'application/json', `${JSON.stringify(this.metrics.json(), null, 2)}\n`);
        }
      } else if (path === '/status' || path === '/status/events') {
        if (!(await this.#status?.serve(req, res, path))) send(res, 503, 'text/plain', 'not started\n');
      } else if (path === '/health') {
        send(
          res,
          this.#closing ? 503 : 200,
          'application/json',
          JSON.stringify({ status: this.#closing ? 'shutting down' : 'ok' }),
        );
      } else if (path === '/ready') {
        // Unauthenticated: each broker's kind and state, never its address or error text.
        const refs = this.#router?.refs ?? [];
        const health = (await this.#router?.health()) ?? [];
        const checks = refs.map((r, i) => ({
          broker: `${r.broker.kind}#${r.index}`,
          ok: health[i]?.ok === true,
        }));
        const ready = !this.#closing && checks.length > 0 && checks.every((c) => c.ok);
        send(res, ready ? 200 : 503, 'application/json', JSON.stringify({ ready, brokers: checks }));
      } else {
        send(res, 404, 'text/plain', 'not found: try /metrics, /health, /ready or /status\n');
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

/** Starts a gateway; the caller owns it and must close() it. */
export async function startGateway(options: GatewayOptions = {}): Promise<Gateway> {
  return new Gateway(options).start();
}
