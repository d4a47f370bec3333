/**
 * Keyed dispatch with per-key order: KeyedLanes against the usual hand-rolled alternative, a
 * `Map<key, Promise>` chain, in the same process and on the same task sequence.
 *
 * Both check order in every handler (a violation count must be 0). The chain has no bound: the
 * submit loop never waits, so every pending task is a closure plus promises on the heap at once.
 * The lanes bound what is held (lanes x queueSize) and make the submitter wait instead.
 */
import { setImmediate as yieldToLoop } from 'node:timers/promises';
import { KeyedLanes } from '../src/bus/lanes.js';
import { HeapPeak, machineInfo, machineMarkdown, markdownTable, writeResults } from './lib/results.js';

export const description = 'KeyedLanes vs Map<key, Promise> chains: tasks/s, order, peak heap';

const TASKS = Number(process.env.LANES_BENCH_TASKS ?? 1_000_000);
const KEYS = 1_000;
const LANES = 64;
const QUEUE_SIZE = 64;
const SAMPLE_EVERY = 4096;

type Variant = 'trivial' | 'small-await';
type Impl = 'keyed-lanes' | 'promise-chain';

interface Row {
  variant: Variant;
  impl: Impl;
  tasks: number;
  ms: number;
  tasksPerSec: number;
  peakHeapMiB: number;
  orderViolations: number;
}

/** The same pseudo-random key sequence for every run (xorshift32, fixed seed). */
function keySequence(n: number): Uint16Array {
  const out = new Uint16Array(n);
  let x = 0x9e3779b9;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = (x >>> 0) % KEYS;
  }
  return out;
}

const keyNames = Array.from({ length: KEYS }, (_, i) => `key-${i}`);

interface Checker {
  handle: (k: number, seq: number) => Promise<void>;
  violations: () => number;
  done: () => number;
}

function checker(variant: Variant, heap: HeapPeak): Checker {
  const expected = new Int32Array(KEYS);
  let violations = 0;
  let done = 0;
  const check = (k: number, seq: number): void => {
    if (expected[k] !== seq) violations++;
    expected[k] = seq + 1;
    if (++done % SAMPLE_EVERY === 0) heap.sample();
  };
  const handle =
    variant === 'trivial'
      ? async (k: number, seq: number): Promise<void> => {
          check(k, seq);
        }
      : async (k: number, seq: number): Promise<void> => {
          await yieldToLoop();
          check(k, seq);
        };
  return { handle, violations: () => violations, done: () => done };
}

async function runLanes(variant: Variant, keys: Uint16Array): Promise<Row> {
  const heap = new HeapPeak();
  const c = checker(variant, heap);
  const seqs = new Int32Array(KEYS);
  const t0 = performance.now();
  const lanes = new KeyedLanes({ lanes: LANES, queueSize: QUEUE_SIZE });
  for (let i = 0; i < keys.length; i++) {
    const k = keys[i] as number;
    const seq = seqs[k] as number;
    seqs[k] = seq + 1;
    await lanes.submit(() => c.handle(k, seq), { key: keyNames[k] });
    if (i % SAMPLE_EVERY === 0) heap.sample();
  }
  heap.sample();
  await lanes.close();
  return row(variant, 'keyed-lanes', keys.length, performance.now() - t0, heap, c);
}

async function runChain(variant: Variant, keys: Uint16Array): Promise<Row> {
  const heap = new HeapPeak();
  const c = checker(variant, heap);
  const seqs = new Int32Array(KEYS);
  const onError = (): void => {};
  const t0 = performance.now();
  const chains = new Map<string, Promise<void>>();
  for (let i = 0; i < keys.length; i++) {
    const k = keys[i] as number;
    const seq = seqs[k] as number;
    seqs[k] = seq + 1;
    const key = keyNames[k] as string;
    // The catch keeps one failure from ending the key's chain, as real code must.
    const next = (chains.get(key) ?? Promise.resolve()).then(() => c.handle(k, seq)).catch(onError);
    chains.set(key, next);
    if (i % SAMPLE_EVERY === 0) heap.sample();
  }
  heap.sample();
  await Promise.all(chains.values());
  return row(variant, 'promise-chain', keys.length, performance.now() - t0, heap, c);
}

function row(variant: Variant, impl: Impl, tasks: number, ms: number, heap: HeapPeak, c: Checker): Row {
  if (c.done() !== tasks) throw new Error(`${impl}/${variant}: ${c.done()} of ${tasks} tasks ran`);
  return {
    variant,
    impl,
    tasks,
    ms: Math.round(ms),
    tasksPerSec: Math.round((tasks / ms) * 1000),
    peakHeapMiB: Math.round(heap.peakMiB * 10) / 10,
    orderViolations: c.violations(),
  };
}

export async function run(): Promise<void> {
  const machine = machineInfo();
  const keys = keySequence(TASKS);
  // A short warm-up so the first measured run does not pay for JIT compilation alone.
  const warm = keySequence(20_000);
  await runLanes('trivial', warm);
  await runChain('trivial', warm);

  const rows: Row[] = [];
  for (const variant of ['trivial', 'small-await'] as const) {
    for (const impl of ['keyed-lanes', 'promise-chain'] as const) {
      const r = impl === 'keyed-lanes' ? await runLanes(variant, keys) : await runChain(variant, keys);
      rows.push(r);
      console.log(
        `${variant.padEnd(12)} ${impl.padEnd(14)} ${String(r.tasksPerSec).padStart(9)} tasks/s  ` +
          `${String(r.ms).padStart(6)} ms  peak heap +${r.peakHeapMiB} MiB  order violations ${r.orderViolations}`,
      );
    }
  }

  const params = { tasks: TASKS, keys: KEYS, lanes: LANES, queueSize: QUEUE_SIZE };
  const markdown = [
    '# Keyed lanes vs per-key promise chains',
    '',
    `${TASKS.toLocaleString('en')} tasks over ${KEYS.toLocaleString('en')} keys (pseudo-random, same sequence for both); ` +
      `KeyedLanes with ${LANES} lanes x queue ${QUEUE_SIZE}, submitter awaits each submit; ` +
      'the chain (`Map<key, Promise>`, `.then(task).catch()`) has no bound and is filled without waiting. ' +
      '`small-await` handlers await one `setImmediate` before finishing. Peak heap is heapUsed above a post-GC baseline, sampled every 4096 tasks.',
    '',
    machineMarkdown(machine),
    '',
    markdownTable(
      ['variant', 'implementation', 'tasks/s', 'wall ms', 'peak heap MiB', 'order violations'],
      rows.map((r) => [
        r.variant,
        r.impl,
        r.tasksPerSec.toLocaleString('en'),
        r.ms,
        r.peakHeapMiB,
        r.orderViolations,
      ]),
    ),
    '',
  ].join('\n');
  const { jsonPath, mdPath } = await writeResults(
    'lanes',
    { bench: 'lanes', machine, params, rows },
    markdown,
  );
  console.log(`wrote ${jsonPath} and ${mdPath}`);
}
