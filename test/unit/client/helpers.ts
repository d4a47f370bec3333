import { type ChildProcess, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import type { GatewayConfig } from '../../../src/gateway/config.js';
import { Gateway } from '../../../src/gateway/server.js';

export const ROOT = fileURLToPath(new URL('../../..', import.meta.url));

export function uniq(prefix: string): string {
  return `${prefix}-${randomUUID()}`;
}

/** An in-process gateway on the embedded broker, on free ports. */
export async function startTestGateway(config: Partial<GatewayConfig> = {}): Promise<Gateway> {
  return new Gateway({
    config: { grpcPort: 0, metricsPort: 0, logLevel: 'silent', shutdownTimeoutMs: 2000, ...config },
  }).start();
}

export function metric(gateway: Gateway, name: string): number {
  return gateway.metrics.json()[name] as number;
}

/** A port that was free a moment ago (for a gateway that must come back on the same port). */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** Rejects when `promise` takes longer than `ms`; clears its timer either way. */
export async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** `mqgate serve` as a child process on a fixed gRPC port, so it can be killed and restarted. */
export class ChildGateway {
  readonly port: number;
  #child: ChildProcess | undefined;
  #exited: Promise<void> | undefined;
  stderr = '';

  constructor(port: number) {
    this.port = port;
  }

  start(): void {
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli.ts', 'serve'], {
      cwd: ROOT,
      env: { ...process.env, GRPC_PORT: String(this.port), METRICS_PORT: '0', LOG_LEVEL: 'warn' },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    child.stderr?.setEncoding('utf8');
    child.stderr?.on('data', (chunk: string) => {
      this.stderr += chunk;
    });
    this.#child = child;
    this.#exited = new Promise((resolve) => child.once('exit', () => resolve()));
  }

  async kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const child = this.#child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    child.kill(signal);
    await this.#exited;
  }
}

/** A TCP relay in front of a gateway whose connections the test can cut (a dropped network). */
export class Relay {
  readonly #server: Server;
  readonly #sockets = new Set<Socket>();
  port = 0;

  constructor(targetPort: number) {
    this.#server = createServer((inbound) => {
      const outbound = connect(targetPort, '127.0.0.1');
      this.#sockets.add(inbound);
      this.#sockets.add(outbound);
      inbound.pipe(outbound);
      outbound.pipe(inbound);
      const drop = (): void => {
        inbound.destroy();
        outbound.destroy();
        this.#sockets.delete(inbound);
        this.#sockets.delete(outbound);
      };
      inbound.on('error', drop);
      outbound.on('error', drop);
      inbound.on('close', drop);
      outbound.on('close', drop);
    });
  }

  async listen(): Promise<this> {
    await new Promise<void>((resolve) => this.#server.listen(0, '127.0.0.1', () => resolve()));
    const address = this.#server.address();
    this.port = typeof address === 'object' && address ? address.port : 0;
    return this;
  }

  get connections(): number {
    return this.#sockets.size / 2;
  }

  /** Cuts every connection: both sides see a reset. */
  cut(): void {
    for (const s of this.#sockets) s.resetAndDestroy();
    this.#sockets.clear();
  }

  async close(): Promise<void> {
    this.cut();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }
}
