/**
 * Oversized and malformed fields. Each is INVALID_ARGUMENT with a short message that names the
 * field (or the request) and its limit and echoes at most ~40 characters of the input; nothing
 * of a refused request is kept (memory returns to its baseline), and the owner of the producer
 * and the stream next to it is unaffected.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { status } from '@grpc/grpc-js';
import { call, receive } from '../support/gateway.js';
import { assertResourcesSettle, countResources, type ResourceCounts } from '../support/leaks.js';
import {
  ALICE,
  assertRoundTrip,
  awaitMessage,
  BOB,
  createConsumer,
  createProducer,
  DEFAULT_MAX_MESSAGE,
  expectCode,
  gauge,
  grpcFrame,
  KEYS,
  lengthField,
  MiB,
  md,
  memoryNow,
  RawH2,
  type Stream,
  startTenantGateway,
  type TenantGateway,
} from './helpers.js';

const DAY = 86_400_000;
const YEAR = 365.25 * DAY;

/** Details must stay short whatever the input size: the field, the limit, ~40 echoed chars. */
function assertShort(details: string, inputLength: number): void {
  assert.ok(details.length < 400, `details are ${details.length} characters for a ${inputLength}-long input`);
}

/** A deterministic pseudo-random byte string (xorshift32). */
function garbage(n: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    b[i] = x & 0xff;
  }
  return b;
}

describe('oversized and malformed fields are refused with a short INVALID_ARGUMENT naming the field and its limit', () => {
  let gw: TenantGateway;
  let baseline: ResourceCounts;
  const topic = `big-${randomUUID()}`;
  let producer = '';
  let consumer = '';
  let stream: Stream;
  let bobProducer = '';
  let bobConsumer = '';
  let bobStream: Stream;

  const aliceUnaffected = (): Promise<void> =>
    assertRoundTrip(gw.alice, ALICE, { producer: producer, consumer: consumer, stream: stream });
  const bob = (method: string, request: object) => call(gw.bob, method, request, md(BOB));

  before(async () => {
    baseline = countResources();
    gw = await startTenantGateway({ ackTimeoutMs: 60_000 });
    producer = await createProducer(gw.alice, ALICE, topic);
    consumer = await createConsumer(gw.alice, ALICE, topic, `big-a-${randomUUID()}`);
    stream = receive(gw.alice, consumer, md(ALICE));
    const bobTopic = `big-bob-${randomUUID()}`;
    bobProducer = await createProducer(gw.bob, BOB, bobTopic);
    bobConsumer = await createConsumer(gw.bob, BOB, bobTopic, `big-b-${randomUUID()}`);
    bobStream = receive(gw.bob, bobConsumer, md(BOB));
  });
  after(async () => {
    stream?.end();
    bobStream?.end();
    await gw?.close();
  });

  test('4 MiB endpoint, instance_id and access_key_id on CreateProducer and CreateConsumer are refused before decoding, and the memory is given back', async () => {
    const huge = 'e'.repeat(4 * MiB);
    const before = await memoryNow();
    for (const field of ['endpoint', 'instance_id', 'access_key_id']) {
      for (const method of ['CreateProducer', 'CreateConsumer']) {
        const e = await expectCode(
          bob(method, { ...KEYS, topic: 'ok', group_id: 'g', [field]: huge }),
          status.INVALID_ARGUMENT,
          new RegExp(`the ${method} request is \\d+ bytes; the limit is 65536`),
        );
        assertShort(e.details, huge.length);
      }
    }
    const grown = (await memoryNow()) - before;
    console.log(`4 MiB fields x6: memory grew ${(grown / MiB).toFixed(1)} MiB`);
    assert.ok(grown < 16 * MiB, `six 4 MiB requests left ${(grown / MiB).toFixed(1)} MiB behind`);
    assert.equal(await gauge(gw.metricsUrl, 'producer_handles'), 2);
    assert.equal(await gauge(gw.metricsUrl, 'active_consumers'), 2);
    await aliceUnaffected();
  });

  test('endpoint, instance_id, access_key_id and access_key_secret over their limits (but under 64 KiB) are named with the limit', async () => {
    const cases: Array<[string, number]> = [
      ['endpoint', 256],
      ['instance_id', 128],
      ['access_key_id', 256],
      ['access_key_secret', 1024],
    ];
    for (const [field, limit] of cases) {
      for (const method of ['CreateProducer', 'CreateConsumer']) {
        const e = await expectCode(
          bob(method, { ...KEYS, topic: 'ok', group_id: 'g', [field]: 'x'.repeat(60_000) }),
          status.INVALID_ARGUMENT,
          new RegExp(`${field} is 60000 characters; the limit is ${limit}`),
        );
        assertShort(e.details, 60_000);
      }
    }
    await aliceUnaffected();
  });

  test('3 MiB message_key and sharding_key are refused naming the field and its limit', async () => {
    const big = 'k'.repeat(3 * MiB);
    const cases: Array<[string, object, RegExp]> = [
      [
        'SendMessage',
        { properties: { message_key: big } },
        /properties\.message_key is 3145728 characters; the limit is 1024/,
      ],
      [
        'SendMessage',
        { properties: { sharding_key: big } },
        /properties\.sharding_key is 3145728 characters; the limit is 256/,
      ],
      ['SendOrderedMessage', { sharding_key: big }, /sharding_key is 3145728 characters; the limit is 256/],
      [
        'SendMessages',
        { messages: [{ message_body: 'x', properties: { message_key: big } }] },
        /properties\.message_key is 3145728 characters/,
      ],
    ];
    for (const [method, extra, re] of cases) {
      if (method === 'SendMessages') {
        const r = await bob(method, { producer_id: bobProducer, ...extra });
        const entry = (r as { results: Array<{ success: boolean; message: string }> }).results[0];
        assert.equal(entry?.success, false);
        assert.match(entry?.message ?? '', re);
        assertShort(entry?.message ?? '', big.length);
      } else {
        const e = await expectCode(
          bob(method, { producer_id: bobProducer, message_body: 'x', ...extra }),
          status.INVALID_ARGUMENT,
          re,
        );
        assertShort(e.details, big.length);
      }
    }
    await aliceUnaffected();
  });

  test('a 100,000-character tag expression is refused with short details; a 2,000-character one names tag_expression and 1024', async () => {
    const e = await expectCode(
      bob('CreateConsumer', { ...KEYS, topic: 'ok', group_id: 'g', tag_expression: 'a||'.repeat(33_334) }),
      status.INVALID_ARGUMENT,
    );
    assertShort(e.details, 100_000);
    const e2 = await expectCode(
      bob('CreateConsumer', { ...KEYS, topic: 'ok', group_id: 'g', tag_expression: 'tag||'.repeat(400) }),
      status.INVALID_ARGUMENT,
      /tag_expression is 2000 characters; the limit is 1024/,
    );
    assertShort(e2.details, 2000);
    await aliceUnaffected();
  });

  test('a property name of 300 characters is refused, echoing at most 40 of them and the length', async () => {
    const name = `p${'n'.repeat(299)}`;
    const e = await expectCode(
      bob('SendMessage', {
        producer_id: bobProducer,
        message_body: 'x',
        properties: { properties: { [name]: 'v' } },
      }),
      status.INVALID_ARGUMENT,
      /property names must be 1 to 256 characters; got "pn{39}"\.\.\. \(300 characters\)/,
    );
    assertShort(e.details, 300);
    await aliceUnaffected();
  });

  test('property names and values count in MAX_MESSAGE_SIZE: a 1 KiB body with a 4 MiB property value is refused', async () => {
    const e = await expectCode(
      bob('SendMessage', {
        producer_id: bobProducer,
        message_body: 'b'.repeat(1024),
        properties: { properties: { big: 'v'.repeat(4 * MiB - 512) } },
      }),
      status.INVALID_ARGUMENT,
      new RegExp(
        `message is \\d+ bytes \\(body, properties and keys\\); the limit is ${DEFAULT_MAX_MESSAGE} \\(MAX_MESSAGE_SIZE\\)`,
      ),
    );
    assertShort(e.details, 4 * MiB);
    await aliceUnaffected();
  });

  test('random garbage bytes (not protobuf) sent over raw HTTP/2 are INVALID_ARGUMENT on every method; without a token UNAUTHENTICATED', async () => {
    const h2 = new RawH2(gw.gateway.grpcPort);
    try {
      const junk = grpcFrame(
        Buffer.concat([Buffer.from([0xff, 0xff, 0xff, 0xff, 0x0f]), garbage(64 * 1024 - 64, 7)]),
      );
      for (const method of [
        'CreateProducer',
        'SendMessage',
        'SendMessages',
        'AckMessages',
        'ReceiveMessages',
      ]) {
        const r = await h2.unary(method, junk, { authorization: `Bearer ${BOB}` });
        assert.equal(r.code, status.INVALID_ARGUMENT, `${method}: ${r.details}`);
        assert.match(r.details, new RegExp(`the ${method} request is not a valid protobuf message`));
        assertShort(r.details, junk.length);
      }
      for (const seed of [1, 2, 3, 4, 5]) {
        const r = await h2.unary('SendMessage', grpcFrame(garbage(256 * 1024, seed)), {
          authorization: `Bearer ${BOB}`,
        });
        assert.equal(r.code, status.INVALID_ARGUMENT, `seed ${seed}: ${r.details}`);
        assertShort(r.details, 256 * 1024);
      }
      const anon = await h2.unary('SendMessage', junk);
      assert.equal(anon.code, status.UNAUTHENTICATED);
    } finally {
      h2.close();
    }
    await aliceUnaffected();
  });

  test('a request above its method byte limit is refused before decoding, naming the request size, the limit and its setting', async () => {
    const e = await expectCode(
      bob('AckMessage', { consumer_id: bobConsumer, receipt_handle: 'r'.repeat(100_000) }),
      status.INVALID_ARGUMENT,
      /the AckMessage request is \d+ bytes; the limit is 65536 \(a fixed 64 KiB\)/,
    );
    assertShort(e.details, 100_000);
    const e2 = await expectCode(
      bob('SendMessage', { producer_id: bobProducer, message_body_bytes: Buffer.alloc(4 * MiB + 100_000) }),
      status.INVALID_ARGUMENT,
      new RegExp(
        `the SendMessage request is \\d+ bytes; the limit is ${DEFAULT_MAX_MESSAGE + 65536} \\(MAX_MESSAGE_SIZE \\+ 64 KiB\\)`,
      ),
    );
    assertShort(e2.details, 4 * MiB);
    await aliceUnaffected();
  });

  test('a 9 MiB request (above every method limit) is RESOURCE_EXHAUSTED and counted in /metrics under that status, not as CANCELLED', async () => {
    const e = await expectCode(
      bob('SendMessage', { producer_id: bobProducer, message_body_bytes: Buffer.alloc(9 * MiB) }),
      status.RESOURCE_EXHAUSTED,
      /larger than max/,
    );
    assertShort(e.details, 9 * MiB);
    const text = await (
      await fetch(gw.metricsUrl, { headers: { accept: 'text/plain', connection: 'close' } })
    ).text();
    const line = (code: string): number =>
      Number(
        new RegExp(`mqgate_rpc_requests_total\\{method="SendMessage",code="${code}"\\} (\\d+)`).exec(
          text,
        )?.[1] ?? 0,
      );
    assert.equal(
      line('CANCELLED'),
      0,
      'the refused call is recorded as CANCELLED (the client saw RESOURCE_EXHAUSTED)',
    );
    assert.equal(line('RESOURCE_EXHAUSTED'), 1);
    await aliceUnaffected();
  });

  test('SendMessages with 200,000 entries and AckMessages with 1,001 handles are refused by the raw count, before decoding', async () => {
    // 200,000 empty BatchEntry messages: 2 bytes each on the wire.
    const entries = Buffer.alloc(200_000 * 2);
    for (let i = 0; i < 200_000; i++) entries[i * 2] = 0x12;
    const body = Buffer.concat([lengthField(1, Buffer.from(bobProducer)), entries]);
    const h2 = new RawH2(gw.gateway.grpcPort);
    try {
      const t0 = performance.now();
      const r = await h2.unary('SendMessages', grpcFrame(body), { authorization: `Bearer ${BOB}` });
      const ms = performance.now() - t0;
      assert.equal(r.code, status.INVALID_ARGUMENT, r.details);
      // The decoder's own check would say "messages has 200000 entries": this is the raw count.
      assert.match(
        r.details,
        /the request has more than 1000 messages; the limit is 1000 \(MAX_BATCH_SIZE\)/,
      );
      assert.ok(ms < 500, `refusing took ${ms.toFixed(0)} ms`);
    } finally {
      h2.close();
    }
    const e = await expectCode(
      bob('AckMessages', {
        consumer_id: bobConsumer,
        receipt_handles: Array.from({ length: 1001 }, () => randomUUID()),
      }),
      status.INVALID_ARGUMENT,
      /more than 1000 receipt handles; the limit is 1000 \(MAX_BATCH_SIZE\)/,
    );
    assertShort(e.details, 1001);
    await aliceUnaffected();
  });

  test('start_deliver_time 400 days and 285,000 years ahead are refused naming MAX_DELAY; int64 max is refused as not an integer', async () => {
    const sent = await gauge(gw.metricsUrl, 'messages_sent');
    for (const ahead of [400 * DAY, 285_000 * YEAR]) {
      const at = String(Math.round(Date.now() + ahead));
      const e = await expectCode(
        bob('SendDelayMessage', { producer_id: bobProducer, message_body: 'x', start_deliver_time: at }),
        status.INVALID_ARGUMENT,
        /start_deliver_time \(from now\) is .*; the limit is 3d \(MAX_DELAY\)/,
      );
      assertShort(e.details, at.length);
      await expectCode(
        bob('SendMessage', {
          producer_id: bobProducer,
          message_body: 'x',
          properties: { start_deliver_time: at },
        }),
        status.INVALID_ARGUMENT,
        /properties\.start_deliver_time \(from now\) is .*MAX_DELAY/,
      );
      const batch = await bob('SendMessages', {
        producer_id: bobProducer,
        messages: [{ message_body: 'x', start_deliver_time: at }],
      });
      const entry = (batch as { results: Array<{ success: boolean; message: string }> }).results[0];
      assert.equal(entry?.success, false);
      assert.match(entry?.message ?? '', /INVALID_ARGUMENT: start_deliver_time \(from now\) is .*MAX_DELAY/);
    }
    await expectCode(
      bob('SendDelayMessage', {
        producer_id: bobProducer,
        message_body: 'x',
        start_deliver_time: '9223372036854775807',
      }),
      status.INVALID_ARGUMENT,
      /start_deliver_time must be a non-negative integer/,
    );
    assert.equal(await gauge(gw.metricsUrl, 'messages_sent'), sent, 'nothing was scheduled');
    await aliceUnaffected();
  });

  test('NackMessage delay_ms above MAX_NACK_DELAY is refused naming it, and the delivery stays pending', async () => {
    await bob('SendMessage', { producer_id: bobProducer, message_body: 'nack-me' });
    const m = await awaitMessage(bobStream, 'nack-me');
    for (const delay of [String(12 * 3_600_000 + 1), String(400 * DAY), '9007199254740991']) {
      const e = await expectCode(
        bob('NackMessage', { consumer_id: bobConsumer, receipt_handle: m.receipt_handle, delay_ms: delay }),
        status.INVALID_ARGUMENT,
        /delay_ms is .*; the limit is 12h \(MAX_NACK_DELAY\)/,
      );
      assertShort(e.details, delay.length);
    }
    assert.equal(await gauge(gw.metricsUrl, 'messages_nacked'), 0);
    await bob('AckMessage', { consumer_id: bobConsumer, receipt_handle: m.receipt_handle });
    await aliceUnaffected();
  });

  test('trans_check_immunity_time of 2^31-1 seconds is refused naming MAX_TRANSACTION_IMMUNITY, and no transaction is left pending', async () => {
    for (const req of [
      { trans_check_immunity_time: 2 ** 31 - 1 },
      { properties: { trans_check_immunity_time: 2 ** 31 - 1 } },
      { trans_check_immunity_time: 3601 },
    ]) {
      const e = await expectCode(
        bob('SendTransactionMessage', { producer_id: bobProducer, message_body: 'x', ...req }),
        status.INVALID_ARGUMENT,
        /trans_check_immunity_time is .*; the limit is 1h \(MAX_TRANSACTION_IMMUNITY\)/,
      );
      assertShort(e.details, 10);
    }
    assert.equal(await gauge(gw.metricsUrl, 'pending_transactions'), 0);
    await aliceUnaffected();
  });

  test('after every refusal the gateway is healthy, and closing it returns every handle to the baseline', async () => {
    await aliceUnaffected();
    stream.end();
    bobStream.end();
    await gw.close();
    await assertResourcesSettle(baseline);
  });
});
