/**
 * `npm run bench -- hostile`: what a careless or hostile client costs the gateway process.
 *
 * - decode stall: a ~7 MiB SendMessage of 500,000 property entries, sent without a token, with a
 *   wrong one and with a valid one (and four valid ones at once). Reported: the gateway's own
 *   event-loop delay maximum (/metrics, a fresh gateway per case) and the slowest HealthCheck
 *   round trip of a prober calling every 5 ms meanwhile.
 * - never-reading streams: 10 consumer sessions whose ReceiveMessages streams are opened by a raw
 *   HTTP/2 client that never reads, and one 1 MiB message (one group), then 10 groups with one
 *   stream each (10 copies). Reported: the gateway's heap and RSS after GC over 20 s, against the
 *   payload the streams were sent.
 *
 * BENCH_GATEWAY_CLI=<other checkout>/dist/cli.js runs the same cases against another build, so a
 * before/after pair is measured in one sitting.
 */
import { randomUUID } from 'node:crypto';
import { decodeResponse, encodeRequest, H2GrpcClient } from './lib/h2grpc.js';
import { round } from './lib/load.js';
import { type GatewayProcess, startGatewayProcess } from './lib/processes.js';
import { machineInfo, machineMarkdown, markdownTable, writeResults } from './lib/results.js';

export const description = 'decode stall before auth, and memory of never-reading streams';

const TOKEN = 'bench-token-0123456789abcdef';
const AUTH = { authorization: `Bearer ${TOKEN}` };
const MIB = 1024 * 1024;
const KEYS = { endpoint: 'e', access_key_id: 'AK', access_key_secret: 'S', instance_id: 'i' };
const label = process.env.BENCH_LABEL ?? (process.env.BENCH_GATEWAY_CLI ? 'other build' : 'this tree');

async function createProducer(c: H2GrpcClient, topic: string): Promise<string> {
  const body = await c.unary('CreateProducer', encodeRequest('CreateProducer', { ...KEYS, topic }));
  return decodeResponse<{ producer_id: string }>('CreateProducer', body).producer_id;
}

async function createConsumer(c: H2GrpcClient, topic: string, group: string): Promise<string> {
  const req = encodeRequest('CreateConsumer', { ...KEYS, topic, group_id: group });
  const body = await c.unary('CreateConsumer', req);
  return decodeResponse<{ consumer_id: string }>('CreateConsumer', body).consumer_id;
}

/** HealthCheck every 5 ms until stopped; resolves with the slowest round trip in ms. */
function probe(port: number): { stop(): Promise<number> } {
  const c = new H2GrpcClient(port);
  const frame = encodeRequest('HealthCheck', {});
  let running = true;
  let worst = 0;
  const loop = (async () => {
    while (running) {
      const t0 = performance.now();
      await c.unary('HealthCheck', frame).catch(() => {});
      worst = Math.max(worst, performance.now() - t0);
      await new Promise((r) => setTimeout(r, 5));
    }
  })();
  return {
    async stop() {
      running = false;
      await loop;
      await c.close();
      return worst;
    },
  };
}

async function eventLoopMax(gw: GatewayProcess): Promise<number> {
  const m = await gw.metrics();
  return (m.event_loop_delay_ms as { max: number }).max;
}

interface StallRow {
  case: string;
  requestMiB: number;
  status: string;
  elapsedMs: number;
  gatewayEventLoopMaxMs: number;
  healthCheckMaxMs: number;
}

async function decodeStall(): Promise<StallRow[]> {
  // 500,000 distinct keys of 6 characters with 2-character values: about 7 MiB of protobuf.
  const properties: Record<string, string> = {};
  for (let i = 0; i < 500_000; i++) properties[`k${i.toString(36).padStart(5, '0')}`] = 'vv';
  const rows: StallRow[] = [];
  const cases: Array<[string, Record<string, string>, number]> = [
    ['no token', {}, 1],
    ['wrong token', { authorization: 'Bearer wrong-token-0123456789abcdef' }, 1],
    ['valid token', AUTH, 1],
    ['valid token, 4 at once', AUTH, 4],
  ];
  for (const [name, headers, parallel] of cases) {
    const gw = await startGatewayProcess({ env: { AUTH_TOKENS: `bench:${TOKEN}` } });
    try {
      const admin = new H2GrpcClient(gw.grpcPort, AUTH);
      const producerId = await createProducer(admin, `t-${randomUUID()}`);
      const frame = encodeRequest('SendMessage', {
        producer_id: producerId,
        message_body: 'x',
        properties: { properties },
      });
      // Let start-up's own event-loop delay age out of the comparison: a fresh gateway's max.
      const baseMax = await eventLoopMax(gw);
      const prober = probe(gw.grpcPort);
      await new Promise((r) => setTimeout(r, 100));
      const sender = new H2GrpcClient(gw.grpcPort, headers);
      const t0 = performance.now();
      const outcomes = await Promise.all(
        Array.from({ length: parallel }, () =>
          sender.unary('SendMessage', frame).then(
            () => 'OK',
            (err: Error & { code?: number }) => (err.code !== undefined ? `status ${err.code}` : err.message),
          ),
        ),
      );
      const elapsedMs = performance.now() - t0;
      await new Promise((r) => setTimeout(r, 200));
      const healthCheckMaxMs = await prober.stop();
      const max = await eventLoopMax(gw);
      rows.push({
        case: name,
        requestMiB: round(frame.length / MIB, 2),
        status: [...new Set(outcomes)].join(', '),
        elapsedMs: round(elapsedMs, 0),
        gatewayEventLoopMaxMs: round(Math.max(max, 0), 1),
        healthCheckMaxMs: round(healthCheckMaxMs, 1),
      });
      console.log(
        `decode stall, ${name}: ${JSON.stringify(rows.at(-1))} (start-up max ${round(baseMax, 1)} ms)`,
      );
      await sender.close(100);
      await admin.close(100);
    } finally {
      await gw.close();
    }
  }
  return rows;
}

interface SlowRow {
  case: string;
  payloadMiB: number;
  samples: Array<{ s: number; heapMiB: number; rssMiB: number; redelivered: number; streams: number }>;
  heapGrowthMiB: number;
  rssGrowthMiB: number;
  ratioToPayload: number;
}

async function neverReading(groups: number): Promise<SlowRow> {
  const gw = await startGatewayProcess({
    gcSignal: true,
    env: { ACK_TIMEOUT: '1s', CONSUMER_CLEANUP_TIMEOUT: '5m' },
  });
  try {
    const c = new H2GrpcClient(gw.grpcPort);
    const topic = `t-${randomUUID()}`;
    const sessions: string[] = [];
    for (let i = 0; i < 10; i++) {
      sessions.push(await createConsumer(c, topic, groups === 1 ? 'g' : `g${i}`));
    }
    const readers = new H2GrpcClient(gw.grpcPort);
    for (const id of sessions) {
      readers.neverReadingStream('ReceiveMessages', encodeRequest('ReceiveMessages', { consumer_id: id }));
    }
    await new Promise((r) => setTimeout(r, 500));
    await gw.gc();
    const base = await gw.metrics();
    const producerId = await createProducer(c, topic);
    await c.unary(
      'SendMessage',
      encodeRequest('SendMessage', { producer_id: producerId, message_body: 'x'.repeat(MIB) }),
    );
    const samples: SlowRow['samples'] = [];
    const t0 = Date.now();
    for (let s = 2; s <= 20; s += 2) {
      await new Promise((r) => setTimeout(r, t0 + s * 1000 - Date.now()));
      await gw.gc();
      const m = await gw.metrics();
      samples.push({
        s,
        heapMiB: round(((m.heap_used_bytes as number) - (base.heap_used_bytes as number)) / MIB, 1),
        rssMiB: round(((m.rss_bytes as number) - (base.rss_bytes as number)) / MIB, 1),
        redelivered: m.messages_redelivered as number,
        streams: m.active_streams as number,
      });
    }
    const heapGrowthMiB = Math.max(...samples.map((x) => x.heapMiB));
    const rssGrowthMiB = Math.max(...samples.map((x) => x.rssMiB));
    const payloadMiB = groups;
    const row: SlowRow = {
      case:
        groups === 1
          ? '10 streams, one group, one 1 MiB message'
          : '10 streams, 10 groups, one 1 MiB message',
      payloadMiB,
      samples,
      heapGrowthMiB,
      rssGrowthMiB,
      ratioToPayload: round(Math.max(heapGrowthMiB, rssGrowthMiB) / payloadMiB, 1),
    };
    console.log(`never-reading, ${row.case}: ${JSON.stringify(row)}`);
    await readers.close(100);
    await c.close(100);
    return row;
  } finally {
    await gw.close();
  }
}

export async function run(): Promise<void> {
  const stall = await decodeStall();
  const slow = [await neverReading(1), await neverReading(10)];
  const md = [
    `# hostile: ${label}`,
    '',
    machineMarkdown(machineInfo()),
    '',
    '## Decode stall: a ~7 MiB SendMessage of 500,000 properties',
    '',
    markdownTable(
      ['case', 'request MiB', 'answer', 'took ms', 'gateway event-loop max ms', 'HealthCheck max ms'],
      stall.map((r) => [
        r.case,
        r.requestMiB,
        r.status,
        r.elapsedMs,
        r.gatewayEventLoopMaxMs,
        r.healthCheckMaxMs,
      ]),
    ),
    '',
    '## Never-reading streams (ACK_TIMEOUT 1s, defaults otherwise), 20 s, heap and RSS after GC over the baseline',
    '',
    markdownTable(
      ['case', 'payload MiB', 'heap growth MiB', 'RSS growth MiB', 'growth / payload', 'redelivered at 20 s'],
      slow.map((r) => [
        r.case,
        r.payloadMiB,
        r.heapGrowthMiB,
        r.rssGrowthMiB,
        r.ratioToPayload,
        r.samples.at(-1)?.redelivered ?? 0,
      ]),
    ),
    '',
  ].join('\n');
  await writeResults(process.env.BENCH_RESULT_NAME ?? 'hostile', { label, stall, slow }, md);
}
