import { InvalidArgumentError } from '../core/errors.js';
import type { Broker, BrokerOpenOptions } from './broker.js';

type Opener = (url: URL, options: BrokerOpenOptions) => Promise<Broker>;

/**
 * Adapters are loaded lazily by scheme so a gateway on `memory://` never loads a Kafka or
 * RocketMQ client library (and their start-up cost and timers).
 */
const OPENERS: Record<string, () => Promise<Opener>> = {
  'memory:': async () => (await import('./memory/index.js')).openMemoryBroker,
  'kafka:': async () => (await import('./kafka/index.js')).openKafkaBroker,
  'rocketmq:': async () => (await import('./rocketmq/index.js')).openRocketMqBroker,
  'nats:': async () => (await import('./nats/index.js')).openNatsBroker,
};

export const SUPPORTED_SCHEMES = (): string[] => Object.keys(OPENERS).map((s) => s.slice(0, -1));

/** Opens a broker by URL: `memory://`, `kafka://host:port`, `rocketmq://host:port`, `nats://host:port`. */
export async function openBroker(url: string, options: BrokerOpenOptions = {}): Promise<Broker> {
  let parsed: URL;
  try {
    parsed = parseBrokerUrl(url);
  } catch (cause) {
    throw new InvalidArgumentError(
      `broker URL "${url}" is not a URL; write e.g. memory://, kafka://127.0.0.1:9092`,
      { cause },
    );
  }
  const load = OPENERS[parsed.protocol];
  if (!load) {
    throw new InvalidArgumentError(
      `broker URL "${redactUrl(url)}" has unknown scheme "${parsed.protocol}"; supported: ${SUPPORTED_SCHEMES()
        .map((s) => `${s}://`)
        .join(', ')}`,
    );
  }
  const open = await load();
  return open(parsed, options);
}

/** Where each scheme's adapter takes the hosts after the first of a `a:1,b:2` authority. */
const EXTRA_HOSTS_PARAM: Record<string, string> = { 'kafka:': 'brokers', 'nats:': 'servers' };

/**
 * WHATWG URL parsing rejects a host list (`kafka://a:9092,b:9092`), the form Kafka and NATS users
 * write. Keep the first host in the authority and move the rest to the adapter's parameter.
 */
export function parseBrokerUrl(url: string): URL {
  const m = /^([a-z][a-z0-9+.-]*:)\/\/([^/?#]*,[^/?#]*)(.*)$/i.exec(url);
  const param = m ? EXTRA_HOSTS_PARAM[(m[1] as string).toLowerCase()] : undefined;
  if (!m || !param) return new URL(url);
  const [first, ...rest] = (m[2] as string).split(',');
  const u = new URL(`${m[1]}//${first}${m[3]}`);
  const existing = u.searchParams.get(param);
  u.searchParams.set(param, [...rest, ...(existing ? [existing] : [])].join(','));
  return u;
}

/** Query parameters whose values are credentials in some adapter's URL. */
const SECRET_PARAM = /pass|secret|token|credential|sasl|auth|key$/i;

/**
 * The URL as it may appear in a log, a metric or an error: user, password (a NATS token sits in
 * the user part) and any credential-like query parameter replaced by ***.
 */
export function redactUrl(url: string): string {
  let u: URL;
  try {
    u = parseBrokerUrl(url);
  } catch {
    return '(an unparsable broker URL)';
  }
  if (u.username) u.username = '***';
  if (u.password) u.password = '***';
  for (const name of [...u.searchParams.keys()]) {
    if (SECRET_PARAM.test(name)) u.searchParams.set(name, '***');
  }
  return u.toString().replace(/%2A%2A%2A/g, '***');
}

/**
 * Every credential written in a broker URL, as it appears in the URL and decoded, so that any
 * text (a client library's error, a health detail) can be scrubbed of them.
 */
export function urlSecrets(url: string): string[] {
  let u: URL;
  try {
    u = parseBrokerUrl(url);
  } catch {
    return [];
  }
  const raw = [u.username, u.password];
  for (const [name, value] of u.searchParams) if (SECRET_PARAM.test(name)) raw.push(value);
  const out = new Set<string>();
  for (const s of raw) {
    if (s.length < 3) continue;
    out.add(s);
    try {
      const decoded = decodeURIComponent(s);
      out.add(decoded);
      out.add(encodeURIComponent(decoded));
    } catch {
      // a malformed escape: the raw form is still scrubbed
    }
  }
  return [...out];
}
