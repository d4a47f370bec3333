import { randomUUID } from 'node:crypto';
import { test } from 'node:test';
import { kafkaBootstrap, restartKafka } from '../../support/brokers.js';
import { runGatewayNoLoss } from '../../support/gateway-scenarios.js';

test('Kafka: 10,000 keyed messages through the gateway survive a Kafka restart and two consumer disconnects', async () => {
  await runGatewayNoLoss({
    brokerUrl: `kafka://${kafkaBootstrap()}?partitions=3`,
    topic: `gw-noloss-${randomUUID()}`,
    group: `gw-noloss-${randomUUID()}`,
    restartBroker: () => restartKafka(),
    checkOrder: true,
    timeoutScale: 2,
  });
});
