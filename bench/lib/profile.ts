/**
 * Summarises a V8 .cpuprofile (from `node --cpu-prof`): self time by function and by file, as a
 * percentage of all samples. `tsx bench/lib/profile.ts <file.cpuprofile> [top]` prints it.
 */
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}

interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
}

export interface HotSpot {
  name: string;
  percent: number;
}

export function summarizeProfile(path: string, top = 25): { functions: HotSpot[]; files: HotSpot[] } {
  const profile = JSON.parse(readFileSync(path, 'utf8')) as CpuProfile;
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const selfCount = new Map<number, number>();
  for (const id of profile.samples) selfCount.set(id, (selfCount.get(id) ?? 0) + 1);
  const total = profile.samples.length;
  const fn = new Map<string, number>();
  const file = new Map<string, number>();
  for (const [id, n] of selfCount) {
    const node = byId.get(id);
    if (!node) continue;
    const url = node.callFrame.url.replace(/^file:\/\//, '').replace(/^.*\/(node_modules|dist)\//, '$1/');
    const fname = node.callFrame.functionName || '(anonymous)';
    const key = `${url || '(native)'}:${fname}:${node.callFrame.lineNumber + 1}`;
    fn.set(key, (fn.get(key) ?? 0) + n);
    const fileKey = url || `(${fname})`;
    file.set(fileKey, (file.get(fileKey) ?? 0) + n);
  }
  const list = (m: Map<string, number>): HotSpot[] =>
    [...m]
      .sort((a, b) => b[1] - a[1])
      .slice(0, top)
      .map(([name, n]) => ({ name, percent: Math.round((n / total) * 1000) / 10 }));
  return { functions: list(fn), files: list(file) };
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const path = process.argv[2];
  if (!path) {
    console.error('usage: tsx bench/lib/profile.ts <file.cpuprofile> [top]');
    process.exit(2);
  }
  const { functions, files } = summarizeProfile(path, Number(process.argv[3] ?? 25));
  console.log('self time by function:');
  for (const h of functions) console.log(`${String(h.percent).padStart(5)}%  ${h.name}`);
  console.log('\nself time by file:');
  for (const h of files) console.log(`${String(h.percent).padStart(5)}%  ${h.name}`);
}
