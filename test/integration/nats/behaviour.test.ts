import { after, before } from 'node:test';
import { openNatsBroker } from '../../../src/brokers/nats/index.js';
import { runBrokerBehaviourSuite } from '../../support/behaviour.js';
import { type PrivateNatsServer, startNatsServer } from '../../support/nats-server.js';

let server: PrivateNatsServer | undefined;

before(async () => {
  server = await startNatsServer();
});

after(async () => {
  await server?.close();
});

runBrokerBehaviourSuite(
  'nats',
  () => {
    if (!server) throw new Error('nats-server did not start');
    return openNatsBroker(new URL(server.url), {});
  },
  { timeoutScale: 2 },
);
