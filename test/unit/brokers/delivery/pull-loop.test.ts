import assert from 'node:assert/strict';
import { test } from 'node:test';
import { type PullFailure, runPullLoop } from '../../../../src/brokers/delivery/pull-loop.js';
import { Notifier } from '../../../../src/core/lifecycle.js';
import { eventually } from '../../../support/leaks.js';

/** A broker stand-in: `room` is the subscription's free window; each pull fills what it asks. */
function harness(failures: Array<PullFailure | Error | undefined> = []) {
  const state = { room: 0, pulls: [] as number[], failedCalls: 0, warnings: [] as object[] };
  const ac = new AbortController();
  const wake = new Notifier();
  const done = runPullLoop<number>({
    signal: ac.signal,
    wake,
    backoff: { initialMs: 5, maxMs: 20, jitter: 'none' },
    log: {
      debug() {},
      info() {},
      warn: (obj) => state.warnings.push(obj),
      error() {},
    },
    context: { topic: 't' },
    what: 'test pull',
    ready: () => (state.room > 0 ? state.room : undefined),
    pull: async (n) => {
      state.pulls.push(n);
      const next = failures.shift();
      if (next !== undefined)
        throw next instanceof Error ? next : Object.assign(new Error('scripted'), { next });
      state.room -= n;
    },
    failed: (err) => {
      state.failedCalls++;
      const scripted = (err as { next?: PullFailure }).next;
      return scripted ?? 'retry';
    },
  });
  return { state, wake, ac, done };
}

test('pull loop: pulls only what there is room for, and waits for a wake-up without polling', async () => {
  const h = harness();
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(h.state.pulls, [], 'no room, no pull');
  h.state.room = 3;
  h.wake.notifyAll();
  await eventually(() => h.state.pulls.length === 1, 'a pull');
  assert.deepEqual(h.state.pulls, [3]);
  h.state.room = 2;
  h.wake.notifyAll();
  await eventually(() => h.state.pulls.length === 2, 'a second pull');
  assert.deepEqual(h.state.pulls, [3, 2]);
  h.ac.abort();
  assert.equal(await h.done, undefined);
});

test('pull loop: a transient failure backs off, more each time, and a success starts over', async () => {
  const h = harness([new Error('down'), new Error('down'), new Error('down')]);
  h.state.room = 1;
  h.wake.notifyAll();
  await eventually(() => h.state.room === 0, 'the pull that succeeds');
  assert.equal(h.state.pulls.length, 4);
  assert.equal(h.state.failedCalls, 3);
  assert.deepEqual(
    h.state.warnings.map((w) => (w as { retryInMs: number; failures: number }).retryInMs),
    [5, 10, 20],
  );
  assert.deepEqual(
    h.state.warnings.map((w) => (w as { failures: number }).failures),
    [1, 2, 3],
  );
  assert.equal((h.state.warnings[0] as { topic: string; err: string }).topic, 't');
  h.ac.abort();
  await h.done;
});

test('pull loop: "again" pulls at once; a permanent failure ends the loop with its error', async () => {
  const permanent = new Error('no such topic');
  const h = harness(['again', { end: permanent }] as PullFailure[]);
  h.state.room = 1;
  h.wake.notifyAll();
  assert.equal(await h.done, permanent);
  assert.equal(h.state.pulls.length, 2);
  assert.equal(h.state.warnings.length, 0, 'neither is a retry to log');
});

test('pull loop: aborting ends a wait for room, a backoff, or a pull in progress', async () => {
  const waiting = harness();
  await new Promise((r) => setImmediate(r));
  waiting.ac.abort();
  assert.equal(await waiting.done, undefined);

  const backingOff = harness([new Error('down')]);
  backingOff.state.room = 1;
  backingOff.wake.notifyAll();
  await eventually(() => backingOff.state.failedCalls === 1, 'the failure');
  backingOff.ac.abort();
  assert.equal(await backingOff.done, undefined);

  // A pull that fails because of the abort is not a failure to report.
  const ac = new AbortController();
  let failed = 0;
  const done = runPullLoop<number>({
    signal: ac.signal,
    wake: new Notifier(),
    backoff: { initialMs: 5, maxMs: 5 },
    log: undefined,
    context: {},
    what: 'x',
    ready: () => 1,
    pull: (_n, signal) =>
      new Promise((_, reject) => signal.addEventListener('abort', () => reject(new Error('aborted')))),
    failed: () => {
      failed++;
      return 'retry';
    },
  });
  await new Promise((r) => setImmediate(r));
  ac.abort();
  assert.equal(await done, undefined);
  assert.equal(failed, 0);
});
