/** The NATS JetStream adapter: opened by `nats://` URLs through src/brokers/index.ts. */
export { NatsBroker, openNatsBroker } from './broker.js';
export { DEDUP_ID_PROPERTY } from './message.js';
