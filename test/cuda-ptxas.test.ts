// The Hopper kernels' instantiations (native/cuda/flash/inst/{fwd,bwd}_sm90_*.cu), compiled
// for sm_90a with ptxas's report: none of the advisories (C75xx) by which ptxas says it
// serialised the wgmma batches or injected waits because ordinary instructions touch their
// registers, which would make the kernels slow, or, for a register touched between
// wgmma.fence and the wait, undefined; and no register spills (the backward at head dim 128
// holds dK and dV, 128 registers a thread, beside S^T and dP^T: it fits 255 only in the order
// it computes them). The default forward at head dims 64 and 128 without spills either. Also
// that the GPU session's unit check of wgmma builds, and that AdamW's kernels leave no
// rounding to nvcc's contraction. Skipped, with the reason in the title, without nvcc.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

const root = join(import.meta.dirname, '..');
const nvcc = spawnSync('nvcc', ['--version']).status === 0 ? 'nvcc' : existsSync('/usr/local/cuda/bin/nvcc') ? '/usr/local/cuda/bin/nvcc' : '';
const dir = mkdtempSync(join(tmpdir(), 'ra-ptxas-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const inst = join(root, 'native', 'cuda', 'flash', 'inst');
const files = readdirSync(inst).filter((f) => f.includes('_sm90_'));

function compile(file: string, arch = '90a'): Promise<string> {
  const args = ['-std=c++17', '-O3', '--expt-relaxed-constexpr', '-gencode', `arch=compute_${arch},code=sm_${arch}`, '-Xptxas', '-v',
    '-c', join(inst, file), '-o', join(dir, `${file}-${arch}.o`)];
  return new Promise((resolve, reject) => {
    const p = spawn(nvcc, args);
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (out += d));
    p.on('close', (code) => (code === 0 ? resolve(out) : reject(new Error(`nvcc ${file} failed:\n${out}`))));
  });
}

describe.skipIf(!nvcc)(nvcc ? 'Hopper kernels: ptxas report' : 'Hopper kernels: ptxas report (skipped: nvcc not found)', () => {
  it(`all ${files.length} instantiations compile for sm_90a without wgmma advisories or spills`, async () => {
    expect(files.length).toBe(16);  // {fwd, bwd} x {bf16, fp16} x {64, 128} x {causal, not}
    for (let i = 0; i < files.length; i += 2) {  // two at a time: CI has two cores
      const reports = await Promise.all(files.slice(i, i + 2).map((f) => compile(f)));
      for (const [j, r] of reports.entries()) {
        const file = files[i + j]!;
        expect(r.match(/\(C75\d\d\)[^\n]*/g) ?? [], file).toEqual([]);
        const spills = [...r.matchAll(/(\d+) bytes spill stores/g)].map((m) => Number(m[1]));
        expect(spills.length, file).toBeGreaterThan(0);
        expect(Math.max(...spills), file).toBe(0);
      }
    }
  }, 600_000);

  it('the default forward at head dims 64 and 128 (two row tiles a warp, up to 255 registers) compiles for sm_90a and sm_80 without spills', async () => {
    const fwd: [string, string][] = [['fwd_bf16_hdim64.cu', '90a'], ['fwd_bf16_hdim64_causal.cu', '90a'], ['fwd_bf16_hdim128.cu', '90a'],
      ['fwd_bf16_hdim128_causal.cu', '90a'], ['fwd_fp16_hdim128_causal.cu', '90a'], ['fwd_fp16_hdim128_causal.cu', '80']];
    for (let i = 0; i < fwd.length; i += 2) {
      const reports = await Promise.all(fwd.slice(i, i + 2).map(([f, a]) => compile(f, a)));
      for (const [j, r] of reports.entries()) {
        const what = fwd[i + j]!.join(' sm_');
        const spills = [...r.matchAll(/(\d+) bytes spill stores/g)].map((m) => Number(m[1]));
        expect(spills.length, what).toBeGreaterThan(0);
        expect(Math.max(...spills), what).toBe(0);
      }
    }
  }, 600_000);

  it("AdamW's kernels (single and multi-tensor) write every rounding out, so that FMA contraction cannot tell them apart", () => {
    // Both call adamw_update; they give the same bits only if nvcc contracts nothing in it, which
    // differs from one surrounding loop to another. Contraction off (--fmad=false) must change
    // neither kernel's float operations, and no plain mul/add/sub may be left for ptxas to fuse.
    const ops = (fmad: boolean) => {
      const ptx = join(dir, `optim-${fmad}.ptx`);
      const r = spawnSync(nvcc, ['-std=c++17', '-O3', '--expt-relaxed-constexpr', '-arch=sm_90a', '-ptx', `--fmad=${fmad}`,
        join(root, 'native', 'cuda', 'ops', 'optim.cu'), '-o', ptx], { encoding: 'utf8' });
      expect(r.status, r.stderr).toBe(0);
      const entries = readFileSync(ptx, 'utf8').split(/^\.visible \.entry /m).slice(1).filter((e) => /^\w*adamw/.test(e));
      expect(entries.length).toBe(2);
      return entries.map((e) => e.match(/\b(mul|add|sub|fma|div|sqrt)\.[a-z0-9.]*f32\b/g) ?? []);
    };
    const contracted = ops(true), not = ops(false);
    for (const [i, k] of contracted.entries()) {
      expect(k.filter((op) => op.startsWith('fma')).length).toBeGreaterThanOrEqual(3);
      expect(k.filter((op) => /^(mul|add|sub)\.f32$/.test(op))).toEqual([]);
      expect(k).toEqual(not[i]);
    }
  }, 300_000);

  it("test/gpu/wgmma_unit.cu (the GPU session's check of each wgmma form, a swizzled TMA tile and bulk reductions) builds", () => {
    const r = spawnSync(nvcc, ['-std=c++17', '-O2', '-gencode', 'arch=compute_90a,code=sm_90a', `-I${root}`,
      join(root, 'test', 'gpu', 'wgmma_unit.cu'),
      join(root, 'native', 'cuda', 'flash', 'tma_map.cu'), '-o', join(dir, 'wgmma-unit')], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
  }, 300_000);
});
