import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/**
 * What the dashboard and alert-rule tests need to hold PromQL against a live /metrics: the metric
 * families a Prometheus text exposition declares (with their sample names and label names), and
 * the metric names and label names a PromQL expression uses (Grafana variables allowed).
 */

export interface Exposition {
  /** Family name -> type (counter, gauge, histogram, summary, untyped). */
  readonly families: Map<string, string>;
  /** Sample name (family names plus _bucket/_sum/_count) -> label names seen on its samples. */
  readonly samples: Map<string, Set<string>>;
  /** Sample names with at least one sample line. */
  readonly seen: Set<string>;
}

export function parseExposition(text: string): Exposition {
  const families = new Map<string, string>();
  const samples = new Map<string, Set<string>>();
  const seen = new Set<string>();
  for (const line of text.split('\n')) {
    const type = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (type) {
      const [, name, kind] = type as unknown as [string, string, string];
      families.set(name, kind);
      const names =
        kind === 'histogram'
          ? [`${name}_bucket`, `${name}_sum`, `${name}_count`]
          : kind === 'summary'
            ? [name, `${name}_sum`, `${name}_count`]
            : [name];
      for (const n of names) if (!samples.has(n)) samples.set(n, new Set());
      continue;
    }
    if (line === '' || line.startsWith('#')) continue;
    const sample = /^([a-zA-Z_:][\w:]*)(\{([^}]*)\})?\s/.exec(line);
    if (!sample) throw new Error(`not a sample line: ${line}`);
    const labels = samples.get(sample[1] as string) ?? new Set<string>();
    samples.set(sample[1] as string, labels);
    seen.add(sample[1] as string);
    for (const m of (sample[3] ?? '').matchAll(/([a-zA-Z_]\w*)="/g)) labels.add(m[1] as string);
  }
  return { families, samples, seen };
}

/** Words of PromQL that look like metric names and are not. */
const KEYWORDS = new Set([
  'by',
  'without',
  'on',
  'ignoring',
  'group_left',
  'group_right',
  'bool',
  'and',
  'or',
  'unless',
  'offset',
  'atan2',
  'inf',
  'nan',
]);

export interface ExprUse {
  /** Metric names selected. */
  readonly metrics: string[];
  /** Label names in matchers, per metric name. */
  readonly matchers: Map<string, string[]>;
  /** Label names in by/without/on/ignoring/group_* clauses. */
  readonly grouping: string[];
}

/** The metric and label names an expression uses. */
export function exprUse(expr: string): ExprUse {
  // Grafana variables ($x, ${x}, [[x]]) stand for values; strings are values.
  let s = expr
    .replace(/\$\{[^}]*\}|\$\w+|\[\[\w+\]\]/g, '0')
    .replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, '""');
  const grouping: string[] = [];
  s = s.replace(
    /\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)/gi,
    (_, _kw, list: string) => {
      for (const l of list.split(',')) if (l.trim() !== '') grouping.push(l.trim());
      return ' ';
    },
  );
  const matchers = new Map<string, string[]>();
  const metrics: string[] = [];
  // Ranges and subqueries ([5m], [1h:1m]) go; selectors keep their matchers for the label check.
  s = s.replace(/\[[^\]]*\]/g, ' ');
  const ident = /(?<![\w.])([a-zA-Z_:][\w:]*)\s*(\{([^}]*)\})?/g;
  for (const m of s.matchAll(ident)) {
    const name = m[1] as string;
    const after = s.slice((m.index ?? 0) + m[0].length).trimStart();
    if (m[2] === undefined && after.startsWith('(')) continue; // a function or an aggregation
    if (KEYWORDS.has(name.toLowerCase())) continue;
    metrics.push(name);
    const labels = [...(m[3] ?? '').matchAll(/([a-zA-Z_]\w*)\s*(=~|!~|!=|=)/g)].map((x) => x[1] as string);
    matchers.set(name, [...(matchers.get(name) ?? []), ...labels]);
  }
  return { metrics, matchers, grouping };
}

/** Labels Prometheus adds to every series it scrapes. */
export const TARGET_LABELS = new Set(['job', 'instance']);

/**
 * Problems with an expression against an exposition: a metric the gateway does not export, a
 * matcher or grouping label none of its metrics carries. Empty when it is sound.
 */
export function exprProblems(
  expr: string,
  exp: Exposition,
  extraMetrics: ReadonlySet<string> = new Set(),
): string[] {
  const use = exprUse(expr);
  const problems: string[] = [];
  if (use.metrics.length === 0) problems.push('names no metric');
  const labelsOf = (name: string): Set<string> => exp.samples.get(name) ?? new Set();
  const all = new Set<string>(TARGET_LABELS);
  for (const name of use.metrics) {
    if (!exp.samples.has(name) && !extraMetrics.has(name)) {
      problems.push(`metric ${name} is not exported`);
      continue;
    }
    for (const l of labelsOf(name)) all.add(l);
    for (const l of use.matchers.get(name) ?? []) {
      if (!TARGET_LABELS.has(l) && !labelsOf(name).has(l) && !extraMetrics.has(name)) {
        problems.push(`metric ${name} has no label ${l}`);
      }
    }
  }
  for (const l of use.grouping) {
    if (!all.has(l) && ![...use.metrics].some((m) => extraMetrics.has(m))) {
      problems.push(`no metric of the expression has label ${l}`);
    }
  }
  return problems;
}

export interface Panel {
  id?: number;
  type: string;
  title?: string;
  gridPos?: { x: number; y: number; w: number; h: number };
  datasource?: { type?: string; uid?: string };
  targets?: Array<{ expr?: string; refId?: string; datasource?: { type?: string; uid?: string } }>;
  panels?: Panel[];
}

export interface Dashboard {
  uid: string;
  title: string;
  panels: Panel[];
  templating: { list: Array<{ name: string; type: string; query?: string | { query?: string } }> };
}

export const DASHBOARD_PATH = fileURLToPath(new URL('../../deploy/grafana/mqgate.json', import.meta.url));
export const RULES_PATH = fileURLToPath(new URL('../../deploy/prometheus/mqgate-rules.yml', import.meta.url));
export const RULES_TEST_PATH = fileURLToPath(
  new URL('../../deploy/prometheus/mqgate-rules.test.yml', import.meta.url),
);

export function loadDashboard(): Dashboard {
  return JSON.parse(readFileSync(DASHBOARD_PATH, 'utf8')) as Dashboard;
}

/** Panels, rows' nested panels included. */
export function allPanels(panels: Panel[]): Panel[] {
  return panels.flatMap((p) => [p, ...allPanels(p.panels ?? [])]);
}

/** Every PromQL expression of the dashboard (panel targets, template-variable selectors). */
export function dashboardExpressions(d: Dashboard): Array<{ where: string; expr: string }> {
  const out: Array<{ where: string; expr: string }> = [];
  for (const p of allPanels(d.panels)) {
    for (const t of p.targets ?? []) {
      if (t.expr !== undefined) out.push({ where: `panel "${p.title}" ${t.refId}`, expr: t.expr });
    }
  }
  for (const v of d.templating.list) {
    if (v.type !== 'query') continue;
    const q = typeof v.query === 'string' ? v.query : v.query?.query;
    if (!q) continue;
    // label_values(<selector>, <label>): the selector is PromQL.
    const lv = /^label_values\((.*),\s*(\w+)\s*\)$/.exec(q);
    out.push({ where: `variable $${v.name}`, expr: lv ? (lv[1] as string) : q });
  }
  return out;
}
