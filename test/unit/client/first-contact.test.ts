/**
 * What a new user meets in the first minutes, each checked as they would meet it: the CLI's
 * answers to typos and empty input, a start-up failure, a gateway that goes away under a
 * consumer, the metrics of an idle gateway, and options that are misspelt.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { after, before, test } from 'node:test';
import { createEventBus } from '../../../src/bus/index.js';
import { MQClient } from '../../../src/client/index.js';
import type { Gateway } from '../../../src/gateway/server.js';
import { startChildGateway } from '../../support/child-gateway.js';
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

function mqgate(args: string[], options: { stdin?: string; env?: Record<string, string> } = {}): Run {
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli.ts', ...args], {
    cwd: ROOT,
    env: { ...process.env, MQGATE_GRPC: grpc, ...options.env },
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
  child.stdin?.end(options.stdin ?? '');
  const exit = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return { child, stdout: () => out, stderr: () => err, exit };
}

test('a misspelt option is reported as unknown, not as a missing required one', async () => {
  const r = mqgate(['publish', '--topc', 'orders', '--body', 'x']);
  assert.notEqual(await within(r.exit, 30_000, 'publish to exit'), 0);
  assert.match(r.stderr(), /unknown option '--topc'/);
  assert.doesNotMatch(r.stderr(), /--topic.*not specified/);
});

test('--version prints the package version', async () => {
  const r = mqgate(['--version']);
  assert.equal(await within(r.exit, 30_000, 'mqgate to exit'), 0);
  assert.match(r.stdout().trim(), /^\d+\.\d+\.\d+/);
});

test('publishing an empty stdin says so on stderr', async () => {
  const r = mqgate(['publish', '--topic', uniq('t')], { stdin: '' });
  assert.equal(await within(r.exit, 30_000, 'publish to exit'), 0, r.stderr());
  assert.match(r.stderr(), /stdin had no lines: nothing was published/);
  assert.equal(r.stdout(), '');
});

test('an unknown broker scheme names the schemes there are, and the URL without its password', async () => {
  const r = mqgate(['serve', '--grpc-port', '0', '--metrics-port', '0'], {
    env: { BROKERS: 'bogus://user:hunter2-secret@x' },
  });
  assert.equal(await within(r.exit, 30_000, 'serve to exit'), 2);
  assert.match(
    r.stderr(),
    /unknown scheme bogus: .*supported: memory:\/\/, kafka:\/\/, rocketmq:\/\/, nats:\/\//,
  );
  assert.doesNotMatch(r.stderr() + r.stdout(), /hunter2/);
});

test('a start-up failure is one line on stderr, and no "stopped" line for a gateway that never started', async () => {
  const port = gateway.grpcPort;
  const r = mqgate(['serve', '--grpc-port', String(port), '--metrics-port', '0']);
  assert.equal(await within(r.exit, 30_000, 'serve to exit'), 1);
  const lines = r.stderr().trim().split('\n');
  assert.equal(lines.length, 1, `stderr: ${r.stderr()}`);
  assert.match(lines[0] ?? '', /^mqgate: cannot listen on gRPC 127\.0\.0\.1:\d+: .*EADDRINUSE/);
  assert.doesNotMatch(r.stdout(), /gateway stopped/);
  assert.doesNotMatch(r.stdout(), /"level":60/);
});

test('an unreachable gateway is named without grpc-js noise', async () => {
  const port = await freePort();
  const r = mqgate(['publish', '--topic', 't', '--body', 'x', '--grpc', `127.0.0.1:${port}`], {
    env: { MQGATE_GRPC: '' },
  });
  assert.notEqual(await within(r.exit, 60_000, 'publish to exit'), 0);
  assert.match(r.stderr(), /cannot reach the mqgate gateway at 127\.0\.0\.1:\d+/);
  assert.doesNotMatch(r.stderr(), /Resolution note/);
});

test('the CLI consumer reports the gateway going away and coming back, and gets what was published meanwhile', async () => {
  const gw = await startChildGateway({ BROKERS: 'memory://' });
  let second: Awaited<ReturnType<typeof startChildGateway>> | undefined;
  const topic = uniq('t');
  const consume = mqgate(['consume', '--topic', topic, '--group', uniq('g')], {
    env: { MQGATE_GRPC: `127.0.0.1:${gw.grpcPort}` },
  });
  try {
    await eventually(() => consume.stderr().includes('consuming topic'), 'consume to subscribe', 30_000);
    gw.kill('SIGKILL');
    await gw.exited;
    await eventually(() => /disconnected/.test(consume.stderr()), 'the disconnect to be reported', 30_000);
    second = await startChildGateway({
      BROKERS: 'memory://',
      GRPC_PORT: String(gw.grpcPort),
    });
    // Published while the consumer has no session on the new gateway yet.
    const pub = mqgate(['publish', '--topic', topic, '--body', 'during the gap'], {
      env: { MQGATE_GRPC: `127.0.0.1:${gw.grpcPort}` },
    });
    assert.equal(await within(pub.exit, 30_000, 'publish to exit'), 0, pub.stderr());
    await eventually(() => consume.stdout().includes('during the gap'), 'the message from the gap', 30_000);
    assert.match(consume.stderr(), /reconnected with a new consumer session/);
  } finally {
    consume.child.kill('SIGKILL');
    second?.kill('SIGKILL');
    gw.kill('SIGKILL');
  }
});

test('an idle gateway reports an event-loop delay near zero, not its sampling interval', async () => {
  await new Promise((r) => setTimeout(r, 1500));
  const d = gateway.metrics.json().event_loop_delay_ms as { p50: number };
  assert.ok(d.p50 < 5, `p50 ${d.p50} ms`);
  assert.ok(Number.isInteger((gateway.metrics.json().avg_response_time_ms as number) * 1000));
});

test('misspelt options of the event bus and the SDK are refused by name', async () => {
  const bus = await createEventBus({ broker: 'memory://' });
  try {
    await assert.rejects(
      bus.subscribe('orders', () => {}, { grop: 'billing' } as never),
      /unknown option "grop" for subscribe; the options are: group,/,
    );
    await assert.rejects(
      bus.publish('orders', {}, { keey: 'k' } as never),
      /unknown option "keey" for publish/,
    );
  } finally {
    await bus.close();
  }
  await assert.rejects(
    createEventBus({ broker: 'memory://', onErorr: () => {} } as never),
    /unknown option "onErorr" for createEventBus/,
  );
  assert.throws(
    () => new MQClient({ grpcEndpont: grpc } as never),
    /unknown option "grpcEndpont" for MQClient/,
  );
  const client = new MQClient({ grpcEndpoint: grpc });
  try {
    await assert.rejects(
      client.getConsumer('', 't', 'g', '*', { prefech: 3 } as never),
      /unknown option "prefech" for getConsumer/,
    );
  } finally {
    await client.close();
  }
});

test('a stream the client ends is counted in the RPC metrics with its final status', async () => {
  const client = new MQClient({ grpcEndpoint: grpc });
  const consumer = await client.getConsumer('', uniq('t'), uniq('g'));
  const it = consumer[Symbol.asyncIterator]();
  void it.next().catch(() => {});
  await eventually(() => gateway.metrics.json().active_streams === 1, 'the stream');
  await client.close();
  const text = await gateway.metrics.registry.metrics();
  assert.match(text, /mqgate_rpc_requests_total\{method="Subscribe",code="(OK|CANCELLED)"\} [1-9]/);
});
