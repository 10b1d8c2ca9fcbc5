// The Hopper kernels (native/cuda/flash/{fwd,bwd}_sm90_kernel.cuh, wgmma), which run only when
// asked for with RING_ATTENTION_SM90=1 until they have been validated on a GPU: forward and
// backward against the float64 reference, with the tolerances of attention-cuda.test.ts, and
// against the default kernels on the same inputs. The launch counts (hopper.ts) show that the
// Hopper kernels did run, and so do the forward's bits (its tiles differ, so its roundings do).
// The backwards' bits are not compared: given the same out and lse, equal bits would be no
// fault. scripts/gpu-session.sh also runs attention-cuda, ring-cuda and llama-cuda with the
// variable set; their float64 comparisons at head dims 64 and 128 (the model's head-dim-64
// case) check by the counts that their calls ran these kernels (hopper.ts).
// Skipped, with the reason in the title, without an sm_90 device or without sm_90a code here.
import { afterEach, describe, expect, it } from 'vitest';

import { attention, attentionBackward, tensor } from '../../dist/index.js';
import { asTensors, makeInputs, read } from '../helpers.js';
import { attentionBackwardRef, attentionRef, rowErr, type Dims } from '../reference.js';
import { hopperUnavailable as why, launchCounter } from './hopper.js';

const title = why ? `Hopper kernels (skipped: ${why})` : 'Hopper kernels (RING_ATTENTION_SM90=1)';

const TOL = { bfloat16: { out: 1.5e-2, grad: 2e-2 }, float16: { out: 2e-3, grad: 3e-3 } } as const;
type Half = keyof typeof TOL;
const dims = (batch: number, seqQ: number, seqK: number, heads: number, kvHeads: number, dim: number): Dims =>
  ({ batch, seqQ, seqK, heads, kvHeads, dim });

const CASES: [string, Dims, boolean, Half][] = [
  ['MHA d64', dims(2, 200, 200, 4, 4, 64), false, 'bfloat16'],
  ['MHA d64 causal', dims(2, 200, 200, 4, 4, 64), true, 'bfloat16'],
  ['GQA d128 causal, ragged 257', dims(1, 257, 257, 4, 2, 128), true, 'bfloat16'],
  ['GQA d128 causal float16', dims(1, 130, 300, 4, 2, 128), true, 'float16'],
  ['MQA d128, 1000 tokens', dims(1, 1000, 1000, 8, 1, 128), false, 'bfloat16'],
  ['d64 float16, seqQ < seqK', dims(1, 100, 700, 2, 2, 64), false, 'float16'],
  // Head dim 64's backward takes 128 queries a step, dQ split by rows: a ragged last step, GQA.
  ['GQA d64 causal, ragged 333', dims(1, 333, 333, 8, 2, 64), true, 'bfloat16'],
];

/** Forward and backward, with the Hopper kernels asked for or not; with `from`, the backward takes that out and lse (attention-cuda.test.ts says why). */
async function run(x: Dims, dtype: Half, causal: boolean, seed: number, sm90: boolean, deterministic = false,
  from?: { out: Float32Array; lse: Float32Array }) {
  if (sm90) process.env.RING_ATTENTION_SM90 = '1';
  else delete process.env.RING_ATTENTION_SM90;
  const inp = makeInputs(x, seed, dtype);
  const t = asTensors(x, inp, dtype, 'cuda');
  const since = launchCounter();
  const { out, lse } = attention(t.q, t.k, t.v, { causal });
  const given = from && { out: tensor(from.out, out.shape, { dtype, device: 'cuda' }), lse: tensor(from.lse, lse.shape, { device: 'cuda' }) };
  const g = attentionBackward(t.dout, t.q, t.k, t.v, given?.out ?? out, given?.lse ?? lse, { causal, deterministic });
  const r = { inp, launches: since(), out: await read(out), lse: await read(lse), dq: await read(g.dq), dk: await read(g.dk), dv: await read(g.dv) };
  for (const tt of [...Object.values(t), out, lse, g.dq, g.dk, g.dv, ...(given ? [given.out, given.lse] : [])]) tt.dispose();
  return r;
}

const same = (a: Float32Array, b: Float32Array) => Buffer.from(a.buffer).equals(Buffer.from(b.buffer));

describe.skipIf(!!why)(title, () => {
  afterEach(() => {
    delete process.env.RING_ATTENTION_SM90;
    delete process.env.RING_ATTENTION_SM90_PINGPONG;
  });

  for (const [name, x, causal, dtype] of CASES)
    it(`${name} (${dtype}${causal ? ', causal' : ''}): forward and backward equal float64 and the default kernels; the forward differs in bits`, async () => {
      const h = await run(x, dtype, causal, 41, true);
      const d = await run(x, dtype, causal, 41, false, false, h); // its backward from the Hopper forward's out and lse
      const ref = attentionRef(h.inp.q, h.inp.k, h.inp.v, x, { causal });
      const gref = attentionBackwardRef(h.inp.dout, h.inp.q, h.inp.k, h.inp.v, x, { causal }, h.out);
      expect(rowErr(h.out, ref.out, x.dim), 'out').toBeLessThan(TOL[dtype].out);
      for (let i = 0; i < h.lse.length; ++i) expect(Math.abs(h.lse[i]! - ref.lse[i]!) / (1 + Math.abs(ref.lse[i]!))).toBeLessThan(1e-4);
      expect(rowErr(h.out, d.out, x.dim), 'out vs the default kernel').toBeLessThan(TOL[dtype].out);
      for (const k of ['dq', 'dk', 'dv'] as const) {
        expect(rowErr(h[k], gref[k], x.dim), k).toBeLessThan(TOL[dtype].grad);
        expect(rowErr(h[k], d[k], x.dim), `${k} vs the default kernel`).toBeLessThan(TOL[dtype].grad);
      }
      expect(same(h.out, d.out), 'the Hopper forward ran').toBe(false);
      expect(h.launches).toEqual({ forward: 1, backward: 1, hopperForward: 1, hopperBackward: 1 });
      expect(d.launches).toEqual({ forward: 1, backward: 1, hopperForward: 0, hopperBackward: 0 });
    });

  it('deterministic backward: the same bits on every run, equal to float64 (head dims 128 and 64)', async () => {
    for (const x of [dims(2, 300, 300, 4, 2, 128), dims(2, 300, 300, 4, 2, 64)]) {
      const a = await run(x, 'bfloat16', true, 3, true, true);
      const b = await run(x, 'bfloat16', true, 3, true, true);
      for (const k of ['dq', 'dk', 'dv'] as const) expect(same(a[k], b[k]), `${k} d${x.dim}`).toBe(true);
      const gref = attentionBackwardRef(a.inp.dout, a.inp.q, a.inp.k, a.inp.v, x, { causal: true }, a.out);
      for (const k of ['dq', 'dk', 'dv'] as const) expect(rowErr(a[k], gref[k], x.dim), `${k} d${x.dim}`).toBeLessThan(TOL.bfloat16.grad);
    }
  });

  // The ping-pong orders when the two warpgroups issue their products, not what they compute.
  it('the forward without its ping-pong (RING_ATTENTION_SM90_PINGPONG=0) gives the same bits', async () => {
    for (const [x, causal] of [[dims(1, 1000, 1000, 4, 2, 128), true], [dims(2, 300, 700, 2, 2, 64), false]] as const) {
      const a = await run(x, 'bfloat16', causal, 9, true);
      process.env.RING_ATTENTION_SM90_PINGPONG = '0';
      const b = await run(x, 'bfloat16', causal, 9, true);
      delete process.env.RING_ATTENTION_SM90_PINGPONG;
      const ref = attentionRef(a.inp.q, a.inp.k, a.inp.v, x, { causal });
      expect(rowErr(a.out, ref.out, x.dim), 'out').toBeLessThan(TOL.bfloat16.out);
      expect(same(a.out, b.out), 'out').toBe(true);
      expect(same(a.lse, b.lse), 'lse').toBe(true);
    }
  });

  it('rows that see no key (causal, seqQ > seqK): out 0 and lse -Infinity, finite gradients, no NaN', async () => {
    const x = dims(1, 300, 100, 2, 1, 64);  // queries 0..199 see nothing
    const h = await run(x, 'bfloat16', true, 5, true);
    for (let hd = 0; hd < x.heads; ++hd)
      for (let i = 0; i < x.seqQ; ++i) expect(h.lse[hd * x.seqQ + i] === -Infinity).toBe(i < 200);
    for (let i = 0; i < 200 * x.heads * x.dim; ++i) expect(h.out[i]).toBe(0);
    for (const k of ['out', 'dq', 'dk', 'dv'] as const) expect(h[k].every(Number.isFinite), k).toBe(true);
    const ref = attentionRef(h.inp.q, h.inp.k, h.inp.v, x, { causal: true });
    expect(rowErr(h.out, ref.out, x.dim)).toBeLessThan(TOL.bfloat16.out);
    const gref = attentionBackwardRef(h.inp.dout, h.inp.q, h.inp.k, h.inp.v, x, { causal: true }, h.out);
    expect(rowErr(h.dk, gref.dk, x.dim)).toBeLessThan(TOL.bfloat16.grad);
  });
});
