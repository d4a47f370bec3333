/**
 * The brokers a bench can run against. A broker's row runs only when its adapter exists and the
 * broker answers; otherwise the bench records why it was not measured, never a number.
 */
import { randomUUID } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import type { Broker } from '../../src/brokers/broker.js';
import { openBroker } from '../../src/brokers/index.js';
import { ROOT } from './processes.js';

export type BrokerKind = 'memory' | 'kafka' | 'rocketmq' | 'nats';
export const BROKER_KINDS: readonly BrokerKind[] = ['memory', 'kafka', 'rocketmq', 'nats'];

export interface Target {
  kind: BrokerKind;
  /** BROKERS value for the gateway; the direct path opens the same URL in the bench process. */
  url: string;
  /** A fresh topic name (created where the broker does not create topics on first use). */
  topic(): Promise<string>;
  /** A consumer group name valid on this broker. */
  group(): Promise<string>;
}

/** `--broker x` from the command line; undefined means every broker. */
export function optionValue(name: string): string | undefined {
  const args = process.argv;
  const i = args.indexOf(name);
  if (i >= 0) return args[i + 1];
  const eq = args.find((a) => a.startsWith(`${name}=`));
  return eq?.slice(name.length + 1);
}

export function chosenBrokers(): BrokerKind[] {
  const v = optionValue('--broker');
  if (v === undefined) return [...BROKER_KINDS];
  const list = v.split(',').map((s) => s.trim());
  for (const k of list) {
    if (!BROKER_KINDS.includes(k as BrokerKind)) {
      throw new Error(`--broker ${k}: unknown; use ${BROKER_KINDS.join(', ')} (comma-separated for several)`);
    }
  }
  return list as BrokerKind[];
}

interface BrokersState {
  kafka?: { bootstrap: string };
  rocketmq?: { endpoint: string };
  nats?: { url: string };
}

function state(): BrokersState | undefined {
  try {
    return JSON.parse(readFileSync(join(ROOT, '.brokers', 'state.json'), 'utf8')) as BrokersState;
  } catch {
    return undefined;
  }
}

function tcpAnswers(hostPort: string, timeoutMs = 2000): Promise<boolean> {
  const i = hostPort.lastIndexOf(':');
  const host = hostPort.slice(0, i);
  const port = Number(hostPort.slice(i + 1));
  return new Promise((resolve) => {
    const sock = connect({ host, port });
    const done = (ok: boolean): void => {
      clearTimeout(timer);
      sock.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), timeoutMs);
    sock.once('connect', () => done(true));
    sock.once('error', () => done(false));
  });
}

async function withTimeout<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what} took longer than ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

const short = (): string => randomUUID().slice(0, 8);

/** Resolves the target, or a reason it cannot be measured. */
export async function resolveTarget(
  kind: BrokerKind,
): Promise<Target | { kind: BrokerKind; notMeasured: string }> {
  if (kind === 'memory') {
    return {
      kind,
      // Room for the pre-filled consume backlog plus what publish leaves behind.
      url: 'memory://?maxTopicBytes=512MiB',
      topic: async () => `bench-${short()}`,
      group: async () => `bench-g-${short()}`,
    };
  }
  if (!existsSync(join(ROOT, 'src', 'brokers', kind, 'index.ts'))) {
    return { kind, notMeasured: `no adapter at src/brokers/${kind}/` };
  }
  const s = state();
  const address =
    kind === 'kafka' ? s?.kafka?.bootstrap : kind === 'rocketmq' ? s?.rocketmq?.endpoint : s?.nats?.url;
  if (!address)
    return { kind, notMeasured: `no ${kind} address in .brokers/state.json (npm run brokers -- up)` };
  const hostPort = address.replace(/^\w+:\/\//, '');
  if (!(await tcpAnswers(hostPort))) return { kind, notMeasured: `${kind} at ${hostPort} does not answer` };
  const url = `${kind}://${hostPort}`;
  let broker: Broker | undefined;
  try {
    broker = await withTimeout(openBroker(url), 20_000, `opening ${url}`);
    const h = await withTimeout(broker.health(), 10_000, `${url} health`);
    if (!h.ok) return { kind, notMeasured: `${url} unhealthy: ${h.detail}` };
  } catch (err) {
    return { kind, notMeasured: `adapter failed: ${(err as Error).message.split('\n')[0]}` };
  } finally {
    await broker?.close().catch(() => {});
  }
  if (kind === 'rocketmq') {
    return {
      kind,
      url,
      // The proxy never creates topics for gRPC clients, and preset ones belong to the tests.
      topic: async () => {
        const topic = `bench-${short()}`;
        const { createRocketMqTopic } = await import('../../test/support/brokers.js');
        await createRocketMqTopic(topic, 'NORMAL');
        return topic;
      },
      group: async () => {
        const group = `bench-g-${short()}`;
        const { createRocketMqGroup } = await import('../../test/support/brokers.js');
        await createRocketMqGroup(group);
        return group;
      },
    };
  }
  return { kind, url, topic: async () => `bench-${short()}`, group: async () => `bench-g-${short()}` };
}

export function isTarget(t: Target | { notMeasured: string }): t is Target {
  return !('notMeasured' in t);
}

export { withTimeout };
