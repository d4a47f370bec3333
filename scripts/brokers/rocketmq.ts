/**
 * RocketMQ 5.3: a name server and a proxy in "local" mode (proxy and broker in one JVM), on
 * loopback, plus the topics and consumer groups the tests rely on (the proxy never creates
 * topics for gRPC clients).
 */
import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Producer, SimpleConsumer } from 'rocketmq-client-nodejs';
import { withTimeout } from '../../src/core/lifecycle.js';
import {
  BrokerScriptError,
  brokersDir,
  ensureDir,
  HOST,
  jarDirs,
  portAnswers,
  portFreed,
  ports,
  ROCKETMQ_VERSION,
} from './common.js';
import { type JavaCommand, JDK17_OPENS, runJava, TOOL_JVM_OPTIONS } from './java.js';
import { fetchJars } from './maven.js';
import { livePid, startDetached, stopProcess, waitForLog } from './processes.js';
import { clusterRegistered, topicRouted } from './remoting.js';

export const ROCKETMQ_CLUSTER = 'MqgateCluster';
export const ROCKETMQ_BROKER_NAME = 'mqgate-broker-a';

export const rocketDirs = {
  root: join(brokersDir, 'rocketmq'),
  /** ROCKETMQ_HOME: both programs refuse to start without one; nothing is read from it. */
  home: join(brokersDir, 'rocketmq', 'home'),
  conf: join(brokersDir, 'rocketmq', 'conf'),
  store: join(brokersDir, 'rocketmq', 'store'),
  /** JVM stdout/stderr files; RocketMQ's own logs go to logs/rocketmqlogs (user.home is the root). */
  logs: join(brokersDir, 'rocketmq', 'logs'),
} as const;

export const rocketLogs = {
  namesrvOut: join(rocketDirs.logs, 'namesrv.out'),
  proxyOut: join(rocketDirs.logs, 'proxy.out'),
  namesrv: join(rocketDirs.logs, 'rocketmqlogs', 'namesrv.log'),
  proxy: join(rocketDirs.logs, 'rocketmqlogs', 'proxy.log'),
  broker: join(rocketDirs.logs, 'rocketmqlogs', 'broker.log'),
  tools: join(rocketDirs.logs, 'rocketmqlogs', 'tools.log'),
} as const;

const files = {
  namesrv: join(rocketDirs.conf, 'namesrv.conf'),
  broker: join(rocketDirs.conf, 'broker.conf'),
  proxy: join(rocketDirs.conf, 'rmq-proxy.json'),
  topicsJson: join(rocketDirs.store, 'config', 'topics.json'),
  groupsJson: join(rocketDirs.store, 'config', 'subscriptionGroup.json'),
};

export const namesrvAddress = `${HOST}:${ports.namesrv}`;
export const proxyEndpoint = `${HOST}:${ports.proxyGrpc}`;

export type RocketMqTopicType = 'NORMAL' | 'FIFO' | 'DELAY' | 'TRANSACTION' | 'MIXED';

/** How many of each pre-created topic and group there are (suffixes 0 .. COUNT - 1). */
export const ROCKETMQ_PRESET_COUNT = 20;
export const TOPIC_PREFIX: Readonly<Record<RocketMqTopicType, string>> = {
  NORMAL: 'mqgate-normal-',
  FIFO: 'mqgate-fifo-',
  DELAY: 'mqgate-delay-',
  TRANSACTION: 'mqgate-tx-',
  MIXED: 'mqgate-mixed-',
};
export const ROCKETMQ_READY_TOPIC = 'mqgate-ready';
export const ROCKETMQ_READY_GROUP = 'mqgate-ready-group';

export interface TopicSpec {
  topic: string;
  type: RocketMqTopicType;
}
export interface GroupSpec {
  group: string;
  fifo: boolean;
  /** Deliveries before the message goes to the dead-letter queue (broker default 16). */
  maxRetries?: number;
}

export function presetTopics(): TopicSpec[] {
  const out: TopicSpec[] = [{ topic: ROCKETMQ_READY_TOPIC, type: 'NORMAL' }];
  for (const type of Object.keys(TOPIC_PREFIX) as RocketMqTopicType[]) {
    for (let i = 0; i < ROCKETMQ_PRESET_COUNT; i++) out.push({ topic: `${TOPIC_PREFIX[type]}${i}`, type });
  }
  return out;
}

export function presetGroups(): GroupSpec[] {
  const out: GroupSpec[] = [{ group: ROCKETMQ_READY_GROUP, fifo: false }];
  for (let i = 0; i < ROCKETMQ_PRESET_COUNT; i++) out.push({ group: `mqgate-group-${i}`, fifo: false });
  for (let i = 0; i < ROCKETMQ_PRESET_COUNT; i++) out.push({ group: `mqgate-fifo-group-${i}`, fifo: true });
  return out;
}

export function fetchRocketMqJars(): Promise<boolean> {
  const artifact = (artifactId: string) => ({
    groupId: 'org.apache.rocketmq',
    artifactId,
    version: ROCKETMQ_VERSION,
  });
  return fetchJars(jarDirs.rocketmq, [
    artifact('rocketmq-namesrv'),
    artifact('rocketmq-proxy'),
    artifact('rocketmq-tools'),
  ]);
}

function writeConfigs(): void {
  for (const dir of Object.values(rocketDirs)) ensureDir(dir);
  writeFileSync(files.namesrv, [`listenPort=${ports.namesrv}`, `bindAddress=${HOST}`, ''].join('\n'));
  writeFileSync(
    files.broker,
    [
      `brokerClusterName=${ROCKETMQ_CLUSTER}`,
      `brokerName=${ROCKETMQ_BROKER_NAME}`,
      'brokerId=0',
      'brokerRole=ASYNC_MASTER',
      'flushDiskType=ASYNC_FLUSH',
      `namesrvAddr=${namesrvAddress}`,
      // Without it the broker registers a non-loopback address that clients then dial.
      `brokerIP1=${HOST}`,
      `brokerIP2=${HOST}`,
      `bindAddress=${HOST}`,
      `listenPort=${ports.brokerListen}`,
      `haListenPort=${ports.brokerListen + 1}`,
      `storePathRootDir=${rocketDirs.store}`,
      `storePathCommitLog=${join(rocketDirs.store, 'commitlog')}`,
      // Spelled so in 5.x (a misspelled key is silently ignored): 64 MiB instead of 1 GiB files.
      'mappedFileSizeCommitLog=67108864',
      'mappedFileSizeTimerLog=16777216',
      'maxHashSlotNum=100000',
      'maxIndexNum=400000',
      // A busy 2-core machine otherwise trips the broker's flow control ("system busy").
      'waitTimeMillsInSendQueue=3000',
      'osPageCacheBusyTimeOutMills=5000',
      // Orphaned half messages are checked every 10 s instead of 30 s, so tests of the check-back wait less.
      'transactionCheckInterval=10000',
      'autoCreateTopicEnable=false',
      // MIXED topics take normal, FIFO, delayed and transactional messages, as every RocketMQ 4
      // topic did and as clients written for it expect; RocketMQ 5 creates them only with this.
      'enableMixedMessageType=true',
      'autoCreateSubscriptionGroup=true',
      '',
    ].join('\n'),
  );
  writeFileSync(
    files.proxy,
    `${JSON.stringify(
      {
        rocketMQClusterName: ROCKETMQ_CLUSTER,
        namesrvAddr: namesrvAddress,
        localServeAddr: HOST,
        proxyMode: 'local',
        grpcServerPort: ports.proxyGrpc,
        // The default 8080 is the gateway's metrics port.
        remotingListenPort: ports.proxyRemoting,
        // The default waits up to 30 s for gRPC calls on SIGTERM, which makes `down` slow.
        grpcShutdownTimeSeconds: 3,
      },
      null,
      2,
    )}\n`,
  );
}

function rocketEnv(): NodeJS.ProcessEnv {
  return { ...process.env, ROCKETMQ_HOME: rocketDirs.home };
}

function rocketJava(
  mainClass: string,
  args: string[],
  opts: { heap: string; directMemory?: string; logback: string },
): JavaCommand {
  return {
    libDir: jarDirs.rocketmq,
    mainClass,
    args,
    heap: opts.heap,
    ...(opts.directMemory ? { directMemory: opts.directMemory } : {}),
    jvmOptions: [
      '-XX:+UseG1GC',
      '-XX:G1HeapRegionSize=16m',
      '-XX:-OmitStackTraceInFastThrow',
      ...JDK17_OPENS,
    ],
    props: {
      'rocketmq.home.dir': rocketDirs.home,
      // Logs, kvConfig and anything else RocketMQ puts under the home dir stay in .brokers.
      'user.home': rocketDirs.root,
      // A classpath resource name: the configs ship inside the module jars.
      'rmq.logback.configurationFile': opts.logback,
    },
  };
}

function namesrvCommand(): JavaCommand & { marker: 'namesrv' } {
  return {
    ...rocketJava('org.apache.rocketmq.namesrv.NamesrvStartup', ['-c', files.namesrv], {
      heap: '256m',
      logback: 'rmq.namesrv.logback.xml',
    }),
    marker: 'namesrv',
  };
}

function proxyCommand(): JavaCommand & { marker: 'proxy' } {
  return {
    ...rocketJava(
      'org.apache.rocketmq.proxy.ProxyStartup',
      ['-pm', 'local', '-bc', files.broker, '-pc', files.proxy],
      {
        heap: '768m',
        directMemory: '512m',
        logback: 'rmq.proxy.logback.xml',
      },
    ),
    marker: 'proxy',
  };
}

export interface StartResult {
  pid: number;
  started: boolean;
}

async function refuseForeignPort(port: number, env: string): Promise<void> {
  // A process we just stopped may hold its port for a moment after its pid is gone.
  if (!(await portFreed(port, 15_000))) {
    throw new BrokerScriptError(
      `port ${port} is taken by a process this script did not start; stop it or set ${env}`,
    );
  }
}

export async function startNamesrv(timeoutMs = 60_000): Promise<StartResult> {
  const existing = livePid('namesrv');
  if (existing !== undefined && (await portAnswers(ports.namesrv))) return { pid: existing, started: false };
  if (existing === undefined) await refuseForeignPort(ports.namesrv, 'MQGATE_ROCKETMQ_NAMESRV_PORT');
  else await stopProcess('namesrv');
  writeConfigs();
  const started = startDetached(namesrvCommand(), rocketLogs.namesrvOut, rocketLogs.namesrvOut, rocketEnv());
  await waitForLog({
    name: 'namesrv',
    pid: started.pid,
    file: rocketLogs.namesrvOut,
    offset: started.logOffset,
    pattern: /The Name Server boot success/,
    timeoutMs,
  });
  return { pid: started.pid, started: true };
}

/** Starts proxy+broker unless ours is alive; waits for its log line (not for a round trip). */
export async function startProxy(timeoutMs = 120_000): Promise<StartResult> {
  const deadline = Date.now() + timeoutMs;
  const registered = (): Promise<void> =>
    waitUntil(
      () => clusterRegistered(namesrvAddress, ROCKETMQ_CLUSTER, ROCKETMQ_BROKER_NAME),
      `broker ${ROCKETMQ_BROKER_NAME} registered with the name server`,
      Math.max(1_000, deadline - Date.now()),
    );
  const existing = livePid('proxy');
  if (existing !== undefined) {
    // A name server restarted under a running broker learns about it on the next heartbeat (30 s).
    await registered();
    return { pid: existing, started: false };
  }
  await refuseForeignPort(ports.proxyGrpc, 'MQGATE_ROCKETMQ_PROXY_PORT');
  await refuseForeignPort(ports.brokerListen, 'MQGATE_ROCKETMQ_BROKER_PORT');
  await refuseForeignPort(ports.proxyRemoting, 'MQGATE_ROCKETMQ_REMOTING_PORT');
  writeConfigs();
  const started = startDetached(proxyCommand(), rocketLogs.proxyOut, rocketLogs.proxyOut, rocketEnv());
  await waitForLog({
    name: 'proxy',
    pid: started.pid,
    file: rocketLogs.proxyOut,
    offset: started.logOffset,
    pattern: /rocketmq-proxy startup successfully/,
    timeoutMs,
  });
  // The broker first registers with the name server about 10 s after it starts; until then
  // mqadmin cannot find the cluster and clients get no routes.
  await registered();
  return { pid: started.pid, started: true };
}

export function stopProxy(hard = false): Promise<number | undefined> {
  return stopProcess('proxy', 30_000, hard);
}

export function stopNamesrv(): Promise<number | undefined> {
  return stopProcess('namesrv');
}

// ---- Topics and groups ---------------------------------------------------------------------

interface BrokerTopicsFile {
  topicConfigTable?: Record<string, { attributes?: Record<string, string> }>;
}
interface BrokerGroupsFile {
  subscriptionGroupTable?: Record<string, { consumeMessageOrderly?: boolean; retryMaxTimes?: number }>;
}

function readJson<T>(path: string): T | undefined {
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as T;
  } catch {
    return undefined;
  }
}

/** The topics in `wanted` the broker's persisted config lacks (or holds with another type). */
export function missingTopics(wanted: TopicSpec[]): TopicSpec[] {
  const table = readJson<BrokerTopicsFile>(files.topicsJson)?.topicConfigTable ?? {};
  return wanted.filter((t) => table[t.topic]?.attributes?.['message.type'] !== t.type);
}

export function missingGroups(wanted: GroupSpec[]): GroupSpec[] {
  const table = readJson<BrokerGroupsFile>(files.groupsJson)?.subscriptionGroupTable ?? {};
  return wanted.filter((g) => {
    const have = table[g.group];
    if (!have || (have.consumeMessageOrderly ?? false) !== g.fifo) return true;
    return g.maxRetries !== undefined && have.retryMaxTimes !== g.maxRetries;
  });
}

function mqadmin(args: string[], timeoutMs = 90_000) {
  const cmd = rocketJava('org.apache.rocketmq.tools.command.MQAdminStartup', args, {
    heap: '128m',
    logback: 'rmq.tools.logback.xml',
  });
  cmd.jvmOptions = [...TOOL_JVM_OPTIONS, ...JDK17_OPENS];
  // The batch commands print one "submit batch ... success" line per broker; there is one broker.
  return runJava(cmd, timeoutMs, rocketEnv(), /success[^\n]*\n/);
}

/** Polls `check` (errors count as "not yet") until it holds or the deadline passes. */
export async function waitUntil(
  check: () => Promise<boolean>,
  what: string,
  timeoutMs: number,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    try {
      if (await check()) return;
      lastError = undefined;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() > deadline) {
      const why = lastError instanceof Error ? ` (last error: ${lastError.message})` : '';
      throw new BrokerScriptError(`timed out after ${timeoutMs} ms waiting for ${what}${why}`);
    }
    await new Promise((r) => setTimeout(r, 250));
  }
}

async function waitForPersisted(check: () => unknown[], what: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const missing = check();
    if (missing.length === 0) return;
    if (Date.now() > deadline) {
      throw new BrokerScriptError(
        `RocketMQ did not persist ${what}: still missing ${JSON.stringify(missing.slice(0, 5))}`,
      );
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

/**
 * Creates (or retypes) topics through mqadmin's batch command: one JVM for any number of
 * topics. mqadmin exits 0 even when the broker refused, so success is read back from the
 * broker's persisted topic table.
 */
export async function createTopics(topics: TopicSpec[]): Promise<void> {
  const todo = missingTopics(topics);
  if (todo.length === 0) return;
  const listFile = join(rocketDirs.conf, `topics-${randomUUID()}.json`);
  writeFileSync(
    listFile,
    JSON.stringify(
      todo.map((t) => ({
        topicName: t.topic,
        readQueueNums: 4,
        writeQueueNums: 4,
        perm: 6,
        topicFilterType: 'SINGLE_TAG',
        topicSysFlag: 0,
        order: false,
        attributes: { '+message.type': t.type },
      })),
    ),
  );
  const run = await mqadmin([
    'updateTopicList',
    '-n',
    namesrvAddress,
    '-c',
    ROCKETMQ_CLUSTER,
    '-f',
    listFile,
  ]).finally(() => rmSync(listFile, { force: true }));
  if (run.code !== 0 || !/success/i.test(run.output)) {
    throw new BrokerScriptError(`mqadmin updateTopicList failed (exit ${run.code}):\n${run.output}`);
  }
  await waitForPersisted(() => missingTopics(todo), 'the new topics', 30_000);
  await waitUntil(
    async () => {
      for (const t of todo) if (!(await topicRouted(namesrvAddress, t.topic))) return false;
      return true;
    },
    'routes for the new topics on the name server',
    30_000,
  );
}

export async function createGroups(groups: GroupSpec[]): Promise<void> {
  const todo = missingGroups(groups);
  if (todo.length === 0) return;
  const listFile = join(rocketDirs.conf, `groups-${randomUUID()}.json`);
  writeFileSync(
    listFile,
    JSON.stringify(
      todo.map((g) => ({
        groupName: g.group,
        consumeEnable: true,
        consumeFromMinEnable: true,
        consumeBroadcastEnable: true,
        consumeMessageOrderly: g.fifo,
        retryQueueNums: 1,
        retryMaxTimes: g.maxRetries ?? 16,
      })),
    ),
  );
  const run = await mqadmin([
    'updateSubGroupList',
    '-n',
    namesrvAddress,
    '-c',
    ROCKETMQ_CLUSTER,
    '-f',
    listFile,
  ]).finally(() => rmSync(listFile, { force: true }));
  if (run.code !== 0 || !/success/i.test(run.output)) {
    throw new BrokerScriptError(`mqadmin updateSubGroupList failed (exit ${run.code}):\n${run.output}`);
  }
  await waitForPersisted(() => missingGroups(todo), 'the new consumer groups', 30_000);
}

// ---- Readiness -----------------------------------------------------------------------------

/** rocketmq-client-nodejs logs to ~/logs/rocketmq by default; keep only errors, in memory. */
export class CollectingLogger {
  readonly errors: string[] = [];
  info(): void {}
  warn(): void {}
  error(...args: unknown[]): void {
    if (this.errors.length < 20) this.errors.push(args.map(String).join(' '));
  }
}

type RocketClient = Producer | SimpleConsumer;

/**
 * Shuts a rocketmq-client-nodejs client down so that it really lets go, working around two
 * bugs in 1.0.8 (see node_modules/rocketmq-client-nodejs/src/client):
 * - BaseClient.shutdown() awaits notifyClientTermination first; when the proxy is unreachable
 *   that rejects and shutdown() stops before releasing telemetry sessions and gRPC channels.
 * - TelemetrySession re-opens its stream 1 s after an error with an uncleared setTimeout; one
 *   pending at shutdown opens a stream on a brand-new channel, and the retry loop never ends.
 */
export async function shutdownRocketClient(client: RocketClient): Promise<void> {
  const rpc = client.getRpcClientManager();
  const notify = rpc.notifyClientTermination.bind(rpc);
  rpc.notifyClientTermination = (async (...args: Parameters<typeof notify>) => {
    try {
      return await notify(...args);
    } catch {
      // The proxy is gone; there is nobody to tell.
      return undefined;
    }
  }) as typeof notify;
  // An instance property shadows BaseClient.createTelemetryStream: late renewals get an inert
  // stream that never emits, instead of a new connection.
  Object.defineProperty(client, 'createTelemetryStream', {
    value: () => Object.assign(new EventEmitter(), { write(): void {}, end(): void {} }),
  });
  await client.shutdown();
}

/**
 * Proves the proxy serves gRPC clients: publish one message to the readiness topic and
 * receive (and ack) it. Each client's startup and each call is bounded.
 */
export async function rocketMqRoundTrip(timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const left = (): number => Math.max(1, deadline - Date.now());
  const logger = new CollectingLogger();
  const producer = new Producer({
    endpoints: proxyEndpoint,
    namespace: '',
    logger,
    topics: [ROCKETMQ_READY_TOPIC],
  });
  const consumer = new SimpleConsumer({
    endpoints: proxyEndpoint,
    namespace: '',
    logger,
    consumerGroup: ROCKETMQ_READY_GROUP,
    subscriptions: new Map([[ROCKETMQ_READY_TOPIC, '*']]),
    // The proxy rejects long polls shorter than 5 s (grpcClientConsumerMinLongPollingTimeoutMillis).
    awaitDuration: 10_000,
  });
  try {
    await withTimeout(producer.startup(), left(), 'RocketMQ producer startup');
    await withTimeout(consumer.startup(), left(), 'RocketMQ consumer startup');
    const body = `ready-${randomUUID()}`;
    await withTimeout(
      producer.send({ topic: ROCKETMQ_READY_TOPIC, tag: 'ready', body: Buffer.from(body) }),
      left(),
      'RocketMQ send',
    );
    for (;;) {
      const messages = await withTimeout(consumer.receive(16, 10_000), left(), 'RocketMQ receive');
      let found = false;
      for (const m of messages) {
        await withTimeout(consumer.ack(m), left(), 'RocketMQ ack');
        if (m.body.toString() === body) found = true;
      }
      if (found) return;
      if (Date.now() > deadline) throw new BrokerScriptError('RocketMQ readiness message did not come back');
    }
  } catch (err) {
    const detail = logger.errors.length > 0 ? `\nclient errors:\n${logger.errors.join('\n')}` : '';
    throw new BrokerScriptError(
      `RocketMQ round trip through ${proxyEndpoint} failed: ${(err as Error).message}${detail}`,
      {
        cause: err,
      },
    );
  } finally {
    await Promise.allSettled([shutdownRocketClient(consumer), shutdownRocketClient(producer)]);
  }
}
