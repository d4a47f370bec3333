import { InvalidArgumentError } from '../../core/errors.js';

export interface KafkaConfig {
  /** host:port pairs the clients bootstrap from. */
  readonly brokers: string[];
  readonly clientId: string;
  readonly autoCreateTopics: boolean;
  /** Partitions of an auto-created topic. */
  readonly partitions: number;
  /** Replication factor of an auto-created topic; -1 means the cluster's default.replication.factor. */
  readonly replicationFactor: number;
  /** Name prefix of the holding topics (delayed messages): `<prefix>_0`, `<prefix>_1s`, ... */
  readonly holdingTopics: string;
  /** The URL with nothing secret in it, for logs and metrics. */
  readonly displayUrl: string;
}

const KNOWN = new Set([
  'clientId',
  'autoCreateTopics',
  'partitions',
  'replicationFactor',
  'brokers',
  'holdingTopics',
]);
const HOST_PORT = /^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9._-]+):(\d{1,5})$/;

function hostPort(value: string, where: string): string {
  const m = HOST_PORT.exec(value.trim());
  const port = m ? Number(m[2]) : 0;
  if (!m || port < 1 || port > 65535) {
    throw new InvalidArgumentError(
      `kafka URL ${where} "${value}" is not host:port; write e.g. kafka://127.0.0.1:9092 ` +
        `(more bootstrap brokers go in ?brokers=host2:9092,host3:9092)`,
    );
  }
  return `${m[1]}:${port}`;
}

function integer(name: string, raw: string, min: number, accepts: string): number {
  const n = Number(raw);
  if (raw.trim() === '' || !Number.isInteger(n) || n < min) {
    throw new InvalidArgumentError(`kafka URL parameter ${name}="${raw}" is invalid; it accepts ${accepts}`);
  }
  return n;
}

/**
 * `kafka://host:port[?brokers=h2:p2,h3:p3&clientId=...&autoCreateTopics=true&partitions=3&replicationFactor=1]`
 *
 * Several bootstrap brokers cannot sit in the authority (`kafka://a:1,b:2`): WHATWG URL parsing
 * rejects that before an adapter sees it, hence the `brokers` parameter.
 */
export function parseKafkaUrl(url: URL): KafkaConfig {
  if (url.protocol !== 'kafka:') {
    throw new InvalidArgumentError(`not a kafka:// URL: ${url.protocol}//`);
  }
  if (url.username || url.password) {
    throw new InvalidArgumentError(
      'kafka URL carries credentials, but SASL is not supported by this adapter; remove user:password@',
    );
  }
  if (url.pathname !== '' && url.pathname !== '/') {
    throw new InvalidArgumentError(
      `kafka URL has a path "${url.pathname}"; write kafka://host:port with options as query parameters`,
    );
  }
  if (!url.hostname) {
    throw new InvalidArgumentError('kafka URL has no host; write e.g. kafka://127.0.0.1:9092');
  }
  const brokers: string[] = [];
  if (url.hostname.includes(',')) {
    throw new InvalidArgumentError(
      `kafka URL host "${url.hostname}" lists several hosts; put the first in the URL and the others in ?brokers=host:port,...`,
    );
  }
  brokers.push(hostPort(`${url.hostname}:${url.port || '9092'}`, 'host'));

  const params = url.searchParams;
  for (const name of params.keys()) {
    if (!KNOWN.has(name)) {
      throw new InvalidArgumentError(
        `kafka URL parameter "${name}" is unknown; known parameters: ${[...KNOWN].join(', ')}`,
      );
    }
  }
  const extra = params.get('brokers');
  if (extra !== null) {
    for (const part of extra.split(',')) {
      const hp = hostPort(part, 'parameter brokers entry');
      if (!brokers.includes(hp)) brokers.push(hp);
    }
  }

  const clientId = params.get('clientId') ?? 'mqgate';
  if (!/^[A-Za-z0-9._-]{1,249}$/.test(clientId)) {
    throw new InvalidArgumentError(
      `kafka URL parameter clientId="${clientId}" is invalid; it accepts 1-249 characters from [A-Za-z0-9._-]`,
    );
  }

  let autoCreateTopics = true;
  const auto = params.get('autoCreateTopics');
  if (auto !== null) {
    if (auto !== 'true' && auto !== 'false') {
      throw new InvalidArgumentError(
        `kafka URL parameter autoCreateTopics="${auto}" is invalid; it accepts true or false`,
      );
    }
    autoCreateTopics = auto === 'true';
  }

  const p = params.get('partitions');
  const partitions = p === null ? 3 : integer('partitions', p, 1, 'an integer >= 1');
  const r = params.get('replicationFactor');
  const replicationFactor =
    r === null
      ? -1
      : r === '-1'
        ? -1
        : integer('replicationFactor', r, 1, 'an integer >= 1, or -1 for the cluster default');

  const holdingTopics = params.get('holdingTopics') ?? '__mqgate_hold';
  if (!/^__[A-Za-z0-9._-]{1,200}$/.test(holdingTopics)) {
    throw new InvalidArgumentError(
      `kafka URL parameter holdingTopics="${holdingTopics}" is invalid; it accepts a topic name prefix starting with "__" (a reserved name) followed by 1-200 characters from [A-Za-z0-9._-]`,
    );
  }

  const display = new URL(url.toString());
  return {
    holdingTopics,
    brokers,
    clientId,
    autoCreateTopics,
    partitions,
    replicationFactor,
    displayUrl: display.toString(),
  };
}
