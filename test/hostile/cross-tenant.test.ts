/**
 * Cross-tenant attempts on every id-taking RPC, on the embedded broker (memory://).
 * The Kafka run of the same cases is cross-tenant.kafka.test.ts.
 */
import { describe } from 'node:test';
import { crossTenantSuite } from './cross-tenant-suite.js';

describe("bob (another valid token) using alice's ids on memory:// gets a missing id's NOT_FOUND and alice is unaffected", () => {
  crossTenantSuite();
});
