// The README's example must run as printed: its two code blocks are written to a scratch
// directory (importing this build instead of the published name) and main.mjs is run. And
// the benchmark figures it quotes must be those of the committed results it names.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { expect, it } from 'vitest';

const root = join(import.meta.dirname, '..');

it('the README example runs and ring equals single-device attention', () => {
  const readme = readFileSync(join(root, 'README.md'), 'utf8');
  const blocks = [...readme.matchAll(/`(\w+\.mjs)`[^\n]*\n\n```js\n([\s\S]*?)```/g)];
  expect(blocks.map((b) => b[1])).toEqual(['rank.mjs', 'main.mjs']);
  const dir = mkdtempSync(join(tmpdir(), 'ring-attention-readme-'));
  try {
    const dist = pathToFileURL(join(root, 'dist', 'index.js')).href;
    for (const [, name, code] of blocks) writeFileSync(join(dir, name!), code!.replaceAll("'ring-attention'", `'${dist}'`));
    const printed = execFileSync(process.execPath, [join(dir, 'main.mjs')], { encoding: 'utf8' });
    const diff = Number(printed.match(/max \|ring - single device\| = (\S+)/)![1]);
    expect(diff).toBeLessThan(1e-5);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

it("the README's benchmark figures are those of the committed results it names", () => {
  const readme = readFileSync(join(root, 'README.md'), 'utf8');
  const results = join(root, 'bench', 'results');
  // Every result named (a file, or a * for every suite) exists as JSON, CSV and SVG.
  const named = [...readme.matchAll(/bench\/results\/([\w*.-]+?)\.(?:\*|svg)/g)];
  expect(named.length).toBeGreaterThan(5); // the pattern still finds the README's references
  for (const [, stem] of named) {
    const stems = stem!.startsWith('*') ? ['attention', 'memory', 'mfu', 'ring'].map((s) => s + stem!.slice(1)) : [stem!];
    for (const s of stems) for (const ext of ['json', 'csv', 'svg']) expect(() => readFileSync(join(results, `${s}.${ext}`)), `${s}.${ext}`).not.toThrow();
  }
  // The memory table and the vectors per token per layer quoted beside it.
  const memory = JSON.parse(readFileSync(join(results, 'memory-cpu-2026-12-02-055bf08.json'), 'utf8')) as {
    rows: { context: number; checkpoint: boolean; activationBytes: number }[]; notes: string[];
  };
  const mib = (context: number, checkpoint: boolean) =>
    (memory.rows.find((r) => r.context === context && r.checkpoint === checkpoint)!.activationBytes / 2 ** 20).toFixed(1);
  const table = [...readme.matchAll(/^\| (\d+) \| ([\d.]+) \| ([\d.]+) \|$/gm)];
  expect(table.length).toBe(4);
  for (const [, context, on, off] of table) expect([on, off], `context ${context}`).toEqual([mib(Number(context), true), mib(Number(context), false)]);
  const [, perTokenOn, vectorsOn, perTokenOff, vectorsOff] = readme.match(/([\d.]+) KiB per token with checkpointing, ([\d.]+) hidden-sized[\s\S]*?against ([\d.]+) KiB and ([\d.]+) vectors without/)!;
  expect(memory.notes[0]).toContain(`${perTokenOn} KiB x context`);
  expect(memory.notes[0]).toContain(`${vectorsOn} float32 hidden vectors`);
  expect(memory.notes[1]).toContain(`${perTokenOff} KiB x context`);
  expect(memory.notes[1]).toContain(`${vectorsOff} float32 hidden vectors`);
});
