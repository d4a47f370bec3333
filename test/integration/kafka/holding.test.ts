/** Delayed messages on Kafka through the holding topics (delay tiers). */
import { randomUUID } from 'node:crypto';
import { describe } from 'node:test';
import { runHoldingSuite } from '../../support/holding.js';
import { openTestKafka } from './env.js';

describe('kafka holding', { timeout: 300_000 }, () => {
  runHoldingSuite('kafka', {
    // Holding topics of this file's own: no mover starts in other test files' brokers.
    open: () => openTestKafka('partitions=3&holdingTopics=__mqgate_test_holding'),
    topic: () => `hold-${randomUUID()}`,
    scale: 3,
    // A Kafka consumer may wait out one fetch long-poll (500 ms) before it sees a new record.
    orderToleranceMs: 500,
    maxLatenessMs: 1_000,
  });
});
