/**
 * Child processes for benches: the gateway from dist/ (so tsx's loader is not what we measure),
 * the no-op servers, and per-process CPU time read from /proc so every cell can say which
 * process was busy.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

export const ROOT = fileURLToPath(new URL('../../', import.meta.url));
/**
 * The gateway build a bench runs: this tree's dist/, or BENCH_GATEWAY_CLI (another checkout's
 * dist/cli.js) to measure an earlier version side by side with the same bench code.
 */
const DIST_CLI = process.env.BENCH_GATEWAY_CLI ?? join(ROOT, 'dist', 'cli.js');

/**
 * Installed in the gateway with `--import`: SIGUSR2 runs a full GC and reports on stderr. It lets
 * the memtest read heap-after-GC through /metrics without any debug endpoint in the gateway.
 */
const GC_ON_SIGNAL =
  'data:text/javascript,let n=0;process.on("SIGUSR2",()=>{globalThis.gc();globalThis.gc();process.stderr.write("bench-gc "+(++n)+"\\n")})';

export async function freePort(): Promise<number> {
  const srv = createServer();
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const port = (srv.address() as { port: number }).port;
  await new Promise((r) => srv.close(r));
  return port;
}

function newestMtime(dir: string): number {
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) newest = Math.max(newest, newestMtime(path));
    else if (entry.name.endsWith('.ts')) newest = Math.max(newest, statSync(path).mtimeMs);
  }
  return newest;
}

let buildChecked = false;

/**
 * Rebuilds dist/ when a file under src/ is newer than dist/cli.js. tsc emits even when some file
 * has a type error, so a failing build still leaves a runnable dist; we say so and go on.
 */
export function ensureBuilt(): void {
  if (buildChecked) return;
  buildChecked = true;
  if ((process.env.BENCH_SKIP_BUILD === '1' || process.env.BENCH_GATEWAY_CLI) && existsSync(DIST_CLI)) return;
  const built = existsSync(DIST_CLI) ? statSync(DIST_CLI).mtimeMs : 0;
  if (built >= newestMtime(join(ROOT, 'src'))) return;
  console.log('dist/ is older than src/: running npm run build');
  const r = spawnSync('npm', ['run', 'build', '--silent'], { cwd: ROOT, stdio: 'inherit' });
  if (!existsSync(DIST_CLI)) throw new Error('npm run build produced no dist/cli.js; fix the build first');
  if (r.status !== 0) console.warn('npm run build reported errors; benchmarking the JavaScript it emitted');
}

/** User + system CPU time of a process in ms (Linux /proc; 10 ms resolution). */
export function cpuMsOf(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the parenthesised command name; utime and stime are the 14th and 15th fields.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(fields[11]) + Number(fields[12]);
  return ticks * 10;
}

export function ownCpuMs(): number {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

export interface GatewayProcess {
  readonly pid: number;
  readonly grpcPort: number;
  readonly metricsPort: number;
  readonly metricsUrl: string;
  readonly logs: Array<Record<string, unknown>>;
  /** The gateway's /metrics JSON. */
  metrics(): Promise<Record<string, unknown>>;
  /** Full GC in the gateway (needs `gcSignal`); resolves when it finished. */
  gc(): Promise<void>;
  cpuMs(): number;
  /** SIGTERM, then SIGKILL after the deadline; resolves when the process exited. */
  close(): Promise<void>;
}

export interface StartOptions {
  env?: Record<string, string>;
  /** Extra node flags, e.g. --cpu-prof. */
  nodeArgs?: string[];
  /** Installs the SIGUSR2 GC hook (adds --expose-gc). */
  gcSignal?: boolean;
  timeoutMs?: number;
}

/** Starts `node dist/cli.js serve` on free ports and waits for its "listening" log line. */
export async function startGatewayProcess(options: StartOptions = {}): Promise<GatewayProcess> {
  ensureBuilt();
  const grpcPort = await freePort();
  const metricsPort = await freePort();
  const args = [...(options.nodeArgs ?? [])];
  if (options.gcSignal) args.push('--expose-gc', '--import', GC_ON_SIGNAL);
  args.push(DIST_CLI, 'serve');
  const child = spawn(process.execPath, args, {
    cwd: ROOT,
    env: {
      ...process.env,
      ...options.env,
      // The readiness line is logged at info; the gateway logs nothing per call at info.
      LOG_LEVEL: 'info',
      GRPC_PORT: String(grpcPort),
      METRICS_PORT: String(metricsPort),
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const logs: Array<Record<string, unknown>> = [];
  let stderr = '';
  let gcCount = 0;
  let gcWaiters: Array<() => void> = [];
  let out = '';
  child.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
    out += chunk;
    let i = out.indexOf('\n');
    while (i >= 0) {
      const line = out.slice(0, i);
      out = out.slice(i + 1);
      try {
        const parsed = JSON.parse(line) as Record<string, unknown>;
        // Warnings (e.g. 10,000 leak detections) would fill memory; keep the count-worthy few.
        if (logs.length < 1000 || parsed.level !== 40) logs.push(parsed);
      } catch {
        // not JSON
      }
      i = out.indexOf('\n');
    }
  });
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
    for (const m of chunk.matchAll(/bench-gc (\d+)/g)) gcCount = Math.max(gcCount, Number(m[1]));
    if (gcWaiters.length > 0) {
      const w = gcWaiters;
      gcWaiters = [];
      for (const f of w) f();
    }
    stderr = (stderr + chunk).slice(-20_000);
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const deadline = Date.now() + (options.timeoutMs ?? 60_000);
  while (!logs.some((l) => l.msg === 'mqgate gateway listening')) {
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`gateway did not start (exit ${child.exitCode}); stderr:\n${stderr}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  const pid = child.pid as number;
  const metricsUrl = `http://127.0.0.1:${metricsPort}/metrics`;
  let closing: Promise<void> | undefined;
  return {
    pid,
    grpcPort,
    metricsPort,
    metricsUrl,
    logs,
    async metrics() {
      const res = await fetch(metricsUrl, { headers: { connection: 'close' } });
      return (await res.json()) as Record<string, unknown>;
    },
    async gc() {
      if (!options.gcSignal) throw new Error('gc() needs startGatewayProcess({ gcSignal: true })');
      const target = gcCount + 1;
      const done = new Promise<void>((resolve) => {
        const check = (): void => {
          if (gcCount >= target) resolve();
          else gcWaiters.push(check);
        };
        gcWaiters.push(check);
      });
      child.kill('SIGUSR2');
      await done;
    },
    cpuMs: () => cpuMsOf(pid),
    close() {
      closing ??= stopChild(child, exited);
      return closing;
    },
  };
}

async function stopChild(child: ChildProcess, exited: Promise<void>): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
  await exited;
  clearTimeout(timer);
}

export interface ServerProcess {
  readonly pid: number;
  readonly port: number;
  cpuMs(): number;
  close(): Promise<void>;
}

/** Starts a bench TypeScript entry point (under tsx) that prints `listening <port>`. */
export async function startTsServer(
  entry: string,
  args: string[],
  nodeArgs: string[] = [],
): Promise<ServerProcess> {
  const child = spawn(process.execPath, [...nodeArgs, '--import', 'tsx', entry, ...args], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr?.setEncoding('utf8').on('data', (c: string) => {
    stderr = (stderr + c).slice(-20_000);
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const port = await new Promise<number>((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => reject(new Error(`${entry} did not start: ${stderr}`)), 60_000);
    child.stdout?.setEncoding('utf8').on('data', (c: string) => {
      buf += c;
      const m = /listening (\d+)/.exec(buf);
      if (m) {
        clearTimeout(timer);
        resolve(Number(m[1]));
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${entry} exited with ${code}: ${stderr}`));
    });
  });
  const pid = child.pid as number;
  let closing: Promise<void> | undefined;
  return {
    pid,
    port,
    cpuMs: () => cpuMsOf(pid),
    close() {
      closing ??= stopChild(child, exited);
      return closing;
    },
  };
}

/**
 * The SDK as users run it: the built JavaScript in dist/ (rebuilt first if stale), not the
 * TypeScript through tsx, whose helpers add a call to every function created.
 */
export async function loadSdk(): Promise<typeof import('../../src/client/index.js')> {
  ensureBuilt();
  return (await import(
    pathToFileURL(join(ROOT, 'dist', 'client', 'index.js')).href
  )) as typeof import('../../src/client/index.js');
}
