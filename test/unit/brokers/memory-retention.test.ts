import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { describe, test } from 'node:test';
import {
  MemoryBroker,
  type MemoryBrokerOptions,
  openMemoryBroker,
} from '../../../src/brokers/memory/index.js';
import { isMqError, type MqError } from '../../../src/core/errors.js';
import { bodyText } from '../../../src/core/message.js';
import { Reader } from '../../support/behaviour.js';
import { eventually, withLeakCheck } from '../../support/leaks.js';

const uid = (prefix: string): string => `${prefix}-${randomUUID()}`;

/** Deadline for something that should arrive: generous, a loaded 2-core machine stalls. */
const ARRIVE = 5000;

/** Opens a broker, runs body, closes the broker and checks nothing is left behind. */
async function withBroker(
  options: MemoryBrokerOptions,
  body: (broker: MemoryBroker) => Promise<void>,
): Promise<void> {
  await withLeakCheck(async () => {
    const broker = new MemoryBroker(options);
    try {
      await body(broker);
    } finally {
      await broker.close();
    }
  });
}

/** Sends `body` until the broker refuses one; returns how many were accepted and the refusal. */
async function fill(
  send: () => Promise<unknown>,
  max = 10_000,
): Promise<{ accepted: number; error: MqError }> {
  for (let accepted = 0; accepted < max; accepted++) {
    try {
      await send();
    } catch (err) {
      assert.ok(isMqError(err), `expected an MqError, got ${String(err)}`);
      return { accepted, error: err };
    }
  }
  assert.fail(`${max} sends were all accepted; expected the broker to fill up`);
}

describe('memory broker: group retention', () => {
  test('a group nobody subscribes to any more stops filling its topic after groupRetention', async () => {
    await withBroker({ maxTopicBytes: 8 * 1024, groupRetentionMs: 200 }, async (broker) => {
      const topic = uid('t');
      // One subscribe and close is enough to create a group that owes every later message an ack.
      await (await broker.subscribe({ topic, group: uid('gone') })).close();
      const p = await broker.producer(topic);
      const body = new Uint8Array(1000);
      const { accepted, error } = await fill(() => p.send({ body }));
      assert.equal(error.code, 'RESOURCE_EXHAUSTED', error.message);
      assert.ok(accepted > 0, 'some messages fit before the topic filled up');
      const full = broker.topicStats(topic);
      assert.ok(full && full.bytes > 0 && full.messages === accepted);

      await eventually(() => broker.counters().groupsExpired === 1, 'the idle group to expire', ARRIVE);
      const after = broker.topicStats(topic);
      assert.deepEqual(after?.groups, [], 'the expired group is removed from its topic');
      assert.equal(after?.bytes, 0, 'nobody owes the messages any more, so they are freed');
      assert.equal(after?.messages, 0);
      // The topic takes as many messages again as it did before it filled up.
      for (let i = 0; i < accepted; i++) await p.send({ body });
      assert.equal(broker.counters().groupsExpired, 1);
    });
  });

  test('resubscribing before groupRetention keeps the backlog; expiry counts from the last close', async () => {
    const retention = 300;
    await withBroker({ groupRetentionMs: retention }, async (broker) => {
      const topic = uid('t');
      const group = uid('g');
      const p = await broker.producer(topic);
      await (await broker.subscribe({ topic, group })).close();
      const sent: string[] = [];
      for (let i = 0; i < 5; i++) sent.push((await p.send({ body: `m${i}` })).messageId);

      // Reconnect in a loop: one retention check per group stays in the scheduler, not one per close.
      for (let i = 0; i < 20; i++) await (await broker.subscribe({ topic, group })).close();
      assert.equal(broker.scheduledTasks, 1, 'one scheduler entry for the idle group');

      const reader = new Reader(await broker.subscribe({ topic, group }));
      // The pending check fires at the first deadline, finds the group in use and is not re-armed.
      await eventually(() => broker.scheduledTasks === 0, 'the retention check to run', ARRIVE);
      assert.equal(broker.counters().groupsExpired, 0, 'a group with a subscription is kept');
      const got: string[] = [];
      for (let i = 0; i < sent.length; i++) {
        const d = await reader.next(ARRIVE, `message ${i}`);
        got.push(d.message.id);
        // Leave the last one unacked: closing gives it back to the group.
        if (i < sent.length - 1) await d.ack();
      }
      assert.deepEqual(got, sent, 'every message is delivered after resubscribing, in order');

      await reader.subscription.close();
      const closedAt = Date.now();
      await eventually(() => broker.counters().groupsExpired === 1, 'the group to expire', ARRIVE);
      assert.ok(Date.now() - closedAt >= retention, 'expiry counts from the last close');
      assert.equal(broker.topicStats(topic)?.bytes, 0, 'the unacked message is released');
    });
  });

  test('an expiring group releases parked and nack-delayed entries; a late delay callback resurrects nothing', async () => {
    const retention = 200;
    const nackDelay = 600;
    await withBroker({ groupRetentionMs: retention }, async (broker) => {
      const topic = uid('t');
      const group = uid('g');
      const p = await broker.producer(topic);
      const reader = new Reader(await broker.subscribe({ topic, group, ordered: true, maxInFlight: 10 }));
      await p.send({ body: 'a0', key: 'a' });
      await p.send({ body: 'a1', key: 'a' });
      await p.send({ body: 'a2', key: 'a' });
      await p.send({ body: 'free' });
      const a0 = await reader.next(ARRIVE);
      assert.equal(bodyText(a0.message), 'a0');
      // Taking the next one parks a1 and a2 behind a0's key lock.
      const free = await reader.next(ARRIVE);
      assert.equal(bodyText(free.message), 'free');
      await free.nack({ delayMs: nackDelay });
      const nackedAt = Date.now();
      // a0 stays unacked: closing puts it back as the key's holder, ready for redelivery.
      await reader.subscription.close();
      const before = broker.topicStats(topic);
      assert.equal(before?.messages, 4);
      assert.equal(before?.groups[0]?.backlog, 4, 'a0 ready, a1 and a2 parked, "free" sleeping');

      await eventually(() => broker.counters().groupsExpired === 1, 'the group to expire', ARRIVE);
      const after = broker.topicStats(topic);
      assert.deepEqual(after?.groups, []);
      assert.equal(after?.messages, 0, 'ready, parked and sleeping entries were all released');
      assert.equal(after?.bytes, 0);

      // A group of the same name is a new group: it must not receive the old group's messages,
      // not even the one whose nack delay ends after the old group was forgotten.
      const again = new Reader(await broker.subscribe({ topic, group }));
      await eventually(() => Date.now() > nackedAt + nackDelay + 50, 'the nack delay to pass', ARRIVE);
      await again.nothingWithin(100, 'the expired group released everything');
      await p.send({ body: 'fresh' });
      const d = await again.next(ARRIVE);
      assert.equal(bodyText(d.message), 'fresh');
      await d.ack();
      assert.equal(broker.topicStats(topic)?.bytes, 0);
      assert.equal(broker.topicStats(topic)?.messages, 0);
    });
  });

  test('closing the broker with idle groups waiting to expire leaves no timers', async () => {
    await withBroker({}, async (broker) => {
      const topic = uid('t');
      const p = await broker.producer(topic);
      for (let g = 0; g < 3; g++) {
        const reader = new Reader(await broker.subscribe({ topic, group: `g${g}` }));
        await p.send({ body: `m${g}` });
        await (await reader.next(ARRIVE)).nack({ delayMs: 3_600_000 });
        await reader.subscription.close();
      }
      // Three retention checks (10 minutes by default) and three hour-long nack delays, plus the
      // closed subscriptions' cancelled ack timeouts, which the scheduler drops when they are due.
      assert.ok(broker.scheduledTasks >= 6, `${broker.scheduledTasks} scheduler entries`);
      assert.equal(broker.counters().groupsExpired, 0);
    });
  });
});

describe('memory broker: broker-wide maxBytes', () => {
  test('the oldest unowned backlog of any topic makes room; owed messages are never dropped', async () => {
    const KiB = 1024;
    await withBroker({ maxTopicBytes: 16 * KiB, maxBytes: 24 * KiB }, async (broker) => {
      const body = new Uint8Array(1000);
      const stats = (topic: string) => {
        const s = broker.topicStats(topic);
        assert.ok(s, `topic ${topic} exists`);
        return s;
      };
      // Backlog nobody owes: A's first, then C's.
      const a = uid('a');
      const c = uid('c');
      const pa = await broker.producer(a);
      const pc = await broker.producer(c);
      for (let i = 0; i < 6; i++) await pa.send({ body });
      for (let i = 0; i < 2; i++) await pc.send({ body });
      const orphans = stats(a).messages + stats(c).messages;
      assert.equal(orphans, 8);
      const oldestFirst = () =>
        assert.ok(stats(a).messages === 0 || stats(c).messages === 2, 'C loses nothing while A has backlog');

      // B and D have a group that reads nothing: everything sent to them is owed.
      const live: Array<{ reader: Reader; sent: string[] }> = [];
      let refusal: MqError | undefined;
      for (const name of [uid('b'), uid('d')]) {
        const reader = new Reader(await broker.subscribe({ topic: name, group: 'slow' }));
        const p = await broker.producer(name);
        const sent: string[] = [];
        const { error } = await fill(async () => {
          sent.push((await p.send({ body })).messageId);
          oldestFirst();
        });
        live.push({ reader, sent });
        refusal = error;
      }
      // B stops at its own maxTopicBytes; D at what B leaves of the broker's maxBytes.
      assert.ok(refusal);
      assert.equal(refusal.code, 'RESOURCE_EXHAUSTED');
      assert.equal(refusal.retryable, true);
      const counters = broker.counters();
      assert.match(refusal.message, /maxBytes/);
      assert.match(refusal.message, /24KiB/);
      assert.match(refusal.message, new RegExp(`${counters.retainedBytes} bytes retained`));
      assert.match(refusal.message, /memory:\/\/\?maxBytes=1GiB/);

      assert.equal(stats(a).messages, 0, "A's backlog, the oldest, went first");
      assert.equal(counters.backlogDropped, orphans - stats(c).messages);
      assert.ok((counters.retainedBytes ?? 0) <= 24 * KiB);
      const total = broker.stats().reduce((sum, s) => sum + s.bytes, 0);
      assert.equal(counters.retainedBytes, total, 'retainedBytes is the sum over topics');

      // Every message the live groups were sent is still there, in order.
      for (const { reader, sent } of live) {
        const got: string[] = [];
        for (let i = 0; i < sent.length; i++) {
          const d = await reader.next(ARRIVE, `message ${i}`);
          got.push(d.message.id);
          await d.ack();
        }
        assert.deepEqual(got, sent);
      }
      assert.equal(broker.counters().retainedBytes, stats(c).bytes, 'only what is left of the backlog');
    });
  });

  test('a send that would fail anyway drops no backlog; one that fits after dropping some does', async () => {
    await withBroker({ maxTopicBytes: 8 * 1024, maxBytes: 12 * 1024 }, async (broker) => {
      // Owed messages filling one topic up to its own limit, about 8 KiB of the broker's 12.
      const full = uid('full');
      await broker.subscribe({ topic: full, group: 'g' });
      const pf = await broker.producer(full);
      const { error } = await fill(() => pf.send({ body: new Uint8Array(1000) }));
      assert.match(error.message, /maxTopicBytes/);
      // Then backlog nobody owes, about 3 KiB.
      const orphan = uid('orphan');
      const po = await broker.producer(orphan);
      for (let i = 0; i < 2; i++) await po.send({ body: new Uint8Array(1000) });

      const other = uid('other');
      await broker.subscribe({ topic: other, group: 'g' });
      const p = await broker.producer(other);
      // Over 5 KiB: it would not fit even with every orphan gone, so none is dropped for it.
      const err = await p.send({ body: new Uint8Array(5000) }).then(
        () => assert.fail('expected RESOURCE_EXHAUSTED'),
        (e: unknown) => e,
      );
      assert.ok(isMqError(err) && err.code === 'RESOURCE_EXHAUSTED', String(err));
      assert.match(err.message, /maxBytes/);
      assert.equal(broker.topicStats(orphan)?.messages, 2);
      assert.equal(broker.counters().backlogDropped, 0);
      // About 3.5 KiB fits once the backlog makes way.
      await p.send({ body: new Uint8Array(3000) });
      const dropped = broker.counters().backlogDropped ?? 0;
      assert.ok(dropped >= 1, 'backlog was dropped for it');
      assert.equal(broker.topicStats(orphan)?.messages, 2 - dropped);
    });
  });
});

describe('memory broker: retention and broker-wide limit settings', () => {
  test('groupRetention and maxBytes are read from the URL; maxBytes follows a larger maxTopicBytes', async () => {
    const cases: Array<[string, { maxBytes: number; groupRetentionMs: number }]> = [
      ['memory://', { maxBytes: 256 * 1024 ** 2, groupRetentionMs: 10 * 60_000 }],
      ['memory://?groupRetention=90s&maxBytes=1GiB', { maxBytes: 1024 ** 3, groupRetentionMs: 90_000 }],
      ['memory://?groupRetention=1h30m', { maxBytes: 256 * 1024 ** 2, groupRetentionMs: 5_400_000 }],
      // Raising only maxTopicBytes must still let one topic reach its limit.
      ['memory://?maxTopicBytes=512MiB', { maxBytes: 512 * 1024 ** 2, groupRetentionMs: 10 * 60_000 }],
    ];
    for (const [url, expected] of cases) {
      const broker = (await openMemoryBroker(new URL(url), {})) as MemoryBroker;
      try {
        const { maxBytes, groupRetentionMs } = broker.settings;
        assert.deepEqual({ maxBytes, groupRetentionMs }, expected, url);
        assert.deepEqual(broker.counters(), { groupsExpired: 0, backlogDropped: 0, retainedBytes: 0 });
      } finally {
        await broker.close();
      }
    }
  });

  test('bad values are refused naming the parameter', async () => {
    const cases: Array<[string, RegExp]> = [
      ['memory://?groupRetention=10', /groupRetention.*not a duration.*10m|groupRetention.*e\.g\./],
      ['memory://?groupRetention=0s', /groupRetention.*longer than 0/],
      ['memory://?groupRetention=soon', /groupRetention/],
      ['memory://?maxBytes=lots', /maxBytes.*MiB/],
      ['memory://?maxBytes=10', /maxBytes.*at least 1KiB/],
      ['memory://?maxBytes=1MiB', /maxBytes 1MiB is below maxTopicBytes 64MiB.*raise maxBytes/],
      ['memory://?maxTopicBytes=1GiB&maxBytes=512MiB', /maxBytes 512MiB is below maxTopicBytes 1GiB/],
      ['memory://?groupRetentionMs=5m', /unknown parameter "groupRetentionMs".*maxBytes.*groupRetention/],
    ];
    for (const [url, pattern] of cases) {
      const err = await openMemoryBroker(new URL(url), {}).then(
        async (broker) => {
          await broker.close();
          return assert.fail(`${url} was accepted`);
        },
        (e: unknown) => e,
      );
      assert.ok(isMqError(err), `${url}: ${String(err)}`);
      assert.equal(err.code, 'INVALID_ARGUMENT', url);
      assert.match(err.message, pattern, url);
    }
    assert.throws(() => new MemoryBroker({ groupRetentionMs: 0 }), /groupRetentionMs 0 is not valid/);
    assert.throws(() => new MemoryBroker({ maxTopicBytes: 2048, maxBytes: 1024 }), /maxBytes 1KiB is below/);
  });
});
