/** Pieces shared by the gateway benches' reports: CPU accounting and target verdicts. */
import { join } from 'node:path';
import { cpuMsOf, ownCpuMs, ROOT } from './processes.js';

export interface CpuWindow {
  /** CPU ms the measured server process used during the window. */
  serverCpuMs: number;
  /** CPU ms the bench (load generator) process used. */
  clientCpuMs: number;
  wallMs: number;
}

/** Measures CPU of the bench process and (when given) a server process over `fn`. */
export async function withCpu<T>(
  serverPid: number | undefined,
  fn: () => Promise<T>,
): Promise<[T, CpuWindow]> {
  const s0 = serverPid ? cpuMsOf(serverPid) : 0;
  const c0 = ownCpuMs();
  const t0 = performance.now();
  const result = await fn();
  const wallMs = performance.now() - t0;
  return [
    result,
    {
      serverCpuMs: serverPid ? cpuMsOf(serverPid) - s0 : 0,
      clientCpuMs: ownCpuMs() - c0,
      wallMs,
    },
  ];
}

export const pct = (part: number, whole: number): number => Math.round((part / whole) * 1000) / 10;

export function verdict(met: boolean | undefined): string {
  if (met === undefined) return 'not measured';
  return met ? 'met' : 'missed';
}

/** `--profile` passes --cpu-prof to the gateway; profiles land in bench/results/profiles/. */
export function profileArgs(): string[] {
  if (!process.argv.includes('--profile')) return [];
  return ['--cpu-prof', '--cpu-prof-dir', join(ROOT, 'bench', 'results', 'profiles')];
}

export const NOISE_NOTE =
  'The machine is shared (2 cores, other jobs running): absolute numbers are noisy; ratios measured in the same run are the comparable figures. ' +
  'CPU columns are per-process CPU time from /proc over the cell (100% = one core).';
