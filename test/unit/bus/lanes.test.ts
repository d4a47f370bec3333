import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { hashKey, KeyedLanes } from '../../../src/bus/lanes.js';
import { ClosedError, MqError } from '../../../src/core/errors.js';
import { assertHeapStable, eventually, withLeakCheck } from '../../support/leaks.js';

const unhandled: unknown[] = [];
const onUnhandled = (reason: unknown): void => {
  unhandled.push(reason);
};
before(() => process.on('unhandledRejection', onUnhandled));
after(() => {
  process.off('unhandledRejection', onUnhandled);
  assert.deepEqual(unhandled, [], 'no task failure may surface as an unhandled rejection');
});

/** A promise plus its resolver, for handlers that block until the test lets them go. */
function gate(): { promise: Promise<void>; open: () => void } {
  let open = (): void => {};
  const promise = new Promise<void>((resolve) => {
    open = resolve;
  });
  return { promise, open };
}

/** Lets queued microtasks and immediates run, so a promise that could settle has settled. */
async function settle(rounds = 5): Promise<void> {
  for (let i = 0; i < rounds; i++) await new Promise((r) => setImmediate(r));
}

function isPending(p: Promise<unknown>): { pending: () => boolean } {
  let pending = true;
  p.then(
    () => {
      pending = false;
    },
    () => {
      pending = false;
    },
  );
  return { pending: () => pending };
}

describe('KeyedLanes', () => {
  it('keeps per-key order with 100 keys x 200 tasks, random delays and concurrent submitters', async () => {
    await withLeakCheck(async () => {
      const lanes = new KeyedLanes({ lanes: 8, queueSize: 4 });
      const keys = 100;
      const perKey = 200;
      const seen = new Map<string, number[]>();
      let running = 0;
      let maxRunning = 0;
      const handler = async (key: string, seq: number): Promise<void> => {
        running++;
        maxRunning = Math.max(maxRunning, running);
        const r = Math.random();
        if (r < 0.02) await new Promise((res) => setTimeout(res, 1));
        else if (r < 0.2) await new Promise((res) => setImmediate(res));
        else for (let i = Math.floor(r * 5); i > 0; i--) await Promise.resolve();
        let list = seen.get(key);
        if (!list) {
          list = [];
          seen.set(key, list);
        }
        list.push(seq);
        running--;
      };
      // One submitter per key, all running at once, so submits for different keys interleave
      // and most of them have to wait for room (queueSize 4 per lane).
      await Promise.all(
        Array.from({ length: keys }, async (_, k) => {
          const key = `key-${k}`;
          for (let seq = 0; seq < perKey; seq++) await lanes.submit(() => handler(key, seq), { key });
        }),
      );
      await lanes.close();
      assert.equal(seen.size, keys);
      for (const [key, list] of seen) {
        assert.equal(list.length, perKey, `${key} ran ${list.length} tasks`);
        for (let i = 0; i < list.length; i++) assert.equal(list[i], i, `${key} ran out of order at ${i}`);
      }
      assert.ok(maxRunning > 1, `different keys must run concurrently (max running ${maxRunning})`);
      assert.ok(maxRunning <= 8, `never more than one task per lane (max running ${maxRunning})`);
      const s = lanes.stats();
      assert.equal(s.done, keys * perKey);
      assert.equal(s.failed, 0);
      assert.equal(s.queued, 0);
      assert.equal(s.running, 0);
    });
  });

  it('keeps submit order for one key when many submits wait for room at once', async () => {
    await withLeakCheck(async () => {
      const lanes = new KeyedLanes({ lanes: 2, queueSize: 2 });
      const ran: number[] = [];
      const submits: Array<Promise<unknown>> = [];
      // Not awaited: 200 submits pile up in the lane's wait list and must enter in call order.
      for (let i = 0; i < 200; i++) {
        submits.push(
          lanes.submit(
            async () => {
              await new Promise((r) => setImmediate(r));
              ran.push(i);
            },
            { key: 'same' },
          ),
        );
      }
      assert.ok(lanes.stats().waiting > 100);
      await Promise.all(submits);
      await lanes.close();
      assert.deepEqual(
        ran,
        Array.from({ length: 200 }, (_, i) => i),
      );
    });
  });

  it('maps a key to the same lane every time', async () => {
    const a = new KeyedLanes({ lanes: 16, queueSize: 1 });
    const b = new KeyedLanes({ lanes: 16, queueSize: 1 });
    for (let i = 0; i < 1000; i++) assert.equal(a.laneOf(`k${i}`), b.laneOf(`k${i}`));
    // Pinned values: the hash must stay stable across releases, or a rolling upgrade reorders keys.
    assert.equal(hashKey(''), 0x811c9dc5);
    assert.equal(hashKey('a'), 0xe40c292c);
    await Promise.all([a.close(), b.close()]);
  });

  it('makes submit wait when the lane is full and resumes when room frees (backpressure)', async () => {
    await withLeakCheck(async () => {
      const lanes = new KeyedLanes({ lanes: 1, queueSize: 2 });
      const g = gate();
      const order: number[] = [];
      const task = (n: number) => async () => {
        if (n === 0) await g.promise;
        order.push(n);
      };
      await lanes.submit(task(0), { key: 'k' });
      await eventually(() => lanes.stats().running === 1, 'first task running');
      await lanes.submit(task(1), { key: 'k' });
      await lanes.submit(task(2), { key: 'k' });
      const third = isPending(lanes.submit(task(3), { key: 'k' }));
      const fourth = isPending(lanes.submit(task(4)));
      await settle();
      assert.ok(third.pending(), 'submit must wait while the queue is full');
      assert.ok(fourth.pending(), 'a keyless submit must also wait when every lane is full');
      assert.equal(lanes.stats().waiting, 2);
      assert.equal(lanes.stats().queued, 2);
      g.open();
      await eventually(() => !third.pending() && !fourth.pending(), 'waiting submits admitted');
      await lanes.close();
      assert.deepEqual(order, [0, 1, 2, 3, 4]);
      assert.equal(lanes.stats().waiting, 0);
    });
  });

  it('rejects a waiting submit with ABORTED when its signal fires, and never runs it', async () => {
    await withLeakCheck(async () => {
      const lanes = new KeyedLanes({ lanes: 1, queueSize: 1 });
      const g = gate();
      let ranAborted = false;
      await lanes.submit(() => g.promise, { key: 'k' });
      await lanes.submit(() => {}, { key: 'k' });
      const ac = new AbortController();
      const waiting = lanes.submit(
        () => {
          ranAborted = true;
        },
        { key: 'k', signal: ac.signal },
      );
      await settle();
      assert.equal(lanes.stats().waiting, 1);
      ac.abort();
      await assert.rejects(waiting, (err: unknown) => err instanceof MqError && err.code === 'ABORTED');
      assert.equal(lanes.stats().waiting, 0);
      // An already aborted signal fails fast.
      await assert.rejects(
        lanes.submit(() => {}, { signal: AbortSignal.abort() }),
        (err: unknown) => err instanceof MqError && err.code === 'ABORTED',
      );
      g.open();
      await lanes.close();
      assert.equal(ranAborted, false);
      assert.equal(lanes.stats().done, 2);
    });
  });

  it('keeps a lane running after handlers throw or reject, reporting each error', async () => {
    await withLeakCheck(async () => {
      const errors: Array<{ error: unknown; key: string | undefined }> = [];
      const lanes = new KeyedLanes({
        lanes: 1,
        queueSize: 10,
        onError: (error, info) => {
          errors.push({ error, key: info.key });
          throw new Error('a broken error hook must not stop the lane either');
        },
      });
      const ran: string[] = [];
      const syncThrow = await lanes.submit(
        () => {
          throw new Error('sync boom');
        },
        { key: 'k' },
      );
      const asyncReject = await lanes.submit(
        async () => {
          await Promise.resolve();
          throw new Error('async boom');
        },
        { key: 'k' },
      );
      // Nobody reads this one's result: it must not become an unhandled rejection.
      await lanes.submit(() => Promise.reject(new Error('ignored boom')), { key: 'k' });
      const ok = await lanes.submit(
        () => {
          ran.push('after');
          return 42;
        },
        { key: 'k' },
      );
      await assert.rejects(syncThrow.result, /sync boom/);
      await assert.rejects(asyncReject.result, /async boom/);
      assert.equal(await ok.result, 42);
      await lanes.close();
      assert.deepEqual(ran, ['after']);
      assert.deepEqual(
        errors.map((e) => (e.error as Error).message),
        ['sync boom', 'async boom', 'ignored boom'],
      );
      assert.ok(errors.every((e) => e.key === 'k'));
      const s = lanes.stats();
      assert.equal(s.failed, 3);
      assert.equal(s.done, 1);
    });
  });

  it('drains queued work on close() and rejects submits afterwards', async () => {
    await withLeakCheck(async () => {
      const lanes = new KeyedLanes({ lanes: 2, queueSize: 50 });
      let count = 0;
      for (let i = 0; i < 60; i++) {
        await lanes.submit(
          async () => {
            await new Promise((r) => setImmediate(r));
            count++;
          },
          { key: `k${i % 3}` },
        );
      }
      const closing = lanes.close();
      assert.equal(lanes.close(), closing, 'close is idempotent and returns the same promise');
      await assert.rejects(
        lanes.submit(() => {}),
        ClosedError,
      );
      await closing;
      assert.equal(count, 60, 'every queued task ran before close resolved');
      assert.equal(lanes.stats().done, 60);
      await assert.rejects(
        lanes.submit(() => {}, { key: 'k0' }),
        ClosedError,
      );
    });
  });

  it('close({ abort: true }) aborts handlers, rejects queued and waiting tasks, and waits for every lane loop (a dispatcher must not outlive close)', async () => {
    await withLeakCheck(async () => {
      const lanes = new KeyedLanes({ lanes: 1, queueSize: 1 });
      const handlerGate = gate();
      let sawAbort = false;
      let handlerReturned = false;
      await lanes.submit(
        async (signal) => {
          await new Promise<void>((resolve) => signal.addEventListener('abort', () => resolve()));
          sawAbort = true;
          // Keep running after the abort: close must still wait for this handler to return.
          await handlerGate.promise;
          handlerReturned = true;
        },
        { key: 'k' },
      );
      await eventually(() => lanes.stats().running === 1, 'handler running');
      let queuedRan = false;
      const queued = await lanes.submit(
        () => {
          queuedRan = true;
        },
        { key: 'k' },
      );
      const waiting = lanes.submit(() => {}, { key: 'k' });
      waiting.catch(() => {});
      const closing = lanes.close({ abort: true });
      const closeState = isPending(closing);
      await assert.rejects(waiting, ClosedError);
      await assert.rejects(queued.result, ClosedError);
      await eventually(() => sawAbort, 'running handler sees its signal abort');
      await settle();
      assert.ok(closeState.pending(), 'close must not resolve while a handler is still running');
      handlerGate.open();
      await closing;
      assert.ok(handlerReturned);
      assert.equal(queuedRan, false);
      const s = lanes.stats();
      assert.equal(s.cancelled, 1);
      assert.equal(s.running, 0);
      assert.equal(s.queued, 0);
    });
  });

  it('escalates a draining close to an abort', async () => {
    await withLeakCheck(async () => {
      const lanes = new KeyedLanes({ lanes: 1, queueSize: 5 });
      let aborted = false;
      await lanes.submit(
        (signal) =>
          new Promise<void>((resolve) =>
            signal.addEventListener('abort', () => {
              aborted = true;
              resolve();
            }),
          ),
      );
      const draining = lanes.close();
      const drainState = isPending(draining);
      await settle();
      assert.ok(drainState.pending(), 'a drain waits for the running handler');
      const aborting = lanes.close({ abort: true });
      assert.equal(aborting, draining);
      await aborting;
      assert.ok(aborted);
    });
  });

  it('sends keyless work to the least loaded lane', async () => {
    await withLeakCheck(async () => {
      const lanes = new KeyedLanes({ lanes: 4, queueSize: 8 });
      const g = gate();
      const busy = await lanes.submit(() => g.promise, { key: 'hot' });
      await lanes.submit(() => g.promise, { key: 'hot' });
      const picked = new Set<number>();
      for (let i = 0; i < 3; i++) {
        const t = await lanes.submit(() => g.promise);
        picked.add(t.lane);
      }
      assert.ok(!picked.has(busy.lane), 'keyless work must avoid the loaded lane');
      assert.equal(picked.size, 3, 'idle lanes share keyless work');
      g.open();
      await lanes.close();
      assert.equal(lanes.stats().done, 5);
    });
  });

  it('reports queued, running, done and failed counters', async () => {
    await withLeakCheck(async () => {
      const lanes = new KeyedLanes({ lanes: 2, queueSize: 4 });
      const g = gate();
      await lanes.submit(() => g.promise, { key: 'a' });
      await lanes.submit(() => g.promise, { key: 'a' });
      await lanes.submit(() => Promise.reject(new Error('x')), { key: 'a' });
      await eventually(() => lanes.stats().running === 1, 'one running');
      assert.deepEqual(lanes.stats(), {
        queued: 2,
        running: 1,
        done: 0,
        failed: 0,
        cancelled: 0,
        waiting: 0,
        lanes: 2,
      });
      g.open();
      await lanes.close();
      assert.deepEqual(lanes.stats(), {
        queued: 0,
        running: 0,
        done: 2,
        failed: 1,
        cancelled: 0,
        waiting: 0,
        lanes: 2,
      });
    });
  });

  it('rejects invalid sizes', () => {
    assert.throws(() => new KeyedLanes({ lanes: 0, queueSize: 1 }), /lanes must be an integer/);
    assert.throws(() => new KeyedLanes({ lanes: 1, queueSize: 0 }), /queueSize must be an integer/);
  });

  it('keeps the heap stable over many open/submit/close cycles', async () => {
    await withLeakCheck(async () => {
      await assertHeapStable(
        async (i) => {
          const lanes = new KeyedLanes({ lanes: 4, queueSize: 2 });
          for (let n = 0; n < 20; n++) await lanes.submit(async () => n, { key: `k${(i + n) % 7}` });
          await lanes.close(i % 2 === 0 ? {} : { abort: true });
        },
        { warmup: 500, cycles: 2000, samples: 20, maxBytesPerCycle: 1024 },
      );
    });
  });
});
