import { randomUUID } from 'node:crypto';
import { test } from 'node:test';
import { kafkaBootstrap, restartKafka } from '../../support/brokers.js';
import { runGatewayNoLoss } from '../../support/gateway-scenarios.js';

test('Kafka over the streams: 10,000 keyed messages published on Publish and consumed on Subscribe (in-stream acks) survive a Kafka restart and two consumer disconnects', async () => {
  await runGatewayNoLoss({
    brokerUrl: `kafka://${kafkaBootstrap()}?partitions=3`,
    topic: `gw-noloss-st-${randomUUID()}`,
    group: `gw-noloss-st-${randomUUID()}`,
    restartBroker: () => restartKafka(),
    checkOrder: true,
    timeoutScale: 2,
    via: 'streams',
  });
});
