// The CUDA part of the foundation: device memory, host<->device copies with dtype
// conversion on the device, and the caching allocator. Needs a CUDA device; elsewhere the
// suite is skipped and its title says why.
import { describe, expect, it } from 'vitest';

import { attention, cudaMemoryStats, info, tensor } from '../../dist/index.js';
import { native } from '../../dist/native.js';
import { randomArray, roundTo } from '../reference.js';

const cuda = info().cuda;
const title = cuda.available ? 'CUDA runtime' : `CUDA runtime (skipped: ${cuda.reason})`;

describe.skipIf(!cuda.available)(title, () => {
  it('reports the device', () => {
    expect(cuda.deviceCount).toBeGreaterThan(0);
    expect(cuda.devices[0]!.name.length).toBeGreaterThan(0);
    expect(info().backend).toBe('cuda');
  });

  for (const dtype of ['float32', 'bfloat16', 'float16'] as const)
    it(`${dtype}: values round-trip through device memory as on the CPU`, async () => {
      const data = randomArray(10_001, 9);
      const onGpu = tensor(data, [10_001], { dtype, device: 'cuda' });
      const onCpu = tensor(data, [10_001], { dtype });
      expect(onGpu.device).toBe('cuda');
      const a = await onGpu.toFloat32Array(), b = await onCpu.toFloat32Array();
      expect(Array.from(a)).toEqual(Array.from(b));
      expect(Array.from(a)).toEqual(Array.from(roundTo(dtype, data)));
    });

  it('steady-state steps do no cudaMalloc: freed blocks are reused', () => {
    const step = () => {
      const ts = [[4, 1024, 8, 128], [4, 1024, 8], [3, 333]].map((shape) =>
        tensor(new Float32Array(shape.reduce((a, b) => a * b, 1)), shape, { dtype: 'bfloat16', device: 'cuda' }));
      for (const t of ts) t.dispose();
    };
    step();
    const before = cudaMemoryStats();
    for (let i = 0; i < 5; ++i) step();
    const after = cudaMemoryStats();
    expect(after.cudaMallocCalls).toBe(before.cudaMallocCalls);
    expect(after.cacheHits).toBeGreaterThan(before.cacheHits);
    expect(after.bytesInUse).toBe(before.bytesInUse);
  });

  it("bytes in use are counted per GPU (initProcessGroup refuses a rank's tensors on GPU 0 by this count)", () => {
    const before = native.cudaBytesInUseOn(0), elsewhere = native.cudaBytesInUseOn(cuda.deviceCount);
    const t = tensor(new Float32Array(1 << 20), [1 << 20], { device: 'cuda' });
    expect(native.cudaBytesInUseOn(0)).toBe(before + 4 * (1 << 20));
    expect(native.cudaBytesInUseOn(cuda.deviceCount)).toBe(elsewhere);
    expect(elsewhere).toBe(0); // no such GPU
    t.dispose();
    expect(native.cudaBytesInUseOn(0)).toBe(before);
  });

  it('attention on float32 cuda tensors is refused: the kernels take bfloat16/float16', () => {
    const q = tensor(new Float32Array(16), [1, 2, 2, 4], { device: 'cuda' });
    expect(() => attention(q, q, q)).toThrow(new TypeError("q: attention on 'cuda' tensors takes dtype 'bfloat16' or 'float16' (the kernels use tensor cores), got 'float32'"));
  });

  it('mixing devices is refused, naming the argument', () => {
    const q = tensor(new Float32Array(16), [1, 2, 2, 4], { device: 'cuda' });
    const k = tensor(new Float32Array(16), [1, 2, 2, 4]);
    expect(() => attention(q, k, k)).toThrow(new TypeError("k: device 'cpu' does not match q's 'cuda'"));
  });
});
