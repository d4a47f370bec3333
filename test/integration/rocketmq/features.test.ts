import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import type { Broker, Delivery, Subscription } from '../../../src/brokers/broker.js';
import { openRocketMqBroker } from '../../../src/brokers/rocketmq/index.js';
import { isMqError } from '../../../src/core/errors.js';
import { bodyText } from '../../../src/core/message.js';
import { eventually, withLeakCheck } from '../../support/leaks.js';
import { MemoryLog, makeFifoGroups, makeGroup, openTestBroker, rocketMqUrl, TopicPool } from './helpers.js';

const pool = new TopicPool({ normal: 3, fifo: 2, delay: 2, transaction: 3 });

async function expectCode(work: Promise<unknown>, code: string, match?: RegExp): Promise<Error> {
  try {
    await work;
  } catch (err) {
    assert.ok(isMqError(err), `expected an MqError ${code}, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    if (match) assert.match(err.message, match);
    return err;
  }
  assert.fail(`expected ${code}, but it succeeded`);
}

/** Reads deliveries in the background so tests can wait for conditions on what arrived. */
function collect(sub: Subscription, onDelivery: (d: Delivery) => Promise<void> | void = (d) => d.ack()) {
  const got: Array<{ d: Delivery; at: number }> = [];
  const done = (async () => {
    for await (const d of sub) {
      got.push({ d, at: Date.now() });
      await onDelivery(d);
    }
  })();
  return { got, done };
}

describe('rocketmq adapter features', { timeout: 600_000 }, () => {
  const log = new MemoryLog();
  let broker: Broker;

  before(async () => {
    broker = await openTestBroker({ log });
  });
  after(async () => {
    await broker?.close();
  });

  test('URL validation and redaction', async () => {
    const bad = [
      'rocketmq://127.0.0.1',
      'rocketmq://u:p@127.0.0.1:8081',
      'rocketmq://127.0.0.1:8081?credentials=maybe',
      'rocketmq://127.0.0.1:8081?accessKey=a',
      'rocketmq://127.0.0.1:8081?credentials=client&accessKey=a&secretKey=b',
      'rocketmq://127.0.0.1:8081?bogus=1',
      'rocketmq://127.0.0.1:8081?requestTimeoutMs=10',
    ];
    for (const url of bad) await expectCode(openRocketMqBroker(new URL(url), {}), 'INVALID_ARGUMENT');
    const b = await openRocketMqBroker(
      new URL('rocketmq://127.0.0.1:8081?accessKey=ak&secretKey=topsecret'),
      {},
    );
    try {
      assert.ok(!b.url.includes('topsecret'), b.url);
      assert.deepEqual(b.capabilities, {
        ordered: true,
        delay: true,
        transactions: true,
        tagFilter: true,
        durable: true,
        startPosition: false,
      });
    } finally {
      await b.close();
    }
  });

  test('a missing topic is TOPIC_NOT_FOUND telling how to create it', async () => {
    const topic = `mqgate-missing-${randomUUID().slice(0, 8)}`;
    await expectCode(broker.producer(topic), 'TOPIC_NOT_FOUND', /mqadmin updateTopic .*-t mqgate-missing-/);
    await expectCode(broker.subscribe({ topic, group: 'g-any' }), 'TOPIC_NOT_FOUND', /mqadmin updateTopic/);
  });

  test('message type mismatches are FAILED_PRECONDITION naming the topic type', async () => {
    const normal = await pool.topic('normal');
    const tx = await pool.topic('transaction');
    const pn = await broker.producer(normal);
    const pt = await broker.producer(tx);
    try {
      await expectCode(pn.send({ body: 'x', deliverAt: Date.now() + 1000 }), 'FAILED_PRECONDITION', /DELAY/);
      await expectCode(pn.prepare({ body: 'x' }), 'FAILED_PRECONDITION', /TRANSACTION/);
      await expectCode(pt.send({ body: 'x' }), 'FAILED_PRECONDITION', /prepare\(\)/);
      await expectCode(pt.prepare({ body: 'x', key: 'k' }), 'INVALID_ARGUMENT');
    } finally {
      await pn.close();
      await pt.close();
    }
  });

  test('FIFO: a FIFO topic and group keep publish order per sharding key', async () => {
    const topic = await pool.topic('fifo');
    const [group] = await makeFifoGroups(1);
    const sub = await broker.subscribe({ topic, group: group as string, maxInFlight: 16 });
    const p = await broker.producer(topic);
    const keys = ['a', 'b', 'c', 'd'];
    const perKey = 40;
    const { got } = collect(sub);
    for (let i = 0; i < perKey; i++) for (const key of keys) await p.send({ body: `${key}:${i}`, key });
    await eventually(() => got.length >= keys.length * perKey, 'all FIFO messages', 60_000);
    for (const key of keys) {
      const seq = got
        .filter((g) => g.d.message.key === key)
        .map((g) => Number(bodyText(g.d.message).split(':')[1]));
      assert.deepEqual(
        seq,
        Array.from({ length: perKey }, (_, i) => i),
        `order of key ${key}`,
      );
    }
    await p.close();
    await sub.close();
  });

  test('FIFO: messages held behind a slow head keep their invisible time renewed (no redelivery)', async () => {
    // The broker hands out k:0, and once it is acked k:1..k:3 in one receive, each invisible for
    // the ack timeout (the proxy's 10 s minimum). k:3 then waits here behind k:1 and k:2 for
    // longer than that. Without renewals the broker would redeliver it meanwhile
    // (reconsumeCount 1), and the voided delivery's ack would fail.
    const ackTimeoutMs = 10_000;
    const topic = await pool.topic('fifo');
    const [group] = await makeFifoGroups(1);
    const sub = await broker.subscribe({ topic, group: group as string, ordered: true, ackTimeoutMs });
    const p = await broker.producer(topic);
    for (let i = 0; i < 4; i++) await p.send({ body: `k:${i}`, key: 'k' });
    const seen: string[] = [];
    let acked = 0;
    const { done } = collect(sub, async (d) => {
      seen.push(`${bodyText(d.message)}#${d.message.reconsumeCount}`);
      // Settle just inside the ack timeout.
      await new Promise((r) => setTimeout(r, ackTimeoutMs * 0.8));
      await d.ack();
      acked++;
    });
    await eventually(() => acked >= 4, 'four deliveries acked', 120_000);
    // Quiet for a while longer: a lapsed invisible time would show as a redelivery here.
    await new Promise((r) => setTimeout(r, 3_000));
    assert.deepEqual(seen, ['k:0#0', 'k:1#0', 'k:2#0', 'k:3#0']);
    await p.close();
    await sub.close();
    await done;
  });

  test('delay: delivered not before deliverAt and within 15 s after', async () => {
    const topic = await pool.topic('delay');
    const sub = await broker.subscribe({ topic, group: await makeGroup(false) });
    const p = await broker.producer(topic);
    const { got } = collect(sub);
    const deliverAt = Date.now() + 4_000;
    const { messageId } = await p.send({ body: 'later', deliverAt });
    await eventually(() => got.some((g) => g.d.message.id === messageId), 'the delayed message', 40_000);
    const arrival = got.find((g) => g.d.message.id === messageId);
    assert.ok(arrival);
    assert.ok(arrival.at >= deliverAt - 100, `arrived ${deliverAt - arrival.at} ms early`);
    assert.ok(arrival.at <= deliverAt + 15_000, `arrived ${arrival.at - deliverAt} ms late`);
    assert.ok(Math.abs((arrival.d.message.deliverAt ?? 0) - deliverAt) < 1_000, 'deliverAt travels with it');
    await p.close();
    await sub.close();
  });

  test('tags: the filter is evaluated by the broker; only matching messages reach the adapter', async () => {
    const topic = await pool.topic('normal');
    const sub = await broker.subscribe({ topic, group: await makeGroup(false), filter: 'red||blue' });
    const p = await broker.producer(topic);
    const { got } = collect(sub);
    for (const tag of ['red', 'green', 'blue', 'green', 'red']) await p.send({ body: tag, tag });
    await p.send({ body: 'untagged' });
    const marker = await p.send({ body: 'end', tag: 'blue' });
    await eventually(() => got.some((g) => g.d.message.id === marker.messageId), 'the marker', 30_000);
    assert.deepEqual(got.map((g) => bodyText(g.d.message)).sort(), ['blue', 'end', 'red', 'red']);
    await p.close();
    await sub.close();
  });

  test('transactions: commit delivers, rollback never does', async () => {
    const topic = await pool.topic('transaction');
    const sub = await broker.subscribe({ topic, group: await makeGroup(false) });
    const p = await broker.producer(topic);
    const { got } = collect(sub);
    const yes = await p.prepare({ body: 'yes', tag: 't' });
    const no = await p.prepare({ body: 'no' });
    await new Promise((r) => setTimeout(r, 1_000));
    assert.equal(got.length, 0, 'half messages are invisible');
    await yes.commit();
    await no.rollback();
    await expectCode(no.commit(), 'FAILED_PRECONDITION');
    const marker = await p.prepare({ body: 'marker' });
    await marker.commit();
    await eventually(() => got.length >= 2, 'committed messages', 30_000);
    assert.deepEqual(got.map((g) => bodyText(g.d.message)).sort(), ['marker', 'yes']);
    await p.close();
    await sub.close();
  });

  test('transactions: an unresolved one is checked by the broker, answered UNKNOWN, then committed', async () => {
    const checkLog = new MemoryLog();
    const own = await openTestBroker({ log: checkLog });
    try {
      const topic = await pool.topic('transaction');
      const sub = await own.subscribe({ topic, group: await makeGroup(false) });
      const p = await own.producer(topic);
      const { got } = collect(sub);
      const tx = await p.prepare({ body: 'eventually' });
      const checked = () => checkLog.lines.filter((l) => /orphaned transaction recovery/i.test(l.msg)).length;
      // transactionCheckInterval is 10 s on the test broker; half messages older than 6 s are checked.
      await eventually(() => checked() >= 1, 'the broker transaction check', 90_000);
      await new Promise((r) => setTimeout(r, 2_000));
      assert.equal(got.length, 0, 'UNKNOWN keeps the half message invisible');
      await tx.commit();
      await eventually(() => got.length === 1, 'the committed message', 30_000);
      assert.equal(got[0]?.d.message.id, tx.messageId);
      await p.close();
      await sub.close();
    } finally {
      await own.close();
    }
  });

  test('ack after close is NOT_FOUND; close leaves no handle behind', async () => {
    const topic = await pool.topic('normal');
    await withLeakCheck(
      async () => {
        const own = await openTestBroker();
        try {
          const sub = await own.subscribe({ topic, group: await makeGroup(false) });
          const p = await own.producer(topic, { credentials: { accessKeyId: 'a', accessKeySecret: 'b' } });
          await p.send({ body: 'held' });
          const it = sub[Symbol.asyncIterator]();
          const r = await it.next();
          assert.ok(!r.done);
          assert.equal(sub.inFlight, 1);
          await sub.close();
          await expectCode(r.value.ack(), 'NOT_FOUND');
          assert.ok((await own.health()).ok);
        } finally {
          await own.close();
        }
      },
      { timeoutMs: 20_000 },
    );
  });

  test('credentials=client: callers with different keys get separate clients', async () => {
    const own = await openRocketMqBroker(rocketMqUrl('credentials=client'), {});
    try {
      const topic = await pool.topic('normal');
      const a1 = await own.producer(topic, { credentials: { accessKeyId: 'k1', accessKeySecret: 's1' } });
      const a2 = await own.producer(topic, { credentials: { accessKeyId: 'k1', accessKeySecret: 's1' } });
      const b = await own.producer(topic, { credentials: { accessKeyId: 'k1', accessKeySecret: 's2' } });
      // The test proxy runs without ACL, so every pair is accepted; what matters is isolation.
      await a1.send({ body: '1' });
      await b.send({ body: '2' });
      const clients = (p: unknown) => (p as { clientKey?: string }).clientKey;
      assert.equal(clients(a1), clients(a2));
      assert.notEqual(clients(a1), clients(b));
      await Promise.all([a1.close(), a2.close(), b.close()]);
    } finally {
      await own.close();
    }
  });
});
