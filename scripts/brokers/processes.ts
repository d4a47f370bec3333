import { spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import { BrokerScriptError, brokersDir, ensureDir, type ProcessName, pidsDir, say } from './common.js';
import { type JavaCommand, javaArgs, markerProperty } from './java.js';

/** Long-running broker processes: pid files, start, stop. */

function pidFile(name: ProcessName): string {
  return join(pidsDir, `${name}.pid`);
}

function cmdlineOf(pid: number): string | undefined {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ');
  } catch {
    return undefined;
  }
}

function isZombie(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The state letter follows the parenthesised command name, which may itself hold spaces.
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) === 'Z';
  } catch {
    return true;
  }
}

/** The pid from the pid file, only if that process is alive and is really our JVM for `name`. */
export function livePid(name: ProcessName): number | undefined {
  let pid: number;
  try {
    pid = Number(readFileSync(pidFile(name), 'utf8').trim());
  } catch {
    return undefined;
  }
  if (!Number.isInteger(pid) || pid <= 0) return undefined;
  const cmdline = cmdlineOf(pid);
  if (cmdline === undefined || !cmdline.includes(markerProperty(name)) || isZombie(pid)) return undefined;
  return pid;
}

export interface StartedProcess {
  pid: number;
  /** Size of the watched log before the start, so readiness only looks at this run's lines. */
  logOffset: number;
}

/**
 * Starts a detached JVM whose stdout and stderr go to `outFile`, and records its pid. The
 * process outlives this script: `down` (or a test's restart helper) stops it by that pid.
 */
export function startDetached(
  cmd: JavaCommand & { marker: ProcessName },
  outFile: string,
  watchFile: string,
  env: NodeJS.ProcessEnv,
): StartedProcess {
  ensureDir(pidsDir);
  const logOffset = fileSize(watchFile);
  const fd = openSync(outFile, 'a');
  try {
    writeFileSync(fd, `\n---- ${new Date().toISOString()} starting ${cmd.mainClass}\n`);
    const child = spawn('java', javaArgs(cmd), {
      detached: true,
      stdio: ['ignore', fd, fd],
      env,
      cwd: brokersDir,
    });
    if (child.pid === undefined)
      throw new BrokerScriptError(`could not start java ${cmd.mainClass}; is a JDK 17 installed?`);
    child.unref();
    writeFileSync(pidFile(cmd.marker), `${child.pid}\n`);
    return { pid: child.pid, logOffset };
  } finally {
    closeSync(fd);
  }
}

export function fileSize(path: string): number {
  try {
    return statSync(path).size;
  } catch {
    return 0;
  }
}

function readFrom(path: string, offset: number): string {
  try {
    const buf = readFileSync(path);
    // A rotated (shrunk) file is read from its start.
    return buf.subarray(buf.length >= offset ? offset : 0).toString('utf8');
  } catch {
    return '';
  }
}

/**
 * Waits until `file` shows `pattern` after `offset`. Fails early when the process died, and
 * at the deadline otherwise.
 */
export async function waitForLog(opts: {
  name: ProcessName;
  pid: number;
  file: string;
  offset: number;
  pattern: RegExp;
  timeoutMs: number;
}): Promise<void> {
  const deadline = Date.now() + opts.timeoutMs;
  for (;;) {
    if (opts.pattern.test(readFrom(opts.file, opts.offset))) return;
    if (livePid(opts.name) !== opts.pid) {
      throw new BrokerScriptError(`${opts.name} (pid ${opts.pid}) exited before logging ${opts.pattern}`);
    }
    if (Date.now() > deadline) {
      throw new BrokerScriptError(`${opts.name} did not log ${opts.pattern} within ${opts.timeoutMs} ms`);
    }
    await sleep(250);
  }
}

/**
 * Stops our process `name` (SIGTERM, then SIGKILL after `graceMs`; `hard` sends SIGKILL at
 * once, like a crash); returns its pid, if any.
 */
export async function stopProcess(
  name: ProcessName,
  graceMs = 30_000,
  hard = false,
): Promise<number | undefined> {
  const pid = livePid(name);
  if (pid === undefined) {
    rmSync(pidFile(name), { force: true });
    return undefined;
  }
  // Judged by the pid itself, not by livePid(): an exiting process loses its command line
  // before it has closed its sockets, and the next start would find the port still taken.
  const exited = (): boolean => !existsSync(`/proc/${pid}`) || isZombie(pid);
  const gone = async (ms: number): Promise<boolean> => {
    const until = Date.now() + ms;
    while (Date.now() < until) {
      if (exited()) return true;
      await sleep(100);
    }
    return exited();
  };
  try {
    process.kill(pid, hard ? 'SIGKILL' : 'SIGTERM');
  } catch {
    // Already gone between the check and the signal.
  }
  if (!(await gone(hard ? 10_000 : graceMs))) {
    say(`${name} (pid ${pid}) ignored SIGTERM for ${graceMs} ms; sending SIGKILL`);
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // Already gone.
    }
    if (!(await gone(10_000))) throw new BrokerScriptError(`${name} (pid ${pid}) survived SIGKILL`);
  }
  rmSync(pidFile(name), { force: true });
  return pid;
}

export function tail(path: string, lines = 40): string {
  if (!existsSync(path)) return `(no ${path})`;
  const text = readFileSync(path, 'utf8');
  const all = text.split('\n');
  return all.slice(Math.max(0, all.length - lines - 1)).join('\n');
}
