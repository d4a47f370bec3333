/**
 * `npm run bench -- sdk`: the SDK as users get it (grpc-js client in the bench process) against
 * the gateway on memory://, and the ceiling of its stack: one grpc-js server stream carrying the
 * same 1 KiB messages from a no-op server to a grpc-js client, as fast as flow control allows.
 * Cells, in one run, rounds alternating:
 * - ceiling: one ReceiveMessages stream of N ready-made messages from a no-op grpc-js server;
 * - SDK publish: producer.publishMessage with PUBLISH_WINDOW sends in flight (the Publish stream);
 * - SDK consume: a pre-filled topic drained with `for await` + `await m.ack()` (Subscribe).
 * The gateway's CPU per message comes from /proc for its process.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import type { MQClient } from '../src/client/index.js';
import { fmt, rawClient, round } from './lib/load.js';
import { loadSdk, startGatewayProcess, startTsServer } from './lib/processes.js';
import { NOISE_NOTE, pct, profileArgs, verdict, withCpu } from './lib/report.js';
import { machineInfo, machineMarkdown, markdownTable, writeResults } from './lib/results.js';

export const description = 'SDK publish and consume on memory:// vs one grpc-js server stream (the ceiling)';

const MESSAGES = Number(process.env.BENCH_SDK_MESSAGES ?? 50_000);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 2);
const WINDOW = 1000;
const BODY = randomBytes(1024);
const NOOP = fileURLToPath(new URL('./lib/noop-server.ts', import.meta.url));

interface CellResult {
  msgsPerSec: number;
  serverCpuUsPerMsg: number;
  clientCpuUsPerMsg: number;
}

async function ceilingCell(port: number, pid: number): Promise<CellResult> {
  const c = rawClient(port);
  try {
    let got = 0;
    let first = 0;
    const [, cpu] = await withCpu(pid, async () => {
      const stream = (c.ReceiveMessages as (req: object) => NodeJS.EventEmitter).call(c, {
        consumer_id: String(MESSAGES),
      });
      await new Promise<void>((resolve, reject) => {
        stream.on('data', () => {
          if (got++ === 0) first = performance.now();
        });
        stream.on('end', resolve);
        stream.on('error', reject);
      });
    });
    const ms = performance.now() - first;
    return {
      msgsPerSec: round((got / ms) * 1000, 1),
      serverCpuUsPerMsg: round((cpu.serverCpuMs * 1000) / got, 2),
      clientCpuUsPerMsg: round((cpu.clientCpuMs * 1000) / got, 2),
    };
  } finally {
    c.close();
  }
}

async function publishCell(client: MQClient, pid: number, topic: string): Promise<CellResult> {
  const producer = await client.getProducer('', topic);
  try {
    // Warm the stream (and the gateway's JIT) before timing.
    await Promise.all(Array.from({ length: 1000 }, () => producer.publishMessage(BODY, 'bench')));
    let sent = 0;
    let t0 = 0;
    const [, cpu] = await withCpu(pid, async () => {
      t0 = performance.now();
      const lane = async (): Promise<void> => {
        while (sent < MESSAGES) {
          sent++;
          await producer.publishMessage(BODY, 'bench');
        }
      };
      await Promise.all(Array.from({ length: WINDOW }, lane));
    });
    const ms = performance.now() - t0;
    if (!producer.streaming) throw new Error('the producer fell back to unary sends');
    return {
      msgsPerSec: round((sent / ms) * 1000, 1),
      serverCpuUsPerMsg: round((cpu.serverCpuMs * 1000) / sent, 2),
      clientCpuUsPerMsg: round((cpu.clientCpuMs * 1000) / sent, 2),
    };
  } finally {
    await producer.close();
  }
}

async function consumeCell(client: MQClient, pid: number): Promise<CellResult> {
  const topic = `bench-sdk-${randomUUID()}`;
  const consumer = await client.getConsumer('', topic, 'bench', '*', { prefetch: 256 });
  const producer = await client.getProducer('', topic);
  try {
    let filled = 0;
    await Promise.all(
      Array.from({ length: WINDOW }, async () => {
        while (filled < MESSAGES) {
          filled++;
          await producer.publishMessage(BODY, 'bench');
        }
      }),
    );
    let got = 0;
    let first = 0;
    const [, cpu] = await withCpu(pid, async () => {
      for await (const m of consumer) {
        if (got++ === 0) first = performance.now();
        await m.ack();
        if (got >= MESSAGES) break;
      }
    });
    const ms = performance.now() - first;
    return {
      msgsPerSec: round((got / ms) * 1000, 1),
      serverCpuUsPerMsg: round((cpu.serverCpuMs * 1000) / got, 2),
      clientCpuUsPerMsg: round((cpu.clientCpuMs * 1000) / got, 2),
    };
  } finally {
    await producer.close();
    await consumer.close();
  }
}

export async function run(): Promise<void> {
  const noop = await startTsServer(NOOP, ['grpc-js']);
  const gw = await startGatewayProcess({
    // A pre-filled topic of MESSAGES 1 KiB messages is more than the default 64 MiB per topic.
    env: { BROKERS: 'memory://?maxTopicBytes=256MiB&maxBytes=512MiB' },
    nodeArgs: profileArgs(),
  });
  const sdk = await loadSdk();
  const client: MQClient = new sdk.MQClient({ grpcEndpoint: `127.0.0.1:${gw.grpcPort}` });
  const cells: Record<'ceiling' | 'publish' | 'consume', CellResult[]> = {
    ceiling: [],
    publish: [],
    consume: [],
  };
  try {
    const topic = `bench-sdk-${randomUUID()}`;
    // Warm-up of every path, not measured.
    await ceilingCell(noop.port, noop.pid);
    for (let r = 0; r < ROUNDS; r++) {
      cells.ceiling.push(await ceilingCell(noop.port, noop.pid));
      cells.publish.push(await publishCell(client, gw.pid, topic));
      cells.consume.push(await consumeCell(client, gw.pid));
      console.log(
        `round ${r + 1}: ceiling ${fmt(cells.ceiling.at(-1)?.msgsPerSec ?? 0)}/s, SDK publish ${fmt(cells.publish.at(-1)?.msgsPerSec ?? 0)}/s, ` +
          `SDK consume ${fmt(cells.consume.at(-1)?.msgsPerSec ?? 0)}/s (gateway ${cells.consume.at(-1)?.serverCpuUsPerMsg} µs/msg)`,
      );
    }
  } finally {
    await client.close();
    await gw.close();
    await noop.close();
  }
  const mean = (xs: CellResult[], k: keyof CellResult): number =>
    round(xs.reduce((a, x) => a + x[k], 0) / Math.max(1, xs.length), 2);
  const summary = {
    ceiling: { msgsPerSec: mean(cells.ceiling, 'msgsPerSec') },
    publish: {
      msgsPerSec: mean(cells.publish, 'msgsPerSec'),
      gatewayCpuUsPerMsg: mean(cells.publish, 'serverCpuUsPerMsg'),
      sdkCpuUsPerMsg: mean(cells.publish, 'clientCpuUsPerMsg'),
    },
    consume: {
      msgsPerSec: mean(cells.consume, 'msgsPerSec'),
      gatewayCpuUsPerMsg: mean(cells.consume, 'serverCpuUsPerMsg'),
      sdkCpuUsPerMsg: mean(cells.consume, 'clientCpuUsPerMsg'),
    },
  };
  const publishShare = pct(summary.publish.msgsPerSec, summary.ceiling.msgsPerSec);
  const consumeShare = pct(summary.consume.msgsPerSec, summary.ceiling.msgsPerSec);
  const md = [
    '# SDK: publish and consume through the gateway vs one grpc-js server stream',
    '',
    `${fmt(MESSAGES)} messages of 1 KiB per cell, ${ROUNDS} rounds, cells alternating. Ceiling: a no-op grpc-js server ` +
      '(its own process) writes ready-made messages on one ReceiveMessages stream to a grpc-js client in the bench ' +
      'process, one message per stream write, as fast as flow control allows. SDK publish: `producer.publishMessage` ' +
      `from ${WINDOW} concurrent loops (the SDK coalesces them on its Publish stream). SDK consume: a topic pre-filled with ` +
      'the same messages drained by `for await (const m of consumer) await m.ack()` (Subscribe, prefetch 256). The ' +
      'gateway (`node dist/cli.js serve`, memory://) and the bench process share the 2 cores.',
    '',
    NOISE_NOTE,
    '',
    machineMarkdown(machineInfo()),
    '',
    markdownTable(
      [
        'cell',
        'msgs/s (mean)',
        'of the ceiling',
        'gateway CPU µs/msg',
        'bench (SDK) CPU µs/msg',
        'per round msgs/s',
      ],
      [
        [
          'ceiling: one grpc-js server stream',
          fmt(summary.ceiling.msgsPerSec),
          '100%',
          '(no-op server)',
          '',
          cells.ceiling.map((c) => fmt(c.msgsPerSec)).join(', '),
        ],
        [
          'SDK publish',
          fmt(summary.publish.msgsPerSec),
          `${publishShare}%`,
          summary.publish.gatewayCpuUsPerMsg,
          summary.publish.sdkCpuUsPerMsg,
          cells.publish.map((c) => fmt(c.msgsPerSec)).join(', '),
        ],
        [
          'SDK consume',
          fmt(summary.consume.msgsPerSec),
          `${consumeShare}%`,
          summary.consume.gatewayCpuUsPerMsg,
          summary.consume.sdkCpuUsPerMsg,
          cells.consume.map((c) => fmt(c.msgsPerSec)).join(', '),
        ],
      ],
    ),
    '',
    `- Target: SDK publish and consume each >= 80% of the ceiling: publish ${verdict(publishShare >= 80)} (${publishShare}%), consume ${verdict(consumeShare >= 80)} (${consumeShare}%).`,
    `- Target: gateway CPU per consumed message <= 10 µs: ${verdict(summary.consume.gatewayCpuUsPerMsg <= 10)} (${summary.consume.gatewayCpuUsPerMsg} µs).`,
    '',
  ].join('\n');
  const { mdPath } = await writeResults(
    'sdk',
    { machine: machineInfo(), messages: MESSAGES, rounds: ROUNDS, cells, summary },
    md,
  );
  console.log(`wrote ${mdPath}`);
}
