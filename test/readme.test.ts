// The README's example must run as printed: its two code blocks are written to a scratch
// directory (importing this build instead of the published name) and main.mjs is run.
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
