// The Hopper forward kernel (native/cuda/flash/fwd_sm90_kernel.cuh, wgmma), which runs only
// when asked for with RING_ATTENTION_SM90=1 until it has been validated on a GPU: against the
// float64 reference, with the tolerances of attention-cuda.test.ts, and against the default
// kernel on the same inputs. That the two differ in some bits shows that the Hopper kernel
// did run (their tiles differ, so their roundings do). scripts/gpu-session.sh also runs the
// whole of attention-cuda and ring-cuda with the variable set. Skipped, with the reason in
// the title, without an sm_90 device or without sm_90a code in this build.
import { afterEach, describe, expect, it } from 'vitest';

import { attention, info } from '../../dist/index.js';
import { asTensors, makeInputs, read } from '../helpers.js';
import { attentionRef, relErr, type Dims } from '../reference.js';

const cuda = info().cuda;
const device = cuda.devices[0];
const why = !cuda.available
  ? cuda.reason
  : !cuda.architectures.split(',').some((a) => a.startsWith('90a'))
    ? `this build has no sm_90a code (architectures ${cuda.architectures})`
    : device?.computeCapability !== '9.0'
      ? `the GPU is not sm_90 (compute capability ${device?.computeCapability})`
      : '';
const title = why ? `Hopper forward kernel (skipped: ${why})` : 'Hopper forward kernel (RING_ATTENTION_SM90=1)';

const TOL = { bfloat16: 1.5e-2, float16: 2e-3 } as const;
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
];

function forward(x: Dims, dtype: Half, causal: boolean, seed: number, sm90: boolean) {
  if (sm90) process.env.RING_ATTENTION_SM90 = '1';
  else delete process.env.RING_ATTENTION_SM90;
  const inp = makeInputs(x, seed, dtype);
  const t = asTensors(x, inp, dtype, 'cuda');
  const r = attention(t.q, t.k, t.v, { causal });
  for (const tt of Object.values(t)) tt.dispose();
  return { inp, ...r };
}

describe.skipIf(!!why)(title, () => {
  afterEach(() => { delete process.env.RING_ATTENTION_SM90; });

  for (const [name, x, causal, dtype] of CASES)
    it(`${name} (${dtype}${causal ? ', causal' : ''}): equals float64, and differs in bits from the default kernel`, async () => {
      const h = forward(x, dtype, causal, 41, true);
      const d = forward(x, dtype, causal, 41, false);
      const [out, lse, outDefault] = [await read(h.out), await read(h.lse), await read(d.out)];
      const ref = attentionRef(h.inp.q, h.inp.k, h.inp.v, x, { causal });
      expect(relErr(out, ref.out), 'out').toBeLessThan(TOL[dtype]);
      for (let i = 0; i < lse.length; ++i) expect(Math.abs(lse[i]! - ref.lse[i]!) / (1 + Math.abs(ref.lse[i]!))).toBeLessThan(1e-4);
      expect(relErr(out, outDefault), 'vs the default kernel').toBeLessThan(TOL[dtype]);
      expect(Buffer.from(out.buffer).equals(Buffer.from(outDefault.buffer)), 'the Hopper kernel ran').toBe(false);
      for (const tt of [h.out, h.lse, d.out, d.lse]) tt.dispose();
    });

  it('rows that see no key (causal, seqQ > seqK): out 0 and lse -Infinity, no NaN', async () => {
    const x = dims(1, 300, 100, 2, 1, 64);  // queries 0..199 see nothing
    const h = forward(x, 'bfloat16', true, 5, true);
    const [out, lse] = [await read(h.out), await read(h.lse)];
    for (let hd = 0; hd < x.heads; ++hd)
      for (let i = 0; i < x.seqQ; ++i) expect(lse[hd * x.seqQ + i] === -Infinity).toBe(i < 200);
    for (let i = 0; i < 200 * x.heads * x.dim; ++i) expect(out[i]).toBe(0);
    expect(out.every(Number.isFinite)).toBe(true);
    const ref = attentionRef(h.inp.q, h.inp.k, h.inp.v, x, { causal: true });
    expect(relErr(out, ref.out)).toBeLessThan(TOL.bfloat16);
    h.out.dispose(), h.lse.dispose();
  });
});
