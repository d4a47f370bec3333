/**
 * Shared helpers for benches: machine description, forced GC, heap peaks, and the results
 * writer (`bench/results/<name>.json` plus a markdown table in `<name>.md`).
 */
import { mkdir, rename, writeFile } from 'node:fs/promises';
import { cpus, loadavg, totalmem } from 'node:os';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

export interface MachineInfo {
  cores: number;
  cpuModel: string;
  node: string;
  platform: string;
  arch: string;
  totalMemoryMiB: number;
  /** 1-minute load average when the run started: numbers from a busy machine are not comparable. */
  loadAverage1m: number;
  date: string;
}

export function machineInfo(): MachineInfo {
  const list = cpus();
  return {
    cores: list.length,
    cpuModel: list[0]?.model.trim() ?? 'unknown',
    node: process.version,
    platform: process.platform,
    arch: process.arch,
    totalMemoryMiB: Math.round(totalmem() / 1024 / 1024),
    loadAverage1m: Math.round((loadavg()[0] ?? 0) * 100) / 100,
    date: new Date().toISOString(),
  };
}

let gcFn: (() => void) | undefined;

/** Forces a full GC; works without --expose-gc so `tsx bench/run.ts` needs no extra flags. */
export function forceGc(): void {
  if (!gcFn) {
    const exposed = (globalThis as { gc?: () => void }).gc;
    if (exposed) gcFn = exposed;
    else {
      setFlagsFromString('--expose-gc');
      gcFn = runInNewContext('gc') as () => void;
    }
  }
  gcFn();
  gcFn();
}

/**
 * Tracks the highest heapUsed seen above a baseline taken after a forced GC. Sampled inline by
 * the bench loop: a microtask-only workload never yields to timers, so an interval sampler
 * would see nothing.
 */
export class HeapPeak {
  readonly baseline: number;
  #peak: number;

  constructor() {
    forceGc();
    this.baseline = process.memoryUsage().heapUsed;
    this.#peak = this.baseline;
  }

  sample(): void {
    const used = process.memoryUsage().heapUsed;
    if (used > this.#peak) this.#peak = used;
  }

  /** Peak growth over the baseline, in MiB. */
  get peakMiB(): number {
    return (this.#peak - this.baseline) / 1024 / 1024;
  }
}

export type Cell = string | number;

export function markdownTable(headers: readonly string[], rows: readonly (readonly Cell[])[]): string {
  const line = (cells: readonly Cell[]): string => `| ${cells.map(String).join(' | ')} |`;
  return [line(headers), line(headers.map(() => '---')), ...rows.map(line)].join('\n');
}

export function machineMarkdown(m: MachineInfo): string {
  return [
    `- CPU: ${m.cpuModel} (${m.cores} cores)`,
    `- Node: ${m.node} on ${m.platform}/${m.arch}, ${m.totalMemoryMiB} MiB RAM`,
    `- Load average (1 min) at start: ${m.loadAverage1m}`,
    `- Date: ${m.date}`,
  ].join('\n');
}

const RESULTS_DIR = new URL('../results/', import.meta.url).pathname;

/** Writes `<name>.json` and `<name>.md` atomically (temp file + rename). */
export async function writeResults(
  name: string,
  json: unknown,
  markdown: string,
): Promise<{ jsonPath: string; mdPath: string }> {
  await mkdir(RESULTS_DIR, { recursive: true });
  const jsonPath = join(RESULTS_DIR, `${name}.json`);
  const mdPath = join(RESULTS_DIR, `${name}.md`);
  await writeAtomic(jsonPath, `${JSON.stringify(json, null, 2)}\n`);
  await writeAtomic(mdPath, markdown.endsWith('\n') ? markdown : `${markdown}\n`);
  return { jsonPath, mdPath };
}

async function writeAtomic(path: string, text: string): Promise<void> {
  const tmp = `${path}.${process.pid}.tmp`;
  await writeFile(tmp, text);
  await rename(tmp, path);
}

/** What every bench module exports; bench/run.ts calls `run()`. */
export interface BenchModule {
  /** One line shown by `npm run bench -- --list`. */
  readonly description: string;
  run(): Promise<void>;
}
