/**
 * Binary bodies reach a DEFAULT grpc-js client (4 MiB receive limit): a body that is not UTF-8 is
 * delivered once, as message_body_bytes, with an empty message_body (a lossy text copy would cost
 * up to 3x and push a 2.2 MiB body past the client's limit); a UTF-8 body arrives as text.
 */
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { status } from '@grpc/grpc-js';
import { call, receive } from '../support/gateway.js';
import { assertResourcesSettle, countResources, eventually, type ResourceCounts } from '../support/leaks.js';
import {
  ALICE,
  assertHealthy,
  BOB,
  createConsumer,
  createProducer,
  DEFAULT_MAX_MESSAGE,
  MiB,
  md,
  type Stream,
  startTenantGateway,
  type TenantGateway,
} from './helpers.js';

describe('binary bodies reach a default grpc-js client intact, sent once', () => {
  let gw: TenantGateway;
  let baseline: ResourceCounts;
  const topic = `bin-${randomUUID()}`;
  let producer = '';
  let consumer = '';
  let stream: Stream;
  let aliceProducer = '';
  let aliceConsumer = '';
  let aliceStream: Stream;
  const aliceTopic = `bin-alice-${randomUUID()}`;

  /** Sends `request` through bob's producer and returns what his default client received. */
  const roundTrip = async (request: object) => {
    const before = stream.messages.length;
    const res = await call<{ message_id: string }>(
      gw.bob,
      'SendMessage',
      { producer_id: producer, ...request },
      md(BOB),
    );
    await eventually(() => stream.messages.length > before || stream.ended, 'the message delivered', 20_000);
    assert.equal(
      stream.ended,
      false,
      `the default client's stream failed: ${stream.error?.code} ${stream.error?.details}`,
    );
    const m = stream.messages[before];
    assert.ok(m);
    assert.equal(m.message_id, res.message_id);
    await call(gw.bob, 'AckMessage', { consumer_id: consumer, receipt_handle: m.receipt_handle }, md(BOB));
    return m;
  };

  const aliceUnaffected = async (): Promise<void> => {
    const body = `alice-${randomUUID()}`;
    await call(gw.alice, 'SendMessage', { producer_id: aliceProducer, message_body: body }, md(ALICE));
    await eventually(() => aliceStream.messages.some((m) => m.message_body === body), 'alice message');
    const m = aliceStream.messages.find((x) => x.message_body === body);
    await call(
      gw.alice,
      'AckMessage',
      { consumer_id: aliceConsumer, receipt_handle: m?.receipt_handle },
      md(ALICE),
    );
    await assertHealthy(gw.alice, ALICE);
  };

  before(async () => {
    baseline = countResources();
    gw = await startTenantGateway({ ackTimeoutMs: 60_000 });
    producer = await createProducer(gw.bob, BOB, topic);
    consumer = await createConsumer(gw.bob, BOB, topic, `bin-${randomUUID()}`);
    // gw.bob is a grpc-js client with default options: 4 MiB receive limit.
    stream = receive(gw.bob, consumer, md(BOB));
    aliceProducer = await createProducer(gw.alice, ALICE, aliceTopic);
    aliceConsumer = await createConsumer(gw.alice, ALICE, aliceTopic, `bin-a-${randomUUID()}`);
    aliceStream = receive(gw.alice, aliceConsumer, md(ALICE));
  });
  after(async () => {
    stream?.end();
    aliceStream?.end();
    await gw?.close();
  });

  test('a 1 MiB body of 0xFF arrives as message_body_bytes, byte for byte, with message_body empty', async () => {
    const body = Buffer.alloc(MiB, 0xff);
    const m = await roundTrip({ message_body_bytes: body });
    assert.equal(m.message_body, '');
    assert.equal(m.message_body_bytes.length, body.length);
    assert.ok(Buffer.from(m.message_body_bytes).equals(body), 'the bytes changed on the way');
    await aliceUnaffected();
  });

  test('a 2.2 MiB random binary body arrives intact at a default client (a text copy would be over its 4 MiB limit)', async () => {
    const body = randomBytes(Math.round(2.2 * MiB));
    body[0] = 0xff; // certainly not UTF-8
    const m = await roundTrip({ message_body_bytes: body });
    assert.equal(m.message_body, '');
    assert.ok(Buffer.from(m.message_body_bytes).equals(body), 'the bytes changed on the way');
    await aliceUnaffected();
  });

  test('a UTF-8 body arrives as text with empty bytes, whether sent as message_body or as message_body_bytes', async () => {
    const text = 'héllo wörld, 日本語, 🎉 '.repeat(20_000);
    const asText = await roundTrip({ message_body: text });
    assert.equal(asText.message_body, text);
    assert.equal(asText.message_body_bytes.length, 0);
    const asBytes = await roundTrip({ message_body_bytes: Buffer.from(text, 'utf8') });
    assert.equal(asBytes.message_body, text);
    assert.equal(asBytes.message_body_bytes.length, 0);
    await aliceUnaffected();
  });

  test('the largest binary body the gateway accepts (MAX_MESSAGE_SIZE) reaches a default client; one byte more is refused', async () => {
    await call(
      gw.bob,
      'SendMessage',
      { producer_id: producer, message_body_bytes: Buffer.alloc(DEFAULT_MAX_MESSAGE + 1, 0xfe) },
      md(BOB),
    ).then(
      () => assert.fail('a body over MAX_MESSAGE_SIZE was accepted'),
      (e: { code: number; details: string }) => {
        assert.equal(e.code, status.INVALID_ARGUMENT);
        assert.match(e.details, /MAX_MESSAGE_SIZE/);
      },
    );
    // The default leaves room for the delivery's other fields within a client's 4 MiB limit.
    const body = Buffer.alloc(DEFAULT_MAX_MESSAGE, 0xfe);
    const m = await roundTrip({ message_body_bytes: body });
    assert.equal(m.message_body, '');
    assert.ok(Buffer.from(m.message_body_bytes).equals(body));
    await aliceUnaffected();
  });

  test('after all of that the gateway is healthy, and closing it returns every handle to the baseline', async () => {
    await aliceUnaffected();
    stream.end();
    aliceStream.end();
    await gw.close();
    await assertResourcesSettle(baseline);
  });
});
