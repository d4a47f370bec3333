import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { after, before, test } from 'node:test';
import type { Gateway } from '../../../src/gateway/server.js';
import { eventually } from '../../support/leaks.js';
import { freePort, ROOT, startTestGateway, uniq, within } from './helpers.js';

let gateway: Gateway;
let grpc: string;

before(async () => {
  gateway = await startTestGateway();
  grpc = `127.0.0.1:${gateway.grpcPort}`;
});

after(async () => {
  await gateway.close();
});

interface Run {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  exit: Promise<number | null>;
}

function mqgate(args: string[], stdin?: string): Run {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli.ts', ...args], {
    cwd: ROOT,
    env: { ...process.env, MQGATE_GRPC: grpc },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout?.setEncoding('utf8').on('data', (c: string) => {
    out += c;
  });
  child.stderr?.setEncoding('utf8').on('data', (c: string) => {
    err += c;
  });
  if (stdin !== undefined) child.stdin?.end(stdin);
  else child.stdin?.end();
  const exit = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return { child, stdout: () => out, stderr: () => err, exit };
}

test('publish from stdin, then consume --count prints and acks them', async () => {
  const topic = uniq('t');
  const group = uniq('g');
  // The group must exist before the messages are sent: a new group starts at the latest message.
  const consume = mqgate(['consume', '--topic', topic, '--group', group, '--count', '3', '--json']);
  try {
    await eventually(() => consume.stderr().includes('consuming topic'), 'consume to subscribe', 30_000);
    const publish = mqgate(
      ['publish', '--topic', topic, '--tag', 'cli', '--key', 'k1'],
      'first\nsecond\n\nthird\n',
    );
    assert.equal(await within(publish.exit, 30_000, 'publish to exit'), 0, publish.stderr());
    const ids = publish.stdout().trim().split('\n');
    assert.equal(ids.length, 3);
    assert.equal(await within(consume.exit, 30_000, 'consume to exit'), 0, consume.stderr());
    const lines = consume
      .stdout()
      .trim()
      .split('\n')
      .map(
        (l) =>
          JSON.parse(l) as {
            messageId: string;
            body: string;
            tag: string;
            properties: Record<string, string>;
          },
      );
    assert.deepEqual(
      lines.map((l) => l.body),
      ['first', 'second', 'third'],
    );
    assert.deepEqual(
      lines.map((l) => l.messageId),
      ids,
    );
    assert.equal(lines[0]?.tag, 'cli');
    assert.equal(lines[0]?.properties.KEYS, 'k1');
    await eventually(() => gateway.metrics.json().active_consumers === 0, 'the CLI consumer to clean up');
  } finally {
    consume.child.kill('SIGKILL');
  }
});

test('consume stops cleanly on SIGTERM; publish --body --delay works', async () => {
  const topic = uniq('t');
  const consume = mqgate(['consume', '--topic', topic, '--group', uniq('g')]);
  try {
    await eventually(() => consume.stderr().includes('consuming topic'), 'consume to subscribe', 30_000);
    const publish = mqgate(['publish', '--topic', topic, '--body', 'later', '--delay', '1s']);
    assert.equal(await within(publish.exit, 30_000, 'publish to exit'), 0, publish.stderr());
    await eventually(() => consume.stdout() === 'later\n', 'the delayed message', 15_000);
    consume.child.kill('SIGTERM');
    assert.equal(await within(consume.exit, 15_000, 'consume to exit after SIGTERM'), 0, consume.stderr());
    await eventually(() => gateway.metrics.json().active_consumers === 0, 'the session release');
  } finally {
    consume.child.kill('SIGKILL');
  }
});

test('health: exit 0 against a gateway, 1 when none answers', async () => {
  const ok = mqgate(['health']);
  assert.equal(await within(ok.exit, 30_000, 'health to exit'), 0);
  assert.match(ok.stdout(), /^healthy: OK/);
  const port = await freePort();
  const bad = mqgate(['health', '--grpc', `127.0.0.1:${port}`, '--timeout', '3s']);
  assert.equal(await within(bad.exit, 30_000, 'health to exit'), 1);
  assert.match(bad.stdout(), /^unreachable: .*cannot reach the mqgate gateway/);
});
