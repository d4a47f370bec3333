/**
 * `npm run memtest`: memory and handle behaviour of the GATEWAY process (not of this client),
 * read through its /metrics. The gateway runs from dist/ with a SIGUSR2 hook that forces a full
 * GC (lib/processes.ts), so every "after" figure is heap-after-GC.
 *
 * Phases on one gateway with short reaper timeouts: (A) CreateProducer + CleanupProducer cycles,
 * (B) consumer create / stream one message / ack / close cycles, (C) producers and sessions
 * abandoned to the reapers. Then, on a second gateway with default timeouts, the idle cost of a
 * consumer session and of a producer handle.
 */
import { randomUUID } from 'node:crypto';
import { decodeResponse, encodeRequest, H2GrpcClient } from './lib/h2grpc.js';
import { fmt, round, slope } from './lib/load.js';
import { type GatewayProcess, startGatewayProcess } from './lib/processes.js';
import { verdict } from './lib/report.js';
import { machineInfo, machineMarkdown, markdownTable, writeResults } from './lib/results.js';

const SCALE = Number(process.env.MEMTEST_SCALE ?? 1);
const PRODUCER_CYCLES = Math.round(100_000 * SCALE);
const CONSUMER_CYCLES = Math.round(10_000 * SCALE);
const ABANDONED = Math.round(10_000 * SCALE);
const IDLE_SESSIONS = 2_000;
const IDLE_HANDLES = 5_000;
const REAP_AFTER = '4s';
/**
 * Longer than the broker's visibility timeout (ACK_TIMEOUT + 1 s): the embedded broker's
 * scheduler drops a closed subscription's cancelled timeout entry only when it falls due, so
 * until then the entry still holds the subscription.
 */
const ACK_TIMEOUT = '4s';
const SETTLE_MS = 8_000;
const MIB = 1024 * 1024;

interface Snapshot {
  rss: number;
  heap: number;
  handles: Record<string, number>;
  handlesTotal: number;
  producerHandles: number;
  sessions: number;
  streams: number;
  producerLeaks: number;
  consumerLeaks: number;
}

async function snapshot(gw: GatewayProcess, gc = true): Promise<Snapshot> {
  if (gc) await gw.gc();
  const m = await gw.metrics();
  const handles = (m.active_handles ?? {}) as Record<string, number>;
  const num = (k: string): number => {
    const v = m[k];
    if (typeof v !== 'number') throw new Error(`/metrics has no numeric field "${k}"`);
    return v;
  };
  return {
    rss: num('rss_bytes'),
    heap: num('heap_used_bytes'),
    handles,
    handlesTotal: Object.values(handles).reduce((a, b) => a + b, 0),
    producerHandles: num('producer_handles'),
    sessions: num('active_consumers'),
    streams: num('active_streams'),
    producerLeaks: num('producer_leak_detections'),
    consumerLeaks: num('consumer_leak_detections'),
  };
}

/** Samples /metrics (no GC) in the background to catch the peak. */
function peakSampler(gw: GatewayProcess): { stop(): Promise<{ rss: number; heap: number }> } {
  let rss = 0;
  let heap = 0;
  let running = true;
  const loop = (async () => {
    while (running) {
      try {
        const s = await snapshot(gw, false);
        rss = Math.max(rss, s.rss);
        heap = Math.max(heap, s.heap);
      } catch {
        // a missed sample only lowers the peak's resolution
      }
      await new Promise((r) => setTimeout(r, 250));
    }
  })();
  return {
    async stop() {
      running = false;
      await loop;
      return { rss, heap };
    },
  };
}

/** Runs `total` cycles on `concurrency` workers; every `sampleEvery` cycles records heap-after-GC. */
async function cycles(
  gw: GatewayProcess,
  total: number,
  concurrency: number,
  sampleEvery: number,
  cycle: (worker: number) => Promise<void>,
): Promise<Array<[number, number]>> {
  const samples: Array<[number, number]> = [];
  const pending: Array<Promise<void>> = [];
  let started = 0;
  let done = 0;
  let failure: unknown;
  const worker = async (w: number): Promise<void> => {
    while (started < total && failure === undefined) {
      started++;
      try {
        await cycle(w);
      } catch (err) {
        // Stop every worker, then report the first failure once all have returned.
        failure ??= err;
        return;
      }
      done++;
      if (done % sampleEvery === 0) {
        const at = done;
        pending.push(snapshot(gw).then((s) => void samples.push([at, s.heap])));
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, (_, w) => worker(w)));
  await Promise.all(pending);
  if (failure !== undefined) throw new Error(`cycle ${done + 1} of ${total} failed`, { cause: failure });
  return samples.sort((a, b) => a[0] - b[0]);
}

async function waitFor(
  gw: GatewayProcess,
  what: string,
  ok: (s: Snapshot) => boolean,
  timeoutMs: number,
): Promise<Snapshot> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const s = await snapshot(gw, false);
    if (ok(s)) return s;
    if (Date.now() > deadline)
      throw new Error(`${what}: not reached within ${timeoutMs / 1000} s: ${JSON.stringify(s)}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

interface PhaseResult {
  name: string;
  cycles: number;
  seconds: number;
  before: Snapshot;
  peak: { rss: number; heap: number };
  after: Snapshot;
  heapSlopeBytesPerCycle: number | undefined;
  /** Fitted heap growth over the whole phase (slope x cycles). */
  fittedGrowthBytes: number | undefined;
  leakDelta: { producer: number; consumer: number };
  expectedLeaks: { producer: number; consumer: number };
  samples: Array<[number, number]>;
}

async function phase(
  gw: GatewayProcess,
  name: string,
  count: number,
  expectedLeaks: { producer: number; consumer: number },
  body: () => Promise<Array<[number, number]>>,
): Promise<PhaseResult> {
  const before = await snapshot(gw);
  const sampler = peakSampler(gw);
  const t0 = performance.now();
  const samples = await body();
  const seconds = (performance.now() - t0) / 1000;
  await waitFor(
    gw,
    `${name}: resources released`,
    (s) =>
      s.producerHandles === 0 &&
      s.sessions === 0 &&
      s.streams === 0 &&
      s.producerLeaks - before.producerLeaks >= expectedLeaks.producer &&
      s.consumerLeaks - before.consumerLeaks >= expectedLeaks.consumer,
    120_000,
  );
  const peak = await sampler.stop();
  await new Promise((r) => setTimeout(r, SETTLE_MS));
  const after = await snapshot(gw);
  const sl = samples.length >= 3 ? slope(samples) : undefined;
  const result: PhaseResult = {
    name,
    cycles: count,
    seconds: round(seconds, 1),
    before,
    peak,
    after,
    heapSlopeBytesPerCycle: sl === undefined ? undefined : round(sl, 3),
    fittedGrowthBytes: sl === undefined ? undefined : Math.round(sl * count),
    leakDelta: {
      producer: after.producerLeaks - before.producerLeaks,
      consumer: after.consumerLeaks - before.consumerLeaks,
    },
    expectedLeaks,
    samples,
  };
  console.log(
    `${name}: ${fmt(count)} in ${result.seconds} s; heap ${mib(before.heap)} -> peak ${mib(peak.heap)} -> ${mib(after.heap)} MiB; ` +
      `rss ${mib(before.rss)} -> peak ${mib(peak.rss)} -> ${mib(after.rss)} MiB; handles ${before.handlesTotal} -> ${after.handlesTotal}; ` +
      `slope ${result.heapSlopeBytesPerCycle ?? 'n/a'} B/cycle; leaks +${result.leakDelta.producer}/+${result.leakDelta.consumer}`,
  );
  return result;
}

const mib = (b: number): string => (b / MIB).toFixed(1);

/** Fails a stuck step by name instead of letting the reapers silently take its resources. */
async function step<T>(what: string, p: Promise<T>, ms = 15_000): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms / 1000} s`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

async function lifecycle(): Promise<PhaseResult[]> {
  const gw = await startGatewayProcess({
    gcSignal: true,
    env: {
      BROKERS: 'memory://',
      PRODUCER_HANDLE_TTL: REAP_AFTER,
      PRODUCER_CLEANUP_TIMEOUT: REAP_AFTER,
      CONSUMER_CLEANUP_TIMEOUT: REAP_AFTER,
      ACK_TIMEOUT,
      MAX_PRODUCERS_PER_CALLER: String(ABANDONED * 2),
      MAX_CONSUMERS_PER_CALLER: String(ABANDONED * 2),
      // 10,000 leak warnings would only cost the bench parsing time.
    },
  });
  const h2 = new H2GrpcClient(gw.grpcPort);
  const call = async <T>(method: string, req: object): Promise<T> =>
    decodeResponse<T>(method, await h2.unary(method, encodeRequest(method, req)));
  const results: PhaseResult[] = [];
  try {
    // Connect before the first snapshot so the connection is part of every baseline.
    await call('HealthCheck', {});
    const createP = encodeRequest('CreateProducer', { topic: 'memtest-p' });
    results.push(
      await phase(
        gw,
        'A: CreateProducer + CleanupProducer',
        PRODUCER_CYCLES,
        { producer: 0, consumer: 0 },
        () =>
          cycles(gw, PRODUCER_CYCLES, 16, PRODUCER_CYCLES / 10, async () => {
            const { producer_id } = decodeResponse<{ producer_id: string }>(
              'CreateProducer',
              await h2.unary('CreateProducer', createP),
            );
            await h2.unary('CleanupProducer', encodeRequest('CleanupProducer', { producer_id }));
          }),
      ),
    );

    const WORKERS = 8;
    let streamCycles = 0;
    const topics = Array.from({ length: WORKERS }, (_, w) => `memtest-c-${w}`);
    results.push(
      await phase(
        gw,
        'B: consumer create / stream / ack / close',
        CONSUMER_CYCLES,
        { producer: 0, consumer: 0 },
        async () => {
          const producers = await Promise.all(
            topics.map(
              async (topic) => (await call<{ producer_id: string }>('CreateProducer', { topic })).producer_id,
            ),
          );
          try {
            return await cycles(gw, CONSUMER_CYCLES, WORKERS, CONSUMER_CYCLES / 10, async (w) => {
              const topic = topics[w] as string;
              const { consumer_id } = await step(
                'CreateConsumer',
                call<{ consumer_id: string }>('CreateConsumer', {
                  topic,
                  group_id: `memtest-g-${w}`,
                  tag_expression: '*',
                }),
              );
              let gotOne!: (rh: string) => void;
              const got = new Promise<string>((resolve) => {
                gotOne = resolve;
              });
              const stream = h2.serverStream(
                'ReceiveMessages',
                encodeRequest('ReceiveMessages', { consumer_id }),
                (b) =>
                  gotOne(decodeResponse<{ receipt_handle: string }>('ReceiveMessages', b).receipt_handle),
              );
              stream.done.catch(() => {});
              const send = encodeRequest('SendMessage', {
                producer_id: producers[w],
                message_body: 'x'.repeat(100),
              });
              await step('SendMessage', h2.unary('SendMessage', send));
              const rh = await step('message on the ReceiveMessages stream', got);
              const ack = encodeRequest('AckMessage', { consumer_id, receipt_handle: rh });
              await step('AckMessage', h2.unary('AckMessage', ack));
              const cleanup = encodeRequest('CleanupConsumer', { consumer_id });
              // Most cycles close from the server side (CleanupConsumer ends the stream with OK).
              // Every 10th cancels from the client first: RST_STREAM faster than ~33/s for long
              // gets the connection a GOAWAY from Node's HTTP/2 rapid-reset guard.
              if (++streamCycles % 10 === 0) {
                stream.cancel();
                await step('ReceiveMessages stream closing after cancel', stream.done);
                await step('CleanupConsumer', h2.unary('CleanupConsumer', cleanup));
              } else {
                await step('CleanupConsumer', h2.unary('CleanupConsumer', cleanup));
                await step('ReceiveMessages stream ending after CleanupConsumer', stream.done);
              }
            });
          } finally {
            for (const producer_id of producers) await call('CleanupProducer', { producer_id });
          }
        },
      ),
    );

    results.push(
      await phase(
        gw,
        'C: abandoned producers and sessions',
        ABANDONED,
        { producer: ABANDONED, consumer: ABANDONED },
        async () => {
          let i = 0;
          const worker = async (): Promise<void> => {
            while (i < ABANDONED) {
              const n = i++;
              const topic = `memtest-a-${n % 100}`;
              await call('CreateProducer', { topic });
              await call('CreateConsumer', { topic, group_id: `memtest-ag-${n % 100}`, tag_expression: '*' });
            }
          };
          await Promise.all(Array.from({ length: 16 }, worker));
          return [];
        },
      ),
    );
  } finally {
    await h2.close();
    await gw.close();
  }
  return results;
}

interface IdleCost {
  sessions: number;
  bytesPerSession: number;
  handles: number;
  bytesPerHandle: number;
  topicsForHandles: number;
  bytesPerProducerOnOwnTopic: number;
}

async function idleCost(): Promise<IdleCost> {
  const gw = await startGatewayProcess({
    gcSignal: true,
    env: {
      BROKERS: 'memory://',
      MAX_PRODUCERS_PER_CALLER: String(IDLE_HANDLES * 2),
      MAX_CONSUMERS_PER_CALLER: String(IDLE_SESSIONS * 2),
    },
  });
  const h2 = new H2GrpcClient(gw.grpcPort);
  const call = async <T>(method: string, req: object): Promise<T> =>
    decodeResponse<T>(method, await h2.unary(method, encodeRequest(method, req)));
  const many = async <T>(n: number, f: (i: number) => Promise<T>): Promise<T[]> => {
    const out: T[] = [];
    let i = 0;
    await Promise.all(
      Array.from({ length: 16 }, async () => {
        while (i < n) {
          const k = i++;
          out[k] = await f(k);
        }
      }),
    );
    return out;
  };
  try {
    await call('HealthCheck', {});
    // Warm every code path once so lazily compiled code and caches are in the baseline.
    const warm = await call<{ consumer_id: string }>('CreateConsumer', {
      topic: 'idle-c',
      group_id: 'idle-g',
      tag_expression: '*',
    });
    await call('CleanupConsumer', { consumer_id: warm.consumer_id });
    const warmP = await call<{ producer_id: string }>('CreateProducer', { topic: 'idle-p' });
    await call('CleanupProducer', { producer_id: warmP.producer_id });

    const b0 = await snapshot(gw);
    const sessions = await many(IDLE_SESSIONS, () =>
      call<{ consumer_id: string }>('CreateConsumer', {
        topic: 'idle-c',
        group_id: 'idle-g',
        tag_expression: '*',
      }),
    );
    const s1 = await snapshot(gw);
    await many(sessions.length, (k) => call('CleanupConsumer', { consumer_id: sessions[k]?.consumer_id }));

    const b1 = await snapshot(gw);
    const handles = await many(IDLE_HANDLES, () =>
      call<{ producer_id: string }>('CreateProducer', { topic: 'idle-p' }),
    );
    const s2 = await snapshot(gw);
    await many(handles.length, (k) => call('CleanupProducer', { producer_id: handles[k]?.producer_id }));

    // A handle on its own topic also holds its own broker producer: shown for comparison.
    const OWN = 1000;
    const b2 = await snapshot(gw);
    const own = await many(OWN, (k) =>
      call<{ producer_id: string }>('CreateProducer', { topic: `idle-own-${k}` }),
    );
    const s3 = await snapshot(gw);
    await many(own.length, (k) => call('CleanupProducer', { producer_id: own[k]?.producer_id }));
    const cost = {
      sessions: IDLE_SESSIONS,
      bytesPerSession: Math.round((s1.heap - b0.heap) / IDLE_SESSIONS),
      handles: IDLE_HANDLES,
      bytesPerHandle: Math.round((s2.heap - b1.heap) / IDLE_HANDLES),
      topicsForHandles: 1,
      bytesPerProducerOnOwnTopic: Math.round((s3.heap - b2.heap) / OWN),
    };
    console.log(
      `idle: ${cost.bytesPerSession} B/session, ${cost.bytesPerHandle} B/producer handle (shared topic), ` +
        `${cost.bytesPerProducerOnOwnTopic} B/producer on its own topic`,
    );
    return cost;
  } finally {
    await h2.close();
    await gw.close();
  }
}

function sameHandles(a: Snapshot, b: Snapshot): boolean {
  const keys = new Set([...Object.keys(a.handles), ...Object.keys(b.handles)]);
  for (const k of keys) if ((a.handles[k] ?? 0) !== (b.handles[k] ?? 0)) return false;
  return true;
}

async function main(): Promise<void> {
  const id = randomUUID().slice(0, 8);
  console.log(
    `memtest ${id}: ${fmt(PRODUCER_CYCLES)} producer cycles, ${fmt(CONSUMER_CYCLES)} consumer cycles, ${fmt(ABANDONED)} abandoned`,
  );
  const phases = await lifecycle();
  const idle = await idleCost();
  const machine = machineInfo();
  const checks = phases.map((p) => {
    const rssOk = p.after.rss - p.before.rss <= 10 * MIB;
    // "~0": the fitted growth over the whole phase stays under 1 MiB.
    const slopeOk = p.fittedGrowthBytes === undefined ? undefined : Math.abs(p.fittedGrowthBytes) < MIB;
    const handlesOk = sameHandles(p.before, p.after);
    const leaksOk =
      p.leakDelta.producer === p.expectedLeaks.producer && p.leakDelta.consumer === p.expectedLeaks.consumer;
    return { phase: p.name, rssOk, slopeOk, handlesOk, leaksOk };
  });
  const md = [
    '# memtest: the gateway process under create/close churn and abandonment',
    '',
    'Measured in the GATEWAY process (`node dist/cli.js serve`, memory://) through its /metrics JSON. The bench starts it ' +
      'with `--expose-gc` and a `--import` hook that runs a full GC on SIGUSR2, so "before" and "after" are heap-after-GC ' +
      `(no change to the gateway). Reaper timeouts ${REAP_AFTER} (PRODUCER_HANDLE_TTL, PRODUCER_CLEANUP_TIMEOUT, ` +
      `CONSUMER_CLEANUP_TIMEOUT), ACK_TIMEOUT ${ACK_TIMEOUT}, per-caller limits raised to ${fmt(ABANDONED * 2)}. "After" is taken once every live count ` +
      `is back to 0 and the leak counters reached their expected values, plus ${SETTLE_MS / 1000} s of idle. Peak is the ` +
      'highest of /metrics samples every 250 ms (no GC). Slope: least squares of heap-after-GC over 10 samples per phase. ' +
      'The client is this bench process (node:http2 gRPC client, one connection held for the whole run).',
    '',
    machineMarkdown(machine),
    '',
    markdownTable(
      [
        'phase',
        'count',
        's',
        'heap MiB before / peak / after',
        'RSS MiB before / peak / after',
        'handles before / after',
        'heap slope B/cycle',
        'leak counters (got / expected)',
      ],
      phases.map((p) => [
        p.name,
        fmt(p.cycles),
        p.seconds,
        `${mib(p.before.heap)} / ${mib(p.peak.heap)} / ${mib(p.after.heap)}`,
        `${mib(p.before.rss)} / ${mib(p.peak.rss)} / ${mib(p.after.rss)}`,
        `${p.before.handlesTotal} / ${p.after.handlesTotal}`,
        p.heapSlopeBytesPerCycle ?? 'n/a',
        `${p.leakDelta.producer} / ${p.expectedLeaks.producer} producers, ${p.leakDelta.consumer} / ${p.expectedLeaks.consumer} sessions`,
      ]),
    ),
    '',
    markdownTable(
      [
        'phase',
        'RSS within 10 MiB of before',
        'heap slope ~0 (fitted growth < 1 MiB)',
        'active handles = before',
        'leak counters exact',
      ],
      checks.map((c) => [
        c.phase,
        verdict(c.rssOk),
        verdict(c.slopeOk),
        verdict(c.handlesOk),
        verdict(c.leaksOk),
      ]),
    ),
    '',
    '## Idle cost (second gateway, default timeouts)',
    '',
    markdownTable(
      ['resource', 'count', 'heap bytes each', 'target', 'verdict'],
      [
        [
          'idle consumer session (one topic, one group)',
          idle.sessions,
          fmt(idle.bytesPerSession),
          '<= 10 KB',
          verdict(idle.bytesPerSession <= 10_000),
        ],
        [
          'producer handle (one shared topic)',
          idle.handles,
          fmt(idle.bytesPerHandle),
          '<= 1 KB',
          verdict(idle.bytesPerHandle <= 1_000),
        ],
        [
          'producer handle on its own topic (own broker producer)',
          1000,
          fmt(idle.bytesPerProducerOnOwnTopic),
          '(info)',
          '',
        ],
      ],
    ),
    '',
  ].join('\n');
  const { mdPath } = await writeResults(
    'memtest',
    {
      machine,
      settings: { PRODUCER_CYCLES, CONSUMER_CYCLES, ABANDONED, REAP_AFTER, SETTLE_MS },
      phases,
      checks,
      idle,
    },
    md,
  );
  console.log(`wrote ${mdPath}`);
}

await main();
