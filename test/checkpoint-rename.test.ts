// saveCheckpoint's last stage, the renames of its .partial files, failing part-way: the error
// reaches the caller, no .partial file is left, and a restore refuses what is there (files of
// two saves) and changes nothing. The failure is injected into node:fs/promises' rename.
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, describe, expect, it, vi } from 'vitest';

import { createTrainer, initLlama, llamaPresets } from '../dist/index.js';

const injected = vi.hoisted(() => ({ failOn: null as string | null }));
vi.mock('node:fs/promises', async (original) => {
  const fs = await original<typeof import('node:fs/promises')>();
  const rename = async (from: string, to: string) => {
    if (injected.failOn && String(from).endsWith(injected.failOn)) throw Object.assign(new Error(`EIO: injected, rename '${from}'`), { code: 'EIO' });
    return fs.rename(from, to);
  };
  return { ...fs, rename, default: { ...fs, rename } };
});

const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

describe('saveCheckpoint: a rename that fails part-way', () => {
  it('throws its error, leaves no partial file, and what is left is refused by a restore that changes nothing', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ra-rename-'));
    dirs.push(dir);
    const ck = join(dir, 'ck');
    const tokens = Int32Array.from({ length: 16 }, (_, i) => (i * 7) % 256), targets = Int32Array.from(tokens, (t) => (t + 1) % 256);
    using model = initLlama(llamaPresets.tiny, { seed: 3 });
    using trainer = createTrainer(model, { lr: 1e-2 });
    trainer.step(tokens, targets);
    await trainer.saveCheckpoint(ck);
    trainer.step(tokens, targets);
    // config.json, model.safetensors and optimizer.safetensors are renamed first; trainer.json's rename fails.
    injected.failOn = 'trainer.json.partial';
    try {
      await expect(trainer.saveCheckpoint(ck)).rejects.toThrow(/EIO: injected, rename '.*trainer\.json\.partial'/);
    } finally {
      injected.failOn = null;
    }
    expect((await readdir(ck)).sort()).toEqual(['config.json', 'model.safetensors', 'optimizer.safetensors', 'trainer.json']);
    using other = initLlama(llamaPresets.tiny, { seed: 4 });
    using restorer = createTrainer(other, { lr: 1e-2 });
    const before = other.toArrays().get('lm_head.weight')!;
    await expect(restorer.restoreCheckpoint(ck)).rejects.toThrow(/model\.safetensors: written by another save than trainer\.json \(save .*\); was a save interrupted\?/);
    expect(restorer.stepCount).toBe(0);
    expect(Buffer.compare(Buffer.from(other.toArrays().get('lm_head.weight')!.buffer), Buffer.from(before.buffer))).toBe(0);
    // The trainer still works, and its next save lands whole.
    await trainer.saveCheckpoint(ck);
    await restorer.restoreCheckpoint(ck);
    expect(restorer.stepCount).toBe(2);
  });
});
