import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { describeSettings } from '../../../src/gateway/config.js';

test("the README's configuration table is the settings table, row for row", () => {
  const readme = readFileSync(new URL('../../../README.md', import.meta.url), 'utf8');
  const start = readme.indexOf('| variable | flag | default | meaning |');
  assert.ok(start >= 0, 'the README has a configuration table');
  const end = readme.indexOf('\n\n', start);
  assert.equal(
    readme.slice(start, end),
    describeSettings('markdown'),
    'regenerate the table from src/gateway/config.ts (describeSettings("markdown"))',
  );
});
