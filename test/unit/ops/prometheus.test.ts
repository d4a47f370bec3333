/**
 * The alert rules and the exposition against the real consumer of them: Debian's Prometheus.
 *
 * promtool validates deploy/prometheus/mqgate-rules.yml and runs its unit tests (each alert fires
 * on the series that should fire it, with its text, and stays quiet otherwise). Then a prometheus
 * process (loopback only, a temporary storage directory, stopped by its pid at the end) scrapes a
 * live gateway, loads the rules and evaluates them without error; one series is read through its
 * HTTP API, an abandoned consumer makes MqgateConsumerLeaksDetected fire, and every expression of
 * the Grafana dashboard is evaluated by it.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { parse as parseYaml } from 'yaml';
import { freePort } from '../../support/child-gateway.js';
import { call, startTestGateway } from '../../support/gateway.js';
import { httpGet } from '../../support/http.js';
import { eventually, withLeakCheck } from '../../support/leaks.js';
import {
  dashboardExpressions,
  exprProblems,
  loadDashboard,
  parseExposition,
  RULES_PATH,
  RULES_TEST_PATH,
} from '../../support/promql.js';

const PROMETHEUS = process.env.PROMETHEUS_PATH ?? 'prometheus';
const PROMTOOL = process.env.PROMTOOL_PATH ?? 'promtool';

/** Fails (never skips) when a binary is missing, saying how to get it. */
function requireBinary(bin: string): void {
  const r = spawnSync(bin, ['--version'], { encoding: 'utf8' });
  assert.ok(
    !r.error && r.status === 0,
    `"${bin}" is not available (${r.error?.message ?? `exit ${r.status}`}): these tests need Debian's prometheus package ` +
      '(apt-get install -y prometheus, which brings prometheus and promtool; .ci/run installs it), or PROMETHEUS_PATH/PROMTOOL_PATH',
  );
}

interface Rule {
  alert?: string;
  expr: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}

const rules = (): Rule[] =>
  (parseYaml(readText(RULES_PATH)) as { groups: Array<{ rules: Rule[] }> }).groups.flatMap((g) => g.rules);

function readText(path: string): string {
  return readFileSync(path, 'utf8');
}

test('promtool: the rules are valid, their unit tests pass, and every alert is tested firing', () => {
  requireBinary(PROMTOOL);
  const check = spawnSync(PROMTOOL, ['check', 'rules', RULES_PATH], { encoding: 'utf8' });
  assert.equal(check.status, 0, `promtool check rules:\n${check.stdout}${check.stderr}`);
  const all = rules();
  assert.match(check.stdout, new RegExp(`SUCCESS: ${all.length} rules found`));
  const unit = spawnSync(PROMTOOL, ['test', 'rules', RULES_TEST_PATH], {
    encoding: 'utf8',
    cwd: dirname(RULES_TEST_PATH),
  });
  assert.equal(unit.status, 0, `promtool test rules:\n${unit.stdout}${unit.stderr}`);
  const tests = parseYaml(readText(RULES_TEST_PATH)) as {
    tests: Array<{ alert_rule_test?: Array<{ alertname: string; exp_alerts?: unknown[] }> }>;
  };
  const firing = new Set(
    tests.tests.flatMap((t) =>
      (t.alert_rule_test ?? []).filter((a) => (a.exp_alerts ?? []).length > 0).map((a) => a.alertname),
    ),
  );
  const names = all.map((r) => r.alert);
  for (const want of [
    'MqgateBrokerDown',
    'MqgateProducerLeaksDetected',
    'MqgateConsumerLeaksDetected',
    'MqgateChannelFullSustained',
    'MqgateRefusalsSpiking',
    'MqgateEventLoopDelayHigh',
    'MqgateStreamsStalled',
  ]) {
    assert.ok(names.includes(want), `no alert ${want}`);
  }
  for (const r of all) {
    assert.ok(r.alert, 'alerting rules only');
    assert.ok(firing.has(r.alert), `${r.alert} has no unit test in which it fires`);
    assert.match(r.labels?.severity ?? '', /^(critical|warning)$/, `${r.alert} severity`);
    assert.ok(r.annotations?.summary && r.annotations.description, `${r.alert} summary and description`);
  }
});

/** Stops a prometheus by its pid: SIGTERM, SIGKILL after 10 s; resolves with how it exited. */
async function stop(
  prom: ChildProcess | undefined,
  output: () => string,
): Promise<{ pid: number; code: number | string | null } | undefined> {
  const pid = prom?.pid;
  if (prom === undefined || pid === undefined) return undefined;
  if (prom.exitCode !== null || prom.signalCode !== null)
    return { pid, code: prom.exitCode ?? prom.signalCode };
  const exited = new Promise<number | string | null>((r) =>
    prom.once('exit', (code, signal) => r(code ?? signal)),
  );
  process.kill(pid, 'SIGTERM');
  const force = setTimeout(() => {
    console.log(`prometheus ${pid} ignored SIGTERM for 10 s; killing it:\n${output()}`);
    process.kill(pid, 'SIGKILL');
  }, 10_000);
  const code = await exited;
  clearTimeout(force);
  return { pid, code };
}

interface QueryResult {
  status: string;
  error?: string;
  data: { resultType: string; result: Array<{ metric: Record<string, string>; value: [number, string] }> };
}

test('a real Prometheus scrapes a live gateway, evaluates the rules without error, fires a leak alert, and evaluates every dashboard expression', async () => {
  requireBinary(PROMETHEUS);
  requireBinary(PROMTOOL);
  await withLeakCheck(
    async () => {
      // Sessions abandoned for a second are leaks: the alert can fire within the test.
      const gw = await startTestGateway({ consumerCleanupTimeoutMs: 1000 });
      const dir = mkdtempSync(join(tmpdir(), 'mqgate-prometheus-'));
      let prom: ChildProcess | undefined;
      let output = '';
      let stopped: { pid: number; code: number | string | null } | undefined;
      try {
        // The rule expressions name only what the gateway exports (and Prometheus's own `up`).
        const exposition = parseExposition((await httpGet(gw.metricsUrl, { accept: 'text/plain' })).body);
        for (const r of rules()) {
          assert.deepEqual(exprProblems(r.expr, exposition, new Set(['up'])), [], `${r.alert}: ${r.expr}`);
        }

        const port = await freePort();
        const api = `http://127.0.0.1:${port}/api/v1`;
        const config = join(dir, 'prometheus.yml');
        writeFileSync(
          config,
          [
            'global:',
            '  scrape_interval: 1s',
            '  scrape_timeout: 1s',
            '  evaluation_interval: 1s',
            'rule_files:',
            `  - ${JSON.stringify(RULES_PATH)}`,
            'scrape_configs:',
            '  - job_name: mqgate',
            '    static_configs:',
            `      - targets: ['127.0.0.1:${gw.gateway.metricsPort}']`,
            '',
          ].join('\n'),
        );
        const checked = spawnSync(PROMTOOL, ['check', 'config', config], { encoding: 'utf8' });
        assert.equal(checked.status, 0, `promtool check config:\n${checked.stdout}${checked.stderr}`);

        const t0 = Date.now();
        prom = spawn(
          PROMETHEUS,
          [
            `--config.file=${config}`,
            `--storage.tsdb.path=${join(dir, 'data')}`,
            `--web.listen-address=127.0.0.1:${port}`,
            '--log.level=warn',
          ],
          { stdio: ['ignore', 'pipe', 'pipe'] },
        );
        const keep = (c: Buffer): void => {
          output = (output + c.toString()).slice(-20_000);
        };
        prom.stdout?.on('data', keep);
        prom.stderr?.on('data', keep);
        const p = prom;
        const ready = async (): Promise<boolean> => {
          if (p.exitCode !== null) assert.fail(`prometheus exited (${p.exitCode}):\n${output}`);
          return (
            (await httpGet(`http://127.0.0.1:${port}/-/ready`).catch(() => ({ status: 0 }))).status === 200
          );
        };
        await eventually(ready, 'prometheus to be ready', 30_000);
        console.log(`  Prometheus ready in ${Date.now() - t0} ms`);
        const query = async (q: string): Promise<QueryResult> => {
          const r = await httpGet(`${api}/query?query=${encodeURIComponent(q)}`);
          return JSON.parse(r.body) as QueryResult;
        };

        // Loopback only.
        const flags = JSON.parse((await httpGet(`${api}/status/flags`)).body) as {
          data: Record<string, string>;
        };
        assert.equal(flags.data['web.listen-address'], `127.0.0.1:${port}`);

        // One series through the HTTP API: the broker gauge this work added, scraped as text.
        await eventually(
          async () => (await query('up{job="mqgate"}')).data.result[0]?.value[1] === '1',
          'a successful scrape of the gateway',
          20_000,
        );
        const up = await query('mqgate_broker_up{job="mqgate"}');
        assert.equal(up.status, 'success');
        assert.deepEqual(
          up.data.result.map((r) => [r.metric.broker, r.metric.instance, r.value[1]]),
          [['memory#0', `127.0.0.1:${gw.gateway.metricsPort}`, '1']],
        );
        const targets = JSON.parse((await httpGet(`${api}/targets`)).body) as {
          data: { activeTargets: Array<{ health: string; lastError: string }> };
        };
        assert.deepEqual(
          targets.data.activeTargets.map((t) => [t.health, t.lastError]),
          [['up', '']],
        );

        // An abandoned consumer: a leak detection at the gateway, an alert in Prometheus.
        await eventually(
          async () => (await query('mqgate_consumer_leak_detections_total')).data.result[0]?.value[1] === '0',
          'a scrape before the leak',
        );
        const keys = { endpoint: 'e', access_key_id: '', access_key_secret: '', instance_id: 'i' };
        await call(gw.client, 'CreateConsumer', { ...keys, topic: 'leaky', group_id: 'g' });
        await eventually(
          () => gw.gateway.metrics.counts.consumerLeakDetections === 1,
          'the gateway to detect the leak',
        );
        const t1 = Date.now();
        await eventually(
          async () =>
            (await query('ALERTS{alertname="MqgateConsumerLeaksDetected",alertstate="firing"}')).data.result
              .length === 1,
          'MqgateConsumerLeaksDetected to fire',
          20_000,
        );
        console.log(`  MqgateConsumerLeaksDetected firing ${Date.now() - t1} ms after the leak`);

        // Every rule loaded and evaluated without error.
        const loaded = JSON.parse((await httpGet(`${api}/rules`)).body) as {
          data: { groups: Array<{ rules: Array<{ name: string; health: string; lastError?: string }> }> };
        };
        const evaluated = loaded.data.groups.flatMap((g) => g.rules);
        assert.equal(evaluated.length, rules().length);
        assert.deepEqual(
          evaluated.filter((r) => r.health !== 'ok').map((r) => `${r.name}: ${r.health} ${r.lastError}`),
          [],
        );

        // Every dashboard expression is PromQL Prometheus evaluates (Grafana's variables filled in).
        const failures: string[] = [];
        let withData = 0;
        const exprs = dashboardExpressions(loadDashboard());
        for (const { where, expr } of exprs) {
          const q = expr
            .replace(/\$__rate_interval/g, '5s')
            .replace(/\$\{?(job|instance)\}?/g, '.*')
            .replace(/\$\{?datasource\}?/g, '');
          const r = await query(q);
          if (r.status !== 'success') failures.push(`${where}: ${r.error} in ${q}`);
          else if (r.data.result.length > 0) withData++;
        }
        assert.deepEqual(failures, []);
        console.log(`  ${exprs.length} dashboard expressions evaluated, ${withData} with data`);
        assert.ok(withData >= exprs.length / 2, `only ${withData} of ${exprs.length} expressions have data`);
      } finally {
        stopped = await stop(prom, () => output);
        rmSync(dir, { recursive: true, force: true });
        await gw.close();
      }
      // Asserted here, so a failure above is not hidden by one about stopping.
      assert.ok(stopped, 'prometheus ran');
      assert.equal(stopped.code, 0, `prometheus did not stop cleanly on SIGTERM:\n${output}`);
      assert.throws(() => process.kill(stopped.pid, 0), { code: 'ESRCH' }, 'its pid is gone');
    },
    { timeoutMs: 15_000 },
  );
});
