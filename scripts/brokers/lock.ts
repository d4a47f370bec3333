import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import { BrokerScriptError, brokersDir, ensureDir, say } from './common.js';

/** One broker operation at a time: a lock file naming its holder, taken over when the holder is gone. */

const lockPath = join(brokersDir, 'lock');

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * Runs `body` while holding .brokers/lock, so two `up` runs (two test runs started at once) or
 * a test's restart helper never start the same broker twice. A lock left by a dead process is
 * taken over.
 */
export async function withBrokerLock<T>(
  what: string,
  body: () => Promise<T>,
  timeoutMs = 300_000,
): Promise<T> {
  ensureDir(brokersDir);
  const deadline = Date.now() + timeoutMs;
  let reported = false;
  for (;;) {
    try {
      writeFileSync(lockPath, `${process.pid}\n`, { flag: 'wx' });
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    let holder = Number.NaN;
    try {
      holder = Number(readFileSync(lockPath, 'utf8').trim());
    } catch {
      continue;
    }
    if (!Number.isInteger(holder) || holder <= 0 || !pidAlive(holder)) {
      rmSync(lockPath, { force: true });
      continue;
    }
    if (Date.now() > deadline) {
      throw new BrokerScriptError(`${what}: process ${holder} has held ${lockPath} for over ${timeoutMs} ms`);
    }
    if (!reported) {
      say(`${what}: waiting for process ${holder}, which is starting or stopping brokers`);
      reported = true;
    }
    await sleep(250);
  }
  try {
    return await body();
  } finally {
    try {
      if (readFileSync(lockPath, 'utf8').trim() === String(process.pid)) rmSync(lockPath, { force: true });
    } catch {
      // Already removed.
    }
  }
}
