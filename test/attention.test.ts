// attention() and attentionBackward() against the float64 reference.
import { describe, expect, it } from 'vitest';

import { attention, attentionBackward, tensor } from '../dist/index.js';
import { attentionBackwardRef, attentionRef, worstError, type Dims } from './reference.js';
import { asTensors, documentRuns, makeInputs, read } from './helpers.js';
import { native } from '../dist/native.js';

// float32 compute over <= 300 keys: the per-element error of the blockwise result stays
// near 1e-6; 2e-5 absolute + 1e-4 relative leaves room without hiding a wrong mask or merge.
const F32_TOL = { atol: 2e-5, rtol: 1e-4 };

interface Case extends Dims {
  name: string;
  causal: boolean;
}

const cases: Case[] = [
  { name: 'square, dim 64', batch: 2, seqQ: 70, seqK: 70, heads: 2, kvHeads: 2, dim: 64, causal: false },
  { name: 'square causal, dim 64', batch: 2, seqQ: 70, seqK: 70, heads: 2, kvHeads: 2, dim: 64, causal: true },
  { name: 'dim 80, odd length', batch: 1, seqQ: 97, seqK: 97, heads: 2, kvHeads: 2, dim: 80, causal: true },
  { name: 'dim 128, GQA 4:2', batch: 1, seqQ: 65, seqK: 65, heads: 4, kvHeads: 2, dim: 128, causal: true },
  { name: 'MQA 4:1', batch: 1, seqQ: 33, seqK: 33, heads: 4, kvHeads: 1, dim: 32, causal: false },
  { name: 'seqQ < seqK causal (bottom right)', batch: 1, seqQ: 37, seqK: 130, heads: 2, kvHeads: 1, dim: 16, causal: true },
  { name: 'seqQ > seqK causal (first rows see nothing)', batch: 1, seqQ: 90, seqK: 41, heads: 2, kvHeads: 2, dim: 16, causal: true },
  { name: 'seqQ != seqK', batch: 2, seqQ: 29, seqK: 75, heads: 3, kvHeads: 3, dim: 8, causal: false },
  { name: 'dim 256, one token', batch: 1, seqQ: 1, seqK: 1, heads: 1, kvHeads: 1, dim: 256, causal: true },
  { name: 'odd dim 3', batch: 1, seqQ: 67, seqK: 67, heads: 1, kvHeads: 1, dim: 3, causal: true },
];

describe('attention forward', () => {
  // The GPU tests (test/gpu/hopper.ts) tell which CUDA kernels ran by these counts.
  it('counts CUDA attention launches only: none for the CPU', async () => {
    const before = native.attentionLaunches();
    expect(Object.keys(before).sort()).toEqual(['backward', 'forward', 'hopperBackward', 'hopperForward']);
    const x: Dims = { batch: 1, seqQ: 8, seqK: 8, heads: 2, kvHeads: 1, dim: 4 };
    const inp = makeInputs(x, 1);
    const t = asTensors(x, inp);
    const { out, lse } = attention(t.q, t.k, t.v, { causal: true });
    const g = attentionBackward(t.dout, t.q, t.k, t.v, out, lse, { causal: true });
    for (const tt of [...Object.values(t), out, lse, g.dq, g.dk, g.dv]) tt.dispose();
    expect(native.attentionLaunches()).toEqual(before);
  });

  for (const c of cases) {
    it(c.name, async () => {
      const inp = makeInputs(c, 11);
      const t = asTensors(c, inp);
      const { out, lse } = attention(t.q, t.k, t.v, { causal: c.causal });
      const ref = attentionRef(inp.q, inp.k, inp.v, c, { causal: c.causal });
      expect(out.shape).toEqual([c.batch, c.seqQ, c.heads, c.dim]);
      expect(lse.shape).toEqual([c.batch, c.heads, c.seqQ]);
      expect(lse.dtype).toBe('float32');
      expect(worstError(await read(out), ref.out, F32_TOL.atol, F32_TOL.rtol)).toBeLessThan(1);
      expect(worstError(await read(lse), ref.lse, F32_TOL.atol, F32_TOL.rtol)).toBeLessThan(1);
    });
  }

  it('rows that see no key give 0 and lse -Infinity, never NaN', async () => {
    const c: Dims = { batch: 1, seqQ: 6, seqK: 2, heads: 1, kvHeads: 1, dim: 4 };
    const t = asTensors(c, makeInputs(c, 5));
    const { out, lse } = attention(t.q, t.k, t.v, { causal: true });
    const o = await read(out), l = await read(lse);
    // query i sees keys j <= i + 2 - 6: rows 0..3 see nothing
    expect(Array.from(l.slice(0, 4))).toEqual([-Infinity, -Infinity, -Infinity, -Infinity]);
    expect(Array.from(o.slice(0, 16))).toEqual(new Array(16).fill(0));
    expect(o.every((x) => !Number.isNaN(x))).toBe(true);
    expect(Number.isFinite(l[4]!)).toBe(true);
  });

  it('a NaN in a query row gives that row NaN, not the 0 and -Infinity of a row that sees no key', async () => {
    const c: Dims = { batch: 1, seqQ: 3, seqK: 5, heads: 1, kvHeads: 1, dim: 4 };
    const inp = makeInputs(c, 8);
    inp.q[4] = NaN; // row 1
    const t = asTensors(c, inp), ref = attentionRef(inp.q, inp.k, inp.v, c, { causal: false });
    const { out, lse } = attention(t.q, t.k, t.v);
    const o = await read(out), l = await read(lse);
    expect(Number.isNaN(l[1]!)).toBe(true); // before: -Infinity
    expect(o.slice(4, 8).every((x) => Number.isNaN(x))).toBe(true); // before: 0
    for (const r of [0, 2]) { // the other rows as ever
      expect(l[r]).toBeCloseTo(ref.lse[r]!, 5);
      for (let d = 0; d < 4; ++d) expect(o[r * 4 + d]).toBeCloseTo(ref.out[r * 4 + d]!, 5);
    }
  });

  it('honours an explicit scale', async () => {
    const c: Dims = { batch: 1, seqQ: 20, seqK: 20, heads: 1, kvHeads: 1, dim: 8 };
    const inp = makeInputs(c, 3);
    const t = asTensors(c, inp);
    const { out } = attention(t.q, t.k, t.v, { scale: 2.5 });
    const ref = attentionRef(inp.q, inp.k, inp.v, c, { causal: false, scale: 2.5 });
    expect(worstError(await read(out), ref.out, 1e-5, 1e-4)).toBeLessThan(1);
  });

  for (const dtype of ['bfloat16', 'float16'] as const) {
    it(`${dtype} storage: computed in float32, rounded once`, async () => {
      const c: Dims = { batch: 1, seqQ: 50, seqK: 50, heads: 2, kvHeads: 1, dim: 32 };
      const inp = makeInputs(c, 21, dtype);
      const t = asTensors(c, inp, dtype);
      const { out, lse } = attention(t.q, t.k, t.v, { causal: true });
      expect(out.dtype).toBe(dtype);
      const ref = attentionRef(inp.q, inp.k, inp.v, c, { causal: true });
      // one rounding of the output: half an ulp, 2^-8 (bf16) or 2^-11 (fp16) relative
      const rtol = dtype === 'bfloat16' ? 2 ** -8 : 2 ** -11;
      expect(worstError(await read(out), ref.out, 1e-5, rtol)).toBeLessThan(1);
      expect(worstError(await read(lse), ref.lse, 1e-5, 1e-5)).toBeLessThan(1);
    });
  }
});

describe('attention backward', () => {
  for (const c of cases.filter((x) => x.seqQ * x.seqK <= 100 * 100)) {
    it(c.name, async () => {
      const inp = makeInputs(c, 31);
      const t = asTensors(c, inp);
      const { out, lse } = attention(t.q, t.k, t.v, { causal: c.causal });
      const g = attentionBackward(t.dout, t.q, t.k, t.v, out, lse, { causal: c.causal });
      const ref = attentionBackwardRef(inp.dout, inp.q, inp.k, inp.v, c, { causal: c.causal });
      expect(g.dq.shape).toEqual(t.q.shape);
      expect(g.dk.shape).toEqual(t.k.shape);
      expect(worstError(await read(g.dq), ref.dq, 5e-5, 1e-3)).toBeLessThan(1);
      expect(worstError(await read(g.dk), ref.dk, 5e-5, 1e-3)).toBeLessThan(1);
      expect(worstError(await read(g.dv), ref.dv, 5e-5, 1e-3)).toBeLessThan(1);
    });
  }

  it('rows that see no key contribute no gradient and no NaN', async () => {
    const c: Dims = { batch: 1, seqQ: 6, seqK: 2, heads: 1, kvHeads: 1, dim: 4 };
    const inp = makeInputs(c, 7);
    const t = asTensors(c, inp);
    const { out, lse } = attention(t.q, t.k, t.v, { causal: true });
    const g = attentionBackward(t.dout, t.q, t.k, t.v, out, lse, { causal: true });
    const dq = await read(g.dq);
    expect(Array.from(dq.slice(0, 16))).toEqual(new Array(16).fill(0));
    for (const x of [dq, await read(g.dk), await read(g.dv)]) expect(x.every(Number.isFinite)).toBe(true);
  });

  it("the backward's error grows with |lse| (it recomputes P from the float32 lse, as FlashAttention does), within the README's figures", async () => {
    // Every score equal to s, so P is uniform and dV_j = mean_i dout_i exactly.
    const n = 64, d = 16, inp = makeInputs({ batch: 1, seqQ: n, seqK: n, heads: 1, kvHeads: 1, dim: d }, 11);
    const relErr = async (s: number) => {
      const q = tensor(new Float32Array(n * d).fill(Math.sqrt(s / 4)), [1, n, 1, d]); // scale 1/4: q.q/4 = s
      const v = tensor(inp.v, [1, n, 1, d]), dout = tensor(inp.dout, [1, n, 1, d]);
      const { out, lse } = attention(q, q, v);
      const dv = await read(attentionBackward(dout, q, q, v, out, lse).dv);
      let err = 0, top = 0;
      for (let e = 0; e < d; ++e) {
        let ref = 0;
        for (let i = 0; i < n; ++i) ref += inp.dout[i * d + e]! / n;
        top = Math.max(top, Math.abs(ref));
        for (let j = 0; j < n; ++j) err = Math.max(err, Math.abs(dv[j * d + e]! - ref));
      }
      return err / top;
    };
    expect(await relErr(16)).toBeLessThan(5e-6); // 1.0e-6 measured
    expect(await relErr(14_400)).toBeLessThan(1e-3); // 3.0e-4 measured
  });
});

// Packed sequences: documents laid end to end, each token attending only within its own.
describe('packed sequences (documentIds)', () => {
  const c: Dims = { batch: 2, seqQ: 70, seqK: 70, heads: 4, kvHeads: 2, dim: 32 };
  const docs = documentRuns([[30, 1, 25, 14], [70]]); // a one-token document; a row of one document
  const scattered = Int32Array.from({ length: 140 }, (_, i) => (i * 7) % 3); // any ids, not only runs

  for (const causal of [true, false])
    for (const [what, ids] of [['runs', docs], ['scattered ids', scattered]] as const)
      it(`${what}, causal=${causal}: forward and backward equal the float64 reference`, async () => {
        const inp = makeInputs(c, 41);
        const t = asTensors(c, inp);
        const { out, lse } = attention(t.q, t.k, t.v, { causal, documentIds: ids });
        const g = attentionBackward(t.dout, t.q, t.k, t.v, out, lse, { causal, documentIds: ids });
        const ref = attentionRef(inp.q, inp.k, inp.v, c, { causal, documentIds: ids });
        const gref = attentionBackwardRef(inp.dout, inp.q, inp.k, inp.v, c, { causal, documentIds: ids });
        expect(worstError(await read(out), ref.out, F32_TOL.atol, F32_TOL.rtol), 'out').toBeLessThan(1);
        expect(worstError(await read(lse), ref.lse, F32_TOL.atol, F32_TOL.rtol), 'lse').toBeLessThan(1);
        for (const k of ['dq', 'dk', 'dv'] as const) expect(worstError(await read(g[k]), gref[k], 5e-5, 1e-3), k).toBeLessThan(1);
      });

  it('each document comes out as attention over that document alone', async () => {
    const one: Dims = { ...c, batch: 1 };
    const inp = makeInputs(one, 43);
    const t = asTensors(one, inp);
    const lengths = [30, 1, 25, 14];
    const packed = await read(attention(t.q, t.k, t.v, { causal: true, documentIds: documentRuns([lengths]) }).out);
    const row = c.heads * c.dim, kvRow = c.kvHeads * c.dim;
    let start = 0;
    for (const n of lengths) {
      const alone: Dims = { ...one, seqQ: n, seqK: n };
      const slice = (a: Float32Array, w: number) => a.slice(start * w, (start + n) * w);
      const s = asTensors(alone, { q: slice(inp.q, row), k: slice(inp.k, kvRow), v: slice(inp.v, kvRow), dout: slice(inp.dout, row) });
      const want = await read(attention(s.q, s.k, s.v, { causal: true }).out);
      expect(worstError(packed.slice(start * row, (start + n) * row), want, 1e-6, 1e-5), `document at ${start}`).toBeLessThan(1);
      start += n;
    }
  });

  it('refuses ids that are not an Int32Array of batch x seq, or q and k of different lengths, naming the option', () => {
    const t = asTensors(c, makeInputs(c, 45));
    expect(() => attention(t.q, t.k, t.v, { documentIds: [0, 1] as never })).toThrow(/opts\.documentIds: expected an Int32Array/);
    expect(() => attention(t.q, t.k, t.v, { documentIds: new Int32Array(70) })).toThrow(/opts\.documentIds: expected batch x seq = 140 ids, got 70/);
    const x: Dims = { ...c, seqK: 40 };
    const u = asTensors(x, makeInputs(x, 46));
    expect(() => attention(u.q, u.k, u.v, { documentIds: new Int32Array(140) })).toThrow(/opts\.documentIds: needs q and k of the same sequence length/);
  });
});

describe('attention backward against finite differences', () => {
  // Central differences of L = sum(out * dout) through the float64 reference forward,
  // so the check shares nothing with the kernel under test.
  const c: Dims = { batch: 1, seqQ: 5, seqK: 7, heads: 2, kvHeads: 1, dim: 3 };
  for (const causal of [false, true]) {
    it(`causal=${causal}`, async () => {
      const inp = makeInputs(c, 41);
      const t = asTensors(c, inp);
      const { out, lse } = attention(t.q, t.k, t.v, { causal });
      const g = attentionBackward(t.dout, t.q, t.k, t.v, out, lse, { causal });
      const loss = (q: ArrayLike<number>, k: ArrayLike<number>, v: ArrayLike<number>) =>
        attentionRef(q, k, v, c, { causal }).out.reduce((s, o, i) => s + o * inp.dout[i]!, 0);
      const h = 1e-5;
      for (const [name, grad] of [['q', g.dq], ['k', g.dk], ['v', g.dv]] as const) {
        const ours = await read(grad);
        const base = { q: Float64Array.from(inp.q), k: Float64Array.from(inp.k), v: Float64Array.from(inp.v) };
        const fd = new Float64Array(ours.length);
        for (let i = 0; i < fd.length; ++i) {
          const x = base[name];
          const keep = x[i]!;
          x[i] = keep + h;
          const up = loss(base.q, base.k, base.v);
          x[i] = keep - h;
          const down = loss(base.q, base.k, base.v);
          x[i] = keep;
          fd[i] = (up - down) / (2 * h);
        }
        expect(worstError(ours, fd, 1e-4, 1e-3), `d${name}`).toBeLessThan(1);
      }
    });
  }
});

describe('the portable CPU code (forced by RING_ATTENTION_PORTABLE_CPU; AVX2 and FMA where the CPU has them otherwise)', () => {
  it('forward and backward against float64, causal GQA, as the default path is', async () => {
    const { spawnSync } = await import('node:child_process');
    // dim 37: the vector loops' scalar tails run too
    const c: Case = { name: 'portable', batch: 1, seqQ: 90, seqK: 90, heads: 4, kvHeads: 2, dim: 37, causal: true };
    const inp = makeInputs(c, 57);
    const code = `import('${new URL('../dist/index.js', import.meta.url).href}').then(async (ra) => {
      const { readFileSync } = await import('node:fs');
      const { arrays, shapes } = JSON.parse(readFileSync(0, 'utf8'));
      const [q, k, v, dout] = arrays.map((a, i) => ra.tensor(Float32Array.from(a), shapes[i]));
      const { out, lse } = ra.attention(q, k, v, { causal: true });
      const g = ra.attentionBackward(dout, q, k, v, out, lse, { causal: true });
      const all = await Promise.all([out, g.dq, g.dk, g.dv].map((t) => t.toFloat32Array()));
      console.log(JSON.stringify([ra.info().cpuKernels, ...all.map((a) => Array.from(a))]));
    })`;
    const qShape = [c.batch, c.seqQ, c.heads, c.dim], kShape = [c.batch, c.seqK, c.kvHeads, c.dim];
    const input = JSON.stringify({ arrays: [inp.q, inp.k, inp.v, inp.dout].map((a) => Array.from(a)), shapes: [qShape, kShape, kShape, qShape] });
    const r = spawnSync(process.execPath, ['-e', code], { input, encoding: 'utf8', maxBuffer: 1 << 26, env: { ...process.env, RING_ATTENTION_PORTABLE_CPU: '1' } });
    expect(r.stderr).toBe('');
    const [kernels, out, dq, dk, dv] = JSON.parse(r.stdout) as [string, ...number[][]];
    expect(kernels).toBe('portable');
    expect(worstError(out!, attentionRef(inp.q, inp.k, inp.v, c, { causal: true }).out, F32_TOL.atol, F32_TOL.rtol)).toBeLessThan(1);
    const ref = attentionBackwardRef(inp.dout, inp.q, inp.k, inp.v, c, { causal: true });
    expect(worstError(dq!, ref.dq, 5e-5, 1e-3)).toBeLessThan(1);
    expect(worstError(dk!, ref.dk, 5e-5, 1e-3)).toBeLessThan(1);
    expect(worstError(dv!, ref.dv, 5e-5, 1e-3)).toBeLessThan(1);
  });
});

describe('thread count', () => {
  it('an absurd RING_ATTENTION_NUM_THREADS is capped, not a crash', async () => {
    const { spawnSync } = await import('node:child_process');
    const code = `import('${new URL('../dist/index.js', import.meta.url).href}').then(async (ra) => {
      const q = ra.tensor(new Float32Array(8192 * 32 * 8), [8192, 32, 8, 1]); // 65536 work items
      const { out } = ra.attention(q, q, q, { causal: true });
      console.log((await out.toFloat32Array()).length);
    })`;
    const r = spawnSync(process.execPath, ['-e', code], { encoding: 'utf8', env: { ...process.env, RING_ATTENTION_NUM_THREADS: '1000000' } });
    expect(r.stderr).toBe('');
    expect(r.stdout.trim()).toBe(String(8192 * 32 * 8));
    expect(r.status).toBe(0);
  });
});
