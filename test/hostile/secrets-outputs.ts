/**
 * Everything a running `mqgate serve` lets out, collected for the secrets tests: its logs (stdout
 * and stderr), /ready, /health, /metrics as JSON and as Prometheus text, the /status page and its
 * first event (with and without a token), HealthCheck with a valid,
 * a wrong and no token, and the statuses of calls that fail on the broker.
 */
import assert from 'node:assert/strict';
import type { ServiceError } from '@grpc/grpc-js';
import { call, metadata, rawClient } from '../support/gateway.js';
import { openSse } from '../support/sse.js';
import type { ServeProcess } from './helpers.js';

export const OUTPUT_TOKEN = 'output-token-0123456789abcdef';

async function http(
  port: number,
  path: string,
  headers: Record<string, string> = {},
  method = 'GET',
): Promise<string> {
  const res = await fetch(`http://127.0.0.1:${port}${path}`, {
    method,
    headers: { connection: 'close', ...headers },
  });
  return `${res.status} ${await res.text()}`;
}

async function rpc(port: number, method: string, request: object, token?: string): Promise<string> {
  const client = rawClient(port);
  try {
    const res = await call(client, method, request, metadata(token));
    return `OK ${JSON.stringify(res)}`;
  } catch (err) {
    const e = err as ServiceError;
    return `${e.code} ${e.details}`;
  } finally {
    client.close();
  }
}

/** The status page's first event (its whole snapshot), or the status and body when it refuses. */
async function statusEvent(port: number, headers: Record<string, string> = {}): Promise<string> {
  const events = await openSse(`http://127.0.0.1:${port}/status/events`, headers);
  try {
    if (events.status !== 200) return `${events.status} ${events.body}`;
    return `200 ${JSON.stringify(await events.next())}`;
  } finally {
    events.close();
  }
}

/** The network-visible outputs of a running gateway (start it with AUTH_TOKENS=OUTPUT_TOKEN). */
export async function networkOutputs(p: ServeProcess, topic = 'secrets-t'): Promise<Record<string, string>> {
  const keys = { endpoint: 'e', access_key_id: 'AK', access_key_secret: 'client-secret', instance_id: 'i' };
  return {
    ready: await http(p.metricsPort, '/ready'),
    health: await http(p.metricsPort, '/health'),
    metricsJson: await http(p.metricsPort, '/metrics'),
    metricsText: await http(p.metricsPort, '/metrics', { accept: 'text/plain' }),
    notFound: await http(p.metricsPort, '/nope'),
    post: await http(p.metricsPort, '/metrics', {}, 'POST'),
    statusNoToken: await http(p.metricsPort, '/status'),
    statusWrongToken: await http(p.metricsPort, '/status?token=wrong-token-0123456789abcdef'),
    statusPage: await http(p.metricsPort, '/status', { authorization: `Bearer ${OUTPUT_TOKEN}` }),
    statusEventsNoToken: await statusEvent(p.metricsPort),
    statusEvents: await statusEvent(p.metricsPort, { authorization: `Bearer ${OUTPUT_TOKEN}` }),
    healthCheckToken: await rpc(p.grpcPort, 'HealthCheck', {}, OUTPUT_TOKEN),
    healthCheckNoToken: await rpc(p.grpcPort, 'HealthCheck', {}),
    healthCheckWrongToken: await rpc(p.grpcPort, 'HealthCheck', {}, 'wrong-token-0123456789abcdef'),
    createProducer: await rpc(p.grpcPort, 'CreateProducer', { ...keys, topic }, OUTPUT_TOKEN),
    createConsumer: await rpc(
      p.grpcPort,
      'CreateConsumer',
      { ...keys, topic, group_id: 'secrets-g' },
      OUTPUT_TOKEN,
    ),
    sendUnknown: await rpc(
      p.grpcPort,
      'SendMessage',
      { producer_id: 'nope', message_body: 'x' },
      OUTPUT_TOKEN,
    ),
    noToken: await rpc(p.grpcPort, 'CreateProducer', { ...keys, topic }),
  };
}

/** Every form of the secret a scrubber could miss: as is, URL-encoded, JSON-escaped. */
function forms(secret: string): string[] {
  return [...new Set([secret, encodeURIComponent(secret), JSON.stringify(secret).slice(1, -1)])];
}

export function assertNoSecret(outputs: Record<string, string>, secret: string): void {
  for (const [where, text] of Object.entries(outputs)) {
    for (const f of forms(secret)) {
      const i = text.indexOf(f);
      assert.equal(
        i,
        -1,
        `the secret appears in ${where}: ...${text.slice(Math.max(0, i - 120), i + f.length + 40)}...`,
      );
    }
  }
}

const ADDRESS = /\b\d{1,3}(\.\d{1,3}){3}\b|localhost|:\d{2,5}\b/;

/** /ready and a HealthCheck without a valid token must not reveal where the broker is. */
export function assertNoAddress(outputs: Record<string, string>): void {
  for (const where of [
    'ready',
    'healthCheckNoToken',
    'healthCheckWrongToken',
    'statusNoToken',
    'statusWrongToken',
    'statusEventsNoToken',
  ]) {
    const text = outputs[where] ?? '';
    assert.doesNotMatch(text, ADDRESS, `${where} reveals a broker address: ${text}`);
  }
}
