// Tensors: values round-trip, half types round as IEEE says, dispose is deterministic.
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';

import { hostMemoryStats, info, tensor, Tensor, zeros } from '../dist/index.js';
import { freeOnThrow } from '../dist/tensor.js';
import { roundTo } from './reference.js';

describe('tensor', () => {
  it('keeps shape, dtype, device and float32 values exactly', async () => {
    const data = new Float32Array([1.5, -2, 3.25, 0, 1e-30, -7]);
    const t = tensor(data, [2, 3]);
    expect(t).toBeInstanceOf(Tensor);
    expect(t.shape).toEqual([2, 3]);
    expect(t.dtype).toBe('float32');
    expect(t.device).toBe('cpu');
    expect(Array.from(await t.toFloat32Array())).toEqual(Array.from(data));
  });

  it('copies its input: later writes to the array do not change the tensor', async () => {
    const data = new Float32Array([1, 2]);
    const t = tensor(data, [2]);
    data[0] = 99;
    expect(Array.from(await t.toFloat32Array())).toEqual([1, 2]);
  });

  it('rounds to bfloat16 to nearest even', async () => {
    // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even gives 1; 1 + 3*2^-8 rounds up to 1 + 2^-6
    const t = tensor(new Float32Array([1 + 2 ** -8, 1 + 3 * 2 ** -8, -3.14159, 65504]), [4], { dtype: 'bfloat16' });
    expect(Array.from(await t.toFloat32Array())).toEqual([1, 1 + 2 ** -6, -3.140625, 65536]);
  });

  it('rounds to float16 as IEEE binary16', async () => {
    const values = new Float32Array([1 + 2 ** -11, 0.1, -2.5e-3, 1000.7]);
    const t = tensor(values, [4], { dtype: 'float16' });
    expect(Array.from(await t.toFloat32Array())).toEqual(Array.from(roundTo('float16', values)));
    expect((await t.toFloat32Array())[0]).toBe(1); // a tie, to even
  });

  it('keeps NaN and infinities through half types', async () => {
    for (const dtype of ['bfloat16', 'float16'] as const) {
      const t = tensor(new Float32Array([NaN, Infinity, -Infinity]), [3], { dtype });
      const out = await t.toFloat32Array();
      expect(Number.isNaN(out[0])).toBe(true);
      expect(out[1]).toBe(Infinity);
      expect(out[2]).toBe(-Infinity);
    }
  });

  it('dispose() frees it; any later use throws a TypeError; dispose is idempotent', async () => {
    const t = tensor(new Float32Array(4), [4]);
    t.dispose();
    expect(t.disposed).toBe(true);
    t.dispose();
    await expect(t.toFloat32Array()).rejects.toThrow(new TypeError('tensor: tensor has been disposed'));
  });

  it('dispose() frees the native object too, at once: a synchronous loop does not pile them up', () => {
    // Node-API runs finalizers only when the event loop turns, which a training loop may never do.
    const before = hostMemoryStats().handles;
    for (let i = 0; i < 20_000; ++i) zeros([4]).dispose();
    expect(hostMemoryStats().handles).toBe(before);
    const t = zeros([4]);
    expect(hostMemoryStats().handles).toBe(before + 1);
    t.dispose();
    expect(hostMemoryStats().handles).toBe(before);
  });

  it('reads each entry of a shape once: a getter cannot make the checked shape differ from the kept one', () => {
    let reads = 0;
    const shape = [1, 3];
    Object.defineProperty(shape, 1, { get: () => (++reads === 1 ? 3 : 6), enumerable: true });
    using t = tensor(new Float32Array(3), shape);
    expect([t.shape, t.numel, reads]).toEqual([[1, 3], 3, 1]);
    using z = zeros(shape);
    expect(z.shape).toEqual([1, 6]);
  });

  it('Symbol.dispose frees it at the end of a using block', () => {
    let escaped: Tensor;
    {
      using t = tensor(new Float32Array(4), [4]);
      escaped = t;
      expect(t.disposed).toBe(false);
    }
    expect(escaped.disposed).toBe(true);
  });

  it('refuses bad arguments with errors naming them', () => {
    expect(() => tensor([1, 2] as any, [2])).toThrow(new TypeError('data: expected a Float32Array, got an array of length 2'));
    expect(() => tensor(new Float64Array(2) as any, [2])).toThrow(/^data: expected a Float32Array, got Float64Array/);
    expect(() => tensor(new Float32Array(5), [2, 3])).toThrow(new RangeError('shape: [2, 3] holds 6 elements, but data has 5'));
    expect(() => tensor(new Float32Array(2), [2, -1] as any)).toThrow(/^shape\[1\]: expected a non-negative integer, got number -1/);
    expect(() => tensor(new Float32Array(2), [1.5] as any)).toThrow(RangeError);
    expect(() => tensor(new Float32Array(2), 2 as any)).toThrow(/^shape: expected an array/);
    expect(() => tensor(new Float32Array(2), [2], { dtype: 'int8' as any })).toThrow(/^opts\.dtype: expected one of 'float32', 'bfloat16', 'float16', got 'int8'/);
    expect(() => tensor(new Float32Array(2), [2], { device: 'tpu' as any })).toThrow(/^opts\.device: expected one of 'cpu', 'cuda'/);
    expect(() => tensor(new Float32Array(2), [2], 'cpu' as any)).toThrow(/^opts: expected an options object/);
    // The constructor is private in TypeScript only; JavaScript is told what to call.
    expect(() => new (Tensor as any)()).toThrow(new TypeError("new Tensor(): tensors are made by tensor(), zeros() and the library's functions"));
  });

  it.skipIf(info().cuda.available)("device 'cuda' without a usable GPU is refused with the reason", () => {
    expect(() => tensor(new Float32Array(2), [2], { device: 'cuda' })).toThrow(/^opts\.device: 'cuda' is not available here \(.+\); use 'cpu'/);
  });

  it('freeOnThrow frees what its function made when it throws (a failed training step holds nothing), and keeps it when it returns', () => {
    const held = hostMemoryStats().bytesInUse;
    expect(() => freeOnThrow(() => {
      zeros([1000]);
      freeOnThrow(() => zeros([10])); // an inner call's tensors are the outer one's to free
      throw new Error('out of memory, say');
    })).toThrow('out of memory, say');
    expect(hostMemoryStats().bytesInUse).toBe(held);
    const kept = freeOnThrow(() => zeros([1000]));
    expect(kept.disposed).toBe(false);
    expect(hostMemoryStats().bytesInUse).toBeGreaterThan(held);
    kept.dispose();
  });
});

const found = (tool: string) => spawnSync(tool, ['--version'], { stdio: 'ignore' }).status === 0;
const toolchain = { cmake: found('cmake'), nvcc: found('nvcc') || existsSync('/usr/local/cuda/bin/nvcc') };

describe('info', () => {
  it('names the binary and the backend; without a GPU the backend is the CPU', () => {
    const i = info();
    expect(i.binary).toMatch(/\.node$/);
    expect(['cpu', 'cuda']).toContain(i.backend);
    if (!i.cuda.available) {
      expect(i.backend).toBe('cpu');
      expect(i.cuda.reason.length).toBeGreaterThan(0);
    }
    expect(['avx2+fma', 'portable']).toContain(i.cpuKernels);
  });

  it("the CPU kernels: AVX2 and FMA where an x86-64 CPU has them, the portable ones when RING_ATTENTION_PORTABLE_CPU=1 (the CLI's info says which)", () => {
    const flags = process.arch === 'x64' && existsSync('/proc/cpuinfo') ? readFileSync('/proc/cpuinfo', 'utf8') : '';
    const has = /^flags\s*:.*\bavx2\b/m.test(flags) && /^flags\s*:.*\bfma\b/m.test(flags);
    if (process.arch === 'x64' && flags && process.env.RING_ATTENTION_PORTABLE_CPU !== '1') expect(info().cpuKernels).toBe(has ? 'avx2+fma' : 'portable');
    const cli = new URL('../dist/cli.js', import.meta.url).pathname;
    const run = (value: string) =>
      spawnSync(process.execPath, [cli, 'info'], { encoding: 'utf8', env: { ...process.env, RING_ATTENTION_PORTABLE_CPU: value } }).stdout;
    expect(run('1')).toMatch(/^cpu kernels +portable$/m);
    if (has) expect(run('0')).toMatch(/^cpu kernels +compiled for AVX2 and FMA/m);  // only 1 forces it
  });

  it('the CPU thread count: RING_ATTENTION_NUM_THREADS, capped at 4x the cores; anything else is refused when the package loads', () => {
    const cli = new URL('../dist/cli.js', import.meta.url).pathname;
    const run = (args: string[], value?: string) =>
      spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', env: { ...process.env, RING_ATTENTION_NUM_THREADS: value } });
    const cores: number = JSON.parse(run(['info', '--json']).stdout).cpuThreads;  // what the C++ runtime counts
    expect(cores).toBeGreaterThan(0);
    expect(run(['info']).stdout).toMatch(new RegExp(`^cpu threads +${cores} \\(the cores\\)$`, 'm'));
    expect(run(['info'], '3').stdout).toMatch(/^cpu threads +3 \(RING_ATTENTION_NUM_THREADS\)$/m);
    expect(JSON.parse(run(['info', '--json'], '3').stdout).cpuThreads).toBe(3);
    expect(run(['info'], String(8 * cores)).stdout).toMatch(new RegExp(`^cpu threads +${4 * cores} \\(RING_ATTENTION_NUM_THREADS=${8 * cores}, capped at 4x the cores\\)$`, 'm'));
    expect(run(['info'], ' +03 ').stdout).toMatch(/^cpu threads +3 \(RING_ATTENTION_NUM_THREADS\)$/m);  // as the native atoi reads it
    // Each of these the native reading (atoi) took as 0, or wrapped past an int to 0: all cores.
    for (const bad of ['abc', '0', '-2', '1.5', '4x', '4294967296', '99999999999999999999', '\u00a03']) {
      const r = run(['info'], bad);
      expect(r.status).not.toBe(0);
      expect(r.stderr).toContain(`RangeError: RING_ATTENTION_NUM_THREADS: expected a whole number of CPU threads from 1 to 1000000, got '${bad}'`);
    }
  });

  it('the CLI refuses what it does not take: an unknown command, or info with anything but --json', () => {
    const cli = new URL('../dist/cli.js', import.meta.url).pathname;
    const run = (...args: string[]) => spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8' });
    for (const args of [['info', '--jsn'], ['info', 'extra']]) {
      const r = run(...args);
      expect(r.status).toBe(1);
      expect(r.stderr).toMatch(/^ring-attention info: .*; it takes only --json$/m);
      expect(r.stdout).toBe('');
    }
    const unknown = run('foo');
    expect(unknown.status).toBe(1);
    expect(unknown.stderr).toMatch(/^ring-attention: unknown command 'foo'\nusage: ring-attention <command>/);
    expect(run('--help').status).toBe(0);
    expect(run('info', '--help').stdout).toBe('usage: ring-attention info [--json]\n');
  });

  // Where CMake and nvcc are both found (CI's machine: nvcc, no GPU), the install must have
  // compiled the CUDA part into the binary, and it must still load and run on the CPU.
  it.runIf(toolchain.cmake && toolchain.nvcc)('with CMake and nvcc present, the build has CUDA compiled in', () => {
    const i = info();
    expect(i.cuda.compiled).toBe(true);
    expect(i.cuda.runtimeVersion).toBeGreaterThanOrEqual(13000);
    expect(i.cuda.architectures).toMatch(/90a/);
  });

  it.runIf(toolchain.cmake && toolchain.nvcc)("the CLI's info says whether the Hopper kernels are compiled in and asked for", () => {
    const cli = new URL('../dist/cli.js', import.meta.url).pathname;
    const run = (value: string) =>
      spawnSync(process.execPath, [cli, 'info'], { encoding: 'utf8', env: { ...process.env, RING_ATTENTION_SM90: value } }).stdout;
    expect(run('')).toMatch(/^hopper kernels +compiled in, off: RING_ATTENTION_SM90=1 turns them on/m);
    expect(run('1')).toMatch(/^hopper kernels +on \(RING_ATTENTION_SM90=1\): head dims 64 and 128 on sm_90 devices$/m);
  });
});
