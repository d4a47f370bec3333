import { test } from 'node:test';
import { openBroker } from '../../../src/brokers/index.js';
import { runEventBusScenario } from '../../support/bus-scenarios.js';
import { makeGroup, rocketMqUrl, TopicPool } from './helpers.js';

test('the event bus on RocketMQ (FIFO topic and group): per-key order, retries, dead-letter, clean close', async () => {
  const pool = new TopicPool({ normal: 1, fifo: 1, delay: 0, transaction: 0 });
  const topic = await pool.topic('fifo');
  const deadLetterTopic = await pool.topic('normal');
  await runEventBusScenario({
    open: () => openBroker(rocketMqUrl().toString()),
    topic,
    deadLetterTopic,
    group: await makeGroup(true),
    dlqGroup: await makeGroup(false),
  });
});
