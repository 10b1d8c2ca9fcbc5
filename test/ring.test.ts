// ringAttention over launch() groups of 1-8 ranks: the gathered result must equal
// single-device attention over the whole sequence (checked against the float64 reference).
import { describe, expect, it } from 'vitest';

import { gatherSequence, launch, tensor, type DType } from '../dist/index.js';
import { attentionBackwardRef, attentionRef, worstError, type Dims } from './reference.js';
import { documentRuns, makeInputs, read } from './helpers.js';
import { native } from '../dist/native.js';

const rankModule = new URL('./fixtures/ring-rank.mjs', import.meta.url);

interface RankResult {
  out: Float32Array;
  lse: Float32Array;
  dq: Float32Array;
  dk: Float32Array;
  dv: Float32Array;
}

async function runRing(x: Dims, worldSize: number, causal: boolean, layout: 'contiguous' | 'zigzag', dtype: DType = 'float32', documentIds?: Int32Array) {
  const inputs = makeInputs(x, 100 + worldSize, dtype);
  const results = (await launch({ worldSize }, rankModule, { x, inputs, causal, layout, dtype, documentIds })) as RankResult[];
  const local = x.seqQ / worldSize;
  const gather = (name: keyof RankResult, heads: number, dim = 1) =>
    read(gatherSequence(results.map((r) => tensor(r[name], dim === 1 ? [x.batch, local, heads, x.dim] : [x.batch, heads, local])), { layout, dim }));
  return {
    inputs,
    out: await gather('out', x.heads),
    lse: await gather('lse', x.heads, 2),
    dq: await gather('dq', x.heads),
    dk: await gather('dk', x.kvHeads),
    dv: await gather('dv', x.kvHeads),
  };
}

// Each chunk of the zigzag layout has 5 or 7 tokens: no multiple of any block size.
const dims = (worldSize: number, chunk = 5): Dims => {
  const seq = 2 * worldSize * chunk;
  return { batch: 2, seqQ: seq, seqK: seq, heads: 4, kvHeads: 2, dim: 16 };
};

// Runs the ring and checks every output and gradient against the float64 reference.
async function expectRingMatchesReference(x: Dims, worldSize: number, causal: boolean, layout: 'contiguous' | 'zigzag', documentIds?: Int32Array) {
  const r = await runRing(x, worldSize, causal, layout, 'float32', documentIds);
  const ref = attentionRef(r.inputs.q, r.inputs.k, r.inputs.v, x, { causal, documentIds });
  const g = attentionBackwardRef(r.inputs.dout, r.inputs.q, r.inputs.k, r.inputs.v, x, { causal, documentIds });
  expect(worstError(r.out, ref.out, 2e-5, 1e-4), 'out').toBeLessThan(1);
  expect(worstError(r.lse, ref.lse, 2e-5, 1e-4), 'lse').toBeLessThan(1);
  expect(worstError(r.dq, g.dq, 5e-5, 1e-3), 'dq').toBeLessThan(1);
  expect(worstError(r.dk, g.dk, 5e-5, 1e-3), 'dk').toBeLessThan(1);
  expect(worstError(r.dv, g.dv, 5e-5, 1e-3), 'dv').toBeLessThan(1);
}

// Packed sequences: document ids travel with their K/V block, so each query sees only its own
// document's keys wherever they started. Documents cross shard and chunk boundaries.
describe('ring attention over packed sequences (documentIds)', () => {
  const runs = (x: Dims, lengths: number[][]) => {
    const ids = documentRuns(lengths);
    expect(ids.length).toBe(x.batch * x.seqQ);
    return ids;
  };
  for (const worldSize of [2, 4])
    for (const layout of ['contiguous', 'zigzag'] as const)
      it(`N=${worldSize} ${layout} causal: forward and backward equal the float64 reference`, () => {
        const x = dims(worldSize); // 20 or 40 tokens per row
        const S = x.seqQ;
        return expectRingMatchesReference(x, worldSize, true, layout, runs(x, [[3, S - 10, 1, 6], [S]]));
      });
  it('N=4 contiguous, not causal, scattered ids', () => {
    const x = dims(4);
    return expectRingMatchesReference(x, 4, false, 'contiguous', Int32Array.from({ length: 2 * x.seqQ }, (_, i) => (i * 5) % 3));
  });
});

describe('ring attention equals attention over the whole sequence', () => {
  for (const worldSize of [1, 2, 3, 4, 8])
    for (const layout of ['contiguous', 'zigzag'] as const)
      for (const causal of [true, false]) {
        if (!causal && layout === 'zigzag' && worldSize > 4) continue; // same code path as contiguous non-causal
        it(`N=${worldSize} ${layout} causal=${causal}: forward and backward`, () =>
          expectRingMatchesReference(dims(worldSize, worldSize === 3 ? 7 : 5), worldSize, causal, layout));
      }

  // Shards of 74 tokens (chunks of 37) span the CPU kernel's 32-row and 64-key tiles, so a
  // ring step's block is ragged inside, not only at its end.
  for (const worldSize of [2, 3])
    for (const layout of ['contiguous', 'zigzag'] as const)
      it(`N=${worldSize} ${layout} causal, shards of 74 tokens (past one tile)`, () =>
        expectRingMatchesReference({ ...dims(worldSize, 37), batch: 1 }, worldSize, true, layout));

  it('head dim 128 with GQA 4:1, N=2 contiguous causal', () =>
    expectRingMatchesReference({ batch: 1, seqQ: 18, seqK: 18, heads: 4, kvHeads: 1, dim: 128 }, 2, true, 'contiguous'));

  it('head dim 80 with MQA, N=4 zigzag causal', () =>
    expectRingMatchesReference({ batch: 1, seqQ: 24, seqK: 24, heads: 2, kvHeads: 1, dim: 80 }, 4, true, 'zigzag'));
});

describe('work balance across ranks (the step plan the ring loop follows)', () => {
  // work of one step in query-key pairs; a causal (diagonal) block does half its square
  const work = ([q, k, causal]: [number, number, number]) => (causal ? (q * k) / 2 : q * k);

  it('causal zigzag: at every step every rank does the same work, half a block after the first step', () => {
    const N = 4, seq = 10;
    const plans = [0, 1, 2, 3].map((rank) => native.ringPlan(rank, N, seq, true, true));
    for (let step = 0; step < N; ++step) {
      const w = plans.map((p) => work(p[step]!));
      expect(new Set(w).size, `step ${step}: ${w}`).toBe(1);
      expect(w[0]).toBe((seq * seq) / 2); // the diagonal block at step 0, then half blocks
    }
  });

  it('causal contiguous: rank r computes at r + 1 steps and skips the rest (the imbalance zigzag removes)', () => {
    const N = 4;
    for (let rank = 0; rank < N; ++rank) {
      const active = native.ringPlan(rank, N, 8, true, false).filter((p) => work(p) > 0).length;
      expect(active).toBe(rank + 1);
    }
  });

  it('not causal: every step is a full block', () => {
    for (const zigzag of [false, true])
      expect(native.ringPlan(1, 3, 6, false, zigzag)).toEqual([[6, 6, 0], [6, 6, 0], [6, 6, 0]]);
  });
});

describe('bfloat16 across the ring: float32 accumulation, one rounding at the end', () => {
  // Were partial outputs kept in bf16 between steps, error would grow with N. Ours must
  // stay within one bf16 rounding of the float64 result (on the same rounded inputs) at
  // every N, for the output and for the gradients that travel with K/V.
  for (const worldSize of [1, 2, 4, 8]) {
    it(`N=${worldSize}`, async () => {
      const x = dims(worldSize, 4);
      const r = await runRing(x, worldSize, true, 'zigzag', 'bfloat16');
      const ref = attentionRef(r.inputs.q, r.inputs.k, r.inputs.v, x, { causal: true });
      // the backward is handed the bf16 forward output, as in training; so is the reference
      const g = attentionBackwardRef(r.inputs.dout, r.inputs.q, r.inputs.k, r.inputs.v, x, { causal: true }, r.out);
      const oneRounding = 2 ** -8;
      expect(worstError(r.out, ref.out, 1e-5, oneRounding), 'out').toBeLessThan(1);
      expect(worstError(r.lse, ref.lse, 1e-5, 1e-5), 'lse (float32 throughout)').toBeLessThan(1);
      expect(worstError(r.dq, g.dq, 1e-4, oneRounding), 'dq').toBeLessThan(1);
      expect(worstError(r.dk, g.dk, 1e-4, oneRounding), 'dk').toBeLessThan(1);
      expect(worstError(r.dv, g.dv, 1e-4, oneRounding), 'dv').toBeLessThan(1);
    });
  }
});
