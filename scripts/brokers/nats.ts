/**
 * NATS is a machine service here (not started per project): make sure it answers with
 * JetStream on, and start the system's server when it is down.
 */
import { spawnSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { jetstream, jetstreamManager, StorageType } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { withTimeout } from '../../src/core/lifecycle.js';
import { BrokerScriptError, HOST, portAnswers, ports, say } from './common.js';

export const natsUrl = `nats://${HOST}:${ports.nats}`;
export const NATS_SERVER_BIN = '/usr/sbin/nats-server';
const SYSTEM_STORE = '/var/lib/nats-server';

/** Publishes one message into a throw-away memory stream and reads it back, then cleans up. */
export async function natsRoundTrip(url: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const left = (): number => Math.max(1, deadline - Date.now());
  const nc = await withTimeout(
    connect({ servers: url, timeout: Math.min(5_000, left()) }),
    left(),
    `NATS connect ${url}`,
  );
  try {
    const id = randomUUID();
    const stream = `mqgate-ready-${id}`;
    const subject = `mqgate.ready.${id}`;
    const jsm = await withTimeout(jetstreamManager(nc), left(), 'JetStream manager');
    await withTimeout(
      jsm.streams.add({ name: stream, subjects: [subject], storage: StorageType.Memory }),
      left(),
      'JetStream add stream',
    );
    try {
      const js = jetstream(nc);
      await withTimeout(js.publish(subject, id), left(), 'JetStream publish');
      const consumer = await withTimeout(js.consumers.get(stream), left(), 'JetStream consumer');
      const msg = await withTimeout(consumer.next({ expires: 5_000 }), left(), 'JetStream next');
      if (msg?.string() !== id)
        throw new BrokerScriptError(`JetStream returned ${JSON.stringify(msg?.string())}, not ${id}`);
    } finally {
      await jsm.streams.delete(stream).catch(() => undefined);
    }
  } finally {
    await nc.close();
  }
}

/** Ensures the machine's NATS answers at `natsUrl` with JetStream; starts it if it is down. */
export async function ensureNats(timeoutMs = 30_000): Promise<'running' | 'started'> {
  const deadline = Date.now() + timeoutMs;
  let result: 'running' | 'started' = 'running';
  if (!(await portAnswers(ports.nats))) {
    if (!existsSync(NATS_SERVER_BIN)) {
      throw new BrokerScriptError(
        `NATS is not answering on ${natsUrl} and ${NATS_SERVER_BIN} is missing; install nats-server`,
      );
    }
    say(`NATS is not answering on ${natsUrl}; starting the system nats-server`);
    const r = spawnSync(
      'start-stop-daemon',
      [
        '--start',
        '--oknodo',
        '--background',
        '--exec',
        NATS_SERVER_BIN,
        '--',
        '-a',
        HOST,
        '-p',
        String(ports.nats),
        '-js',
        '-sd',
        SYSTEM_STORE,
      ],
      { encoding: 'utf8' },
    );
    if (r.status !== 0) {
      throw new BrokerScriptError(
        `start-stop-daemon could not start nats-server (exit ${r.status}): ${r.stderr}${r.stdout}`,
      );
    }
    result = 'started';
    while (!(await portAnswers(ports.nats))) {
      if (Date.now() > deadline) throw new BrokerScriptError(`nats-server did not open ${natsUrl} in time`);
      await new Promise((res) => setTimeout(res, 200));
    }
  }
  await natsRoundTrip(natsUrl, Math.max(5_000, deadline - Date.now()));
  return result;
}
