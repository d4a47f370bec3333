import { createHash } from 'node:crypto';
import { InvalidArgumentError } from '../../core/errors.js';
import type { Credentials } from '../broker.js';

/** How the adapter authenticates to the RocketMQ proxy. */
export type CredentialsMode = 'none' | 'client';

export interface RocketMqUrl {
  /** host:port of the proxy's gRPC endpoint. */
  readonly endpoint: string;
  readonly namespace: string;
  readonly mode: CredentialsMode;
  /** Static credentials from the URL, used for every client when mode is 'none'. */
  readonly staticCredentials: Credentials | undefined;
  /** Cluster named in "create it with mqadmin" hints. */
  readonly cluster: string;
  /** Per-RPC deadline handed to the client library (it refuses less than 1000 ms). */
  readonly requestTimeoutMs: number;
  /** The URL with the secret removed, for logs and metrics. */
  readonly redacted: string;
}

const KNOWN_PARAMS = new Set([
  'namespace',
  'credentials',
  'accessKey',
  'secretKey',
  'cluster',
  'requestTimeoutMs',
]);

const EXAMPLE = 'rocketmq://127.0.0.1:8081?namespace=&credentials=none|client&accessKey=..&secretKey=..';

export function parseRocketMqUrl(url: URL): RocketMqUrl {
  const fail = (why: string): never => {
    throw new InvalidArgumentError(`RocketMQ broker URL is invalid: ${why}; write e.g. ${EXAMPLE}`);
  };
  if (url.protocol !== 'rocketmq:') fail(`scheme must be rocketmq:, got ${url.protocol}`);
  if (url.username || url.password) {
    fail('credentials in the user-info part are not read; pass accessKey and secretKey as query parameters');
  }
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
  if (!host) fail('a host is required');
  if (!url.port) fail('the proxy gRPC port is required (RocketMQ 5 proxy default: 8081)');
  if (url.pathname !== '' && url.pathname !== '/') fail(`unexpected path "${url.pathname}"`);
  for (const key of url.searchParams.keys()) {
    if (!KNOWN_PARAMS.has(key)) {
      fail(`unknown parameter "${key}" (known: ${[...KNOWN_PARAMS].join(', ')})`);
    }
  }
  const namespace = url.searchParams.get('namespace') ?? '';
  const modeText = url.searchParams.get('credentials') ?? 'none';
  if (modeText !== 'none' && modeText !== 'client') {
    fail(`credentials must be "none" or "client", got "${modeText}"`);
  }
  const mode = modeText as CredentialsMode;
  const accessKey = url.searchParams.get('accessKey');
  const secretKey = url.searchParams.get('secretKey');
  if ((accessKey === null) !== (secretKey === null)) fail('accessKey and secretKey go together');
  if (accessKey !== null && (accessKey === '' || secretKey === ''))
    fail('accessKey and secretKey must not be empty');
  if (mode === 'client' && accessKey !== null) {
    fail("credentials=client uses each caller's keys; drop accessKey/secretKey or use credentials=none");
  }
  const timeoutText = url.searchParams.get('requestTimeoutMs');
  let requestTimeoutMs = 5_000;
  if (timeoutText !== null) {
    requestTimeoutMs = Number(timeoutText);
    if (!Number.isInteger(requestTimeoutMs) || requestTimeoutMs < 1_000 || requestTimeoutMs > 120_000) {
      fail(`requestTimeoutMs must be an integer from 1000 to 120000, got "${timeoutText}"`);
    }
  }
  const cluster = url.searchParams.get('cluster') ?? 'DefaultCluster';
  const redactedUrl = new URL(url.toString());
  if (redactedUrl.searchParams.has('secretKey')) redactedUrl.searchParams.set('secretKey', '***');
  return {
    endpoint: `${url.hostname}:${url.port}`,
    namespace,
    mode,
    staticCredentials:
      accessKey !== null && secretKey !== null
        ? { accessKeyId: accessKey, accessKeySecret: secretKey }
        : undefined,
    cluster,
    requestTimeoutMs,
    redacted: redactedUrl.toString(),
  };
}

/** A stable, non-reversible key for caching clients per credential pair; never the secret itself. */
export function credentialDigest(credentials: Credentials | undefined): string {
  if (!credentials) return 'anonymous';
  return createHash('sha256')
    .update(credentials.accessKeyId)
    .update('\0')
    .update(credentials.accessKeySecret)
    .digest('hex')
    .slice(0, 32);
}
