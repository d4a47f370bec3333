import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

import { BrokerScriptError, ensureDir } from './common.js';
import type { RunResult } from './java.js';
import { fileSize } from './processes.js';

/** Maven: resolving and fetching the broker jars into the cache. */

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
