/** Runs the gateway as its own process, the way users run it (`mqgate serve`). */
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { createServer } from 'node:net';
import { fileURLToPath } from 'node:url';

const CLI = fileURLToPath(new URL('../../src/cli.ts', import.meta.url));

export async function freePort(): Promise<number> {
  const srv = createServer();
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const port = (srv.address() as { port: number }).port;
  await new Promise((r) => srv.close(r));
  return port;
}

export interface ChildGateway {
  readonly process: ChildProcess;
  readonly grpcPort: number;
  readonly metricsPort: number;
  /** Every JSON log line the gateway printed so far. */
  readonly logs: Array<Record<string, unknown>>;
  /** Resolves with the exit code (or signal name) when the process ends. */
  readonly exited: Promise<number | string>;
  kill(signal?: NodeJS.Signals): void;
}

export async function startChildGateway(
  env: Record<string, string> = {},
  timeoutMs = 30_000,
): Promise<ChildGateway> {
  const grpcPort = env.GRPC_PORT ? Number(env.GRPC_PORT) : await freePort();
  const metricsPort = env.METRICS_PORT ? Number(env.METRICS_PORT) : await freePort();
  const child = spawn(process.execPath, ['--import', 'tsx', CLI, 'serve'], {
    env: {
      ...process.env,
      LOG_LEVEL: 'info',
      ...env,
      GRPC_PORT: String(grpcPort),
      METRICS_PORT: String(metricsPort),
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const logs: Array<Record<string, unknown>> = [];
  let stderr = '';
  let buf = '';
  child.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
    buf += chunk;
    let i = buf.indexOf('\n');
    while (i >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      try {
        logs.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        // not JSON: ignore
      }
      i = buf.indexOf('\n');
    }
  });
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
    stderr += chunk;
  });
  const exited = new Promise<number | string>((resolve) =>
    child.once('exit', (code, signal) => resolve(code ?? signal ?? 'unknown')),
  );
  const deadline = Date.now() + timeoutMs;
  // Ready when /health answers: independent of LOG_LEVEL, and the gRPC port is bound before it.
  for (;;) {
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(
        `gateway did not start (exit ${child.exitCode}); stderr:\n${stderr}\nlogs:\n${JSON.stringify(logs)}`,
      );
    }
    const ok = await fetch(`http://127.0.0.1:${metricsPort}/health`, {
      headers: { connection: 'close' },
    }).then(
      (r) => r.ok,
      () => false,
    );
    if (ok) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  return { process: child, grpcPort, metricsPort, logs, exited, kill: (s = 'SIGTERM') => child.kill(s) };
}
