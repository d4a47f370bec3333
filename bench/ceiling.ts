/**
 * How close the gateway on memory:// gets to its gRPC stack's ceiling: the same SendMessage load
 * at concurrency 64 against (a) a no-op grpc-js server with the gateway's options, (b) a no-op
 * Connect for Node server, (c) the gateway. Each is its own process; the load generator is the
 * bench process, the same for all three. Rounds alternate the servers so drifting machine load
 * hits them alike.
 */
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { decodeResponse, encodeRequest, H2GrpcClient } from './lib/h2grpc.js';
import { closedLoop, fmt, rawClient, round, unary } from './lib/load.js';
import { type GatewayProcess, startGatewayProcess, startTsServer } from './lib/processes.js';
import { type CpuWindow, NOISE_NOTE, pct, profileArgs, verdict, withCpu } from './lib/report.js';
import { machineInfo, machineMarkdown, markdownTable, writeResults } from './lib/results.js';

export const description = 'gateway on memory:// vs a no-op server on grpc-js and on Connect for Node (c=64)';

const CONCURRENCY = 64;
const DURATION_MS = Number(process.env.BENCH_CELL_MS ?? 5000);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 2);
const BODY = randomBytes(1024);
const NOOP = fileURLToPath(new URL('./lib/noop-server.ts', import.meta.url));

type ServerName = 'noop grpc-js' | 'noop connect-node' | 'gateway (memory://)';

interface Target {
  name: ServerName;
  pid: number;
  port: number;
  producerId: string;
  close(): Promise<void>;
}

interface Totals {
  ops: number;
  errors: number;
  firstError: string | undefined;
  wallMs: number;
  serverCpuMs: number;
  clientCpuMs: number;
  p50s: number[];
  p99s: number[];
}

async function startTargets(): Promise<Target[]> {
  const targets: Target[] = [];
  try {
    for (const mode of ['grpc-js', 'connect'] as const) {
      const s = await startTsServer(NOOP, [mode]);
      targets.push({
        name: mode === 'grpc-js' ? 'noop grpc-js' : 'noop connect-node',
        pid: s.pid,
        port: s.port,
        producerId: 'noop',
        close: () => s.close(),
      });
    }
    const gw: GatewayProcess = await startGatewayProcess({
      env: { BROKERS: 'memory://' },
      nodeArgs: profileArgs(),
    });
    const c = rawClient(gw.grpcPort);
    try {
      const created = await unary<{ producer_id: string }>(c, 'CreateProducer', { topic: 'bench-ceiling' });
      targets.push({
        name: 'gateway (memory://)',
        pid: gw.pid,
        port: gw.grpcPort,
        producerId: created.producer_id,
        close: () => gw.close(),
      });
    } finally {
      c.close();
    }
  } catch (err) {
    await Promise.all(targets.map((t) => t.close()));
    throw err;
  }
  return targets;
}

export async function run(): Promise<void> {
  const targets = await startTargets();
  const clients = new Map<ServerName, H2GrpcClient>();
  const totals = new Map<ServerName, Totals>();
  try {
    const frames = new Map<ServerName, Buffer>();
    for (const t of targets) {
      const client = new H2GrpcClient(t.port);
      clients.set(t.name, client);
      const frame = encodeRequest('SendMessage', {
        producer_id: t.producerId,
        message_body_bytes: BODY,
        tag: 'bench',
      });
      frames.set(t.name, frame);
      // Each server must answer a real SendMessageResponse, or its number would mean nothing.
      const res = decodeResponse<{ success: boolean; message_id: string }>(
        'SendMessage',
        await client.unary('SendMessage', frame),
      );
      if (!res.success || res.message_id.length === 0) {
        throw new Error(`${t.name} answered ${JSON.stringify(res)}, not a SendMessageResponse`);
      }
      totals.set(t.name, {
        ops: 0,
        errors: 0,
        firstError: undefined,
        wallMs: 0,
        serverCpuMs: 0,
        clientCpuMs: 0,
        p50s: [],
        p99s: [],
      });
    }
    for (let round_ = 0; round_ < ROUNDS; round_++) {
      for (const t of targets) {
        const client = clients.get(t.name) as H2GrpcClient;
        const frame = frames.get(t.name) as Buffer;
        const [r, cpu]: [Awaited<ReturnType<typeof closedLoop>>, CpuWindow] = await withCpu(t.pid, () =>
          closedLoop(() => client.unary('SendMessage', frame), {
            concurrency: CONCURRENCY,
            durationMs: DURATION_MS,
            warmupMs: 1000,
          }),
        );
        const tot = totals.get(t.name) as Totals;
        tot.ops += r.ops;
        tot.errors += r.errors;
        tot.firstError ??= r.firstError;
        // Only the measured window's share of CPU: warm-up is excluded from ops, so scale.
        const share = r.elapsedMs / cpu.wallMs;
        tot.wallMs += r.elapsedMs;
        tot.serverCpuMs += cpu.serverCpuMs * share;
        tot.clientCpuMs += cpu.clientCpuMs * share;
        tot.p50s.push(r.p50Ms);
        tot.p99s.push(r.p99Ms);
        console.log(
          `round ${round_ + 1} ${t.name}: ${fmt(r.opsPerSec)}/s p50 ${round(r.p50Ms, 3)} p99 ${round(r.p99Ms, 3)} ms, ` +
            `server CPU ${fmt((cpu.serverCpuMs * share * 1000) / Math.max(1, r.ops), 1)} µs/msg`,
        );
      }
    }
  } finally {
    await Promise.all([...clients.values()].map((c) => c.close()));
    await Promise.all(targets.map((t) => t.close()));
  }
  const rows = [...totals].map(([name, t]) => ({
    server: name,
    msgsPerSec: round((t.ops / t.wallMs) * 1000, 1),
    p50Ms: round(Math.max(...t.p50s), 3),
    p99Ms: round(Math.max(...t.p99s), 3),
    serverCpuUsPerMsg: round((t.serverCpuMs * 1000) / Math.max(1, t.ops), 1),
    serverCpuPercent: pct(t.serverCpuMs, t.wallMs),
    clientCpuUsPerMsg: round((t.clientCpuMs * 1000) / Math.max(1, t.ops), 1),
    clientCpuPercent: pct(t.clientCpuMs, t.wallMs),
    errors: t.errors,
    firstError: t.firstError,
  }));
  const by = (n: ServerName) => rows.find((r) => r.server === n);
  const noop = by('noop grpc-js');
  const connect = by('noop connect-node');
  const gw = by('gateway (memory://)');
  const throughputShare = noop && gw ? pct(gw.msgsPerSec, noop.msgsPerSec) : Number.NaN;
  const cpuShare = noop && gw ? pct(noop.serverCpuUsPerMsg, gw.serverCpuUsPerMsg) : Number.NaN;
  const json = {
    machine: machineInfo(),
    concurrency: CONCURRENCY,
    durationMsPerRound: DURATION_MS,
    rounds: ROUNDS,
    rows,
    gatewayPercentOfCeiling: { throughput: throughputShare, cpuPerMessage: cpuShare },
    connectVsGrpcJs:
      noop && connect
        ? {
            throughputPercent: pct(connect.msgsPerSec, noop.msgsPerSec),
            cpuPerMsgPercent: pct(connect.serverCpuUsPerMsg, noop.serverCpuUsPerMsg),
          }
        : undefined,
  };
  const md = [
    '# Ceiling: the gateway against a no-op server on the same gRPC stack',
    '',
    `SendMessage with a 1 KiB body at concurrency ${CONCURRENCY}, ${ROUNDS} rounds of ${DURATION_MS / 1000} s per server ` +
      '(after 1 s warm-up each), servers alternating. Every server is its own process: the no-op grpc-js server uses the ' +
      "gateway's Server options and proto definition and answers a constant SendMessageResponse; the no-op Connect for " +
      'Node server (@connectrpc/connect-node 2.1.1, gRPC protocol over node:http2, messages described at run time with ' +
      '@bufbuild/protobuf reflection) does the same; the gateway runs `node dist/cli.js serve` on memory://. The load ' +
      'generator is the bench process (a minimal gRPC client on node:http2, one connection, pre-encoded request), the ' +
      'same for all three. Cores: the server process and the bench process share the 2 cores under the OS scheduler.',
    '',
    NOISE_NOTE,
    '',
    machineMarkdown(json.machine),
    '',
    markdownTable(
      [
        'server',
        'msgs/s',
        'p50 ms (worst round)',
        'p99 ms (worst round)',
        'server CPU µs/msg',
        'server CPU %',
        'bench CPU µs/msg',
        'bench CPU %',
        'errors',
      ],
      rows.map((r) => [
        r.server,
        fmt(r.msgsPerSec),
        r.p50Ms,
        r.p99Ms,
        r.serverCpuUsPerMsg,
        `${r.serverCpuPercent}%`,
        r.clientCpuUsPerMsg,
        `${r.clientCpuPercent}%`,
        r.errors,
      ]),
    ),
    '',
    `- Gateway on memory:// as a share of the grpc-js no-op ceiling: ${throughputShare}% of its throughput; ` +
      `${cpuShare}% by server CPU per message (no-op µs/msg ÷ gateway µs/msg, what a server-bound run would show).`,
    `- Target: gateway on memory >= 80% of the no-op ceiling: ${verdict(Number.isFinite(throughputShare) ? throughputShare >= 80 : undefined)} by throughput, ` +
      `${verdict(Number.isFinite(cpuShare) ? cpuShare >= 80 : undefined)} by CPU per message.`,
    connect && noop
      ? `- Connect for Node vs grpc-js (no-op servers): ${json.connectVsGrpcJs?.throughputPercent}% of the throughput at ` +
        `${json.connectVsGrpcJs?.cpuPerMsgPercent}% of the server CPU per message.`
      : '- Connect for Node: not measured.',
    '',
    "When the bench CPU per message is close to the server's, the load generator shares the limit: the throughput ratio " +
      'then understates the gap and the CPU-per-message ratio is the better estimate of the server-bound ceiling.',
    '',
  ].join('\n');
  const { mdPath } = await writeResults('ceiling', json, md);
  console.log(`wrote ${mdPath}`);
}
