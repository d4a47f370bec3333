import { after, before, test } from 'node:test';
import { runGatewayHolding } from '../../support/gateway-holding.js';
import { type PrivateNatsServer, startNatsServer } from '../../support/nats-server.js';

let server: PrivateNatsServer;
before(async () => {
  server = await startNatsServer();
});
after(async () => server.close());

test('NATS through the gateway, one topic: normal, ordered, delayed (time and level) messages, transactions committed, rolled back, and undecided across a gateway restart', async () => {
  await runGatewayHolding({ brokerUrl: server.url, timeoutScale: 1 });
});
