// The CUDA flash-attention kernels against three oracles: the naive float64 reference, the
// CPU backend on the same inputs, and PyTorch's scaled_dot_product_attention (run through
// python3 where torch with CUDA is importable). Skipped, with the reason in the title, where
// there is no CUDA device (CI).
//
// Tolerances. The inputs are exactly representable in the test dtype, and every dot product
// accumulates in float32, so the log-sum-exp is float32-accurate (1e-4). What differs from
// float64 is the rounding the tensor cores need: P is rounded to the dtype before P V, dS
// before dS K and dS^T Q, and the results once more on the way out. bfloat16 keeps 8
// significant bits (relative step 2^-8 = 3.9e-3), float16 11 (4.9e-4); with values in
// [-1, 1] and errors that partly average over a row, we allow about four steps of each
// relative to each row's largest reference value (one token's head; floored at 5% of the
// tensor's: rowErr): 1.5e-2 (bf16) and 2e-3 (f16) for out, 2e-2 and 3e-3 for gradients. The
// same kernels on the CPU emulator stay per row within 0.27 (out) and 0.21 (gradients) of its
// own, looser, tolerances over its cases (test/flash-emulator): at most 5.3e-3 and 6.1e-3 for
// bf16, 1.1e-3 and 1.2e-3 for f16. Those are the kernels alone (its backward is given float64
// lse and delta); here the backward takes the forward's rounded ones, a little more. Row by
// row, a small row that is wrong whole cannot pass.
// The backward's float64 reference is given the kernel's own rounded output (storedOut), as the
// kernel computes delta = rowsum(dO * out) from it. From the exact output, delta's difference
// alone fills the tolerance in causal rows that see few keys, whose dQ is small: the CPU
// backend in bfloat16 measured worst dQ rows of 0.021-0.035 that way (limit 0.02), 3.9e-3 from
// its own output. The forward's error is out's own check. For the same reason a backward
// compared with another backend's is given the same out and lse.
// Against torch the rule is flash-attention's own: our error from float64 may be at most twice
// torch's low-precision error from float64 (plus a hair for ties).
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

import { attention, attentionBackward, info, tensor, type DType } from '../../dist/index.js';
import { asTensors, documentRuns, makeInputs, read } from '../helpers.js';
import { attentionBackwardRef, attentionRef, relErr, rowErr, type Dims } from '../reference.js';
import { expectHopperWhereAsked, launchCounter } from './hopper.js';

const cuda = info().cuda;
const title = cuda.available ? 'CUDA attention kernels' : `CUDA attention kernels (skipped: ${cuda.reason})`;

type Half = Exclude<DType, 'float32'>;
const TOL: Record<Half, { out: number; grad: number }> = {
  bfloat16: { out: 1.5e-2, grad: 2e-2 },
  float16: { out: 2e-3, grad: 3e-3 },
};

function lseErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let worst = 0;
  for (let i = 0; i < b.length; ++i) {
    if (b[i] === -Infinity) {
      if (a[i] !== -Infinity) return Infinity;
      continue;
    }
    worst = Math.max(worst, Math.abs(a[i]! - b[i]!) / (1 + Math.abs(b[i]!)));
  }
  return worst;
}

async function runCuda(x: Dims, dtype: Half, causal: boolean, seed: number, deterministic = false) {
  const inp = makeInputs(x, seed, dtype);
  const t = asTensors(x, inp, dtype, 'cuda');
  const since = launchCounter();
  const { out, lse } = attention(t.q, t.k, t.v, { causal });
  const g = attentionBackward(t.dout, t.q, t.k, t.v, out, lse, { causal, deterministic });
  const r = {
    inp, launches: since(), out: await read(out), lse: await read(lse),
    dq: await read(g.dq), dk: await read(g.dk), dv: await read(g.dv),
  };
  for (const tt of [...Object.values(t), out, lse, g.dq, g.dk, g.dv]) tt.dispose();
  return r;
}

const dims = (batch: number, seqQ: number, seqK: number, heads: number, kvHeads: number, dim: number): Dims =>
  ({ batch, seqQ, seqK, heads, kvHeads, dim });

// Small enough for the float64 reference in JS; ragged tiles, GQA/MQA, seqQ != seqK, and head
// dims on and between the compiled ones (64, 128, 256), including one that is not a multiple of 8.
const SMALL: [string, Dims, boolean, Half][] = [
  ['MHA d64', dims(2, 200, 200, 4, 4, 64), false, 'bfloat16'],
  ['MHA d64 causal', dims(2, 200, 200, 4, 4, 64), true, 'bfloat16'],
  ['GQA d128 causal, ragged 257', dims(1, 257, 257, 4, 2, 128), true, 'bfloat16'],
  ['GQA d128 causal float16', dims(1, 130, 130, 4, 2, 128), true, 'float16'],
  ['MQA d80 causal, seqQ < seqK', dims(1, 100, 300, 2, 1, 80), true, 'bfloat16'],
  ['d33 (unaligned rows), seqQ > seqK', dims(1, 70, 90, 2, 2, 33), false, 'float16'],
  ['d256 causal', dims(1, 96, 96, 2, 2, 256), true, 'bfloat16'],
  ['d200 float16', dims(1, 40, 77, 2, 1, 200), false, 'float16'],
];

describe.skipIf(!cuda.available)(title, () => {
  // Packed sequences: runs of documents crossing tiles (and a one-token one), then scattered ids
  // that leave whole tiles with nothing visible for some rows.
  for (const [what, ids] of [
    ['runs', documentRuns([[100, 1, 70, 129]])],
    ['scattered ids', Int32Array.from({ length: 300 }, (_, i) => (i * 7) % 3)],
  ] as const)
    it(`documentIds (${what}), GQA d128 causal, bfloat16: forward and backward equal the float64 reference`, async () => {
      const x = dims(1, 300, 300, 4, 2, 128);
      const inp = makeInputs(x, 17, 'bfloat16');
      const t = asTensors(x, inp, 'bfloat16', 'cuda');
      const since = launchCounter();
      const { out, lse } = attention(t.q, t.k, t.v, { causal: true, documentIds: ids });
      const ref = attentionRef(inp.q, inp.k, inp.v, x, { causal: true, documentIds: ids });
      const outValues = await read(out);
      expect(rowErr(outValues, ref.out, x.dim), 'out').toBeLessThan(TOL.bfloat16.out);
      expect(lseErr(await read(lse), ref.lse), 'lse').toBeLessThan(1e-4);
      const gref = attentionBackwardRef(inp.dout, inp.q, inp.k, inp.v, x, { causal: true, documentIds: ids }, outValues);
      for (const deterministic of [false, true]) {
        const g = attentionBackward(t.dout, t.q, t.k, t.v, out, lse, { causal: true, deterministic, documentIds: ids });
        for (const k of ['dq', 'dk', 'dv'] as const) expect(rowErr(await read(g[k]), gref[k], x.dim), `${k} deterministic=${deterministic}`).toBeLessThan(TOL.bfloat16.grad);
      }
      expectHopperWhereAsked(since(), x.dim);
    });

  for (const [name, x, causal, dtype] of SMALL)
    it(`${name} (${dtype}): forward and backward equal the float64 reference and the CPU backend`, async () => {
      const c = await runCuda(x, dtype, causal, 11);
      expectHopperWhereAsked(c.launches, x.dim); // run with RING_ATTENTION_SM90=1 (scripts/gpu-session.sh)
      const ref = attentionRef(c.inp.q, c.inp.k, c.inp.v, x, { causal });
      const gref = attentionBackwardRef(c.inp.dout, c.inp.q, c.inp.k, c.inp.v, x, { causal }, c.out);
      expect(rowErr(c.out, ref.out, x.dim)).toBeLessThan(TOL[dtype].out);
      expect(lseErr(c.lse, ref.lse)).toBeLessThan(1e-4);
      for (const k of ['dq', 'dk', 'dv'] as const) expect(rowErr(c[k], gref[k], x.dim), k).toBeLessThan(TOL[dtype].grad);

      const t = asTensors(x, c.inp, dtype);
      const cpu = attention(t.q, t.k, t.v, { causal });
      // The CPU's backward from the CUDA forward's out and lse: from its own, whose bits differ,
      // delta = rowsum(dO * out) would differ by more than the backward's own error in rows with little dQ.
      const cg = attentionBackward(t.dout, t.q, t.k, t.v, tensor(c.out, [x.batch, x.seqQ, x.heads, x.dim], { dtype }),
        tensor(c.lse, [x.batch, x.heads, x.seqQ]), { causal });
      expect(rowErr(c.out, await read(cpu.out), x.dim)).toBeLessThan(TOL[dtype].out);
      expect(lseErr(c.lse, await read(cpu.lse))).toBeLessThan(1e-4);
      for (const k of ['dq', 'dk', 'dv'] as const) expect(rowErr(c[k], await read(cg[k]), x.dim), `${k} vs the CPU`).toBeLessThan(TOL[dtype].grad);
    });

  it('rows that see no key (causal, seqQ > seqK): out 0, lse -Infinity, finite gradients, no NaN', async () => {
    const x = dims(1, 150, 64, 2, 2, 64);  // bottom-right alignment: queries 0..85 see nothing
    const c = await runCuda(x, 'bfloat16', true, 5);
    const hidden = x.seqQ - x.seqK;
    for (let h = 0; h < x.heads; ++h)
      for (let i = 0; i < x.seqQ; ++i) expect(c.lse[h * x.seqQ + i] === -Infinity).toBe(i < hidden);
    for (let i = 0; i < hidden * x.heads * x.dim; ++i) expect(c.out[i]).toBe(0);
    for (const k of ['out', 'dq', 'dk', 'dv'] as const) expect(c[k].every(Number.isFinite), k).toBe(true);
    for (let i = 0; i < hidden * x.heads * x.dim; ++i) expect(Math.abs(c.dq[i]!)).toBe(0);
    const gref = attentionBackwardRef(c.inp.dout, c.inp.q, c.inp.k, c.inp.v, x, { causal: true }, c.out);
    for (const k of ['dq', 'dk', 'dv'] as const) expect(rowErr(c[k], gref[k], x.dim), k).toBeLessThan(TOL.bfloat16.grad);
  });

  it('deterministic backward gives the same bits on every run and agrees with the atomic one', async () => {
    const x = dims(2, 300, 300, 4, 2, 128);
    const a = await runCuda(x, 'bfloat16', true, 3, true);
    const b = await runCuda(x, 'bfloat16', true, 3, true);
    for (const k of ['dq', 'dk', 'dv'] as const) expect(Buffer.from(a[k].buffer).equals(Buffer.from(b[k].buffer)), k).toBe(true);
    const fast = await runCuda(x, 'bfloat16', true, 3, false);
    expect(relErr(fast.dq, a.dq)).toBeLessThan(1e-2);
    expect(Buffer.from(fast.dk.buffer).equals(Buffer.from(a.dk.buffer))).toBe(true);  // dK/dV never use atomics
  });

  // Loading a tile one step ahead changes when the bytes arrive, not what is computed.
  it('the backward with its tiles loaded one step ahead and without (RING_ATTENTION_BWD_PREFETCH=1, 0) gives the same bits', async () => {
    const shapes = [dims(1, 700, 700, 4, 2, 128), dims(2, 300, 200, 4, 1, 64), dims(1, 200, 260, 2, 2, 256), dims(1, 130, 90, 3, 1, 80)];
    try {
      for (const x of shapes) {
        process.env.RING_ATTENTION_BWD_PREFETCH = '1';
        const a = await runCuda(x, 'bfloat16', true, 4, true);
        process.env.RING_ATTENTION_BWD_PREFETCH = '0';
        const b = await runCuda(x, 'bfloat16', true, 4, true);
        for (const k of ['dq', 'dk', 'dv'] as const) expect(Buffer.from(a[k].buffer).equals(Buffer.from(b[k].buffer)), `${k} d${x.dim}`).toBe(true);
        const gref = attentionBackwardRef(a.inp.dout, a.inp.q, a.inp.k, a.inp.v, x, { causal: true }, a.out);
        for (const k of ['dq', 'dk', 'dv'] as const) expect(rowErr(a[k], gref[k], x.dim), `${k} d${x.dim}`).toBeLessThan(TOL.bfloat16.grad);
      }
    } finally {
      delete process.env.RING_ATTENTION_BWD_PREFETCH;
    }
  });
});

// ---- PyTorch SDPA ----

const here = dirname(fileURLToPath(import.meta.url));
const torchProbe = cuda.available
  ? spawnSync('python3', ['-c', 'import torch, numpy; assert torch.cuda.is_available(); print(torch.__version__)'], { encoding: 'utf8' })
  : undefined;
const torchReason = !cuda.available ? cuda.reason : torchProbe?.status === 0 ? '' : 'python3 with torch (CUDA) and numpy is not importable';
const torchTitle = torchReason ? `CUDA attention vs PyTorch SDPA (skipped: ${torchReason})` : `CUDA attention vs PyTorch SDPA (torch ${torchProbe!.stdout.trim()})`;

function runTorch(x: Dims, dtype: Half, causal: boolean, inp: ReturnType<typeof makeInputs>) {
  const dir = mkdtempSync(join(tmpdir(), 'ra-sdpa-'));
  try {
    writeFileSync(join(dir, 'meta.json'), JSON.stringify({ ...x, causal, dtype, scale: 1 / Math.sqrt(x.dim) }));
    for (const k of ['q', 'k', 'v', 'dout'] as const) writeFileSync(join(dir, `${k}.f32`), inp[k]);
    const r = spawnSync('python3', [join(here, 'sdpa_oracle.py'), dir], { encoding: 'utf8', timeout: 100_000, killSignal: 'SIGKILL' }); // a hang fails the test, not the whole run
    if (r.status !== 0) throw new Error(`sdpa_oracle.py failed${r.signal ? ` (cut off at 100 s: ${r.signal})` : ''}: ${r.stderr}`);
    const load = (name: string) => { const b = readFileSync(join(dir, `${name}.f32`)); return new Float32Array(b.buffer, b.byteOffset, b.length / 4); };
    const get = (tag: string) => ({ out: load(`out_${tag}`), dq: load(`dq_${tag}`), dk: load(`dk_${tag}`), dv: load(`dv_${tag}`) });
    return { fp64: get('fp64'), lowp: get('lowp') };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

const TORCH: [string, Dims, boolean, Half][] = [
  ['GQA d128 causal, 1000 tokens', dims(2, 1000, 1000, 8, 2, 128), true, 'bfloat16'],
  ['d128, 4096 tokens', dims(1, 4096, 4096, 8, 8, 128), false, 'bfloat16'],
  ['d64 causal seqQ < seqK', dims(1, 500, 1300, 4, 4, 64), true, 'bfloat16'],
  ['d64 float16 causal', dims(2, 777, 777, 4, 1, 64), true, 'float16'],
  ['d80 (between tiles)', dims(1, 600, 600, 4, 2, 80), false, 'bfloat16'],
  ['d256 causal', dims(1, 333, 333, 2, 2, 256), true, 'bfloat16'],
];

describe.skipIf(torchReason !== '')(torchTitle, () => {
  for (const [name, x, causal, dtype] of TORCH)
    it(`${name} (${dtype}): our error from float64 is at most twice torch's`, async () => {
      const c = await runCuda(x, dtype, causal, 21);
      const t = runTorch(x, dtype, causal, c.inp);
      for (const k of ['out', 'dq', 'dk', 'dv'] as const) {
        const ours = relErr(c[k], t.fp64[k]), theirs = relErr(t.lowp[k], t.fp64[k]);
        expect(ours, `${k}: ours ${ours.toExponential(2)} vs torch ${theirs.toExponential(2)}`).toBeLessThanOrEqual(2 * theirs + 1e-4);
      }
    });
});
