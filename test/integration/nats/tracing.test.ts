/** Tracing through the gateway on NATS JetStream: the trace context travels in the message headers. */
import { after, test } from 'node:test';
import { natsUrl } from '../../support/brokers.js';
import { uniqueName } from '../../support/bus-scenarios.js';
import { runGatewayTraceScenario, startTestTracing } from '../../support/tracing.js';

const tracing = startTestTracing();
after(() => tracing.shutdown());

test('one trace from an application span to the consumer handler through the gateway on NATS', async () => {
  await runGatewayTraceScenario(tracing, {
    gateway: { brokers: [{ url: natsUrl(), endpoints: [] }] },
    system: 'nats',
    topic: uniqueName('trace-'),
    group: uniqueName('trace-g-'),
    timeoutMs: 30_000,
  });
});
