import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Backoff, BROKER_RETRY, backoffDelay } from '../../../src/core/backoff.js';
import { abortable, withTimeout } from '../../../src/core/lifecycle.js';

test('backoff: ceilings double from the initial wait up to the cap; no jitter gives the ceiling', () => {
  const p = { initialMs: 100, maxMs: 1000, jitter: 'none' as const };
  assert.deepEqual(
    [0, 1, 2, 3, 4, 5, 60].map((a) => backoffDelay(p, a)),
    [100, 200, 400, 800, 1000, 1000, 1000],
  );
  assert.equal(backoffDelay({ ...p, factor: 3 }, 2), 900);
  // A very long outage never overflows into Infinity or NaN.
  assert.equal(backoffDelay(p, 10_000), 1000);
});

test('backoff: full jitter stays in [0, ceiling), equal jitter in [ceiling / 2, ceiling)', () => {
  for (let i = 0; i < 2000; i++) {
    const full = backoffDelay({ initialMs: 100, maxMs: 1000 }, 3);
    assert.ok(full >= 0 && full < 800, `full ${full}`);
    const equal = backoffDelay({ initialMs: 100, maxMs: 1000, jitter: 'equal' }, 3);
    assert.ok(equal >= 400 && equal < 800, `equal ${equal}`);
  }
});

test('backoff: a Backoff counts failures, grows, and starts over after reset()', () => {
  const b = new Backoff({ ...BROKER_RETRY, jitter: 'none' });
  assert.deepEqual([b.next(), b.next(), b.next()], [200, 400, 800]);
  assert.equal(b.failures, 3);
  for (let i = 0; i < 20; i++) b.next();
  assert.equal(b.next(), BROKER_RETRY.maxMs);
  b.reset();
  assert.equal(b.failures, 0);
  assert.equal(b.next(), 200);
});

test('withTimeout: resolves with the promise, or rejects with TIMEOUT naming the work', async () => {
  assert.equal(await withTimeout(Promise.resolve(7), 1000, 'x'), 7);
  await assert.rejects(
    withTimeout(new Promise(() => {}), 20, 'the probe'),
    (err: Error & { code?: string }) => {
      assert.equal(err.code, 'TIMEOUT');
      assert.match(err.message, /the probe did not finish within 20 ms/);
      return true;
    },
  );
});

test('abortable: rejects with ABORTED when the signal fires and leaves no listener behind', async () => {
  const ac = new AbortController();
  const pending = abortable(new Promise(() => {}), ac.signal, 'pulling');
  ac.abort();
  await assert.rejects(pending, (err: Error & { code?: string }) => err.code === 'ABORTED');
  const ok = new AbortController();
  assert.equal(await abortable(Promise.resolve(1), ok.signal, 'x'), 1);
  // Removed on settle: node reports listeners through the event target's internals only, so
  // count through a wrapper signal instead.
  let added = 0;
  let removed = 0;
  const spy = new AbortController().signal;
  const add = spy.addEventListener.bind(spy);
  const remove = spy.removeEventListener.bind(spy);
  spy.addEventListener = ((...a: Parameters<typeof add>) => {
    added++;
    add(...a);
  }) as typeof spy.addEventListener;
  spy.removeEventListener = ((...a: Parameters<typeof remove>) => {
    removed++;
    remove(...a);
  }) as typeof spy.removeEventListener;
  await abortable(Promise.resolve(2), spy, 'x');
  await assert.rejects(abortable(Promise.reject(new Error('no')), spy, 'x'));
  assert.equal(added, 2);
  assert.equal(removed, 2);
  // An already-aborted signal: the abandoned promise's rejection is not left unhandled.
  await assert.rejects(abortable(Promise.reject(new Error('late')), AbortSignal.abort(), 'x'));
});
