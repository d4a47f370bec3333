import { randomUUID } from 'node:crypto';
import { after, before, test } from 'node:test';
import { runGatewayNoLoss, runSigtermRedelivery } from '../../support/gateway-scenarios.js';
import { type PrivateNatsServer, startNatsServer } from '../../support/nats-server.js';

// Each test owns its nats-server (ephemeral port, temp store) so it can restart it freely.
let server: PrivateNatsServer;
before(async () => {
  server = await startNatsServer();
});
after(async () => server.close());

test('NATS: 10,000 messages through the gateway survive a nats-server restart and two consumer disconnects', async () => {
  await runGatewayNoLoss({
    brokerUrl: server.url,
    topic: `gwnoloss${randomUUID().slice(0, 8)}`,
    group: `gwnoloss${randomUUID().slice(0, 8)}`,
    restartBroker: () => server.restart(),
    // JetStream keeps per-key order only within one consumer member; after a disconnect the
    // redelivered messages come back after newer ones, so first-delivery order is not checked.
    checkOrder: false,
    timeoutScale: 2,
  });
});

test('NATS over the streams: 10,000 messages published on Publish and consumed on Subscribe (in-stream acks) survive a nats-server restart and two consumer disconnects', async () => {
  await runGatewayNoLoss({
    brokerUrl: server.url,
    topic: `gwnolossst${randomUUID().slice(0, 8)}`,
    group: `gwnolossst${randomUUID().slice(0, 8)}`,
    restartBroker: () => server.restart(),
    // As above: JetStream redelivers after newer messages once a member disconnects.
    checkOrder: false,
    timeoutScale: 2,
    via: 'streams',
  });
});

test('NATS: SIGTERM of a gateway with unacked deliveries; a consumer of the next gateway receives them', async () => {
  await runSigtermRedelivery({
    brokerUrl: server.url,
    topic: `gwsigterm${randomUUID().slice(0, 8)}`,
    group: `gwsigterm${randomUUID().slice(0, 8)}`,
    timeoutScale: 2,
  });
});
