// Which GPUs a binary's CUDA code runs on (lib/cuda-arch.ts), and which architectures a source
// build picks for the GPUs on its machine (scripts/cuda-archs.mjs).
import { spawnSync } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

import { archFor, archsRunOn, checkArchitectures, deviceProblem } from '../dist/cuda-arch.js';
import type { RawCudaInfo } from '../dist/native.js';
// @ts-expect-error: a plain ES module of the install scripts, without declarations
import { archsFor, buildVerb, detectArchs, findNvcc } from '../scripts/cuda-archs.mjs';

const root = join(import.meta.dirname, '..');
// CMakeLists.txt's release list, as the binary reports it.
const RELEASE = /set\(RING_ATTENTION_RELEASE_ARCHS ([^)]*)\)/.exec(readFileSync(join(root, 'CMakeLists.txt'), 'utf8'))![1]!.split(' ').join(',');

describe('archsRunOn', () => {
  it.each([
    ['90a', '9.0', true], ['90a', '8.0', false], ['90a', '10.0', false], ['90a', '8.9', false],
    ['80-real', '8.6', true], ['80-real', '8.7', true], ['86-real', '8.0', false], ['80-real', '9.0', false],
    ['80', '9.0', true], ['80-virtual', '12.0', true], ['90-virtual', '8.9', false],
    ['90a-virtual', '9.0', true], ['90a-virtual', '10.0', false],
    ['100f-real', '10.3', true], ['100f-real', '12.0', false], ['100f', '11.0', false],
    ['80;90a', '8.6', true], [RELEASE, '7.5', false],
    ['all', '7.0', true], ['native', '8.0', true], ['unknown', '8.0', true],
  ])('%s on compute capability %s: %s', (archs, cc, runs) => {
    expect(archsRunOn(archs, cc)).toBe(runs);
  });

  it('the release list runs on every GPU from sm_80 on', () => {
    for (const cc of ['8.0', '8.6', '8.7', '8.9', '9.0', '10.0', '10.3', '11.0', '12.0', '12.1']) expect(archsRunOn(RELEASE, cc), cc).toBe(true);
  });
});

describe('checkArchitectures', () => {
  const gpu = (name: string, computeCapability: string) => ({ name, computeCapability, totalMemory: 80e9, multiprocessors: 108 });
  const info = (architectures: string, devices: RawCudaInfo['devices']): RawCudaInfo => ({
    compiled: true, available: true, deviceCount: devices.length, driverVersion: 13000, runtimeVersion: 13000, architectures, reason: '', devices });

  it('the release list is the one CMakeLists.txt builds', () => {
    expect(RELEASE).toBe('80-real,86-real,89-real,90a-real,100-real,103-real,120-real,80-virtual');
  });

  it('marks CUDA unavailable, naming the GPU and the rebuild, when no GPU can run the code', () => {
    const r = checkArchitectures(info('90a', [gpu('NVIDIA A100-SXM4-80GB', '8.0')]));
    expect(r.available).toBe(false);
    expect(r.devices[0]!.supported).toBe(false);
    expect(r.reason).toBe("this binary's CUDA code is for 90a, and GPU 0 (NVIDIA A100-SXM4-80GB) is compute capability 8.0: " +
      'rebuild it on this machine (for 80) with RING_ATTENTION_BUILD=source npm rebuild ring-attention');
  });

  it('asks for every GPU here that the code supports, and no rebuild for GPUs older than 8.0', () => {
    const r = checkArchitectures(info('90a', [gpu('NVIDIA L40S', '8.9'), gpu('Tesla T4', '7.5'), gpu('NVIDIA A100', '8.0')]));
    expect(r.available).toBe(false);
    expect(r.reason).toContain('GPU 0 (NVIDIA L40S) is compute capability 8.9, GPU 1 (Tesla T4) is compute capability 7.5, GPU 2');
    expect(r.reason).toContain('(for 89, 80)');
    const old = checkArchitectures(info(RELEASE, [gpu('Tesla T4', '7.5')]));
    expect(old.available).toBe(false);
    expect(old.reason).toBe("GPU 0 (Tesla T4) is compute capability 7.5: this library's CUDA code needs compute capability 8.0 or newer");
  });

  it('flags a GPU that cannot run the code beside others that can, and leaves CUDA available', () => {
    const r = checkArchitectures(info(RELEASE, [gpu('NVIDIA A100', '8.0'), gpu('NVIDIA T400', '7.5'), gpu('NVIDIA A100', '8.0')]));
    expect(r.available).toBe(true);
    expect(r.reason).toBe('');
    expect(r.devices.map((d) => d.supported)).toEqual([true, false, true]);
    const hopper = checkArchitectures(info('90a', [gpu('NVIDIA H100', '9.0'), gpu('NVIDIA L40S', '8.9')]));
    expect([hopper.available, ...hopper.devices.map((d) => d.supported)]).toEqual([true, true, false]);
  });

  it('deviceProblem names a GPU that cannot run the code, and why, for tensors and process groups to refuse it', () => {
    const r = checkArchitectures(info('90a', [gpu('NVIDIA H100', '9.0'), gpu('NVIDIA L40S', '8.9'), gpu('Tesla T4', '7.5')]));
    expect(deviceProblem(r, 0)).toBeNull();
    expect(deviceProblem(r, 1)).toBe("GPU 1 (NVIDIA L40S, compute capability 8.9) cannot run it: this binary's CUDA code is for 90a; " +
      'leave it out with CUDA_VISIBLE_DEVICES');
    expect(deviceProblem(r, 2)).toContain('the CUDA code needs compute capability 8.0 or newer');
    expect(deviceProblem(r, 3)).toBeNull();  // no such GPU: CUDA's own error says so
  });

  it('leaves a report alone, beside each device supported, when every GPU runs the code or CUDA was unavailable already', () => {
    const fits = info(RELEASE, [gpu('NVIDIA A100', '8.0'), gpu('NVIDIA B200', '10.0')]);
    expect(checkArchitectures(fits)).toEqual({ ...fits, devices: fits.devices.map((d) => ({ ...d, supported: true })) });
    const none = { ...info('90a', []), available: false, reason: 'no CUDA device found' };
    expect(checkArchitectures(none)).toEqual(none);
  });

  it('archFor names 9.0 as 90a (the Hopper kernels) and others as they are', () => {
    expect(['8.0', '8.9', '9.0', '10.3', '12.0'].map(archFor)).toEqual(['80', '89', '90a', '103', '120']);
  });
});

describe('the architectures of a source build', () => {
  const cuda13 = ['sm_75', 'sm_80', 'sm_86', 'sm_87', 'sm_88', 'sm_89', 'sm_90', 'sm_100', 'sm_110', 'sm_103', 'sm_120', 'sm_121'];
  const cuda12_4 = ['sm_50', 'sm_52', 'sm_60', 'sm_70', 'sm_75', 'sm_80', 'sm_86', 'sm_87', 'sm_89', 'sm_90'];

  it('archsFor: machine code for each GPU, 9.0 as 90a, the newest below a GPU newer than nvcc; nothing below 8.0', () => {
    expect(archsFor(['8.0', '8.0', '8.9'], cuda13)).toEqual(['80', '89']);
    expect(archsFor(['9.0'], cuda13)).toEqual(['90a']);
    expect(archsFor(['12.0', '10.0'], cuda12_4)).toEqual(['90-virtual']);
    expect(archsFor(['12.1'], cuda13.filter((c) => c !== 'sm_121'))).toEqual(['120']);
    expect(archsFor(['8.0', '7.5', '7.0', 'N/A', ''], cuda13)).toEqual(['80']);
  });

  it('buildVerb: build/ is configured afresh for other architectures, another nvcc, or an nvcc where it had none', () => {
    const nvcc = '/usr/local/cuda/bin/nvcc';
    const cache = (lines: string) => `# CMakeCache\nCMAKE_BUILD_TYPE:STRING=Release\nCMAKE_CUDA_COMPILER:STRING=${nvcc}\n${lines}`;
    expect(buildVerb({ archs: undefined, cache: null, nvcc })).toBe('compile');
    expect(buildVerb({ archs: undefined, cache: cache(''), nvcc })).toBe('compile');
    expect(buildVerb({ archs: '90a', cache: cache(''), nvcc })).toBe('compile');
    expect(buildVerb({ archs: '80', cache: cache(''), nvcc })).toBe('rebuild');
    expect(buildVerb({ archs: '80', cache: cache('CMAKE_CUDA_ARCHITECTURES:STRING=80\n'), nvcc })).toBe('compile');
    expect(buildVerb({ archs: undefined, cache: cache('CMAKE_CUDA_ARCHITECTURES:UNINITIALIZED=80;86\n'), nvcc })).toBe('rebuild');
    expect(buildVerb({ archs: undefined, cache: cache('RING_ATTENTION_FAT_BINARY:UNINITIALIZED=ON\n'), nvcc })).toBe('rebuild');
    // The compiler: another toolkit now first on PATH, one where there was none, or none now.
    expect(buildVerb({ archs: undefined, cache: cache(''), nvcc: '/opt/cuda-12.4/bin/nvcc' })).toBe('rebuild');
    const none = 'CMAKE_BUILD_TYPE:STRING=Release\nCMAKE_CUDA_COMPILER:FILEPATH=CMAKE_CUDA_COMPILER-NOTFOUND\n';
    expect(buildVerb({ archs: undefined, cache: none, nvcc })).toBe('rebuild');
    expect(buildVerb({ archs: undefined, cache: none, nvcc: null })).toBe('compile');
    expect(buildVerb({ archs: undefined, cache: 'RING_ATTENTION_CUDA:BOOL=OFF\n', nvcc })).toBe('compile');
    // The same nvcc through a link (PATH's /usr/local/bin/nvcc to the CUDA install's) is the same.
    const installed = join(dir, 'nvcc-installed'), link = join(dir, 'nvcc-link');
    writeFileSync(installed, '');
    symlinkSync(installed, link);
    expect(buildVerb({ archs: undefined, cache: `CMAKE_CUDA_COMPILER:STRING=${link}\n`, nvcc: installed })).toBe('compile');
  });

  const dir = mkdtempSync(join(tmpdir(), 'ra-archs-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const tool = (name: string, out: string) => {
    const path = join(dir, name);
    writeFileSync(path, `#!/bin/sh\nprintf '${out}'\n`);
    chmodSync(path, 0o755);
    return path;
  };
  const nvcc = tool('fake-nvcc', `${cuda13.join('\\n')}\\n`);

  it("detectArchs asks nvidia-smi for the GPUs and nvcc for what it can compile", () => {
    tool('nvidia-smi', '8.0\\n8.0\\n');
    expect(detectArchs({ PATH: `${dir}:${process.env.PATH}`, CUDACXX: nvcc })).toBe('80');
  });

  it("detectArchs keeps CMakeLists.txt's default for H100s, and without nvidia-smi or nvcc", () => {
    tool('nvidia-smi', '9.0\\n');
    expect(detectArchs({ PATH: `${dir}:${process.env.PATH}`, CUDACXX: nvcc })).toBeUndefined();
    tool('nvidia-smi', '8.6\\n');
    expect(detectArchs({ PATH: `${dir}:${process.env.PATH}`, CUDACXX: join(dir, 'missing-nvcc') })).toBeUndefined();
    expect(detectArchs({ PATH: join(dir, 'empty'), CUDACXX: nvcc })).toBeUndefined();
  });
});

// CMake before 3.25 (Ubuntu 22.04 has 3.22) takes the arch-specific architectures as nvcc flags;
// forced here on this machine's CMake, configured only (no compile: ~10 s).
const cmakeAndNvcc = spawnSync('cmake', ['--version']).status === 0 && findNvcc() !== null;
describe.skipIf(!cmakeAndNvcc)(cmakeAndNvcc ? 'CMakeLists.txt architectures' : 'CMakeLists.txt architectures (skipped: no cmake or nvcc)', () => {
  const configure = (args: string[]) => {
    const build = mkdtempSync(join(tmpdir(), 'ra-cmake-'));
    try {
      const r = spawnSync('cmake', ['-S', root, '-B', build, '-G', 'Ninja', ...args], { encoding: 'utf8', timeout: 300_000 });  // ~10 s alone; far more beside CI's builds
      expect(r.status, r.stdout + r.stderr).toBe(0);
      const ninja = readFileSync(join(build, 'build.ninja'), 'utf8');
      const line = ninja.split('\n').find((l) => l.includes('FLAGS') && l.includes('--generate-code')) ?? '';
      return { flags: line.match(/--generate-code=\S+/g) ?? [], sm90a: /RA_WITH_SM90A=1/.test(ninja), archs: /RA_CUDA_ARCHS=\\"([^\\]*)\\"/.exec(ninja)?.[1] };
    } finally {
      rmSync(build, { recursive: true, force: true });
    }
  };

  it("passes 'a' entries to nvcc itself on request (as before CMake 3.25), and 'f' entries always", () => {
    const forced = configure(['-DRING_ATTENTION_GENCODE_FLAGS=ON', '-DCMAKE_CUDA_ARCHITECTURES=80;90a-real;100f']);
    expect(forced.flags.sort()).toEqual(['--generate-code=arch=compute_100f,code=[compute_100f,sm_100f]',
      '--generate-code=arch=compute_80,code=[compute_80,sm_80]', '--generate-code=arch=compute_90a,code=sm_90a']);
    expect([forced.sm90a, forced.archs]).toEqual([true, '80,90a-real,100f']);
    const alone = configure(['-DRING_ATTENTION_GENCODE_FLAGS=ON']);
    expect(alone.flags).toEqual(['--generate-code=arch=compute_90a,code=[compute_90a,sm_90a]']);
    expect([alone.sm90a, alone.archs]).toEqual([true, '90a']);
  }, 660_000);
});
