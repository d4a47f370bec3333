import { parseDuration } from '../../core/duration.js';
import { InvalidArgumentError } from '../../core/errors.js';
import { parseSize, SIZE_FORMAT } from '../../core/size.js';

export type NatsStorage = 'file' | 'memory';
export type NatsRetention = 'limits' | 'workqueue' | 'interest';

export interface NatsConfig {
  /** host:port entries for the client; the first comes from the URL authority. */
  servers: string[];
  user: string | undefined;
  pass: string | undefined;
  token: string | undefined;
  storage: NatsStorage;
  retention: NatsRetention;
  /** -1: unlimited (the JetStream default). */
  maxBytes: number;
  /** 0: unlimited. */
  maxAgeMs: number;
  replicas: number;
  createStreams: boolean;
  streamPrefix: string;
  /** The URL without credentials, for logs and errors. */
  display: string;
}

const PARAMS = [
  'storage',
  'retention',
  'maxBytes',
  'maxAge',
  'replicas',
  'createStreams',
  'streamPrefix',
  'servers',
] as const;

function bad(param: string, value: string, accepts: string): InvalidArgumentError {
  return new InvalidArgumentError(
    `nats:// URL parameter ${param}="${value}" is not valid; ${param} accepts ${accepts}`,
  );
}

function oneOf<T extends string>(param: string, value: string | null, allowed: readonly T[], fallback: T): T {
  if (value === null) return fallback;
  if ((allowed as readonly string[]).includes(value)) return value as T;
  throw bad(param, value, allowed.map((a) => `"${a}"`).join(' or '));
}

function parseBytes(value: string): number {
  const n = parseSize(value);
  if (n === undefined || n <= 0) {
    throw bad('maxBytes', value, `${SIZE_FORMAT} (more than 0), or -1 for no limit`);
  }
  return n;
}

function hostPort(entry: string, param: string): string {
  const m = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(?::(\d{1,5}))?$/.exec(entry.trim());
  if (!m) throw bad(param, entry, 'host or host:port entries separated by ","');
  const port = m[2] === undefined ? 4222 : Number(m[2]);
  if (port < 1 || port > 65535) throw bad(param, entry, 'ports between 1 and 65535');
  return `${m[1]}:${port}`;
}

/**
 * Parses `nats://[user:pass@|token@]host:port[?...]`. WHATWG URLs cannot hold several
 * `host:port` authorities (`nats://a:1,b:2` is rejected before it reaches us), so more servers
 * of the same cluster go in `servers=h2:4222,h3:4222`; `nats://h1,h2:4222` (one port) works too.
 */
export function parseNatsUrl(url: URL): NatsConfig {
  if (url.protocol !== 'nats:') {
    throw new InvalidArgumentError(`expected a nats:// URL, got "${url.protocol}//"`);
  }
  const q = url.searchParams;
  for (const key of q.keys()) {
    if (!(PARAMS as readonly string[]).includes(key)) {
      throw new InvalidArgumentError(
        `nats:// URL has unknown parameter "${key}"; accepted parameters: ${PARAMS.join(', ')}`,
      );
    }
  }
  const servers: string[] = [];
  if (url.hostname === '') {
    throw new InvalidArgumentError('nats:// URL needs a host, e.g. nats://127.0.0.1:4222');
  }
  for (const host of url.hostname.split(',')) {
    servers.push(hostPort(url.port === '' ? host : `${host}:${url.port}`, 'host'));
  }
  const extra = q.get('servers');
  if (extra !== null) {
    for (const entry of extra.split(',')) servers.push(hostPort(entry, 'servers'));
  }

  const maxBytesText = q.get('maxBytes');
  const maxBytes = maxBytesText === null || maxBytesText.trim() === '-1' ? -1 : parseBytes(maxBytesText);

  let maxAgeMs = 0;
  const maxAgeText = q.get('maxAge');
  if (maxAgeText !== null && maxAgeText !== '0') {
    try {
      maxAgeMs = parseDuration(maxAgeText, 'maxAge');
    } catch (cause) {
      throw new InvalidArgumentError(
        `nats:// URL parameter maxAge="${maxAgeText}" is not valid; maxAge accepts a duration such as 30s, 2h or 1h30m, or 0 for no limit`,
        { cause },
      );
    }
  }

  const replicasText = q.get('replicas');
  let replicas = 1;
  if (replicasText !== null) {
    replicas = Number(replicasText);
    if (!/^\d+$/.test(replicasText) || replicas < 1 || replicas > 5) {
      throw bad('replicas', replicasText, 'a whole number from 1 to 5');
    }
  }

  const createText = q.get('createStreams');
  const createStreams = oneOf('createStreams', createText, ['true', 'false'], 'true') === 'true';

  const prefix = q.get('streamPrefix') ?? 'mqgate';
  if (!/^[A-Za-z0-9_-]{1,32}$/.test(prefix)) {
    throw bad(
      'streamPrefix',
      prefix,
      '1-32 characters from A-Z, a-z, 0-9, "_" and "-" (it is a subject token and part of stream names)',
    );
  }

  const user = url.username === '' ? undefined : decodeURIComponent(url.username);
  const pass = url.password === '' ? undefined : decodeURIComponent(url.password);
  const display = new URL(url.toString());
  display.username = '';
  display.password = '';
  return {
    servers,
    // A lone user part is a token, as in the nats CLI's nats://token@host.
    user: pass === undefined ? undefined : user,
    pass,
    token: pass === undefined ? user : undefined,
    storage: oneOf('storage', q.get('storage'), ['file', 'memory'], 'file'),
    retention: oneOf('retention', q.get('retention'), ['limits', 'workqueue', 'interest'], 'limits'),
    maxBytes,
    maxAgeMs,
    replicas,
    createStreams,
    streamPrefix: prefix,
    display: display.toString(),
  };
}
