/**
 * The holding core (src/brokers/holding/) over the embedded broker as its storage: tiers and
 * hops, release order and lateness, failed releases retried, transaction decisions, and no
 * handle left after close. The Kafka and NATS backends are tested against the real brokers in
 * test/integration/{kafka,nats}/holding.test.ts.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { Broker, Delivery, Subscription } from '../../../src/brokers/broker.js';
import {
  DECISION_GRACE_MS,
  Holding,
  type HoldingBackend,
  type HoldingTier,
} from '../../../src/brokers/holding/holding.js';
import { decodeHeld, encodeHeld, releasedMessage } from '../../../src/brokers/holding/record.js';
import { heldTransaction } from '../../../src/brokers/holding/transaction.js';
import { openMemoryBroker } from '../../../src/brokers/memory/index.js';
import { isMqError, NotFoundError } from '../../../src/core/errors.js';
import { delay } from '../../../src/core/lifecycle.js';
import { bodyText } from '../../../src/core/message.js';
import { Reader } from '../../support/behaviour.js';
import { eventually, withLeakCheck } from '../../support/leaks.js';

const TIERS: HoldingTier[] = [
  { topic: '__hold_0', spanMs: Number.POSITIVE_INFINITY },
  { topic: '__hold_100ms', spanMs: 100 },
  { topic: '__hold_1000ms', spanMs: 1000 },
];

function memoryBackend(
  broker: Broker,
  options: { decisions?: boolean; failReleases?: number } = {},
): HoldingBackend & { released: string[] } {
  let failures = options.failReleases ?? 0;
  const released: string[] = [];
  const backend: HoldingBackend & { released: string[] } = {
    broker: 'memory',
    tiers: TIERS,
    released,
    store: async (tier, record) => {
      const p = await broker.producer(tier.topic);
      await p.send(record);
      await p.close();
      return {};
    },
    release: async (held) => {
      if (failures > 0) {
        failures--;
        throw new Error('release failed on purpose');
      }
      const p = await broker.producer(held.topic);
      await p.send({ ...releasedMessage(held), properties: { ...held.properties, id: held.id } });
      await p.close();
      released.push(held.id);
      return { duplicate: false };
    },
    subscribe: (tier, group) => broker.subscribe({ topic: tier.topic, group, start: 'earliest' }),
  };
  if (options.decisions) {
    Object.assign(backend, {
      decisions: {
        write: async (record: Parameters<Holding['hold']>[1]) => {
          const p = await broker.producer('__hold_decisions');
          await p.send(record);
          await p.close();
        },
        subscribe: () =>
          broker.subscribe({ topic: '__hold_decisions', group: 'decisions', start: 'earliest' }),
      },
    });
  }
  return backend;
}

describe('holding core', () => {
  test('records encode and decode; a reserved property is refused', async () => {
    const held = {
      id: 'id-1',
      topic: 't',
      kind: 'delay' as const,
      dueAt: 123,
      heldAt: 100,
      txId: undefined,
      body: 'b',
      key: 'k',
      tag: 'tg',
      businessKey: 'bk',
      properties: { a: '1' },
    };
    const record = encodeHeld(held);
    const back = decodeHeld({
      id: 'x',
      topic: '__hold_0',
      body: new TextEncoder().encode('b'),
      key: record.key,
      tag: undefined,
      businessKey: undefined,
      properties: record.properties ?? {},
      deliverAt: undefined,
      bornAt: 0,
      reconsumeCount: 0,
    });
    assert.ok(back);
    assert.deepEqual(
      { ...back, body: undefined },
      { ...held, body: undefined },
      'every field survives the holding record',
    );
    await withLeakCheck(async () => {
      const broker = await openMemoryBroker(new URL('memory://'));
      const holding = new Holding(memoryBackend(broker));
      await assert.rejects(
        holding.hold(
          't',
          { body: 'x', properties: { 'mqgate-hold-due': '0' } },
          { id: 'i', kind: 'delay', dueAt: 0 },
        ),
        (err: unknown) => isMqError(err) && err.code === 'INVALID_ARGUMENT',
      );
      await holding.close();
      await broker.close();
    });
  });

  test('tiers: the longest span not longer than the remaining delay, else the exact tier', async () => {
    const broker = await openMemoryBroker(new URL('memory://'));
    const holding = new Holding(memoryBackend(broker));
    assert.equal(holding.tierFor(50).topic, '__hold_0');
    assert.equal(holding.tierFor(100).topic, '__hold_100ms');
    assert.equal(holding.tierFor(999).topic, '__hold_100ms');
    assert.equal(holding.tierFor(5_000).topic, '__hold_1000ms');
    await holding.close();
    await broker.close();
  });

  test('mixed delays are released through hops in due order, none early', async () => {
    await withLeakCheck(async () => {
      const broker = await openMemoryBroker(new URL('memory://'));
      const holding = new Holding(memoryBackend(broker));
      const reader = new Reader(await broker.subscribe({ topic: 'target', group: 'g', start: 'earliest' }));
      const base = Date.now() + 300;
      const order = [7, 2, 9, 0, 5, 3, 8, 1, 6, 4];
      for (const i of order) {
        await holding.hold(
          'target',
          { body: String(i), key: i % 2 ? 'odd' : undefined, properties: { due: String(base + i * 250) } },
          { id: `m${i}`, kind: 'delay', dueAt: base + i * 250 },
        );
      }
      const seen: number[] = [];
      while (seen.length < order.length) {
        const d = await reader.next(10_000, `release ${seen.length + 1}`);
        const due = Number(d.message.properties.due);
        assert.ok(Date.now() >= due, `released ${due - Date.now()} ms early`);
        seen.push(Number(bodyText(d.message)));
        await d.ack();
      }
      assert.deepEqual(seen, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], 'released in due order');
      assert.equal(holding.stats.heldDelay, 10);
      await eventually(() => holding.stats.moved === 10, 'moves counted');
      assert.ok(holding.stats.hops > 0, 'the longer delays hopped through the tiers');
      assert.equal(holding.stats.latenessCount, 10);
      assert.ok(holding.stats.latenessMaxMs < 1_500, `lateness ${holding.stats.latenessMaxMs} ms`);
      await reader.subscription.close();
      await holding.close();
      await holding.close();
      await broker.close();
    });
  });

  test('a failed release is counted and retried', async () => {
    await withLeakCheck(async () => {
      const broker = await openMemoryBroker(new URL('memory://'));
      const backend = memoryBackend(broker, { failReleases: 1 });
      const holding = new Holding(backend);
      const reader = new Reader(await broker.subscribe({ topic: 'target', group: 'g', start: 'earliest' }));
      await holding.hold('target', { body: 'once' }, { id: 'm', kind: 'delay', dueAt: Date.now() + 100 });
      const d = await reader.next(10_000, 'the retried release');
      assert.equal(bodyText(d.message), 'once');
      await d.ack();
      assert.equal(holding.stats.failures, 1);
      await eventually(() => holding.stats.moved === 1, 'the move counted');
      await reader.subscription.close();
      await holding.close();
      await broker.close();
    });
  });

  test('a rewinding backend: a delivery its rewind already voided is not moved (its redelivery is, once)', async () => {
    await withLeakCheck(async () => {
      const broker = await openMemoryBroker(new URL('memory://'));
      const backend = memoryBackend(broker);
      // Kafka-like: the first hand-out of each record is void by the time the mover sees it (a
      // nack of its partition rewound it): its ack is NOT_FOUND and the record comes again.
      const voided = new Set<Delivery>();
      const seen = new Set<string>();
      let handedOut = 0;
      const voidFirst = (sub: Subscription): Subscription => ({
        topic: sub.topic,
        group: sub.group,
        get inFlight() {
          return sub.inFlight;
        },
        close: () => sub.close(),
        async *[Symbol.asyncIterator]() {
          for await (const d of sub) {
            handedOut++;
            if (seen.has(d.message.id)) {
              yield d;
              continue;
            }
            seen.add(d.message.id);
            // Due by the time it is seen, so a mover that ignored the rewind would move it.
            await delay(100);
            await d.nack({ delayMs: 0 });
            const gone = async (): Promise<void> => {
              throw new NotFoundError('rewound');
            };
            const v: Delivery = { message: d.message, ack: gone, nack: gone };
            voided.add(v);
            yield v;
          }
        },
      });
      const holding = new Holding({
        ...backend,
        subscribe: async (tier, group) => voidFirst(await backend.subscribe(tier, group)),
        rewind: { laneKey: () => 'partition-0', isVoid: (d) => voided.has(d) },
      });
      const reader = new Reader(await broker.subscribe({ topic: 'target', group: 'g', start: 'earliest' }));
      await holding.hold('target', { body: 'once' }, { id: 'm', kind: 'delay', dueAt: Date.now() + 50 });
      const d = await reader.next(10_000, 'the release');
      await d.ack();
      await eventually(() => holding.stats.moved >= 1 && handedOut >= 2, 'the redelivery moved');
      await holding.close();
      assert.deepEqual(backend.released, ['m'], 'moved once: the void hand-out was skipped');
      await reader.subscription.close();
      await broker.close();
    });
  });

  test('decision records: a decided transaction is dropped, an undecided one released after the grace', async () => {
    await withLeakCheck(async () => {
      const broker = await openMemoryBroker(new URL('memory://'));
      const backend = memoryBackend(broker, { decisions: true });
      const holding = new Holding(backend);
      const dueAt = Date.now() + 200;
      await holding.hold(
        'target',
        { body: 'rolled back' },
        { id: 'rb', kind: 'transaction', dueAt, txId: 'tx-rb' },
      );
      await holding.hold(
        'target',
        { body: 'undecided' },
        { id: 'un', kind: 'transaction', dueAt, txId: 'tx-un' },
      );
      await holding.decide('tx-rb', 'rollback');
      const reader = new Reader(await broker.subscribe({ topic: 'target', group: 'g', start: 'earliest' }));
      const d = await reader.next(DECISION_GRACE_MS + 5_000, 'the undecided transaction');
      assert.equal(bodyText(d.message), 'undecided');
      assert.ok(Date.now() >= dueAt + DECISION_GRACE_MS, 'released only after the grace');
      await d.ack();
      await reader.nothingWithin(500, 'the rolled-back transaction is never released');
      assert.deepEqual(backend.released, ['un']);
      await reader.subscription.close();
      await holding.close();
      await broker.close();
    });
  });

  test('a held transaction: the same decision twice is harmless, the other one FAILED_PRECONDITION, a failed one retried', async () => {
    let commits = 0;
    let failNext = true;
    const tx = heldTransaction('m', 't', {
      commit: async () => {
        if (failNext) {
          failNext = false;
          throw new Error('broker down');
        }
        commits++;
      },
      rollback: async () => {},
    });
    await assert.rejects(tx.commit(), /broker down/);
    await tx.commit();
    await tx.commit();
    assert.equal(commits, 1);
    await assert.rejects(
      tx.rollback(),
      (err: unknown) => isMqError(err) && err.code === 'FAILED_PRECONDITION',
    );
  });
});
