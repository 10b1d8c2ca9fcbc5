// Source builds on machines CI is not: linux-arm64 (GH200, GB200, DGX Spark) and Ubuntu 22.04,
// whose GCC 11 is older than ours. The float16 conversions, written out in native/common.h
// because those compilers lack _Float16 in C++, must give _Float16's bits (here, where the
// compiler has it). Where a cross or older compiler is installed (Debian: g++-aarch64-linux-gnu,
// g++-11), every source of the CPU-only build (binding.gyp's list, the same C++ the CMake build
// adds CUDA to) must compile with it without a warning; where qemu-aarch64 is too, the
// conversions must give the same bits on AArch64. Skipped, with the reason in the title, without
// those tools.
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

const root = join(import.meta.dirname, '..');
const has = (tool: string) => spawnSync(tool, ['--version'], { stdio: 'ignore' }).status === 0;
const dir = mkdtempSync(join(tmpdir(), 'ra-portability-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const check = join(root, 'test', 'fixtures', 'f16-check.cpp');

function run(cmd: string, args: string[]): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const p = spawn(cmd, args, { cwd: root });
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (out += d));
    p.on('close', (code) => resolve({ code, out }));
  });
}

// The conversions' hash on this machine, and how many results differ from _Float16's.
let here: Promise<{ hash: string; mismatches: number; out: string }> | undefined;
function checkHere() {
  here ??= (async () => {
    const built = await run('c++', ['-std=c++17', '-O2', '-DRA_COMPARE_FLOAT16', check, '-o', join(dir, 'f16-here')]);
    expect(built.code, built.out).toBe(0);
    const r = await run(join(dir, 'f16-here'), []);
    const m = /hash ([0-9a-f]{16}) mismatches (\d+)\n$/.exec(r.out);
    expect(m, r.out).not.toBeNull();
    return { hash: m![1]!, mismatches: Number(m![2]), out: r.out };
  })();
  return here;
}

// GCC 11 and Clang before 15 have no _Float16 in C++ on x86: then there is nothing to compare with.
const float16 = spawnSync('c++', ['-std=c++17', '-x', 'c++', '-fsyntax-only', '-'], { input: '_Float16 h;' }).status === 0;
it.skipIf(!float16)(float16 ? "float16 conversions give _Float16's bits: every half, every 97th float, the rounding edges"
  : "float16 conversions against _Float16 (skipped: this machine's c++ has no _Float16)", async () => {
  const r = await checkHere();
  expect(r.mismatches, r.out).toBe(0);
}, 120_000);

const compilers = [
  ['aarch64-linux-gnu-g++', 'AArch64 (linux-arm64)'],
  ['g++-11', "GCC 11 (Ubuntu 22.04's)"],
] as const;
for (const [cc, what] of compilers) {
  const found = has(cc);
  describe.skipIf(!found)(found ? `${what} build` : `${what} build (skipped: ${cc} not found)`, () => {
    it(`every source of the CPU-only build compiles with ${cc} without a warning`, async () => {
      const gyp = readFileSync(join(root, 'binding.gyp'), 'utf8');
      const sources = JSON.parse(gyp.replace(/#.*$/gm, '')).targets[0].sources as string[];
      expect(sources.length).toBeGreaterThan(15);
      const flags = ['-std=c++17', '-fsyntax-only', '-Wall', '-Wextra', '-Wno-unused-parameter', '-DNAPI_VERSION=8', '-DNAPI_CPP_EXCEPTIONS',
        '-DNODE_API_SWALLOW_UNTHROWABLE_EXCEPTIONS', '-I', join(root, 'node_modules', 'node-api-headers', 'include'),
        '-I', join(root, 'node_modules', 'node-addon-api')];
      for (let i = 0; i < sources.length; i += 2) {  // two at a time: CI has two cores
        const results = await Promise.all(sources.slice(i, i + 2).map((s) => run(cc, [...flags, s])));
        for (const [j, r] of results.entries()) expect(r.out, sources[i + j]).toBe('');
        for (const [j, r] of results.entries()) expect(r.code, sources[i + j]).toBe(0);
      }
    }, 300_000);
  });
}

const qemu = float16 && has('aarch64-linux-gnu-g++') && has('qemu-aarch64');
it.skipIf(!qemu)(qemu ? 'float16 conversions give the same bits on AArch64 (under qemu-aarch64)'
  : 'float16 conversions on AArch64 (skipped: aarch64-linux-gnu-g++, qemu-aarch64 or _Float16 here not found)', async () => {
  const built = await run('aarch64-linux-gnu-g++', ['-std=c++17', '-O2', '-static', check, '-o', join(dir, 'f16-arm64')]);
  expect(built.code, built.out).toBe(0);
  const arm = await run('qemu-aarch64', [join(dir, 'f16-arm64')]);
  expect(arm.out).toBe(`hash ${(await checkHere()).hash} mismatches 0\n`);
}, 300_000);
