// The CUDA flash-attention kernels, run on the CPU emulator in test/flash-emulator/ (CI has no
// GPU): every kernel, the Hopper ones included, against a float64 reference, under
// AddressSanitizer, with cp.async and TMA copies landing at once and, in a second run, late
// (cp.async at the wait, TMA at a random later point, so that a read before its mbarrier or a
// refill of a buffer still in use computes with the wrong bytes). Skipped, with the reason in the title, where g++ or x86-64 is missing.
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { arch, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('..', import.meta.url));
const gxx = spawnSync('g++', ['--version']).status === 0;
const why = arch() !== 'x64' ? `the emulator's fiber switch is x86-64 only, this is ${arch()}` : !gxx ? 'g++ not found' : '';
const dir = mkdtempSync(join(tmpdir(), 'ra-flash-emu-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function build(): string {
  const exe = join(dir, 'flash-emu');
  const args = ['-std=c++20', '-O2', '-DRA_FLASH_EMULATOR', `-I${root}`, `-I${join(root, 'test', 'flash-emulator')}`,
    join(root, 'test', 'flash-emulator', 'test.cpp'), '-o', exe];
  // AddressSanitizer where the toolchain has it: out-of-bounds reads become failures.
  let r = spawnSync('g++', ['-fsanitize=address', ...args], { encoding: 'utf8' });
  if (r.status !== 0) r = spawnSync('g++', args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`building the emulator failed:\n${r.stderr}`);
  return exe;
}

function run(exe: string, mode: string): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const p = spawn(exe, [mode], { env: { ...process.env, ASAN_OPTIONS: 'detect_stack_use_after_return=0:detect_leaks=0' } });
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (out += d));
    p.on('close', (code) => resolve({ code, out }));
  });
}

describe.skipIf(!!why)(why ? `CUDA kernels on the CPU emulator (skipped: ${why})` : 'CUDA kernels on the CPU emulator', () => {
  it('forward, ring merge, views at shifted offsets and backward (atomic dQ, float and float4, and deterministic; loads one tile ahead and not) equal float64 in every case; packed documents skip tiles in each kernel; the Hopper (wgmma) kernels too', async () => {
    const exe = build();
    const results = await Promise.all([run(exe, 'immediate'), run(exe, 'deferred')]);
    for (const r of results) {
      expect(r.out).toMatch(/^0 failures$/m);
      expect(r.out).not.toMatch(/FAIL|EMU/);
      expect(r.code).toBe(0);
      expect(r.out.match(/^ {2}ok /gm)?.length ?? 0).toBeGreaterThanOrEqual(134);
      // dQ's atomics both ways: four floats each (sm_90, aligned rows) and one (head dims 1, 33)
      expect(r.out).toMatch(/^dQ atomics: [1-9]\d* float4 launches, [1-9]\d* float launches$/m);
      // each backward kernel with its second buffer and without (launch.cuh picks per GPU)
      expect(r.out).toMatch(/^backward loads one tile ahead: dK\/dV [1-9]\d* launches, not [1-9]\d*; dQ [1-9]\d*, not [1-9]\d*$/m);
    }
  }, 2_400_000); // about 5 minutes alone on a 2-core machine; up to 13 beside other test files in CI, so room to spare
});
