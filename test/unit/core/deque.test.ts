import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Deque } from '../../../src/core/deque.js';

test('deque keeps FIFO order across growth, wrap-around and shrinking', () => {
  const q = new Deque<number>(4);
  const model: number[] = [];
  let next = 0;
  // Grow to a large backlog, drain most of it (shrinks), then interleave pushes and shifts.
  for (let i = 0; i < 5000; i++) {
    q.push(next);
    model.push(next++);
  }
  for (let i = 0; i < 4900; i++) assert.equal(q.shift(), model.shift());
  for (let i = 0; i < 20_000; i++) {
    if (i % 3 === 2) assert.equal(q.shift(), model.shift());
    else {
      q.push(next);
      model.push(next++);
    }
    assert.equal(q.length, model.length);
  }
  assert.equal(q.peek(), model[0]);
  assert.deepEqual([...q], model);
  while (model.length > 0) assert.equal(q.shift(), model.shift());
  assert.equal(q.shift(), undefined);
  assert.equal(q.length, 0);
  q.push(1);
  q.clear();
  assert.equal(q.length, 0);
  assert.equal(q.peek(), undefined);
});
