/**
 * Real brokers for the integration tests, started by the project itself:
 *
 *   npm run brokers -- up        collect jars (once), start Kafka and RocketMQ, check NATS
 *   npm run brokers -- down      stop exactly the processes `up` started
 *   npm run brokers -- status    what runs, on which ports
 *   npm run brokers -- logs [kafka|rocketmq]
 *
 * Jars are cached in ${MQGATE_CACHE:-~/.cache/mqgate}/jars; data, logs, pid files and
 * state.json (the addresses tests read) live in <repo>/.brokers.
 */
import { rmSync, writeFileSync } from 'node:fs';
import {
  BrokerScriptError,
  type BrokersState,
  brokersDir,
  ensureDir,
  jarDirs,
  KAFKA_VERSION,
  type ProcessName,
  portAnswers,
  ports,
  ROCKETMQ_VERSION,
  say,
  seconds,
  statePath,
} from './brokers/common.js';
import {
  fetchKafkaJars,
  KAFKA_READY_TOPIC,
  kafkaBootstrap,
  kafkaDirs,
  kafkaOutLog,
  kafkaServerLog,
  startKafka,
} from './brokers/kafka.js';
import { withBrokerLock } from './brokers/lock.js';
import { dirSizeMb, jarsComplete } from './brokers/maven.js';
import { ensureNats, natsUrl } from './brokers/nats.js';
import { livePid, stopProcess, tail } from './brokers/processes.js';
import {
  createGroups,
  createTopics,
  fetchRocketMqJars,
  namesrvAddress,
  presetGroups,
  presetTopics,
  proxyEndpoint,
  ROCKETMQ_BROKER_NAME,
  ROCKETMQ_CLUSTER,
  ROCKETMQ_PRESET_COUNT,
  ROCKETMQ_READY_GROUP,
  ROCKETMQ_READY_TOPIC,
  rocketDirs,
  rocketLogs,
  rocketMqRoundTrip,
  startNamesrv,
  startProxy,
} from './brokers/rocketmq.js';

function state(): BrokersState {
  return {
    kafka: {
      version: KAFKA_VERSION,
      bootstrap: kafkaBootstrap,
      controllerPort: ports.kafkaController,
      libDir: jarDirs.kafka,
      dataDir: kafkaDirs.data,
      logDir: kafkaDirs.logs,
      readyTopic: KAFKA_READY_TOPIC,
    },
    rocketmq: {
      version: ROCKETMQ_VERSION,
      endpoint: proxyEndpoint,
      namesrv: namesrvAddress,
      cluster: ROCKETMQ_CLUSTER,
      brokerName: ROCKETMQ_BROKER_NAME,
      brokerPort: ports.brokerListen,
      remotingPort: ports.proxyRemoting,
      libDir: jarDirs.rocketmq,
      storeDir: rocketDirs.store,
      logDir: rocketDirs.logs,
      presetCount: ROCKETMQ_PRESET_COUNT,
      readyTopic: ROCKETMQ_READY_TOPIC,
      readyGroup: ROCKETMQ_READY_GROUP,
    },
    nats: { url: natsUrl },
    updatedAt: new Date().toISOString(),
  };
}

async function timed<T>(label: string, body: () => Promise<T>): Promise<T> {
  const t0 = Date.now();
  const result = await body();
  say(`${label}: ${seconds(t0)}`);
  return result;
}

const logFiles: Record<'kafka' | 'rocketmq', string[]> = {
  kafka: [kafkaOutLog, kafkaServerLog],
  rocketmq: [rocketLogs.namesrvOut, rocketLogs.proxyOut, rocketLogs.proxy, rocketLogs.broker],
};

function printTails(which: 'kafka' | 'rocketmq', lines = 40): void {
  for (const file of logFiles[which]) {
    process.stderr.write(`\n---- ${file} (last ${lines} lines)\n${tail(file, lines)}\n`);
  }
}

async function upKafka(): Promise<void> {
  try {
    await timed(`Kafka ${KAFKA_VERSION} jars`, async () => {
      const fetched = await fetchKafkaJars();
      if (fetched) say(`Kafka jars downloaded: ${dirSizeMb(jarDirs.kafka)} MB in ${jarDirs.kafka}`);
    });
    const r = await timed('Kafka start (log line + round trip)', () => startKafka());
    say(r.started ? `Kafka started, pid ${r.pid}, ${kafkaBootstrap}` : `Kafka already running, pid ${r.pid}`);
  } catch (err) {
    printTails('kafka');
    throw err;
  }
}

async function upRocketMq(): Promise<void> {
  try {
    await timed(`RocketMQ ${ROCKETMQ_VERSION} jars`, async () => {
      const fetched = await fetchRocketMqJars();
      if (fetched) say(`RocketMQ jars downloaded: ${dirSizeMb(jarDirs.rocketmq)} MB in ${jarDirs.rocketmq}`);
    });
    const ns = await timed('RocketMQ name server start', () => startNamesrv());
    say(
      ns.started
        ? `name server started, pid ${ns.pid}, ${namesrvAddress}`
        : `name server already running, pid ${ns.pid}`,
    );
    const px = await timed('RocketMQ proxy+broker start', () => startProxy());
    say(
      px.started ? `proxy started, pid ${px.pid}, ${proxyEndpoint}` : `proxy already running, pid ${px.pid}`,
    );
    // Topics and groups in parallel: each mqadmin call is one JVM start.
    await timed('RocketMQ topics and groups', () =>
      Promise.all([createTopics(presetTopics()), createGroups(presetGroups())]),
    );
    await timed('RocketMQ round trip', () => rocketMqRoundTrip(90_000));
  } catch (err) {
    printTails('rocketmq');
    throw err;
  }
}

async function up(): Promise<void> {
  ensureDir(brokersDir);
  const t0 = Date.now();
  // The jar downloads and JVM starts overlap: Kafka's chain and RocketMQ's chain run side by side.
  const results = await Promise.allSettled([
    upKafka(),
    upRocketMq(),
    timed('NATS check (JetStream round trip)', async () => {
      const r = await ensureNats();
      say(`NATS ${r === 'started' ? 'started' : 'running'} at ${natsUrl}`);
    }),
  ]);
  const failures = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failures.length > 0) {
    for (const f of failures)
      process.stderr.write(`\n[brokers] ${(f.reason as Error).message ?? String(f.reason)}\n`);
    throw new BrokerScriptError(`${failures.length} broker(s) did not come up; see above`);
  }
  writeFileSync(statePath, `${JSON.stringify(state(), null, 2)}\n`);
  say(`all brokers ready in ${seconds(t0)}; addresses in ${statePath}`);
}

async function down(): Promise<void> {
  // All at once: each JVM takes seconds to shut down, and everything goes away together, so
  // the broker unregistering from a name server that is itself stopping does not matter.
  const [kafka, proxy, namesrv] = await Promise.all([
    stopProcess('kafka'),
    stopProcess('proxy'),
    stopProcess('namesrv'),
  ]);
  const stopped = { kafka, proxy, namesrv };
  for (const [name, pid] of Object.entries(stopped)) {
    say(pid === undefined ? `${name}: was not running` : `${name}: stopped pid ${pid}`);
  }
  rmSync(statePath, { force: true });
}

async function status(): Promise<boolean> {
  const rows: Array<[ProcessName, number, string]> = [
    ['kafka', ports.kafka, kafkaBootstrap],
    ['namesrv', ports.namesrv, namesrvAddress],
    ['proxy', ports.proxyGrpc, proxyEndpoint],
  ];
  let allUp = true;
  for (const [name, port, address] of rows) {
    const pid = livePid(name);
    const answers = await portAnswers(port);
    allUp &&= pid !== undefined && answers;
    const what =
      pid === undefined ? (answers ? 'NOT OURS (port taken by another process)' : 'stopped') : 'running';
    say(
      `${name.padEnd(8)} ${what}${pid === undefined ? '' : `, pid ${pid}`}, ${address} ${answers ? 'answers' : 'closed'}`,
    );
  }
  const nats = await portAnswers(ports.nats);
  say(`nats     ${nats ? 'answers' : 'closed'} at ${natsUrl} (machine service)`);
  say(
    `jars     kafka ${jarsComplete(jarDirs.kafka) ? 'cached' : 'missing'}, rocketmq ${jarsComplete(jarDirs.rocketmq) ? 'cached' : 'missing'}`,
  );
  return allUp && nats;
}

function logs(which: string | undefined): void {
  if (which !== undefined && which !== 'kafka' && which !== 'rocketmq') {
    throw new BrokerScriptError(`unknown broker "${which}"; use kafka or rocketmq`);
  }
  const which2: Array<'kafka' | 'rocketmq'> = which === undefined ? ['kafka', 'rocketmq'] : [which];
  for (const w of which2) {
    for (const file of logFiles[w]) process.stdout.write(`\n---- ${file}\n${tail(file, 60)}\n`);
  }
}

async function main(): Promise<number> {
  const [command, arg] = process.argv.slice(2);
  switch (command) {
    case 'up':
      await withBrokerLock('up', up);
      return 0;
    case 'down':
      await withBrokerLock('down', down);
      return 0;
    case 'status':
      return (await status()) ? 0 : 1;
    case 'logs':
      logs(arg);
      return 0;
    default:
      process.stderr.write('usage: npm run brokers -- up | down | status | logs [kafka|rocketmq]\n');
      return 2;
  }
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`\n[brokers] ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  },
);
