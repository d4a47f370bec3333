/**
 * Streams that never read. A raw HTTP/2 client opens ReceiveMessages and never reads it, so the
 * gateway's writes stop at the HTTP/2 window. With a short ACK_TIMEOUT and STREAM_STALL_TIMEOUT:
 * memory stays bounded (a gateway that re-sends the message every ack timeout writes ~10 MiB/s into a stream nobody reads), no ack
 * timeout fires for a message the client never got, the stream is ended after the stall timeout
 * and its connection cut, and the message is neither dead-lettered nor counted as an attempt.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { call, receive } from '../support/gateway.js';
import { assertResourcesSettle, countResources, eventually, type ResourceCounts } from '../support/leaks.js';
import {
  ALICE,
  assertHealthy,
  awaitMessage,
  BOB,
  createConsumer,
  createProducer,
  encode,
  gauge,
  grpcFrame,
  MiB,
  md,
  memoryNow,
  RawH2,
  type Stream,
  startTenantGateway,
  tempDir,
} from './helpers.js';

const ACK_TIMEOUT_MS = 500;
const STALL_TIMEOUT_MS = 3000;
const PAYLOAD = MiB;
const STREAMS = 10;

const report: string[] = [];

/** A gateway where alice reads normally and bob's streams never read. */
async function start(extra: Parameters<typeof startTenantGateway>[0] = {}) {
  const gw = await startTenantGateway({
    ackTimeoutMs: ACK_TIMEOUT_MS,
    streamStallTimeoutMs: STALL_TIMEOUT_MS,
    consumerCleanupTimeoutMs: 60_000,
    ...extra,
  });
  const topic = `nr-${randomUUID()}`;
  const aliceProducer = await createProducer(gw.alice, ALICE, topic);
  const aliceConsumer = await createConsumer(gw.alice, ALICE, topic, `nr-alice-${randomUUID()}`);
  const aliceStream = receive(gw.alice, aliceConsumer, md(ALICE));
  await eventually(async () => (await gauge(gw.metricsUrl, 'active_streams')) === 1, "alice's stream");
  const bobProducer = await createProducer(gw.bob, BOB, topic);
  return { gw, topic, aliceProducer, aliceConsumer, aliceStream, bobProducer };
}

type Setup = Awaited<ReturnType<typeof start>>;

/** Alice's producer sends and her reading stream receives and acks: she is unaffected. */
async function aliceUnaffected(s: Setup): Promise<void> {
  const body = `alice-${randomUUID()}`;
  await call(s.gw.alice, 'SendMessage', { producer_id: s.aliceProducer, message_body: body }, md(ALICE));
  const m = await awaitMessage(s.aliceStream, body);
  await call(
    s.gw.alice,
    'AckMessage',
    { consumer_id: s.aliceConsumer, receipt_handle: m.receipt_handle },
    md(ALICE),
  );
  assert.equal(s.aliceStream.ended, false);
  await assertHealthy(s.gw.alice, ALICE);
}

/** Opens a never-reading ReceiveMessages stream for bob's consumer on its own connection. */
function neverReading(s: Setup, consumerId: string): RawH2 {
  const h2 = new RawH2(s.gw.gateway.grpcPort);
  h2.neverReading('ReceiveMessages', grpcFrame(encode('ReceiveMessages', { consumer_id: consumerId })), {
    authorization: `Bearer ${BOB}`,
  });
  return h2;
}

describe('streams that never read', () => {
  let baseline: ResourceCounts;
  let s: Setup | undefined;
  const conns: RawH2[] = [];
  let files: ReturnType<typeof tempDir> | undefined;

  before(() => {
    baseline = countResources();
  });
  after(async () => {
    for (const c of conns) c.close();
    s?.aliceStream.end();
    await s?.gw.close();
    files?.remove();
    console.log(report.map((l) => `  ${l}`).join('\n'));
  });

  test(`${STREAMS} never-reading streams and a 1 MiB message: memory stays within 3x the payload, nothing is redelivered per ack timeout, each stream is ended after STREAM_STALL_TIMEOUT and its connection cut`, async () => {
    s = await start();
    const setup = s;
    const consumers: string[] = [];
    for (let i = 0; i < STREAMS; i++) {
      consumers.push(await createConsumer(setup.gw.bob, BOB, setup.topic, `nr-bob-${i}-${randomUUID()}`));
    }
    const memBefore = await memoryNow();
    const connections0 = await gauge(setup.gw.metricsUrl, 'connections');
    for (const id of consumers) conns.push(neverReading(setup, id));
    await eventually(
      async () => (await gauge(setup.gw.metricsUrl, 'active_streams')) === STREAMS + 1,
      'every never-reading stream attached',
    );
    const big = Buffer.alloc(PAYLOAD, 0x61);
    const t0 = Date.now();
    await call(
      setup.gw.bob,
      'SendMessage',
      { producer_id: setup.bobProducer, message_body_bytes: big },
      md(BOB),
    );
    await eventually(
      async () => (await gauge(setup.gw.metricsUrl, 'messages_delivered')) >= STREAMS + 1,
      'the message written to every stream',
    );
    // Alice reads hers: a reading client gets the whole message at once.
    const hers = await awaitMessage(setup.aliceStream, 'a'.repeat(PAYLOAD));
    await call(
      setup.gw.alice,
      'AckMessage',
      { consumer_id: setup.aliceConsumer, receipt_handle: hers.receipt_handle },
      md(ALICE),
    );
    setup.aliceStream.messages.splice(0);
    const redelivered0 = await gauge(setup.gw.metricsUrl, 'messages_redelivered');
    const full0 = await gauge(setup.gw.metricsUrl, 'channel_full_events');
    // Five ack timeouts while the streams are stuck (but not yet stalled).
    const samples: number[] = [];
    while (Date.now() - t0 < STALL_TIMEOUT_MS - 300) {
      samples.push((await memoryNow()) - memBefore);
      await aliceUnaffected(setup);
      await sleep(150);
    }
    const redelivered1 = await gauge(setup.gw.metricsUrl, 'messages_redelivered');
    const full1 = await gauge(setup.gw.metricsUrl, 'channel_full_events');
    const maxGrowth = Math.max(...samples);
    const climb = (samples.at(-1) ?? 0) - (samples[0] ?? 0);
    report.push(
      `${STREAMS} never-reading streams, 1 MiB each: memory growth ${samples.map((b) => (b / MiB).toFixed(1)).join(', ')} MiB over ${((Date.now() - t0) / 1000).toFixed(1)} s (max ${(maxGrowth / MiB).toFixed(1)} MiB, climb ${(climb / MiB).toFixed(1)} MiB)`,
    );
    assert.ok(
      maxGrowth < 3 * STREAMS * PAYLOAD,
      `memory grew ${(maxGrowth / MiB).toFixed(1)} MiB for ${STREAMS} MiB in transit`,
    );
    assert.ok(climb < 2 * MiB, `memory climbs ${(climb / MiB).toFixed(1)} MiB while the streams are stuck`);
    assert.equal(redelivered1, redelivered0, 'deliveries were redelivered per ack timeout');
    assert.equal(full1, full0, 'channel_full_events climbs per ack timeout');
    assert.equal(
      await gauge(setup.gw.metricsUrl, 'streams_stalled'),
      0,
      'stalled before STREAM_STALL_TIMEOUT',
    );

    await eventually(
      async () => (await gauge(setup.gw.metricsUrl, 'streams_stalled')) === STREAMS,
      'every never-reading stream ended as stalled',
      STALL_TIMEOUT_MS + 5000,
    );
    const stalledAfter = Date.now() - t0;
    await eventually(() => conns.every((c) => c.closed), 'every stalled connection cut', 5000);
    const cutAfter = Math.max(...conns.map((c) => (c.closedAt ?? 0) - t0));
    report.push(`stalled after ${stalledAfter} ms, connections cut by ${cutAfter} ms after the message`);
    assert.ok(stalledAfter >= STALL_TIMEOUT_MS - 100, `ended after ${stalledAfter} ms`);
    assert.equal(await gauge(setup.gw.metricsUrl, 'active_streams'), 1, "only alice's stream is left");
    await eventually(
      async () => (await gauge(setup.gw.metricsUrl, 'connections')) === connections0,
      'the connections of the never-reading streams gone from the gateway',
      3000,
    );
    // The ten streams held ~10 MiB in transit. What may stay is the broker's one copy of the
    // message (ten groups still owe it) and one-time warm-up of the code paths (~4 MiB measured).
    const memAfter = (await memoryNow()) - memBefore;
    report.push(`memory after the stall: ${(memAfter / MiB).toFixed(1)} MiB above the baseline`);
    assert.ok(memAfter < 8 * MiB, `${(memAfter / MiB).toFixed(1)} MiB still held after the streams ended`);
    await aliceUnaffected(setup);
  });

  test('the stall clock starts when a message is written: after idling longer than STREAM_STALL_TIMEOUT, a never-reading stream still gets the full timeout and a slow but steady reader gets its 1 MiB message', async () => {
    const setup = s as Setup;
    const idle = await createConsumer(setup.gw.bob, BOB, setup.topic, `nr-idle-${randomUUID()}`);
    const slow = await createConsumer(setup.gw.bob, BOB, setup.topic, `nr-slow-${randomUUID()}`);
    const stalled0 = await gauge(setup.gw.metricsUrl, 'streams_stalled');
    const conn = neverReading(setup, idle);
    const slowConn = new RawH2(setup.gw.gateway.grpcPort);
    conns.push(conn, slowConn);
    // Reads a chunk every 20 ms: 1 MiB takes ~1.6 s, well inside STREAM_STALL_TIMEOUT.
    const reader = slowConn.slowReading(
      'ReceiveMessages',
      grpcFrame(encode('ReceiveMessages', { consumer_id: slow })),
      { authorization: `Bearer ${BOB}` },
      20,
    );
    // Idle (nothing to write) for longer than the stall timeout: that is not a stall.
    await sleep(STALL_TIMEOUT_MS + 500);
    assert.equal(await gauge(setup.gw.metricsUrl, 'streams_stalled'), stalled0, 'an idle stream was ended');
    const t0 = Date.now();
    await call(
      setup.gw.bob,
      'SendMessage',
      { producer_id: setup.bobProducer, message_body_bytes: Buffer.alloc(PAYLOAD, 0x62) },
      md(BOB),
    );
    await eventually(
      async () => (await gauge(setup.gw.metricsUrl, 'streams_stalled')) >= stalled0 + 1,
      'the never-reading stream to be ended as stalled',
      STALL_TIMEOUT_MS + 5000,
    );
    const after = Date.now() - t0;
    await eventually(
      () => reader.messages === 1 || reader.status !== undefined,
      'the slow reader to finish',
      10_000,
    );
    const slowAfter = Date.now() - t0;
    report.push(
      `after ${STALL_TIMEOUT_MS + 500} ms idle: the never-reading stream was ended ${after} ms after its first message; ` +
        `the slow reader ${reader.messages === 1 ? 'got its message' : `was ended (status ${reader.status}) after ${reader.bytes} bytes`} after ${slowAfter} ms`,
    );
    const problems: string[] = [];
    if (after < STALL_TIMEOUT_MS - 100) {
      problems.push(
        `the never-reading stream was ended ${after} ms after its first message was written (STREAM_STALL_TIMEOUT=${STALL_TIMEOUT_MS} ms): the clock ran from when it attached`,
      );
    }
    if (reader.messages !== 1) {
      problems.push(
        `a client reading steadily was ended as stalled (status ${reader.status}) after ${reader.bytes} of ${PAYLOAD} bytes`,
      );
    }
    assert.deepEqual(problems, [], problems.join('; '));
    await aliceUnaffected(setup);
  });

  /**
   * A never-reading stream is stalled with a 1 MiB message; then the same client comes back on
   * the same consumer, reading. Returns what the reader and a dead-letter watcher received.
   */
  const stallThenRead = async (brokerUrl: string) => {
    for (const c of conns.splice(0)) c.close();
    s?.aliceStream.end();
    await s?.gw.close();
    files ??= tempDir();
    const watchToken = 'dlq-watch-token-0123456789';
    const authFile = files.file(
      'auth.json',
      JSON.stringify({
        principals: { 'dlq-watch': { token: watchToken, consume: ['%DLQ%*'], groups: ['*'] } },
      }),
    );
    s = await start({ brokers: [{ url: brokerUrl, endpoints: [] }], authFile });
    const setup = s;
    const group = `nr-dlq-${randomUUID()}`;
    const dlqConsumer = await createConsumer(setup.gw.bob, watchToken, `%DLQ%${group}`, 'watch');
    const dlq = receive(setup.gw.bob, dlqConsumer, md(watchToken));
    const consumer = await createConsumer(setup.gw.bob, BOB, setup.topic, group);
    const conn = neverReading(setup, consumer);
    conns.push(conn);
    let reader: Stream | undefined;
    try {
      await eventually(
        async () => (await gauge(setup.gw.metricsUrl, 'active_streams')) === 3,
        'streams attached',
      );
      await call(
        setup.gw.bob,
        'SendMessage',
        { producer_id: setup.bobProducer, message_body: 'c'.repeat(PAYLOAD) },
        md(BOB),
      );
      await eventually(
        async () => (await gauge(setup.gw.metricsUrl, 'streams_stalled')) === 1,
        'the stream ended as stalled',
        STALL_TIMEOUT_MS + 5000,
      );
      await eventually(() => conn.closed, 'the stalled connection cut', 5000);
      reader = receive(setup.gw.bob, consumer, md(BOB));
      await eventually(
        () => reader?.messages.length === 1 || dlq.messages.length > 0 || reader?.ended === true,
        'the message to reach the reader (or the dead-letter topic)',
        5000,
      );
      await sleep(200);
      const got = [...reader.messages];
      report.push(
        `${brokerUrl}, after a stall: the reader got ${got.length} (reconsume_times ${got.map((m) => m.reconsume_times).join(',') || '-'}), the dead-letter topic ${dlq.messages.length}`,
      );
      for (const m of got) {
        await call(
          setup.gw.bob,
          'AckMessage',
          { consumer_id: consumer, receipt_handle: m.receipt_handle },
          md(BOB),
        );
      }
      return { got, dead: dlq.messages.length };
    } finally {
      reader?.end();
      dlq.end();
    }
  };

  test('after a stall, a reading stream on the same consumer receives the message with reconsume_times 0: the stall was not a delivery attempt', async () => {
    const { got, dead } = await stallThenRead('memory://');
    assert.equal(dead, 0);
    assert.equal(got.length, 1, 'the reading stream did not get the message');
    assert.equal(got[0]?.message_body.length, PAYLOAD);
    assert.equal(
      got[0]?.reconsume_times,
      0,
      'the stall counted as a delivery attempt (reconsume_times inflated)',
    );
    await aliceUnaffected(s as Setup);
  });

  test('after a stall with maxAttempts=1, the message is not dead-lettered: a message the client never received reaches the reading stream', async () => {
    const { got, dead } = await stallThenRead('memory://?maxAttempts=1');
    assert.equal(dead, 0, 'a message the client never received went to the dead-letter topic');
    assert.equal(got.length, 1, 'the reading stream did not get the message');
    assert.equal(got[0]?.reconsume_times, 0);
    await aliceUnaffected(s as Setup);
  });

  test('closing the gateway returns every handle to the baseline', async () => {
    for (const c of conns.splice(0)) c.close();
    s?.aliceStream.end();
    await s?.gw.close();
    s = undefined;
    await assertResourcesSettle(baseline);
  });
});
