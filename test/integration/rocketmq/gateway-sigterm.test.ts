import { test } from 'node:test';
import { runSigtermRedelivery } from '../../support/gateway-scenarios.js';
import { makeGroup, rocketMqUrl, TopicPool } from './helpers.js';

test('RocketMQ: SIGTERM of a gateway with unacked deliveries; a consumer of the next gateway receives them', async () => {
  const topic = await new TopicPool({ normal: 1, fifo: 0, delay: 0, transaction: 0 }).topic('normal');
  await runSigtermRedelivery({
    brokerUrl: rocketMqUrl().toString(),
    topic,
    group: await makeGroup(false),
    // The proxy's minimum invisible time is 10 s and released messages come back after its
    // revive interval (about 10 s): allow for both.
    timeoutScale: 3,
  });
});
