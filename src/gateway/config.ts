import { readFileSync } from 'node:fs';
import { parseBrokerUrl, redactUrl, SUPPORTED_SCHEMES } from '../brokers/index.js';
import { formatDuration, parseDuration } from '../core/duration.js';
import { InvalidArgumentError } from '../core/errors.js';
import { parseSize, SIZE_FORMAT } from '../core/size.js';

/**
 * Every setting lives in ONE table: its environment variable, its flag, its default, and its
 * parser. `mqgate serve --help` and the README's configuration table are generated from it, so a
 * documented variable that nothing reads cannot exist.
 * An invalid value stops start-up naming the variable and what it accepts; nothing falls back.
 */

type Kind =
  | 'port'
  | 'duration'
  | 'int'
  | 'size'
  | 'bool'
  | 'string'
  | 'host'
  | 'level'
  | 'brokers'
  | 'tokens';

interface Setting<K extends keyof GatewayConfig> {
  key: K;
  env: string;
  flag: string;
  kind: Kind;
  default: string;
  help: string;
}

export interface BrokerEntry {
  url: string;
  /** Endpoint strings clients send that select this broker (empty: none named). */
  endpoints: string[];
}

export interface GatewayConfig {
  grpcHost: string;
  grpcPort: number;
  metricsHost: string;
  metricsPort: number;
  brokers: BrokerEntry[];
  messageBufferSize: number;
  ackTimeoutMs: number;
  producerCleanupTimeoutMs: number;
  producerHandleTtlMs: number;
  consumerCleanupTimeoutMs: number;
  transactionTimeoutMs: number;
  maxConcurrent: number;
  maxMessageSize: number;
  maxProperties: number;
  maxBatchSize: number;
  maxBatchBytes: number;
  maxProducersPerCaller: number;
  maxConsumersPerCaller: number;
  maxTransactionsPerCaller: number;
  maxProducerHandles: number;
  maxSessions: number;
  maxStreams: number;
  maxPendingTransactions: number;
  maxConnections: number;
  maxHttpConnections: number;
  connectionIdleTimeoutMs: number;
  headersTimeoutMs: number;
  streamBufferBytes: number;
  streamStallTimeoutMs: number;
  publishWindow: number;
  publishWindowBytes: number;
  maxDelayMs: number;
  maxNackDelayMs: number;
  maxTransactionImmunityMs: number;
  authTokens: Map<string, string>;
  authFile: string;
  tlsCert: string;
  tlsKey: string;
  insecure: boolean;
  shutdownTimeoutMs: number;
  logLevel: string;
}

// biome-ignore lint/suspicious/noExplicitAny: a heterogeneous table; each row is checked by defineSetting.
type AnySetting = Setting<any>;

const defineSetting = <K extends keyof GatewayConfig>(s: Setting<K>): Setting<K> => s;

export const SETTINGS: readonly AnySetting[] = [
  defineSetting({
    key: 'grpcHost',
    env: 'GRPC_HOST',
    flag: '--grpc-host',
    kind: 'host',
    default: '127.0.0.1',
    help: 'Address the gRPC server listens on. A non-loopback address needs AUTH_TOKENS or TLS, or --insecure.',
  }),
  defineSetting({
    key: 'grpcPort',
    env: 'GRPC_PORT',
    flag: '--grpc-port',
    kind: 'port',
    default: '50051',
    help: 'gRPC port (0 picks a free one).',
  }),
  defineSetting({
    key: 'metricsHost',
    env: 'METRICS_HOST',
    flag: '--metrics-host',
    kind: 'host',
    default: '127.0.0.1',
    help: 'Address of the HTTP server for /metrics, /health and /ready.',
  }),
  defineSetting({
    key: 'metricsPort',
    env: 'METRICS_PORT',
    flag: '--metrics-port',
    kind: 'port',
    default: '8080',
    help: 'HTTP port for /metrics, /health, /ready (0 picks a free one).',
  }),
  defineSetting({
    key: 'brokers',
    env: 'BROKERS',
    flag: '--brokers',
    kind: 'brokers',
    default: 'memory://',
    help: "Brokers, separated by ';'. Each is a URL (memory://, kafka://h:p, rocketmq://h:p, nats://h:p), optionally followed by ' endpoints=a,b': the endpoint strings clients send that select it. With one broker, every endpoint selects it.",
  }),
  defineSetting({
    key: 'messageBufferSize',
    env: 'MESSAGE_BUFFER_SIZE',
    flag: '--message-buffer-size',
    kind: 'int',
    default: '256',
    help: 'Unacked deliveries per consumer session; at the cap the session stops pulling from the broker (backpressure).',
  }),
  defineSetting({
    key: 'ackTimeoutMs',
    env: 'ACK_TIMEOUT',
    flag: '--ack-timeout',
    kind: 'duration',
    default: '30s',
    help: 'An unacked delivery is redelivered after this long (reconsume_times + 1).',
  }),
  defineSetting({
    key: 'producerCleanupTimeoutMs',
    env: 'PRODUCER_CLEANUP_TIMEOUT',
    flag: '--producer-cleanup-timeout',
    kind: 'duration',
    default: '30s',
    help: 'A broker producer without sends for this long is closed; the next send reopens it transparently.',
  }),
  defineSetting({
    key: 'producerHandleTtlMs',
    env: 'PRODUCER_HANDLE_TTL',
    flag: '--producer-handle-ttl',
    kind: 'duration',
    default: '1h',
    help: 'A producer handle unused this long is dropped and counted in producer_leak_detections.',
  }),
  defineSetting({
    key: 'consumerCleanupTimeoutMs',
    env: 'CONSUMER_CLEANUP_TIMEOUT',
    flag: '--consumer-cleanup-timeout',
    kind: 'duration',
    default: '30s',
    help: 'A consumer session without a stream for this long is closed and counted in consumer_leak_detections.',
  }),
  defineSetting({
    key: 'transactionTimeoutMs',
    env: 'TRANSACTION_TIMEOUT',
    flag: '--transaction-timeout',
    kind: 'duration',
    default: '60s',
    help: 'A transaction neither committed nor rolled back is committed after trans_check_immunity_time, or after this when the request gives none.',
  }),
  defineSetting({
    key: 'maxConcurrent',
    env: 'MAX_CONCURRENT',
    flag: '--max-concurrent',
    kind: 'int',
    default: '1000',
    help: 'Unary calls served at once; beyond it calls fail with RESOURCE_EXHAUSTED.',
  }),
  defineSetting({
    key: 'maxMessageSize',
    env: 'MAX_MESSAGE_SIZE',
    flag: '--max-message-size',
    kind: 'size',
    default: '4080KiB',
    help: "Largest message: body, properties and keys together (bytes, or with a unit: KB/MB are powers of 1000, KiB/MiB of 1024). The default, 4 MiB less 16 KiB, leaves room for a delivery's other fields within a default gRPC client's 4 MiB receive limit.",
  }),
  defineSetting({
    key: 'maxProperties',
    env: 'MAX_PROPERTIES',
    flag: '--max-properties',
    kind: 'int',
    default: '64',
    help: 'Most user properties on one message.',
  }),
  defineSetting({
    key: 'maxBatchSize',
    env: 'MAX_BATCH_SIZE',
    flag: '--max-batch-size',
    kind: 'int',
    default: '1000',
    help: 'Most messages in one SendMessages call, or receipt handles in one AckMessages call.',
  }),
  defineSetting({
    key: 'maxBatchBytes',
    env: 'MAX_BATCH_BYTES',
    flag: '--max-batch-bytes',
    kind: 'size',
    default: '8MiB',
    help: 'Largest SendMessages request in bytes; at least MAX_MESSAGE_SIZE plus 64 KiB.',
  }),
  defineSetting({
    key: 'maxProducersPerCaller',
    env: 'MAX_PRODUCERS_PER_CALLER',
    flag: '--max-producers-per-caller',
    kind: 'int',
    default: '1000',
    help: 'Live producer handles one caller may hold: one token principal when auth is on, one access key id when off.',
  }),
  defineSetting({
    key: 'maxConsumersPerCaller',
    env: 'MAX_CONSUMERS_PER_CALLER',
    flag: '--max-consumers-per-caller',
    kind: 'int',
    default: '1000',
    help: 'Live consumer sessions one caller may hold (counted as for MAX_PRODUCERS_PER_CALLER).',
  }),
  defineSetting({
    key: 'maxTransactionsPerCaller',
    env: 'MAX_TRANSACTIONS_PER_CALLER',
    flag: '--max-transactions-per-caller',
    kind: 'int',
    default: '1000',
    help: 'Transactions one caller may leave pending (neither committed nor rolled back).',
  }),
  defineSetting({
    key: 'maxProducerHandles',
    env: 'MAX_PRODUCER_HANDLES',
    flag: '--max-producer-handles',
    kind: 'int',
    default: '100000',
    help: 'Live producer handles across all callers.',
  }),
  defineSetting({
    key: 'maxSessions',
    env: 'MAX_SESSIONS',
    flag: '--max-sessions',
    kind: 'int',
    default: '10000',
    help: 'Live consumer sessions across all callers (each is a broker subscription).',
  }),
  defineSetting({
    key: 'maxStreams',
    env: 'MAX_STREAMS',
    flag: '--max-streams',
    kind: 'int',
    default: '10000',
    help: 'Open consumer streams across all callers.',
  }),
  defineSetting({
    key: 'maxPendingTransactions',
    env: 'MAX_PENDING_TRANSACTIONS',
    flag: '--max-pending-transactions',
    kind: 'int',
    default: '10000',
    help: 'Pending transactions across all callers.',
  }),
  defineSetting({
    key: 'maxConnections',
    env: 'MAX_CONNECTIONS',
    flag: '--max-connections',
    kind: 'int',
    default: '4096',
    help: 'Open connections on the gRPC port; more are closed as they arrive.',
  }),
  defineSetting({
    key: 'maxHttpConnections',
    env: 'MAX_HTTP_CONNECTIONS',
    flag: '--max-http-connections',
    kind: 'int',
    default: '256',
    help: 'Open connections on the HTTP (metrics) port; more are closed as they arrive.',
  }),
  defineSetting({
    key: 'connectionIdleTimeoutMs',
    env: 'CONNECTION_IDLE_TIMEOUT',
    flag: '--connection-idle-timeout',
    kind: 'duration',
    default: '5m',
    help: 'A gRPC connection without a call, or an HTTP connection without traffic, for this long is closed.',
  }),
  defineSetting({
    key: 'headersTimeoutMs',
    env: 'HEADERS_TIMEOUT',
    flag: '--headers-timeout',
    kind: 'duration',
    default: '10s',
    help: 'A new connection must send a complete call (gRPC) or request headers (HTTP) within this long, or it is closed.',
  }),
  defineSetting({
    key: 'streamBufferBytes',
    env: 'STREAM_BUFFER_BYTES',
    flag: '--stream-buffer-bytes',
    kind: 'size',
    default: '1MiB',
    help: 'Bytes of deliveries one stream may have waiting to be written to its client (one message always may); at the limit the stream waits for the client to read.',
  }),
  defineSetting({
    key: 'streamStallTimeoutMs',
    env: 'STREAM_STALL_TIMEOUT',
    flag: '--stream-stall-timeout',
    kind: 'duration',
    default: '30s',
    help: 'A stream whose client reads nothing for this long while deliveries wait is ended (RESOURCE_EXHAUSTED) and its deliveries released without counting as attempts.',
  }),
  defineSetting({
    key: 'publishWindow',
    env: 'PUBLISH_WINDOW',
    flag: '--publish-window',
    kind: 'int',
    default: '1024',
    help: 'Messages one Publish stream may have in progress (sent, or result not yet taken by the client); at the window the gateway stops reading the stream.',
  }),
  defineSetting({
    key: 'publishWindowBytes',
    env: 'PUBLISH_WINDOW_BYTES',
    flag: '--publish-window-bytes',
    kind: 'size',
    default: '8MiB',
    help: 'Bytes of message bodies one Publish stream may have in progress, as for PUBLISH_WINDOW.',
  }),
  defineSetting({
    key: 'maxDelayMs',
    env: 'MAX_DELAY',
    flag: '--max-delay',
    kind: 'duration',
    default: '3d',
    help: "Furthest start_deliver_time accepted, from now (RocketMQ's own default limit).",
  }),
  defineSetting({
    key: 'maxNackDelayMs',
    env: 'MAX_NACK_DELAY',
    flag: '--max-nack-delay',
    kind: 'duration',
    default: '12h',
    help: 'Longest delay_ms accepted by NackMessage.',
  }),
  defineSetting({
    key: 'maxTransactionImmunityMs',
    env: 'MAX_TRANSACTION_IMMUNITY',
    flag: '--max-transaction-immunity',
    kind: 'duration',
    default: '1h',
    help: 'Longest trans_check_immunity_time accepted: how long a transaction may stay pending before it is committed.',
  }),
  defineSetting({
    key: 'authTokens',
    env: 'AUTH_TOKENS',
    flag: '--auth-tokens',
    kind: 'tokens',
    default: '',
    help: "Bearer tokens accepted in the 'authorization' metadata, comma-separated, each 'name:token' or a token; each may publish and consume any topic that is not reserved. '@file' reads them from a file. With neither this nor AUTH_FILE, auth is off.",
  }),
  defineSetting({
    key: 'authFile',
    env: 'AUTH_FILE',
    flag: '--auth-file',
    kind: 'string',
    default: '',
    help: 'A JSON or YAML file of principals: each with its token (or tokenSha256) and the topic and group patterns it may publish to, consume and use. See the Security section of the README.',
  }),
  defineSetting({
    key: 'tlsCert',
    env: 'TLS_CERT',
    flag: '--tls-cert',
    kind: 'string',
    default: '',
    help: 'PEM certificate file; with TLS_KEY enables TLS on the gRPC port.',
  }),
  defineSetting({
    key: 'tlsKey',
    env: 'TLS_KEY',
    flag: '--tls-key',
    kind: 'string',
    default: '',
    help: 'PEM private key file for TLS_CERT.',
  }),
  defineSetting({
    key: 'insecure',
    env: 'INSECURE',
    flag: '--insecure',
    kind: 'bool',
    default: 'false',
    help: 'Allow listening on a non-loopback address without tokens or TLS.',
  }),
  defineSetting({
    key: 'shutdownTimeoutMs',
    env: 'SHUTDOWN_TIMEOUT',
    flag: '--shutdown-timeout',
    kind: 'duration',
    default: '10s',
    help: 'On SIGTERM/SIGINT, how long to drain before exiting; a second signal exits at once.',
  }),
  defineSetting({
    key: 'logLevel',
    env: 'LOG_LEVEL',
    flag: '--log-level',
    kind: 'level',
    default: 'info',
    help: 'trace, debug, info, warn, error, fatal or silent.',
  }),
];

const ACCEPTS: Record<Kind, string> = {
  port: 'an integer from 0 to 65535',
  duration: 'a duration such as 500ms, 30s, 2m, 1h, 3d',
  int: 'a positive integer',
  size: SIZE_FORMAT,
  bool: 'true or false',
  string: 'a string',
  host: 'an IP address or host name',
  level: 'trace, debug, info, warn, error, fatal or silent',
  brokers: "broker URLs separated by ';', each optionally followed by ' endpoints=a,b'",
  tokens: "comma-separated 'name:token' or token entries, or @file",
};

function invalid(s: AnySetting, source: string, value: string, why?: string): never {
  throw new InvalidArgumentError(
    `invalid ${source} "${value}" for ${s.env}: ${why ? `${why}; ` : ''}it accepts ${ACCEPTS[s.kind as Kind]}`,
  );
}

/** A BROKERS value as it may be shown: every URL in it redacted. */
function redactBrokerList(text: string): string {
  return text
    .split(/(\s+|;)/)
    .map((part) => (/^[a-z][a-z0-9+.-]*:\/\//i.test(part) ? redactUrl(part) : part))
    .join('');
}

export function parseBrokers(text: string): BrokerEntry[] | string {
  const entries: BrokerEntry[] = [];
  for (const raw of text.split(';')) {
    const part = raw.trim();
    if (!part) continue;
    const [url, ...rest] = part.split(/\s+/);
    const endpoints: string[] = [];
    for (const opt of rest) {
      const m = /^endpoints=(.+)$/.exec(opt);
      if (!m) return `unexpected "${opt.slice(0, 40)}" after ${redactUrl(url as string)}`;
      endpoints.push(...(m[1] as string).split(',').filter(Boolean));
    }
    try {
      const u = parseBrokerUrl(url as string);
      if (!SUPPORTED_SCHEMES().includes(u.protocol.slice(0, -1))) {
        return `unknown scheme ${u.protocol} in ${redactUrl(url as string)}; supported: ${SUPPORTED_SCHEMES()
          .map((x) => `${x}://`)
          .join(', ')}`;
      }
    } catch {
      return `${redactUrl(url as string)} is not a URL`;
    }
    entries.push({ url: url as string, endpoints });
  }
  if (entries.length === 0) return 'no broker given';
  return entries;
}

function parseTokens(text: string): Map<string, string> | string {
  let body = text.trim();
  if (body.startsWith('@')) {
    try {
      body = readFileSync(body.slice(1), 'utf8');
    } catch (err) {
      return `cannot read ${body.slice(1)}: ${(err as Error).message}`;
    }
  }
  const tokens = new Map<string, string>();
  let n = 0;
  for (const raw of body.split(/[,\n]/)) {
    const item = raw.trim();
    if (!item) continue;
    n++;
    const i = item.indexOf(':');
    const [name, token] = i > 0 ? [item.slice(0, i), item.slice(i + 1)] : [`token-${n}`, item];
    if (token.length < 16) return `token "${name}" is shorter than 16 characters`;
    tokens.set(token, name);
  }
  return tokens;
}

function parseValue(s: AnySetting, value: string, source: string): unknown {
  const v = value.trim();
  switch (s.kind as Kind) {
    case 'port': {
      if (!/^\d+$/.test(v) || Number(v) > 65535) invalid(s, source, value);
      return Number(v);
    }
    case 'int': {
      if (!/^\d+$/.test(v) || Number(v) < 1 || !Number.isSafeInteger(Number(v))) invalid(s, source, value);
      return Number(v);
    }
    case 'duration': {
      let ms: number;
      try {
        ms = parseDuration(v, s.env);
      } catch {
        return invalid(s, source, value);
      }
      if (ms <= 0) invalid(s, source, value, 'it must be more than zero');
      return ms;
    }
    case 'size': {
      const n = parseSize(v);
      if (n === undefined || n < 1) invalid(s, source, value);
      return n;
    }
    case 'bool': {
      if (/^(true|1|yes)$/i.test(v)) return true;
      if (/^(false|0|no|)$/i.test(v)) return false;
      return invalid(s, source, value);
    }
    case 'host': {
      if (!/^[A-Za-z0-9.:\-[\]]+$/.test(v)) invalid(s, source, value);
      return v.replace(/^\[(.*)\]$/, '$1');
    }
    case 'level': {
      if (!['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'].includes(v))
        invalid(s, source, value);
      return v;
    }
    case 'brokers': {
      const r = parseBrokers(v);
      // The value may hold credentials: it is shown only with them replaced.
      if (typeof r === 'string') invalid(s, source, redactBrokerList(value), r);
      return r;
    }
    case 'tokens': {
      const r = parseTokens(v);
      if (typeof r === 'string') invalid(s, source, '(hidden)', r);
      return r;
    }
    case 'string':
      return v;
  }
}

/**
 * Builds the configuration from defaults, then the environment, then flags (highest).
 * `flags` maps a setting key to the flag's raw string value.
 */
export function loadConfig(
  env: Record<string, string | undefined> = process.env,
  flags: Partial<Record<keyof GatewayConfig, string>> = {},
): GatewayConfig {
  const out: Record<string, unknown> = {};
  for (const s of SETTINGS) {
    const fromFlag = flags[s.key as keyof GatewayConfig];
    const fromEnv = env[s.env];
    if (fromFlag !== undefined) out[s.key] = parseValue(s, fromFlag, `flag ${s.flag} value`);
    else if (fromEnv !== undefined && fromEnv !== '') out[s.key] = parseValue(s, fromEnv, 'value');
    else out[s.key] = parseValue(s, s.default, 'default');
  }
  const config = out as unknown as GatewayConfig;
  if (config.maxBatchBytes < config.maxMessageSize + 64 * 1024) {
    throw new InvalidArgumentError(
      `MAX_BATCH_BYTES (${config.maxBatchBytes}) must be at least MAX_MESSAGE_SIZE + 64 KiB (${config.maxMessageSize + 64 * 1024}) so a batch can hold one largest message`,
    );
  }
  if ((config.tlsCert === '') !== (config.tlsKey === '')) {
    throw new InvalidArgumentError('TLS_CERT and TLS_KEY must be given together (PEM files), or neither');
  }
  return config;
}

/** Loopback addresses need no protection; anything else does. */
export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\./.test(host);
}

/** The configuration table as markdown (for the README) or plain text (for --help). */
export function describeSettings(format: 'markdown' | 'text'): string {
  const shown = (s: AnySetting): string => {
    if (s.kind === 'duration') return formatDuration(parseDuration(s.default));
    return s.default === '' ? '(none)' : s.default;
  };
  if (format === 'markdown') {
    const rows = SETTINGS.map((s) => `| \`${s.env}\` | \`${s.flag}\` | \`${shown(s)}\` | ${s.help} |`);
    return ['| variable | flag | default | meaning |', '|---|---|---|---|', ...rows].join('\n');
  }
  return SETTINGS.map(
    (s) => `  ${s.env.padEnd(26)} ${s.flag.padEnd(28)} default ${shown(s)}\n      ${s.help}`,
  ).join('\n');
}
