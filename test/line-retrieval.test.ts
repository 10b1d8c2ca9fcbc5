// examples/line-retrieval.mjs runs end to end with tiny settings (2 ranks, ring attention, 2
// sequences per step), prints its header, one line per evaluation and the final accuracy,
// and exits 0; bad options exit 2 naming the option.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

import { describe, expect, it } from 'vitest';

const script = fileURLToPath(new URL('../examples/line-retrieval.mjs', import.meta.url));
const run = (...args: string[]) => spawnSync(process.execPath, [script, ...args], { encoding: 'utf8', timeout: 60_000 });

describe('examples/line-retrieval.mjs', () => {
  it('trains a few steps over 2 ranks and prints loss and retrieval accuracy (plain lines off a TTY)', () => {
    const r = run('--steps', '6', '--batch', '2', '--ranks', '2', '--lines', '3', '--eval-every', '3', '--eval-sequences', '2', '--layout', 'contiguous');
    expect(r.status, r.stderr).toBe(0);
    const lines = r.stdout.trim().split('\n');
    expect(lines[0]).toMatch(/^line retrieval: 3 lines \+ 3 questions = 20 tokens per sequence, 2 per step \(packed\), 2 ranks \(contiguous\)/);
    const evals = lines.filter((l) => l.startsWith('step '));
    expect(evals).toHaveLength(2);
    for (const [i, l] of evals.entries())
      expect(l).toMatch(new RegExp(`^step ${3 * (i + 1)}/6  train loss \\d+\\.\\d{4}  eval loss \\d+\\.\\d{4}  retrieval accuracy \\d+\\.\\d%  \\(\\d+\\.\\d s\\)$`));
    expect(lines.at(-1)).toMatch(/^final retrieval accuracy \d+\.\d% on 6 questions$/);
    expect(r.stdout).not.toContain('\r'); // no progress bar when stdout is not a TTY
  });

  it('--accumulate: the sequences of a step as micro-batches instead of packed, with the same losses', () => {
    const common = ['--steps', '4', '--batch', '2', '--ranks', '2', '--lines', '3', '--eval-every', '4', '--eval-sequences', '1'];
    const [packed, apart] = [run(...common), run(...common, '--accumulate')];
    for (const r of [packed, apart]) expect(r.status, r.stderr).toBe(0);
    expect(apart.stdout).toMatch(/2 per step, 2 ranks/);
    const losses = (out: string) => /train loss (\d+\.\d{4})  eval loss (\d+\.\d{4})/.exec(out)!.slice(1).map(Number);
    // one computation laid out two ways: equal up to the printed digits
    losses(apart.stdout).forEach((l, i) => expect(Math.abs(l - losses(packed.stdout)[i]!)).toBeLessThanOrEqual(1e-4 + 1e-12));
  });

  it('refuses bad options with exit code 2', () => {
    const r = run('--layout', 'ring');
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/--layout: expected 'contiguous' or 'zigzag', got 'ring'/);
    expect(run('--steps', '0').stderr).toMatch(/--steps: expected an integer >= 1/);
    expect(run('--batch', '0').stderr).toMatch(/--batch: expected an integer >= 1/);
    // one rank of a job of processes (as ring-attention launch starts it): GPUs only
    const rank = spawnSync(process.execPath, [script, '--steps', '1'], { encoding: 'utf8', timeout: 60_000, env: { ...process.env, WORLD_SIZE: '2', RANK: '0' } });
    expect(rank.status).toBe(2);
    expect(rank.stderr).toMatch(/^--device: a job of processes \(WORLD_SIZE is set\) trains on GPUs, one each: pass --device cuda/);
  });
});
