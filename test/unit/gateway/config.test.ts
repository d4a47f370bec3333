import assert from 'node:assert/strict';
import { test } from 'node:test';
import { type GatewayConfig, loadConfig, SETTINGS } from '../../../src/gateway/config.js';

test('every configuration key has a setting with a default, so none is ever undefined', () => {
  const config = loadConfig({});
  const keys = new Set(SETTINGS.map((s) => s.key));
  for (const [key, value] of Object.entries(config)) {
    assert.ok(keys.has(key as keyof GatewayConfig), `${key} is documented in SETTINGS`);
    assert.notEqual(value, undefined, `${key} has a value`);
  }
  // The interface's keys must all be present: a key missing from SETTINGS would be undefined.
  const expected: Array<keyof GatewayConfig> = [
    'grpcHost',
    'grpcPort',
    'metricsHost',
    'metricsPort',
    'brokers',
    'messageBufferSize',
    'ackTimeoutMs',
    'producerCleanupTimeoutMs',
    'producerHandleTtlMs',
    'consumerCleanupTimeoutMs',
    'transactionTimeoutMs',
    'maxConcurrent',
    'maxMessageSize',
    'maxProperties',
    'maxBatchSize',
    'maxBatchBytes',
    'maxProducersPerCaller',
    'maxConsumersPerCaller',
    'maxTransactionsPerCaller',
    'maxProducerHandles',
    'maxSessions',
    'maxStreams',
    'maxPendingTransactions',
    'maxConnections',
    'maxHttpConnections',
    'connectionIdleTimeoutMs',
    'headersTimeoutMs',
    'streamBufferBytes',
    'streamStallTimeoutMs',
    'publishWindow',
    'publishWindowBytes',
    'maxDelayMs',
    'maxNackDelayMs',
    'maxTransactionImmunityMs',
    'authTokens',
    'authFile',
    'tlsCert',
    'tlsKey',
    'insecure',
    'shutdownTimeoutMs',
    'logLevel',
  ];
  assert.deepEqual(Object.keys(config).sort(), [...expected].sort());
});

test('environment values are parsed, flags win, and durations use Go duration spelling (500ms, 2m, 1m30s)', () => {
  const c = loadConfig(
    {
      ACK_TIMEOUT: '500ms',
      PRODUCER_CLEANUP_TIMEOUT: '2m',
      MAX_MESSAGE_SIZE: '512KiB',
      BROKERS: 'memory://; nats://a:1,b:2 endpoints=x,y',
    },
    { ackTimeoutMs: '1m30s' },
  );
  assert.equal(c.ackTimeoutMs, 90_000);
  assert.equal(c.producerCleanupTimeoutMs, 120_000);
  assert.equal(c.maxMessageSize, 512 * 1024);
  assert.deepEqual(c.brokers, [
    { url: 'memory://', endpoints: [] },
    { url: 'nats://a:1,b:2', endpoints: ['x', 'y'] },
  ]);
});

test('invalid values name the variable and what it accepts', () => {
  const cases: Array<[Record<string, string>, RegExp]> = [
    [{ GRPC_PORT: '70000' }, /GRPC_PORT: it accepts an integer from 0 to 65535/],
    [{ ACK_TIMEOUT: '30' }, /ACK_TIMEOUT: it accepts a duration such as 500ms, 30s, 2m, 1h/],
    [{ ACK_TIMEOUT: '0s' }, /ACK_TIMEOUT: it must be more than zero/],
    [{ MESSAGE_BUFFER_SIZE: '0' }, /MESSAGE_BUFFER_SIZE: it accepts a positive integer/],
    [{ MAX_MESSAGE_SIZE: '4GB' }, /MAX_MESSAGE_SIZE/],
    [{ INSECURE: 'maybe' }, /INSECURE: it accepts true or false/],
    [{ LOG_LEVEL: 'loud' }, /LOG_LEVEL/],
    [{ BROKERS: 'redis://x' }, /BROKERS: unknown scheme redis:/],
    [{ BROKERS: 'memory:// nonsense' }, /unexpected "nonsense"/],
    [{ AUTH_TOKENS: 'short' }, /shorter than 16 characters/],
    [{ TLS_CERT: '/x.pem' }, /TLS_CERT and TLS_KEY must be given together/],
  ];
  for (const [env, pattern] of cases) assert.throws(() => loadConfig(env), pattern, JSON.stringify(env));
});
