/**
 * Shared basics of the broker script: where things live, which ports, the state file, and the
 * messages and errors it prints. The rest of its plumbing sits beside it: java.ts (command lines),
 * processes.ts (start, find again, stop), lock.ts (one operation at a time), maven.ts (jars). Both
 * `scripts/brokers.ts` and `test/support/brokers.ts` use them, so a test that restarts a broker
 * uses exactly the command line `up` used.
 */
import { mkdirSync } from 'node:fs';
import { connect } from 'node:net';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

export const repoRoot: string = new URL('../..', import.meta.url).pathname.replace(/\/$/, '');
export const brokersDir: string = join(repoRoot, '.brokers');
export const pidsDir: string = join(brokersDir, 'pids');
export const statePath: string = join(brokersDir, 'state.json');

export const KAFKA_VERSION = '3.9.1';
/** Newest 5.3.x on Maven Central when this was written (5.3.0..5.3.3 all exist). */
export const ROCKETMQ_VERSION = '5.3.3';

export const cacheDir: string = process.env.MQGATE_CACHE ?? join(homedir(), '.cache', 'mqgate');
export const jarDirs = {
  kafka: join(cacheDir, 'jars', 'kafka', KAFKA_VERSION),
  rocketmq: join(cacheDir, 'jars', 'rocketmq', ROCKETMQ_VERSION),
} as const;

function envPort(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const port = Number(raw);
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw new Error(`${name}="${raw}" is not a TCP port; unset it or give a number between 1 and 65535`);
  }
  return port;
}

/**
 * Non-default ports so a developer's own Kafka (9092) or RocketMQ (9876/8081/10911) is never
 * touched, and nothing lands on 8080 (gateway metrics) or 50051 (gateway gRPC).
 */
export const ports = {
  kafka: envPort('MQGATE_KAFKA_PORT', 19092),
  kafkaController: envPort('MQGATE_KAFKA_CONTROLLER_PORT', 19093),
  namesrv: envPort('MQGATE_ROCKETMQ_NAMESRV_PORT', 19876),
  /** The broker also binds listenPort - 2 (fast channel) and listenPort + 1 (HA). */
  brokerListen: envPort('MQGATE_ROCKETMQ_BROKER_PORT', 20911),
  proxyGrpc: envPort('MQGATE_ROCKETMQ_PROXY_PORT', 18081),
  proxyRemoting: envPort('MQGATE_ROCKETMQ_REMOTING_PORT', 18080),
  nats: envPort('MQGATE_NATS_PORT', 4222),
} as const;

export const HOST = '127.0.0.1';

export type ProcessName = 'kafka' | 'namesrv' | 'proxy';

/** What `test/support/brokers.ts` reads. */
export interface BrokersState {
  kafka: {
    version: string;
    bootstrap: string;
    controllerPort: number;
    libDir: string;
    dataDir: string;
    logDir: string;
    readyTopic: string;
  };
  rocketmq: {
    version: string;
    endpoint: string;
    namesrv: string;
    cluster: string;
    brokerName: string;
    brokerPort: number;
    remotingPort: number;
    libDir: string;
    storeDir: string;
    logDir: string;
    presetCount: number;
    readyTopic: string;
    readyGroup: string;
  };
  nats: { url: string };
  updatedAt: string;
}

export function ensureDir(path: string): string {
  mkdirSync(path, { recursive: true });
  return path;
}

export function say(message: string): void {
  process.stdout.write(`[brokers] ${message}\n`);
}

export function seconds(sinceMs: number): string {
  return `${((Date.now() - sinceMs) / 1000).toFixed(1)} s`;
}

export class BrokerScriptError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = 'BrokerScriptError';
  }
}

/** Waits until nothing listens on `port` any more (false at the deadline). */
export async function portFreed(port: number, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (await portAnswers(port)) {
    if (Date.now() > deadline) return false;
    await sleep(200);
  }
  return true;
}

export function portAnswers(port: number, host = HOST, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ port, host });
    const done = (ok: boolean): void => {
      socket.removeAllListeners();
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}
