/**
 * What integration tests import to reach the real brokers `npm run brokers -- up` started
 * (scripts/test.ts runs it before any non-unit test file): addresses from .brokers/state.json,
 * the fixed RocketMQ topics and groups, and helpers to create more or to restart a broker.
 *
 * Pre-created on RocketMQ (the proxy never creates topics for gRPC clients), i in 0..19:
 *   topics  mqgate-normal-i (NORMAL), mqgate-fifo-i (FIFO), mqgate-delay-i (DELAY), mqgate-tx-i (TRANSACTION)
 *   groups  mqgate-group-i (concurrent), mqgate-fifo-group-i (orderly, for FIFO topics)
 * Tests running at the same time must not share an index; `createRocketMqTopic` makes a fresh
 * one (one JVM start, several seconds). The proxy caches "topic not found" for about 20 s, so
 * create a topic before any client asks for it.
 */
import { readFileSync } from 'node:fs';
import { type BrokersState, statePath } from '../../scripts/brokers/common.js';
import { type JavaCommand, JDK17_OPENS, javaArgs } from '../../scripts/brokers/java.js';
import { kafkaRoundTrip, startKafka, stopKafka } from '../../scripts/brokers/kafka.js';
import { withBrokerLock } from '../../scripts/brokers/lock.js';
import { livePid } from '../../scripts/brokers/processes.js';
import {
  createGroups,
  createTopics,
  ROCKETMQ_PRESET_COUNT,
  type RocketMqTopicType,
  rocketMqRoundTrip,
  startProxy,
  stopProxy,
  TOPIC_PREFIX,
} from '../../scripts/brokers/rocketmq.js';

export type { BrokersState, RocketMqTopicType };

let cached: BrokersState | undefined;

/** The running brokers' addresses; throws saying how to start them when state.json is missing. */
export function brokers(): BrokersState {
  if (cached) return cached;
  let text: string;
  try {
    text = readFileSync(statePath, 'utf8');
  } catch {
    throw new Error(
      `no broker state at ${statePath}: start the brokers with "npm run brokers -- up" (npm test does it for you)`,
    );
  }
  cached = JSON.parse(text) as BrokersState;
  return cached;
}

export const kafkaBootstrap = (): string => brokers().kafka.bootstrap;
export const rocketMqEndpoint = (): string => brokers().rocketmq.endpoint;
export const rocketMqNamesrv = (): string => brokers().rocketmq.namesrv;
export const natsUrl = (): string => brokers().nats.url;

export const ROCKETMQ_PRESETS = ROCKETMQ_PRESET_COUNT;

function checkIndex(i: number): void {
  if (!Number.isInteger(i) || i < 0 || i >= ROCKETMQ_PRESET_COUNT) {
    throw new RangeError(`preset index ${i} is outside 0..${ROCKETMQ_PRESET_COUNT - 1}`);
  }
}

/** Name of the i-th pre-created topic of `type`. */
export function presetRocketMqTopic(type: RocketMqTopicType, i: number): string {
  checkIndex(i);
  return `${TOPIC_PREFIX[type]}${i}`;
}

/** Name of the i-th pre-created consumer group (orderly when `fifo`). */
export function presetRocketMqGroup(i: number, fifo = false): string {
  checkIndex(i);
  return fifo ? `mqgate-fifo-group-${i}` : `mqgate-group-${i}`;
}

/**
 * A `java` argument list with the classpath of the cached Kafka or RocketMQ jars (and, for
 * RocketMQ, the JDK 17 opens it needs), for tests that run a broker tool themselves.
 */
export function javaCommandLine(
  kind: 'kafka' | 'rocketmq',
  mainClass: string,
  args: string[] = [],
  options: Pick<JavaCommand, 'heap' | 'props' | 'jvmOptions'> = {},
): string[] {
  const state = brokers();
  const jvmOptions = [...(kind === 'rocketmq' ? JDK17_OPENS : []), ...(options.jvmOptions ?? [])];
  return [
    'java',
    ...javaArgs({
      libDir: kind === 'kafka' ? state.kafka.libDir : state.rocketmq.libDir,
      mainClass,
      args,
      heap: options.heap ?? '128m',
      jvmOptions,
      ...(options.props ? { props: options.props } : {}),
    }),
  ];
}

/**
 * Creates a RocketMQ topic of `type` (no-op when it exists with that type) and waits until the
 * name server routes it. mqadmin's exit code is not trusted: the broker's table is checked.
 */
export async function createRocketMqTopic(topic: string, type: RocketMqTopicType): Promise<void> {
  await createTopics([{ topic, type }]);
}

/** Several topics in one mqadmin run (one JVM start for all of them). */
export async function createRocketMqTopics(
  topics: Array<{ topic: string; type: RocketMqTopicType }>,
): Promise<void> {
  await createTopics(topics);
}

export interface RocketMqGroupOptions {
  /** Orderly consumption: required to get FIFO delivery from a FIFO topic. */
  fifo?: boolean;
  /** Deliveries before a message goes to the group's dead-letter queue (broker default 16). */
  maxRetries?: number;
}

export async function createRocketMqGroup(group: string, options: RocketMqGroupOptions = {}): Promise<void> {
  await createGroups([
    {
      group,
      fifo: options.fifo ?? false,
      ...(options.maxRetries !== undefined ? { maxRetries: options.maxRetries } : {}),
    },
  ]);
}

export interface RestartOptions {
  /** SIGKILL instead of SIGTERM: a crash rather than a clean shutdown. */
  hard?: boolean;
  /** Extra wait between stop and start, for tests that act while the broker is down. */
  downtimeMs?: number;
  /** Called while the broker is down (after stop, before start). */
  whileDown?: () => Promise<void> | void;
}

async function downtime(options: RestartOptions): Promise<void> {
  if (options.whileDown) await options.whileDown();
  if (options.downtimeMs) await new Promise((r) => setTimeout(r, options.downtimeMs));
}

/**
 * Stops and starts the Kafka process only (same data dir, same port) and waits until it
 * serves a produce/consume round trip again. Other tests using Kafka at the same time will
 * see the outage: run restart tests on their own.
 */
export async function restartKafka(options: RestartOptions = {}): Promise<void> {
  await withBrokerLock('restartKafka', async () => {
    await stopKafka(options.hard ?? false);
    await downtime(options);
    await startKafka(180_000);
  });
}

/**
 * Stops and starts the RocketMQ proxy+broker process only (the name server keeps running),
 * then waits for it to register and to serve a round trip again.
 */
export async function restartRocketMqProxy(options: RestartOptions = {}): Promise<void> {
  await withBrokerLock('restartRocketMqProxy', async () => {
    await stopProxy(options.hard ?? false);
    await downtime(options);
    await startProxy(180_000);
    await rocketMqRoundTrip(90_000);
  });
}

/** True when our process for that broker is alive (by pid file and command line). */
export function brokerProcessAlive(name: 'kafka' | 'namesrv' | 'proxy'): boolean {
  return livePid(name) !== undefined;
}

/** Round trips with the raw client libraries, for tests that want to assert a broker is back. */
export const brokerRoundTrip = {
  kafka: (timeoutMs = 60_000): Promise<void> => kafkaRoundTrip(timeoutMs),
  rocketmq: (timeoutMs = 60_000): Promise<void> => rocketMqRoundTrip(timeoutMs),
};
