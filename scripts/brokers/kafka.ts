/**
 * Kafka 3.9.1 as one KRaft node (broker and controller in one JVM) on loopback.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Admin, Consumer, Producer, stringDeserializers, stringSerializers } from '@platformatic/kafka';
import { withTimeout } from '../../src/core/lifecycle.js';
import {
  BrokerScriptError,
  brokersDir,
  ensureDir,
  HOST,
  jarDirs,
  KAFKA_VERSION,
  portFreed,
  ports,
} from './common.js';
import { type JavaCommand, runJava, TOOL_JVM_OPTIONS } from './java.js';
import { fetchJars } from './maven.js';
import { livePid, startDetached, stopProcess, waitForLog } from './processes.js';

export const kafkaDirs = {
  root: join(brokersDir, 'kafka'),
  data: join(brokersDir, 'kafka', 'data'),
  logs: join(brokersDir, 'kafka', 'logs'),
  config: join(brokersDir, 'kafka', 'config'),
} as const;

const serverProperties = join(kafkaDirs.config, 'server.properties');
const log4jProperties = join(kafkaDirs.config, 'log4j.properties');
export const kafkaServerLog = join(kafkaDirs.logs, 'server.log');
/** JVM stdout/stderr: crashes before log4j starts land here. */
export const kafkaOutLog = join(kafkaDirs.logs, 'kafka.out');

export const kafkaBootstrap = `${HOST}:${ports.kafka}`;
/** A topic only the readiness check writes to. */
export const KAFKA_READY_TOPIC = 'mqgate-ready';

export function fetchKafkaJars(): Promise<boolean> {
  return fetchJars(jarDirs.kafka, [
    { groupId: 'org.apache.kafka', artifactId: 'kafka_2.13', version: KAFKA_VERSION },
    // The server leaves the slf4j binding to the user; without one it logs nothing at all.
    { groupId: 'org.slf4j', artifactId: 'slf4j-reload4j', version: '1.7.36' },
    // Kafka's own command-line tools (ConsoleConsumer moved here in 3.x): the interop tests read
    // what the gateway published with them.
    { groupId: 'org.apache.kafka', artifactId: 'kafka-tools', version: KAFKA_VERSION },
  ]);
}

function writeConfigs(): void {
  ensureDir(kafkaDirs.config);
  ensureDir(kafkaDirs.data);
  ensureDir(kafkaDirs.logs);
  writeFileSync(
    serverProperties,
    [
      'process.roles=broker,controller',
      'node.id=1',
      `controller.quorum.voters=1@${HOST}:${ports.kafkaController}`,
      `listeners=PLAINTEXT://${HOST}:${ports.kafka},CONTROLLER://${HOST}:${ports.kafkaController}`,
      // 127.0.0.1, not localhost: Node resolves localhost to ::1 first and Kafka listens on IPv4.
      `advertised.listeners=PLAINTEXT://${HOST}:${ports.kafka}`,
      'controller.listener.names=CONTROLLER',
      'inter.broker.listener.name=PLAINTEXT',
      'listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT',
      `log.dirs=${kafkaDirs.data}`,
      'num.partitions=1',
      'num.network.threads=2',
      'num.io.threads=4',
      // One partition for the offsets topic makes the first group join fast on a small machine.
      'offsets.topic.replication.factor=1',
      'offsets.topic.num.partitions=1',
      'transaction.state.log.replication.factor=1',
      'transaction.state.log.min.isr=1',
      'transaction.state.log.num.partitions=1',
      'group.initial.rebalance.delay.ms=0',
      'log.retention.hours=24',
      'log.segment.bytes=67108864',
      // The cleaner's 128 MiB default buffer would take a third of the small heap.
      'log.cleaner.dedupe.buffer.size=16777216',
      '',
    ].join('\n'),
  );
  writeFileSync(
    log4jProperties,
    [
      'log4j.rootLogger=INFO, file',
      'log4j.appender.file=org.apache.log4j.RollingFileAppender',
      `log4j.appender.file.File=${kafkaServerLog}`,
      'log4j.appender.file.MaxFileSize=20MB',
      'log4j.appender.file.MaxBackupIndex=2',
      'log4j.appender.file.layout=org.apache.log4j.PatternLayout',
      'log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n',
      'log4j.logger.state.change.logger=WARN',
      'log4j.logger.kafka.request.logger=WARN',
      'log4j.logger.org.apache.kafka.clients=WARN',
      '',
    ].join('\n'),
  );
}

function kafkaJava(mainClass: string, args: string[], heap: string): JavaCommand {
  return {
    libDir: jarDirs.kafka,
    mainClass,
    args,
    heap,
    jvmOptions: [
      '-XX:+UseG1GC',
      '-XX:MaxGCPauseMillis=20',
      '-XX:InitiatingHeapOccupancyPercent=35',
      '-XX:+ExplicitGCInvokesConcurrent',
      '-Djava.awt.headless=true',
    ],
    props: { 'log4j.configuration': `file:${log4jProperties}`, 'kafka.logs.dir': kafkaDirs.logs },
  };
}

/** Kafka's Uuid as its StorageTool prints it: 16 random bytes, URL-safe base64, no padding. */
function clusterId(): string {
  for (;;) {
    const id = randomBytes(16).toString('base64url');
    // Kafka reserves ids whose text starts with '-' (they read as command-line flags).
    if (!id.startsWith('-')) return id;
  }
}

/** A fresh log dir must be formatted once before the first start. */
async function formatStorage(): Promise<boolean> {
  if (existsSync(join(kafkaDirs.data, 'meta.properties'))) return false;
  const cmd = kafkaJava(
    'kafka.tools.StorageTool',
    ['format', '-t', clusterId(), '-c', serverProperties, '--ignore-formatted'],
    '256m',
  );
  cmd.jvmOptions = TOOL_JVM_OPTIONS;
  const run = await runJava(cmd, 120_000);
  if (run.code !== 0 || !existsSync(join(kafkaDirs.data, 'meta.properties'))) {
    throw new BrokerScriptError(
      `formatting Kafka storage in ${kafkaDirs.data} failed (exit ${run.code}):\n${run.output}`,
    );
  }
  return true;
}

export interface StartResult {
  pid: number;
  /** False when a live process was already there. */
  started: boolean;
}

/** Starts Kafka unless our process is already alive; waits for its log line and a round trip. */
export async function startKafka(timeoutMs = 120_000): Promise<StartResult> {
  const deadline = Date.now() + timeoutMs;
  const existing = livePid('kafka');
  if (existing !== undefined) {
    await kafkaRoundTrip(Math.max(5_000, deadline - Date.now()));
    return { pid: existing, started: false };
  }
  // A Kafka we just stopped may hold its port for a moment after its pid is gone.
  if (!(await portFreed(ports.kafka, 15_000))) {
    throw new BrokerScriptError(
      `port ${ports.kafka} is taken by a process this script did not start; stop it or set MQGATE_KAFKA_PORT`,
    );
  }
  writeConfigs();
  await formatStorage();
  const cmd = { ...kafkaJava('kafka.Kafka', [serverProperties], '384m'), marker: 'kafka' as const };
  const started = startDetached(cmd, kafkaOutLog, kafkaServerLog, process.env);
  await waitForLog({
    name: 'kafka',
    pid: started.pid,
    file: kafkaServerLog,
    offset: started.logOffset,
    pattern: /Kafka Server started/,
    timeoutMs: Math.max(1_000, deadline - Date.now()),
  });
  await kafkaRoundTrip(Math.max(5_000, deadline - Date.now()));
  return { pid: started.pid, started: true };
}

export function stopKafka(hard = false): Promise<number | undefined> {
  return stopProcess('kafka', 30_000, hard);
}

async function ensureTopic(admin: Admin, topic: string): Promise<void> {
  const existing = await admin.listTopics();
  if (existing.includes(topic)) return;
  try {
    await admin.createTopics({ topics: [topic], partitions: 1, replicas: 1 });
  } catch (err) {
    // Two `up` runs racing may both try; "already exists" is what we wanted anyway.
    if (!/already exists/i.test(String((err as Error).message) + String(JSON.stringify(err)))) throw err;
  }
}

/**
 * Proves Kafka serves clients: produce one message to the readiness topic and read it back with
 * a fresh consumer group. Bounded by `timeoutMs`.
 */
export async function kafkaRoundTrip(timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const clientOptions = { bootstrapBrokers: [kafkaBootstrap], retries: 10, retryDelay: 500 };
  const admin = new Admin({ ...clientOptions, clientId: 'mqgate-ready-admin' });
  const producer = new Producer({
    ...clientOptions,
    clientId: 'mqgate-ready-producer',
    serializers: stringSerializers,
  });
  const consumer = new Consumer({
    ...clientOptions,
    clientId: 'mqgate-ready-consumer',
    groupId: `mqgate-ready-${randomUUID()}`,
    deserializers: stringDeserializers,
  });
  let failure: unknown;
  try {
    await withTimeout(
      ensureTopic(admin, KAFKA_READY_TOPIC),
      Math.max(1, deadline - Date.now()),
      'Kafka create topic',
    );
    const value = `ready-${randomUUID()}`;
    await withTimeout(
      producer.send({ messages: [{ topic: KAFKA_READY_TOPIC, value }] }),
      Math.max(1, deadline - Date.now()),
      'Kafka produce',
    );
    const stream = await withTimeout(
      consumer.consume({
        topics: [KAFKA_READY_TOPIC],
        mode: 'earliest',
        autocommit: false,
        maxWaitTime: 500,
      }),
      Math.max(1, deadline - Date.now()),
      'Kafka consumer join',
    );
    const found = (async (): Promise<void> => {
      for await (const message of stream) {
        if (message.value === value) return;
      }
      throw new BrokerScriptError('Kafka consumer stream ended before the readiness message arrived');
    })();
    try {
      await withTimeout(found, Math.max(1, deadline - Date.now()), 'Kafka consume');
    } finally {
      await stream.close();
    }
  } catch (err) {
    failure = err;
  }
  // Every client is closed whatever happened; the first error (work before close) wins.
  const results = await Promise.allSettled([consumer.close(true), producer.close(), admin.close()]);
  if (failure !== undefined) throw failure;
  const failed = results.find((r) => r.status === 'rejected');
  if (failed?.status === 'rejected') throw failed.reason;
}
