import { spawn } from 'node:child_process';

import { BrokerScriptError, type ProcessName, repoRoot } from './common.js';

/** Java command lines: the classpath, JVM flags and environment the broker scripts run with. */

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
