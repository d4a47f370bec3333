import { test } from 'node:test';
import { openBroker } from '../../../src/brokers/index.js';
import { restartRocketMqProxy } from '../../support/brokers.js';
import { runGatewayNoLoss } from '../../support/gateway-scenarios.js';
import { eventually } from '../../support/leaks.js';
import { makeGroup, rocketMqUrl, TopicPool } from './helpers.js';

async function restartProxy(): Promise<void> {
  // The restart helper's own round-trip probe can give up while the proxy is in fact coming up;
  // what matters here is that the proxy serves again, judged by a fresh adapter's health.
  await restartRocketMqProxy().catch(() => {});
  await eventually(
    async () => {
      const b = await openBroker(rocketMqUrl().toString()).catch(() => undefined);
      if (!b) return false;
      const ok = (await b.health()).ok;
      await b.close();
      return ok;
    },
    'the proxy to serve again',
    180_000,
  );
}

test('RocketMQ: 10,000 FIFO messages through the gateway survive a proxy restart and two consumer disconnects (no loss)', async () => {
  const topic = await new TopicPool({ normal: 0, fifo: 1, delay: 0, transaction: 0 }).topic('fifo');
  await runGatewayNoLoss({
    brokerUrl: rocketMqUrl().toString(),
    topic,
    group: await makeGroup(true),
    restartBroker: restartProxy,
    keyCount: 16,
    timeoutScale: 3,
  });
});
