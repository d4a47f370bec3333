/**
 * NATS-specific behaviour beyond the shared suite: URL and name validation, stream creation
 * policy, server-side tag filters and group filter changes, nack delay, ack timeout,
 * publish de-duplication, per-key holding, and health across a server restart.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { jetstreamManager } from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import type { Broker, Delivery, Subscription } from '../../../src/brokers/broker.js';
import { parseNatsUrl } from '../../../src/brokers/nats/config.js';
import { DEDUP_ID_PROPERTY, openNatsBroker } from '../../../src/brokers/nats/index.js';
import type { NatsSubscription } from '../../../src/brokers/nats/subscription.js';
import { isMqError } from '../../../src/core/errors.js';
import { bodyText } from '../../../src/core/message.js';
import { Reader } from '../../support/behaviour.js';
import { eventually, withLeakCheck } from '../../support/leaks.js';
import { type PrivateNatsServer, startNatsServer } from '../../support/nats-server.js';

const ARRIVE = 20_000;
const QUIET = 600;

async function rejectsWith(
  promise: Promise<unknown> | (() => unknown),
  code: string,
  match?: RegExp,
): Promise<Error> {
  try {
    await (typeof promise === 'function' ? promise() : promise);
  } catch (err) {
    assert.ok(isMqError(err), `expected an MqError ${code}, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    if (match) assert.match(err.message, match);
    return err;
  }
  assert.fail(`expected ${code}, but it succeeded`);
}

describe('nats adapter', { timeout: 240_000 }, () => {
  let server: PrivateNatsServer;
  let broker: Broker;
  let nc: NatsConnection;
  const subs: Subscription[] = [];

  const url = (query = ''): URL => new URL(`${server.url}${query}`);
  const topicName = (): string => `t-${randomUUID()}`;
  async function subscribe(options: Parameters<Broker['subscribe']>[0], on = broker): Promise<Reader> {
    const sub = await on.subscribe({ start: 'earliest', ...options });
    subs.push(sub);
    return new Reader(sub);
  }
  async function consumerInfo(topic: string, group: string) {
    const jsm = await jetstreamManager(nc);
    return jsm.consumers.info(`mqgate_${topic}`, group);
  }

  before(async () => {
    server = await startNatsServer();
    broker = await openNatsBroker(url(), {});
    nc = await connect({ servers: new URL(server.url).host });
  });

  after(async () => {
    for (const s of subs) await s.close().catch(() => {});
    await broker?.close();
    await nc?.close();
    await server?.close();
  });

  test('URL parameters are validated with the accepted values named', async () => {
    const cases: Array<[string, RegExp]> = [
      ['?storage=disk', /storage="disk".*"file" or "memory"/],
      ['?retention=forever', /retention.*"limits" or "workqueue" or "interest"/],
      ['?maxBytes=lots', /maxBytes.*whole number of bytes/],
      ['?maxAge=10', /maxAge.*duration/],
      ['?replicas=0', /replicas.*1 to 5/],
      ['?createStreams=yes', /createStreams.*"true" or "false"/],
      ['?streamPrefix=a.b', /streamPrefix/],
      ['?colour=red', /unknown parameter "colour".*storage/],
    ];
    for (const [query, pattern] of cases) {
      await rejectsWith(
        openNatsBroker(new URL(`nats://127.0.0.1:1${query}`), {}),
        'INVALID_ARGUMENT',
        pattern,
      );
    }
    const c = parseNatsUrl(
      new URL(
        'nats://u:p@127.0.0.1:4222?servers=127.0.0.2:4223&storage=memory&maxBytes=1MiB&maxAge=1h30m&retention=interest',
      ),
    );
    assert.deepEqual(c.servers, ['127.0.0.1:4222', '127.0.0.2:4223']);
    assert.equal(c.maxBytes, 1024 * 1024);
    assert.equal(c.maxAgeMs, 90 * 60_000);
    assert.equal(c.storage, 'memory');
    assert.equal(c.retention, 'interest');
    assert.equal(c.user, 'u');
    assert.ok(!c.display.includes('p@'), 'credentials are removed from the display URL');
    await rejectsWith(openNatsBroker(new URL('nats://127.0.0.1:1'), {}), 'UNAVAILABLE', /nats-server/);
  });

  test('topic names follow NATS subject token rules', async () => {
    for (const bad of ['a.b', 'a b', 'a*', 'a>', '']) {
      await rejectsWith(broker.producer(bad), 'INVALID_ARGUMENT', /subject token/);
      await rejectsWith(broker.subscribe({ topic: bad, group: 'g' }), 'INVALID_ARGUMENT');
    }
    // Characters a stream name cannot hold are sanitised, not refused.
    const topic = `odd/${randomUUID()}`;
    const reader = await subscribe({ topic, group: 'g' });
    const p = await broker.producer(topic);
    await p.send({ body: 'x', tag: 'v1.2/ü>_' });
    const d = await reader.next(ARRIVE);
    assert.equal(d.message.tag, 'v1.2/ü>_', 'a tag that is not a subject token round-trips');
    await d.ack();
    await p.close();
  });

  test('createStreams=false: a missing stream is TOPIC_NOT_FOUND saying how to create it', async () => {
    const strict = await openNatsBroker(url('?createStreams=false'), {});
    try {
      const topic = topicName();
      await rejectsWith(
        strict.producer(topic),
        'TOPIC_NOT_FOUND',
        /nats stream add mqgate_t-.*createStreams=true/,
      );
      await rejectsWith(strict.subscribe({ topic, group: 'g' }), 'TOPIC_NOT_FOUND');
      await (await broker.producer(topic)).close();
      const p = await strict.producer(topic);
      await p.send({ body: 'exists now' });
    } finally {
      await strict.close();
    }
  });

  test('deliverAt in the future is held in the internal holding stream; reserved properties are refused', async () => {
    assert.equal(broker.capabilities.delay, true);
    assert.equal(broker.capabilities.transactions, true);
    const p = await broker.producer(topicName());
    await p.send({ body: 'x', deliverAt: Date.now() + 60_000 });
    const jsm = await jetstreamManager(nc);
    const held = await jsm.streams.info('mqgate___mqgate_holding');
    assert.ok(held.state.messages >= 1, 'the delayed message is a record of the holding stream');
    assert.equal(held.config.retention, 'workqueue', 'a moved record is removed from the holding stream');
    assert.equal(held.config.max_age, 0, 'held records never expire by age');
    await rejectsWith(
      p.send({ body: 'x', deliverAt: Date.now() + 60_000, properties: { 'mqgate-hold-due': '1' } }),
      'INVALID_ARGUMENT',
      /mqgate-hold-/,
    );
    const sent = await p.send({ body: 'due already', deliverAt: Date.now() - 1000 });
    assert.ok(sent.messageId.length > 0, 'a deliverAt in the past is simply due');
    await p.close();
  });

  test('a single tag is a server-side filter subject; a||b on 2.9 is filtered and acked here', async () => {
    const topic = topicName();
    const one = `one-${randomUUID()}`;
    const two = `two-${randomUUID()}`;
    const a = await subscribe({ topic, group: one, filter: 'a' });
    const ab = await subscribe({ topic, group: two, filter: 'a||b' });
    assert.equal((await consumerInfo(topic, one)).config.filter_subject, `mqgate.${topic}.a`);
    assert.equal((await consumerInfo(topic, two)).config.filter_subject, `mqgate.${topic}.>`);
    const p = await broker.producer(topic);
    for (const tag of ['a', 'b', 'c', undefined, 'a']) await p.send({ body: tag ?? 'none', tag });
    const gotA: string[] = [];
    for (let i = 0; i < 2; i++) {
      const d = await a.next(ARRIVE);
      gotA.push(bodyText(d.message));
      await d.ack();
    }
    assert.deepEqual(gotA, ['a', 'a']);
    const gotAb: string[] = [];
    for (let i = 0; i < 3; i++) {
      const d = await ab.next(ARRIVE);
      gotAb.push(bodyText(d.message));
      await d.ack();
    }
    assert.deepEqual(gotAb, ['a', 'b', 'a']);
    await a.nothingWithin(QUIET, 'only tag a matches');
    await ab.nothingWithin(QUIET, 'only tags a and b match');
    // The skipped messages were settled, so nothing is left pending for redelivery.
    await eventually(async () => {
      const info = await consumerInfo(topic, two);
      return info.num_ack_pending === 0 && info.num_pending === 0;
    }, 'the a||b consumer to have nothing pending');
    await p.close();
  });

  test('a group resubscribing with another filter updates its consumer; a live member with another filter is refused', async () => {
    const topic = topicName();
    const group = `g-${randomUUID()}`;
    const first = await subscribe({ topic, group, filter: 'a' });
    await rejectsWith(broker.subscribe({ topic, group, filter: 'b' }), 'FAILED_PRECONDITION', /same filter/);
    const same = await subscribe({ topic, group, filter: 'a' });
    await same.subscription.close();
    await first.subscription.close();
    const second = await subscribe({ topic, group, filter: 'b' });
    assert.equal((await consumerInfo(topic, group)).config.filter_subject, `mqgate.${topic}.b`);
    const p = await broker.producer(topic);
    await p.send({ body: 'a', tag: 'a' });
    await p.send({ body: 'b', tag: 'b' });
    const d = await second.next(ARRIVE);
    assert.equal(bodyText(d.message), 'b');
    await d.ack();
    await second.nothingWithin(QUIET, 'the group now filters tag b');
    await p.close();
  });

  test('nack with delayMs redelivers after the delay with reconsumeCount + 1', async () => {
    const topic = topicName();
    const reader = await subscribe({ topic, group: 'g' });
    const p = await broker.producer(topic);
    await p.send({ body: 'later' });
    const first = await reader.next(ARRIVE);
    const nackedAt = Date.now();
    await first.nack({ delayMs: 1500 });
    await reader.nothingWithin(1000, 'the nack delay has not passed');
    const second = await reader.next(ARRIVE);
    assert.ok(Date.now() - nackedAt >= 1400, `redelivered after ${Date.now() - nackedAt} ms`);
    assert.equal(second.message.id, first.message.id);
    assert.equal(second.message.reconsumeCount, 1);
    await second.ack();
    await first.ack();
    await p.close();
  });

  test('an unacked delivery is redelivered after ackTimeoutMs; the stale ack is NOT_FOUND', async () => {
    const topic = topicName();
    const reader = await subscribe({ topic, group: 'g', ackTimeoutMs: 1000 });
    const p = await broker.producer(topic);
    await p.send({ body: 'forgotten' });
    const first = await reader.next(ARRIVE);
    assert.equal(reader.subscription.inFlight, 1);
    const second = await reader.next(ARRIVE);
    assert.equal(second.message.id, first.message.id);
    assert.equal(second.message.reconsumeCount, 1);
    await rejectsWith(first.ack(), 'NOT_FOUND', /ack timeout/);
    await second.ack();
    assert.equal(reader.subscription.inFlight, 0);
    await reader.nothingWithin(1500, 'acked');
    await p.close();
  });

  test('a message waiting in the subscription is not redelivered by the ack timeout', async () => {
    const topic = topicName();
    const reader = await subscribe({ topic, group: 'g', ackTimeoutMs: 600 });
    const p = await broker.producer(topic);
    await p.send({ body: 'patient' });
    // Pulled into the subscription at once, but nobody calls next() for several ack timeouts.
    await eventually(async () => (await consumerInfo(topic, 'g')).num_ack_pending === 1, 'the pull');
    await new Promise((r) => setTimeout(r, 2000));
    const d = await reader.next(ARRIVE);
    assert.equal(d.message.reconsumeCount, 0, 'kept alive while queued');
    await d.ack();
    await reader.nothingWithin(1500, 'no redelivery of a message that waited');
    await p.close();
  });

  test('Nats-Msg-Id de-duplicates publishes; generated ids are unique', async () => {
    const topic = topicName();
    const reader = await subscribe({ topic, group: 'g' });
    const p = await broker.producer(topic);
    const id = `order-${randomUUID()}`;
    // Values that mention the header name once made nats-server 2.9 ignore Nats-Msg-Id.
    const mention = { note: `mentions ${DEDUP_ID_PROPERTY}: x`, [DEDUP_ID_PROPERTY]: id };
    const a = await p.send({ body: 'once', businessKey: 'Nats-Msg-Id', properties: mention });
    const b = await p.send({ body: 'once', key: 'Nats-Msg-Id', properties: mention });
    assert.equal(a.messageId, id);
    assert.equal(b.messageId, id);
    const marker = await p.send({ body: 'marker' });
    const d1 = await reader.next(ARRIVE);
    assert.equal(d1.message.id, id);
    assert.equal(d1.message.businessKey, 'Nats-Msg-Id');
    assert.deepEqual(d1.message.properties, mention);
    await d1.ack();
    const d2 = await reader.next(ARRIVE);
    assert.equal(d2.message.id, marker.messageId, 'the duplicate was not stored');
    await d2.ack();
    await rejectsWith(p.send({ body: 'x', properties: { [DEDUP_ID_PROPERTY]: '' } }), 'INVALID_ARGUMENT');
    await p.close();
  });

  test('ordered: a key is held until its previous message is settled, within one subscription', async () => {
    const topic = topicName();
    const p = await broker.producer(topic);
    for (let i = 0; i < 3; i++) await p.send({ body: `k:${i}`, key: 'k' });
    await p.send({ body: 'j:0', key: 'j' });
    await p.send({ body: 'free' });

    const unordered = await subscribe({ topic, group: 'plain' });
    const plain: Delivery[] = [];
    for (let i = 0; i < 5; i++) plain.push(await unordered.next(ARRIVE));
    assert.deepEqual(
      plain.map((d) => bodyText(d.message)),
      ['k:0', 'k:1', 'k:2', 'j:0', 'free'],
      'without ordered everything is handed out at once',
    );
    for (const d of plain) await d.ack();

    const ordered = await subscribe({ topic, group: 'ordered', ordered: true });
    const k0 = await ordered.next(ARRIVE);
    const j0 = await ordered.next(ARRIVE);
    const free = await ordered.next(ARRIVE);
    assert.deepEqual(
      [k0, j0, free].map((d) => bodyText(d.message)),
      ['k:0', 'j:0', 'free'],
    );
    await ordered.nothingWithin(QUIET, 'k:1 is held until k:0 is settled');
    // A nack does not free the key: its later messages wait for the retried one (regression:
    // k:1 used to overtake k:0, breaking the event bus's per-key order through retries).
    await k0.nack({ delayMs: 1000 });
    const again = await ordered.next(ARRIVE);
    assert.equal(bodyText(again.message), 'k:0', 'the retried head comes back before k:1');
    assert.equal(again.message.reconsumeCount, 1);
    await again.ack();
    const k1 = await ordered.next(ARRIVE);
    assert.equal(bodyText(k1.message), 'k:1');
    await k1.ack();
    const k2 = await ordered.next(ARRIVE);
    assert.equal(bodyText(k2.message), 'k:2');
    for (const d of [j0, free, k2]) await d.ack();
    await p.close();
  });

  test('the subscription pulls no more than maxInFlight messages ahead of its caller', async () => {
    const topic = topicName();
    const p = await broker.producer(topic);
    for (let i = 0; i < 40; i++) await p.send({ body: `m${i}` });
    const reader = await subscribe({ topic, group: 'g', maxInFlight: 5 });
    const sub = reader.subscription as NatsSubscription;
    await eventually(() => sub.pending === 5, 'the first pull');
    await new Promise((r) => setTimeout(r, QUIET));
    assert.equal(sub.pending, 5, 'nothing read: nothing more pulled');
    assert.equal(sub.inFlight, 0, 'pulled is not handed out');
    const d = await reader.next(ARRIVE);
    await d.ack();
    await eventually(() => sub.pending === 5, 'one more pulled after one was settled');
    assert.ok((await consumerInfo(topic, 'g')).num_ack_pending <= 5);
    await p.close();
  });

  test('retention=workqueue allows one group per topic and says so', async () => {
    const wq = await openNatsBroker(url('?retention=workqueue&storage=memory'), {});
    try {
      const topic = topicName();
      const sub = await wq.subscribe({ topic, group: 'only' });
      await rejectsWith(
        wq.subscribe({ topic, group: 'second' }),
        'FAILED_PRECONDITION',
        /work-queue.*one group/,
      );
      await sub.close();
    } finally {
      await wq.close();
    }
  });

  test('closing the broker while the server is down ends retrying sends and leaves no handle', async () => {
    await withLeakCheck(async () => {
      const own = await openNatsBroker(url(), {});
      const topic = topicName();
      const p = await own.producer(topic);
      const reader = await subscribe({ topic, group: 'g' }, own);
      await p.send({ body: 'before' });
      await (await reader.next(ARRIVE)).ack();
      await server.stop();
      try {
        await eventually(async () => !(await own.health()).ok, 'the disconnect', 15_000);
        const retrying = p.send({ body: 'during the outage' });
        const pendingRead = reader.poll(ARRIVE);
        await own.close();
        await rejectsWith(retrying, 'CLOSED');
        const r = await pendingRead;
        assert.ok(typeof r === 'object' && r.done, 'the iteration ends');
      } finally {
        await server.restart();
      }
    });
  });

  test('health follows the connection across a server restart', async () => {
    const own = await openNatsBroker(url(), {});
    try {
      assert.equal((await own.health()).ok, true);
      await server.stop();
      await eventually(async () => !(await own.health()).ok, 'health to report the outage', 15_000);
      await server.restart();
      await eventually(async () => (await own.health()).ok, 'health to recover', 30_000);
      assert.match((await own.health()).detail, /1 reconnects/);
    } finally {
      await own.close();
    }
  });
});
