import { test } from 'node:test';
import { runGatewayHolding } from '../../support/gateway-holding.js';
import { makeFifoGroups, rocketMqUrl, TopicPool } from './helpers.js';

test('RocketMQ through the gateway, one MIXED topic: normal, ordered, delayed (time and level) messages, transactions committed and rolled back', async () => {
  const topic = await new TopicPool({ normal: 0, fifo: 0, delay: 0, transaction: 0, mixed: 1 }).topic(
    'mixed',
  );
  // An orderly group, so one sharding key's messages come in order.
  const [group] = (await makeFifoGroups(1)) as [string];
  await runGatewayHolding({
    brokerUrl: rocketMqUrl().toString(),
    topic,
    group,
    // RocketMQ takes a new group's start from its broker-side setting.
    start: '',
    // An undecided RocketMQ transaction is decided by the broker's check-back, which a new gateway
    // cannot answer from the old one's memory (see the README's limits).
    undecidedAcrossRestart: false,
    timeoutScale: 3,
  });
});
