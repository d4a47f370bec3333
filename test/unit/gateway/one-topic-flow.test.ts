import { test } from 'node:test';
import { runGatewayHolding } from '../../support/gateway-holding.js';

test('the embedded broker through the gateway, one topic: normal, ordered, delayed (time and level) messages, transactions committed and rolled back', async () => {
  await runGatewayHolding({
    brokerUrl: 'memory://',
    // The embedded broker keeps nothing across a restart (see the README's limits).
    undecidedAcrossRestart: false,
  });
});
