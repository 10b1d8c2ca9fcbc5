// Which GPUs a binary's CUDA code runs on (lib/cuda-arch.ts), and which architectures a source
// build picks for the GPUs on its machine (scripts/cuda-archs.mjs).
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

import { archFor, archsRunOn, checkArchitectures } from '../dist/cuda-arch.js';
import type { CudaInfo } from '../dist/native.js';
// @ts-expect-error: a plain ES module of the install scripts, without declarations
import { archsFor, detectArchs } from '../scripts/cuda-archs.mjs';

const RELEASE = '80-real,86-real,89-real,90a-real,100-real,103-real,120-real,80-virtual';  // CMakeLists.txt's

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
  const info = (architectures: string, devices: CudaInfo['devices']): CudaInfo => ({
    compiled: true, available: true, deviceCount: devices.length, driverVersion: 13000, runtimeVersion: 13000, architectures, reason: '', devices });

  it('marks CUDA unavailable, naming the GPU and the rebuild, when a GPU cannot run the code', () => {
    const r = checkArchitectures(info('90a', [gpu('NVIDIA A100-SXM4-80GB', '8.0')]));
    expect(r.available).toBe(false);
    expect(r.reason).toBe("this binary's CUDA code is for 90a, and GPU 0 (NVIDIA A100-SXM4-80GB) is compute capability 8.0: " +
      'rebuild it for this machine with CUDAARCHS="80" RING_ATTENTION_BUILD=source npm rebuild ring-attention');
  });

  it('names only the GPUs that cannot run it, and asks for every GPU here', () => {
    const r = checkArchitectures(info('90a', [gpu('NVIDIA H100', '9.0'), gpu('NVIDIA L40S', '8.9'), gpu('NVIDIA H100', '9.0')]));
    expect(r.available).toBe(false);
    expect(r.reason).toContain('and GPU 1 (NVIDIA L40S) is compute capability 8.9: ');
    expect(r.reason).not.toContain('GPU 0');
    expect(r.reason).toContain('CUDAARCHS="90a;89"');
  });

  it('leaves a report alone when every GPU runs the code, or when CUDA was unavailable already', () => {
    const fits = info(RELEASE, [gpu('NVIDIA A100', '8.0'), gpu('NVIDIA B200', '10.0')]);
    expect(checkArchitectures(fits)).toBe(fits);
    const none = { ...info('90a', []), available: false, reason: 'no CUDA device found' };
    expect(checkArchitectures(none)).toBe(none);
  });

  it('archFor names 9.0 as 90a (the Hopper kernels) and others as they are', () => {
    expect(['8.0', '8.9', '9.0', '10.3', '12.0'].map(archFor)).toEqual(['80', '89', '90a', '103', '120']);
  });
});

describe('the architectures of a source build', () => {
  const cuda13 = ['sm_75', 'sm_80', 'sm_86', 'sm_87', 'sm_88', 'sm_89', 'sm_90', 'sm_100', 'sm_110', 'sm_103', 'sm_120', 'sm_121'];
  const cuda12_4 = ['sm_50', 'sm_52', 'sm_60', 'sm_70', 'sm_75', 'sm_80', 'sm_86', 'sm_87', 'sm_89', 'sm_90'];

  it('archsFor: machine code for each GPU, 9.0 as 90a, PTX below a GPU newer than nvcc', () => {
    expect(archsFor(['8.0', '8.0', '8.9'], cuda13)).toEqual(['80', '89']);
    expect(archsFor(['9.0'], cuda13)).toEqual(['90a']);
    expect(archsFor(['12.0', '10.0'], cuda12_4)).toEqual(['90-virtual']);
    expect(archsFor(['7.0', 'N/A', ''], cuda13)).toEqual([]);
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
