import assert from 'node:assert/strict';
import { test } from 'node:test';
import { KeyedHold } from '../../../../src/brokers/delivery/keyed.js';
import { Scheduler } from '../../../../src/core/scheduler.js';
import { eventually } from '../../../support/leaks.js';

test('keyed hold: one head per key; later messages wait in order and follow as each head settles', () => {
  const scheduler = new Scheduler();
  const hold = new KeyedHold<string>(scheduler);
  assert.equal(hold.admit('a', 'a1'), true);
  assert.equal(hold.admit('b', 'b1'), true);
  assert.equal(hold.admit('a', 'a2'), false);
  assert.equal(hold.admit('a', 'a3'), false);
  assert.equal(hold.held, 2);
  assert.equal(hold.head('a'), 'a1');
  assert.equal(hold.advance('a'), 'a2');
  assert.equal(hold.head('a'), 'a2');
  assert.equal(hold.advance('a'), 'a3');
  assert.equal(hold.advance('a'), undefined);
  assert.equal(hold.has('a'), false);
  assert.equal(hold.admit('a', 'a4'), true, 'a free key takes its next message as head at once');
  assert.equal(hold.held, 0);
  assert.equal(hold.keys, 2);
  scheduler.close();
});

test('keyed hold: a nacked head keeps its key until the broker redelivers it, and goes first then', () => {
  // The FIFO case found against the real RocketMQ proxy: the group's next message, already
  // received, must not overtake the retried head.
  const scheduler = new Scheduler();
  const hold = new KeyedHold<string>(scheduler);
  hold.admit('k', 'm1');
  hold.admit('k', 'm2');
  const handedOut: string[] = [];
  hold.awaitRedelivery('k', 101, 60_000, (next) => handedOut.push(next));
  assert.equal(hold.head('k'), undefined);
  assert.equal(hold.has('k'), true);
  // A message of the key that is not the awaited one waits, even though no head is out.
  assert.equal(hold.claim('k', 102, 'm3'), false);
  assert.equal(hold.admit('k', 'm3'), false);
  // The redelivery of the head (same identity, a new handle) becomes the head.
  assert.equal(hold.claim('k', 101, 'm1-again'), true);
  assert.equal(hold.head('k'), 'm1-again');
  assert.equal(hold.claim('k', 101, 'm1-third'), false, 'claimed once');
  assert.equal(hold.advance('k'), 'm2');
  assert.equal(hold.advance('k'), 'm3');
  assert.deepEqual(handedOut, []);
  scheduler.close();
});

test('keyed hold: when the redelivery goes to another consumer, the key moves on at the deadline', async () => {
  const scheduler = new Scheduler();
  const hold = new KeyedHold<string>(scheduler);
  hold.admit('k', 'm1');
  hold.admit('k', 'm2');
  const handedOut: string[] = [];
  hold.awaitRedelivery('k', 1, 30, (next) => handedOut.push(next));
  await eventually(() => handedOut.length === 1, 'the deadline');
  assert.deepEqual(handedOut, ['m2']);
  assert.equal(hold.head('k'), 'm2');
  assert.equal(hold.claim('k', 1, 'late'), false, 'a redelivery after the deadline is a new message');
  assert.equal(hold.advance('k'), undefined);
  assert.equal(hold.has('k'), false);

  // With nothing waiting, the deadline frees the key and hands out nothing.
  hold.admit('j', 'j1');
  hold.awaitRedelivery('j', 2, 20, (next) => handedOut.push(next));
  await eventually(() => !hold.has('j'), 'the key to be freed');
  assert.deepEqual(handedOut, ['m2']);
  scheduler.close();
});

test('keyed hold: settling the key another way cancels the wait; drain returns waiting items only', async () => {
  const scheduler = new Scheduler();
  const hold = new KeyedHold<string>(scheduler);
  hold.admit('k', 'm1');
  hold.admit('k', 'm2');
  const handedOut: string[] = [];
  const handOut = (next: string): void => {
    handedOut.push(next);
  };
  hold.awaitRedelivery('k', 1, 20, handOut);
  assert.equal(hold.advance('k'), 'm2');
  // The cancelled deadline must not advance the key a second time.
  await new Promise((r) => setTimeout(r, 60));
  assert.deepEqual(handedOut, []);
  assert.equal(hold.head('k'), 'm2');

  hold.admit('k', 'm3');
  hold.admit('x', 'x1');
  hold.admit('x', 'x2');
  hold.awaitRedelivery('x', 9, 20, handOut);
  assert.deepEqual(hold.drain().sort(), ['m3', 'x2']);
  assert.equal(hold.keys, 0);
  assert.equal(hold.held, 0);
  await new Promise((r) => setTimeout(r, 60));
  assert.deepEqual(handedOut, [], 'drain cancels every redelivery deadline');
  scheduler.close();
});
