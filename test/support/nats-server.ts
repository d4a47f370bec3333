/**
 * A private nats-server with JetStream for one test: its own ephemeral port and store dir, so
 * tests can stop, restart and break it without touching the machine's NATS on 4222.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, connect as netConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

export const NATS_SERVER_BIN = process.env.MQGATE_NATS_SERVER ?? '/usr/sbin/nats-server';

export interface PrivateNatsServer {
  readonly url: string;
  readonly port: number;
  readonly storeDir: string;
  /** Stops the server (SIGTERM, SIGKILL after a deadline); the store stays for restart(). */
  stop(options?: { hard?: boolean }): Promise<void>;
  /** Starts it again on the same port with the same store; stops it first if running. */
  restart(): Promise<void>;
  /** Stops it and removes the store. Idempotent; resolves when the process is gone. */
  close(): Promise<void>;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = netConnect({ port, host: '127.0.0.1' });
    const done = (ok: boolean): void => {
      socket.removeAllListeners();
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(1_000, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

class NatsServerProcess implements PrivateNatsServer {
  readonly url: string;
  #child: ChildProcess | undefined;
  #exited: Promise<void> = Promise.resolve();
  #stderr = '';
  #closed = false;

  constructor(
    readonly port: number,
    readonly storeDir: string,
  ) {
    this.url = `nats://127.0.0.1:${port}`;
  }

  async start(timeoutMs = 15_000): Promise<void> {
    this.#stderr = '';
    const child = spawn(
      NATS_SERVER_BIN,
      ['-js', '-a', '127.0.0.1', '-p', String(this.port), '-sd', this.storeDir],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    this.#child = child;
    // 'close' (not 'exit') waits for stderr to be drained and closed too: no handle outlives it.
    this.#exited = new Promise((resolve) => child.once('close', () => resolve()));
    child.stderr?.setEncoding('utf8').on('data', (d: string) => {
      // nats-server logs to stderr; keep the tail for error messages.
      this.#stderr = (this.#stderr + d).slice(-4_000);
    });
    let spawnError: Error | undefined;
    child.once('error', (err) => {
      spawnError = err;
    });
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (spawnError) throw new Error(`cannot run ${NATS_SERVER_BIN}: ${spawnError.message}`);
      if (child.exitCode !== null || child.signalCode !== null) {
        throw new Error(
          `nats-server on port ${this.port} exited (${child.exitCode ?? child.signalCode}):\n${this.#stderr}`,
        );
      }
      // The log line says JetStream is set up, the connect says the port is open.
      if (/Server is ready/.test(this.#stderr) && (await accepts(this.port))) return;
      if (Date.now() > deadline) {
        await this.stop({ hard: true });
        throw new Error(
          `nats-server on port ${this.port} was not ready within ${timeoutMs} ms:\n${this.#stderr}`,
        );
      }
      await sleep(25);
    }
  }

  async stop(options: { hard?: boolean } = {}): Promise<void> {
    const child = this.#child;
    if (!child) return;
    if (child.exitCode === null && child.signalCode === null) {
      child.kill(options.hard ? 'SIGKILL' : 'SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      try {
        await this.#exited;
      } finally {
        clearTimeout(timer);
      }
    } else {
      await this.#exited;
    }
    this.#child = undefined;
  }

  async restart(): Promise<void> {
    if (this.#closed) throw new Error('this nats-server was closed; start a new one');
    await this.stop();
    await this.start();
  }

  async close(): Promise<void> {
    this.#closed = true;
    try {
      await this.stop();
    } finally {
      rmSync(this.storeDir, { recursive: true, force: true });
    }
  }
}

/**
 * Starts a private nats-server with JetStream on a free loopback port and waits until it
 * accepts connections. Always `await server.close()` (e.g. in `t.after`).
 */
export async function startNatsServer(): Promise<PrivateNatsServer> {
  let lastError: unknown;
  // The free port is only free until someone else takes it: retry on a bind failure.
  for (let attempt = 0; attempt < 3; attempt++) {
    const storeDir = mkdtempSync(join(tmpdir(), 'mqgate-nats-'));
    const server = new NatsServerProcess(await freePort(), storeDir);
    try {
      await server.start();
      return server;
    } catch (err) {
      lastError = err;
      await server.close();
    }
  }
  throw lastError;
}
