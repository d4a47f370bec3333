/**
 * Draining a pre-filled topic: CreateConsumer + ReceiveMessages + AckMessage through the gateway
 * (its own process) against the broker's own subscription opened in the bench process, same
 * message count and body size, in the same run.
 */
import { randomBytes } from 'node:crypto';
import type { Broker, Delivery, Producer, Subscription } from '../src/brokers/broker.js';
import { openBroker } from '../src/brokers/index.js';
import { decodeResponse, encodeRequest, H2GrpcClient } from './lib/h2grpc.js';
import { fmt, type RawClient, rawClient, round, unary } from './lib/load.js';
import { type GatewayProcess, loadSdk, startGatewayProcess } from './lib/processes.js';
import { NOISE_NOTE, pct, profileArgs, verdict, withCpu } from './lib/report.js';
import { machineInfo, machineMarkdown, markdownTable, writeResults } from './lib/results.js';
import { type BrokerKind, chosenBrokers, isTarget, resolveTarget, type Target } from './lib/targets.js';

export const description =
  'drain a pre-filled topic through the gateway (Receive + Ack) vs the broker directly';

const MESSAGES = Number(process.env.BENCH_CONSUME_MESSAGES ?? 20_000);
const BUFFER = 256;
const STALL_MS = 60_000;
const BODY = randomBytes(1024);

interface Drain {
  messages: number;
  /** From the first message received to the last ack answered. */
  elapsedMs: number;
  msgsPerSec: number;
  serverCpuMs: number;
  clientCpuMs: number;
}

interface Row {
  broker: BrokerKind;
  notMeasured?: string;
  gateway?: Drain;
  /** The same drain acking with AckMessages, up to ACK_BATCH receipt handles per call. */
  gatewayBatchAck?: Drain;
  direct?: Drain;
  /** The SDK's consumer on Subscribe: credit, batched deliveries, in-stream acks. */
  gatewayStream?: Drain;
  ratio?: number;
  batchRatio?: number;
  streamRatio?: number;
}

const ACK_BATCH = 64;

/** Resolves when `isDone()`; rejects when `progress()` has not moved for STALL_MS. */
async function until(isDone: () => boolean, progress: () => number, what: string): Promise<void> {
  let last = progress();
  let lastAt = Date.now();
  while (!isDone()) {
    await new Promise((r) => setTimeout(r, 20));
    const p = progress();
    if (p !== last) {
      last = p;
      lastAt = Date.now();
    } else if (Date.now() - lastAt > STALL_MS) {
      throw new Error(`${what}: stalled at ${p} of ${MESSAGES} for ${STALL_MS / 1000} s`);
    }
  }
}

async function viaGateway(target: Target, gateway: GatewayProcess, batchAck: boolean): Promise<Drain> {
  const topic = await target.topic();
  const group = await target.group();
  const client: RawClient = rawClient(gateway.grpcPort);
  const h2 = new H2GrpcClient(gateway.grpcPort);
  let stream: ReturnType<H2GrpcClient['serverStream']> | undefined;
  let consumerId: string | undefined;
  try {
    const { consumer_id } = await unary<{ consumer_id: string }>(client, 'CreateConsumer', {
      topic,
      group_id: group,
      tag_expression: '*',
      start: fromStart(target) ?? '',
    });
    consumerId = consumer_id;
    const { producer_id } = await unary<{ producer_id: string }>(client, 'CreateProducer', { topic });
    const send = encodeRequest('SendMessage', { producer_id, message_body_bytes: BODY, tag: 'bench' });
    let sent = 0;
    const filler = async (): Promise<void> => {
      while (sent < MESSAGES) {
        sent++;
        await h2.unary('SendMessage', send);
      }
    };
    await Promise.all(Array.from({ length: 64 }, filler));
    let received = 0;
    let acked = 0;
    let failed: Error | undefined;
    let first = 0;
    let last = 0;
    let pending: string[] = [];
    let flushTimer: NodeJS.Timeout | undefined;
    // Batched acks go out when ACK_BATCH handles are waiting, or 1 ms after the first of a batch.
    const flush = (): void => {
      if (flushTimer) clearTimeout(flushTimer);
      flushTimer = undefined;
      const handles = pending;
      pending = [];
      if (handles.length === 0) return;
      h2.unary('AckMessages', encodeRequest('AckMessages', { consumer_id, receipt_handles: handles })).then(
        () => {
          acked += handles.length;
          if (acked >= MESSAGES) last = performance.now();
        },
        (err: Error) => {
          failed ??= err;
        },
      );
    };
    const [, cpu] = await withCpu(gateway.pid, async () => {
      stream = h2.serverStream(
        'ReceiveMessages',
        encodeRequest('ReceiveMessages', { consumer_id }),
        (body) => {
          const m = decodeResponse<{ receipt_handle: string }>('ReceiveMessages', body);
          if (received++ === 0) first = performance.now();
          if (batchAck) {
            pending.push(m.receipt_handle);
            if (pending.length >= ACK_BATCH) flush();
            else flushTimer ??= setTimeout(flush, 1);
            return;
          }
          h2.unary(
            'AckMessage',
            encodeRequest('AckMessage', { consumer_id, receipt_handle: m.receipt_handle }),
          ).then(
            () => {
              if (++acked === MESSAGES) last = performance.now();
            },
            (err: Error) => {
              failed ??= err;
            },
          );
        },
      );
      stream.done.catch((err: Error) => {
        failed ??= err;
      });
      await until(
        () => acked >= MESSAGES || failed !== undefined,
        () => acked,
        'gateway drain',
      );
    });
    if (failed) throw failed;
    const elapsedMs = last - first;
    return {
      messages: acked,
      elapsedMs: round(elapsedMs),
      msgsPerSec: round((acked / elapsedMs) * 1000, 1),
      serverCpuMs: cpu.serverCpuMs,
      clientCpuMs: round(cpu.clientCpuMs),
    };
  } finally {
    stream?.cancel();
    if (consumerId) await unary(client, 'CleanupConsumer', { consumer_id: consumerId }).catch(() => {});
    client.close();
    await h2.close();
  }
}

/** The SDK's consumer (Subscribe) drains the topic with `for await` + `await m.ack()`. */
async function viaStream(target: Target, gateway: GatewayProcess): Promise<Drain> {
  const topic = await target.topic();
  const group = await target.group();
  const sdk = await loadSdk();
  const client = new sdk.MQClient({ grpcEndpoint: `127.0.0.1:${gateway.grpcPort}` });
  try {
    const start = fromStart(target);
    const consumer = await client.getConsumer('', topic, group, '*', { prefetch: BUFFER, start });
    const producer = await client.getProducer('', topic);
    let sent = 0;
    await Promise.all(
      Array.from({ length: 1000 }, async () => {
        while (sent < MESSAGES) {
          sent++;
          await producer.publishMessage(BODY, 'bench');
        }
      }),
    );
    let got = 0;
    let first = 0;
    let last = 0;
    const [, cpu] = await withCpu(gateway.pid, async () => {
      const drain = (async () => {
        for await (const m of consumer) {
          if (got++ === 0) first = performance.now();
          await m.ack();
          if (got >= MESSAGES) {
            last = performance.now();
            break;
          }
        }
      })();
      let failed: unknown;
      drain.catch((err: unknown) => {
        failed = err;
      });
      await until(
        () => got >= MESSAGES || failed !== undefined,
        () => got,
        'SDK stream drain',
      );
      if (failed) throw failed;
      await drain;
    });
    const elapsedMs = last - first;
    return {
      messages: got,
      elapsedMs: round(elapsedMs),
      msgsPerSec: round((got / elapsedMs) * 1000, 1),
      serverCpuMs: cpu.serverCpuMs,
      clientCpuMs: round(cpu.clientCpuMs),
    };
  } finally {
    await client.close();
  }
}

/**
 * Every path subscribes before the fill, but a Kafka group's partitions can be assigned after the
 * first sends, which a new group's default start (latest) would skip; so the group starts at the
 * earliest message. RocketMQ takes no start from a client: the bench's groups are created with the
 * broker-side setting that starts them at the oldest message.
 */
function fromStart(target: Target): 'earliest' | undefined {
  return target.kind === 'rocketmq' ? undefined : 'earliest';
}

async function direct(target: Target): Promise<Drain> {
  const topic = await target.topic();
  const group = await target.group();
  let broker: Broker | undefined;
  let producer: Producer | undefined;
  let sub: Subscription | undefined;
  try {
    broker = await openBroker(target.url);
    const start = fromStart(target);
    sub = await broker.subscribe({ topic, group, maxInFlight: BUFFER, start });
    producer = await broker.producer(topic);
    const p = producer;
    let sent = 0;
    const filler = async (): Promise<void> => {
      while (sent < MESSAGES) {
        sent++;
        await p.send({ body: BODY, tag: 'bench' });
      }
    };
    await Promise.all(Array.from({ length: 64 }, filler));
    let acked = 0;
    let failed: Error | undefined;
    let first = 0;
    let last = 0;
    let received = 0;
    const s = sub;
    const [, cpu] = await withCpu(undefined, async () => {
      const loop = (async () => {
        for await (const d of s as AsyncIterable<Delivery>) {
          if (received++ === 0) first = performance.now();
          // Acks go out without waiting, as the gateway client's do; maxInFlight bounds them.
          d.ack().then(
            () => {
              if (++acked === MESSAGES) last = performance.now();
            },
            (err: Error) => {
              failed ??= err;
            },
          );
          if (received >= MESSAGES) return;
        }
      })();
      loop.catch((err: Error) => {
        failed ??= err;
      });
      await until(
        () => acked >= MESSAGES || failed !== undefined,
        () => acked,
        'direct drain',
      );
    });
    if (failed) throw failed;
    const elapsedMs = last - first;
    return {
      messages: acked,
      elapsedMs: round(elapsedMs),
      msgsPerSec: round((acked / elapsedMs) * 1000, 1),
      serverCpuMs: 0,
      clientCpuMs: round(cpu.clientCpuMs),
    };
  } finally {
    await sub?.close().catch(() => {});
    await producer?.close().catch(() => {});
    await broker?.close().catch(() => {});
  }
}

async function measure(target: Target): Promise<Row> {
  const gateway = await startGatewayProcess({
    env: { BROKERS: target.url, MESSAGE_BUFFER_SIZE: String(BUFFER) },
    nodeArgs: profileArgs(),
  });
  try {
    const g = await viaGateway(target, gateway, false);
    const gb = await viaGateway(target, gateway, true);
    const gs = await viaStream(target, gateway);
    const d = await direct(target);
    const row = {
      broker: target.kind,
      gateway: g,
      gatewayBatchAck: gb,
      gatewayStream: gs,
      direct: d,
      ratio: round(g.msgsPerSec / d.msgsPerSec, 3),
      batchRatio: round(gb.msgsPerSec / d.msgsPerSec, 3),
      streamRatio: round(gs.msgsPerSec / d.msgsPerSec, 3),
    };
    console.log(
      `${target.kind}: gateway ${fmt(g.msgsPerSec)}/s | with AckMessages ${fmt(gb.msgsPerSec)}/s | Subscribe (SDK) ${fmt(gs.msgsPerSec)}/s | direct ${fmt(d.msgsPerSec)}/s | ratio ${row.ratio} / ${row.batchRatio} / ${row.streamRatio}`,
    );
    return row;
  } finally {
    await gateway.close();
  }
}

function markdown(rows: Row[]): string {
  const m = machineInfo();
  const out = [
    '# Consume: draining a pre-filled topic',
    '',
    `${fmt(MESSAGES)} messages of 1 KiB are published first, then drained. Gateway: one CreateConsumer session ` +
      `(MESSAGE_BUFFER_SIZE=${BUFFER}) created before the fill, one ReceiveMessages stream, and one AckMessage per ` +
      'message sent as soon as it arrives (not awaited one by one), from the bench process over one HTTP/2 connection ' +
      '(minimal node:http2 gRPC client). Direct: the same adapter subscribed in the bench process ' +
      `(maxInFlight ${BUFFER}, start earliest where the broker takes one), acking each delivery as it arrives. Rate = messages ÷ time from the first ` +
      'message received to the last ack answered. Cores: the gateway and the bench process share the 2 cores under the ' +
      'OS scheduler.',
    '',
    NOISE_NOTE,
    '',
    machineMarkdown(m),
    '',
  ];
  const measured = rows.filter((r) => r.gateway && r.direct);
  if (measured.length > 0) {
    out.push(
      markdownTable(
        [
          'broker',
          'gateway msgs/s',
          `gateway + AckMessages (${ACK_BATCH}/call) msgs/s`,
          'direct msgs/s',
          'Subscribe (SDK) msgs/s',
          'gateway/direct',
          'with AckMessages/direct',
          'Subscribe/direct',
          'gateway CPU µs/msg',
          'gateway CPU µs/msg with AckMessages',
          'gateway CPU µs/msg on Subscribe',
          'target >= 85%',
        ],
        measured.map((r) => {
          const g = r.gateway as Drain;
          const d = r.direct as Drain;
          const gb = r.gatewayBatchAck as Drain;
          const gs = r.gatewayStream as Drain;
          return [
            r.broker,
            fmt(g.msgsPerSec),
            fmt(gb.msgsPerSec),
            fmt(d.msgsPerSec),
            fmt(gs.msgsPerSec),
            `${pct(g.msgsPerSec, d.msgsPerSec)}%`,
            `${pct(gb.msgsPerSec, d.msgsPerSec)}%`,
            `${pct(gs.msgsPerSec, d.msgsPerSec)}%`,
            fmt((g.serverCpuMs * 1000) / g.messages, 1),
            fmt((gb.serverCpuMs * 1000) / gb.messages, 1),
            fmt((gs.serverCpuMs * 1000) / gs.messages, 1),
            `${verdict((r.ratio ?? 0) >= 0.85)} / with AckMessages ${verdict((r.batchRatio ?? 0) >= 0.85)} / Subscribe ${verdict((r.streamRatio ?? 0) >= 0.85)}`,
          ];
        }),
      ),
      '',
    );
  }
  for (const r of rows) if (r.notMeasured) out.push(`- ${r.broker}: not measured: ${r.notMeasured}`);
  out.push(
    '',
    'On memory:// the direct path is the embedded broker in the bench process (no network at all), so the ratio is ' +
      'the whole gRPC stream-and-ack path against in-process calls; it is reported, but the target is meant for network brokers.',
    '',
  );
  return out.join('\n');
}

export async function run(): Promise<void> {
  const rows: Row[] = [];
  for (const kind of chosenBrokers()) {
    const t = await resolveTarget(kind);
    if (!isTarget(t)) {
      console.log(`${kind}: not measured: ${t.notMeasured}`);
      rows.push({ broker: kind, notMeasured: t.notMeasured });
      continue;
    }
    try {
      rows.push(await measure(t));
    } catch (err) {
      const why = `bench failed: ${(err as Error).message.split('\n')[0]}`;
      console.log(`${kind}: not measured: ${why}`);
      rows.push({ broker: kind, notMeasured: why });
    }
  }
  const { mdPath } = await writeResults(
    'consume',
    { machine: machineInfo(), messages: MESSAGES, rows },
    markdown(rows),
  );
  console.log(`wrote ${mdPath}`);
}
