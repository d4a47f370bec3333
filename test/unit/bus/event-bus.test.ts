import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import type { Broker } from '../../../src/brokers/broker.js';
import { openBroker } from '../../../src/brokers/index.js';
import { MemoryBroker } from '../../../src/brokers/memory/index.js';
import {
  createEnvelope,
  createEventBus,
  type Envelope,
  type EventBus,
  PROP_ATTEMPTS,
  PROP_CONTENT_TYPE,
  PROP_ERROR,
  PROP_ORIGINAL_ID,
  PROP_ORIGINAL_TOPIC,
} from '../../../src/bus/index.js';
import { ClosedError, InvalidArgumentError } from '../../../src/core/errors.js';
import { bodyJson, bodyText, type Message } from '../../../src/core/message.js';
import { assertHeapStable, eventually, withLeakCheck } from '../../support/leaks.js';

const unhandled: unknown[] = [];
const onUnhandled = (reason: unknown): void => {
  unhandled.push(reason);
};
before(() => process.on('unhandledRejection', onUnhandled));
after(() => {
  process.off('unhandledRejection', onUnhandled);
  assert.deepEqual(unhandled, [], 'nothing in the bus may surface as an unhandled rejection');
});

const name = (what: string): string => `${what}-${randomUUID()}`;

function gate(): { promise: Promise<void>; open: () => void } {
  let open = (): void => {};
  const promise = new Promise<void>((resolve) => {
    open = resolve;
  });
  return { promise, open };
}

/** Opens a memory broker and a bus over it, runs `body`, then closes both (bus first). */
async function withBus(
  body: (bus: EventBus, broker: MemoryBroker, errors: unknown[]) => Promise<void>,
): Promise<void> {
  await withLeakCheck(async () => {
    const broker = await openBroker('memory://');
    assert.ok(broker instanceof MemoryBroker);
    const errors: unknown[] = [];
    const bus = await createEventBus({ broker, onError: (err) => errors.push(err) });
    try {
      await body(bus, broker, errors);
    } finally {
      await bus.close();
      await broker.close();
    }
  });
}

/** Collects everything published to `topic` (e.g. a dead-letter topic) through a second bus. */
async function collect(
  broker: Broker,
  topic: string,
): Promise<{ messages: Message[]; close: () => Promise<void> }> {
  const bus = await createEventBus({ broker });
  const messages: Message[] = [];
  await bus.subscribe(topic, (m) => {
    messages.push(m);
  });
  return { messages, close: () => bus.close() };
}

function backlog(broker: MemoryBroker, topic: string, group: string): number {
  const stats = broker.topicStats(topic)?.groups.find((g) => g.group === group);
  return stats ? stats.backlog + stats.inFlight : 0;
}

describe('event bus', () => {
  it('publishes and delivers strings, bytes and JSON objects with their metadata', async () => {
    await withBus(async (bus) => {
      const topic = name('t');
      const got: Message[] = [];
      await bus.subscribe(topic, (m) => {
        got.push(m);
      });
      const a = await bus.publish(topic, 'hello', { key: 'k1', tag: 'greeting', properties: { x: '1' } });
      const b = await bus.publish(topic, new Uint8Array([0, 255, 7]));
      const c = await bus.publish(topic, { order: 42, items: ['a'] }, { properties: { y: '2' } });
      await eventually(() => got.length === 3, 'three deliveries');
      const byId = new Map(got.map((m) => [m.id, m]));
      const ma = byId.get(a.messageId);
      const mb = byId.get(b.messageId);
      const mc = byId.get(c.messageId);
      assert.ok(ma && mb && mc, 'messageId returned by publish is the delivered message id');
      assert.equal(bodyText(ma), 'hello');
      assert.equal(ma.key, 'k1');
      assert.equal(ma.tag, 'greeting');
      assert.equal(ma.properties.x, '1');
      assert.equal(ma.properties[PROP_CONTENT_TYPE], undefined, 'strings are sent as they are');
      assert.deepEqual([...mb.body], [0, 255, 7]);
      assert.deepEqual(bodyJson(mc), { order: 42, items: ['a'] });
      assert.equal(mc.properties[PROP_CONTENT_TYPE], 'application/json');
      assert.equal(mc.properties.y, '2');
      await assert.rejects(bus.publish(topic, undefined as unknown as object), InvalidArgumentError);
      const cyclic: Record<string, unknown> = {};
      cyclic.self = cyclic;
      await assert.rejects(bus.publish(topic, cyclic), /cannot be serialised to JSON/);
    });
  });

  it('keeps per-key order while different keys are handled concurrently', async () => {
    await withBus(async (bus, broker) => {
      const topic = name('t');
      const group = name('g');
      const keys = 20;
      const perKey = 50;
      const seen = new Map<string, number[]>();
      let running = 0;
      let maxRunning = 0;
      await bus.subscribe(
        topic,
        async (m) => {
          running++;
          maxRunning = Math.max(maxRunning, running);
          if (Math.random() < 0.3) await new Promise((r) => setImmediate(r));
          else await Promise.resolve();
          const key = m.key as string;
          const list = seen.get(key) ?? [];
          list.push(bodyJson<{ seq: number }>(m).seq);
          seen.set(key, list);
          running--;
        },
        { group, concurrency: 8 },
      );
      await Promise.all(
        Array.from({ length: keys }, async (_, k) => {
          for (let seq = 0; seq < perKey; seq++) await bus.publish(topic, { seq }, { key: `key-${k}` });
        }),
      );
      await eventually(
        () => [...seen.values()].reduce((n, l) => n + l.length, 0) === keys * perKey,
        'every message handled',
      );
      for (const [key, list] of seen) {
        assert.deepEqual(
          list,
          Array.from({ length: perKey }, (_, i) => i),
          `${key} handled out of order`,
        );
      }
      assert.ok(maxRunning > 1, `keys must be handled concurrently (max ${maxRunning})`);
      assert.ok(maxRunning <= 8, `concurrency bound exceeded (max ${maxRunning})`);
      await eventually(() => backlog(broker, topic, group) === 0, 'every message acked');
    });
  });

  it('pulls from the broker only as lanes have room (backpressure)', async () => {
    await withBus(async (bus, broker) => {
      const topic = name('t');
      const group = name('g');
      const g = gate();
      let started = 0;
      await bus.subscribe(
        topic,
        async () => {
          started++;
          await g.promise;
        },
        { group, concurrency: 2, ordered: false },
      );
      for (let i = 0; i < 50; i++) await bus.publish(topic, `m${i}`);
      await eventually(() => started === 2, 'two handlers running');
      const health = await bus.health();
      const sub = health.subscriptions[0];
      assert.ok(sub);
      assert.ok(sub.inFlight <= 2, `in-flight ${sub.inFlight} exceeds the concurrency`);
      assert.equal(sub.running, 2);
      assert.equal(backlog(broker, topic, group), 50, 'the rest stays in the broker');
      g.open();
      await eventually(() => started === 50, 'all handled after release');
      await eventually(() => backlog(broker, topic, group) === 0, 'all acked');
    });
  });

  it('retries a failing handler with growing backoff, then succeeds', async () => {
    await withBus(async (bus, broker) => {
      const topic = name('t');
      const group = name('g');
      const attempts: Array<{ attempt: number; at: number; reconsume: number }> = [];
      await bus.subscribe(
        topic,
        (m, ctx) => {
          attempts.push({ attempt: ctx.attempt, at: performance.now(), reconsume: m.reconsumeCount });
          if (ctx.attempt < 3) throw new Error(`transient ${ctx.attempt}`);
        },
        { group, maxAttempts: 5, backoff: { initialMs: 60, factor: 2, maxMs: 1000 } },
      );
      await bus.publish(topic, 'retry me', { key: 'k' });
      await eventually(() => attempts.length === 3, 'three attempts');
      await eventually(() => backlog(broker, topic, group) === 0, 'acked after the success');
      assert.deepEqual(
        attempts.map((a) => a.attempt),
        [1, 2, 3],
      );
      assert.deepEqual(
        attempts.map((a) => a.reconsume),
        [0, 1, 2],
      );
      const [a1, a2, a3] = attempts as [(typeof attempts)[0], (typeof attempts)[0], (typeof attempts)[0]];
      // Timers may fire a little early relative to performance.now(); allow a few ms of slack.
      assert.ok(a2.at - a1.at >= 55, `first retry after ${a2.at - a1.at} ms, expected >= 60`);
      assert.ok(a3.at - a2.at >= 115, `second retry after ${a3.at - a2.at} ms, expected >= 120`);
      const sub = (await bus.health()).subscriptions[0];
      assert.equal(sub?.retried, 2);
      assert.equal(sub?.handled, 1);
      assert.equal(sub?.deadLettered, 0);
    });
  });

  it('dead-letters after maxAttempts with the error recorded, and acks the original', async () => {
    await withBus(async (bus, broker) => {
      const topic = name('t');
      const group = name('g');
      const dlq = await collect(broker, `${topic}.DLQ`);
      let calls = 0;
      await bus.subscribe(
        topic,
        () => {
          calls++;
          throw new Error(`boom on call ${calls}`);
        },
        { group, maxAttempts: 3, backoff: { initialMs: 5, maxMs: 20 } },
      );
      const { messageId } = await bus.publish(topic, 'poison', { key: 'p', properties: { keep: 'me' } });
      await eventually(() => dlq.messages.length === 1, 'dead-lettered copy');
      await eventually(() => backlog(broker, topic, group) === 0, 'original acked');
      const dead = dlq.messages[0] as Message;
      assert.equal(bodyText(dead), 'poison');
      assert.equal(dead.key, 'p');
      assert.equal(dead.properties.keep, 'me');
      assert.equal(dead.properties[PROP_ERROR], 'Error: boom on call 3');
      assert.equal(dead.properties[PROP_ATTEMPTS], '3');
      assert.equal(dead.properties[PROP_ORIGINAL_TOPIC], topic);
      assert.equal(dead.properties[PROP_ORIGINAL_ID], messageId);
      assert.equal(calls, 3);
      assert.equal((await bus.health()).subscriptions.find((s) => s.topic === topic)?.deadLettered, 1);
      await dlq.close();
    });
  });

  it('dead-letters to a custom topic', async () => {
    await withBus(async (bus, broker) => {
      const topic = name('t');
      const custom = name('dead');
      const dlq = await collect(broker, custom);
      await bus.subscribe(
        topic,
        () => {
          throw new TypeError('bad data');
        },
        { maxAttempts: 1, deadLetter: custom },
      );
      await bus.publish(topic, 'x');
      await eventually(() => dlq.messages.length === 1, 'dead-lettered to the custom topic');
      assert.equal(dlq.messages[0]?.properties[PROP_ERROR], 'TypeError: bad data');
      assert.equal(dlq.messages[0]?.properties[PROP_ATTEMPTS], '1');
      await dlq.close();
      await assert.rejects(
        bus.subscribe(topic, () => {}, { deadLetter: topic }),
        /must differ/,
      );
    });
  });

  it('validates envelopes on publish, naming the field', async () => {
    await withBus(async (bus) => {
      const topic = name('t');
      const good = createEnvelope({
        aggregateId: 'order-1',
        eventType: 'OrderPlaced',
        payload: { total: 5 },
      });
      await assert.rejects(
        bus.publishEnvelope(topic, { ...good, eventVersion: 0 }),
        (err: unknown) =>
          err instanceof InvalidArgumentError &&
          /eventVersion/.test(err.message) &&
          !/aggregateId/.test(err.message),
      );
      await assert.rejects(
        bus.publishEnvelope(topic, { ...good, eventId: randomUUID() }),
        (err: unknown) => err instanceof InvalidArgumentError && /eventId/.test(err.message),
      );
      await assert.rejects(
        bus.publishEnvelope(topic, { ...good, occurredAt: 'yesterday' }),
        (err: unknown) => err instanceof InvalidArgumentError && /occurredAt/.test(err.message),
      );
      await assert.rejects(
        bus.publishEnvelope(topic, { ...good, aggregateId: '' }),
        (err: unknown) => err instanceof InvalidArgumentError && /aggregateId/.test(err.message),
      );
      await assert.rejects(
        bus.publishEnvelope(topic, { ...good, extra: 1 } as Envelope),
        (err: unknown) => err instanceof InvalidArgumentError && /extra/.test(err.message),
      );
    });
  });

  it('delivers valid envelopes in aggregate order and dead-letters invalid ones without calling the handler', async () => {
    await withBus(async (bus, broker) => {
      const topic = name('t');
      const dlq = await collect(broker, `${topic}.DLQ`);
      const received: Envelope<{ n: number }>[] = [];
      await bus.subscribeEnvelope<{ n: number }>(
        topic,
        async (env, ctx) => {
          assert.equal(ctx.message.key, env.aggregateId);
          if (Math.random() < 0.5) await new Promise((r) => setImmediate(r));
          received.push(env);
        },
        { concurrency: 4, maxAttempts: 5 },
      );
      const sent: Envelope<{ n: number }>[] = [];
      for (let n = 0; n < 30; n++) {
        const env = createEnvelope({
          aggregateId: `agg-${n % 3}`,
          eventType: 'Counted',
          payload: { n },
          correlationId: 'c-1',
        });
        sent.push(env);
        await bus.publishEnvelope(topic, env);
      }
      // Invalid on receive: a publisher that bypassed validation, and a body that is not JSON.
      await bus.publish(topic, { ...sent[0], eventVersion: -1 }, { key: 'agg-bad' });
      await bus.publish(topic, 'not json {', { key: 'agg-bad' });
      await eventually(() => received.length === 30 && dlq.messages.length === 2, 'envelopes handled');
      for (let agg = 0; agg < 3; agg++) {
        const got = received.filter((e) => e.aggregateId === `agg-${agg}`).map((e) => e.payload.n);
        const want = sent.filter((e) => e.aggregateId === `agg-${agg}`).map((e) => e.payload.n);
        assert.deepEqual(got, want);
      }
      const first = received.find((e) => e.eventId === sent[0]?.eventId);
      assert.deepEqual(first, sent[0]);
      const errors = dlq.messages.map((m) => m.properties[PROP_ERROR] ?? '').sort();
      assert.match(errors[0] ?? '', /InvalidArgumentError: invalid envelope: body is not JSON/);
      assert.match(errors[1] ?? '', /InvalidArgumentError: invalid envelope: field "eventVersion"/);
      assert.ok(
        dlq.messages.every((m) => m.properties[PROP_ATTEMPTS] === '1'),
        'no retries for invalid data',
      );
      await dlq.close();
    });
  });

  it('drain() lets running handlers finish and ack; close() aborts them and releases for redelivery', async () => {
    await withBus(async (bus, broker) => {
      const topic = name('t');
      const group = name('g');

      const release = gate();
      let finished = false;
      let aborted = false;
      await bus.subscribe(
        topic,
        async (_m, { signal }) => {
          await release.promise;
          aborted = signal.aborted;
          finished = true;
        },
        { group },
      );
      await bus.publish(topic, 'drain me');
      await eventually(async () => (await bus.health()).subscriptions[0]?.running === 1, 'handler running');
      let drained = false;
      const draining = bus.drain().then(() => {
        drained = true;
      });
      await assert.rejects(
        bus.subscribe(topic, () => {}),
        ClosedError,
      );
      await new Promise((r) => setImmediate(r));
      assert.equal(drained, false, 'drain waits for the running handler');
      release.open();
      await draining;
      assert.ok(finished);
      assert.equal(aborted, false);
      assert.equal(backlog(broker, topic, group), 0, 'the drained handler acked its message');
      await assert.rejects(bus.publish(topic, 'late'), ClosedError);
      assert.equal(bus.drain(), bus.close(), 'drain and close share one run once stopped');

      // close(): the handler's signal fires and the message goes back for another consumer.
      const bus2 = await createEventBus({ broker });
      let sawAbort = false;
      await bus2.subscribe(
        topic,
        (_m, { signal }) =>
          new Promise<void>((_resolve, reject) => {
            signal.addEventListener('abort', () => {
              sawAbort = true;
              reject(signal.reason);
            });
          }),
        { group },
      );
      await bus2.publish(topic, 'close me');
      await eventually(
        async () => (await bus2.health()).subscriptions[0]?.running === 1,
        'second handler running',
      );
      await bus2.close();
      assert.ok(sawAbort);
      assert.equal(backlog(broker, topic, group), 1, 'the aborted message is still owed to the group');

      const bus3 = await createEventBus({ broker });
      const redelivered: Message[] = [];
      await bus3.subscribe(
        topic,
        (m) => {
          redelivered.push(m);
        },
        { group },
      );
      await eventually(() => redelivered.length === 1, 'redelivery after close');
      assert.equal(bodyText(redelivered[0] as Message), 'close me');
      await eventually(() => backlog(broker, topic, group) === 0, 'redelivered message acked');
      await bus3[Symbol.asyncDispose]();
    });
  });

  it('closes a single subscription without touching the others', async () => {
    await withBus(async (bus) => {
      const t1 = name('t');
      const t2 = name('t');
      const got: string[] = [];
      const s1 = await bus.subscribe(t1, (m) => {
        got.push(bodyText(m));
      });
      await bus.subscribe(t2, (m) => {
        got.push(bodyText(m));
      });
      assert.equal(s1.state, 'running');
      await s1.close();
      assert.equal(s1.state, 'closed');
      await bus.publish(t2, 'still here');
      await eventually(() => got.includes('still here'), 'other subscription keeps working');
      const health = await bus.health();
      assert.equal(health.ok, true);
      assert.equal(health.broker.ok, true);
      assert.deepEqual(
        health.subscriptions.map((s) => [s.topic, s.state]),
        [[t2, 'running']],
      );
    });
  });

  it('owns and closes a broker it opened from a URL', async () => {
    await withLeakCheck(async () => {
      const bus = await createEventBus({ broker: 'memory://' });
      const got: string[] = [];
      const topic = name('t');
      await bus.subscribe(topic, (m) => {
        got.push(bodyText(m));
      });
      await bus.publish(topic, 'owned');
      await eventually(() => got.length === 1, 'delivery');
      const closing = bus.close();
      assert.equal(bus.close(), closing, 'close is idempotent');
      await closing;
      assert.equal((await bus.health()).broker.ok, false, 'the owned broker is closed with the bus');
      assert.equal((await bus.health()).ok, false);
    });
  });

  it('keeps the heap stable over many bus open/publish/subscribe/close cycles', async () => {
    await withLeakCheck(
      async () => {
        const broker = await openBroker('memory://');
        // One topic and group for every cycle: a new topic per cycle would measure the broker's
        // topic table, not the bus.
        const topic = name('heap');
        const group = name('g');
        try {
          await assertHeapStable(
            async (i) => {
              const bus = await createEventBus({ broker });
              let got = 0;
              const sub = await bus.subscribe(
                topic,
                async () => {
                  got++;
                },
                { group },
              );
              for (let n = 0; n < 5; n++) await bus.publish(topic, { n }, { key: `k${(i + n) % 3}` });
              while (got < 5) await new Promise((r) => setImmediate(r));
              await sub.drain();
              await bus.close();
            },
            { warmup: 100, cycles: 300, maxBytesPerCycle: 2048 },
          );
        } finally {
          await broker.close();
        }
      },
      { timeoutMs: 20_000 },
    );
  });
});
