/**
 * The leak harness. Counting right after a fixed short sleep reports handles that are still
 * shutting down as leaks (an event bus checked that way reported 134 "leaked" goroutines that
 * were really 1). Here we poll until the counts settle back to the baseline or a deadline
 * passes, and only then fail, naming what is left by type.
 */
import assert from 'node:assert/strict';
import { createHook } from 'node:async_hooks';
import { setTimeout as sleep } from 'node:timers/promises';

export type ResourceCounts = Map<string, number>;

export function countResources(): ResourceCounts {
  const counts: ResourceCounts = new Map();
  for (const type of process.getActiveResourcesInfo()) counts.set(type, (counts.get(type) ?? 0) + 1);
  return counts;
}

function excess(baseline: ResourceCounts, now: ResourceCounts): Record<string, string> {
  const diff: Record<string, string> = {};
  for (const [type, n] of now) {
    const before = baseline.get(type) ?? 0;
    if (n > before) diff[type] = `${before} -> ${n}`;
  }
  return diff;
}

export interface SettleOptions {
  /** How long resources may take to go away after close resolved. */
  timeoutMs?: number;
  intervalMs?: number;
}

/**
 * Waits until no resource type has more live instances than in `baseline`; throws with the
 * excess by type if that does not happen within the deadline.
 */
export async function assertResourcesSettle(
  baseline: ResourceCounts,
  options: SettleOptions = {},
): Promise<void> {
  const deadline = Date.now() + (options.timeoutMs ?? 10_000);
  const interval = options.intervalMs ?? 25;
  let diff = excess(baseline, countResources());
  while (Object.keys(diff).length > 0 && Date.now() < deadline) {
    await sleep(interval);
    // Let pending I/O callbacks and microtasks run before counting again.
    await new Promise((r) => setImmediate(r));
    diff = excess(baseline, countResources());
  }
  assert.deepEqual(diff, {}, `active resources did not return to baseline: ${JSON.stringify(diff)}`);
}

/**
 * Runs `body` (which must close everything it opens before resolving) and asserts that the
 * process's active resources return to what they were before it ran.
 */
export async function withLeakCheck<T>(body: () => Promise<T>, options?: SettleOptions): Promise<T> {
  // Settle first so handles from earlier work in the same file do not count against this body.
  await new Promise((r) => setImmediate(r));
  const baseline = countResources();
  const origins = process.env.MQGATE_LEAK_ORIGINS === '1' ? traceOrigins() : undefined;
  try {
    const result = await body();
    await assertResourcesSettle(baseline, options);
    return result;
  } catch (err) {
    if (origins) console.error(`resources created by the body and still alive:\n${origins.alive()}`);
    throw err;
  } finally {
    origins?.stop();
  }
}

/**
 * Debugging aid (MQGATE_LEAK_ORIGINS=1): where each socket and timer created by the body was
 * created, so a failed leak check names the code that made what is left, not only its type.
 */
function traceOrigins(): { alive(): string; stop(): void } {
  const live = new Map<number, string>();
  const watched = new Set(['TCPWRAP', 'TCPCONNECTWRAP', 'Timeout', 'Immediate', 'PIPEWRAP', 'FSREQCALLBACK']);
  const hook = createHook({
    init(id, type) {
      if (!watched.has(type)) return;
      live.set(id, `${type}${(new Error().stack ?? '').split('\n').slice(2, 14).join('\n')}`);
    },
    destroy(id) {
      live.delete(id);
    },
  }).enable();
  return {
    alive: () => [...live.values()].join('\n---\n'),
    stop: () => hook.disable(),
  };
}

function forceGc(): void {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (!gc) throw new Error('heap checks need --expose-gc (npm test passes it)');
  gc();
  gc();
}

export interface HeapCheckOptions {
  /** Cycles run before measuring, so caches and JIT warm up. */
  warmup?: number;
  cycles?: number;
  /** Heap samples taken over the measured cycles. */
  samples?: number;
  /** Allowed growth per cycle (least-squares slope), in bytes. */
  maxBytesPerCycle?: number;
}

/**
 * Runs `cycle` many times with forced GC and fails on steady heap growth: the least-squares
 * slope of heapUsed over the cycles must stay under `maxBytesPerCycle`.
 */
export async function assertHeapStable(
  cycle: (i: number) => Promise<void>,
  options: HeapCheckOptions = {},
): Promise<{ slope: number }> {
  const warmup = options.warmup ?? 50;
  const cycles = options.cycles ?? 500;
  const samples = options.samples ?? 10;
  const maxSlope = options.maxBytesPerCycle ?? 256;
  for (let i = 0; i < warmup; i++) await cycle(i);
  const xs: number[] = [];
  const ys: number[] = [];
  const every = Math.max(1, Math.floor(cycles / samples));
  for (let i = 0; i < cycles; i++) {
    await cycle(warmup + i);
    if ((i + 1) % every === 0) {
      await new Promise((r) => setImmediate(r));
      forceGc();
      xs.push(i + 1);
      ys.push(process.memoryUsage().heapUsed);
    }
  }
  const n = xs.length;
  const mx = xs.reduce((a, b) => a + b, 0) / n;
  const my = ys.reduce((a, b) => a + b, 0) / n;
  let num = 0;
  let den = 0;
  for (let i = 0; i < n; i++) {
    num += ((xs[i] as number) - mx) * ((ys[i] as number) - my);
    den += ((xs[i] as number) - mx) ** 2;
  }
  const slope = den === 0 ? 0 : num / den;
  // A leak grows steadily: a positive trend AND a net gain between the start and the end. A
  // one-off step (a JIT tier-up, the runner's own allocations on a loaded machine) tilts the
  // fitted line but leaves the level flat, so it does not fail the check.
  // Medians of the first and last thirds: a single early step (warm-up) or late bump moves
  // neither, while a real leak raises every later sample.
  const third = Math.max(1, Math.floor(n / 3));
  const median = (v: number[]): number => {
    const sorted = [...v].sort((a, b) => a - b);
    return sorted[Math.floor(sorted.length / 2)] as number;
  };
  const net = median(ys.slice(-third)) - median(ys.slice(0, third));
  const netPerCycle = net / Math.max(1, (xs[n - 1] as number) - (xs[0] as number));
  assert.ok(
    slope <= maxSlope || netPerCycle <= maxSlope / 2,
    `heap grows ${slope.toFixed(1)} bytes per cycle (limit ${maxSlope}), net ${netPerCycle.toFixed(1)} per cycle; samples: ${ys.map((y) => Math.round(y / 1024)).join(', ')} KiB`,
  );
  return { slope };
}

/** Polls `predicate` until true or the deadline passes (for "eventually" assertions). */
export async function eventually(
  predicate: () => boolean | Promise<boolean>,
  what: string,
  timeoutMs = 10_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await predicate())) {
    if (Date.now() > deadline) assert.fail(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(20);
  }
}
