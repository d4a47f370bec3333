/**
 * Unary SendMessage through the gateway (its own process) against the same broker's direct path
 * (the adapter in the bench process, no gateway) in the same run: closed loop at concurrency 1,
 * 16 and 64, then the latency added at a fixed 1,000 msgs/s (open loop).
 */
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Broker, Producer } from '../src/brokers/broker.js';
import { openBroker } from '../src/brokers/index.js';
import { encodeRequest, H2GrpcClient } from './lib/h2grpc.js';
import {
  closedLoop,
  fmt,
  openLoop,
  type RawClient,
  type RunResult,
  rawClient,
  round,
  unary,
} from './lib/load.js';
import { type GatewayProcess, loadSdk, startGatewayProcess } from './lib/processes.js';
import { type CpuWindow, NOISE_NOTE, pct, profileArgs, verdict, withCpu } from './lib/report.js';
import { machineInfo, machineMarkdown, markdownTable, writeResults } from './lib/results.js';
import { type BrokerKind, chosenBrokers, isTarget, resolveTarget, type Target } from './lib/targets.js';

export const description =
  'SendMessage through the gateway vs the broker directly: msgs/s, latency, added latency';

const CONCURRENCY = [1, 16, 64] as const;
const DURATION_MS = Number(process.env.BENCH_CELL_MS ?? 5000);
const WARMUP_MS = 1000;
const OPEN_RATE = 1000;
const OPEN_MS = Number(process.env.BENCH_OPEN_MS ?? 10_000);
const BODY = randomBytes(1024);
/** SendMessages: messages per call and calls in flight (unary gRPC's per-call cost is the ceiling). */
const BATCH_SIZE = 100;
const BATCH_CONCURRENCY = 4;
/** SDK sends in flight on the Publish stream. */
const STREAM_WINDOW = 1000;
/** Brokers on which the cost of tracing is measured (it is the gateway's own CPU, the same on each). */
const TRACING_BROKERS = (process.env.BENCH_TRACING_BROKERS ?? 'memory').split(',');

interface Cell extends RunResult {
  cpu: CpuWindow;
}

interface BrokerRow {
  broker: BrokerKind;
  notMeasured?: string;
  closed?: Array<{ concurrency: number; gateway: Cell; direct: Cell; ratio: number }>;
  open?: { ratePerSec: number; gateway: Cell; direct: Cell; addedP50Ms: number; addedP99Ms: number };
  batch?: {
    batchSize: number;
    concurrency: number;
    calls: Cell;
    msgsPerSec: number;
    ratioToDirect64: number;
  };
  /** The SDK's producer (the Publish stream) with STREAM_WINDOW sends in flight. */
  stream?: { window: number; msgsPerSec: number; gatewayCpuUsPerMsg: number; ratioToDirect64: number };
  /** The gateway with tracing off and on, side by side (TRACING_BROKERS only). */
  tracing?: {
    unary64: { off: TracingCell; on: TracingCell };
    stream: { off: TracingCell; on: TracingCell };
    exportedBytes: number;
  };
}

interface TracingCell {
  msgsPerSec: number;
  gatewayCpuUsPerMsg: number;
}

function summarize(r: RunResult, cpu: CpuWindow): Cell {
  return {
    ...r,
    opsPerSec: round(r.opsPerSec, 1),
    p50Ms: round(r.p50Ms, 3),
    p99Ms: round(r.p99Ms, 3),
    cpu: {
      serverCpuMs: round(cpu.serverCpuMs),
      clientCpuMs: round(cpu.clientCpuMs),
      wallMs: round(cpu.wallMs),
    },
  };
}

async function measureBroker(target: Target): Promise<BrokerRow> {
  const topic = await target.topic();
  let gateway: GatewayProcess | undefined;
  let client: RawClient | undefined;
  let h2: H2GrpcClient | undefined;
  let broker: Broker | undefined;
  let producer: Producer | undefined;
  try {
    gateway = await startGatewayProcess({
      env: { BROKERS: target.url },
      nodeArgs: profileArgs(),
    });
    client = rawClient(gateway.grpcPort);
    const created = await unary<{ producer_id: string }>(client, 'CreateProducer', { topic });
    broker = await openBroker(target.url);
    producer = await broker.producer(topic);
    h2 = new H2GrpcClient(gateway.grpcPort);
    const h = h2;
    const p = producer;
    // Encoded once: the load generator only frames and checks statuses (see lib/h2grpc.ts).
    const frame = encodeRequest('SendMessage', {
      producer_id: created.producer_id,
      message_body_bytes: BODY,
      tag: 'bench',
    });
    const viaGateway = (): Promise<unknown> => h.unary('SendMessage', frame);
    const direct = (): Promise<unknown> => p.send({ body: BODY, tag: 'bench' });
    const gwPid = gateway.pid;
    const closed: NonNullable<BrokerRow['closed']> = [];
    for (const concurrency of CONCURRENCY) {
      const opts = { concurrency, durationMs: DURATION_MS, warmupMs: WARMUP_MS };
      const [g, gCpu] = await withCpu(gwPid, () => closedLoop(viaGateway, opts));
      const [d, dCpu] = await withCpu(undefined, () => closedLoop(direct, opts));
      const row = {
        concurrency,
        gateway: summarize(g, gCpu),
        direct: summarize(d, dCpu),
        ratio: round(g.opsPerSec / d.opsPerSec, 3),
      };
      closed.push(row);
      console.log(
        `${target.kind} c=${concurrency}: gateway ${fmt(g.opsPerSec)}/s p50 ${row.gateway.p50Ms} p99 ${row.gateway.p99Ms} ms` +
          ` | direct ${fmt(d.opsPerSec)}/s p50 ${row.direct.p50Ms} p99 ${row.direct.p99Ms} ms | ratio ${row.ratio}` +
          (g.errors + d.errors > 0
            ? ` | errors ${g.errors}/${d.errors}: ${g.firstError ?? d.firstError}`
            : ''),
      );
    }
    // The batch RPC: the same 1 KiB messages, BATCH_SIZE per SendMessages call.
    const batchFrame = encodeRequest('SendMessages', {
      producer_id: created.producer_id,
      messages: Array.from({ length: BATCH_SIZE }, () => ({ message_body_bytes: BODY, tag: 'bench' })),
    });
    const viaBatch = (): Promise<unknown> => h.unary('SendMessages', batchFrame);
    const [b, bCpu] = await withCpu(gwPid, () =>
      closedLoop(viaBatch, { concurrency: BATCH_CONCURRENCY, durationMs: DURATION_MS, warmupMs: WARMUP_MS }),
    );
    const direct64 = closed.find((c) => c.concurrency === 64)?.direct.opsPerSec ?? Number.NaN;
    const batch = {
      batchSize: BATCH_SIZE,
      concurrency: BATCH_CONCURRENCY,
      calls: summarize(b, bCpu),
      msgsPerSec: round(b.opsPerSec * BATCH_SIZE, 1),
      ratioToDirect64: round((b.opsPerSec * BATCH_SIZE) / direct64, 3),
    };
    console.log(
      `${target.kind} batch ${BATCH_SIZE}x${BATCH_CONCURRENCY}: ${fmt(batch.msgsPerSec)} msgs/s, ` +
        `ratio to direct c=64 ${batch.ratioToDirect64}${b.errors > 0 ? ` | errors ${b.errors}: ${b.firstError}` : ''}`,
    );
    // The streaming RPC as the SDK uses it: STREAM_WINDOW publishMessage calls in flight.
    const sm = await sdkStream(gateway, topic);
    const stream: BrokerRow['stream'] = {
      window: STREAM_WINDOW,
      msgsPerSec: round(sm.msgsPerSec, 1),
      gatewayCpuUsPerMsg: round(sm.gatewayCpuUsPerMsg, 1),
      ratioToDirect64: round(sm.msgsPerSec / direct64, 3),
    };
    console.log(
      `${target.kind} SDK Publish stream (${STREAM_WINDOW} in flight): ${fmt(stream.msgsPerSec)} msgs/s, ratio to direct c=64 ${stream.ratioToDirect64}, gateway ${stream.gatewayCpuUsPerMsg} µs/msg`,
    );
    const tracing = TRACING_BROKERS.includes(target.kind)
      ? await tracingCost(target, topic, gateway, viaGateway)
      : undefined;
    const openOpts = { ratePerSec: OPEN_RATE, durationMs: OPEN_MS, warmupMs: 1000 };
    const [og, ogCpu] = await withCpu(gwPid, () => openLoop(viaGateway, openOpts));
    const [od, odCpu] = await withCpu(undefined, () => openLoop(direct, openOpts));
    const open = {
      ratePerSec: OPEN_RATE,
      gateway: summarize(og, ogCpu),
      direct: summarize(od, odCpu),
      addedP50Ms: round(og.p50Ms - od.p50Ms, 3),
      addedP99Ms: round(og.p99Ms - od.p99Ms, 3),
    };
    console.log(
      `${target.kind} open loop ${OPEN_RATE}/s: gateway p50 ${open.gateway.p50Ms} p99 ${open.gateway.p99Ms} ms | direct p50 ` +
        `${open.direct.p50Ms} p99 ${open.direct.p99Ms} ms | added p50 ${open.addedP50Ms} p99 ${open.addedP99Ms} ms` +
        (og.errors + od.errors > 0
          ? ` | errors ${og.errors}/${od.errors}: ${og.firstError ?? od.firstError}`
          : ''),
    );
    return { broker: target.kind, closed, open, batch, stream, tracing };
  } finally {
    client?.close();
    await h2?.close();
    await producer?.close().catch(() => {});
    await broker?.close().catch(() => {});
    await gateway?.close();
  }
}

/** The SDK's producer on the Publish stream with STREAM_WINDOW sends in flight, for DURATION_MS. */
async function sdkStream(
  gateway: GatewayProcess,
  topic: string,
): Promise<{ msgsPerSec: number; gatewayCpuUsPerMsg: number }> {
  const sdk = await loadSdk();
  const sdkClient = new sdk.MQClient({ grpcEndpoint: `127.0.0.1:${gateway.grpcPort}` });
  try {
    const sp = await sdkClient.getProducer('', topic);
    await Promise.all(Array.from({ length: STREAM_WINDOW }, () => sp.publishMessage(BODY, 'bench')));
    let sent = 0;
    const deadline = Date.now() + DURATION_MS;
    const t0 = performance.now();
    const [, cpu] = await withCpu(gateway.pid, () =>
      Promise.all(
        Array.from({ length: STREAM_WINDOW }, async () => {
          while (Date.now() < deadline) {
            await sp.publishMessage(BODY, 'bench');
            sent++;
          }
        }),
      ),
    );
    if (!sp.streaming) throw new Error('the SDK producer fell back to unary sends');
    return {
      msgsPerSec: (sent / (performance.now() - t0)) * 1000,
      gatewayCpuUsPerMsg: (cpu.serverCpuMs * 1000) / Math.max(1, sent),
    };
  } finally {
    await sdkClient.close();
  }
}

/**
 * The same gateway build started a second time with tracing on (OTLP over HTTP to a sink in the
 * bench process that discards what it gets; every span sampled, the default), measured right after
 * the tracing-off gateway on the same cells: unary SendMessage at concurrency 64 and the SDK's
 * Publish stream. The bench process registers no OpenTelemetry SDK, so only the gateway's cost
 * is in the figures.
 */
async function tracingCost(
  target: Target,
  topic: string,
  off: GatewayProcess,
  offSend: () => Promise<unknown>,
): Promise<NonNullable<BrokerRow['tracing']>> {
  let received = 0;
  const sink = createServer((req, res) => {
    req.on('data', (c: Buffer) => {
      received += c.length;
    });
    req.on('end', () => res.writeHead(200).end());
  });
  sink.listen(0, '127.0.0.1');
  await once(sink, 'listening');
  const sinkPort = (sink.address() as AddressInfo).port;
  let on: GatewayProcess | undefined;
  let client: RawClient | undefined;
  let h2: H2GrpcClient | undefined;
  try {
    on = await startGatewayProcess({
      env: {
        BROKERS: target.url,
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: `http://127.0.0.1:${sinkPort}/v1/traces`,
      },
      nodeArgs: profileArgs(),
    });
    client = rawClient(on.grpcPort);
    const created = await unary<{ producer_id: string }>(client, 'CreateProducer', { topic });
    h2 = new H2GrpcClient(on.grpcPort);
    const h = h2;
    const frame = encodeRequest('SendMessage', {
      producer_id: created.producer_id,
      message_body_bytes: BODY,
      tag: 'bench',
    });
    const onSend = (): Promise<unknown> => h.unary('SendMessage', frame);
    const opts = { concurrency: 64, durationMs: DURATION_MS, warmupMs: WARMUP_MS };
    const [uo, uoCpu] = await withCpu(off.pid, () => closedLoop(offSend, opts));
    const [un, unCpu] = await withCpu(on.pid, () => closedLoop(onSend, opts));
    const so = await sdkStream(off, topic);
    const sn = await sdkStream(on, topic);
    const perMsg = (c: CpuWindow, r: RunResult): number =>
      round((c.serverCpuMs * 1000) / Math.max(1, r.ops), 1);
    const result = {
      unary64: {
        off: { msgsPerSec: round(uo.opsPerSec, 1), gatewayCpuUsPerMsg: perMsg(uoCpu, uo) },
        on: { msgsPerSec: round(un.opsPerSec, 1), gatewayCpuUsPerMsg: perMsg(unCpu, un) },
      },
      stream: {
        off: { msgsPerSec: round(so.msgsPerSec, 1), gatewayCpuUsPerMsg: round(so.gatewayCpuUsPerMsg, 1) },
        on: { msgsPerSec: round(sn.msgsPerSec, 1), gatewayCpuUsPerMsg: round(sn.gatewayCpuUsPerMsg, 1) },
      },
      exportedBytes: received,
    };
    console.log(
      `${target.kind} tracing off/on: unary c=64 ${fmt(uo.opsPerSec)} / ${fmt(un.opsPerSec)} msgs/s, ` +
        `${result.unary64.off.gatewayCpuUsPerMsg} / ${result.unary64.on.gatewayCpuUsPerMsg} µs/msg; stream ` +
        `${fmt(so.msgsPerSec)} / ${fmt(sn.msgsPerSec)} msgs/s, ${result.stream.off.gatewayCpuUsPerMsg} / ` +
        `${result.stream.on.gatewayCpuUsPerMsg} µs/msg` +
        (uo.errors + un.errors > 0
          ? ` | errors ${uo.errors}/${un.errors}: ${uo.firstError ?? un.firstError}`
          : ''),
    );
    return result;
  } finally {
    client?.close();
    await h2?.close();
    await on?.close();
    sink.close();
  }
}

function markdown(rows: BrokerRow[]): string {
  const m = machineInfo();
  const out: string[] = [
    '# Publish: gateway vs direct',
    '',
    `Unary SendMessage with a 1 KiB body (message_body_bytes) through the gateway (\`node dist/cli.js serve\`, its own process) ` +
      `from the bench process over one HTTP/2 connection (a minimal gRPC client on node:http2 sending a pre-encoded ` +
      `request and checking grpc-status, because grpc-js's client costs about twice the gateway's CPU per call), against the same broker's direct path in the same run: ` +
      `the mqgate adapter opened in the bench process (for memory:// the embedded broker's producer; for a network broker ` +
      `its Node client under the adapter), no gateway and no gRPC hop. Closed loop: ${DURATION_MS / 1000} s per cell after ` +
      `${WARMUP_MS / 1000} s of warm-up. Open loop: ${OPEN_RATE} msgs/s for ${OPEN_MS / 1000} s, latency from issue to reply. ` +
      `Cores: the gateway and the bench process are separate processes left to the OS scheduler on the 2 cores.`,
    '',
    NOISE_NOTE,
    '',
    machineMarkdown(m),
    '',
  ];
  for (const r of rows) {
    out.push(`## ${r.broker}`, '');
    if (r.notMeasured) {
      out.push(`not measured: ${r.notMeasured}`, '');
      continue;
    }
    const closed = r.closed ?? [];
    out.push(
      markdownTable(
        [
          'concurrency',
          'gateway msgs/s',
          'direct msgs/s',
          'gateway/direct',
          'gateway p50 / p99 ms',
          'direct p50 / p99 ms',
          'gateway CPU µs/msg',
          'gateway CPU %',
          'bench CPU %',
          'errors',
        ],
        closed.map((c) => [
          c.concurrency,
          fmt(c.gateway.opsPerSec),
          fmt(c.direct.opsPerSec),
          `${pct(c.gateway.opsPerSec, c.direct.opsPerSec)}%`,
          `${c.gateway.p50Ms} / ${c.gateway.p99Ms}`,
          `${c.direct.p50Ms} / ${c.direct.p99Ms}`,
          fmt((c.gateway.cpu.serverCpuMs * 1000) / Math.max(1, c.gateway.ops), 1),
          `${pct(c.gateway.cpu.serverCpuMs, c.gateway.cpu.wallMs)}%`,
          `${pct(c.gateway.cpu.clientCpuMs, c.gateway.cpu.wallMs)}%`,
          `${c.gateway.errors} / ${c.direct.errors}`,
        ]),
      ),
      '',
    );
    const o = r.open;
    if (o) {
      out.push(
        markdownTable(
          ['open loop', 'p50 ms', 'p99 ms', 'sent ok', 'errors'],
          [
            [
              `gateway @ ${o.ratePerSec}/s`,
              o.gateway.p50Ms,
              o.gateway.p99Ms,
              o.gateway.ops,
              o.gateway.errors,
            ],
            [`direct @ ${o.ratePerSec}/s`, o.direct.p50Ms, o.direct.p99Ms, o.direct.ops, o.direct.errors],
            ['added by the gateway', o.addedP50Ms, o.addedP99Ms, '', ''],
          ],
        ),
        '',
      );
    }
    const bt = r.batch;
    if (bt) {
      out.push(
        markdownTable(
          ['batch publish', 'msgs/s', 'of direct c=64', 'call p50 / p99 ms', 'gateway CPU µs/msg', 'errors'],
          [
            [
              `SendMessages ${bt.batchSize} × 1 KiB, ${bt.concurrency} calls in flight`,
              fmt(bt.msgsPerSec),
              `${round(bt.ratioToDirect64 * 100, 1)}%`,
              `${bt.calls.p50Ms} / ${bt.calls.p99Ms}`,
              fmt((bt.calls.cpu.serverCpuMs * 1000) / Math.max(1, bt.calls.ops * bt.batchSize), 1),
              bt.calls.errors,
            ],
          ],
        ),
        '',
      );
    }
    const st = r.stream;
    if (st) {
      out.push(
        markdownTable(
          ['streaming publish (SDK)', 'msgs/s', 'of direct c=64', 'gateway CPU µs/msg'],
          [
            [
              `Publish stream, ${st.window} sends in flight`,
              fmt(st.msgsPerSec),
              `${round(st.ratioToDirect64 * 100, 1)}%`,
              st.gatewayCpuUsPerMsg,
            ],
          ],
        ),
        '',
      );
    }
    const tr = r.tracing;
    if (tr) {
      const cell = (name: string, c: { off: TracingCell; on: TracingCell }): Array<string | number> => [
        name,
        `${fmt(c.off.msgsPerSec)} / ${fmt(c.on.msgsPerSec)}`,
        `${pct(c.on.msgsPerSec, c.off.msgsPerSec)}%`,
        `${c.off.gatewayCpuUsPerMsg} / ${c.on.gatewayCpuUsPerMsg}`,
        `+${round(c.on.gatewayCpuUsPerMsg - c.off.gatewayCpuUsPerMsg, 1)}`,
      ];
      out.push(
        markdownTable(
          ['tracing off / on', 'msgs/s', 'on/off', 'gateway CPU µs/msg', 'cost µs/msg'],
          [
            cell('SendMessage, 64 in flight', tr.unary64),
            cell(`Publish stream (SDK), ${STREAM_WINDOW} in flight`, tr.stream),
          ],
        ),
        '',
        `Tracing on: every message sampled, spans exported over OTLP/HTTP (protobuf) to a sink in the bench process ` +
          `(${fmt(tr.exportedBytes / 1024)} KiB received). Off: the same build without OTEL_* variables, where the ` +
          'OpenTelemetry API answers with no-op spans and nothing is copied into messages.',
        '',
      );
    }
    const c64 = closed.find((c) => c.concurrency === 64);
    out.push(
      `- Target: streaming publish (Publish through the SDK) >= 85% of direct: ${verdict(st ? st.ratioToDirect64 >= 0.85 : undefined)}` +
        (st ? ` (${round(st.ratioToDirect64 * 100, 1)}%)` : ''),
      `- Target: publish >= 85% of direct at concurrency 64: ${verdict(c64 ? c64.ratio >= 0.85 : undefined)}` +
        (c64 ? ` (${pct(c64.gateway.opsPerSec, c64.direct.opsPerSec)}%)` : ''),
      `- Same target with the batch RPC (SendMessages): ${verdict(bt ? bt.ratioToDirect64 >= 0.85 : undefined)}` +
        (bt ? ` (${round(bt.ratioToDirect64 * 100, 1)}%)` : ''),
      `- Target: added latency <= 0.3 ms p50 / <= 1 ms p99 at ${OPEN_RATE} msgs/s: ${verdict(
        o ? o.addedP50Ms <= 0.3 && o.addedP99Ms <= 1 : undefined,
      )}${o ? ` (${o.addedP50Ms} / ${o.addedP99Ms} ms)` : ''}`,
      '',
    );
    if (r.broker === 'memory') {
      out.push(
        'On memory:// the direct path is a function call into the embedded broker in the same process, so the ratio ' +
          'measures the whole gRPC round trip against an in-process call; `npm run bench -- ceiling` compares the ' +
          'gateway with a no-op server on the same gRPC stack instead.',
        '',
      );
    }
  }
  return out.join('\n');
}

export async function run(): Promise<void> {
  const rows: BrokerRow[] = [];
  for (const kind of chosenBrokers()) {
    const t = await resolveTarget(kind);
    if (!isTarget(t)) {
      console.log(`${kind}: not measured: ${t.notMeasured}`);
      rows.push({ broker: kind, notMeasured: t.notMeasured });
      continue;
    }
    try {
      rows.push(await measureBroker(t));
    } catch (err) {
      const why = `bench failed: ${(err as Error).message.split('\n')[0]}`;
      console.log(`${kind}: not measured: ${why}`);
      rows.push({ broker: kind, notMeasured: why });
    }
  }
  const { mdPath } = await writeResults('publish', { machine: machineInfo(), rows }, markdown(rows));
  console.log(`wrote ${mdPath}`);
}
