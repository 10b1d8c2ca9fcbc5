// binding.gyp builds the CPU-only addon with node-gyp, for machines without CMake or CUDA.
// It builds in a scratch copy so the project's own build/ is untouched, then loads the
// result and checks one attention call. Slow (a full compile), so it runs once.
import { execFileSync } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

const root = join(import.meta.dirname, '..');
// npm puts its own node-gyp in npm_config_node_gyp when it runs a script (npm test).
const nodeGyp = process.env.npm_config_node_gyp;

describe.skipIf(!nodeGyp)(nodeGyp ? 'node-gyp build' : 'node-gyp build (skipped: run through npm test, which provides node-gyp)', () => {
  it('compiles binding.gyp into a working CPU-only addon', () => {
    const dir = mkdtempSync(join(tmpdir(), 'ring-attention-gyp-'));
    try {
      for (const f of ['binding.gyp', 'native', 'package.json']) cpSync(join(root, f), join(dir, f), { recursive: true });
      symlinkSync(join(root, 'node_modules'), join(dir, 'node_modules'));
      execFileSync(process.execPath, [nodeGyp!, 'rebuild', '--jobs', 'max'], { cwd: dir, stdio: 'pipe' });
      const binary = join(dir, 'build', 'Release', 'ring_attention.node');
      expect(existsSync(binary)).toBe(true);
      const addon = createRequire(import.meta.url)(binary);
      expect(addon.cudaInfo().compiled).toBe(false);
      const one = addon.createTensor(new Float32Array([1, 2, 3, 4]), [1, 1, 1, 4], 0, 0);
      const [out, lse] = addon.attentionForward(one, one, one, false, 0.5);
      expect(Array.from(out.toFloat32Array())).toEqual([1, 2, 3, 4]); // one key: the output is v
      expect(lse.toFloat32Array()[0]).toBeCloseTo(15, 5); // (1+4+9+16) * 0.5
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 600_000);
});
