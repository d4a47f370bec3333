/**
 * Shared pieces of the hostile-client suite: a gateway with two principals (alice, the owner, and
 * bob, the attacker), status assertions, a raw HTTP/2 gRPC client that can send bytes no
 * protobuf library would produce (and a stream that never reads), an event-loop stall meter, a
 * memory probe and hand-built protobuf encodings.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { type ClientHttp2Session, type ClientHttp2Stream, connect, constants } from 'node:http2';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { type Metadata, type ServiceError, status } from '@grpc/grpc-js';
import { encodeRequest } from '../../bench/lib/h2grpc.js';
import { type GatewayConfig, loadConfig } from '../../src/gateway/config.js';
import { freePort } from '../support/child-gateway.js';
import {
  call,
  metadata,
  type RawClient,
  type Received,
  rawClient,
  type receive,
  startTestGateway,
  type TestGateway,
} from '../support/gateway.js';
import { eventually } from '../support/leaks.js';

export const ALICE = 'alice-token-0123456789abcdef';
export const BOB = 'bob-token-0123456789abcdef0';
export const KEYS = { endpoint: 'e', access_key_id: '', access_key_secret: '', instance_id: 'i' };

export const UUID_V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

export type Stream = ReturnType<typeof receive>;

/** A gateway where AUTH_TOKENS names two principals, alice and bob, each with a client. */
export interface TenantGateway extends TestGateway {
  alice: RawClient;
  bob: RawClient;
}

export async function startTenantGateway(config: Partial<GatewayConfig> = {}): Promise<TenantGateway> {
  const gw = await startTestGateway({
    authTokens: new Map([
      [ALICE, 'alice'],
      [BOB, 'bob'],
    ]),
    ...config,
  });
  const alice = rawClient(gw.gateway.grpcPort);
  const bob = rawClient(gw.gateway.grpcPort);
  return {
    ...gw,
    alice,
    bob,
    async close() {
      alice.close();
      bob.close();
      await gw.close();
    },
  };
}

export const md = (token?: string): Metadata => metadata(token);

/** The error a call rejects with; fails the test when it succeeds. */
export async function grpcError(p: Promise<unknown>): Promise<ServiceError> {
  try {
    const res = await p;
    assert.fail(`expected the call to fail, it answered ${JSON.stringify(res).slice(0, 300)}`);
  } catch (err) {
    if (err instanceof assert.AssertionError) throw err;
    return err as ServiceError;
  }
}

export const codeName = (code: number): string =>
  Object.entries(status).find(([, v]) => v === code)?.[0] ?? String(code);

/** Asserts the exact status code (and details pattern); returns the error. */
export async function expectCode(p: Promise<unknown>, code: number, pattern?: RegExp): Promise<ServiceError> {
  const err = await grpcError(p);
  assert.equal(
    codeName(err.code),
    codeName(code),
    `expected ${codeName(code)}, got ${codeName(err.code)}: ${err.details}`,
  );
  if (pattern) assert.match(err.details, pattern);
  return err;
}

/**
 * A foreign id must get exactly the answer of a missing id: NOT_FOUND, with details that are
 * byte-identical once the id itself is taken out.
 */
export function assertSameAsMissing(
  foreign: ServiceError,
  foreignId: string,
  missing: ServiceError,
  missingId: string,
): void {
  assert.equal(codeName(foreign.code), 'NOT_FOUND', `foreign id: ${foreign.details}`);
  assert.equal(codeName(missing.code), 'NOT_FOUND', `missing id: ${missing.details}`);
  assert.equal(
    foreign.details.split(foreignId).join('<id>'),
    missing.details.split(missingId).join('<id>'),
    'a foreign id is told apart from a missing one',
  );
}

/** HealthCheck answers healthy (the gateway is up and its broker fine). */
export async function assertHealthy(client: RawClient, token?: string): Promise<void> {
  const h = await call<{ healthy: boolean; message: string }>(client, 'HealthCheck', {}, md(token));
  assert.equal(h.healthy, true, `HealthCheck: ${h.message}`);
}

/**
 * A tenant's own resources still work: a message sent through its producer reaches its stream and
 * is acked, the stream is still open, and (unless `health` is false) HealthCheck answers healthy.
 */
export async function assertRoundTrip(
  client: RawClient,
  token: string,
  own: { producer: string; consumer: string; stream: Stream },
  options: { health?: boolean } = {},
): Promise<void> {
  const body = `own-${randomUUID()}`;
  await call(client, 'SendMessage', { producer_id: own.producer, message_body: body }, md(token));
  const m = await awaitMessage(own.stream, body);
  await call(
    client,
    'AckMessage',
    { consumer_id: own.consumer, receipt_handle: m.receipt_handle },
    md(token),
  );
  assert.equal(own.stream.ended, false, `the stream ended: ${own.stream.error?.details ?? 'OK'}`);
  if (options.health !== false) await assertHealthy(client, token);
}

/** The whole /metrics JSON (refusals included). */
export async function metricsAll(url: string): Promise<Record<string, unknown>> {
  const res = await fetch(url, { headers: { connection: 'close' } });
  return (await res.json()) as Record<string, unknown>;
}

export interface Refusals {
  auth: number;
  ownership: number;
  permission: number;
  quota: number;
}

export async function refusals(url: string): Promise<Refusals> {
  const m = await metricsAll(url);
  return m.refusals as Refusals;
}

export async function gauge(url: string, field: string): Promise<number> {
  const v = (await metricsAll(url))[field];
  assert.equal(typeof v, 'number', `/metrics field ${field}`);
  return v as number;
}

export async function createProducer(
  client: RawClient,
  token: string | undefined,
  topic: string,
  extra: object = {},
): Promise<string> {
  const r = await call<{ producer_id: string }>(
    client,
    'CreateProducer',
    { ...KEYS, topic, ...extra },
    md(token),
  );
  return r.producer_id;
}

export async function createConsumer(
  client: RawClient,
  token: string | undefined,
  topic: string,
  group: string,
  extra: object = {},
): Promise<string> {
  const r = await call<{ consumer_id: string }>(
    client,
    'CreateConsumer',
    { ...KEYS, topic, group_id: group, ...extra },
    md(token),
  );
  return r.consumer_id;
}

/** Waits for a message with `body` on the stream and returns it. */
export async function awaitMessage(stream: Stream, body: string, timeoutMs = 10_000): Promise<Received> {
  let found: Received | undefined;
  await eventually(
    () => {
      found = stream.messages.find((m) => m.message_body === body);
      return found !== undefined || stream.ended;
    },
    `message "${body}"`,
    timeoutMs,
  );
  assert.ok(found, `the stream ended (${stream.error?.details ?? 'OK'}) before "${body}" arrived`);
  return found;
}

/** A temporary directory removed by the returned function. */
export function tempDir(prefix = 'mqgate-hostile-'): {
  dir: string;
  file(name: string, text: string): string;
  remove(): void;
} {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return {
    dir,
    file(name, text) {
      const path = join(dir, name);
      writeFileSync(path, text);
      return path;
    },
    remove() {
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP/2 gRPC
// ---------------------------------------------------------------------------------------------

const SERVICE = 'rocketmq.RocketMQProxy';

/** The protobuf bytes of a request, as real clients encode it. */
export function encode(method: string, request: object): Buffer {
  return encodeRequest(method, request).subarray(5);
}

/** A gRPC length-prefixed message around raw bytes. */
export function grpcFrame(body: Buffer): Buffer {
  const frame = Buffer.allocUnsafe(5 + body.length);
  frame[0] = 0;
  frame.writeUInt32BE(body.length, 1);
  body.copy(frame, 5);
  return frame;
}

export interface RawResult {
  code: number;
  details: string;
  /** Response message bytes, when there was one. */
  body: Buffer | undefined;
}

/** One HTTP/2 connection speaking gRPC by hand. */
export class RawH2 {
  readonly session: ClientHttp2Session;
  closedAt: number | undefined;

  constructor(port: number) {
    this.session = connect(`http://127.0.0.1:${port}`);
    // A cut connection is what some tests expect; it must not crash the runner.
    this.session.on('error', () => {});
    this.session.on('close', () => {
      this.closedAt ??= Date.now();
    });
  }

  get closed(): boolean {
    return this.session.closed || this.session.destroyed;
  }

  #request(method: string, headers: Record<string, string>): ClientHttp2Stream {
    return this.session.request({
      [constants.HTTP2_HEADER_METHOD]: 'POST',
      [constants.HTTP2_HEADER_PATH]: `/${SERVICE}/${method}`,
      'content-type': 'application/grpc',
      te: 'trailers',
      ...headers,
    });
  }

  /** Sends one length-prefixed message (`frame`) and resolves with the status. */
  unary(method: string, frame: Buffer, headers: Record<string, string> = {}): Promise<RawResult> {
    return new Promise((resolve, reject) => {
      const req = this.#request(method, headers);
      let code: number | undefined;
      let details = '';
      const chunks: Buffer[] = [];
      const onHeaders = (h: Record<string, unknown>): void => {
        if (h['grpc-status'] !== undefined && code === undefined) {
          code = Number(h['grpc-status']);
          details = decodeURIComponent(String(h['grpc-message'] ?? ''));
        }
      };
      req.on('response', onHeaders);
      req.on('trailers', onHeaders);
      req.on('data', (c: Buffer) => chunks.push(c));
      // The server may answer (and reset) before it has read the whole request.
      req.on('error', () => {});
      req.on('close', () => {
        if (code === undefined) {
          reject(new Error(`${method}: stream closed without grpc-status (rst ${req.rstCode})`));
          return;
        }
        const all = Buffer.concat(chunks);
        resolve({
          code,
          details,
          body: all.length >= 5 ? all.subarray(5, 5 + all.readUInt32BE(1)) : undefined,
        });
      });
      req.end(frame);
    });
  }

  /**
   * Opens a server-streaming call and never reads it: no 'data' listener, paused, so the
   * HTTP/2 window is never opened again after the first 64 KiB.
   */
  neverReading(method: string, frame: Buffer, headers: Record<string, string> = {}): ClientHttp2Stream {
    const req = this.#request(method, headers);
    req.pause();
    req.on('error', () => {});
    req.end(frame);
    return req;
  }

  /**
   * Opens a server-streaming call that reads slowly but steadily: after each chunk it pauses for
   * `pauseMs`, so the HTTP/2 window reopens a little at a time.
   */
  slowReading(
    method: string,
    frame: Buffer,
    headers: Record<string, string>,
    pauseMs: number,
  ): { readonly bytes: number; readonly messages: number; readonly status: number | undefined } {
    const req = this.#request(method, headers);
    let bytes = 0;
    let messages = 0;
    let code: number | undefined;
    const onHeaders = (h: Record<string, unknown>): void => {
      if (h['grpc-status'] !== undefined) code ??= Number(h['grpc-status']);
    };
    req.on('response', onHeaders);
    req.on('trailers', onHeaders);
    req.on('error', () => {});
    let buffered = Buffer.alloc(0);
    req.on('data', (chunk: Buffer) => {
      bytes += chunk.length;
      buffered = Buffer.concat([buffered, chunk]);
      while (buffered.length >= 5) {
        const length = buffered.readUInt32BE(1);
        if (buffered.length < 5 + length) break;
        buffered = buffered.subarray(5 + length);
        messages++;
      }
      req.pause();
      setTimeout(() => req.resume(), pauseMs).unref();
    });
    req.end(frame);
    return {
      get bytes() {
        return bytes;
      },
      get messages() {
        return messages;
      },
      get status() {
        return code;
      },
    };
  }

  close(): void {
    this.session.destroy();
  }
}

// ---------------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------------

const CLI = fileURLToPath(new URL('../../src/cli.ts', import.meta.url));

/** `mqgate serve` as its own process, with everything it writes kept verbatim. */
export interface ServeProcess {
  readonly child: ChildProcess;
  readonly grpcPort: number;
  readonly metricsPort: number;
  readonly stdout: () => string;
  readonly stderr: () => string;
  /** Exit code (or signal name) once it exited. */
  readonly exited: Promise<number | string>;
  /** True when /health answered; false when the process exited first. */
  readonly started: boolean;
  stop(): Promise<number | string>;
}

/**
 * Starts `mqgate serve` with `env` and waits until /health answers or the process exits (a
 * start-up failure is a result here, not an error: its output is what some tests examine).
 */
export async function spawnServe(env: Record<string, string>, timeoutMs = 30_000): Promise<ServeProcess> {
  const grpcPort = await freePort();
  const metricsPort = await freePort();
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
  let out = '';
  let err = '';
  child.stdout?.setEncoding('utf8').on('data', (d: string) => {
    out += d;
  });
  child.stderr?.setEncoding('utf8').on('data', (d: string) => {
    err += d;
  });
  // 'close' waits for both pipes to be drained: nothing written is missed.
  const exited = new Promise<number | string>((resolve) =>
    child.once('close', (code, signal) => resolve(code ?? signal ?? 'unknown')),
  );
  let gone = false;
  void exited.then(() => {
    gone = true;
  });
  const deadline = Date.now() + timeoutMs;
  let started = false;
  while (!gone) {
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`mqgate serve did not start within ${timeoutMs} ms; stderr:\n${err}\nstdout:\n${out}`);
    }
    started = await fetch(`http://127.0.0.1:${metricsPort}/health`, {
      headers: { connection: 'close' },
    }).then(
      (r) => r.ok,
      () => false,
    );
    if (started) break;
    await sleep(100);
  }
  return {
    child,
    grpcPort,
    metricsPort,
    stdout: () => out,
    stderr: () => err,
    exited,
    started,
    async stop() {
      if (!gone) {
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 15_000);
        await exited;
        clearTimeout(t);
      }
      return exited;
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Measurements
// ---------------------------------------------------------------------------------------------

export interface StallReport {
  /** Largest event-loop delay seen by monitorEventLoopDelay, ms. */
  loopMaxMs: number;
  /**
   * Longest wait for a HealthCheck answer, ms: from the previous answer (a ping is sent every
   * 5 ms) to the next, so a stall between two pings counts as well as a slow round trip.
   */
  pingMaxMs: number;
  pings: number;
}

/**
 * Measures how long the (in-process) gateway's event loop stalls: a 10 ms-resolution delay
 * histogram plus HealthCheck round trips every 5 ms on their own connection.
 */
export function stallMeter(port: number): { stop(): Promise<StallReport> } {
  const h = monitorEventLoopDelay({ resolution: 10 });
  h.enable();
  const client = rawClient(port);
  let stopped = false;
  let pingMaxMs = 0;
  let pings = 0;
  const loop = (async () => {
    // The first answer includes connecting: it is not counted.
    await call(client, 'HealthCheck', {});
    let last = performance.now();
    while (!stopped) {
      await sleep(5);
      await call(client, 'HealthCheck', {});
      const now = performance.now();
      pingMaxMs = Math.max(pingMaxMs, now - last);
      last = now;
      pings++;
    }
  })();
  return {
    async stop() {
      stopped = true;
      await loop;
      h.disable();
      client.close();
      return { loopMaxMs: h.max / 1e6, pingMaxMs, pings };
    },
  };
}

function forceGc(): void {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (!gc) throw new Error('memory checks need --expose-gc');
  gc();
  gc();
}

/** Heap in use plus memory outside the heap (Buffers), after a full GC. */
export async function memoryNow(): Promise<number> {
  await new Promise((r) => setImmediate(r));
  forceGc();
  const m = process.memoryUsage();
  return m.heapUsed + m.external;
}

export const MiB = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Hand-built protobuf
// ---------------------------------------------------------------------------------------------

export function varint(n: number): Buffer {
  const out: number[] = [];
  let v = n;
  while (v > 127) {
    out.push((v & 127) | 128);
    v = Math.floor(v / 128);
  }
  out.push(v);
  return Buffer.from(out);
}

/** A length-delimited field (wire type 2). */
export function lengthField(field: number, value: Buffer): Buffer {
  return Buffer.concat([varint((field << 3) | 2), varint(value.length), value]);
}

/**
 * `count` map entries of MessageProperties.properties (field 1), each with a distinct key of
 * `keyLength` letters (while 26^keyLength lasts) and a value of `valueLength` bytes:
 * 6 + keyLength + valueLength bytes an entry.
 */
export function propertyEntries(count: number, valueLength = 0, keyLength = 2): Buffer {
  const size = 6 + keyLength + valueLength;
  const buf = Buffer.alloc(count * size, 0x76);
  for (let i = 0; i < count; i++) {
    const o = i * size;
    buf[o] = 0x0a; // field 1, length-delimited: one map entry
    buf[o + 1] = size - 2;
    buf[o + 2] = 0x0a; // its key
    buf[o + 3] = keyLength;
    let n = i;
    for (let k = 0; k < keyLength; k++) {
      buf[o + 4 + k] = 0x41 + (n % 26);
      n = Math.floor(n / 26);
    }
    buf[o + 4 + keyLength] = 0x12; // its value
    buf[o + 5 + keyLength] = valueLength;
  }
  return buf;
}

/** The gateway's default MAX_MESSAGE_SIZE, as the limits in its errors show it. */
export const DEFAULT_MAX_MESSAGE = loadConfig({}).maxMessageSize;
