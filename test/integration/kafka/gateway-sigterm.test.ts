import { randomUUID } from 'node:crypto';
import { test } from 'node:test';
import { kafkaBootstrap } from '../../support/brokers.js';
import { runSigtermRedelivery } from '../../support/gateway-scenarios.js';

test('Kafka: SIGTERM of a gateway with unacked deliveries; a consumer of the next gateway receives them', async () => {
  await runSigtermRedelivery({
    brokerUrl: `kafka://${kafkaBootstrap()}?partitions=3`,
    topic: `gw-sigterm-${randomUUID()}`,
    group: `gw-sigterm-${randomUUID()}`,
    timeoutScale: 2,
  });
});
