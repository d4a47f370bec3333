/**
 * What a user gets from the package, checked as a user meets it: `require` from a CommonJS
 * project, `npm start` under a supervisor that signals npm, the files that ship. Needs the built
 * dist/ (CI builds before testing; so does `npm ci`).
 */
import assert from 'node:assert/strict';
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { eventually } from '../support/leaks.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));

function requireBuilt(): void {
  assert.ok(existsSync(join(ROOT, 'dist', 'cli.js')), 'dist/ is missing: run npm run build first');
}

test('the built CLI is executable, so `npx mqgate` runs from a clone after npm ci', () => {
  requireBuilt();
  // npm sets the mode of an installed package's bin, but not of the project's own: the build does.
  assert.ok((statSync(join(ROOT, 'dist', 'cli.js')).mode & 0o111) !== 0, 'dist/cli.js is not executable');
  const out = execFileSync('npx', ['mqgate', '--version'], { cwd: ROOT, encoding: 'utf8' });
  assert.match(out, /\d+\.\d+\.\d+/);
});

test("require('mqgate') and require('mqgate/client') work from a CommonJS project", () => {
  requireBuilt();
  const dir = mkdtempSync(join(tmpdir(), 'mqgate-cjs-'));
  try {
    execFileSync('mkdir', ['-p', join(dir, 'node_modules')]);
    symlinkSync(ROOT, join(dir, 'node_modules', 'mqgate'));
    writeFileSync(join(dir, 'package.json'), '{ "name": "cjs-user", "private": true }\n');
    writeFileSync(
      join(dir, 'index.cjs'),
      [
        "const { createEventBus, openBroker, uuidv7 } = require('mqgate');",
        "const { MQClient } = require('mqgate/client');",
        'console.log([typeof createEventBus, typeof openBroker, typeof uuidv7(), typeof MQClient].join(" "));',
      ].join('\n'),
    );
    const out = execFileSync(process.execPath, ['index.cjs'], { cwd: dir, encoding: 'utf8' });
    assert.equal(out.trim(), 'function function string function');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

/** Starts `npm start` on free ports; resolves with npm and the gRPC port it listens on. */
async function npmStart(): Promise<{ npm: ChildProcess; port: number; exited: Promise<number | null> }> {
  const npm = spawn('npm', ['start'], {
    cwd: ROOT,
    env: { ...process.env, GRPC_PORT: '0', METRICS_PORT: '0', LOG_LEVEL: 'info' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const exited = new Promise<number | null>((resolve) => npm.once('exit', (code) => resolve(code)));
  let out = '';
  npm.stdout?.setEncoding('utf8').on('data', (c: string) => {
    out += c;
  });
  await eventually(() => /"msg":"mqgate gateway listening"/.test(out), 'npm start to listen', 30_000);
  const m = /"grpc":"127\.0\.0\.1:(\d+)"/.exec(out);
  assert.ok(m, `no gRPC address in ${out}`);
  return { npm, port: Number(m[1]), exited };
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  test(`npm start: ${signal} to npm's pid stops the gateway, nothing is left listening`, async () => {
    requireBuilt();
    const { npm, port, exited } = await npmStart();
    try {
      assert.equal(await accepts(port), true);
      const t0 = Date.now();
      npm.kill(signal);
      const code = await Promise.race([
        exited,
        new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), 10_000)),
      ]);
      assert.notEqual(code, 'timeout', `npm did not exit within 10 s of ${signal}`);
      assert.ok(Date.now() - t0 < 10_000);
      // The gateway was npm's child: it must be gone too, not left running as an orphan.
      await eventually(async () => !(await accepts(port)), 'the gateway to stop listening', 5_000);
    } finally {
      if (npm.exitCode === null) npm.kill('SIGKILL');
    }
  });
}

test('the package ships its LICENSE, the proto, and source maps that carry their sources', () => {
  requireBuilt();
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as {
    license: string;
    files: string[];
  };
  assert.equal(pkg.license, 'Apache-2.0');
  assert.match(readFileSync(join(ROOT, 'LICENSE'), 'utf8'), /Apache License\s+Version 2\.0/);
  assert.ok(pkg.files.includes('LICENSE') && pkg.files.includes('proto') && pkg.files.includes('dist'));
  const map = JSON.parse(readFileSync(join(ROOT, 'dist', 'index.js.map'), 'utf8')) as {
    sources: string[];
    sourcesContent?: string[];
  };
  // src/ does not ship: a map is useful only if it carries the sources it points at.
  assert.equal(map.sourcesContent?.length, map.sources.length);
  assert.ok(map.sourcesContent?.every((s) => s.length > 0));
});
