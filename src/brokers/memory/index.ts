import type { Broker, BrokerOpenOptions } from '../broker.js';
import { MemoryBroker } from './broker.js';
import { parseMemoryUrl } from './config.js';

export type { MemoryBrokerOptions } from './broker.js';
export { createMemoryBroker, MemoryBroker } from './broker.js';
export type { MemoryBrokerSettings } from './config.js';
export { parseMemoryUrl } from './config.js';
export type { MemoryGroupStats, MemoryTopicStats } from './topic.js';
export { DLQ_PROPERTIES, deadLetterTopic } from './topic.js';

/**
 * Opens the embedded broker:
 * `memory://?maxTopicBytes=64MiB&maxBytes=256MiB&maxAttempts=16&ackTimeout=30s&groupRetention=10m`.
 * Every call makes an independent broker, even with the same URL.
 */
export async function openMemoryBroker(url: URL, options: BrokerOpenOptions = {}): Promise<Broker> {
  const settings = parseMemoryUrl(url);
  return new MemoryBroker({
    ...options,
    maxTopicBytes: settings.maxTopicBytes,
    maxBytes: settings.maxBytes,
    groupRetentionMs: settings.groupRetentionMs,
    maxMessageBytes: settings.maxMessageBytes,
    maxAttempts: settings.maxAttempts,
    // The URL's ackTimeout is specific to this broker, so it wins over the generic open option.
    ackTimeoutMs: settings.ackTimeoutMs ?? options.ackTimeoutMs,
    url: redact(url),
  });
}

function redact(url: URL): string {
  const copy = new URL(url.href);
  if (copy.password) copy.password = '***';
  return copy.href;
}
