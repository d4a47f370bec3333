import { after, before, test } from 'node:test';
import { openBroker } from '../../../src/brokers/index.js';
import { runEventBusScenario, uniqueName } from '../../support/bus-scenarios.js';
import { type PrivateNatsServer, startNatsServer } from '../../support/nats-server.js';

let server: PrivateNatsServer;
before(async () => {
  server = await startNatsServer();
});
after(async () => server.close());

test('the event bus on NATS JetStream: per-key order through retries, dead-letter, clean close', async () => {
  const topic = uniqueName('bus');
  await runEventBusScenario({
    open: () => openBroker(server.url),
    topic,
    deadLetterTopic: `${topic}-dlq`,
    group: uniqueName('busg'),
    dlqGroup: uniqueName('busdlq'),
    timeoutScale: 2,
  });
});
