/** The shared test Kafka (`npm run brokers -- up`), as test/support/brokers.ts describes it. */
import type { Broker, BrokerOpenOptions } from '../../../src/brokers/broker.js';
import { openKafkaBroker } from '../../../src/brokers/kafka/index.js';
import { brokers } from '../../support/brokers.js';

export function kafkaState(): { bootstrap: string; libDir: string } {
  const { bootstrap, libDir } = brokers().kafka;
  return { bootstrap, libDir };
}

export function kafkaUrl(query = 'partitions=3'): URL {
  return new URL(`kafka://${kafkaState().bootstrap}${query ? `?${query}` : ''}`);
}

export function openTestKafka(query?: string, options: BrokerOpenOptions = {}): Promise<Broker> {
  return openKafkaBroker(kafkaUrl(query), options);
}
