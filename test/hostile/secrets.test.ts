/**
 * Credentials written in BROKERS never leave the gateway: not in its logs (stdout), not on
 * stderr, not in /ready, /metrics (JSON and Prometheus), HealthCheck or error statuses, and not
 * when start-up fails because the broker cannot be reached or BROKERS itself is malformed.
 * These forms need no broker (closed ports); the NATS forms with a reachable server are in
 * secrets.nats.test.ts.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { freePort } from '../support/child-gateway.js';
import { assertResourcesSettle, countResources, type ResourceCounts } from '../support/leaks.js';
import { type ServeProcess, spawnServe } from './helpers.js';
import { assertNoAddress, assertNoSecret, networkOutputs, OUTPUT_TOKEN } from './secrets-outputs.js';

describe('broker credentials never appear in any output', () => {
  const running: ServeProcess[] = [];
  let baseline: ResourceCounts;
  before(() => {
    baseline = countResources();
  });
  after(async () => {
    for (const p of running) await p.stop();
  });

  for (const [what, secret, url] of [
    [
      'a NATS token in the user part',
      'SECRETTOKEN1234',
      (port: number) => `nats://SECRETTOKEN1234@127.0.0.1:${port}`,
    ],
    [
      'a NATS user:password',
      'SECRETPASS1234',
      (port: number) => `nats://user:SECRETPASS1234@127.0.0.1:${port}`,
    ],
  ] as const) {
    test(`${what}, broker unreachable: start-up fails and neither stdout nor stderr contains the secret`, async () => {
      const port = await freePort();
      const p = await spawnServe({ BROKERS: url(port), LOG_LEVEL: 'trace', AUTH_TOKENS: OUTPUT_TOKEN });
      running.push(p);
      assert.equal(p.started, false, 'the gateway started without its broker');
      const code = await p.exited;
      assert.notEqual(code, 0);
      assert.match(p.stderr(), /NATS|nats/, `stderr explains the failure: ${p.stderr()}`);
      assertNoSecret({ stdout: p.stdout(), stderr: p.stderr() }, secret);
    });
  }

  test('a RocketMQ accessKey/secretKey, broker unreachable: the gateway starts; logs, /ready, /metrics, HealthCheck and error statuses hold no secret, and unauthenticated outputs no address', async () => {
    const port = await freePort();
    const secret = 'SECRETKEY1234';
    const p = await spawnServe({
      BROKERS: `rocketmq://127.0.0.1:${port}?accessKey=AK&secretKey=${secret}`,
      LOG_LEVEL: 'trace',
      AUTH_TOKENS: OUTPUT_TOKEN,
    });
    running.push(p);
    assert.equal(p.started, true, `the gateway did not start: ${p.stderr()}`);
    const outputs = await networkOutputs(p);
    assert.match(outputs.healthCheckToken ?? '', /"healthy":false/, 'the broker is down');
    assert.match(outputs.createProducer ?? '', /^14 UNAVAILABLE/, outputs.createProducer);
    await p.stop();
    assertNoSecret({ ...outputs, stdout: p.stdout(), stderr: p.stderr() }, secret);
    assertNoAddress(outputs);
  });

  test('a malformed BROKERS value (a typo after the URL, an unknown scheme, a URL that does not parse) stops start-up without printing the password', async () => {
    const leaks: string[] = [];
    for (const brokers of [
      'nats://user:SECRETPASS5678@127.0.0.1:4222 endpoint=a',
      'natss://user:SECRETPASS5678@127.0.0.1:4222',
      'nats://user:SECRETPASS5678@127.0.0.1:99999999',
    ]) {
      const p = await spawnServe({ BROKERS: brokers, LOG_LEVEL: 'trace' });
      running.push(p);
      assert.equal(p.started, false);
      assert.notEqual(await p.exited, 0);
      assert.match(p.stderr(), /BROKERS/, `stderr names the setting: ${p.stderr()}`);
      try {
        assertNoSecret({ stdout: p.stdout(), stderr: p.stderr() }, 'SECRETPASS5678');
      } catch (err) {
        leaks.push(
          `BROKERS=${JSON.stringify(brokers.replace('SECRETPASS5678', '<secret>'))}: ${(err as Error).message.split('\n')[0]}`,
        );
      }
    }
    assert.deepEqual(leaks, [], leaks.join('\n'));
  });

  test('every gateway process and connection of these tests is gone afterwards', async () => {
    for (const p of running) await p.stop();
    await assertResourcesSettle(baseline);
  });
});
