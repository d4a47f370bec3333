/** Tracing through the gateway on RocketMQ 5: the trace context travels in the message properties. */
import { after, test } from 'node:test';
import { runGatewayTraceScenario, startTestTracing } from '../../support/tracing.js';
import { makeGroup, rocketMqUrl, TopicPool } from './helpers.js';

const tracing = startTestTracing();
after(() => tracing.shutdown());

test('one trace from an application span to the consumer handler through the gateway on RocketMQ', async () => {
  const topic = await new TopicPool({ normal: 1, fifo: 0, delay: 0, transaction: 0 }).topic('normal');
  await runGatewayTraceScenario(tracing, {
    gateway: { brokers: [{ url: rocketMqUrl().toString(), endpoints: [] }] },
    system: 'rocketmq',
    topic,
    // A fresh group on a fresh topic starts at its first message.
    group: await makeGroup(false),
    start: undefined,
    timeoutMs: 60_000,
  });
});
