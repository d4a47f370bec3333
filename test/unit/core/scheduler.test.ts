import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Scheduler } from '../../../src/core/scheduler.js';
import { eventually, withLeakCheck } from '../../support/leaks.js';

test('tasks run in due order from one timer; cancelled ones never run', async () => {
  await withLeakCheck(async () => {
    const s = new Scheduler();
    const ran: number[] = [];
    const now = Date.now();
    s.at(now + 60, () => ran.push(3));
    s.at(now + 20, () => ran.push(1));
    const cancelled = s.at(now + 30, () => ran.push(99));
    s.at(now + 40, () => ran.push(2));
    cancelled.cancel();
    await eventually(() => ran.length === 3, 'all three tasks');
    assert.deepEqual(ran, [1, 2, 3]);
    s.close();
  });
});

test('cancel releases the callback at once (regression: closed subscriptions stayed reachable until their due time)', async () => {
  const s = new Scheduler();
  // Only the scheduled closure references the object. (Closures made in one scope share V8's
  // context, so the object lives in a scope of its own.)
  const make = (): { fn: () => void; ref: WeakRef<object> } => {
    const big = { data: new Uint8Array(1024) };
    return { fn: () => void big.data.length, ref: new WeakRef(big) };
  };
  const schedule = (): { ref: WeakRef<object>; cancel: () => void } => {
    const { fn, ref } = make();
    const task = s.after(3_600_000, fn);
    return { ref, cancel: () => task.cancel() };
  };
  const { ref, cancel } = schedule();
  cancel();
  const gc = (globalThis as { gc?: () => void }).gc;
  assert.ok(gc, 'run with --expose-gc');
  await eventually(async () => {
    gc();
    await new Promise((r) => setImmediate(r));
    return ref.deref() === undefined;
  }, 'the cancelled callback to be collectable');
  s.close();
});

test('close stops the timer; scheduling after close does nothing', async () => {
  await withLeakCheck(async () => {
    const s = new Scheduler();
    let ran = false;
    s.after(10, () => {
      ran = true;
    });
    s.close();
    s.after(1, () => {
      ran = true;
    });
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(ran, false);
  });
});
