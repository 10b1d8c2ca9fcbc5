// The training ops (lib/ops.ts) against float64 references (test/ops-reference.ts):
// forwards against the reference, backwards against central finite differences of the
// reference forward and against the float64 analytic gradient, the += / overwrite
// contract, and argument errors.
import { spawnSync } from 'node:child_process';

import { describe, expect, it } from 'vitest';

import { info, ops, tensor, zeros as zerosOn, type Tensor } from '../dist/index.js';
import { native } from '../dist/native.js';
import {
  adamwRef, crossEntropyRef, ffnBackwardRef, ffnRef, finiteDiff, linearBackwardRef, linearRef, project,
  rmsNormBackwardRef, rmsNormRef, ropeRef,
} from './ops-reference.js';
import { randomArray, roundTo, worstError } from './reference.js';

// Float32 kernels against float64 references on sums of <= ~300 terms of size ~1: the
// forward error is ~1e-6 relative; 1e-5 relative + 1e-5 absolute (for values near 0 after
// cancellation). Gradients: 1e-4 relative + 2e-5 absolute.
const FWD = { atol: 1e-5, rtol: 1e-5 };
const GRAD = { atol: 2e-5, rtol: 1e-4 };

const t = (data: Float32Array, shape: number[]) => tensor(data, shape);
const rand = (n: number, seed: number, scale = 1) => randomArray(n, seed).map((v) => v * scale);
const read = (x: Tensor) => x.toFloat32Array();
const f64 = (a: ArrayLike<number>) => Float64Array.from(a);
const zeros = (shape: number[]) => tensor(new Float32Array(shape.reduce((a, b) => a * b, 1)), shape);

describe('linear', () => {
  // sizes that are not multiples of the micro-kernel (6x16, 4x8) or the tiles (KC = NC = 256)
  for (const [M, K, N] of [[37, 45, 29], [1, 1, 1], [130, 300, 270], [5, 600, 17]] as const) {
    it(`forward ${M}x${K} · (${N}x${K})ᵀ`, async () => {
      const x = rand(M * K, 1), w = rand(N * K, 2);
      const y = ops.linear(t(x, [M, K]), t(w, [N, K]));
      expect(y.shape).toEqual([M, N]);
      const atol = FWD.atol * Math.sqrt(K / 50);
      expect(worstError(await read(y), linearRef(x, w, M, K, N), atol, FWD.rtol)).toBeLessThan(1);
    });
  }

  it('backward against finite differences and the float64 gradient; dx overwritten, dw +=', async () => {
    const [M, K, N] = [5, 7, 6];
    const x = rand(M * K, 3), w = rand(N * K, 4), r = rand(M * N, 5);
    const dx = t(rand(M * K, 99), [M, K]); // garbage: must be overwritten
    const dw = zeros([N, K]);
    ops.linearBackward(t(r, [M, N]), t(x, [M, K]), t(w, [N, K]), dx, dw);
    const X = f64(x), W = f64(w);
    const loss = () => project(linearRef(X, W, M, K, N), r);
    expect(worstError(await read(dx), finiteDiff(loss, X), GRAD.atol, GRAD.rtol)).toBeLessThan(1);
    expect(worstError(await read(dw), finiteDiff(loss, W), GRAD.atol, GRAD.rtol)).toBeLessThan(1);
    // a second call adds the same gradient again: dw doubles exactly, dx is rewritten
    const once = await read(dw);
    ops.linearBackward(t(r, [M, N]), t(x, [M, K]), t(w, [N, K]), dx, dw);
    expect(Array.from(await read(dw))).toEqual(Array.from(once, (v) => 2 * v));
    expect(worstError(await read(dx), linearBackwardRef(r, x, w, M, K, N).dx, GRAD.atol, GRAD.rtol)).toBeLessThan(1);
  });

  it('backward at tile-crossing sizes matches the float64 gradient; dx may be null', async () => {
    const [M, K, N] = [70, 260, 40];
    const x = rand(M * K, 6), w = rand(N * K, 7), dy = rand(M * N, 8);
    const dx = zeros([M, K]), dw = zeros([N, K]);
    ops.linearBackward(t(dy, [M, N]), t(x, [M, K]), t(w, [N, K]), dx, dw);
    const ref = linearBackwardRef(dy, x, w, M, K, N);
    expect(worstError(await read(dx), ref.dx, 2e-5, 1e-4)).toBeLessThan(1);
    expect(worstError(await read(dw), ref.dw, 2e-5, 1e-4)).toBeLessThan(1);
    const dw2 = zeros([N, K]);
    ops.linearBackward(t(dy, [M, N]), t(x, [M, K]), t(w, [N, K]), null, dw2);
    expect(Array.from(await read(dw2))).toEqual(Array.from(await read(dw)));
  });

  it('the portable kernel (forced by RING_ATTENTION_PORTABLE_CPU) agrees with the reference', () => {
    const [M, K, N] = [23, 270, 19];
    const code = `import('${new URL('../dist/index.js', import.meta.url).href}').then(async ({ ops, tensor }) => {
      const x = tensor(Float32Array.from(JSON.parse(process.argv[1])), [${M}, ${K}]);
      const w = tensor(Float32Array.from(JSON.parse(process.argv[2])), [${N}, ${K}]);
      const dw = tensor(new Float32Array(${N * K}), [${N}, ${K}]);
      ops.linearBackward(ops.linear(x, w), x, w, null, dw);
      console.log(JSON.stringify([Array.from(await ops.linear(x, w).toFloat32Array()), Array.from(await dw.toFloat32Array())]));
    })`;
    const x = rand(M * K, 9), w = rand(N * K, 10);
    const r = spawnSync(process.execPath, ['-e', code, JSON.stringify(Array.from(x)), JSON.stringify(Array.from(w))], {
      encoding: 'utf8', env: { ...process.env, RING_ATTENTION_PORTABLE_CPU: '1' },
    });
    expect(r.stderr).toBe('');
    const [y, dw] = JSON.parse(r.stdout) as [number[], number[]];
    const yRef = linearRef(x, w, M, K, N);
    expect(worstError(y, yRef, 3e-5, 1e-5)).toBeLessThan(1);
    expect(worstError(dw, linearBackwardRef(yRef, x, w, M, K, N).dw, 1e-3, 1e-4)).toBeLessThan(1);
  });

  it('errors name the argument', () => {
    const x = zeros([3, 4]);
    expect(() => ops.linear(x, zeros([5, 3]))).toThrow(/^w: expected shape \[N, K\] .* = \[5, 4\], got \[5, 3\]/);
    expect(() => ops.linear(zeros([12]), x)).toThrow(RangeError);
    expect(() => ops.linear(zeros([12]), x)).toThrow(/^x: expected shape \[M, K\]/);
    const bf = tensor(new Float32Array(12), [3, 4], { dtype: 'bfloat16' });
    expect(() => ops.linear(bf, x)).toThrow(TypeError);
    expect(() => ops.linear(bf, x)).toThrow(/^x: cpu ops take float32 tensors \(bfloat16 runs on cuda\), got bfloat16/);
    expect(() => ops.linear(x, bf)).toThrow(new TypeError("w: dtype 'bfloat16' does not match x's 'float32'"));
    expect(() => ops.rmsNormBackward(x, x, zeros([4]), zeros([3]), zeros([3, 4]), bf)).toThrow(/^dw: needs float32/);
    expect(() => ops.linearBackward(zeros([3, 6]), x, zeros([5, 4]), null, zeros([5, 4]))).toThrow(/^dy: expected shape \[M, N\] = \[3, 5\]/);
    expect(() => ops.linearBackward(zeros([3, 5]), x, zeros([5, 4]), null, zeros([4, 5]))).toThrow(/^dw: /);
    const dy = zeros([3, 4]), w = zeros([4, 4]);
    expect(() => ops.linearBackward(dy, x, w, dy, zeros([4, 4]))).toThrow(/^dx: must not be the same memory as dy/);
    const gone = zeros([3, 4]);
    gone.dispose();
    expect(() => ops.linear(gone, x)).toThrow(/^x: tensor has been disposed/);
  });
});

describe('embedding', () => {
  const [V, C] = [11, 19];
  const table = rand(V * C, 11);
  const ids = Int32Array.from([3, 0, 10, 3, 7, 3, 1]); // repeats: the backward must add them up

  it('forward copies the rows', async () => {
    const y = await read(ops.embedding(ids, t(table, [V, C])));
    const ref = Array.from(ids).flatMap((id) => Array.from(table.subarray(id * C, (id + 1) * C)));
    expect(Array.from(y)).toEqual(ref);
  });

  it('backward scatter-adds into dtable (+=), against finite differences', async () => {
    const dy = rand(ids.length * C, 12);
    const init = rand(V * C, 13);
    const dtable = t(init, [V, C]);
    ops.embeddingBackward(ids, t(dy, [ids.length, C]), dtable);
    const T = f64(table);
    const loss = () => project(Array.from(ids).flatMap((id) => Array.from(T.subarray(id * C, (id + 1) * C))), dy);
    const fd = finiteDiff(loss, T);
    expect(worstError(await read(dtable), fd.map((g, i) => g + init[i]!), 1e-6, 1e-5)).toBeLessThan(1);
  });

  it('backward with many tokens on few ids, split between threads: the same bits as float32 sums in token order', async () => {
    // Work split by token would race on repeated ids (and add in another order); 7 tokens never
    // split at all. Enough tokens that the threads' work overlaps in time even on a loaded machine.
    const [v, c, m] = [4, 64, 200_000];
    const many = Int32Array.from({ length: m }, (_, i) => (i * 3) % v), dy = rand(m * c, 14);
    const want = new Float32Array(v * c);
    for (let i = 0; i < m; ++i) for (let j = 0; j < c; ++j) want[many[i]! * c + j] = Math.fround(want[many[i]! * c + j]! + dy[i * c + j]!);
    using dyt = t(dy, [m, c]);
    for (let rep = 0; rep < 3; ++rep) {
      using dtable = zeros([v, c]);
      ops.embeddingBackward(many, dyt, dtable);
      expect(Array.from(await read(dtable))).toEqual(Array.from(want));
    }
  });

  it('backward with paddingIdx: that row gets nothing, the others what they get without it (torch padding_idx)', async () => {
    const dy = t(rand(ids.length * C, 12), [ids.length, C]);
    const init = rand(V * C, 13);
    const plain = t(init, [V, C]), padded = t(init, [V, C]);
    ops.embeddingBackward(ids, dy, plain);
    ops.embeddingBackward(ids, dy, padded, 3); // id 3 occurs three times
    const [p, q] = [await read(plain), await read(padded)];
    for (let v = 0; v < V; ++v) {
      const row = (a: Float32Array) => Array.from(a.subarray(v * C, (v + 1) * C));
      expect(row(q), `row ${v}`).toEqual(v === 3 ? row(init) : row(p));
    }
    expect(row3Changed(p, init)).toBe(true); // without paddingIdx the row does change
    expect(() => ops.embeddingBackward(ids, dy, padded, V)).toThrow(new RangeError(`paddingIdx: expected an integer in [0, ${V - 1}], got ${V}`));
    expect(() => ops.embeddingBackward(ids, dy, padded, -1)).toThrow(/^paddingIdx: expected an integer in \[0/);
  });
  const row3Changed = (a: Float32Array, init: Float32Array) => a.subarray(3 * C, 4 * C).some((x, i) => x !== init[3 * C + i]);

  it('an id out of range is a RangeError naming it', () => {
    const tt = t(table, [V, C]);
    expect(() => ops.embedding(Int32Array.from([1, 2, 11]), tt)).toThrow(/^ids\[2\]: 11 is outside the table rows \[0, 11\)/);
    expect(() => ops.embedding(Int32Array.from([-1]), tt)).toThrow(RangeError);
    expect(() => ops.embeddingBackward(Int32Array.from([0, 12]), zeros([2, C]), zeros([V, C]))).toThrow(/^ids\[1\]: 12/);
    expect(() => ops.embedding([1, 2] as unknown as Int32Array, tt)).toThrow(/^ids: expected an Int32Array/);
    expect(() => ops.embeddingBackward(ids, zeros([ids.length + 1, C]), zeros([V, C]))).toThrow(/^dy: expected shape \[M, C\] \(M: ids.length\)/);
  });
});

describe('rmsNorm', () => {
  const eps = 1e-5;

  // Inputs of size 3, and of size 3e-3, whose mean square (3e-6) is below eps: where eps goes shows.
  for (const size of [3, 3e-3])
    it(`forward (y and rstd) against LlamaRMSNorm in float64, inputs up to ${size}`, async () => {
      const [M, C] = [9, 37];
      const x = rand(M * C, 21, size), w = rand(C, 22);
      const { y, rstd } = ops.rmsNorm(t(x, [M, C]), t(w, [C]), eps);
      const ref = rmsNormRef(x, w, eps, M, C);
      expect(rstd.shape).toEqual([M]);
      expect(worstError(await read(y), ref.y, FWD.atol, FWD.rtol)).toBeLessThan(1); // y is of size 1 whatever x's
      expect(worstError(await read(rstd), ref.rstd, 0, FWD.rtol)).toBeLessThan(1);
    });

  it('backward against finite differences and the float64 gradient; dw +=', async () => {
    for (const [M, C, fd] of [[3, 5, true], [9, 37, false]] as const) {
      const x = rand(M * C, 23), w = rand(C, 24), r = rand(M * C, 25);
      const { rstd } = ops.rmsNorm(t(x, [M, C]), t(w, [C]), eps);
      const dx = t(rand(M * C, 98), [M, C]), dw = zeros([C]);
      ops.rmsNormBackward(t(r, [M, C]), t(x, [M, C]), t(w, [C]), rstd, dx, dw);
      const ref = rmsNormBackwardRef(r, x, w, eps, M, C);
      expect(worstError(await read(dx), ref.dx, GRAD.atol, GRAD.rtol)).toBeLessThan(1);
      expect(worstError(await read(dw), ref.dw, GRAD.atol, GRAD.rtol)).toBeLessThan(1);
      if (fd) {
        const X = f64(x), W = f64(w);
        const loss = () => project(rmsNormRef(X, W, eps, M, C).y, r);
        expect(worstError(await read(dx), finiteDiff(loss, X), GRAD.atol, GRAD.rtol)).toBeLessThan(1);
        expect(worstError(await read(dw), finiteDiff(loss, W), GRAD.atol, GRAD.rtol)).toBeLessThan(1);
      }
      const once = await read(dw);
      ops.rmsNormBackward(t(r, [M, C]), t(x, [M, C]), t(w, [C]), rstd, dx, dw);
      expect(Array.from(await read(dw))).toEqual(Array.from(once, (v) => 2 * v));
    }
  });

  it('backward of a row near the float32 limit stays finite (r^2 s formed in double)', async () => {
    const x = Float32Array.of(1e30, -2e30, 3e30, 1e30), w = Float32Array.of(1, 1, 1, 1), dy = Float32Array.of(1e10, 2e10, 3e10, 4e10);
    const { rstd } = ops.rmsNorm(t(x, [1, 4]), t(w, [4]), eps);
    const dx = zeros([1, 4]), dw = zeros([4]);
    ops.rmsNormBackward(t(dy, [1, 4]), t(x, [1, 4]), t(w, [4]), rstd, dx, dw);
    const ref = rmsNormBackwardRef(dy, x, w, eps, 1, 4);
    expect(worstError(await read(dx), ref.dx, 0, 1e-5)).toBeLessThan(1); // before: +-Infinity
  });

  it('errors name the argument', () => {
    expect(() => ops.rmsNorm(zeros([2, 4]), zeros([5]), eps)).toThrow(/^w: expected shape \[C\] = \[4\], got \[5\]/);
    expect(() => ops.rmsNorm(zeros([2, 4]), zeros([4]), -1)).toThrow(/^eps: /);
    const { rstd } = ops.rmsNorm(zeros([2, 4]), zeros([4]), eps);
    expect(() => ops.rmsNormBackward(zeros([2, 4]), zeros([2, 4]), zeros([4]), zeros([3]), zeros([2, 4]), zeros([4]))).toThrow(/^rstd: expected shape \[M\] = \[2\]/);
    expect(() => ops.rmsNormBackward(zeros([2, 4]), zeros([2, 4]), zeros([4]), rstd, zeros([2, 4]), zeros([2, 4]))).toThrow(/^dw: /);
  });
});

describe('rope', () => {
  const [M, H, D] = [7, 3, 10];
  // zigzag-like, non-contiguous positions, up to 1M
  const positions = Int32Array.from([0, 1, 2, 61, 62, 500_001, 999_999]);
  const theta = 10000;

  it('the rotate_half convention: pairs (i, i + D/2), inv_freq = theta^(-2i/D)', async () => {
    // x = e_1 (second element of the first half) at position 3, D = 4: inv_freq[1] = theta^-0.5
    const x = t(Float32Array.from([0, 1, 0, 0]), [1, 1, 4]);
    const y = await read(ops.rope(x, Int32Array.from([3]), 100));
    const a = 3 * 100 ** -0.5;
    expect(worstError(y, [0, Math.cos(a), 0, Math.sin(a)], 1e-7, 0)).toBeLessThan(1);
  });

  it('forward against float64, with non-contiguous and large positions', async () => {
    const x = rand(M * H * D, 31);
    const y = ops.rope(t(x, [M, H, D]), positions, theta);
    expect(y.shape).toEqual([M, H, D]);
    // angles computed in double: at position 1M the result is still the exact rotation
    expect(worstError(await read(y), ropeRef(x, positions, theta, M, H, D), 1e-6, 1e-6)).toBeLessThan(1);
  });

  it('over many tokens, split between threads: each token at its own position, on every call', async () => {
    // 7 tokens are one chunk of work; 2048 are several (a table of angles shared between threads passed at 7).
    const [m, h, d] = [2048, 4, 64];
    const x = rand(m * h * d, 32), pos = Int32Array.from({ length: m }, (_, i) => (i * 7919) % 100_000);
    for (let rep = 0; rep < 5; ++rep)
      expect(worstError(await read(ops.rope(t(x, [m, h, d]), pos, theta)), ropeRef(x, pos, theta, m, h, d), 1e-6, 1e-6)).toBeLessThan(1);
  });

  it('given inverse frequencies (e.g. rescaled by rope_scaling): the same rotation at those frequencies', async () => {
    const x = rand(M * H * D, 34);
    const invFreq = Float64Array.from([1, 0.3, 1e-2, 1e-4, 2.5e-6]); // arbitrary, not a power series
    const y = await read(ops.rope(t(x, [M, H, D]), positions, invFreq));
    expect(worstError(y, ropeRef(x, positions, invFreq, M, H, D), 1e-6, 1e-6)).toBeLessThan(1);
    const back = await read(ops.ropeBackward(ops.rope(t(x, [M, H, D]), positions, invFreq), positions, invFreq));
    expect(worstError(back, x, 1e-6, 0)).toBeLessThan(1);
  });

  it('backward is the inverse rotation: against finite differences, and undoes the forward', async () => {
    const x = rand(M * H * D, 32), r = rand(M * H * D, 33);
    const dx = await read(ops.ropeBackward(t(r, [M, H, D]), positions, theta));
    const X = f64(x);
    const fd = finiteDiff(() => project(ropeRef(X, positions, theta, M, H, D), r), X);
    expect(worstError(dx, fd, GRAD.atol, GRAD.rtol)).toBeLessThan(1);
    const back = await read(ops.ropeBackward(ops.rope(t(x, [M, H, D]), positions, theta), positions, theta));
    expect(worstError(back, x, 1e-6, 0)).toBeLessThan(1);
  });

  it('errors name the argument', () => {
    const x = zeros([M, H, D]);
    expect(() => ops.rope(x, new Int32Array(M - 1), theta)).toThrow(/^positions: expected length 7 \(x's tokens M\), got 6/);
    expect(() => ops.ropeBackward(x, new Int32Array(M + 1), theta)).toThrow(/^positions: expected length 7 \(dy's tokens M\)/);
    expect(() => ops.rope(zeros([M, H, 9]), new Int32Array(M), theta)).toThrow(/^x: expected shape \[M, H, D\] .* D even/);
    expect(() => ops.rope(zeros([M, H * D]), new Int32Array(M), theta)).toThrow(/^x: /);
    expect(() => ops.rope(x, new Int32Array(M), 0)).toThrow(/^theta: /);
    expect(() => ops.rope(x, new Int32Array(M), new Float64Array(D))).toThrow(/^invFreq: expected 5 inverse frequencies \(head dim 10 \/ 2\), got 10/);
    expect(() => ops.rope(x, new Int32Array(M), new Float64Array([1, 1, NaN, 1, 1]))).toThrow(/^invFreq\[2\]: expected a finite number/);
    expect(() => ops.rope(x, new Int32Array(M), 'x' as never)).toThrow(/^theta: expected a number \(rope_theta\) or a Float64Array/);
    expect(() => ops.rope(x, Array.from({ length: M }, () => 0) as unknown as Int32Array, theta)).toThrow(/^positions: expected an Int32Array/);
    // reshape gives rope the [M, H, D] view of a projection's [M, H*D] output
    expect(ops.rope(ops.reshape(zeros([M, H * D]), [M, H, D]), new Int32Array(M), theta).shape).toEqual([M, H, D]);
  });
});

describe('ffn (SwiGLU)', () => {
  const [M, C, F] = [11, 12, 20];
  const x = rand(M * C, 41), wg = rand(F * C, 42, 0.5), wu = rand(F * C, 43, 0.5), wd = rand(C * F, 44, 0.5);
  const args = () => [t(x, [M, C]), t(wg, [F, C]), t(wu, [F, C]), t(wd, [C, F])] as const;

  it('forward against float64; the same bits for blockRows 1, 7, M and more than M', async () => {
    const ys = [];
    for (const b of [1, 7, M, 100]) ys.push(Array.from(await read(ops.ffn(...args(), b))));
    expect(worstError(ys[0]!, ffnRef(x, wg, wu, wd, M, C, F), FWD.atol, FWD.rtol)).toBeLessThan(1);
    for (const y of ys.slice(1)) expect(y).toEqual(ys[0]);
  });

  it('backward against the float64 gradient for several blockRows; dx the same bits, dw +=', async () => {
    const dy = rand(M * C, 45);
    const ref = ffnBackwardRef(dy, x, wg, wu, wd, M, C, F);
    let dx0: number[] | undefined;
    for (const b of [1, 7, M]) {
      const g = { dx: t(rand(M * C, 97), [M, C]), dwGate: zeros([F, C]), dwUp: zeros([F, C]), dwDown: zeros([C, F]) };
      ops.ffnBackward(t(dy, [M, C]), ...args(), b, g.dx, g.dwGate, g.dwUp, g.dwDown);
      const dx = Array.from(await read(g.dx));
      expect(worstError(dx, ref.dx, GRAD.atol, GRAD.rtol), `dx, blockRows ${b}`).toBeLessThan(1);
      for (const k of ['dwGate', 'dwUp', 'dwDown'] as const)
        expect(worstError(await read(g[k]), ref[k], GRAD.atol, GRAD.rtol), `${k}, blockRows ${b}`).toBeLessThan(1);
      if (dx0) expect(dx).toEqual(dx0);
      dx0 = dx;
      // a second call adds the gradient again: exactly twice with one block, else within rounding
      const once = { dwGate: await read(g.dwGate), dwUp: await read(g.dwUp), dwDown: await read(g.dwDown) };
      ops.ffnBackward(t(dy, [M, C]), ...args(), b, g.dx, g.dwGate, g.dwUp, g.dwDown);
      for (const k of ['dwGate', 'dwUp', 'dwDown'] as const) {
        const twice = await read(g[k]);
        if (b === M) expect(Array.from(twice), k).toEqual(Array.from(once[k], (v) => 2 * v));
        expect(worstError(twice, ref[k].map((v) => 2 * v), GRAD.atol, GRAD.rtol), k).toBeLessThan(1);
      }
    }
  });

  it('backward against finite differences of the float64 forward', async () => {
    const [m, c, f] = [3, 4, 5];
    const xs = rand(m * c, 46), g = rand(f * c, 47), u = rand(f * c, 48), d = rand(c * f, 49), r = rand(m * c, 50);
    const out = { dx: zeros([m, c]), dwGate: zeros([f, c]), dwUp: zeros([f, c]), dwDown: zeros([c, f]) };
    ops.ffnBackward(t(r, [m, c]), t(xs, [m, c]), t(g, [f, c]), t(u, [f, c]), t(d, [c, f]), 2, out.dx, out.dwGate, out.dwUp, out.dwDown);
    const P = { dx: f64(xs), dwGate: f64(g), dwUp: f64(u), dwDown: f64(d) };
    const loss = () => project(ffnRef(P.dx, P.dwGate, P.dwUp, P.dwDown, m, c, f), r);
    for (const k of ['dx', 'dwGate', 'dwUp', 'dwDown'] as const)
      expect(worstError(await read(out[k]), finiteDiff(loss, P[k]), GRAD.atol, GRAD.rtol), k).toBeLessThan(1);
  });

  it('errors name the argument', () => {
    const [a, b, c, d] = args();
    expect(() => ops.ffn(a, b, c, zeros([F, C]), 4)).toThrow(/^wDown: expected shape \[C, F\] = \[12, 20\], got \[20, 12\]/);
    expect(() => ops.ffn(a, b, zeros([F + 1, C]), d, 4)).toThrow(/^wUp: /);
    expect(() => ops.ffn(a, b, c, d, 0)).toThrow(/^blockRows: expected an integer in \[1, /);
    expect(() => ops.ffnBackward(zeros([M, C]), a, b, c, d, 4, zeros([M, C]), zeros([F, C]), zeros([C, F]), zeros([C, F]))).toThrow(/^dwUp: /);
  });
});

describe('crossEntropyLoss (fused LM head)', () => {
  const [M, C, V] = [13, 10, 37];
  const h = rand(M * C, 51), w = rand(V * C, 52);
  const targets = Int32Array.from([5, 0, 36, -100, 12, 12, 7, -100, 1, 30, 2, 3, 35]);

  it('loss and count against float64; the same for any chunkRows', () => {
    const ref = crossEntropyRef(h, w, targets, M, C, V);
    const results = [1, 4, M, 100].map((chunkRows) => ops.crossEntropyLoss(t(h, [M, C]), t(w, [V, C]), targets, { chunkRows }));
    expect(results[0]!.count).toBe(11);
    expect(Math.abs(results[0]!.loss - ref.loss) / ref.loss).toBeLessThan(1e-6);
    for (const r of results.slice(1)) expect(r).toEqual(results[0]);
  });

  it('the loss of a confident prediction (about 2e-6) is exact: its sum of exponentials is in double', () => {
    const v = 1000, wc = new Float32Array(v); // logits 20 at the target, 0 elsewhere: loss = log(1 + 999 e^-20)
    wc[7] = 20;
    const r = ops.crossEntropyLoss(t(Float32Array.of(1), [1, 1]), t(wc, [v, 1]), Int32Array.of(7), { chunkRows: 1 });
    const ref = crossEntropyRef(Float32Array.of(1), wc, Int32Array.of(7), 1, 1, v).loss;
    expect(ref).toBeGreaterThan(2e-6);
    expect(Math.abs(r.loss - ref) / ref).toBeLessThan(1e-6);
  });

  it('with logits exact in float32, the loss equals float64 to 1e-12: each row\'s loss is kept in double', () => {
    const hx = Float32Array.of(1, 2, -1, 0.5, 3, -2), wx = Float32Array.of(1, 0, 0, 1, -1, 0.5, 2, -1, 0.25, 0.75);
    const tg = Int32Array.of(0, 3, 4);
    const r = ops.crossEntropyLoss(t(hx, [3, 2]), t(wx, [5, 2]), tg, { chunkRows: 2 });
    expect(Math.abs(r.loss - crossEntropyRef(hx, wx, tg, 3, 2, 5).loss) / r.loss).toBeLessThan(1e-12);
  });

  it('logits() against float64', async () => {
    const l = ops.logits(t(h, [M, C]), t(w, [V, C]));
    expect(l.shape).toEqual([M, V]);
    expect(worstError(await read(l), crossEntropyRef(h, w, targets, M, C, V).logits, FWD.atol, FWD.rtol)).toBeLessThan(1);
  });

  it('dh (overwritten) and dwHead (+=) against the float64 gradient, scaled by gradScale, per chunkRows', async () => {
    const ref = crossEntropyRef(h, w, targets, M, C, V);
    const gradScale = 1 / 11;
    for (const chunkRows of [1, 4, M]) {
      const dh = t(rand(M * C, 96), [M, C]), dwHead = zeros([V, C]);
      const r = ops.crossEntropyLoss(t(h, [M, C]), t(w, [V, C]), targets, { chunkRows, gradScale, dh, dwHead });
      expect(Math.abs(r.loss - ref.loss) / ref.loss).toBeLessThan(1e-6);
      const dhv = await read(dh);
      expect(worstError(dhv, ref.dh.map((g) => g * gradScale), 1e-6, GRAD.rtol)).toBeLessThan(1);
      expect(worstError(await read(dwHead), ref.dwHead.map((g) => g * gradScale), 1e-6, GRAD.rtol)).toBeLessThan(1);
      expect(Array.from(dhv.subarray(3 * C, 4 * C))).toEqual(new Array(C).fill(0)); // ignored token
    }
  });

  it('gradients against finite differences of the float64 loss; dwHead +=; custom ignoreIndex', async () => {
    const [m, c, v] = [4, 3, 7];
    const hs = rand(m * c, 53), ws = rand(v * c, 54), tg = Int32Array.from([6, 0, 3, 2]);
    const dh = zeros([m, c]), dwHead = zeros([v, c]);
    ops.crossEntropyLoss(t(hs, [m, c]), t(ws, [v, c]), tg, { chunkRows: 3, ignoreIndex: 3, gradScale: 0.5, dh, dwHead });
    const H = f64(hs), W = f64(ws);
    const loss = () => 0.5 * crossEntropyRef(H, W, tg, m, c, v, 3).loss;
    expect(worstError(await read(dh), finiteDiff(loss, H), GRAD.atol, GRAD.rtol)).toBeLessThan(1);
    const fdW = finiteDiff(loss, W);
    expect(worstError(await read(dwHead), fdW, GRAD.atol, GRAD.rtol)).toBeLessThan(1);
    const r = ops.crossEntropyLoss(t(hs, [m, c]), t(ws, [v, c]), tg, { chunkRows: 2, ignoreIndex: 3, gradScale: 0.5, dwHead });
    expect(r.count).toBe(3);
    expect(worstError(await read(dwHead), fdW.map((g) => 2 * g), GRAD.atol, GRAD.rtol)).toBeLessThan(1);
  });

  it('stable with large logits (log-sum-exp)', async () => {
    const big = h.map((x) => x * 300);
    const ref = crossEntropyRef(big, w, targets, M, C, V);
    const dh = zeros([M, C]);
    const r = ops.crossEntropyLoss(t(big, [M, C]), t(w, [V, C]), targets, { chunkRows: 5, dh });
    expect(Number.isFinite(r.loss)).toBe(true);
    expect(Math.abs(r.loss - ref.loss) / ref.loss).toBeLessThan(1e-5);
    expect(worstError(await read(dh), ref.dh, 1e-5, 1e-3)).toBeLessThan(1);
  });

  it('probabilities come from the log-sum-exp unrounded: at logits of 1e4 the gradient is still exact', async () => {
    // lse rounded to float32 scaled every probability by exp(lse - float(lse)): dh was 5.4e-4, not 1.6e-4
    const w7 = Float32Array.of(1, 0.99, 0.5, -1, 1.0001, 0.3, 0.9999), dh = zeros([1, 1]), dw = zeros([7, 1]);
    ops.crossEntropyLoss(t(Float32Array.of(1e4), [1, 1]), t(w7, [7, 1]), Int32Array.of(6), { chunkRows: 1, dh, dwHead: dw });
    const logits = Array.from(w7, (x) => Math.fround(1e4 * x)), mx = Math.max(...logits); // what the kernel's product gives
    const sum = logits.reduce((a, l) => a + Math.exp(l - mx), 0);
    const dLogits = logits.map((l, j) => Math.exp(l - mx) / sum - (j === 6 ? 1 : 0));
    const want = dLogits.reduce((a, d, j) => a + d * w7[j]!, 0);
    expect(Math.abs((await read(dh))[0]! - want) / want).toBeLessThan(1e-3);
  });

  it('errors name the argument', () => {
    const [th, tw] = [t(h, [M, C]), t(w, [V, C])];
    const bad = Int32Array.from(targets);
    bad[4] = V;
    expect(() => ops.crossEntropyLoss(th, tw, bad, { chunkRows: 4 })).toThrow(/^targets\[4\]: 37 is outside the vocabulary \[0, 37\)/);
    expect(() => ops.crossEntropyLoss(th, tw, targets.subarray(1), { chunkRows: 4 })).toThrow(/^targets: expected length 13/);
    expect(() => ops.crossEntropyLoss(th, tw, targets, { chunkRows: 0 })).toThrow(/^opts.chunkRows: /);
    expect(() => ops.crossEntropyLoss(th, tw, targets, { chunkRows: 4, dwHead: zeros([C, V]) })).toThrow(/^opts.dwHead: expected shape \[V, C\] = \[37, 10\]/);
    expect(() => ops.crossEntropyLoss(th, tw, targets, { chunkRows: 4, dh: th })).toThrow(/^dh: must not be the same memory as h/);
    expect(() => ops.crossEntropyLoss(th, zeros([V, C + 1]), targets, { chunkRows: 4 })).toThrow(/^wHead: /);
  });
});

describe('adamw', () => {
  // Gradients of size 2, and of size 1e-7, whose sqrt(v) is near eps: where eps goes shows.
  for (const size of [2, 1e-7])
    it(`matches torch.optim.AdamW in float64 over several steps, gradients up to ${size}`, async () => {
      const n = 50;
      const o = { lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1 };
      const p0 = rand(n, 61), grads = [62, 63, 64, 65, 66].map((s) => rand(n, s, size));
      const param = t(p0, [5, 10]), m = zeros([5, 10]), v = zeros([5, 10]);
      grads.forEach((g, i) => ops.adamw(param, t(g, [5, 10]), m, v, { step: i + 1, ...o }));
      const ref = adamwRef(p0, grads, o);
      expect(worstError(await read(param), ref.param, 1e-6, 1e-5)).toBeLessThan(1);
      expect(worstError(await read(m), ref.m, 5e-8 * size, 1e-5)).toBeLessThan(1);
      expect(worstError(await read(v), ref.v, 2.5e-9 * size * size, 1e-5)).toBeLessThan(1);
    });

  it('a decay too small for 1 - lr*wd in float32 still decays, as in float64, over many steps', async () => {
    // lr*wd = 1e-8 is below half float32's spacing under 1: p*(1 - lr*wd) would leave p as it is,
    // 2e-5 short of float64 after these steps; folded into the update, it is kept on average.
    const n = 1000, steps = 2000, o = { lr: 1e-6, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01 };
    const p0 = rand(n, 71).map((x) => 1 + 0.5 * x), grads = Array.from({ length: steps }, (_, s) => rand(n, 1000 + s));
    const param = t(p0, [n]), m = zeros([n]), v = zeros([n]);
    grads.forEach((g, s) => {
      using tg = t(g, [n]);
      ops.adamw(param, tg, m, v, { step: s + 1, ...o });
    });
    const got = await read(param), want = adamwRef(p0, grads, o).param;
    let drift = 0;
    for (let i = 0; i < n; ++i) drift += (got[i]! - want[i]!) / n;
    expect(Math.abs(drift)).toBeLessThan(2e-6);
  });

  it('weight decay is decoupled (param *= 1 - lr*wd with a zero gradient); defaults as torch', async () => {
    const param = t(Float32Array.from([1, -2, 4]), [3]), z = zeros([3]);
    ops.adamw(param, z, zeros([3]), zeros([3]), { step: 1, lr: 0.1 }); // weightDecay 0.01
    expect(worstError(await read(param), [0.999, -1.998, 3.996], 1e-7, 0)).toBeLessThan(1);
  });

  it('errors name the argument', () => {
    const p = zeros([4]);
    expect(() => ops.adamw(p, zeros([5]), zeros([4]), zeros([4]), { step: 1, lr: 1 })).toThrow(/^grad: /);
    expect(() => ops.adamw(p, zeros([4]), zeros([4]), zeros([4]), { step: 0, lr: 1 })).toThrow(/^opts.step: /);
    expect(() => ops.adamw(p, zeros([4]), zeros([4]), zeros([4]), { step: 1, lr: 1, beta2: 1 })).toThrow(/^opts.beta2: /);
  });
});

describe('adamwMulti', () => {
  const shapes = [[1], [4097], [3, 5], [2, 2100]]; // 4097, 4200: more than one 4096-element chunk of the CUDA kernel
  const o = { step: 3, lr: 1e-2, beta1: 0.9, beta2: 0.95, eps: 1e-8 };
  const make = (seed: number) => shapes.map((s, i) => {
    const n = s.reduce((a, b) => a * b, 1);
    return { p: rand(n, seed + 10 * i), g: rand(n, seed + 10 * i + 1, 3), m: rand(n, seed + 10 * i + 2, 0.1), v: rand(n, seed + 10 * i + 3, 0.01).map(Math.abs) };
  });

  for (const gradScale of [1, 0.37, 0]) { // 0: a clipping coefficient that underflowed
    it(`the same bits as scale + adamw one tensor at a time (gradScale ${gradScale}); copies rounded to bfloat16`, async () => {
      const init = make(81), decays = [0, 0.1, 0.01, 0.3];
      const one = init.map((x, i) => ({ p: t(x.p, shapes[i]!), g: t(x.g, shapes[i]!), m: t(x.m, shapes[i]!), v: t(x.v, shapes[i]!) }));
      const all = init.map((x, i) => ({ param: t(x.p, shapes[i]!), grad: t(x.g, shapes[i]!), m: t(x.m, shapes[i]!), v: t(x.v, shapes[i]!),
        weightDecay: decays[i], copy: i === 2 ? undefined : zerosOn(shapes[i]!, { dtype: 'bfloat16' }) }));
      one.forEach((x, i) => {
        if (gradScale !== 1) ops.scale(x.g, gradScale);
        ops.adamw(x.p, x.g, x.m, x.v, { ...o, weightDecay: decays[i] });
      });
      ops.adamwMulti(all, { ...o, gradScale });
      for (const [i, x] of one.entries()) {
        const y = all[i]!, p = await read(x.p);
        expect(await read(y.param)).toEqual(p);
        expect(await read(y.m)).toEqual(await read(x.m));
        expect(await read(y.v)).toEqual(await read(x.v));
        expect(await read(y.grad)).toEqual(await read(x.g)); // scaled in place, or untouched
        if (y.copy) expect(await read(y.copy)).toEqual(roundTo('bfloat16', p));
        expect(p).not.toEqual(init[i]!.p); // every tensor was updated
      }
      if (gradScale !== 1) expect(await read(all[0]!.grad)).not.toEqual(init[0]!.g);
    });
  }

  it('errors name the entry and the argument', () => {
    const e = () => ({ param: zeros([4]), grad: zeros([4]), m: zeros([4]), v: zeros([4]) });
    expect(() => ops.adamwMulti([], o)).toThrow(/^entries: expected a non-empty array/);
    expect(() => ops.adamwMulti([e(), 3 as never], o)).toThrow(/^entries\[1\]: expected \{ param, grad, m, v \}/);
    expect(() => ops.adamwMulti([e(), { ...e(), m: zeros([5]) }], o)).toThrow(/^entries\[1\]\.m: expected shape entries\[1\]\.param's shape/);
    expect(() => ops.adamwMulti([e(), { ...e(), weightDecay: -1 }], o)).toThrow(/^entries\[1\]\.weightDecay: /);
    expect(() => ops.adamwMulti([e(), { ...e(), copy: zeros([3]) }], o)).toThrow(/^entries\[1\]\.copy: expected entries\[1\]\.param's shape/);
    expect(() => ops.adamwMulti([e()], { ...o, gradScale: -1 })).toThrow(/^opts\.gradScale: expected a finite number >= 0/);
    expect(() => ops.adamwMulti([e()], { ...o, step: 0 })).toThrow(/^opts\.step: /);
    const a = e(), b = e();
    expect(() => ops.adamwMulti([a, { ...b, v: a.param }], o)).toThrow(/^entries\[1\]\.v: must not be the same memory as entries\[0\]\.param$/);
    expect(() => ops.adamwMulti([{ ...a, copy: a.grad }], o)).toThrow(/^entries\[0\]\.copy: must not be the same memory as entries\[0\]\.grad$/);
    expect(() => ops.adamwMulti([{ ...a, grad: zerosOn([4], { dtype: 'bfloat16' }) }], o)).toThrow(/^entries\[0\]\.grad: needs float32/);
  });
});

describe('gradient utilities', () => {
  it('sumOfSquares in double, scale, add, zero', async () => {
    const n = 100_003; // several chunks
    const a = rand(n, 71), b = rand(n, 72);
    const ta = t(a, [n]);
    const ref = a.reduce((s, x) => s + x * x, 0);
    expect(Math.abs(ops.sumOfSquares(ta) - ref) / ref).toBeLessThan(1e-12);
    ops.add(ta, t(b, [n]));
    expect(Array.from(await read(ta))).toEqual(Array.from(a, (x, i) => Math.fround(x + b[i]!)));
    ops.scale(ta, 0.5);
    expect(Array.from(await read(ta))).toEqual(Array.from(a, (x, i) => Math.fround(Math.fround(x + b[i]!) * 0.5)));
    // A list: one wait for the device, the same bits as adding each tensor's sum in order.
    const parts = [t(a.subarray(0, 7), [7]), t(new Float32Array(0), [0]), t(b, [n]), t(a.subarray(7), [n - 7]), ta];
    const oneByOne = parts.reduce((s, p) => s + ops.sumOfSquares(p), 0);
    expect(ops.sumOfSquares(parts)).toBe(oneByOne);
    expect(ops.sumOfSquares([ta, ta])).toBe(2 * ops.sumOfSquares(ta)); // reading one tensor twice is fine
    expect(ops.sumOfSquares([t(new Float32Array(0), [0])])).toBe(0);
    expect(() => ops.sumOfSquares([])).toThrow(/^t: expected at least one tensor/);
    expect(() => ops.sumOfSquares([ta, 3 as any])).toThrow(/^t\[1\]: expected a Tensor/);
    ops.zero(ta);
    expect(ops.sumOfSquares(ta)).toBe(0);
    expect(() => ops.add(ta, zeros([n - 1]))).toThrow(/^b: expected shape/);
    expect(() => ops.scale(ta, NaN)).toThrow(/^s: /);
  });

  it('reshape shares memory', async () => {
    const x = t(Float32Array.from([1, 2, 3, 4, 5, 6]), [2, 3]);
    const v = ops.reshape(x, [3, 2]);
    expect(v.shape).toEqual([3, 2]);
    ops.scale(v, 2);
    expect(Array.from(await read(x))).toEqual([2, 4, 6, 8, 10, 12]);
    v.dispose();
    expect(Array.from(await read(x))).toEqual([2, 4, 6, 8, 10, 12]);
    expect(() => ops.reshape(x, [4, 2])).toThrow(/^shape: \[4, 2\] holds 8 elements/);
  });
});

describe('zeros and copy', () => {
  it('zeros(shape, opts) makes zeros of the dtype asked for; bad arguments are named', async () => {
    for (const dtype of ['float32', 'bfloat16', 'float16'] as const) {
      using z = zerosOn([3, 5], { dtype });
      expect([z.shape, z.dtype, z.device]).toEqual([[3, 5], dtype, 'cpu']);
      expect(Array.from(await read(z))).toEqual(new Array(15).fill(0));
    }
    using empty = zerosOn([0, 4]);
    expect(empty.numel).toBe(0);
    expect(() => zerosOn([2, -1])).toThrow(/^shape\[1\]: expected a non-negative integer/);
    expect(() => zerosOn([2], { dtype: 'int8' as never })).toThrow(/^opts\.dtype: /);
    if (info().backend === 'cpu') expect(() => zerosOn([2], { device: 'cuda' })).toThrow(/^opts\.device: 'cuda' is not available/);
  });

  it('copy converts to the destination dtype (round to nearest even) and refuses what does not fit', async () => {
    // Random values are almost never halfway between two of a half type's: the last 8 are, two
    // rounding down to an even neighbour and two up to one, for bfloat16 and then for float16.
    const bits = (u: number) => new Float32Array(Uint32Array.of(u).buffer)[0]!;
    const halfway = [bits(0x3f808000), bits(0x3f818000), bits(0xbf808000), bits(0xbf818000), 1 + 2 ** -11, 1 + 3 * 2 ** -11, -(1 + 2 ** -11), -(1 + 3 * 2 ** -11)];
    const evenNeighbours = { bfloat16: [1, bits(0x3f820000), -1, -bits(0x3f820000)], float16: [1, 1 + 2 ** -9, -1, -(1 + 2 ** -9)] }; // of the 4 of each
    const x = Float32Array.from([...rand(1001 - 8, 81, 3), ...halfway]);
    using src = t(x, [7, 143]);
    for (const dtype of ['float32', 'bfloat16', 'float16'] as const) {
      using dst = tensor(new Float32Array(1001).fill(9), [1001], { dtype }); // another shape, same count
      ops.copy(dst, src);
      expect(Array.from(await read(dst)), dtype).toEqual(Array.from(roundTo(dtype, x)));
      const tail = Array.from(await read(dst)).slice(-8);
      if (dtype === 'bfloat16') expect(tail.slice(0, 4), 'bfloat16 halfway').toEqual(evenNeighbours.bfloat16);
      if (dtype === 'float16') expect(tail.slice(4), 'float16 halfway').toEqual(evenNeighbours.float16);
      using back = t(new Float32Array(1001), [1001]);
      ops.copy(back, dst); // and from a half type into float32: exact
      expect(Array.from(await read(back)), `${dtype} -> float32`).toEqual(Array.from(roundTo(dtype, x)));
    }
    using small = t(new Float32Array(1000), [1000]);
    expect(() => ops.copy(small, src)).toThrow(/^src: holds 1001 elements \(\[7, 143\]\), dst 1000/);
    expect(() => ops.copy(small, 'x' as never)).toThrow(/^src: expected a Tensor/);
    // Onto itself or a view of its own memory: the bytes are there already, unchanged.
    using view = ops.reshape(src, [1001]);
    ops.copy(view, src);
    ops.copy(src, src);
    expect(Array.from(await read(view))).toEqual(Array.from(x));
  });
});

describe('randomNormal (initialisation)', () => {
  // An independent reference of native/cpu/ops/random.cpp's stream (splitmix64 in BigInt,
  // Box-Muller in double), so that a change of the values, which would change every model's
  // initial weights, fails here; the init tests check only their mean, spread and thread count.
  const M64 = (1n << 64n) - 1n;
  const splitmix64 = (x: bigint) => {
    x = (x + 0x9e3779b97f4a7c15n) & M64;
    x = ((x ^ (x >> 30n)) * 0xbf58476d1ce4e5b9n) & M64;
    x = ((x ^ (x >> 27n)) * 0x94d049bb133111ebn) & M64;
    return x ^ (x >> 31n);
  };
  function reference(n: number, seed: bigint, stream: bigint, std: number): Float64Array {
    const key = splitmix64(seed ^ splitmix64((stream + 0x632be59bd9b4e019n) & M64));
    const z = new Float64Array(n);
    for (let p = 0; 2 * p < n; ++p) {
      const u1 = Number((splitmix64((key + 2n * BigInt(p)) & M64) >> 11n) + 1n) * 2 ** -53; // (0, 1]
      const u2 = Number(splitmix64((key + 2n * BigInt(p) + 1n) & M64) >> 11n) * 2 ** -53;
      const r = std * Math.sqrt(-2 * Math.log(u1)), a = 2 * Math.PI * u2;
      z[2 * p] = r * Math.cos(a);
      if (2 * p + 1 < n) z[2 * p + 1] = r * Math.sin(a);
    }
    return z;
  }

  it('element i of a stream is the reference\'s (pairs from two counters each); an odd length writes nothing past its end', () => {
    const n = 257;
    const z = new Float32Array(n + 1);
    z[n] = 42;
    native.randomNormal(z.subarray(0, n), 11, 3, 0.05);
    expect(worstError(z.subarray(0, n), reference(n, 11n, 3n, 0.05), 1e-9, 1e-6)).toBeLessThan(1);
    expect(z[n]).toBe(42);
    const other = new Float32Array(n);
    native.randomNormal(other, 11, 4, 0.05); // another stream: other values
    expect(worstError(other, reference(n, 11n, 4n, 0.05), 1e-9, 1e-6)).toBeLessThan(1);
  });
});
