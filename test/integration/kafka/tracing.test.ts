/**
 * Tracing through the gateway on the real Kafka: an application span's trace continues through the
 * SDK's and the gateway's send spans, the Kafka record's headers, the gateway's receive span and
 * the consumer's process span, with the handler's span inside it.
 */
import { after, test } from 'node:test';
import { kafkaBootstrap } from '../../support/brokers.js';
import { uniqueName } from '../../support/bus-scenarios.js';
import { runGatewayTraceScenario, startTestTracing } from '../../support/tracing.js';

const tracing = startTestTracing();
after(() => tracing.shutdown());

test('one trace from an application span to the consumer handler through the gateway on Kafka', async () => {
  await runGatewayTraceScenario(tracing, {
    gateway: { brokers: [{ url: `kafka://${kafkaBootstrap()}?partitions=1`, endpoints: [] }] },
    system: 'kafka',
    topic: uniqueName('trace-'),
    group: uniqueName('trace-g-'),
    timeoutMs: 60_000,
  });
});
