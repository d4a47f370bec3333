/**
 * Fresh RocketMQ topics and groups for the rocketmq integration tests. Creating one costs an
 * mqadmin JVM run, so they are made in batches: the first request of a kind creates a pool.
 * Fresh topics matter: a new group on a topic with history starts at its first message.
 */
import { randomUUID } from 'node:crypto';
import { createGroups } from '../../../scripts/brokers/rocketmq.js';
import type { Broker, BrokerLog, BrokerOpenOptions } from '../../../src/brokers/broker.js';
import { openRocketMqBroker } from '../../../src/brokers/rocketmq/index.js';
import {
  brokers,
  createRocketMqTopics,
  type RocketMqTopicType,
  rocketMqEndpoint,
} from '../../support/brokers.js';

export type Kind = 'normal' | 'fifo' | 'delay' | 'transaction' | 'mixed';

const TYPE: Record<Kind, RocketMqTopicType> = {
  normal: 'NORMAL',
  fifo: 'FIFO',
  delay: 'DELAY',
  transaction: 'TRANSACTION',
  mixed: 'MIXED',
};

export function rocketMqUrl(query = ''): URL {
  const cluster = brokers().rocketmq.cluster;
  return new URL(`rocketmq://${rocketMqEndpoint()}?cluster=${cluster}${query ? `&${query}` : ''}`);
}

export function openTestBroker(options: BrokerOpenOptions = {}, query = ''): Promise<Broker> {
  return openRocketMqBroker(rocketMqUrl(query), options);
}

export class TopicPool {
  readonly #free = new Map<Kind, string[]>();
  readonly #sizes: Record<Kind, number>;

  constructor(sizes: Partial<Record<Kind, number>>) {
    this.#sizes = { normal: 2, fifo: 1, delay: 1, transaction: 1, mixed: 0, ...sizes };
  }

  async topic(kind: Kind): Promise<string> {
    let free = this.#free.get(kind);
    if (!free || free.length === 0) {
      // Refill every kind at once: one JVM run for the whole batch.
      const batch: Array<{ topic: string; type: RocketMqTopicType }> = [];
      for (const k of Object.keys(TYPE) as Kind[]) {
        const have = this.#free.get(k) ?? [];
        const want = k === kind ? Math.max(1, this.#sizes[k]) : have.length === 0 ? this.#sizes[k] : 0;
        for (let i = 0; i < want; i++) {
          const topic = `mqgate-it-${k}-${randomUUID().slice(0, 13)}`;
          batch.push({ topic, type: TYPE[k] });
          have.push(topic);
        }
        this.#free.set(k, have);
      }
      await createRocketMqTopics(batch);
      free = this.#free.get(kind) ?? [];
    }
    const topic = free.shift();
    if (!topic) throw new Error(`no ${kind} topic`);
    return topic;
  }
}

/** A consumer group name; FIFO groups must be created as orderly, plain ones are auto-created. */
export async function makeGroup(fifo: boolean): Promise<string> {
  const group = `mqgate-it-${fifo ? 'fifo-' : ''}g-${randomUUID().slice(0, 13)}`;
  if (fifo) await createGroups([{ group, fifo: true }]);
  return group;
}

export async function makeFifoGroups(n: number): Promise<string[]> {
  const groups = Array.from({ length: n }, () => `mqgate-it-fifo-g-${randomUUID().slice(0, 13)}`);
  await createGroups(groups.map((group) => ({ group, fifo: true })));
  return groups;
}

/** Collects the adapter's diagnostics for assertions (and prints warnings when asked). */
export class MemoryLog implements BrokerLog {
  readonly lines: Array<{ level: string; msg: string; obj: object }> = [];
  constructor(readonly print = false) {}
  #add(level: string, obj: object, msg?: string): void {
    if (this.lines.length > 10_000) this.lines.splice(0, 5_000);
    this.lines.push({ level, obj, msg: msg ?? '' });
    if (this.print && level !== 'debug')
      console.log(`[${level}] ${msg ?? ''} ${JSON.stringify(obj).slice(0, 300)}`);
  }
  debug(obj: object, msg?: string): void {
    this.#add('debug', obj, msg);
  }
  info(obj: object, msg?: string): void {
    this.#add('info', obj, msg);
  }
  warn(obj: object, msg?: string): void {
    this.#add('warn', obj, msg);
  }
  error(obj: object, msg?: string): void {
    this.#add('error', obj, msg);
  }
}
