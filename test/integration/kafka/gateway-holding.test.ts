import { test } from 'node:test';
import { runGatewayHolding } from '../../support/gateway-holding.js';
import { kafkaUrl } from './env.js';

test('Kafka through the gateway, one topic: normal, ordered, delayed (time and level) messages, transactions committed, rolled back, and undecided across a gateway restart', async () => {
  // Holding topics of this file's own: no mover starts in other test files' brokers.
  await runGatewayHolding({
    brokerUrl: kafkaUrl('partitions=3&holdingTopics=__mqgate_test_gwholding').toString(),
    timeoutScale: 3,
  });
});
