/**
 * The README runs: every code block marked `runnable` (```sh runnable, ```ts runnable) is
 * executed against a gateway on memory://, so a snippet that stops working fails CI. Shell
 * blocks run line by line through bash with `npx mqgate` (the built CLI) pointed at the test
 * gateway (MQGATE_GRPC) and `localhost:8080` rewritten to its HTTP port; TypeScript blocks run
 * through tsx from a folder inside the package (so `import ... from 'mqgate'` resolves to the
 * built package), with `127.0.0.1:50051` rewritten to the test gateway. A `// prints: X` comment
 * in a TypeScript block must appear in its output. Needs the built dist/.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { type ChildGateway, startChildGateway } from '../support/child-gateway.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const RUN_DIR = join(ROOT, '.readme-run');

interface Block {
  lang: 'sh' | 'ts';
  code: string;
  line: number;
}

function runnableBlocks(markdown: string): Block[] {
  const blocks: Block[] = [];
  const re = /^```(sh|ts) runnable\n([\s\S]*?)^```$/gm;
  for (let m = re.exec(markdown); m !== null; m = re.exec(markdown)) {
    blocks.push({
      lang: m[1] as 'sh' | 'ts',
      code: m[2] as string,
      line: markdown.slice(0, m.index).split('\n').length,
    });
  }
  return blocks;
}

const blocks = runnableBlocks(readFileSync(join(ROOT, 'README.md'), 'utf8'));

describe('README snippets run as written', () => {
  let gw: ChildGateway;
  before(async () => {
    assert.ok(existsSync(join(ROOT, 'dist', 'cli.js')), 'dist/ is missing: run npm run build first');
    gw = await startChildGateway({ BROKERS: 'memory://' });
    mkdirSync(RUN_DIR, { recursive: true });
  });
  after(async () => {
    gw.kill('SIGTERM');
    await gw.exited;
    rmSync(RUN_DIR, { recursive: true, force: true });
  });

  test('the README has runnable blocks of both kinds', () => {
    assert.ok(blocks.some((b) => b.lang === 'sh'));
    assert.ok(blocks.some((b) => b.lang === 'ts'));
  });

  for (const block of blocks) {
    test(`${block.lang} block at README.md line ${block.line}`, () => {
      const env = { ...process.env, MQGATE_GRPC: `127.0.0.1:${gw.grpcPort}` };
      if (block.lang === 'sh') {
        for (const raw of block.code.split('\n')) {
          const line = raw.trim();
          if (line === '' || line.startsWith('#')) continue;
          const command = line.replace(/localhost:8080|127\.0\.0\.1:8080/g, `127.0.0.1:${gw.metricsPort}`);
          const r = spawnSync('bash', ['-o', 'pipefail', '-c', command], {
            cwd: ROOT,
            env,
            encoding: 'utf8',
            timeout: 60_000,
          });
          assert.equal(r.status, 0, `"${line}" failed (exit ${r.status}):\n${r.stdout}\n${r.stderr}`);
        }
        return;
      }
      const file = join(RUN_DIR, `block-${block.line}.ts`);
      writeFileSync(file, block.code.replace(/127\.0\.0\.1:50051/g, `127.0.0.1:${gw.grpcPort}`));
      const r = spawnSync(process.execPath, ['--import', 'tsx', file], {
        cwd: ROOT,
        env,
        encoding: 'utf8',
        timeout: 60_000,
      });
      assert.equal(r.status, 0, `the block failed (exit ${r.status}):\n${r.stdout}\n${r.stderr}`);
      for (const m of block.code.matchAll(/\/\/ prints: (.+)$/gm)) {
        assert.ok(
          r.stdout.includes((m[1] as string).trim()),
          `expected "${m[1]}" in the output:\n${r.stdout}`,
        );
      }
    });
  }
});
