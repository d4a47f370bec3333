import assert from 'node:assert/strict';
import { test } from 'node:test';
import { BoundedMap } from '../../../src/core/bounded.js';

test('bounded map: keeps at most capacity keys, forgetting the oldest insertion first', () => {
  const m = new BoundedMap<string, number>(3);
  for (const [i, k] of ['a', 'b', 'c'].entries()) m.set(k, i);
  assert.equal(m.size, 3);
  m.set('d', 3);
  assert.equal(m.has('a'), false, 'the oldest goes first');
  assert.deepEqual(
    ['b', 'c', 'd'].map((k) => m.get(k)),
    [1, 2, 3],
  );
  m.set('e', 4);
  m.set('f', 5);
  assert.deepEqual(
    ['b', 'c', 'd', 'e', 'f'].map((k) => m.has(k)),
    [false, false, true, true, true],
  );
  for (let i = 0; i < 100; i++) m.set(`k${i}`, i);
  assert.equal(m.size, 3);
  assert.deepEqual(
    ['k97', 'k98', 'k99'].map((k) => m.get(k)),
    [97, 98, 99],
  );
});

test('bounded map: delete and clear; after clear it fills and evicts as a new one', () => {
  const m = new BoundedMap<string, number>(2);
  m.set('a', 1);
  assert.equal(m.delete('a'), true);
  assert.equal(m.delete('a'), false);
  m.set('b', 2);
  m.set('c', 3);
  m.clear();
  assert.equal(m.size, 0);
  m.set('x', 1);
  m.set('y', 2);
  m.set('z', 3);
  assert.deepEqual(
    ['x', 'y', 'z'].map((k) => m.has(k)),
    [false, true, true],
  );
});

test('bounded map: an unused map costs no ring (the idle consumer session keeps one of 4,096)', () => {
  const gc = (globalThis as { gc?: () => void }).gc;
  if (!gc) throw new Error('heap checks need --expose-gc (npm test passes it)');
  gc();
  const before = process.memoryUsage().heapUsed;
  const maps = Array.from({ length: 2_000 }, () => new BoundedMap<string, true>(4_096));
  gc();
  const perMap = (process.memoryUsage().heapUsed - before) / maps.length;
  // A preallocated ring of 4,096 slots is 32 KiB; an empty map and an empty array are well under 1 KiB.
  assert.ok(perMap < 1_024, `an unused BoundedMap(4096) costs ${Math.round(perMap)} bytes`);
  assert.equal(maps.length, 2_000);
});
