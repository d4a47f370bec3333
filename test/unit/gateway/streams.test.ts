/**
 * The streaming RPCs on the embedded broker, through a raw grpc-js client: Subscribe (credit,
 * in-stream acks and nacks, sessions owned by the stream or resumed by id, release on every way a
 * stream ends) and Publish (per-key order, per-entry failures, transactions, the window), their
 * malformed frames, ownership and quotas, a Subscribe stream that never reads, and what is left
 * after either end closes mid-stream.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { type ClientHttp2Stream, constants } from 'node:http2';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { status } from '@grpc/grpc-js';
import type { Gateway } from '../../../src/gateway/server.js';
import {
  ALICE,
  BOB,
  codeName,
  createConsumer,
  createProducer,
  encode,
  grpcFrame,
  KEYS,
  MiB,
  md,
  memoryNow,
  RawH2,
  refusals,
  startTenantGateway,
  type TenantGateway,
  tempDir,
} from '../../hostile/helpers.js';
import { startChildGateway } from '../../support/child-gateway.js';
import {
  call,
  metricsJson,
  type RawClient,
  type Received,
  rawClient,
  receive,
  startTestGateway,
  type TestGateway,
} from '../../support/gateway.js';
import { eventually, withLeakCheck } from '../../support/leaks.js';
import {
  ackingSubscriber,
  type Ended,
  type PublishEntry,
  publish,
  publishAll,
  type SubscribeStream,
  subscribe,
} from '../../support/streams.js';

const uid = (prefix: string): string => `${prefix}-${randomUUID()}`;

type Counter =
  | 'active_consumers'
  | 'active_streams'
  | 'publish_streams'
  | 'inflight_deliveries'
  | 'pending_transactions'
  | 'messages_sent'
  | 'messages_delivered'
  | 'messages_acked'
  | 'messages_redelivered'
  | 'consumer_leak_detections'
  | 'streams_stalled';

/** The gateway's live counters, read in-process (cheap enough to poll). */
const live = (gw: TestGateway | Gateway): Record<Counter, number> =>
  ('gateway' in gw ? gw.gateway : gw).metrics.json() as Record<Counter, number>;

/** Asserts a stream ended with `code` (and details matching `pattern`). */
async function expectEnd(
  s: { ending(ms?: number): Promise<Ended> },
  code: number,
  pattern?: RegExp,
  ms?: number,
): Promise<Ended> {
  const st = await s.ending(ms);
  assert.equal(
    codeName(st.code),
    codeName(code),
    `expected ${codeName(code)}, got ${codeName(st.code)}: ${st.details}`,
  );
  if (pattern) assert.match(st.details, pattern);
  return st;
}

/** A foreign id must get exactly the answer of a missing one (the id itself taken out). */
function sameAsMissing(foreign: Ended, foreignId: string, missing: Ended, missingId: string): void {
  assert.equal(codeName(foreign.code), 'NOT_FOUND', foreign.details);
  assert.equal(codeName(missing.code), 'NOT_FOUND', missing.details);
  assert.equal(
    foreign.details.split(foreignId).join('<id>'),
    missing.details.split(missingId).join('<id>'),
    'a foreign id is told apart from a missing one',
  );
}

/** Sends `bodies` with unary SendMessage (for tests about Subscribe, not Publish). */
async function sendAll(client: RawClient, producerId: string, bodies: readonly string[]): Promise<void> {
  for (const body of bodies)
    await call(client, 'SendMessage', { producer_id: producerId, message_body: body });
}

const bodiesOf = (ms: readonly Received[]): string[] => ms.map((m) => m.message_body);

/** A raw HTTP/2 gRPC stream that writes frames and does not read until told to. */
function rawStream(h2: RawH2, method: 'Subscribe' | 'Publish') {
  const req: ClientHttp2Stream = h2.session.request({
    [constants.HTTP2_HEADER_METHOD]: 'POST',
    [constants.HTTP2_HEADER_PATH]: `/rocketmq.RocketMQProxy/${method}`,
    'content-type': 'application/grpc',
    te: 'trailers',
  });
  req.pause();
  req.on('error', () => {});
  let ended: Ended | undefined;
  const onHeaders = (h: Record<string, unknown>): void => {
    if (h['grpc-status'] !== undefined && ended === undefined) {
      ended = {
        code: Number(h['grpc-status']),
        details: decodeURIComponent(String(h['grpc-message'] ?? '')),
      };
    }
  };
  req.on('response', onHeaders);
  req.on('trailers', onHeaders);
  return {
    req,
    get status(): Ended | undefined {
      return ended;
    },
    /** Starts reading (and discarding) what the gateway sent. */
    read(): void {
      req.on('data', () => {});
      req.resume();
    },
  };
}

describe('Subscribe and Publish on memory://', () => {
  let gw: TestGateway;

  before(async () => {
    gw = await startTestGateway();
  });
  after(async () => {
    await gw.close();
  });

  // -------------------------------------------------------------------------------------------
  // 1. Per-key order
  // -------------------------------------------------------------------------------------------

  for (const credit of [1, 1000]) {
    test(`per-key order through Subscribe with credit ${credit}: 2,000 messages over 20 sharding keys published on Publish, acked as they come, each key in order, none missing`, async () => {
      const topic = uid('ord');
      const KEYS_N = 20;
      const N = 2000;
      const sub = ackingSubscriber(gw.client);
      const acked0 = live(gw).messages_acked;
      try {
        await sub.open({ ...KEYS, topic, group_id: uid('ord-g') }, credit);
        const producerId = await createProducer(gw.client, undefined, topic);
        const entries: PublishEntry[] = Array.from({ length: N }, (_, i) => {
          const key = `k${i % KEYS_N}`;
          return {
            sequence: String(i + 1),
            message_body: `${key}:${Math.floor(i / KEYS_N)}`,
            sharding_key: key,
          };
        });
        const { results, arrival } = await publishAll(gw.client, producerId, entries, { perFrame: 100 });
        assert.deepEqual(
          results.filter((r) => !r.success).map((r) => `${r.sequence}: ${r.message}`),
          [],
          'every publish succeeded',
        );
        // Results of one key come back in send order.
        const lastSeq = new Map<string, number>();
        for (const r of arrival) {
          const key = `k${(Number(r.sequence) - 1) % KEYS_N}`;
          const seq = Number(r.sequence);
          assert.ok(seq > (lastSeq.get(key) ?? 0), `result ${seq} of ${key} came after a later one`);
          lastSeq.set(key, seq);
        }

        await eventually(() => sub.messages.length >= N || sub.ended, `${N} deliveries`, 60_000);
        assert.equal(sub.ended, false, `the stream ended: ${sub.status?.details}`);
        const perKey = new Map<string, number[]>();
        for (const m of sub.messages) {
          const [key, n] = m.message_body.split(':') as [string, string];
          assert.equal(m.properties.SHARDING_KEY, key);
          assert.equal(m.reconsume_times, 0, `${m.message_body} was redelivered`);
          const list = perKey.get(key) ?? [];
          list.push(Number(n));
          perKey.set(key, list);
        }
        assert.equal(perKey.size, KEYS_N);
        const expected = Array.from({ length: N / KEYS_N }, (_, i) => i);
        for (const [key, ns] of perKey) assert.deepEqual(ns, expected, `${key}: in order, none missing`);
        assert.equal(sub.messages.length, N, 'no duplicates');
        // Credit bounds every frame: one message each at credit 1, the batch cap at 1,000.
        const most = Math.max(...sub.batches);
        if (credit === 1) assert.equal(most, 1, 'a frame carried more messages than the credit');
        else assert.ok(most <= 256, `a frame carried ${most} messages`);
        await eventually(() => live(gw).messages_acked - acked0 === N, 'every in-stream ack counted');
        assert.equal(live(gw).inflight_deliveries, 0);
      } finally {
        sub.cancel();
      }
    });
  }

  // -------------------------------------------------------------------------------------------
  // 2. Credit
  // -------------------------------------------------------------------------------------------

  test('credit 0 delivers nothing; credit 3 delivers exactly 3; unacked deliveries never exceed the credit granted nor MESSAGE_BUFFER_SIZE (nor max_in_flight)', async () => {
    const g = await startTestGateway({ messageBufferSize: 5 });
    const topic = uid('credit');
    const sub = subscribe(g.client);
    const capped = subscribe(g.client);
    let sampling = true;
    let maxInflight = 0;
    const sampler = (async () => {
      while (sampling) {
        maxInflight = Math.max(maxInflight, (await metricsJson(g.metricsUrl)).inflight_deliveries);
        await sleep(10);
      }
    })();
    try {
      await sub.open({ ...KEYS, topic, group_id: uid('g') }, 0);
      await capped.open({ ...KEYS, topic, group_id: uid('g'), max_in_flight: 2 }, 100);
      const producerId = await createProducer(g.client, undefined, topic);
      const bodies = Array.from({ length: 10 }, (_, i) => `m${i}`);
      await sendAll(g.client, producerId, bodies);

      // max_in_flight 2 with credit 100: two at a time.
      await eventually(() => capped.messages.length === 2, 'two deliveries on the capped stream');
      // A short window in which nothing may arrive: absence cannot be polled for.
      await sleep(300);
      assert.equal(sub.messages.length, 0, 'a stream without credit received messages');
      assert.equal(capped.messages.length, 2, 'max_in_flight 2 let more through');
      assert.equal(maxInflight <= 2, true, `inflight_deliveries reached ${maxInflight}`);

      sub.write({ credit: 3 });
      await eventually(() => sub.messages.length >= 3, 'three deliveries after credit 3');
      await sleep(300);
      assert.equal(sub.messages.length, 3, 'credit 3 delivered more than 3');
      assert.ok(maxInflight <= 5, `inflight_deliveries reached ${maxInflight}`);

      // Plenty of credit, but MESSAGE_BUFFER_SIZE is 5: two more, then nothing until acks.
      sub.write({ credit: 100 });
      await eventually(() => sub.messages.length >= 5, 'deliveries up to MESSAGE_BUFFER_SIZE');
      await sleep(300);
      assert.equal(sub.messages.length, 5, 'more unacked deliveries than MESSAGE_BUFFER_SIZE');
      assert.equal((await metricsJson(g.metricsUrl)).inflight_deliveries, 5 + 2);
      sub.ack(sub.messages.map((m) => m.receipt_handle));
      await eventually(() => sub.messages.length === 10, 'the rest after the acks');
      sub.ack(sub.messages.slice(5).map((m) => m.receipt_handle));
      capped.ack(capped.messages.map((m) => m.receipt_handle));
      await eventually(() => capped.messages.length === 4, 'the capped stream gets two more after its acks');
      assert.deepEqual(bodiesOf(sub.messages).sort(), [...bodies].sort());
      sampling = false;
      await sampler;
      assert.ok(maxInflight <= 5 + 2, `inflight_deliveries reached ${maxInflight}`);
      assert.equal(sub.ended || capped.ended, false);
      assert.equal((await metricsJson(g.metricsUrl)).channel_full_events > 0, true);
    } finally {
      sampling = false;
      await sampler;
      sub.cancel();
      capped.cancel();
      await g.close();
    }
  });

  // -------------------------------------------------------------------------------------------
  // 3. In-stream ack failures
  // -------------------------------------------------------------------------------------------

  test("in-stream acks of unknown handles and of another session's handles fail per handle with NOT_FOUND, in one failures frame, without ending the stream; valid acks in the same frame succeed", async () => {
    const topic = uid('acks');
    const a = subscribe(gw.client);
    const b = subscribe(gw.client);
    try {
      await a.open({ ...KEYS, topic, group_id: uid('ga') }, 10);
      await b.open({ ...KEYS, topic, group_id: uid('gb') }, 10);
      const producerId = await createProducer(gw.client, undefined, topic);
      await sendAll(gw.client, producerId, ['one', 'two', 'three']);
      await eventually(() => a.messages.length === 3 && b.messages.length === 3, 'both sessions receive');
      const [a0, a1, a2] = a.messages.map((m) => m.receipt_handle) as [string, string, string];
      const [b0] = b.messages.map((m) => m.receipt_handle) as [string];
      const acked0 = live(gw).messages_acked;
      const unknown = randomUUID();
      const tooLong = 'h'.repeat(65);
      a.write({
        acks: [a0, unknown, b0, a1, tooLong],
        nacks: [
          { receipt_handle: randomUUID(), delay_ms: '0' },
          // 13 h: over MAX_NACK_DELAY (12 h by default).
          { receipt_handle: a2, delay_ms: String(13 * 3600_000) },
        ],
      });
      await eventually(() => a.failures.length >= 5, 'five failures');
      await sleep(100);
      assert.equal(a.failures.length, 5, JSON.stringify(a.failures));
      assert.equal(a.failureFrames, 1, 'the failures of one frame come in one frame');
      const byHandle = new Map(a.failures.map((f) => [f.receipt_handle, f]));
      for (const h of [unknown, b0]) {
        assert.equal(byHandle.get(h)?.code, 'NOT_FOUND', `ack of ${h}`);
        assert.match(byHandle.get(h)?.message ?? '', /is not pending on consumer/);
      }
      assert.equal(byHandle.get(tooLong.slice(0, 64))?.code, 'INVALID_ARGUMENT');
      assert.equal(byHandle.get(a2)?.code, 'INVALID_ARGUMENT');
      assert.match(byHandle.get(a2)?.message ?? '', /MAX_NACK_DELAY/);
      const nackFailures = a.failures.filter((f) => f.code === 'NOT_FOUND' && f.receipt_handle !== b0);
      assert.equal(nackFailures.length, 2, 'the unknown ack and the unknown nack');
      await eventually(() => live(gw).messages_acked - acked0 === 2, 'the two valid acks');
      assert.equal(a.ended, false, `the stream ended: ${a.status?.details}`);

      // The other session still holds its delivery: its own ack succeeds.
      b.ack([b0]);
      await eventually(() => live(gw).messages_acked - acked0 === 3, "b's ack of its own handle");
      assert.equal(b.failures.length, 0);
      // The stream goes on: a2 is still pending and can be acked; a new message arrives.
      a.ack([a2]);
      await sendAll(gw.client, producerId, ['four']);
      await eventually(() => a.messages.some((m) => m.message_body === 'four'), 'a later message');
      await eventually(() => live(gw).messages_acked - acked0 === 4, 'the ack of a2');
      assert.equal(a.failures.length, 5);
      assert.equal(a.ended, false);
    } finally {
      a.cancel();
      b.cancel();
    }
  });

  // -------------------------------------------------------------------------------------------
  // 4. Stream end: release, owned and resumed sessions
  // -------------------------------------------------------------------------------------------

  /**
   * A stream whose open frame created its session receives c1..c5, acks two and is cancelled;
   * another Subscribe of the group then receives what was left. Returns both streams' deliveries.
   */
  const cancelThenResubscribe = async () => {
    const topic = uid('cancel');
    const group = uid('g');
    // Sessions of earlier tests' streams close asynchronously after their cancel.
    await eventually(
      () => live(gw).active_consumers === 0 && live(gw).active_streams === 0,
      'no session left by earlier tests',
    );
    const base = live(gw);
    const first = subscribe(gw.client);
    await first.open({ ...KEYS, topic, group_id: group }, 10);
    await eventually(() => live(gw).active_consumers === base.active_consumers + 1, 'the session');
    const producerId = await createProducer(gw.client, undefined, topic);
    await sendAll(gw.client, producerId, ['c1', 'c2', 'c3', 'c4', 'c5']);
    await eventually(() => first.messages.length === 5, 'five deliveries');
    assert.ok(first.messages.every((m) => m.reconsume_times === 0));
    // Two acked, three left unacked.
    first.ack(first.messages.slice(0, 2).map((m) => m.receipt_handle));
    await eventually(() => live(gw).messages_acked === base.messages_acked + 2, 'two acks');
    first.cancel();
    await eventually(
      () =>
        live(gw).active_consumers === base.active_consumers &&
        live(gw).active_streams === base.active_streams,
      'the session created by the open frame closed with its stream',
    );
    assert.equal(live(gw).inflight_deliveries, base.inflight_deliveries);

    const second = ackingSubscriber(gw.client);
    try {
      await second.open({ ...KEYS, topic, group_id: group }, 10);
      await eventually(() => second.messages.length >= 3, 'the three unacked messages again');
      await sleep(100);
      // A half-close ends the stream OK (and closes its session).
      second.end();
      await expectEnd(second, status.OK);
    } finally {
      second.cancel();
    }
    await eventually(() => live(gw).active_consumers === base.active_consumers, 'the second session closed');
    return { first: first.messages, second: second.messages, base };
  };

  test('a cancelled Subscribe releases every unacked delivery to another Subscribe of the group and closes the session its open frame created', async () => {
    const { first, second, base } = await cancelThenResubscribe();
    assert.deepEqual(bodiesOf(second).sort(), ['c3', 'c4', 'c5']);
    const ids = new Map(first.map((m) => [m.message_body, m.message_id]));
    for (const m of second) assert.equal(m.message_id, ids.get(m.message_body), 'the same message');
    assert.ok(live(gw).messages_redelivered - base.messages_redelivered >= 3);
  });

  test('released deliveries that were written to the cancelled stream come again with reconsume_times 1: the release counts once, and nothing the closing session pulls afterwards counts', async () => {
    const { second } = await cancelThenResubscribe();
    const times = Object.fromEntries(second.map((m) => [m.message_body, m.reconsume_times]));
    assert.deepEqual(times, { c3: 1, c4: 1, c5: 1 });
  });

  test('a session opened by consumer_id survives its stream until CONSUMER_CLEANUP_TIMEOUT and is resumed by a second Subscribe; one stream per session', async () => {
    const g = await startTestGateway({ consumerCleanupTimeoutMs: 3000 });
    const topic = uid('resume');
    const consumerId = await createConsumer(g.client, undefined, topic, uid('g'));
    const first = subscribe(g.client);
    const second = subscribe(g.client);
    const third = subscribe(g.client);
    try {
      assert.equal(await first.open({ consumer_id: consumerId }, 10), consumerId);
      await eventually(() => live(g).active_streams === 1, 'the stream attached');
      // A second stream on the same session is refused while the first is attached.
      const dup = subscribe(g.client);
      dup.write({ open: { consumer_id: consumerId }, credit: 1 });
      await expectEnd(dup, status.FAILED_PRECONDITION, /already has an active stream/);
      assert.equal(first.ended, false);

      const producerId = await createProducer(g.client, undefined, topic);
      await sendAll(g.client, producerId, ['r1', 'r2', 'r3']);
      await eventually(() => first.messages.length === 3, 'three deliveries');
      first.cancel();
      await eventually(() => live(g).active_streams === 0, 'the stream gone');
      assert.equal(live(g).active_consumers, 1, 'the session outlives its stream');
      assert.equal(live(g).inflight_deliveries, 0, 'its deliveries released');

      assert.equal(await second.open({ consumer_id: consumerId }, 10), consumerId);
      await eventually(() => second.messages.length === 3, 'the released deliveries on the resumed session');
      assert.deepEqual(bodiesOf(second.messages).sort(), ['r1', 'r2', 'r3']);
      assert.ok(second.messages.every((m) => m.reconsume_times === 1));
      second.ack(second.messages.map((m) => m.receipt_handle));
      await eventually(() => live(g).messages_acked === 3, 'acks on the resumed session');
      second.end();
      await expectEnd(second, status.OK);
      assert.equal(live(g).active_consumers, 1);

      // Without a stream for CONSUMER_CLEANUP_TIMEOUT, the session is reaped.
      await eventually(() => live(g).active_consumers === 0, 'the session reaped', 10_000);
      assert.equal(live(g).consumer_leak_detections, 1);
      third.write({ open: { consumer_id: consumerId }, credit: 1 });
      await expectEnd(third, status.NOT_FOUND, /not found/);
    } finally {
      for (const s of [first, second, third]) s.cancel();
      await g.close();
    }
  });

  // -------------------------------------------------------------------------------------------
  // 5. Malformed frames
  // -------------------------------------------------------------------------------------------

  describe('malformed frames end the stream with INVALID_ARGUMENT (MAX_BATCH_SIZE 10)', () => {
    let g: TestGateway;
    let producerId = '';
    let topic = '';
    before(async () => {
      g = await startTestGateway({ maxBatchSize: 10 });
      topic = uid('bad');
      producerId = await createProducer(g.client, undefined, topic);
    });
    after(async () => {
      await g.close();
    });

    const opened = async (credit = 1): Promise<SubscribeStream> => {
      const s = subscribe(g.client);
      await s.open({ ...KEYS, topic, group_id: uid('g') }, credit);
      return s;
    };

    /** After every case: no stream, session or delivery is left behind. */
    const nothingLeft = async (): Promise<void> => {
      await eventually(
        () =>
          live(g).active_streams === 0 &&
          live(g).active_consumers === 0 &&
          live(g).publish_streams === 0 &&
          live(g).inflight_deliveries === 0,
        'nothing left of the refused streams',
      );
    };

    test('a first frame without open (credit only)', async () => {
      const s = subscribe(g.client);
      s.write({ credit: 5 });
      await expectEnd(s, status.INVALID_ARGUMENT, /the first Subscribe frame must carry open/);
      await nothingLeft();
    });

    test('open in a later frame', async () => {
      const s = await opened();
      s.write({ open: { ...KEYS, topic, group_id: uid('g') } });
      await expectEnd(s, status.INVALID_ARGUMENT, /open is allowed in the first Subscribe frame only/);
      await nothingLeft();
    });

    test('an open frame with neither consumer_id nor topic and group', async () => {
      const s = subscribe(g.client);
      s.write({ open: { ...KEYS, topic }, credit: 1 });
      await expectEnd(s, status.INVALID_ARGUMENT, /needs consumer_id/);
      const t = subscribe(g.client);
      t.write({ open: { ...KEYS, topic, group_id: uid('g'), start: 'yesterday' }, credit: 1 });
      await expectEnd(t, status.INVALID_ARGUMENT, /start "yesterday" is not valid; use latest, earliest/);
      await nothingLeft();
    });

    test('negative credit in a later frame', async () => {
      const s = await opened();
      s.write({ credit: -1 });
      await expectEnd(s, status.INVALID_ARGUMENT, /credit must be a non-negative integer, got -1/);
      await nothingLeft();
    });

    test('the open frame itself with negative credit, or with more acks and nacks than MAX_BATCH_SIZE together', async () => {
      // Each is refused like the same content in a later frame; the stream must not hang.
      const problems: string[] = [];
      const cases: Array<[string, object]> = [
        ['credit -1', { credit: -1 }],
        [
          '6 acks + 6 nacks',
          {
            credit: 1,
            acks: Array.from({ length: 6 }, () => randomUUID()),
            nacks: Array.from({ length: 6 }, () => ({ receipt_handle: randomUUID(), delay_ms: '0' })),
          },
        ],
      ];
      for (const [name, rest] of cases) {
        const s = subscribe(g.client);
        s.write({ open: { ...KEYS, topic, group_id: uid('g') }, ...rest });
        try {
          const st = await s.ending(3000).catch(() => undefined);
          if (!st) problems.push(`open frame with ${name}: no status within 3 s (the stream hangs)`);
          else if (st.code !== status.INVALID_ARGUMENT)
            problems.push(`open frame with ${name}: ${codeName(st.code)} ${st.details}`);
        } finally {
          s.cancel();
        }
      }
      await nothingLeft();
      assert.deepEqual(problems, []);
    });

    test('more acks and nacks than MAX_BATCH_SIZE together in a later frame', async () => {
      const s = await opened();
      s.write({
        acks: Array.from({ length: 6 }, () => randomUUID()),
        nacks: Array.from({ length: 6 }, () => ({ receipt_handle: randomUUID(), delay_ms: '0' })),
      });
      await expectEnd(
        s,
        status.INVALID_ARGUMENT,
        /carries 12 acks and nacks; the limit is 10 \(MAX_BATCH_SIZE\)/,
      );
      await nothingLeft();
    });

    test('more than MAX_BATCH_SIZE acks in one frame: refused by the raw count, before decoding', async () => {
      const s = await opened();
      s.write({ acks: Array.from({ length: 11 }, () => randomUUID()) });
      // The raw scan's wording ("more than 10 acks"), not the decoded frame's ("carries 11").
      await expectEnd(s, status.INVALID_ARGUMENT, /the request has more than 10 acks; the limit is 10/);
      const t = await opened();
      t.write({ nacks: Array.from({ length: 11 }, () => ({ receipt_handle: randomUUID(), delay_ms: '0' })) });
      await expectEnd(t, status.INVALID_ARGUMENT, /the request has more than 10 nacks/);
      await nothingLeft();
    });

    test('a Publish frame with more than MAX_BATCH_SIZE messages', async () => {
      const sent0 = live(g).messages_sent;
      const p = publish(g.client);
      p.write({
        producer_id: producerId,
        messages: Array.from({ length: 11 }, (_, i) => ({ sequence: String(i + 1), message_body: 'x' })),
      });
      await expectEnd(p, status.INVALID_ARGUMENT, /the request has more than 10 messages; the limit is 10/);
      assert.equal(live(g).messages_sent, sent0, 'nothing of the refused frame was sent');
      await nothingLeft();
    });

    test('a Publish stream whose first frame has no producer_id', async () => {
      const p = publish(g.client);
      p.write({ messages: [{ sequence: '1', message_body: 'x' }] });
      await expectEnd(p, status.INVALID_ARGUMENT, /producer_id is required/);
      await nothingLeft();
    });

    test('a Publish frame naming another producer_id', async () => {
      const other = await createProducer(g.client, undefined, topic);
      const p = publish(g.client);
      p.write({ producer_id: producerId, messages: [{ sequence: '1', message_body: 'first' }] });
      assert.equal((await p.result('1'))?.success, true);
      p.write({ producer_id: other, messages: [{ sequence: '2', message_body: 'second' }] });
      await expectEnd(p, status.INVALID_ARGUMENT, /a Publish stream sends through one producer/);
      assert.equal(p.bySequence.has('2'), false);
      await nothingLeft();
    });
  });

  // -------------------------------------------------------------------------------------------
  // 6. Publish
  // -------------------------------------------------------------------------------------------

  test('Publish: results per key in order; failed entries (oversized, bad tag, beyond MAX_DELAY, bad level) fail alone with their code, their neighbours are sent', async () => {
    const g = await startTestGateway({ maxMessageSize: 1024 });
    const topic = uid('pub');
    const sub = ackingSubscriber(g.client);
    try {
      await sub.open({ ...KEYS, topic, group_id: uid('g') }, 1000);
      const producerId = await createProducer(g.client, undefined, topic);
      const entries: PublishEntry[] = [];
      const bad = new Map<string, RegExp>();
      let seq = 0;
      const add = (e: Omit<PublishEntry, 'sequence'>, why?: RegExp): void => {
        const sequence = String(++seq);
        entries.push({ ...e, sequence });
        if (why) bad.set(sequence, why);
      };
      for (let i = 0; i < 100; i++) {
        for (const key of ['ka', 'kb', 'kc'])
          add({ message_body: `${key}:${i}`, sharding_key: key, tag: 'T' });
        if (i % 10 === 0) add({ message_body: `plain:${i}` });
        if (i === 20) add({ message_body: 'x'.repeat(2000), sharding_key: 'ka' }, /MAX_MESSAGE_SIZE/);
        if (i === 40)
          add({ message_body: 'bad-tag', tag: 'a b', sharding_key: 'kb' }, /tag "a b" is invalid/);
        if (i === 60)
          add(
            { message_body: 'too-late', start_deliver_time: String(Date.now() + 4 * 86_400_000) },
            /MAX_DELAY/,
          );
        if (i === 80) add({ message_body: 'bad-level', delay_time_level: '19' }, /delay_time_level 19/);
      }
      const { results, arrival } = await publishAll(g.client, producerId, entries, { perFrame: 50 });
      for (const r of results) {
        const why = bad.get(r.sequence);
        if (why) {
          assert.equal(r.success, false, `entry ${r.sequence} should fail`);
          assert.equal(r.code, 'INVALID_ARGUMENT');
          assert.match(r.message, why);
          assert.equal(r.message_id, '');
        } else {
          assert.equal(r.success, true, `entry ${r.sequence}: ${r.message}`);
          assert.equal(r.code, '');
          assert.match(r.message_id, /\S/);
        }
      }
      // Per key, successful results arrive in send order.
      const keyOf = new Map(entries.map((e) => [e.sequence, e.sharding_key ?? '']));
      const last = new Map<string, number>();
      for (const r of arrival) {
        const key = keyOf.get(r.sequence) ?? '';
        if (!r.success || key === '') continue;
        assert.ok(Number(r.sequence) > (last.get(key) ?? 0), `${key}: result ${r.sequence} out of order`);
        last.set(key, Number(r.sequence));
      }
      const good = entries.filter((e) => !bad.has(e.sequence)).map((e) => e.message_body as string);
      await eventually(() => sub.messages.length >= good.length, 'every good message delivered');
      await sleep(100);
      assert.deepEqual(bodiesOf(sub.messages).sort(), [...good].sort());
      assert.equal(live(g).messages_sent, good.length);
    } finally {
      sub.cancel();
      await g.close();
    }
  });

  test('Publish: transactional entries return transaction ids that EndTransaction commits or rolls back', async () => {
    const topic = uid('ptx');
    const sub = ackingSubscriber(gw.client);
    const base = live(gw);
    try {
      await sub.open({ ...KEYS, topic, group_id: uid('g') }, 100);
      const producerId = await createProducer(gw.client, undefined, topic);
      const { results } = await publishAll(gw.client, producerId, [
        { sequence: '1', message_body: 'tx-commit', transactional: true },
        { sequence: '2', message_body: 'tx-rollback', transactional: true, trans_check_immunity_time: 60 },
        { sequence: '3', message_body: 'plain' },
        // Over MAX_TRANSACTION_IMMUNITY (1 h): fails alone.
        { sequence: '4', message_body: 'tx-bad', transactional: true, trans_check_immunity_time: 7200 },
      ]);
      const [commit, rollback, plain, tooLong] = results as [
        (typeof results)[0],
        (typeof results)[0],
        (typeof results)[0],
        (typeof results)[0],
      ];
      assert.equal(commit.success && rollback.success && plain.success, true);
      assert.match(commit.transaction_id, /^[0-9a-f-]{36}$/);
      assert.match(rollback.transaction_id, /^[0-9a-f-]{36}$/);
      assert.notEqual(commit.transaction_id, rollback.transaction_id);
      assert.equal(plain.transaction_id, '');
      assert.equal(tooLong.success, false);
      assert.match(tooLong.message, /MAX_TRANSACTION_IMMUNITY/);
      assert.equal(live(gw).pending_transactions - base.pending_transactions, 2);

      await call(gw.client, 'EndTransaction', { transaction_id: commit.transaction_id, commit: true });
      await call(gw.client, 'EndTransaction', { transaction_id: rollback.transaction_id, commit: false });
      assert.equal(live(gw).pending_transactions, base.pending_transactions);
      await sendAll(gw.client, producerId, ['sentinel']);
      await eventually(() => sub.messages.some((m) => m.message_body === 'sentinel'), 'the sentinel');
      await eventually(() => sub.messages.length >= 3, 'the committed and plain messages');
      assert.deepEqual(bodiesOf(sub.messages).sort(), ['plain', 'sentinel', 'tx-commit']);
      assert.equal(sub.messages.find((m) => m.message_body === 'tx-commit')?.message_id, commit.message_id);
    } finally {
      sub.cancel();
    }
  });

  describe('the Publish window (PUBLISH_WINDOW 8, STREAM_STALL_TIMEOUT 1.5 s) against a client that never reads its results', () => {
    const WINDOW = 8;
    const STALL_MS = 1500;

    /**
     * Writes Publish frames as fast as the transport takes them on a stream that never reads,
     * counting the frames the client's HTTP/2 stream has handed to the connection.
     */
    const flood = (h2: RawH2, producerId: string, perFrame: number, body: string, frames: number) => {
      const s = rawStream(h2, 'Publish');
      let written = 0;
      let queued = 0;
      let seq = 0;
      const pump = (): void => {
        while (queued < frames) {
          const messages = Array.from({ length: perFrame }, () => ({
            sequence: String(++seq),
            message_body: body,
          }));
          const frame = grpcFrame(
            encode('Publish', queued === 0 ? { producer_id: producerId, messages } : { messages }),
          );
          queued++;
          if (
            !s.req.write(frame, () => {
              written++;
            })
          ) {
            s.req.once('drain', pump);
            return;
          }
        }
      };
      pump();
      return {
        req: s.req,
        read: s.read,
        get status() {
          return s.status;
        },
        get written() {
          return written;
        },
        frameBytes: encode('Publish', {
          messages: Array.from({ length: perFrame }, () => ({ sequence: '100000', message_body: body })),
        }).length,
      };
    };

    /** Waits until messages_sent has not moved for `quietMs`; returns it. */
    const settledSent = async (g: TestGateway, quietMs = 600): Promise<number> => {
      let last = -1;
      let since = Date.now();
      await eventually(
        () => {
          const now = live(g).messages_sent;
          if (now !== last) {
            last = now;
            since = Date.now();
          }
          return Date.now() - since >= quietMs;
        },
        'messages_sent to stop moving',
        15_000,
      );
      return last;
    };

    test('the gateway stops reading: messages_sent stays bounded by the results the transport took plus the window and a frame; after STREAM_STALL_TIMEOUT the stream ends RESOURCE_EXHAUSTED', async () => {
      const g = await startTestGateway({ publishWindow: WINDOW, streamStallTimeoutMs: STALL_MS });
      const h2 = new RawH2(g.gateway.grpcPort);
      try {
        const producerId = await createProducer(g.client, undefined, uid('win'));
        const PER_FRAME = 100;
        const FRAMES = 1000;
        const t0 = Date.now();
        const s = flood(h2, producerId, PER_FRAME, 'w', FRAMES);
        const sent = await settledSent(g);
        const offered = PER_FRAME * FRAMES;
        // A result is at least 40 bytes on the wire; the client's HTTP/2 windows (stream and
        // connection, 64 KiB each, and its own read buffer) can take at most ~128 KiB of them.
        const bound = Math.ceil((128 * 1024) / 40) + WINDOW + PER_FRAME;
        assert.ok(sent > 0, 'nothing was sent');
        assert.ok(sent <= bound, `${sent} messages sent for a client that reads no results (bound ${bound})`);
        assert.ok(sent < offered / 10, `${sent} of ${offered} messages sent`);
        assert.ok(s.written < FRAMES / 2, `the client could write ${s.written} of ${FRAMES} frames`);
        assert.equal(live(g).publish_streams, 1);
        await sleep(300);
        assert.equal(live(g).messages_sent, sent, 'messages_sent moved while the window was full');

        // The sweep ends it; its status waits behind the unread results, so read them now.
        await eventually(() => live(g).publish_streams === 0, 'the stalled stream ended', STALL_MS + 5000);
        const endedAfter = Date.now() - t0;
        s.read();
        await eventually(() => s.status !== undefined || h2.closed, 'the status of the stalled stream');
        assert.equal(codeName(s.status?.code ?? -1), 'RESOURCE_EXHAUSTED', JSON.stringify(s.status));
        assert.match(s.status?.details ?? '', /STREAM_STALL_TIMEOUT/);
        assert.ok(endedAfter >= STALL_MS, `ended after ${endedAfter} ms`);
        assert.equal(live(g).messages_sent, sent);
        await eventually(() => live(g).active_streams === 0 && live(g).publish_streams === 0, 'nothing left');
      } finally {
        h2.close();
        await g.close();
      }
    });

    test('the gateway stops reading: once the window is full it takes no more than about one frame off the connection (HTTP/2 flow control holds the client back)', async () => {
      // Frames of 50 x 10 KB: the frames the client gets onto the connection beyond those the
      // gateway processed are what the gateway holds in memory beyond PUBLISH_WINDOW(_BYTES).
      const g = await startTestGateway({ publishWindow: WINDOW, streamStallTimeoutMs: 60_000 });
      const h2 = new RawH2(g.gateway.grpcPort);
      try {
        const producerId = await createProducer(g.client, undefined, uid('winb'));
        const PER_FRAME = 50;
        const s = flood(h2, producerId, PER_FRAME, 'b'.repeat(10_000), 200);
        const sent = await settledSent(g);
        await sleep(300);
        const processedFrames = Math.ceil(sent / PER_FRAME);
        // The gateway's HTTP/2 stream window (64 KiB) may hold part of one more frame.
        const beyond = s.written - processedFrames;
        assert.ok(
          beyond <= 2,
          `the client wrote ${s.written} frames of ${(s.frameBytes / 1024).toFixed(0)} KiB while the gateway processed ${processedFrames}: ` +
            `${beyond} frames (${((beyond * s.frameBytes) / MiB).toFixed(1)} MiB) read past the full window`,
        );
      } finally {
        h2.close();
        await g.close();
      }
    });
  });

  test('a Publish stream whose producer was released by CleanupProducer sends nothing more through it: later entries fail NOT_FOUND and no broker producer is reopened', async () => {
    const topic = uid('released');
    const sub = ackingSubscriber(gw.client);
    const p = publish(gw.client);
    try {
      await sub.open({ ...KEYS, topic, group_id: uid('g') }, 10);
      const producerId = await createProducer(gw.client, undefined, topic);
      p.write({ producer_id: producerId, messages: [{ sequence: '1', message_body: 'before' }] });
      assert.equal((await p.result('1'))?.success, true);
      await call(gw.client, 'CleanupProducer', { producer_id: producerId });
      // A unary send through the released handle is refused ...
      await assert.rejects(call(gw.client, 'SendMessage', { producer_id: producerId, message_body: 'x' }), {
        code: status.NOT_FOUND,
      });
      const base = gw.gateway.metrics.json() as Record<string, number>;
      // ... and so must an entry on a stream that named it before the release.
      p.write({ messages: [{ sequence: '2', message_body: 'after' }] });
      const r = await Promise.race([p.result('2'), p.ending().then(() => undefined)]);
      const outcome = r ? `${r.success ? 'sent' : r.code}` : `stream ended ${codeName(p.status?.code ?? -1)}`;
      assert.match(outcome, /NOT_FOUND/, `an entry after CleanupProducer: ${outcome}`);
      const now = gw.gateway.metrics.json() as Record<string, number>;
      assert.equal(now.messages_sent, base.messages_sent, 'sent through a released handle');
      assert.equal(
        now.producers_reopened,
        base.producers_reopened,
        'a broker producer reopened for a released handle',
      );
      await sleep(100);
      assert.deepEqual(bodiesOf(sub.messages), ['before']);
    } finally {
      p.cancel();
      sub.cancel();
    }
  });

  // -------------------------------------------------------------------------------------------
  // 7. Ownership, permissions, MAX_STREAMS
  // -------------------------------------------------------------------------------------------

  describe('ownership and permissions (alice, bob, and carol from AUTH_FILE)', () => {
    const CAROL = 'carol-token-0123456789abcdef';
    let t: TenantGateway;
    let files: ReturnType<typeof tempDir>;

    before(async () => {
      files = tempDir();
      const authFile = files.file(
        'auth.json',
        JSON.stringify({
          principals: {
            carol: { token: CAROL, publish: ['allowed-*'], consume: ['allowed-*'], groups: ['*'] },
          },
        }),
      );
      t = await startTenantGateway({ authFile });
    });
    after(async () => {
      await t.close();
      files.remove();
    });

    test("a Subscribe open naming another principal's consumer_id is NOT_FOUND, exactly as a missing id; the owner's session is untouched", async () => {
      const topic = uid('own');
      const alices = await createConsumer(t.alice, ALICE, topic, uid('g'));
      const ownership0 = (await refusals(t.metricsUrl)).ownership;
      const foreign = subscribe(t.bob, md(BOB));
      foreign.write({ open: { consumer_id: alices }, credit: 10 });
      const fe = await expectEnd(foreign, status.NOT_FOUND);
      const missingId = randomUUID();
      const missing = subscribe(t.bob, md(BOB));
      missing.write({ open: { consumer_id: missingId }, credit: 10 });
      const me = await expectEnd(missing, status.NOT_FOUND);
      sameAsMissing(fe, alices, me, missingId);
      assert.equal(foreign.consumerId, '', 'bob was told the session id');
      const ownership1 = (await refusals(t.metricsUrl)).ownership;
      assert.equal(ownership1 - ownership0, 1, 'the attempt is audited');
      // Alice can still attach and consume.
      const mine = ackingSubscriber(t.alice, md(ALICE));
      try {
        assert.equal(await mine.open({ consumer_id: alices }, 10), alices);
        const producer = await createProducer(t.alice, ALICE, topic);
        await call(t.alice, 'SendMessage', { producer_id: producer, message_body: 'hers' }, md(ALICE));
        await eventually(() => mine.messages.length === 1, "alice's message");
      } finally {
        mine.cancel();
      }
    });

    test("a Publish stream naming another principal's producer_id is NOT_FOUND, exactly as a missing id, and sends nothing", async () => {
      const alices = await createProducer(t.alice, ALICE, uid('own'));
      const sent0 = live(t).messages_sent;
      const foreign = publish(t.bob, md(BOB));
      foreign.write({ producer_id: alices, messages: [{ sequence: '1', message_body: 'not hers' }] });
      const fe = await expectEnd(foreign, status.NOT_FOUND);
      const missingId = randomUUID();
      const missing = publish(t.bob, md(BOB));
      missing.write({ producer_id: missingId, messages: [{ sequence: '1', message_body: 'x' }] });
      const me = await expectEnd(missing, status.NOT_FOUND);
      sameAsMissing(fe, alices, me, missingId);
      assert.equal(foreign.results.length, 0);
      assert.equal(live(t).messages_sent, sent0, "bob sent through alice's producer");
      assert.equal(live(t).publish_streams, 0);
    });

    test('a Subscribe open subscribing to a topic the principal may not consume is PERMISSION_DENIED and creates no session', async () => {
      const base = live(t).active_consumers;
      const denied = subscribe(t.client, md(CAROL));
      denied.write({ open: { ...KEYS, topic: uid('denied'), group_id: uid('g') }, credit: 1 });
      await expectEnd(denied, status.PERMISSION_DENIED, /consume/);
      assert.equal(live(t).active_consumers, base);
      const allowed = subscribe(t.client, md(CAROL));
      try {
        await allowed.open({ ...KEYS, topic: uid('allowed'), group_id: uid('g') }, 1);
        assert.equal(live(t).active_consumers, base + 1);
      } finally {
        allowed.cancel();
      }
      // And without a token at all: UNAUTHENTICATED before anything is read.
      const anonymous = subscribe(t.client);
      anonymous.write({ open: { ...KEYS, topic: uid('allowed'), group_id: uid('g') }, credit: 1 });
      await expectEnd(anonymous, status.UNAUTHENTICATED);
      const anonPublish = publish(t.client);
      anonPublish.write({ producer_id: randomUUID(), messages: [] });
      await expectEnd(anonPublish, status.UNAUTHENTICATED);
      await eventually(() => live(t).active_consumers === base, "carol's stream-owned session closed");
    });
  });

  test('MAX_STREAMS counts Subscribe and Publish streams together (and ReceiveMessages)', async () => {
    const g = await startTestGateway({ maxStreams: 2 });
    const topic = uid('quota');
    const sub = subscribe(g.client);
    const pub = publish(g.client);
    const extra: Array<{ cancel(): void }> = [];
    try {
      await sub.open({ ...KEYS, topic, group_id: uid('g') }, 1);
      const producerId = await createProducer(g.client, undefined, topic);
      pub.write({ producer_id: producerId, messages: [{ sequence: '1', message_body: 'x' }] });
      await pub.result('1');
      assert.equal(live(g).active_streams + live(g).publish_streams, 2);

      const s3 = subscribe(g.client);
      extra.push(s3);
      s3.write({ open: { ...KEYS, topic, group_id: uid('g') }, credit: 1 });
      await expectEnd(s3, status.RESOURCE_EXHAUSTED, /MAX_STREAMS/);
      const p3 = publish(g.client);
      extra.push(p3);
      p3.write({ producer_id: producerId, messages: [{ sequence: '1', message_body: 'y' }] });
      await expectEnd(p3, status.RESOURCE_EXHAUSTED, /MAX_STREAMS/);
      const consumerId = await createConsumer(g.client, undefined, topic, uid('g'));
      const s4 = subscribe(g.client);
      extra.push(s4);
      s4.write({ open: { consumer_id: consumerId }, credit: 1 });
      await expectEnd(s4, status.RESOURCE_EXHAUSTED, /MAX_STREAMS/);
      const r4 = receive(g.client, consumerId);
      await eventually(() => r4.ended, 'ReceiveMessages refused');
      assert.equal(codeName(r4.error?.code ?? 0), 'RESOURCE_EXHAUSTED', r4.error?.details);
      assert.match(r4.error?.details ?? '', /MAX_STREAMS/);
      await eventually(() => live(g).active_consumers === 2, 'no session left by the refused open frame');

      // A Publish stream ending frees its slot for a Subscribe.
      pub.end();
      await expectEnd(pub, status.OK);
      const s5 = subscribe(g.client);
      extra.push(s5);
      assert.equal(await s5.open({ consumer_id: consumerId }, 1), consumerId);
      // And a Subscribe ending frees one for a Publish.
      sub.cancel();
      await eventually(() => live(g).active_streams === 1, 'the first Subscribe gone');
      const p6 = publish(g.client);
      extra.push(p6);
      p6.write({ producer_id: producerId, messages: [{ sequence: '1', message_body: 'z' }] });
      assert.equal((await p6.result('1'))?.success, true);
    } finally {
      sub.cancel();
      pub.cancel();
      for (const e of extra) e.cancel();
      await g.close();
    }
  });

  // -------------------------------------------------------------------------------------------
  // 8. A Subscribe stream that never reads
  // -------------------------------------------------------------------------------------------

  test('a never-reading Subscribe stream and a 1 MiB message: memory bounded, no redelivery per ack timeout, ended after STREAM_STALL_TIMEOUT with RESOURCE_EXHAUSTED, the delivery released uncounted', async () => {
    const STALL_MS = 2000;
    const g = await startTestGateway({ ackTimeoutMs: 500, streamStallTimeoutMs: STALL_MS });
    const h2 = new RawH2(g.gateway.grpcPort);
    const reader = subscribe(g.client);
    try {
      const topic = uid('nr');
      const consumerId = await createConsumer(g.client, undefined, topic, uid('g'));
      const producerId = await createProducer(g.client, undefined, topic);
      const s = rawStream(h2, 'Subscribe');
      // Not ended: a half-close would end the stream.
      s.req.write(grpcFrame(encode('Subscribe', { open: { consumer_id: consumerId }, credit: 10 })));
      await eventually(() => live(g).active_streams === 1, 'the never-reading stream attached');
      const memBefore = await memoryNow();
      const t0 = Date.now();
      await call(g.client, 'SendMessage', {
        producer_id: producerId,
        message_body_bytes: Buffer.alloc(MiB, 0x61),
      });
      await eventually(() => live(g).messages_delivered === 1, 'the message written to the stream');
      const samples: number[] = [];
      let stuckSamples = 0;
      while (Date.now() - t0 < STALL_MS - 400) {
        samples.push((await memoryNow()) - memBefore);
        // Several ack timeouts pass while the stream is stuck, not yet stalled: nothing may be
        // released for redelivery (the stall's own release counts too, so only before it).
        const m = live(g);
        if (m.streams_stalled === 0) {
          stuckSamples++;
          assert.equal(m.messages_redelivered, 0, 'redelivered per ack timeout while stuck');
          assert.equal(m.inflight_deliveries, 1);
        }
        await sleep(100);
      }
      const growth = Math.max(...samples);
      assert.ok(growth < 4 * MiB, `memory grew ${(growth / MiB).toFixed(1)} MiB for 1 MiB in transit`);
      assert.ok(stuckSamples >= 3, `only ${stuckSamples} samples before the stall`);

      await eventually(() => live(g).streams_stalled === 1, 'the stream ended as stalled', STALL_MS + 5000);
      const stalledAfter = Date.now() - t0;
      assert.ok(stalledAfter >= STALL_MS - 100, `ended after ${stalledAfter} ms`);
      assert.equal(live(g).active_streams, 0);
      assert.equal(live(g).inflight_deliveries, 0, 'the delivery released');
      // The status waits behind the unread message: reading now shows it (before the cut).
      s.read();
      await eventually(() => s.status !== undefined || h2.closed, 'the status or the cut');
      assert.equal(
        codeName(s.status?.code ?? -1),
        'RESOURCE_EXHAUSTED',
        `status ${JSON.stringify(s.status)}`,
      );
      assert.match(s.status?.details ?? '', /STREAM_STALL_TIMEOUT/);

      // The session lives on; the released delivery was not an attempt.
      assert.equal(await reader.open({ consumer_id: consumerId }, 10), consumerId);
      await eventually(() => reader.messages.length === 1, 'the released message on a reading stream');
      const [m] = reader.messages as [Received];
      assert.equal(m.message_body.length, MiB);
      assert.equal(m.reconsume_times, 0, 'a delivery the client never received counted as an attempt');
      reader.ack([m.receipt_handle]);
      await eventually(() => live(g).messages_acked === 1, 'the ack');
    } finally {
      reader.cancel();
      h2.close();
      await g.close();
    }
  });

  // -------------------------------------------------------------------------------------------
  // 9. Nothing left after either end closes
  // -------------------------------------------------------------------------------------------

  test('a gateway closed with open Subscribe and Publish streams ends them UNAVAILABLE and leaves no handle', async () => {
    await withLeakCheck(async () => {
      const g = await startTestGateway();
      const client = g.client;
      const topic = uid('close');
      const owned = ackingSubscriber(client);
      const resumed = subscribe(client);
      const pub = publish(client);
      try {
        await owned.open({ ...KEYS, topic, group_id: uid('g') }, 100);
        const consumerId = await createConsumer(client, undefined, topic, uid('g'));
        await resumed.open({ consumer_id: consumerId }, 100);
        const producerId = await createProducer(client, undefined, topic);
        pub.write({
          producer_id: producerId,
          messages: Array.from({ length: 20 }, (_, i) => ({
            sequence: String(i + 1),
            message_body: `m${i}`,
          })),
        });
        await pub.resultsFor(Array.from({ length: 20 }, (_, i) => String(i + 1)));
        await eventually(() => owned.messages.length === 20 && resumed.messages.length === 20, 'deliveries');
        assert.equal(live(g).active_streams, 2);
        assert.equal(live(g).publish_streams, 1);
        await g.gateway.close();
        for (const s of [owned, resumed, pub]) await expectEnd(s, status.UNAVAILABLE, /shutting down/);
      } finally {
        await g.close();
      }
    });
  });

  test('a gateway that rejects a malformed open frame keeps serving (mqgate serve as its own process)', async () => {
    // One client's bad frame must cost that client its stream, not everyone the gateway.
    const child = await startChildGateway({ LOG_LEVEL: 'error' });
    const client = rawClient(child.grpcPort);
    try {
      const s = subscribe(client);
      s.write({ open: { ...KEYS, topic: uid('crash'), group_id: uid('g') }, credit: -1 });
      const exited = await Promise.race([child.exited, sleep(1500).then(() => undefined)]);
      assert.equal(
        exited,
        undefined,
        `mqgate serve exited (${exited}) after one Subscribe open frame with credit -1`,
      );
      const h = await call<{ healthy: boolean }>(client, 'HealthCheck', {});
      assert.equal(h.healthy, true);
      s.cancel();
    } finally {
      client.close();
      child.kill('SIGKILL');
      await child.exited;
    }
  });
});
