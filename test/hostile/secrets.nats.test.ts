/**
 * NATS credentials in BROKERS with a server the gateway can reach: the shared NATS (which accepts
 * any token, so the gateway starts with one) and private nats-servers that require a token or a
 * user and password, stopped under the running gateway so every output is examined while the
 * broker is down too.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { natsUrl } from '../support/brokers.js';
import { freePort } from '../support/child-gateway.js';
import { call, metadata, rawClient } from '../support/gateway.js';
import { assertResourcesSettle, countResources, eventually, type ResourceCounts } from '../support/leaks.js';
import { NATS_SERVER_BIN } from '../support/nats-server.js';
import { type ServeProcess, spawnServe } from './helpers.js';
import { assertNoAddress, assertNoSecret, networkOutputs, OUTPUT_TOKEN } from './secrets-outputs.js';

/** A private nats-server with JetStream and the given auth arguments. */
async function privateNats(auth: string[]): Promise<{ port: number; stop(): Promise<void> }> {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'mqgate-hostile-nats-'));
  const child: ChildProcess = spawn(
    NATS_SERVER_BIN,
    ['-js', '-a', '127.0.0.1', '-p', String(port), '-sd', dir, ...auth],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let log = '';
  child.stderr?.setEncoding('utf8').on('data', (d: string) => {
    log += d;
  });
  const closed = new Promise<void>((r) => child.once('close', () => r()));
  const stop = async (): Promise<void> => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    await closed;
    rmSync(dir, { recursive: true, force: true });
  };
  await eventually(() => /Server is ready/.test(log) || child.exitCode !== null, 'nats-server ready', 15_000);
  if (!/Server is ready/.test(log)) {
    await stop();
    throw new Error(`nats-server did not start:\n${log}`);
  }
  return { port, stop };
}

async function healthy(p: ServeProcess): Promise<boolean> {
  const client = rawClient(p.grpcPort);
  try {
    return (await call<{ healthy: boolean }>(client, 'HealthCheck', {}, metadata(OUTPUT_TOKEN))).healthy;
  } finally {
    client.close();
  }
}

describe('NATS credentials never appear in any output, with the broker up or down', () => {
  const cleanups: Array<() => Promise<unknown>> = [];
  let baseline: ResourceCounts;
  before(() => {
    baseline = countResources();
  });
  after(async () => {
    for (const c of cleanups.reverse()) await c().catch(() => {});
  });

  test('a token in the URL of the shared NATS (which accepts any token): the gateway starts; no output holds the token', async () => {
    const secret = 'SECRETTOKEN5678';
    const hostPort = natsUrl().replace(/^nats:\/\//, '');
    const p = await spawnServe({
      BROKERS: `nats://${secret}@${hostPort}`,
      LOG_LEVEL: 'trace',
      AUTH_TOKENS: OUTPUT_TOKEN,
    });
    cleanups.push(() => p.stop());
    assert.equal(p.started, true, `the gateway did not start: ${p.stderr()}`);
    assert.equal(await healthy(p), true);
    const outputs = await networkOutputs(p, `secrets-${randomUUID()}`);
    assert.match(outputs.createProducer ?? '', /^OK /, outputs.createProducer);
    await p.stop();
    assertNoSecret({ ...outputs, stdout: p.stdout(), stderr: p.stderr() }, secret);
    assertNoAddress(outputs);
  });

  for (const [what, secret, auth, url] of [
    [
      'a token',
      'SECRETTOKEN9012',
      ['--auth', 'SECRETTOKEN9012'],
      (port: number) => `nats://SECRETTOKEN9012@127.0.0.1:${port}`,
    ],
    [
      'a user and password',
      'SECRETPASS9012',
      ['--user', 'mqgate', '--pass', 'SECRETPASS9012'],
      (port: number) => `nats://mqgate:SECRETPASS9012@127.0.0.1:${port}`,
    ],
  ] as const) {
    test(`a nats-server requiring ${what}: no output holds it while the server is up, nor after it went down under the gateway`, async () => {
      const nats = await privateNats([...auth]);
      cleanups.push(() => nats.stop());
      const p = await spawnServe({ BROKERS: url(nats.port), LOG_LEVEL: 'trace', AUTH_TOKENS: OUTPUT_TOKEN });
      cleanups.push(() => p.stop());
      assert.equal(p.started, true, `the gateway did not start: ${p.stderr()}`);
      const topic = `secrets-${randomUUID()}`;
      const up = await networkOutputs(p, topic);
      assert.match(up.createProducer ?? '', /^OK /, up.createProducer);
      await nats.stop();
      await eventually(async () => !(await healthy(p)), 'the gateway to see NATS down', 15_000);
      // Let the client's reconnect attempts log a few lines.
      await sleep(1500);
      const down = await networkOutputs(p, topic);
      assert.match(down.healthCheckToken ?? '', /"healthy":false/);
      assert.doesNotMatch(down.createConsumer ?? '', /^OK /, 'subscribing worked with NATS down');
      const code = await p.stop();
      assert.equal(code, 0);
      const prefixed = (o: Record<string, string>, k: string) =>
        Object.fromEntries(Object.entries(o).map(([key, v]) => [`${k}.${key}`, v]));
      assertNoSecret(
        { ...prefixed(up, 'up'), ...prefixed(down, 'down'), stdout: p.stdout(), stderr: p.stderr() },
        secret,
      );
      assertNoAddress(up);
      assertNoAddress(down);
    });
  }

  test('every gateway and nats-server process of these tests is gone afterwards', async () => {
    for (const c of cleanups.splice(0).reverse()) await c().catch(() => {});
    await assertResourcesSettle(baseline);
  });
});
