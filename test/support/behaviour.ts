/**
 * The broker behaviour suite: one set of tests every adapter must pass, run against a factory.
 * A capability a broker lacks is asserted as an UNSUPPORTED error naming the broker, never
 * skipped. Waits poll with deadlines scaled by `timeoutScale`, because Kafka and RocketMQ need
 * seconds to join a group, while the embedded broker answers in microseconds.
 */
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import type { Broker, Delivery, Producer, SubscribeOptions, Subscription } from '../../src/brokers/broker.js';
import { isMqError, type MqError } from '../../src/core/errors.js';
import { delay } from '../../src/core/lifecycle.js';
import { bodyText, type Message } from '../../src/core/message.js';
import { withLeakCheck } from './leaks.js';

export type TopicKind = 'normal' | 'fifo' | 'delay' | 'transaction';

export interface BehaviourSuiteOptions {
  /** Returns a topic of the given kind that exists (RocketMQ cannot create topics on the fly). */
  makeTopic?(kind: TopicKind): Promise<string>;
  /** Returns a consumer group that exists (`fifo` for ordered consumption). */
  makeGroup?(fifo: boolean): Promise<string>;
  /** Multiplies every deadline; 1 suits the embedded broker, use 3-10 for networked brokers. */
  timeoutScale?: number;
  /** Ack timeout used by the redelivery-after-timeout test (default 1000 ms). */
  ackTimeoutMs?: number;
  /**
   * Whether competing subscriptions must each receive some messages (default true). A broker
   * that spreads a group by partition needs a topic with at least two partitions for this.
   */
  expectCompetingSplit?: boolean;
}

/** What Reader.poll returns when nothing arrived in time. */
export const TIMEOUT = Symbol('timeout');

/**
 * Reads a subscription with deadlines. A next() that timed out stays pending and is reused by
 * the following call, so a timed-out read never leaks a delivery to nobody.
 */
export class Reader {
  readonly #it: AsyncIterator<Delivery, undefined>;
  #pending: Promise<IteratorResult<Delivery, undefined>> | undefined;

  constructor(readonly subscription: Subscription) {
    this.#it = subscription[Symbol.asyncIterator]() as AsyncIterator<Delivery, undefined>;
  }

  /** The next delivery, or TIMEOUT when none arrives within `ms`. */
  async poll(ms: number): Promise<IteratorResult<Delivery, undefined> | typeof TIMEOUT> {
    this.#pending ??= this.#it.next();
    const pending = this.#pending;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<typeof TIMEOUT>((resolve) => {
      timer = setTimeout(() => resolve(TIMEOUT), ms);
    });
    try {
      const r = await Promise.race([pending, timeout]);
      if (r !== TIMEOUT) this.#pending = undefined;
      return r;
    } finally {
      clearTimeout(timer);
    }
  }

  async next(ms: number, what = 'a delivery'): Promise<Delivery> {
    const r = await this.poll(ms);
    if (r === TIMEOUT) assert.fail(`timed out after ${ms} ms waiting for ${what}`);
    if (r.done) assert.fail(`subscription ended while waiting for ${what}`);
    return r.value;
  }

  /** Asserts nothing is delivered within `ms` (a pending read is kept for later calls). */
  async nothingWithin(ms: number, why: string): Promise<void> {
    const r = await this.poll(ms);
    if (r === TIMEOUT) return;
    if (r.done) return;
    assert.fail(
      `expected no delivery (${why}), got message ${r.value.message.id} "${bodyText(r.value.message)}"`,
    );
  }

  /** Whether the iteration ends (done) within `ms`. */
  async endsWithin(ms: number): Promise<boolean> {
    const r = await this.poll(ms);
    return r !== TIMEOUT && r.done === true;
  }
}

async function expectCode(
  promise: Promise<unknown> | (() => Promise<unknown>),
  code: string,
  what: string,
): Promise<MqError> {
  try {
    await (typeof promise === 'function' ? promise() : promise);
  } catch (err) {
    assert.ok(isMqError(err), `${what}: expected an MqError ${code}, got ${String(err)}`);
    assert.equal(err.code, code, `${what}: expected ${code}, got ${err.code}: ${err.message}`);
    return err;
  }
  assert.fail(`${what}: expected ${code}, but it succeeded`);
}

async function expectUnsupported(
  broker: Broker,
  promise: () => Promise<unknown>,
  what: string,
): Promise<void> {
  const err = await expectCode(promise, 'UNSUPPORTED', what);
  assert.match(
    err.message.toLowerCase(),
    new RegExp(broker.kind.toLowerCase()),
    `${what}: an UNSUPPORTED error must name the broker "${broker.kind}": ${err.message}`,
  );
}

export function runBrokerBehaviourSuite(
  name: string,
  factory: () => Promise<Broker>,
  options: BehaviourSuiteOptions = {},
): void {
  const scale = options.timeoutScale ?? 1;
  /** Time allowed for a message that should arrive (includes group joins on real brokers). */
  const arrive = 10_000 * scale;
  /** Window during which something must NOT arrive; a flaky pass is possible, a false fail is not. */
  const quiet = 300 * scale;
  const ackTimeoutMs = options.ackTimeoutMs ?? 1000;
  const makeTopic = options.makeTopic ?? (async (kind: TopicKind) => `${kind}-${randomUUID()}`);
  const makeGroup = options.makeGroup ?? (async (fifo: boolean) => `${fifo ? 'fifo' : 'g'}-${randomUUID()}`);

  describe(`broker behaviour: ${name}`, { timeout: 300_000 * scale }, () => {
    let broker: Broker;
    const cleanups: Array<() => Promise<unknown>> = [];

    before(async () => {
      broker = await factory();
    });

    after(async () => {
      await broker?.close();
    });

    /** Runs `body` and closes every producer and subscription it opened, even when it fails. */
    async function scoped(body: () => Promise<void>): Promise<void> {
      try {
        await body();
      } finally {
        const steps = cleanups.splice(0).reverse();
        for (const step of steps) await step().catch(() => {});
      }
    }

    async function producer(topic: string): Promise<Producer> {
      const p = await broker.producer(topic);
      cleanups.push(() => p.close());
      return p;
    }

    async function subscribe(opts: SubscribeOptions): Promise<Reader> {
      // Where the broker lets the subscriber choose; elsewhere (RocketMQ) the test groups are set
      // up on the broker to start at the oldest message.
      const start = broker.capabilities.startPosition ? 'earliest' : undefined;
      const sub = await broker.subscribe({ start, ...opts });
      cleanups.push(() => sub.close());
      return new Reader(sub);
    }

    async function drainAndAck(reader: Reader, n: number, what: string): Promise<Message[]> {
      const out: Message[] = [];
      for (let i = 0; i < n; i++) {
        const d = await reader.next(arrive, `${what} (${i + 1} of ${n})`);
        out.push(d.message);
        await d.ack();
      }
      return out;
    }

    test('publish and consume keep body bytes, key, tag, businessKey, properties and bornAt', async () => {
      await scoped(async () => {
        assert.equal(typeof broker.kind, 'string');
        assert.ok((await broker.health()).ok, 'health() is ok on an open broker');
        const topic = await makeTopic('normal');
        const group = await makeGroup(false);
        const reader = await subscribe({ topic, group });
        const p = await producer(topic);
        assert.equal(p.topic, topic);
        const binary = new Uint8Array(256);
        for (let i = 0; i < 256; i++) binary[i] = i;
        const before = Date.now();
        const sent = await p.send({
          body: binary,
          key: 'key-1',
          tag: 'tagA',
          businessKey: 'order-42',
          properties: { traceId: 'abc', 'x-unicode': 'héllo ✓' },
        });
        const sentText = await p.send({ body: 'plain text ✓', key: 'key-1', tag: 'tagA' });
        const afterSend = Date.now();
        assert.equal(typeof sent.messageId, 'string');
        assert.ok(sent.messageId.length > 0, 'send returns a message id');
        assert.notEqual(sent.messageId, sentText.messageId, 'message ids are unique');

        // Matched by id: brokers spread messages over queues, so arrival order is not part of this test.
        const got = await drainAndAck(reader, 2, 'the published messages');
        const first = got.find((m) => m.id === sent.messageId);
        const second = got.find((m) => m.id === sentText.messageId);
        assert.ok(first && second, `both published ids were delivered (${got.map((m) => m.id).join(', ')})`);
        assert.equal(first.topic, topic);
        assert.deepEqual([...first.body], [...binary], 'binary body intact');
        assert.equal(first.key, 'key-1');
        assert.equal(first.tag, 'tagA');
        assert.equal(first.businessKey, 'order-42');
        assert.equal(first.properties.traceId, 'abc');
        assert.equal(first.properties['x-unicode'], 'héllo ✓');
        assert.equal(first.reconsumeCount, 0);
        // Broker clocks may differ slightly from ours (containers); allow a small skew.
        assert.ok(
          first.bornAt >= before - 5000 && first.bornAt <= afterSend + 5000,
          `bornAt ${first.bornAt} is the publish time (${before}..${afterSend})`,
        );
        assert.equal(bodyText(second), 'plain text ✓');
      });
    });

    test('a new group starts at the next message, at the oldest, or at a time (or UNSUPPORTED)', async () => {
      await scoped(async () => {
        const topic = await makeTopic('normal');
        if (!broker.capabilities.startPosition) {
          for (const start of ['earliest', 'latest', Date.now()] as const) {
            await expectUnsupported(
              broker,
              () => broker.subscribe({ topic, group: `start-${randomUUID()}`, start }),
              `start ${String(start)}`,
            );
          }
          return;
        }
        const p = await producer(topic);
        await p.send({ body: 'before-1' });
        await delay(50);
        const at = Date.now();
        await delay(50);
        await p.send({ body: 'before-2' });
        const earliest = await subscribe({ topic, group: await makeGroup(false), start: 'earliest' });
        const since = await subscribe({ topic, group: await makeGroup(false), start: at });
        const latest = await subscribe({ topic, group: await makeGroup(false), start: 'latest' });
        // Some brokers take a group's start when it joins, asynchronously (Kafka assigns
        // partitions later): probe until the latest group receives something, then publish.
        const seen = new Map<Reader, string[]>([
          [earliest, []],
          [since, []],
          [latest, []],
        ]);
        const take = async (r: Reader, ms: number): Promise<void> => {
          const got = await r.poll(ms);
          if (typeof got === 'object' && !got.done) {
            seen.get(r)?.push(bodyText(got.value.message));
            await got.value.ack();
          }
        };
        const deadline = Date.now() + arrive;
        for (let i = 0; (seen.get(latest)?.length ?? 0) === 0; i++) {
          assert.ok(Date.now() < deadline, 'the latest group received none of the probes');
          await p.send({ body: `probe-${i}` });
          await take(latest, quiet);
        }
        await p.send({ body: 'after' });
        // Several partitions give no order between them: wait for what each group must get.
        const must = new Map<Reader, string[]>([
          [earliest, ['before-1', 'before-2', 'after']],
          [since, ['before-2', 'after']],
          [latest, ['after']],
        ]);
        for (const [r, bodies] of must) {
          while (!bodies.every((b) => seen.get(r)?.includes(b))) {
            assert.ok(
              Date.now() < deadline + arrive,
              `missing some of ${bodies.join(', ')}: got ${seen.get(r)?.join(', ')}`,
            );
            await take(r, quiet);
          }
          await take(r, quiet);
        }
        assert.ok(!seen.get(since)?.includes('before-1'), 'a time start skips what was born before it');
        assert.ok(
          !(seen.get(latest) ?? []).some((b) => b.startsWith('before')),
          'latest skips what was published before it',
        );
      });
    });

    test('every consumer group receives every message', async () => {
      await scoped(async () => {
        const topic = await makeTopic('normal');
        const a = await subscribe({ topic, group: await makeGroup(false) });
        const b = await subscribe({ topic, group: await makeGroup(false) });
        const p = await producer(topic);
        const ids: string[] = [];
        for (let i = 0; i < 20; i++) ids.push((await p.send({ body: `m${i}` })).messageId);
        const gotA = await drainAndAck(a, ids.length, 'group A');
        const gotB = await drainAndAck(b, ids.length, 'group B');
        assert.deepEqual(new Set(gotA.map((m) => m.id)), new Set(ids));
        assert.deepEqual(new Set(gotB.map((m) => m.id)), new Set(ids));
        await a.nothingWithin(quiet, 'group A already has everything');
      });
    });

    test('competing subscriptions in one group split the messages without duplicates', async () => {
      await scoped(async () => {
        const topic = await makeTopic('normal');
        const group = await makeGroup(false);
        const readers = [await subscribe({ topic, group }), await subscribe({ topic, group })];
        const p = await producer(topic);
        const n = 40;
        const ids = new Set<string>();
        for (let i = 0; i < n; i++) ids.add((await p.send({ body: `m${i}`, key: `k${i % 8}` })).messageId);
        const seen: string[] = [];
        const perReader = [0, 0];
        const deadline = Date.now() + arrive;
        await Promise.all(
          readers.map(async (reader, i) => {
            while (seen.length < n && Date.now() < deadline) {
              const r = await reader.poll(50 * scale);
              if (r === TIMEOUT || r.done) continue;
              seen.push(r.value.message.id);
              perReader[i] = (perReader[i] ?? 0) + 1;
              await r.value.ack();
            }
          }),
        );
        assert.equal(seen.length, n, `received ${seen.length} of ${n} messages`);
        assert.equal(new Set(seen).size, n, 'no message was delivered twice');
        assert.deepEqual(new Set(seen), ids);
        for (const reader of readers) await reader.nothingWithin(quiet, 'everything was acked');
        if (options.expectCompetingSplit !== false) {
          assert.ok(
            (perReader[0] ?? 0) > 0 && (perReader[1] ?? 0) > 0,
            `both subscriptions got messages (${perReader.join(' / ')})`,
          );
        }
      });
    });

    test('messages with the same key arrive in publish order', async () => {
      await scoped(async () => {
        if (!broker.capabilities.ordered) {
          const topic = await makeTopic('fifo');
          await expectUnsupported(
            broker,
            () => broker.subscribe({ topic, group: `g-${randomUUID()}`, ordered: true }),
            'subscribe({ ordered: true }) on a broker without ordering',
          );
          return;
        }
        const topic = await makeTopic('fifo');
        const group = await makeGroup(true);
        const reader = await subscribe({ topic, group, ordered: true });
        const p = await producer(topic);
        const keys = ['k1', 'k2', 'k3'];
        const perKey = 15;
        for (let i = 0; i < perKey; i++) {
          for (const key of keys) await p.send({ body: `${key}:${i}`, key });
        }
        const got = await drainAndAck(reader, keys.length * perKey, 'ordered messages');
        for (const key of keys) {
          const seq = got.filter((m) => m.key === key).map((m) => Number(bodyText(m).split(':')[1]));
          assert.deepEqual(
            seq,
            Array.from({ length: perKey }, (_, i) => i),
            `key ${key} in publish order`,
          );
        }
      });
    });

    test("an ordered key's nacked or timed-out message comes back before the key's later messages", async () => {
      await scoped(async () => {
        if (!broker.capabilities.ordered) return;
        const topic = await makeTopic('fifo');
        const group = await makeGroup(true);
        const reader = await subscribe({ topic, group, ordered: true, ackTimeoutMs });
        const p = await producer(topic);
        for (let i = 0; i < 4; i++) await p.send({ body: `k:${i}`, key: 'k' });
        const seen: string[] = [];
        const take = async (what: string): Promise<Delivery> => {
          const d = await reader.next(arrive + ackTimeoutMs * 3, what);
          seen.push(bodyText(d.message));
          return d;
        };
        const d0 = await take('k:0');
        // Only the key's head is out: its next message waits until the head is settled.
        // (Polled for less than the ack timeout, or k:0 itself would come back.)
        assert.equal(
          await reader.poll(Math.min(quiet, ackTimeoutMs / 2)),
          TIMEOUT,
          'k:1 must wait while k:0 is unsettled',
        );
        await d0.ack();
        const d1 = await take('k:1');
        assert.equal(d1.message.reconsumeCount, 0);
        await d1.nack();
        const retry = await take('k:1 again after its nack');
        assert.equal(retry.message.reconsumeCount, 1);
        // Left unsettled past the ack timeout, it comes back once more, still ahead of k:2.
        const late = await take('k:1 again after its ack timeout');
        assert.ok(
          late.message.reconsumeCount >= 2,
          `reconsumeCount ${late.message.reconsumeCount} after a timeout`,
        );
        await expectCode(retry.ack(), 'NOT_FOUND', 'acking the timed-out delivery');
        await late.ack();
        await (await take('k:2')).ack();
        await (await take('k:3')).ack();
        assert.deepEqual(
          seen,
          ['k:0', 'k:1', 'k:1', 'k:1', 'k:2', 'k:3'],
          'the key in order through a nack and a timeout',
        );
        await reader.nothingWithin(quiet, 'every message was acked');
      });
    });

    test('nack redelivers with reconsumeCount + 1; acking twice is harmless', async () => {
      await scoped(async () => {
        const topic = await makeTopic('normal');
        const group = await makeGroup(false);
        const reader = await subscribe({ topic, group });
        const p = await producer(topic);
        const { messageId } = await p.send({ body: 'retry me' });
        const first = await reader.next(arrive, 'the first delivery');
        assert.equal(first.message.id, messageId);
        assert.equal(first.message.reconsumeCount, 0);
        await first.nack();
        const second = await reader.next(arrive, 'the redelivery after nack');
        assert.equal(second.message.id, messageId);
        assert.equal(second.message.reconsumeCount, 1);
        assert.equal(bodyText(second.message), 'retry me');
        await second.ack();
        await second.ack();
        await reader.nothingWithin(quiet, 'the message was acked');
      });
    });

    test('nack with delayMs redelivers no sooner than the delay', async () => {
      await scoped(async () => {
        const topic = await makeTopic('normal');
        const group = await makeGroup(false);
        const reader = await subscribe({ topic, group });
        const p = await producer(topic);
        const { messageId } = await p.send({ body: 'later' });
        const first = await reader.next(arrive, 'the first delivery');
        const delayMs = 600 * scale;
        const nackedAt = Date.now();
        await first.nack({ delayMs });
        const second = await reader.next(arrive + delayMs, 'the delayed redelivery');
        const waited = Date.now() - nackedAt;
        assert.equal(second.message.id, messageId);
        assert.equal(second.message.reconsumeCount, 1);
        // Timers may fire a little early on some brokers' clocks; the bulk of the delay must hold.
        assert.ok(waited >= delayMs * 0.8, `redelivered after ${waited} ms, delay was ${delayMs} ms`);
        await second.ack();
      });
    });

    test('an unacked delivery is redelivered after the ack timeout; the stale ack is NOT_FOUND', async () => {
      await scoped(async () => {
        const topic = await makeTopic('normal');
        const group = await makeGroup(false);
        const reader = await subscribe({ topic, group, ackTimeoutMs });
        const p = await producer(topic);
        const { messageId } = await p.send({ body: 'forget me' });
        const first = await reader.next(arrive, 'the first delivery');
        const deliveredAt = Date.now();
        assert.equal(first.message.id, messageId);
        const second = await reader.next(arrive + ackTimeoutMs * 3, 'the redelivery after the ack timeout');
        const waited = Date.now() - deliveredAt;
        assert.equal(second.message.id, messageId);
        assert.equal(second.message.reconsumeCount, first.message.reconsumeCount + 1);
        assert.ok(
          waited >= ackTimeoutMs * 0.8,
          `redelivered after ${waited} ms, ack timeout ${ackTimeoutMs}`,
        );
        await expectCode(first.ack(), 'NOT_FOUND', 'acking a delivery whose lease expired');
        await second.ack();
        await reader.nothingWithin(quiet, 'the redelivery was acked');
      });
    });

    test('a tag filter delivers only matching messages', async () => {
      await scoped(async () => {
        const topic = await makeTopic('normal');
        const group = await makeGroup(false);
        if (!broker.capabilities.tagFilter) {
          await expectUnsupported(
            broker,
            () => broker.subscribe({ topic, group, filter: 'a||b' }),
            'a tag filter on a broker without tag filtering',
          );
          return;
        }
        const reader = await subscribe({ topic, group, filter: 'a||b' });
        const all = await subscribe({ topic, group: await makeGroup(false), filter: '*' });
        const p = await producer(topic);
        await p.send({ body: 'c1', tag: 'c' });
        await p.send({ body: 'a1', tag: 'a' });
        await p.send({ body: 'none' });
        await p.send({ body: 'b1', tag: 'b' });
        await p.send({ body: 'c2', tag: 'c' });
        await p.send({ body: 'a2', tag: 'a' });
        const got = await drainAndAck(reader, 3, 'messages tagged a or b');
        assert.deepEqual(got.map((m) => bodyText(m)).sort(), ['a1', 'a2', 'b1']);
        await reader.nothingWithin(quiet, 'the other messages do not match the filter');
        const every = await drainAndAck(all, 6, 'every message with filter "*"');
        assert.equal(every.length, 6);
      });
    });

    test('deliverAt delays a message (or is UNSUPPORTED)', async () => {
      await scoped(async () => {
        const topic = await makeTopic('delay');
        const p = await producer(topic);
        if (!broker.capabilities.delay) {
          await expectUnsupported(
            broker,
            () => p.send({ body: 'later', deliverAt: Date.now() + 1000 }),
            'deliverAt on a broker without delayed delivery',
          );
          return;
        }
        const group = await makeGroup(false);
        const reader = await subscribe({ topic, group });
        const delayMs = 1500 * scale;
        const deliverAt = Date.now() + delayMs;
        const delayed = await p.send({ body: 'later', deliverAt });
        // deliverAt now rather than none: a delay topic may refuse messages of another type.
        const now = await p.send({ body: 'now', deliverAt: Date.now() });
        const first = await reader.next(arrive, 'the undelayed message');
        assert.equal(first.message.id, now.messageId);
        await first.ack();
        const second = await reader.next(arrive + delayMs, 'the delayed message');
        assert.equal(second.message.id, delayed.messageId);
        assert.ok(
          Date.now() >= deliverAt - 250 * scale,
          `delayed message arrived ${deliverAt - Date.now()} ms before its deliverAt`,
        );
        await second.ack();
      });
    });

    test('transactions: commit publishes, rollback discards (or UNSUPPORTED)', async () => {
      await scoped(async () => {
        const topic = await makeTopic('transaction');
        const p = await producer(topic);
        if (!broker.capabilities.transactions) {
          await expectUnsupported(
            broker,
            () => p.prepare({ body: 'half' }),
            'prepare() on a broker without transactions',
          );
          return;
        }
        const group = await makeGroup(false);
        const reader = await subscribe({ topic, group });
        const committed = await p.prepare({ body: 'commit me' });
        const rolledBack = await p.prepare({ body: 'roll me back' });
        assert.ok(committed.messageId.length > 0 && committed.transactionId.length > 0);
        await reader.nothingWithin(quiet, 'half messages are invisible before commit');
        await committed.commit();
        await committed.commit();
        await rolledBack.rollback();
        await rolledBack.rollback();
        await expectCode(rolledBack.commit(), 'FAILED_PRECONDITION', 'commit after rollback');
        const got = await reader.next(arrive, 'the committed message');
        assert.equal(bodyText(got.message), 'commit me');
        assert.equal(got.message.id, committed.messageId);
        await got.ack();
        // Committed through a transaction too: a transaction topic may refuse plain sends.
        const markerTx = await p.prepare({ body: 'marker' });
        await markerTx.commit();
        const marker = { messageId: markerTx.messageId };
        const next = await reader.next(arrive, 'the marker after the rolled-back message');
        assert.equal(next.message.id, marker.messageId, 'the rolled-back message is never delivered');
        await next.ack();
        await reader.nothingWithin(quiet, 'nothing else was committed');
      });
    });

    test('inFlight never exceeds maxInFlight; a settle makes room', async () => {
      await scoped(async () => {
        const topic = await makeTopic('normal');
        const group = await makeGroup(false);
        const maxInFlight = 3;
        const reader = await subscribe({ topic, group, maxInFlight });
        const sub = reader.subscription;
        const p = await producer(topic);
        const n = 10;
        for (let i = 0; i < n; i++) await p.send({ body: `m${i}` });
        const held: Delivery[] = [];
        for (let i = 0; i < maxInFlight; i++) held.push(await reader.next(arrive, `delivery ${i + 1}`));
        assert.equal(sub.inFlight, maxInFlight);
        await reader.nothingWithin(quiet, `maxInFlight ${maxInFlight} reached`);
        assert.equal(sub.inFlight, maxInFlight);
        await held[0]?.ack();
        const more = await reader.next(arrive, 'a delivery after an ack made room');
        assert.ok(sub.inFlight <= maxInFlight);
        let seen = maxInFlight + 1;
        await more.ack();
        for (const d of held.slice(1)) await d.ack();
        while (seen < n) {
          const d = await reader.next(arrive, `delivery ${seen + 1}`);
          assert.ok(sub.inFlight <= maxInFlight, `inFlight ${sub.inFlight} <= ${maxInFlight}`);
          seen++;
          await d.ack();
        }
        assert.equal(sub.inFlight, 0);
      });
    });

    test('subscribe options outside the declared limits are INVALID_ARGUMENT naming option, range and broker', async () => {
      await scoped(async () => {
        const topic = await makeTopic('normal');
        const { limits } = broker;
        assert.ok(limits.minAckTimeoutMs >= 1 && limits.minAckTimeoutMs <= limits.maxAckTimeoutMs);
        assert.ok(limits.maxInFlight >= 1);
        const refused: Array<[string, Partial<SubscribeOptions>, RegExp]> = [
          ['ackTimeoutMs below the minimum', { ackTimeoutMs: limits.minAckTimeoutMs / 2 }, /ackTimeoutMs/],
          ['ackTimeoutMs above the maximum', { ackTimeoutMs: limits.maxAckTimeoutMs + 1 }, /ackTimeoutMs/],
          ['ackTimeoutMs NaN', { ackTimeoutMs: Number.NaN }, /ackTimeoutMs/],
          ['maxInFlight 0', { maxInFlight: 0 }, /maxInFlight/],
          ['maxInFlight fractional', { maxInFlight: 1.5 }, /maxInFlight/],
        ];
        if (limits.maxInFlight < Number.MAX_SAFE_INTEGER) {
          refused.push([
            'maxInFlight above the limit',
            { maxInFlight: limits.maxInFlight + 1 },
            /maxInFlight/,
          ]);
        }
        for (const [what, extra, option] of refused) {
          const err = await expectCode(
            () => broker.subscribe({ topic, group: `limits-${randomUUID()}`, ...extra }),
            'INVALID_ARGUMENT',
            what,
          );
          assert.match(err.message, option, `${what}: the error names the option: ${err.message}`);
          assert.match(
            err.message.toLowerCase(),
            new RegExp(broker.kind.toLowerCase()),
            `${what}: the error names the broker: ${err.message}`,
          );
        }
        // The limits themselves are accepted.
        const edge = await broker.subscribe({
          topic,
          group: `limits-${randomUUID()}`,
          ackTimeoutMs: limits.minAckTimeoutMs,
          maxInFlight: Math.min(limits.maxInFlight, 1_000),
        });
        await edge.close();
      });
    });

    test('closing a subscription redelivers its unacked messages to the next subscriber', async () => {
      await scoped(async () => {
        const topic = await makeTopic('normal');
        const group = await makeGroup(false);
        const first = await subscribe({ topic, group });
        const p = await producer(topic);
        const { messageId } = await p.send({ body: 'hand over' });
        const held = await first.next(arrive, 'the delivery to the first subscription');
        assert.equal(held.message.id, messageId);
        await first.subscription.close();
        assert.ok(await first.endsWithin(arrive), 'the closed subscription iterator ends');
        await expectCode(held.ack(), 'NOT_FOUND', 'acking after the subscription closed');
        const second = await subscribe({ topic, group });
        const again = await second.next(arrive, 'the redelivery to the next subscriber');
        assert.equal(again.message.id, messageId);
        await again.ack();
      });
    });

    test('leaving a for-await loop early closes the subscription and releases what it held', async () => {
      await scoped(async () => {
        const topic = await makeTopic('normal');
        const group = await makeGroup(false);
        const start = broker.capabilities.startPosition ? 'earliest' : undefined;
        const sub = await broker.subscribe({ topic, group, start });
        cleanups.push(() => sub.close());
        const p = await producer(topic);
        const { messageId } = await p.send({ body: 'left behind' });
        for await (const d of sub) {
          assert.equal(d.message.id, messageId);
          break;
        }
        const after = await sub[Symbol.asyncIterator]().next();
        assert.equal(after.done, true, 'the subscription is closed once the loop is left');
        const second = await subscribe({ topic, group });
        const again = await second.next(arrive, 'the redelivery to the next subscriber');
        assert.equal(again.message.id, messageId);
        await again.ack();
      });
    });

    test('closing a subscription ends a pending next()', async () => {
      await scoped(async () => {
        const topic = await makeTopic('normal');
        const reader = await subscribe({ topic, group: await makeGroup(false) });
        assert.equal(await reader.endsWithin(quiet), false, 'nothing to read yet');
        await reader.subscription.close();
        assert.ok(await reader.endsWithin(arrive), 'pending next() resolves done after close');
      });
    });

    test('broker close releases every handle and later calls fail with CLOSED', async () => {
      await withLeakCheck(
        async () => {
          const own = await factory();
          let closed = false;
          try {
            const topic = await makeTopic('normal');
            const group = await makeGroup(false);
            const sub = await own.subscribe({
              topic,
              group,
              start: own.capabilities.startPosition ? 'earliest' : undefined,
            });
            const reader = new Reader(sub);
            const p = await own.producer(topic);
            await p.send({ body: 'one' });
            const d = await reader.next(arrive, 'a delivery before close');
            await d.ack();
            const pending = reader.poll(arrive);
            await own.close();
            closed = true;
            await own.close();
            const r = await pending;
            assert.ok(r !== TIMEOUT && r.done, 'a pending next() ends when the broker closes');
            assert.equal((await own.health()).ok, false, 'health() is not ok after close');
            await expectCode(own.producer(topic), 'CLOSED', 'producer() after close');
            await expectCode(own.subscribe({ topic, group }), 'CLOSED', 'subscribe() after close');
            await expectCode(p.send({ body: 'late' }), 'CLOSED', 'send() after close');
          } finally {
            if (!closed) await own.close();
          }
        },
        { timeoutMs: 20_000 * scale },
      );
    });
  });
}
