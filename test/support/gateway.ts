/**
 * Test helpers for the gateway: start one in-process on ephemeral ports and talk to it with a raw
 * gRPC client loaded the way existing clients load the proto (keepCase, longs as strings,
 * defaults on), so the tests check exactly what those clients see.
 */
import { type Client, credentials, loadPackageDefinition, Metadata, type ServiceError } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import type { GatewayConfig } from '../../src/gateway/config.js';
import { createLogger } from '../../src/gateway/log.js';
import { Gateway, PROTO_LOADER_OPTIONS, PROTO_PATH } from '../../src/gateway/server.js';

export type RawClient = Client & Record<string, (...args: unknown[]) => unknown>;

export function rawClient(port: number): RawClient {
  const def = loadSync(PROTO_PATH, PROTO_LOADER_OPTIONS);
  const pkg = loadPackageDefinition(def) as unknown as {
    rocketmq: {
      RocketMQProxy: new (addr: string, creds: ReturnType<typeof credentials.createInsecure>) => RawClient;
    };
  };
  return new pkg.rocketmq.RocketMQProxy(`127.0.0.1:${port}`, credentials.createInsecure());
}

export function metadata(token?: string): Metadata {
  const md = new Metadata();
  if (token) md.set('authorization', `Bearer ${token}`);
  return md;
}

/** Calls a unary RPC; resolves with the response or rejects with the ServiceError. */
export function call<T = Record<string, unknown>>(
  client: RawClient,
  method: string,
  request: object,
  md: Metadata = new Metadata(),
): Promise<T> {
  return new Promise((resolve, reject) => {
    const fn = client[method] as (
      req: object,
      md: Metadata,
      cb: (err: ServiceError | null, res: T) => void,
    ) => void;
    fn.call(client, request, md, (err, res) => (err ? reject(err) : resolve(res)));
  });
}

export interface TestGateway {
  gateway: Gateway;
  client: RawClient;
  metricsUrl: string;
  close(): Promise<void>;
}

export async function startTestGateway(config: Partial<GatewayConfig> = {}): Promise<TestGateway> {
  const gateway = new Gateway({
    config: { grpcPort: 0, metricsPort: 0, ...config },
    logger: createLogger(process.env.MQGATE_TEST_LOG ?? 'silent'),
  });
  await gateway.start();
  const client = rawClient(gateway.grpcPort);
  return {
    gateway,
    client,
    metricsUrl: `http://127.0.0.1:${gateway.metricsPort}/metrics`,
    async close() {
      client.close();
      await gateway.close();
    },
  };
}

const METRIC_FIELDS = [
  'active_producers',
  'producer_handles',
  'active_consumers',
  'active_streams',
  'inflight_deliveries',
  'pending_transactions',
  'messages_sent',
  'messages_delivered',
  'messages_acked',
  'messages_nacked',
  'messages_redelivered',
  'channel_full_events',
  'producer_leak_detections',
  'consumer_leak_detections',
  'producers_reopened',
  'total_requests',
  'failed_requests',
] as const;
type MetricField = (typeof METRIC_FIELDS)[number];

/** The gateway's /metrics JSON; a missing field fails the test rather than reading as undefined. */
export async function metricsJson(url: string): Promise<Record<MetricField, number>> {
  const res = await fetch(url, { headers: { connection: 'close' } });
  const json = (await res.json()) as Record<string, unknown>;
  for (const f of METRIC_FIELDS) {
    if (typeof json[f] !== 'number') throw new Error(`/metrics field "${f}" is missing or not a number`);
  }
  return json as Record<MetricField, number>;
}

export interface Received {
  message_id: string;
  receipt_handle: string;
  message_body: string;
  message_body_bytes: Buffer;
  tag: string;
  topic: string;
  properties: Record<string, string>;
  born_timestamp: string;
  reconsume_times: number;
}

/** Opens ReceiveMessages and collects what arrives; `end()` cancels the stream. */
export function receive(client: RawClient, consumerId: string, md: Metadata = new Metadata()) {
  const stream = (
    client.ReceiveMessages as (req: object, md: Metadata) => NodeJS.EventEmitter & { cancel(): void }
  ).call(client, { consumer_id: consumerId }, md);
  const messages: Received[] = [];
  let error: ServiceError | undefined;
  let ended = false;
  stream.on('data', (m: Received) => messages.push(m));
  stream.on('error', (e: ServiceError) => {
    error = e;
    ended = true;
  });
  stream.on('end', () => {
    ended = true;
  });
  return {
    messages,
    get error() {
      return error;
    },
    get ended() {
      return ended;
    },
    end() {
      stream.cancel();
    },
  };
}
