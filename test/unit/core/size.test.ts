import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseSize } from '../../../src/core/size.js';

test('sizes: decimal units are powers of 1000, binary units powers of 1024, case and spaces ignored', () => {
  const cases: [string, number][] = [
    ['0', 0],
    ['512', 512],
    ['512B', 512],
    ['4KB', 4_000],
    ['4KiB', 4_096],
    ['4MB', 4_000_000],
    ['4MiB', 4 * 1024 ** 2],
    ['4 mib', 4 * 1024 ** 2],
    ['1GB', 1e9],
    ['1GiB', 1024 ** 3],
  ];
  for (const [text, bytes] of cases) assert.equal(parseSize(text), bytes, text);
});

test('sizes: anything else is not a size', () => {
  for (const text of ['', 'lots', '-1', '1.5MiB', '4TB', 'MiB', '4 MiB extra', '99999999999999999999']) {
    assert.equal(parseSize(text), undefined, text);
  }
});
