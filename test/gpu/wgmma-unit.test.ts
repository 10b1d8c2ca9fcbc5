// The three wgmma forms of the Hopper kernels, each once at each N and in each layout they use,
// on the GPU against exact products; a K tile loaded by TMA (two swizzled boxes) against the
// tensor; and bulk reductions of shared memory into global memory (test/gpu/wgmma_unit.cu):
// checks our reading of the PTX ISA's descriptors and fragment layouts, of the driver's tensor
// maps and of the bulk reductions, on hardware, apart from the kernels. Skipped, with the reason
// in the title, without an sm_90 device or without nvcc (the GPU machine has both).
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

import { info } from '../../dist/index.js';

const root = join(import.meta.dirname, '..', '..');
const cuda = info().cuda;
const nvcc = spawnSync('nvcc', ['--version']).status === 0 ? 'nvcc' : existsSync('/usr/local/cuda/bin/nvcc') ? '/usr/local/cuda/bin/nvcc' : '';
const why = !cuda.available
  ? cuda.reason
  : cuda.devices[0]?.computeCapability !== '9.0'
    ? `the GPU is not sm_90 (compute capability ${cuda.devices[0]?.computeCapability})`
    : !nvcc ? 'nvcc not found' : '';
const dir = mkdtempSync(join(tmpdir(), 'ra-wgmma-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe.skipIf(!!why)(why ? `wgmma on the GPU (skipped: ${why})` : 'wgmma on the GPU', () => {
  it('wgmma_ss, wgmma_rs and wgmma_ss_tt give the exact products at each N and layout the kernels use; a swizzled TMA tile lands where the kernels read it; bulk reductions add rows exactly', () => {
    const exe = join(dir, 'wgmma-unit');
    const build = spawnSync(nvcc, ['-std=c++17', '-O2', '-gencode', 'arch=compute_90a,code=sm_90a', `-I${root}`,
      join(root, 'test', 'gpu', 'wgmma_unit.cu'),
      join(root, 'native', 'cuda', 'flash', 'tma_map.cu'), '-o', exe], { encoding: 'utf8', timeout: 120_000, killSignal: 'SIGKILL' });
    expect(build.signal, 'nvcc cut off at 120 s').toBeNull();
    expect(build.status, build.stderr).toBe(0);
    // Bounded: vitest's limit cannot interrupt a blocking spawnSync, so a kernel that hangs
    // (an mbarrier or bulk wait never met) would otherwise hold the whole GPU run.
    const r = spawnSync(exe, { encoding: 'utf8', timeout: 30_000, killSignal: 'SIGKILL' });
    expect(r.signal, `the unit program cut off at 30 s (a hang?); it printed: ${r.stdout}`).toBeNull();
    for (const [form, n] of [['wgmma_ss', 64], ['wgmma_rs', 64], ['wgmma_ss_tt', 64],
      ['wgmma_ss (swizzled)', 64], ['wgmma_rs (swizzled)', 64], ['wgmma_ss_tt (swizzled)', 64], ['wgmma_ss', 128], ['wgmma_rs', 128],
      ['wgmma_ss (swizzled)', 128], ['wgmma_rs (swizzled)', 128]] as const)
      expect(r.stdout).toContain(`ok N=${n}: ${form} 0 of ${64 * n} wrong`);
    expect(r.stdout).toContain('ok tma: tile of 128 x 128 (two swizzled boxes), 0 of 16384 wrong');
    expect(r.stdout).toContain('ok bulk reduce: 8 blocks x 8 rounds into a 64 x 128 matrix, 0 of 8192 wrong');
    expect(r.status, r.stdout + r.stderr).toBe(0);
  }, 180_000);
});
