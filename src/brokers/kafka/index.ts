/** The Kafka adapter: opened by `kafka://` URLs through src/brokers/index.ts. */
export { openKafkaBroker } from './broker.js';
export { HEADER_BORN_AT, HEADER_BUSINESS_KEY, HEADER_TAG } from './codec.js';
export { parseKafkaUrl } from './config.js';
export { murmur2, partitionForKey } from './murmur2.js';
