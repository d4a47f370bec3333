/**
 * Load generation and statistics: a raw proto-loaded gRPC client (the way existing clients load
 * the proto), closed-loop runs at a fixed concurrency, open-loop runs at a fixed rate, latency
 * percentiles and least-squares slopes.
 */

import { type Client, credentials, loadPackageDefinition, Metadata, type ServiceError } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';

export { PROTO_LOADER_OPTIONS, PROTO_PATH } from '../../src/proto.js';

import { PROTO_LOADER_OPTIONS, PROTO_PATH } from '../../src/proto.js';

export type RawClient = Client & Record<string, (...args: unknown[]) => unknown>;

let ctor:
  | (new (
      addr: string,
      creds: ReturnType<typeof credentials.createInsecure>,
      options?: object,
    ) => RawClient)
  | undefined;

export function rawClient(port: number, options: object = {}): RawClient {
  if (!ctor) {
    const def = loadSync(PROTO_PATH, PROTO_LOADER_OPTIONS);
    const pkg = loadPackageDefinition(def) as unknown as {
      rocketmq: { RocketMQProxy: NonNullable<typeof ctor> };
    };
    ctor = pkg.rocketmq.RocketMQProxy;
  }
  return new ctor(`127.0.0.1:${port}`, credentials.createInsecure(), options);
}

const EMPTY_MD = new Metadata();

export function unary<T = Record<string, unknown>>(
  client: RawClient,
  method: string,
  request: object,
): Promise<T> {
  return new Promise((resolve, reject) => {
    const fn = client[method] as (
      req: object,
      md: Metadata,
      cb: (err: ServiceError | null, res: T) => void,
    ) => void;
    fn.call(client, request, EMPTY_MD, (err, res) => (err ? reject(err) : resolve(res)));
  });
}

export interface RunResult {
  ops: number;
  errors: number;
  firstError: string | undefined;
  elapsedMs: number;
  opsPerSec: number;
  p50Ms: number;
  p99Ms: number;
}

/** Fills a latency array; a fixed capacity keeps recording allocation-free. */
class Latencies {
  #buf: Float64Array;
  #n = 0;
  constructor(capacity: number) {
    this.#buf = new Float64Array(capacity);
  }
  add(ms: number): void {
    if (this.#n === this.#buf.length) {
      const bigger = new Float64Array(this.#buf.length * 2);
      bigger.set(this.#buf);
      this.#buf = bigger;
    }
    this.#buf[this.#n++] = ms;
  }
  sorted(): Float64Array {
    return this.#buf.slice(0, this.#n).sort();
  }
}

export function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i] as number;
}

/**
 * `concurrency` workers each await `op` in a loop for `durationMs` after a warm-up of
 * `warmupMs` (not recorded). Errors are counted, not retried.
 */
export async function closedLoop(
  op: () => Promise<unknown>,
  opts: { concurrency: number; durationMs: number; warmupMs?: number },
): Promise<RunResult> {
  const warmupEnd = performance.now() + (opts.warmupMs ?? 0);
  const lat = new Latencies(1 << 16);
  let ops = 0;
  let errors = 0;
  let firstError: string | undefined;
  let start = 0;
  let end = 0;
  const worker = async (): Promise<void> => {
    for (;;) {
      const t0 = performance.now();
      if (end !== 0 && t0 >= end) return;
      if (end === 0 && t0 >= warmupEnd) {
        start = t0;
        end = t0 + opts.durationMs;
      }
      let failed = false;
      try {
        await op();
      } catch (err) {
        failed = true;
        if (end !== 0) {
          errors++;
          firstError ??= (err as Error).message;
        }
      }
      const t1 = performance.now();
      if (end !== 0 && t0 >= start && t1 <= end) {
        if (!failed) {
          ops++;
          lat.add(t1 - t0);
        }
      }
    }
  };
  await Promise.all(Array.from({ length: opts.concurrency }, worker));
  const sorted = lat.sorted();
  const elapsedMs = end - start;
  return {
    ops,
    errors,
    firstError,
    elapsedMs,
    opsPerSec: (ops / elapsedMs) * 1000,
    p50Ms: percentile(sorted, 50),
    p99Ms: percentile(sorted, 99),
  };
}

/**
 * Starts `op` at a fixed rate regardless of how long earlier ones take (open loop): a slow
 * response never delays the next send, so a stall shows up as latency instead of as a lower
 * send rate. Latency runs from the moment each op is issued; pacing sleeps on 1 ms timers (a
 * busy loop would steal a core from the gateway on a 2-core machine), so ops due in the same
 * millisecond go out together.
 */
export async function openLoop(
  op: () => Promise<unknown>,
  opts: { ratePerSec: number; durationMs: number; warmupMs?: number },
): Promise<RunResult> {
  const interval = 1000 / opts.ratePerSec;
  const warmup = opts.warmupMs ?? 0;
  const total = Math.round(((warmup + opts.durationMs) / 1000) * opts.ratePerSec);
  const warmupCount = Math.round((warmup / 1000) * opts.ratePerSec);
  const lat = new Latencies(total);
  let errors = 0;
  let firstError: string | undefined;
  const pending = new Set<Promise<void>>();
  const t0 = performance.now();
  let issued = 0;
  while (issued < total) {
    const now = performance.now();
    while (issued < total && t0 + issued * interval <= now) {
      const started = performance.now();
      const record = issued >= warmupCount;
      const p = op().then(
        () => {
          if (record) lat.add(performance.now() - started);
        },
        (err: unknown) => {
          if (record) {
            errors++;
            firstError ??= (err as Error).message;
          }
        },
      );
      const tracked = p.finally(() => pending.delete(tracked));
      pending.add(tracked);
      issued++;
    }
    await new Promise<void>((r) => setTimeout(r, 1));
  }
  await Promise.all(pending);
  const sorted = lat.sorted();
  const ops = sorted.length;
  return {
    ops,
    errors,
    firstError,
    elapsedMs: opts.durationMs,
    opsPerSec: (ops / opts.durationMs) * 1000,
    p50Ms: percentile(sorted, 50),
    p99Ms: percentile(sorted, 99),
  };
}

/** Least-squares slope of y over x. */
export function slope(points: ReadonlyArray<readonly [number, number]>): number {
  const n = points.length;
  if (n < 2) return Number.NaN;
  let sx = 0;
  let sy = 0;
  for (const [x, y] of points) {
    sx += x;
    sy += y;
  }
  const mx = sx / n;
  const my = sy / n;
  let num = 0;
  let den = 0;
  for (const [x, y] of points) {
    num += (x - mx) * (y - my);
    den += (x - mx) * (x - mx);
  }
  return den === 0 ? Number.NaN : num / den;
}

export const round = (n: number, digits = 2): number => {
  const f = 10 ** digits;
  return Math.round(n * f) / f;
};

/** "12,345" */
export const fmt = (n: number, digits = 0): string =>
  Number.isFinite(n)
    ? n.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits })
    : 'n/a';
