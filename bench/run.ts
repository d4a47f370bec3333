/**
 * `npm run bench [-- name...]`: runs the named benches, or every registered one. To add a
 * bench, write `bench/<name>.ts` exporting a BenchModule and add one line below.
 */
import type { BenchModule } from './lib/results.js';

const BENCHES: Record<string, () => Promise<BenchModule>> = {
  publish: () => import('./publish.js'),
  consume: () => import('./consume.js'),
  ceiling: () => import('./ceiling.js'),
  lanes: () => import('./lanes.js'),
  hostile: () => import('./hostile.js'),
  sdk: () => import('./sdk.js'),
  holding: () => import('./holding.js'),
};

async function main(): Promise<number> {
  // Names come first; anything from the first `--option` on belongs to the benches (e.g. --broker kafka).
  const rest = process.argv.slice(2).filter((a) => a !== '--');
  const firstOption = rest.findIndex((a) => a.startsWith('--') && a !== '--list' && a !== '--help');
  const args = firstOption < 0 ? rest : rest.slice(0, firstOption);
  const names = Object.keys(BENCHES);
  if (args.includes('--list') || args.includes('--help')) {
    for (const name of names)
      console.log(`${name}\t${(await (BENCHES[name] as () => Promise<BenchModule>)()).description}`);
    return 0;
  }
  const chosen = args.length > 0 ? args : names;
  const unknown = chosen.filter((n) => !(n in BENCHES));
  if (unknown.length > 0) {
    console.error(`unknown bench ${unknown.map((n) => `"${n}"`).join(', ')}; available: ${names.join(', ')}`);
    return 2;
  }
  for (const name of chosen) {
    const load = BENCHES[name] as () => Promise<BenchModule>;
    const bench = await load();
    console.log(`\n== ${name}: ${bench.description}`);
    const t0 = performance.now();
    await bench.run();
    console.log(`== ${name} done in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  }
  return 0;
}

process.exitCode = await main();
