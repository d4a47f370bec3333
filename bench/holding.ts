/**
 * Delayed messages through the holding mechanism (src/brokers/holding/) on NATS and Kafka:
 * delay accuracy (p50 / p99 / max lateness as a consumer sees it) and the cost of a held
 * message (bench-process CPU per message for holding and moving it, and on NATS the bytes the
 * holding stream stores per record). The adapters run in the bench process; NATS on a private
 * nats-server (file storage, temporary directory), Kafka on the test Kafka with holding topics
 * of its own (`__mqgate_bench_hold`).
 */
import { randomUUID } from 'node:crypto';
import { jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import type { Broker } from '../src/brokers/broker.js';
import { openKafkaBroker } from '../src/brokers/kafka/index.js';
import { openNatsBroker } from '../src/brokers/nats/index.js';
import { brokers } from '../test/support/brokers.js';
import { startNatsServer } from '../test/support/nats-server.js';
import { machineInfo, machineMarkdown, markdownTable, writeResults } from './lib/results.js';

export const description =
  'delayed messages held on NATS and Kafka: lateness p50/p99/max, CPU and bytes per held message';

const MESSAGES = Number(process.env.HOLDING_BENCH_MESSAGES ?? 5_000);
/** Dues spread over this window, starting LEAD_MS after the first send. */
const WINDOW_MS = 10_000;
const LEAD_MS = 5_000;

interface Row {
  broker: string;
  messages: number;
  holdPerSec: number;
  p50: number;
  p99: number;
  max: number;
  early: number;
  duplicates: number;
  /** Moves the mover itself counted as done twice. */
  countedDuplicates: number;
  cpuUsPerMessage: number;
  bytesPerHeld: number | undefined;
  note: string;
}

function percentile(sorted: readonly number[], p: number): number {
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i] ?? Number.NaN;
}

async function measure(
  name: string,
  broker: Broker,
  heldBytes: () => Promise<number | undefined>,
  note: string,
): Promise<Row> {
  const topic = `bench-hold-${randomUUID().slice(0, 8)}`;
  const sub = await broker.subscribe({ topic, group: 'bench', start: 'earliest', maxInFlight: 1_000 });
  const it = sub[Symbol.asyncIterator]();
  const p = await broker.producer(topic);
  const cpu0 = process.cpuUsage();
  const t0 = Date.now();
  const due = new Map<string, number>();
  for (let start = 0; start < MESSAGES; start += 500) {
    const batch: Array<Promise<void>> = [];
    for (let i = start; i < Math.min(MESSAGES, start + 500); i++) {
      const deliverAt = t0 + LEAD_MS + Math.floor((i * WINDOW_MS) / MESSAGES);
      batch.push(
        p
          .send({ body: `m${i}`, key: `k${i % 100}`, deliverAt })
          .then((r) => void due.set(r.messageId, deliverAt)),
      );
    }
    await Promise.all(batch);
  }
  const holdMs = Date.now() - t0;
  const bytes = await heldBytes();
  const late: number[] = [];
  const seen = new Set<string>();
  let early = 0;
  let deliveries = 0;
  const deadline = t0 + LEAD_MS + WINDOW_MS + 120_000;
  while (seen.size < MESSAGES && Date.now() < deadline) {
    const r = await it.next();
    if (r.done) break;
    const d = r.value;
    const at = Date.now();
    deliveries++;
    const deliverAt = due.get(d.message.id);
    if (deliverAt !== undefined && !seen.has(d.message.id)) {
      seen.add(d.message.id);
      late.push(at - deliverAt);
      if (at < deliverAt) early++;
    }
    await d.ack();
  }
  const cpu = process.cpuUsage(cpu0);
  await p.close();
  await sub.close();
  late.sort((a, b) => a - b);
  const row: Row = {
    broker: name,
    messages: seen.size,
    holdPerSec: Math.round(MESSAGES / (holdMs / 1000)),
    p50: percentile(late, 50),
    p99: percentile(late, 99),
    max: late[late.length - 1] ?? Number.NaN,
    early,
    duplicates: deliveries - seen.size,
    countedDuplicates: broker.counters?.().holdingDuplicates ?? 0,
    cpuUsPerMessage: Math.round((cpu.user + cpu.system) / MESSAGES),
    bytesPerHeld: bytes === undefined ? undefined : Math.round(bytes / MESSAGES),
    note,
  };
  console.log(
    `${name}: ${row.messages}/${MESSAGES} delivered, held at ${row.holdPerSec}/s, lateness p50 ${row.p50} ms, p99 ${row.p99} ms, max ${row.max} ms, ${row.early} early, ${row.duplicates} duplicates (${row.countedDuplicates} counted), ${row.cpuUsPerMessage} µs CPU per message, ${row.bytesPerHeld ?? '-'} bytes per held record`,
  );
  return row;
}

export async function run(): Promise<void> {
  const machine = machineInfo();
  const rows: Row[] = [];

  const server = await startNatsServer();
  try {
    const broker = await openNatsBroker(new URL(server.url), {});
    try {
      rows.push(
        await measure(
          'nats',
          broker,
          async () => {
            const nc = await connect({ servers: new URL(server.url).host });
            try {
              const info = await (await jetstreamManager(nc)).streams.info('mqgate___mqgate_holding');
              return info.state.bytes;
            } finally {
              await nc.close();
            }
          },
          'private nats-server 2.9, file storage',
        ),
      );
    } finally {
      await broker.close();
    }
  } finally {
    await server.close();
  }

  let kafkaBootstrap: string | undefined;
  try {
    kafkaBootstrap = brokers().kafka.bootstrap;
  } catch {
    kafkaBootstrap = undefined;
  }
  if (kafkaBootstrap !== undefined) {
    const broker = await openKafkaBroker(
      new URL(`kafka://${kafkaBootstrap}?partitions=3&holdingTopics=__mqgate_bench_hold`),
      {},
    );
    try {
      rows.push(
        await measure(
          'kafka',
          broker,
          async () => undefined,
          'test Kafka 3.9 (one node), tier topics of 3 partitions',
        ),
      );
    } finally {
      await broker.close();
    }
  } else {
    console.log('kafka: not measured: no .brokers/state.json (npm run brokers -- up)');
  }

  const markdown = [
    '# Delayed messages through the holding mechanism',
    '',
    `${MESSAGES.toLocaleString('en')} messages sent at once (500 concurrent sends), 100 keys, due evenly over ${WINDOW_MS / 1000} s ` +
      `starting ${LEAD_MS / 1000} s after the first send; one subscription (maxInFlight 1,000) acks each. Lateness is ` +
      'arrival at the consumer minus deliverAt. CPU is the bench process (holding, moving and consuming: adapter, mover and ' +
      'consumer share it) per message. Bytes per held record: the NATS holding stream after every message was held ' +
      '(headers, properties and body; these bodies are 2-5 bytes).',
    '',
    machineMarkdown(machine),
    '',
    markdownTable(
      [
        'broker',
        'delivered',
        'held/s',
        'p50 ms',
        'p99 ms',
        'max ms',
        'early',
        'duplicates',
        'counted by the mover',
        'CPU µs/msg',
        'bytes/held',
        'setup',
      ],
      rows.map((r) => [
        r.broker,
        r.messages,
        r.holdPerSec,
        r.p50,
        r.p99,
        r.max,
        r.early,
        r.duplicates,
        r.countedDuplicates,
        r.cpuUsPerMessage,
        r.bytesPerHeld ?? '-',
        r.note,
      ]),
    ),
    '',
  ].join('\n');
  const { jsonPath, mdPath } = await writeResults(
    'holding',
    { bench: 'holding', machine, params: { messages: MESSAGES, windowMs: WINDOW_MS, leadMs: LEAD_MS }, rows },
    markdown,
  );
  console.log(`wrote ${jsonPath} and ${mdPath}`);
}
