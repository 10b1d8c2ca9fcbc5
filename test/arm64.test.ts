// linux-arm64 (GH200, GB200, DGX Spark) installs build from source, which no CI machine here
// runs natively. Where an AArch64 cross compiler is installed (Debian: g++-aarch64-linux-gnu),
// every source of the CPU-only build (binding.gyp's list, the same C++ the CMake build adds CUDA
// to) must compile for AArch64 without a warning; and where qemu-aarch64 is too, the float16
// conversions (AArch64's __fp16 there, _Float16 here) must give the same bits. Skipped, with
// the reason in the title, without those tools.
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

const root = join(import.meta.dirname, '..');
const cross = 'aarch64-linux-gnu-g++';
const has = (tool: string) => spawnSync(tool, ['--version'], { stdio: 'ignore' }).status === 0;
const hasCross = has(cross), hasQemu = hasCross && has('qemu-aarch64');
const dir = mkdtempSync(join(tmpdir(), 'ra-arm64-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function run(cmd: string, args: string[]): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const p = spawn(cmd, args, { cwd: root });
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (out += d));
    p.on('close', (code) => resolve({ code, out }));
  });
}

describe.skipIf(!hasCross)(hasCross ? 'AArch64 build' : `AArch64 build (skipped: ${cross} not found)`, () => {
  it('every source of the CPU-only build compiles for AArch64 without a warning', async () => {
    const gyp = readFileSync(join(root, 'binding.gyp'), 'utf8');
    const sources = JSON.parse(gyp.replace(/#.*$/gm, '')).targets[0].sources as string[];
    expect(sources.length).toBeGreaterThan(15);
    const flags = ['-std=c++17', '-fsyntax-only', '-Wall', '-Wextra', '-Wno-unused-parameter', '-DNAPI_VERSION=8', '-DNAPI_CPP_EXCEPTIONS',
      '-DNODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS', '-I', join(root, 'node_modules', 'node-api-headers', 'include'),
      '-I', join(root, 'node_modules', 'node-addon-api')];
    for (let i = 0; i < sources.length; i += 2) {  // two at a time: CI has two cores
      const results = await Promise.all(sources.slice(i, i + 2).map((s) => run(cross, [...flags, s])));
      for (const [j, r] of results.entries()) expect(r.out, sources[i + j]).toBe('');
      for (const [j, r] of results.entries()) expect(r.code, sources[i + j]).toBe(0);
    }
  }, 300_000);

  it.skipIf(!hasQemu)(hasQemu ? "float16 conversions give the same bits on AArch64 (__fp16) as here (_Float16)"
    : 'float16 conversions on AArch64 (skipped: qemu-aarch64 not found)', async () => {
    const src = join(root, 'test', 'fixtures', 'f16-hash.cpp');
    const [arm, here] = await Promise.all([
      run(cross, ['-std=c++17', '-O2', '-static', src, '-o', join(dir, 'f16-arm64')]),
      run('c++', ['-std=c++17', '-O2', src, '-o', join(dir, 'f16-here')]),
    ]);
    expect(arm.code, arm.out).toBe(0);
    expect(here.code, here.out).toBe(0);
    const a = await run('qemu-aarch64', [join(dir, 'f16-arm64')]), h = await run(join(dir, 'f16-here'), []);
    expect(h.out).toMatch(/^halves [0-9a-f]{16} floats [0-9a-f]{16}\n$/);
    expect(a.out).toBe(h.out);
  }, 300_000);
});
