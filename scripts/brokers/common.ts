/**
 * Shared plumbing for the broker script: where things live, which ports, and how Java processes
 * are started, found again and stopped. Both `scripts/brokers.ts` and `test/support/brokers.ts`
 * import this, so a test that restarts a broker uses exactly the command line `up` used.
 */
import { spawn } from 'node:child_process';
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { connect } from 'node:net';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

export const repoRoot: string = new URL('../..', import.meta.url).pathname.replace(/\/$/, '');
export const brokersDir: string = join(repoRoot, '.brokers');
export const pidsDir: string = join(brokersDir, 'pids');
export const statePath: string = join(brokersDir, 'state.json');

export const KAFKA_VERSION = '3.9.1';
/** Newest 5.3.x on Maven Central when this was written (5.3.0..5.3.3 all exist). */
export const ROCKETMQ_VERSION = '5.3.3';

export const cacheDir: string = process.env.MQGATE_CACHE ?? join(homedir(), '.cache', 'mqgate');
export const jarDirs = {
  kafka: join(cacheDir, 'jars', 'kafka', KAFKA_VERSION),
  rocketmq: join(cacheDir, 'jars', 'rocketmq', ROCKETMQ_VERSION),
} as const;

function envPort(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const port = Number(raw);
  if (!Number.isInteger(port) || port < 1 || port > 65535) {
    throw new Error(`${name}="${raw}" is not a TCP port; unset it or give a number between 1 and 65535`);
  }
  return port;
}

/**
 * Non-default ports so a developer's own Kafka (9092) or RocketMQ (9876/8081/10911) is never
 * touched, and nothing lands on 8080 (gateway metrics) or 50051 (gateway gRPC).
 */
export const ports = {
  kafka: envPort('MQGATE_KAFKA_PORT', 19092),
  kafkaController: envPort('MQGATE_KAFKA_CONTROLLER_PORT', 19093),
  namesrv: envPort('MQGATE_ROCKETMQ_NAMESRV_PORT', 19876),
  /** The broker also binds listenPort - 2 (fast channel) and listenPort + 1 (HA). */
  brokerListen: envPort('MQGATE_ROCKETMQ_BROKER_PORT', 20911),
  proxyGrpc: envPort('MQGATE_ROCKETMQ_PROXY_PORT', 18081),
  proxyRemoting: envPort('MQGATE_ROCKETMQ_REMOTING_PORT', 18080),
  nats: envPort('MQGATE_NATS_PORT', 4222),
} as const;

export const HOST = '127.0.0.1';

export type ProcessName = 'kafka' | 'namesrv' | 'proxy';

/** What `test/support/brokers.ts` reads. */
export interface BrokersState {
  kafka: {
    version: string;
    bootstrap: string;
    controllerPort: number;
    libDir: string;
    dataDir: string;
    logDir: string;
    readyTopic: string;
  };
  rocketmq: {
    version: string;
    endpoint: string;
    namesrv: string;
    cluster: string;
    brokerName: string;
    brokerPort: number;
    remotingPort: number;
    libDir: string;
    storeDir: string;
    logDir: string;
    presetCount: number;
    readyTopic: string;
    readyGroup: string;
  };
  nats: { url: string };
  updatedAt: string;
}

export function ensureDir(path: string): string {
  mkdirSync(path, { recursive: true });
  return path;
}

export function say(message: string): void {
  process.stdout.write(`[brokers] ${message}\n`);
}

export function seconds(sinceMs: number): string {
  return `${((Date.now() - sinceMs) / 1000).toFixed(1)} s`;
}

export class BrokerScriptError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = 'BrokerScriptError';
  }
}

/** Rejects with a message naming `what` if `promise` does not settle before `ms`. */
export async function withDeadline<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new BrokerScriptError(`${what}: no answer within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Waits until nothing listens on `port` any more (false at the deadline). */
export async function portFreed(port: number, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (await portAnswers(port)) {
    if (Date.now() > deadline) return false;
    await sleep(200);
  }
  return true;
}

export function portAnswers(port: number, host = HOST, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ port, host });
    const done = (ok: boolean): void => {
      socket.removeAllListeners();
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

// ---- Java command lines --------------------------------------------------------------------

export interface JavaCommand {
  /** Directory holding the jars; the classpath is `<libDir>/*`. */
  libDir: string;
  mainClass: string;
  args?: string[];
  heap?: string;
  directMemory?: string;
  /** -D system properties. */
  props?: Record<string, string>;
  jvmOptions?: string[];
  /** Names the process so `down` can tell our JVM from a recycled pid. */
  marker?: ProcessName;
}

/** Opens what RocketMQ's store and Netty reach into on JDK 17 (its own scripts pass the same). */
export const JDK17_OPENS = [
  '--add-opens=java.base/java.lang=ALL-UNNAMED',
  '--add-opens=java.base/java.nio=ALL-UNNAMED',
  '--add-opens=java.base/java.util=ALL-UNNAMED',
  '--add-opens=java.base/jdk.internal.ref=ALL-UNNAMED',
  '--add-opens=java.base/sun.nio.ch=ALL-UNNAMED',
  '--add-exports=java.base/sun.nio.ch=ALL-UNNAMED',
];

export function markerProperty(name: ProcessName): string {
  return `-Dmqgate.broker=${name}@${repoRoot}`;
}

export function javaArgs(cmd: JavaCommand): string[] {
  const out: string[] = [];
  if (cmd.marker) out.push(markerProperty(cmd.marker));
  if (cmd.heap) out.push(`-Xms${cmd.heap}`, `-Xmx${cmd.heap}`);
  if (cmd.directMemory) out.push(`-XX:MaxDirectMemorySize=${cmd.directMemory}`);
  out.push(...(cmd.jvmOptions ?? []));
  for (const [k, v] of Object.entries(cmd.props ?? {})) out.push(`-D${k}=${v}`);
  out.push('-cp', `${cmd.libDir}/*`, cmd.mainClass, ...(cmd.args ?? []));
  return out;
}

export interface RunResult {
  code: number | null;
  output: string;
}

/**
 * JVM flags for short-lived tools: C1 only and the serial collector halve the CPU a tool's
 * start costs, which is what dominates on a busy 2-core machine.
 */
export const TOOL_JVM_OPTIONS = ['-XX:TieredStopAtLevel=1', '-XX:+UseSerialGC', '-XX:CICompilerCount=1'];

/**
 * Runs a short-lived Java program to completion (bounded by `timeoutMs`), collecting its
 * output. With `doneWhen`, the JVM is killed as soon as its output matches: mqadmin's own
 * shutdown (Netty's graceful quiet period) adds seconds after the work is done.
 */
export function runJava(
  cmd: JavaCommand,
  timeoutMs: number,
  env: NodeJS.ProcessEnv = process.env,
  doneWhen?: RegExp,
): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn('java', javaArgs(cmd), { stdio: ['ignore', 'pipe', 'pipe'], env });
    let output = '';
    let done = false;
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      output += d;
      if (doneWhen && !done && doneWhen.test(output)) {
        done = true;
        child.kill('SIGKILL');
      }
    });
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      output += d;
    });
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(
        new BrokerScriptError(`java ${cmd.mainClass} did not finish within ${timeoutMs} ms:\n${output}`),
      );
    }, timeoutMs);
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(new BrokerScriptError(`could not run java (${err.message}); install a JDK 17`, { cause: err }));
    });
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code: done ? 0 : code, output });
    });
  });
}

// ---- Long-running processes: pid files, start, stop ----------------------------------------

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

// ---- One broker operation at a time ---------------------------------------------------------

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

// ---- Maven ---------------------------------------------------------------------------------

export interface Artifact {
  groupId: string;
  artifactId: string;
  version: string;
}

const COMPLETE_MARKER = '.complete';

/**
 * True when a previous run collected the jars. With `artifacts`, also that it collected exactly
 * these: adding an artifact to the list must fetch again, not trust an older cache.
 */
export function jarsComplete(libDir: string, artifacts?: Artifact[]): boolean {
  const marker = join(libDir, COMPLETE_MARKER);
  if (!existsSync(marker)) return false;
  if (artifacts === undefined) return true;
  return readFileSync(marker, 'utf8').split('\n')[1] === artifactList(artifacts);
}

function artifactList(artifacts: Artifact[]): string {
  return artifacts
    .map((a) => `${a.groupId}:${a.artifactId}:${a.version}`)
    .sort()
    .join(' ');
}

/**
 * Copies `artifacts` and their runtime dependencies into `libDir` with a throw-away pom.
 * Skipped when a previous run finished (marker file); Maven's own ~/.m2 cache makes a
 * repeat after a half-finished run cheap.
 */
export async function fetchJars(
  libDir: string,
  artifacts: Artifact[],
  timeoutMs = 15 * 60_000,
): Promise<boolean> {
  if (jarsComplete(libDir, artifacts)) return false;
  rmSync(libDir, { recursive: true, force: true });
  const work = ensureDir(`${libDir}.pom`);
  const deps = artifacts
    .map(
      (a) =>
        `<dependency><groupId>${a.groupId}</groupId><artifactId>${a.artifactId}</artifactId><version>${a.version}</version></dependency>`,
    )
    .join('\n    ');
  writeFileSync(
    join(work, 'pom.xml'),
    `<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>mqgate.local</groupId><artifactId>broker-jars</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    ${deps}
  </dependencies>
</project>
`,
  );
  const args = [
    '-B',
    '-q',
    '-f',
    join(work, 'pom.xml'),
    'org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy-dependencies',
    '-DincludeScope=runtime',
    `-DoutputDirectory=${libDir}`,
  ];
  const result = await new Promise<RunResult>((resolve, reject) => {
    const child = spawn('mvn', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => {
      output += d;
    });
    child.stderr.setEncoding('utf8').on('data', (d: string) => {
      output += d;
    });
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(new BrokerScriptError(`could not run mvn (${err.message}); install Maven 3`, { cause: err }));
    });
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, output });
    });
  });
  if (result.code !== 0) {
    throw new BrokerScriptError(
      `Maven could not collect ${artifacts.map((a) => `${a.artifactId}:${a.version}`).join(', ')} ` +
        `(exit ${result.code}); check network access to Maven Central. Output:\n${result.output.slice(-4000)}`,
    );
  }
  writeFileSync(join(libDir, COMPLETE_MARKER), `${new Date().toISOString()}\n${artifactList(artifacts)}\n`);
  rmSync(work, { recursive: true, force: true });
  return true;
}

export function dirSizeMb(dir: string): number {
  let total = 0;
  try {
    for (const name of readdirNames(dir)) total += fileSize(join(dir, name));
  } catch {
    return 0;
  }
  return Math.round(total / 1024 / 1024);
}

function readdirNames(dir: string): string[] {
  return readdirSync(dir).filter((n) => n.endsWith('.jar'));
}
