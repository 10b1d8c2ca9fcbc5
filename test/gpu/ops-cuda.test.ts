// The training ops on CUDA tensors (native/cuda/ops/) against the CPU ops on the same inputs,
// in float32 and bfloat16, with the += / overwrite contract and the device/dtype refusals.
// Needs a CUDA device and cuBLAS; elsewhere skipped, with the reason in the title.
//
// Tolerances (relative to the largest CPU value, test/reference.ts relErr):
// - float32: cuBLAS sums in another order than the CPU's blocked gemm, both in float32 (no
//   TF32): ~1e-7 * sqrt(K) relative, so 1e-5 for anything with a product, 2e-6 for
//   elementwise kernels (FMA contraction and float expf/sinf differ by an ulp or two).
//   Lookups and the embedding scatter-add (same token order, float32) are bit-identical.
// - bfloat16: inputs are rounded to bfloat16 first, so both sides see the same values; CUDA
//   rounds its outputs and the operands of later products (h, dg, du, dlogits) to bfloat16
//   (relative step 2^-8 = 3.9e-3), so 2e-2, as test/gpu/attention-cuda.test.ts allows.
//   Weight gradients accumulate in float32 but from bfloat16-rounded operands: 2e-2 too.
// - Losses and sums of squares are returned in double: 1e-5 (float32 exp sums) and 1e-10.
import { describe, expect, it } from 'vitest';

import { info, llamaPresets, ops, ropeParameters, tensor, zeros, type DType, type Tensor } from '../../dist/index.js';
import { findCublas } from '../../dist/libraries.js';
import { randomArray, relErr, roundTo } from '../reference.js';

const cuda = info().cuda;
const [blas] = cuda.available ? findCublas() : [null];
const why = !cuda.available ? cuda.reason : !blas?.path ? `cuBLAS not found (looked in ${blas?.searched.join(', ')})` : '';
const title = why ? `CUDA training ops (skipped: ${why})` : 'CUDA training ops';

type D = Extract<DType, 'float32' | 'bfloat16'>;
const TOL: Record<D, { prod: number; elem: number }> = { float32: { prod: 1e-5, elem: 2e-6 }, bfloat16: { prod: 2e-2, elem: 2e-2 } };

const n = (shape: number[]) => shape.reduce((a, b) => a * b, 1);
/** The same values (already rounded to dtype) on the CPU as float32 and on CUDA as dtype. */
function pair(shape: number[], seed: number, dtype: D, scale = 1) {
  const data = roundTo(dtype, randomArray(n(shape), seed).map((v) => v * scale));
  return { data, cpu: tensor(data, shape), gpu: tensor(data, shape, { dtype, device: 'cuda' }) };
}
/** A float32 accumulator with the same random start on both devices (checks +=). */
function acc(shape: number[], seed: number) {
  const data = randomArray(n(shape), seed);
  return { cpu: tensor(data, shape), gpu: tensor(data, shape, { device: 'cuda' }) };
}
/** An output of dtype on CUDA filled with garbage (checks overwrite), and a CPU float32 one. */
function out(shape: number[], dtype: D) {
  const junk = new Float32Array(n(shape)).fill(12345);
  return { cpu: tensor(junk, shape), gpu: tensor(junk, shape, { dtype, device: 'cuda' }) };
}
const read = (t: Tensor) => t.toFloat32Array();
async function close(gpu: Tensor, cpu: Tensor, tol: number, what: string) {
  expect(relErr(await read(gpu), await read(cpu)), what).toBeLessThan(tol);
}
function ids(count: number, hi: number, seed: number, ignore?: number) {
  const r = randomArray(count, seed);
  // randomArray is uniform in [-1, 1): map it onto [0, hi).
  return Int32Array.from(r, (v, i) => (ignore !== undefined && i % 5 === 2 ? ignore : Math.floor(((v + 1) / 2) * hi) % hi));
}

describe.skipIf(!!why)(title, () => {
  for (const dtype of ['float32', 'bfloat16'] as const) {
    const tol = TOL[dtype];

    for (const [M, K, N] of [[37, 45, 29], [130, 300, 270]] as const)
      it(`${dtype} linear ${M}x${K}x${N}: y, dx overwritten, dw +=`, async () => {
        const x = pair([M, K], 1, dtype), w = pair([N, K], 2, dtype), dy = pair([M, N], 3, dtype);
        await close(ops.linear(x.gpu, w.gpu), ops.linear(x.cpu, w.cpu), tol.prod, 'y');
        const dx = out([M, K], dtype), dw = acc([N, K], 4);
        ops.linearBackward(dy.gpu, x.gpu, w.gpu, dx.gpu, dw.gpu);
        ops.linearBackward(dy.cpu, x.cpu, w.cpu, dx.cpu, dw.cpu);
        await close(dx.gpu, dx.cpu, tol.prod, 'dx');
        await close(dw.gpu, dw.cpu, tol.prod, 'dw');
        await close(ops.logits(x.gpu, w.gpu), ops.logits(x.cpu, w.cpu), tol.prod, 'logits');
      });

    it(`${dtype} embedding: rows copied exactly, dtable += in token order (repeated ids)`, async () => {
      const [M, C, V] = [300, 70, 11];
      const tbl = pair([V, C], 5, dtype), dy = pair([M, C], 6, dtype), id = ids(M, V, 7);
      expect(Array.from(await read(ops.embedding(id, tbl.gpu)))).toEqual(Array.from(await read(ops.embedding(id, tbl.cpu))));
      const dt = acc([V, C], 8);
      ops.embeddingBackward(id, dy.gpu, dt.gpu);
      ops.embeddingBackward(id, dy.cpu, dt.cpu);
      expect(Array.from(await read(dt.gpu))).toEqual(Array.from(await read(dt.cpu)));
      const before = await read(dt.gpu), pad = id[0]!;
      ops.embeddingBackward(id, dy.gpu, dt.gpu, pad); // a padding id that occurs: its row gets nothing
      ops.embeddingBackward(id, dy.cpu, dt.cpu, pad);
      const after = await read(dt.gpu);
      expect(Array.from(after)).toEqual(Array.from(await read(dt.cpu)));
      expect(Array.from(after.subarray(pad * C, (pad + 1) * C))).toEqual(Array.from(before.subarray(pad * C, (pad + 1) * C)));
      expect(after.some((x, i) => x !== before[i])).toBe(true);
    });

    if (dtype === 'float32')
      it('host arrays staged back to back behind a busy GPU: 40 lookups past the 16 MiB staging ring (and one that outgrows it) each see their own ids', async () => {
        const V = 1000, table = tensor(Float32Array.from({ length: V }, (_, i) => i * 10), [V, 1], { device: 'cuda' });
        // Distinct per lookup (977 is prime to 1000), all made before anything is queued.
        const idsOf = Array.from({ length: 40 }, (_, k) => Int32Array.from({ length: k === 20 ? 5_000_000 : 600_000 }, (_, i) => (i * 31 + k * 977) % V));
        // Keep the GPU busy (~2 float32 products of 1 TFLOP) so the uploads queue behind it and the ring must wait to reuse its bytes.
        const big = tensor(new Float32Array(8192 * 8192).fill(0.001), [8192, 8192], { device: 'cuda' });
        const busy = [ops.linear(big, big), ops.linear(big, big)];
        const outs = idsOf.map((ids) => ops.embedding(ids, table));
        for (const [k, o] of outs.entries()) {
          const got = await read(o), want = idsOf[k]!;
          const bad = got.findIndex((v, i) => v !== want[i]! * 10);
          expect(bad, `lookup ${k}: first wrong row`).toBe(-1);
          o.dispose();
        }
        for (const t of [...busy, big, table]) t.dispose();
      });

    it(`${dtype} rmsNorm: y, rstd; dx overwritten, dw += (300 rows > the 128 dw chunks, C = 257)`, async () => {
      const [M, C] = [300, 257];
      const x = pair([M, C], 9, dtype, 2), w = pair([C], 10, dtype), dy = pair([M, C], 11, dtype);
      const g = ops.rmsNorm(x.gpu, w.gpu, 1e-5), c = ops.rmsNorm(x.cpu, w.cpu, 1e-5);
      await close(g.y, c.y, tol.elem, 'y');
      await close(g.rstd, c.rstd, 2e-6, 'rstd');
      const dx = out([M, C], dtype), dw = acc([C], 12);
      ops.rmsNormBackward(dy.gpu, x.gpu, w.gpu, g.rstd, dx.gpu, dw.gpu);
      ops.rmsNormBackward(dy.cpu, x.cpu, w.cpu, c.rstd, dx.cpu, dw.cpu);
      await close(dx.gpu, dx.cpu, tol.elem * 5, 'dx');
      await close(dw.gpu, dw.cpu, dtype === 'float32' ? 1e-5 : tol.elem, 'dw');
    });

    it(`${dtype} rope and its backward, positions up to 2M (angles in double on both)`, async () => {
      const [M, H, D] = [77, 3, 128];
      const x = pair([M, H, D], 13, dtype), pos = Int32Array.from({ length: M }, (_, i) => (i % 3 ? i : 2_000_000 - i * 7919));
      await close(ops.rope(x.gpu, pos, 500000), ops.rope(x.cpu, pos, 500000), tol.elem, 'rope');
      await close(ops.ropeBackward(x.gpu, pos, 500000), ops.ropeBackward(x.cpu, pos, 500000), tol.elem, 'ropeBackward');
      // Given frequencies, uploaded per call: the 1B preset's llama3 scaling at this test's head dim.
      const llama3 = ropeParameters({ ...llamaPresets['1B'], head_dim: D }).invFreq;
      await close(ops.rope(x.gpu, pos, llama3), ops.rope(x.cpu, pos, llama3), tol.elem, 'rope (llama3 frequencies)');
    });

    it(`${dtype} ffn in blocks of 7 rows (ragged): y, dx overwritten, dw* +=`, async () => {
      const [M, C, F] = [33, 48, 100];
      const x = pair([M, C], 14, dtype), wg = pair([F, C], 15, dtype, 0.3), wu = pair([F, C], 16, dtype, 0.3);
      const wd = pair([C, F], 17, dtype, 0.3), dy = pair([M, C], 18, dtype);
      await close(ops.ffn(x.gpu, wg.gpu, wu.gpu, wd.gpu, 7), ops.ffn(x.cpu, wg.cpu, wu.cpu, wd.cpu, 7), tol.prod, 'y');
      const dx = out([M, C], dtype), dg = acc([F, C], 19), du = acc([F, C], 20), dd = acc([C, F], 21);
      ops.ffnBackward(dy.gpu, x.gpu, wg.gpu, wu.gpu, wd.gpu, 7, dx.gpu, dg.gpu, du.gpu, dd.gpu);
      ops.ffnBackward(dy.cpu, x.cpu, wg.cpu, wu.cpu, wd.cpu, 7, dx.cpu, dg.cpu, du.cpu, dd.cpu);
      for (const [name, a] of [['dx', dx], ['dwGate', dg], ['dwUp', du], ['dwDown', dd]] as const)
        await close(a.gpu, a.cpu, tol.prod, name);
    });

    it(`${dtype} crossEntropyLoss in chunks of 5 with ignored targets: loss, count, dh overwritten, dwHead +=`, async () => {
      const [M, C, V] = [23, 40, 1001];
      const h = pair([M, C], 22, dtype), w = pair([V, C], 23, dtype), tg = ids(M, V, 24, -100);
      const dh = out([M, C], dtype), dw = acc([V, C], 25);
      const g = ops.crossEntropyLoss(h.gpu, w.gpu, tg, { chunkRows: 5, gradScale: 0.1, dh: dh.gpu, dwHead: dw.gpu });
      const c = ops.crossEntropyLoss(h.cpu, w.cpu, tg, { chunkRows: 5, gradScale: 0.1, dh: dh.cpu, dwHead: dw.cpu });
      expect(g.count).toBe(c.count);
      expect(Math.abs(g.loss - c.loss) / c.loss).toBeLessThan(dtype === 'float32' ? 1e-5 : 1e-2);
      await close(dh.gpu, dh.cpu, tol.prod, 'dh');
      await close(dw.gpu, dw.cpu, tol.prod, 'dwHead');
      const lossOnly = ops.crossEntropyLoss(h.gpu, w.gpu, tg, { chunkRows: 100 });
      expect(Math.abs(lossOnly.loss - g.loss) / g.loss).toBeLessThan(1e-6);
    });

    it(`${dtype} sumOfSquares, scale, add, zero`, async () => {
      const a = pair([70001], 26, dtype), b = pair([70001], 27, dtype);
      const s = ops.sumOfSquares(a.gpu);
      expect(Math.abs(s - ops.sumOfSquares(a.cpu)) / s).toBeLessThan(1e-10);
      expect(ops.sumOfSquares(a.gpu)).toBe(s);  // deterministic
      // A list: one partial buffer and one wait, the same bits as the tensors' sums added in order.
      const c = pair([5], 28, dtype), e = pair([300000], 29, dtype);
      const parts = [c.gpu, zeros([0], { device: 'cuda', dtype }), a.gpu, e.gpu];
      expect(ops.sumOfSquares(parts)).toBe(parts.reduce((acc, p) => acc + ops.sumOfSquares(p), 0));
      ops.add(a.gpu, b.gpu), ops.add(a.cpu, b.cpu);
      await close(a.gpu, a.cpu, tol.elem, 'add');
      ops.scale(a.gpu, 0.3), ops.scale(a.cpu, 0.3);
      await close(a.gpu, a.cpu, tol.elem, 'scale');
      ops.zero(a.gpu);
      expect((await read(a.gpu)).every((v) => v === 0)).toBe(true);
    });
  }

  it('zeros on cuda; copy float32 -> bfloat16 rounds as the CPU does, same dtype copies exactly, bfloat16 -> float32 is refused', async () => {
    using z = zeros([5, 7], { dtype: 'bfloat16', device: 'cuda' });
    expect(Array.from(await read(z))).toEqual(new Array(35).fill(0));
    const x = randomArray(1001, 91).map((v) => v * 3);
    using src = tensor(x, [1001], { device: 'cuda' });
    using half = zeros([7, 143], { dtype: 'bfloat16', device: 'cuda' });
    ops.copy(half, src);
    expect(Array.from(await read(half))).toEqual(Array.from(roundTo('bfloat16', x)));
    using again = zeros([1001], { dtype: 'bfloat16', device: 'cuda' });
    ops.copy(again, half);
    expect(Array.from(await read(again))).toEqual(Array.from(roundTo('bfloat16', x)));
    using back = zeros([1001], { device: 'cuda' });
    expect(() => ops.copy(back, half)).toThrow(/^src: on cuda, copy takes a float32 source or one of dst's dtype 'float32', got 'bfloat16'/);
    using onCpu = tensor(x, [1001]);
    expect(() => ops.copy(back, onCpu)).toThrow(/^src: device 'cpu' does not match dst's 'cuda'/);
  });

  it('adamw (float32) equals the CPU step', async () => {
    const shape = [1000, 7];
    const p = acc(shape, 28), g = acc(shape, 29), m = acc(shape, 30);
    const v = { cpu: tensor(randomArray(7000, 31).map(Math.abs), shape), gpu: tensor(randomArray(7000, 31).map(Math.abs), shape, { device: 'cuda' }) };
    for (const step of [1, 2, 3]) {
      ops.adamw(p.gpu, g.gpu, m.gpu, v.gpu, { step, lr: 1e-2, weightDecay: 0.1, beta2: 0.95 });
      ops.adamw(p.cpu, g.cpu, m.cpu, v.cpu, { step, lr: 1e-2, weightDecay: 0.1, beta2: 0.95 });
    }
    for (const [name, a] of [['param', p], ['m', m], ['v', v]] as const) await close(a.gpu, a.cpu, 2e-6, name);
  });

  it('adamwMulti (one kernel over many tensors) gives the bits of scale + adamw + copy one tensor at a time', async () => {
    // 4097 and 9000 elements: more than one 4096-element chunk; 1: a chunk of one element
    const shapes = [[1], [4097], [30, 300], [7]], decays = [0.1, 0, 0.01, 0.3];
    const state = (seed: number) => shapes.map((s, i) => [0, 1, 2, 3].map((k) => {
      const d = randomArray(n(s), seed + 10 * i + k).map((x) => (k === 3 ? Math.abs(x) * 0.01 : x));
      return tensor(d, s, { device: 'cuda' });
    }));
    for (const gradScale of [1, 0.37]) {
      const one = state(40), all = state(40);
      const copies = shapes.map((s) => zeros(s, { dtype: 'bfloat16', device: 'cuda' }));
      const ref = shapes.map((s) => zeros(s, { dtype: 'bfloat16', device: 'cuda' }));
      one.forEach(([p, g, m, v], i) => {
        if (gradScale !== 1) ops.scale(g!, gradScale);
        ops.adamw(p!, g!, m!, v!, { step: 2, lr: 1e-2, beta2: 0.95, weightDecay: decays[i] });
        ops.copy(ref[i]!, p!);
      });
      ops.adamwMulti(all.map(([param, grad, m, v], i) => ({ param: param!, grad: grad!, m: m!, v: v!, weightDecay: decays[i], copy: copies[i] })),
        { step: 2, lr: 1e-2, beta2: 0.95, gradScale });
      for (let i = 0; i < shapes.length; ++i) {
        for (let k = 0; k < 4; ++k)
          expect(await all[i]![k]!.toFloat32Array(), `gradScale ${gradScale}, entry ${i}, ${['param', 'grad', 'm', 'v'][k]}`).toEqual(await one[i]![k]!.toFloat32Array());
        expect(await copies[i]!.toFloat32Array(), `gradScale ${gradScale}, entry ${i}, copy`).toEqual(await ref[i]!.toFloat32Array());
      }
    }
  });

  it('refuses mixed devices, float16, and a bfloat16 accumulator, naming the argument', () => {
    const x = tensor(new Float32Array(12), [3, 4], { device: 'cuda' });
    expect(() => ops.linear(x, tensor(new Float32Array(20), [5, 4]))).toThrow(new TypeError("w: device 'cpu' does not match x's 'cuda'"));
    const h = tensor(new Float32Array(12), [3, 4], { dtype: 'float16', device: 'cuda' });
    expect(() => ops.linear(h, h)).toThrow(new TypeError('x: cuda ops take float32 or bfloat16 tensors, got float16'));
    const b = tensor(new Float32Array(12), [3, 4], { dtype: 'bfloat16', device: 'cuda' });
    const bw = tensor(new Float32Array(16), [4, 4], { dtype: 'bfloat16', device: 'cuda' });
    expect(() => ops.linearBackward(b, b, bw, null, bw)).toThrow(/^dw: needs float32/);
    const fw = tensor(new Float32Array(16), [4, 4], { device: 'cuda' });
    expect(() => ops.linear(b, fw)).toThrow(new TypeError("w: dtype 'float32' does not match x's 'bfloat16'"));
    expect(() => ops.adamw(b, b, b, b, { step: 1, lr: 1 })).toThrow(/^param: needs float32, got bfloat16/);
  });
});
