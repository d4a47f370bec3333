import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { status } from '@grpc/grpc-js';
import {
  call,
  metadata,
  metricsJson,
  receive,
  startTestGateway,
  type TestGateway,
} from '../../support/gateway.js';
import { eventually } from '../../support/leaks.js';

const TOKEN = 'test-token-0123456789abcdef';
const LIMITED = 'limited-token-0123456789abcdef';
const keys = { endpoint: 'e', access_key_id: 'AK', access_key_secret: 'S', instance_id: 'i' };

describe('bad input gets its exact status, a message naming the problem, and the process stays up', () => {
  let gw: TestGateway;
  let producerId: string;
  let consumerId: string;
  const topic = `t-${randomUUID()}`;
  before(async () => {
    gw = await startTestGateway({
      maxMessageSize: 1024,
      maxProperties: 4,
      maxBatchSize: 10,
      maxProducersPerCaller: 3,
      maxConsumersPerCaller: 2,
      authTokens: new Map([
        [TOKEN, 'tests'],
        [LIMITED, 'limited'],
      ]),
    });
    producerId = (
      await call<{ producer_id: string }>(gw.client, 'CreateProducer', { ...keys, topic }, metadata(TOKEN))
    ).producer_id;
    consumerId = (
      await call<{ consumer_id: string }>(
        gw.client,
        'CreateConsumer',
        { ...keys, topic, group_id: 'g' },
        metadata(TOKEN),
      )
    ).consumer_id;
  });
  after(async () => gw.close());

  const send = (extra: object) => ({ producer_id: producerId, message_body: 'x', ...extra });
  const cases: Array<[string, string, () => object, number, RegExp]> = [
    [
      'CreateProducer without topic',
      'CreateProducer',
      () => ({ ...keys }),
      status.INVALID_ARGUMENT,
      /topic is required/,
    ],
    [
      'CreateProducer topic with a space',
      'CreateProducer',
      () => ({ ...keys, topic: 'a b' }),
      status.INVALID_ARGUMENT,
      /characters brokers do not accept/,
    ],
    [
      'CreateProducer topic with a slash',
      'CreateProducer',
      () => ({ ...keys, topic: 'a/b' }),
      status.INVALID_ARGUMENT,
      /characters/,
    ],
    [
      'CreateProducer topic of 128 characters',
      'CreateProducer',
      () => ({ ...keys, topic: 'x'.repeat(128) }),
      status.INVALID_ARGUMENT,
      /longer than 127/,
    ],
    [
      'SendMessage without producer_id',
      'SendMessage',
      () => ({ message_body: 'x' }),
      status.INVALID_ARGUMENT,
      /producer_id is required/,
    ],
    [
      'SendMessage with an unknown producer_id',
      'SendMessage',
      () => send({ producer_id: 'nope' }),
      status.NOT_FOUND,
      /call CreateProducer again/,
    ],
    [
      'SendMessage with an oversize text body',
      'SendMessage',
      () => send({ message_body: 'x'.repeat(1025) }),
      status.INVALID_ARGUMENT,
      /limit is 1024 \(MAX_MESSAGE_SIZE\)/,
    ],
    [
      'SendMessage with an oversize binary body',
      'SendMessage',
      () => send({ message_body_bytes: Buffer.alloc(2048) }),
      status.INVALID_ARGUMENT,
      /MAX_MESSAGE_SIZE/,
    ],
    [
      "SendMessage tag containing '||'",
      'SendMessage',
      () => send({ tag: 'a||b' }),
      status.INVALID_ARGUMENT,
      /tag "a\|\|b" is invalid/,
    ],
    ["SendMessage tag '*'", 'SendMessage', () => send({ tag: '*' }), status.INVALID_ARGUMENT, /tag/],
    [
      'SendMessage tag with a space',
      'SendMessage',
      () => send({ tag: 'a b' }),
      status.INVALID_ARGUMENT,
      /tag/,
    ],
    [
      'SendMessage tag of 129 characters',
      'SendMessage',
      () => send({ tag: 't'.repeat(129) }),
      status.INVALID_ARGUMENT,
      /128 characters/,
    ],
    [
      'SendMessage with too many properties',
      'SendMessage',
      () => send({ properties: { properties: { a: '1', b: '2', c: '3', d: '4', e: '5' } } }),
      status.INVALID_ARGUMENT,
      /limit is 4 \(MAX_PROPERTIES\)/,
    ],
    [
      'SendMessage with an empty property name',
      'SendMessage',
      () => send({ properties: { properties: { '': 'v' } } }),
      status.INVALID_ARGUMENT,
      /property names/,
    ],
    [
      'SendMessage with a negative start_deliver_time',
      'SendMessage',
      () => send({ properties: { start_deliver_time: '-5' } }),
      status.INVALID_ARGUMENT,
      /non-negative/,
    ],
    [
      'SendOrderedMessage without sharding_key',
      'SendOrderedMessage',
      () => send({}),
      status.INVALID_ARGUMENT,
      /sharding_key is required/,
    ],
    [
      'SendOrderedMessage with an unknown producer',
      'SendOrderedMessage',
      () => send({ producer_id: 'gone', sharding_key: 'k' }),
      status.NOT_FOUND,
      /CreateProducer/,
    ],
    [
      'SendDelayMessage with neither level nor time',
      'SendDelayMessage',
      () => send({}),
      status.INVALID_ARGUMENT,
      /start_deliver_time .* or delay_time_level/,
    ],
    [
      'SendDelayMessage with level 19',
      'SendDelayMessage',
      () => send({ delay_time_level: '19' }),
      status.INVALID_ARGUMENT,
      /out of range: use 1-18/,
    ],
    [
      'SendDelayMessage with a negative level',
      'SendDelayMessage',
      () => send({ delay_time_level: '-1' }),
      status.INVALID_ARGUMENT,
      /delay_time_level must be a non-negative/,
    ],
    [
      'SendDelayMessage with a negative time',
      'SendDelayMessage',
      () => send({ start_deliver_time: '-1000' }),
      status.INVALID_ARGUMENT,
      /start_deliver_time must be a non-negative/,
    ],
    [
      'SendTransactionMessage with negative immunity',
      'SendTransactionMessage',
      () => send({ trans_check_immunity_time: -3 }),
      status.INVALID_ARGUMENT,
      /must not be negative/,
    ],
    [
      'SendTransactionMessage with an unknown producer',
      'SendTransactionMessage',
      () => send({ producer_id: 'gone' }),
      status.NOT_FOUND,
      /CreateProducer/,
    ],
    [
      'EndTransaction without transaction_id',
      'EndTransaction',
      () => ({ commit: true }),
      status.INVALID_ARGUMENT,
      /transaction_id is required/,
    ],
    [
      'EndTransaction with an unknown transaction',
      'EndTransaction',
      () => ({ transaction_id: 'nope', commit: true }),
      status.NOT_FOUND,
      /transaction "nope" not found/,
    ],
    [
      'CreateConsumer without group_id',
      'CreateConsumer',
      () => ({ ...keys, topic }),
      status.INVALID_ARGUMENT,
      /group_id is required/,
    ],
    [
      "CreateConsumer tag expression 'a||'",
      'CreateConsumer',
      () => ({ ...keys, topic, group_id: 'g', tag_expression: 'a||' }),
      status.INVALID_ARGUMENT,
      /invalid tag expression/,
    ],
    [
      "CreateConsumer tag expression 'a b'",
      'CreateConsumer',
      () => ({ ...keys, topic, group_id: 'g', tag_expression: 'a b' }),
      status.INVALID_ARGUMENT,
      /invalid tag expression/,
    ],
    [
      'CreateConsumer with an invalid topic',
      'CreateConsumer',
      () => ({ ...keys, topic: 'bad topic', group_id: 'g' }),
      status.INVALID_ARGUMENT,
      /topic/,
    ],
    [
      'CreateConsumer with an invalid group',
      'CreateConsumer',
      () => ({ ...keys, topic, group_id: 'g#1' }),
      status.INVALID_ARGUMENT,
      /group_id/,
    ],
    [
      'AckMessage with an unknown consumer',
      'AckMessage',
      () => ({ consumer_id: 'nope', receipt_handle: 'r' }),
      status.NOT_FOUND,
      /CreateConsumer again/,
    ],
    [
      'AckMessage with an unknown receipt handle',
      'AckMessage',
      () => ({ consumer_id: consumerId, receipt_handle: 'r-unknown' }),
      status.NOT_FOUND,
      /not pending/,
    ],
    [
      'AckMessage without receipt_handle',
      'AckMessage',
      () => ({ consumer_id: consumerId }),
      status.INVALID_ARGUMENT,
      /receipt_handle is required/,
    ],
    [
      'AckMessage without consumer_id',
      'AckMessage',
      () => ({ receipt_handle: 'r' }),
      status.INVALID_ARGUMENT,
      /consumer_id is required/,
    ],
    [
      'NackMessage with an unknown receipt handle',
      'NackMessage',
      () => ({ consumer_id: consumerId, receipt_handle: 'r' }),
      status.NOT_FOUND,
      /not pending/,
    ],
    [
      'NackMessage with a negative delay',
      'NackMessage',
      () => ({ consumer_id: consumerId, receipt_handle: 'r', delay_ms: '-1' }),
      status.INVALID_ARGUMENT,
      /delay_ms/,
    ],
    [
      'CleanupProducer with neither id nor topic',
      'CleanupProducer',
      () => ({}),
      status.INVALID_ARGUMENT,
      /needs producer_id, or topic/,
    ],
    [
      'CleanupConsumer with neither id nor group',
      'CleanupConsumer',
      () => ({}),
      status.INVALID_ARGUMENT,
      /needs consumer_id, or group_id/,
    ],
  ];

  for (const [name, method, request, code, pattern] of cases) {
    test(name, async () => {
      await assert.rejects(
        call(gw.client, method, request(), metadata(TOKEN)),
        (err: { code: number; details: string }) => {
          assert.equal(err.code, code, `${method}: ${err.details}`);
          assert.match(err.details, pattern);
          return true;
        },
      );
    });
  }

  test('a call without a bearer token is UNAUTHENTICATED', async () => {
    await assert.rejects(
      call(gw.client, 'CreateProducer', { ...keys, topic }),
      (err: { code: number; details: string }) => {
        assert.equal(err.code, status.UNAUTHENTICATED);
        assert.match(err.details, /authorization: Bearer/);
        return true;
      },
    );
  });

  test('a call with a wrong token is UNAUTHENTICATED', async () => {
    await assert.rejects(call(gw.client, 'SendMessage', send({}), metadata('wrong-token-0123456789')), {
      code: status.UNAUTHENTICATED,
    });
  });

  test('ReceiveMessages for an unknown consumer ends with NOT_FOUND; without a token UNAUTHENTICATED', async () => {
    const a = receive(gw.client, 'unknown', metadata(TOKEN));
    const b = receive(gw.client, consumerId);
    await eventually(() => a.ended && b.ended, 'both streams to end');
    assert.equal(a.error?.code, status.NOT_FOUND);
    assert.equal(b.error?.code, status.UNAUTHENTICATED);
  });

  test("another caller's cleanup by topic releases nothing of ours", async () => {
    const other = { ...keys, access_key_secret: 'a-different-secret' };
    const res = await call<{ cleaned_count: number }>(
      gw.client,
      'CleanupProducer',
      { ...other, topic },
      metadata(TOKEN),
    );
    assert.equal(res.cleaned_count, 0);
    const res2 = await call<{ cleaned_count: number }>(
      gw.client,
      'CleanupConsumer',
      { ...other, group_id: 'g', topic },
      metadata(TOKEN),
    );
    assert.equal(res2.cleaned_count, 0);
    const sent = await call<{ success: boolean }>(gw.client, 'SendMessage', send({}), metadata(TOKEN));
    assert.equal(sent.success, true, 'our producer still works');
  });

  test('per-caller limits answer RESOURCE_EXHAUSTED naming the limit; another caller is unaffected', async () => {
    // The limit follows the principal: new access keys and secrets do not buy more.
    for (let i = 0; i < 3; i++)
      await call(
        gw.client,
        'CreateProducer',
        { ...keys, access_key_id: `k${i}`, access_key_secret: `s${i}`, topic },
        metadata(LIMITED),
      );
    await assert.rejects(
      call(gw.client, 'CreateProducer', { ...keys, access_key_id: 'k9', topic }, metadata(LIMITED)),
      (err: { code: number; details: string }) => {
        assert.equal(err.code, status.RESOURCE_EXHAUSTED);
        assert.match(err.details, /MAX_PRODUCERS_PER_CALLER=3/);
        return true;
      },
    );
    for (let i = 0; i < 2; i++)
      await call(
        gw.client,
        'CreateConsumer',
        { ...keys, access_key_secret: `s${i}`, topic, group_id: 'lim' },
        metadata(LIMITED),
      );
    await assert.rejects(
      call(gw.client, 'CreateConsumer', { ...keys, topic, group_id: 'lim' }, metadata(LIMITED)),
      (err: { code: number; details: string }) => {
        assert.equal(err.code, status.RESOURCE_EXHAUSTED);
        assert.match(err.details, /MAX_CONSUMERS_PER_CALLER=2/);
        return true;
      },
    );
    await call(
      gw.client,
      'CreateProducer',
      { ...keys, access_key_id: 'someone-else', topic },
      metadata(TOKEN),
    );
  });

  test('after all of that the gateway is healthy and counted every failure', async () => {
    const h = await call<{ healthy: boolean }>(gw.client, 'HealthCheck', {});
    assert.equal(h.healthy, true);
    const m = await metricsJson(gw.metricsUrl);
    assert.ok(m.failed_requests >= cases.length, `failed_requests=${m.failed_requests}`);
  });
});

test('with several brokers, an endpoint naming none of them is INVALID_ARGUMENT listing the configured ones', async () => {
  const gw = await startTestGateway({
    brokers: [
      { url: 'memory://?maxAttempts=5', endpoints: ['a.example:1'] },
      { url: 'memory://?maxAttempts=6', endpoints: ['b.example:1'] },
    ],
  });
  try {
    await assert.rejects(
      call(gw.client, 'CreateProducer', { ...keys, endpoint: 'c.example:1', topic: 't' }),
      (err: { code: number; details: string }) => {
        assert.equal(err.code, status.INVALID_ARGUMENT);
        assert.match(err.details, /a\.example:1, b\.example:1/);
        return true;
      },
    );
    const ok = await call<{ success: boolean }>(gw.client, 'CreateProducer', {
      ...keys,
      endpoint: 'b.example:1',
      topic: 't',
    });
    assert.equal(ok.success, true);
  } finally {
    await gw.close();
  }
});

test('listening on a non-loopback address without tokens or TLS refuses to start unless insecure', async () => {
  await assert.rejects(startTestGateway({ grpcHost: '0.0.0.0' }), /refusing to listen on 0\.0\.0\.0/);
  const gw = await startTestGateway({ grpcHost: '0.0.0.0', insecure: true });
  await gw.close();
});
