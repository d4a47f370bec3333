/** Delayed and transactional messages on NATS JetStream through the holding stream. */
import { randomUUID } from 'node:crypto';
import { after, before, describe } from 'node:test';
import { openNatsBroker } from '../../../src/brokers/nats/index.js';
import { runHoldingSuite } from '../../support/holding.js';
import { type PrivateNatsServer, startNatsServer } from '../../support/nats-server.js';

describe('nats holding', { timeout: 180_000 }, () => {
  let server: PrivateNatsServer | undefined;
  before(async () => {
    server = await startNatsServer();
  });
  after(async () => {
    await server?.close();
  });
  runHoldingSuite('nats', {
    open: () => {
      if (!server) throw new Error('nats-server did not start');
      return openNatsBroker(new URL(server.url), {});
    },
    topic: () => `hold-${randomUUID()}`,
    maxLatenessMs: 1_000,
  });
});
