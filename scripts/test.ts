/**
 * `npm test`: unit tests need nothing; integration and smoke tests need real brokers, so this
 * brings them up through the project's own broker script first (the "global setup"). When Java
 * or Maven is missing the run fails saying what to install: integration tests are never skipped.
 *
 *   npm test                  everything (starts Kafka and RocketMQ, checks NATS)
 *   npm test -- --unit        unit tests only, no brokers
 *   npm test -- test/x.test.ts  the named files (brokers started only when one needs them)
 */
import { spawnSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const args = process.argv.slice(2);
const unitOnly = args.includes('--unit');
const named = args.filter((a) => !a.startsWith('--'));

function find(dir: string): string[] {
  const out: string[] = [];
  let entries: string[];
  try {
    entries = readdirSync(dir);
  } catch {
    return out;
  }
  for (const name of entries.sort()) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) out.push(...find(path));
    else if (name.endsWith('.test.ts')) out.push(path);
  }
  return out;
}

const all = find(join(root, 'test'));
/**
 * Files under test/unit need no broker, nor do the hostile-client files except those named for a
 * broker (`*.kafka.test.ts`); every other test file may.
 */
const isUnit = (f: string): boolean => {
  const rel = relative(root, f);
  if (rel.startsWith(join('test', 'unit'))) return true;
  return rel.startsWith(join('test', 'hostile')) && !/\.(kafka|nats|rocketmq)\.test\.ts$/.test(rel);
};
const files =
  named.length > 0 ? named.map((f) => join(process.cwd(), f)) : unitOnly ? all.filter(isUnit) : all;
const needsBrokers = files.some((f) => !isUnit(f));

function requireTool(cmd: string, args: string[], install: string): void {
  const r = spawnSync(cmd, args, { stdio: 'ignore' });
  if (r.error || r.status !== 0) {
    console.error(
      `\nmqgate tests: "${cmd}" is not available, and the integration tests need it to run real brokers.\n` +
        `Install it (${install}) or run only the unit tests with: npm test -- --unit\n`,
    );
    process.exit(2);
  }
}

if (needsBrokers) {
  requireTool('java', ['-version'], 'Debian: apt-get install openjdk-17-jre-headless');
  requireTool('mvn', ['-v'], 'Debian: apt-get install maven');
  const t0 = Date.now();
  const up = spawnSync(process.execPath, ['--import', 'tsx', join(root, 'scripts/brokers.ts'), 'up'], {
    stdio: 'inherit',
    cwd: root,
  });
  if (up.status !== 0) {
    console.error('mqgate tests: brokers did not come up (see above); not running the tests.');
    process.exit(up.status ?? 1);
  }
  console.log(`brokers ready in ${((Date.now() - t0) / 1000).toFixed(1)} s`);
}

const concurrency = process.env.TEST_CONCURRENCY ?? '2';
/**
 * Files named *.serial.test.ts restart or disturb a shared broker (Kafka, RocketMQ), so they run
 * after everything else, one at a time, where they cannot break a neighbour's test.
 */
const isSerial = (f: string): boolean => f.endsWith('.serial.test.ts');
const phases: Array<[string, string[], string]> = [
  ['parallel', files.filter((f) => !isSerial(f)), concurrency],
  ['serial', files.filter(isSerial), '1'],
];
let failed = 0;
for (const [name, phaseFiles, conc] of phases) {
  if (phaseFiles.length === 0) continue;
  const t0 = Date.now();
  console.log(`\n== ${name} phase: ${phaseFiles.length} test files ==`);
  const run = spawnSync(
    process.execPath,
    [
      '--import',
      'tsx',
      '--expose-gc',
      '--test',
      `--test-concurrency=${conc}`,
      '--test-timeout=600000',
      ...phaseFiles,
    ],
    { stdio: 'inherit', cwd: root, env: { ...process.env, MQGATE_TEST: '1' } },
  );
  console.log(
    `== ${name} phase finished in ${((Date.now() - t0) / 1000).toFixed(1)} s (exit ${run.status}) ==`,
  );
  if (run.status !== 0) failed++;
}
process.exit(failed === 0 ? 0 : 1);
