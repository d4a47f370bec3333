/**
 * deploy/grafana/mqgate.json against a live gateway: every PromQL expression in it (panel targets
 * and template-variable queries) names only metrics the gateway's /metrics exports as Prometheus
 * text, with labels those metrics carry; every metric family the gateway exports has a panel; and
 * the dashboard is one Grafana can import (unique panel ids, a grid 24 wide, every panel on the
 * dashboard's Prometheus data-source variable). prometheus.test.ts also runs every expression
 * through a real Prometheus.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { call, receive, startTestGateway, type TestGateway } from '../../support/gateway.js';
import {
  allPanels,
  dashboardExpressions,
  type Exposition,
  exprProblems,
  exprUse,
  loadDashboard,
  parseExposition,
} from '../../support/promql.js';

describe('the Grafana dashboard against a live gateway', () => {
  let gw: TestGateway;
  let exposition: Exposition;
  const dashboard = loadDashboard();

  before(async () => {
    gw = await startTestGateway();
    // Enough traffic that every labelled family has samples: calls (histogram buckets), a
    // delivery, broker counters.
    const keys = { endpoint: 'e', access_key_id: '', access_key_secret: '', instance_id: 'i' };
    const { consumer_id } = await call<{ consumer_id: string }>(gw.client, 'CreateConsumer', {
      ...keys,
      topic: 'dash',
      group_id: 'g',
    });
    const stream = receive(gw.client, consumer_id);
    const { producer_id } = await call<{ producer_id: string }>(gw.client, 'CreateProducer', {
      ...keys,
      topic: 'dash',
    });
    await call(gw.client, 'SendMessage', { producer_id, message_body: 'x' });
    stream.end();
    const res = await fetch(gw.metricsUrl, { headers: { accept: 'text/plain', connection: 'close' } });
    assert.match(res.headers.get('content-type') ?? '', /^text\/plain/);
    exposition = parseExposition(await res.text());
  });
  after(async () => gw.close());

  test('the checker itself catches an unknown metric, an unknown label and a bad grouping label', () => {
    assert.deepEqual(exprProblems('rate(mqgate_nope_total[5m])', exposition), [
      'metric mqgate_nope_total is not exported',
    ]);
    assert.deepEqual(exprProblems('mqgate_connections{reason="x"}', exposition), [
      'metric mqgate_connections has no label reason',
    ]);
    assert.deepEqual(exprProblems('sum by (method) (mqgate_connections)', exposition), [
      'no metric of the expression has label method',
    ]);
    assert.deepEqual(
      exprUse(
        'histogram_quantile(0.99, sum by (method, le) (rate(mqgate_rpc_duration_seconds_bucket{job=~"$job"}[$__rate_interval] offset 5m)))',
      ).metrics,
      ['mqgate_rpc_duration_seconds_bucket'],
    );
    assert.deepEqual(
      exprProblems('count(mqgate_broker_up{instance=~"$instance"} == 0) or vector(0)', exposition),
      [],
    );
  });

  test('every expression names only exported metrics, with labels they carry', () => {
    const exprs = dashboardExpressions(dashboard);
    assert.ok(exprs.length >= 30, `${exprs.length} expressions`);
    const problems = exprs.flatMap(({ where, expr }) =>
      exprProblems(expr, exposition).map((p) => `${where}: ${p} in ${expr}`),
    );
    assert.deepEqual(problems, []);
  });

  test('every metric family the gateway exports is on the dashboard (a new metric needs a panel)', () => {
    const used = new Set(dashboardExpressions(dashboard).flatMap(({ expr }) => exprUse(expr).metrics));
    const family = (sample: string): string => {
      for (const suffix of ['_bucket', '_sum', '_count']) {
        const base = sample.slice(0, -suffix.length);
        if (sample.endsWith(suffix) && exposition.families.get(base) === 'histogram') return base;
      }
      return sample;
    };
    const shown = new Set([...used].map(family));
    const missing = [...exposition.families.keys()].filter((f) => !shown.has(f));
    assert.deepEqual(missing, [], 'exported families without a panel: add one to deploy/grafana/mqgate.json');
    // The ones the issue names, explicitly.
    for (const f of [
      'mqgate_rpc_requests_total',
      'mqgate_rpc_duration_seconds',
      'mqgate_consumer_sessions',
      'mqgate_producer_handles',
      'mqgate_streams',
      'mqgate_inflight_deliveries',
      'mqgate_channel_full_events_total',
      'mqgate_streams_stalled_total',
      'mqgate_producer_leak_detections_total',
      'mqgate_consumer_leak_detections_total',
      'mqgate_refusals_total',
      'mqgate_connections',
      'mqgate_broker_up',
      'nodejs_eventloop_delay_seconds',
      'process_resident_memory_bytes',
      'nodejs_heap_used_bytes',
    ]) {
      assert.ok(shown.has(f), `${f} has no panel`);
    }
  });

  test('every referenced metric has samples on a live gateway (no panel is empty by construction)', () => {
    const used = new Set(dashboardExpressions(dashboard).flatMap(({ expr }) => exprUse(expr).metrics));
    assert.deepEqual(
      [...used].filter((m) => !exposition.seen.has(m)),
      [],
      'metrics referenced but without a sample',
    );
  });

  test('Grafana can import it: unique ids, a 24-wide grid, every panel on the datasource variable', () => {
    assert.equal(dashboard.uid, 'mqgate-gateway');
    const panels = allPanels(dashboard.panels);
    const variable = ['$', '{datasource}'].join('');
    const ids = panels.map((p) => p.id);
    assert.equal(new Set(ids).size, ids.length, 'panel ids are unique');
    for (const p of panels) {
      const g = p.gridPos;
      assert.ok(g && g.x >= 0 && g.w > 0 && g.x + g.w <= 24, `panel "${p.title}" fits the grid`);
      if (p.type === 'row') continue;
      assert.ok((p.targets ?? []).length > 0, `panel "${p.title}" has a query`);
      assert.equal(p.datasource?.uid, variable, `panel "${p.title}" data source`);
      for (const t of p.targets ?? []) assert.equal(t.datasource?.uid, variable);
    }
    assert.ok(dashboard.templating.list.some((v) => v.name === 'datasource' && v.type === 'datasource'));
  });
});
