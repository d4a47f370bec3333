import { test } from 'node:test';
import { openBroker } from '../../../src/brokers/index.js';
import { kafkaBootstrap } from '../../support/brokers.js';
import { runEventBusScenario, uniqueName } from '../../support/bus-scenarios.js';

test('the event bus on Kafka: per-key order through retries, dead-letter, clean close', async () => {
  const topic = uniqueName('bus-');
  await runEventBusScenario({
    open: () => openBroker(`kafka://${kafkaBootstrap()}?partitions=3`),
    topic,
    deadLetterTopic: `${topic}.DLQ`,
    group: uniqueName('bus-g-'),
    dlqGroup: uniqueName('bus-dlq-'),
    timeoutScale: 3,
  });
});
