/**
 * HealthCheck (gRPC) and /ready (HTTP) are open to callers without a token, and each asks the
 * broker for its health: on Kafka a forced metadata request, on NATS a round trip, on RocketMQ a
 * route query. A flood of them must not turn into an unbounded number of concurrent broker
 * requests: the probes run at most MAX_CONCURRENT at a time (or are shared), while the owner's
 * own calls keep working.
 *
 * The broker's probe is observed through the embedded broker's prototype (the gateway cannot be
 * given a Broker instance; see ack-ordering.test.ts): it counts concurrent probes and takes 50 ms,
 * as a remote broker's round trip would.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import type { HealthStatus } from '../../src/brokers/broker.js';
import { MemoryBroker } from '../../src/brokers/memory/index.js';
import { call, receive } from '../support/gateway.js';
import { assertResourcesSettle, countResources, type ResourceCounts } from '../support/leaks.js';
import {
  ALICE,
  assertRoundTrip,
  createConsumer,
  createProducer,
  md,
  type Stream,
  startTenantGateway,
  type TenantGateway,
} from './helpers.js';

const MAX_CONCURRENT = 8;
const FLOOD = 200;

describe('a flood of unauthenticated health probes does not fan out to the broker without bound', () => {
  let gw: TenantGateway;
  let baseline: ResourceCounts;
  const proto = MemoryBroker.prototype as unknown as {
    health: (this: MemoryBroker) => Promise<HealthStatus>;
  };
  const original = proto.health;
  let active = 0;
  let peak = 0;
  let probes = 0;
  let producer = '';
  let consumer = '';
  let stream: Stream;

  const aliceUnaffected = (): Promise<void> =>
    assertRoundTrip(
      gw.alice,
      ALICE,
      { producer: producer, consumer: consumer, stream: stream },
      { health: false },
    );

  before(async () => {
    baseline = countResources();
    proto.health = async function (this: MemoryBroker): Promise<HealthStatus> {
      probes++;
      active++;
      peak = Math.max(peak, active);
      try {
        await new Promise((r) => setTimeout(r, 50));
        return await original.call(this);
      } finally {
        active--;
      }
    };
    gw = await startTenantGateway({ maxConcurrent: MAX_CONCURRENT });
    const topic = `flood-${randomUUID()}`;
    producer = await createProducer(gw.alice, ALICE, topic);
    consumer = await createConsumer(gw.alice, ALICE, topic, `flood-${randomUUID()}`);
    stream = receive(gw.alice, consumer, md(ALICE));
  });
  after(async () => {
    proto.health = original;
    stream?.end();
    await gw?.close();
  });

  test(`${FLOOD} concurrent HealthCheck calls without a token run at most MAX_CONCURRENT=${MAX_CONCURRENT} broker probes at once`, async () => {
    peak = 0;
    probes = 0;
    const results = await Promise.allSettled(
      Array.from({ length: FLOOD }, () => call<{ healthy: boolean }>(gw.bob, 'HealthCheck', {})),
    );
    const answered = results.filter((r) => r.status === 'fulfilled').length;
    console.log(
      `  ${FLOOD} HealthCheck calls: ${answered} answered, ${probes} broker probes, ${peak} at once`,
    );
    await aliceUnaffected();
    assert.ok(
      peak <= MAX_CONCURRENT,
      `${peak} broker health probes ran at once for ${FLOOD} unauthenticated calls`,
    );
  });

  test(`${FLOOD} concurrent GET /ready run at most MAX_CONCURRENT=${MAX_CONCURRENT} broker probes at once`, async () => {
    peak = 0;
    probes = 0;
    const ready = `http://127.0.0.1:${gw.gateway.metricsPort}/ready`;
    const results = await Promise.allSettled(
      Array.from({ length: FLOOD }, () => fetch(ready).then((r) => r.text())),
    );
    const answered = results.filter((r) => r.status === 'fulfilled').length;
    console.log(`  ${FLOOD} GET /ready: ${answered} answered, ${probes} broker probes, ${peak} at once`);
    await aliceUnaffected();
    assert.ok(
      peak <= MAX_CONCURRENT,
      `${peak} broker health probes ran at once for ${FLOOD} unauthenticated requests`,
    );
  });

  test('closing the gateway returns every handle to the baseline', async () => {
    proto.health = original;
    stream.end();
    await gw.close();
    await assertResourcesSettle(baseline);
  });
});
