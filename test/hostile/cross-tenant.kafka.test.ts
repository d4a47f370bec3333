/**
 * The cross-tenant cases of cross-tenant.test.ts against a gateway whose broker is the shared
 * test Kafka (topics auto-created with 3 partitions; unique topic and group names per run).
 */
import { describe } from 'node:test';
import { kafkaBootstrap } from '../support/brokers.js';
import { crossTenantSuite } from './cross-tenant-suite.js';

describe("bob (another valid token) using alice's ids on Kafka gets a missing id's NOT_FOUND and alice is unaffected", () => {
  crossTenantSuite({
    brokers: [{ url: `kafka://${kafkaBootstrap()}?autoCreateTopics=true&partitions=3`, endpoints: [] }],
    scale: 3,
  });
});
