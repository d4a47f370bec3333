/**
 * Idle and trickling sockets. With HEADERS_TIMEOUT=1s, a connection to the gRPC port or the HTTP
 * port that sends nothing, or sends its first request a byte at a time, is closed within the
 * timeout plus one sweep; a client that makes calls is never affected.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { connect as tcpConnect } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { call, rawClient, receive } from '../support/gateway.js';
import { assertResourcesSettle, countResources, eventually, type ResourceCounts } from '../support/leaks.js';
import {
  ALICE,
  assertHealthy,
  assertRoundTrip,
  createConsumer,
  createProducer,
  encode,
  gauge,
  grpcFrame,
  md,
  RawH2,
  refusals,
  type Stream,
  startTenantGateway,
  type TenantGateway,
} from './helpers.js';

const HEADERS_TIMEOUT_MS = 1000;
/** One sweep (HEADERS_TIMEOUT/4) plus scheduling on a loaded 2-core machine. */
const SLACK_MS = 1500;
/**
 * CONNECTION_IDLE_TIMEOUT is enforced by idle timers (grpc-js's and the listener's) that a loaded CI machine was
 * once seen to run 2 s late (closed 4,010 ms after the call). The bound still fails when the cut
 * is missing: the trickled frame (200 bytes, one per 100 ms) keeps the socket busy for 20 s.
 */
const IDLE_SLACK_MS = 4000;

const report: string[] = [];

interface Probe {
  /** ms from connect to close; undefined while open. */
  closedAfter: number | undefined;
  /** Bytes the server sent. */
  received: number;
  destroy(): void;
  write(b: Buffer | string): void;
}

function openSocket(port: number): Promise<Probe> {
  return new Promise((resolve, reject) => {
    const socket = tcpConnect(port, '127.0.0.1');
    let t0 = 0;
    const probe: Probe = {
      closedAfter: undefined,
      received: 0,
      destroy: () => socket.destroy(),
      write: (b) => {
        if (!socket.destroyed) socket.write(b);
      },
    };
    socket.on('error', () => {});
    // Read (and drop) whatever the server sends: only how much, and its close, matter.
    socket.on('data', (d: Buffer) => {
      probe.received += d.length;
    });
    socket.once('close', () => {
      probe.closedAfter = Date.now() - t0;
    });
    socket.once('connect', () => {
      t0 = Date.now();
      resolve(probe);
    });
    socket.once('error', reject);
  });
}

/** An HTTP/2 frame header. */
function frameHeader(length: number, type: number, flags: number, streamId: number): Buffer {
  const b = Buffer.alloc(9);
  b.writeUIntBE(length, 0, 3);
  b[3] = type;
  b[4] = flags;
  b.writeUInt32BE(streamId, 5);
  return b;
}

/** HPACK "literal header field without indexing, new name" for short names and values. */
function hpackLiterals(fields: Array<[string, string]>): Buffer {
  return Buffer.concat(
    fields.map(([name, value]) =>
      Buffer.concat([
        Buffer.from([0, name.length]),
        Buffer.from(name),
        Buffer.from([value.length]),
        Buffer.from(value),
      ]),
    ),
  );
}

function summary(ms: number[]): string {
  const sorted = [...ms].sort((a, b) => a - b);
  return `min ${sorted[0]} ms, median ${sorted[Math.floor(sorted.length / 2)]} ms, max ${sorted.at(-1)} ms`;
}

describe('idle and trickling connections are closed after HEADERS_TIMEOUT; working clients are not', () => {
  let gw: TenantGateway;
  let baseline: ResourceCounts;
  const topic = `idle-${randomUUID()}`;
  let producer = '';
  let consumer = '';
  let stream: Stream;
  let httpPort = 0;

  const aliceUnaffected = (): Promise<void> =>
    assertRoundTrip(gw.alice, ALICE, { producer: producer, consumer: consumer, stream: stream });

  before(async () => {
    baseline = countResources();
    gw = await startTenantGateway({ headersTimeoutMs: HEADERS_TIMEOUT_MS });
    httpPort = gw.gateway.metricsPort;
    producer = await createProducer(gw.alice, ALICE, topic);
    consumer = await createConsumer(gw.alice, ALICE, topic, `idle-${randomUUID()}`);
    stream = receive(gw.alice, consumer, md(ALICE));
  });
  after(async () => {
    stream?.end();
    await gw?.close();
    console.log(report.map((l) => `  ${l}`).join('\n'));
  });

  for (const [name, port] of [
    ['gRPC', () => gw.gateway.grpcPort],
    ['HTTP', () => httpPort],
  ] as const) {
    test(`50 sockets to the ${name} port that send nothing are closed within HEADERS_TIMEOUT plus one sweep`, async () => {
      const probes = await Promise.all(Array.from({ length: 50 }, () => openSocket(port())));
      try {
        await eventually(
          () => probes.every((p) => p.closedAfter !== undefined),
          `all 50 idle ${name} sockets closed`,
          HEADERS_TIMEOUT_MS + SLACK_MS + 2000,
        );
        const times = probes.map((p) => p.closedAfter as number);
        report.push(`50 idle ${name} sockets closed after ${summary(times)}`);
        for (const t of times) {
          assert.ok(
            t >= HEADERS_TIMEOUT_MS - 50,
            `a ${name} socket was closed after ${t} ms, before HEADERS_TIMEOUT`,
          );
          assert.ok(
            t <= HEADERS_TIMEOUT_MS + SLACK_MS,
            `a ${name} socket lived ${t} ms (HEADERS_TIMEOUT=${HEADERS_TIMEOUT_MS})`,
          );
        }
      } finally {
        for (const p of probes) p.destroy();
      }
      await aliceUnaffected();
    });
  }

  test('a gRPC socket that sends the HTTP/2 preface, then a HEADERS frame one byte every 100 ms, is cut', async () => {
    const p = await openSocket(gw.gateway.grpcPort);
    const quotaBefore = (await refusals(gw.metricsUrl)).quota;
    try {
      p.write('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');
      p.write(Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0])); // empty SETTINGS
      // HEADERS on stream 1, END_HEADERS, 200 bytes announced: it never completes.
      const frame = Buffer.concat([Buffer.from([0, 0, 200, 1, 4, 0, 0, 0, 1]), Buffer.alloc(200, 0x82)]);
      for (let i = 0; i < frame.length && p.closedAfter === undefined; i++) {
        p.write(frame.subarray(i, i + 1));
        await sleep(100);
      }
      await eventually(
        () => p.closedAfter !== undefined,
        'the trickling socket cut',
        HEADERS_TIMEOUT_MS + SLACK_MS,
      );
      report.push(`gRPC socket trickling a HEADERS frame cut after ${p.closedAfter} ms`);
      assert.ok((p.closedAfter as number) <= HEADERS_TIMEOUT_MS + SLACK_MS);
      assert.ok((await refusals(gw.metricsUrl)).quota > quotaBefore, 'the cut is audited');
    } finally {
      p.destroy();
    }
    await aliceUnaffected();
  });

  test('an HTTP socket that sends its request headers one byte every 100 ms is cut', async () => {
    const p = await openSocket(httpPort);
    try {
      const request = Buffer.from(
        `GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ${'a'.repeat(200)}\r\n\r\n`,
      );
      for (let i = 0; i < request.length && p.closedAfter === undefined; i++) {
        p.write(request.subarray(i, i + 1));
        await sleep(100);
      }
      await eventually(
        () => p.closedAfter !== undefined,
        'the trickling socket cut',
        HEADERS_TIMEOUT_MS + SLACK_MS,
      );
      report.push(`HTTP socket trickling its headers cut after ${p.closedAfter} ms`);
      assert.ok((p.closedAfter as number) <= HEADERS_TIMEOUT_MS + SLACK_MS);
    } finally {
      p.destroy();
    }
    await aliceUnaffected();
  });

  test('clients that make calls are not affected: a grpc-js client calling every 100 ms for 3 s, an open stream, and a raw HTTP/2 connection idle after its first call', async () => {
    const client = rawClient(gw.gateway.grpcPort);
    const h2 = new RawH2(gw.gateway.grpcPort);
    try {
      const first = await h2.unary('HealthCheck', grpcFrame(encode('HealthCheck', {})));
      assert.equal(first.code, 0);
      const t0 = Date.now();
      let calls = 0;
      while (Date.now() - t0 < 3 * HEADERS_TIMEOUT_MS) {
        await call(client, 'HealthCheck', {});
        calls++;
        await sleep(100);
      }
      assert.ok(calls >= 20);
      assert.equal(h2.closed, false, 'a connection that made a call was cut by HEADERS_TIMEOUT');
      const again = await h2.unary('HealthCheck', grpcFrame(encode('HealthCheck', {})));
      assert.equal(again.code, 0);
      report.push(`a grpc-js client made ${calls} calls over 3 s on one connection, unaffected`);
      assert.ok((await gauge(gw.metricsUrl, 'connections')) >= 2);
    } finally {
      client.close();
      h2.close();
    }
    await aliceUnaffected();
  });

  test('a connection that made one call and then trickles a HEADERS frame is closed after CONNECTION_IDLE_TIMEOUT', async () => {
    const idle = await startTenantGateway({
      headersTimeoutMs: HEADERS_TIMEOUT_MS,
      connectionIdleTimeoutMs: 2000,
    });
    const p = await openSocket(idle.gateway.grpcPort);
    try {
      // One complete HealthCheck by hand: preface, SETTINGS, HEADERS (HPACK literals), DATA.
      p.write('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');
      p.write(Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0]));
      const headers = hpackLiterals([
        [':method', 'POST'],
        [':scheme', 'http'],
        [':path', '/rocketmq.RocketMQProxy/HealthCheck'],
        [':authority', '127.0.0.1'],
        ['content-type', 'application/grpc'],
        ['te', 'trailers'],
      ]);
      p.write(Buffer.concat([frameHeader(headers.length, 1, 4, 1), headers]));
      const body = grpcFrame(Buffer.alloc(0));
      p.write(Buffer.concat([frameHeader(body.length, 0, 1, 1), body]));
      await eventually(
        async () => (await gauge(idle.metricsUrl, 'total_requests')) === 1 && p.received > 0,
        'the hand-made call served',
      );
      const served = Date.now();
      await sleep(HEADERS_TIMEOUT_MS + 300);
      assert.equal(p.closedAfter, undefined, 'a connection that made a call was cut by HEADERS_TIMEOUT');
      // Then a HEADERS frame on stream 3, one byte every 100 ms: it never completes.
      const frame = Buffer.concat([frameHeader(200, 1, 4, 3), Buffer.alloc(200, 0x82)]);
      for (let i = 0; i < frame.length && p.closedAfter === undefined; i++) {
        p.write(frame.subarray(i, i + 1));
        await sleep(100);
      }
      await eventually(
        () => p.closedAfter !== undefined,
        'the trickling connection closed',
        2000 + IDLE_SLACK_MS + 1000,
      );
      const after = Date.now() - served;
      report.push(
        `a connection trickling a HEADERS frame after one call closed ${after} ms after the call (CONNECTION_IDLE_TIMEOUT=2000 ms)`,
      );
      assert.ok(after <= 2000 + IDLE_SLACK_MS, `lived ${after} ms after its call`);
      await assertHealthy(idle.alice, ALICE);
    } finally {
      p.destroy();
      await idle.close();
    }
    await aliceUnaffected();
  });

  test('after all of that the gateway is healthy, and closing it returns every handle to the baseline', async () => {
    await aliceUnaffected();
    stream.end();
    await gw.close();
    await assertResourcesSettle(baseline);
  });
});
