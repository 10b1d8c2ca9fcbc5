// The CUDA training-op kernels (native/cuda/ops/*.cuh) on the CPU emulator of
// test/flash-emulator/shim.h (CI has no GPU): each kernel, unmodified and through its own
// launch function, against a float64 reference over ragged shapes, float32 and bfloat16,
// under AddressSanitizer and UndefinedBehaviorSanitizer. Skipped, with the reason in the title, where g++ or x86-64 is missing.
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { arch, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('..', import.meta.url));
const gxx = spawnSync('g++', ['--version']).status === 0;
const why = arch() !== 'x64' ? `the emulator's fiber switch is x86-64 only, this is ${arch()}` : !gxx ? 'g++ not found' : '';
const dir = mkdtempSync(join(tmpdir(), 'ra-ops-emu-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function build(): string {
  const exe = join(dir, 'ops-emu');
  const args = ['-std=c++20', '-O2', '-DRA_FLASH_EMULATOR', `-I${root}`, `-I${join(root, 'test', 'flash-emulator')}`,
    join(root, 'test', 'ops-emulator', 'test.cpp'), '-o', exe];
  // UndefinedBehaviorSanitizer too (it found a memcmp on null in this test once); each where the
  // toolchain has it. (The attention emulator runs under AddressSanitizer alone: with UBSan too,
  // one of its two modes took about 17 minutes on the 2-core machine, beside other jobs.)
  let r = spawnSync('g++', ['-fsanitize=address,undefined', '-fno-sanitize-recover=undefined', ...args], { encoding: 'utf8' });
  if (r.status !== 0) r = spawnSync('g++', ['-fsanitize=address', ...args], { encoding: 'utf8' });
  if (r.status !== 0) r = spawnSync('g++', args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`building the emulator failed:\n${r.stderr}`);
  return exe;
}

function run(exe: string): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const p = spawn(exe, [], { env: { ...process.env, ASAN_OPTIONS: 'detect_stack_use_after_return=0:detect_leaks=0' } });
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (out += d));
    p.on('close', (code) => resolve({ code, out }));
  });
}

describe.skipIf(!!why)(why ? `CUDA op kernels on the CPU emulator (skipped: ${why})` : 'CUDA op kernels on the CPU emulator', () => {
  it('embedding, rmsNorm, rope, swiglu, cross-entropy rows, adamw, sumOfSquares, scale, add equal float64; the multi-tensor adamw equals adamw bit for bit; staging ring placement', async () => {
    const r = await run(build());
    expect(r.out).toMatch(/^0 failures$/m);
    expect(r.out.match(/^ {2}ok {3}adamw multi /gm)?.length).toBe(2);
    expect(r.out).not.toMatch(/FAIL|EMU|runtime error:|ERROR: AddressSanitizer/);
    expect(r.code).toBe(0);
    expect(r.out.match(/^ {2}ok /gm)?.length ?? 0).toBeGreaterThanOrEqual(220);
  }, 600_000);
});
