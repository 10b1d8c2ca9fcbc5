// Ring attention on CUDA through the in-process transport: N virtual ranks (worker threads)
// share one GPU, K/V blocks move by device-to-device copies on each rank's communication
// stream. The gathered result must equal single-device CUDA attention and the float64
// reference, within the bfloat16 tolerances justified in attention-cuda.test.ts.
import { describe, expect, it } from 'vitest';

import { attention, attentionBackward, gatherSequence, info, launch, tensor } from '../../dist/index.js';
import { asTensors, documentRuns, makeInputs, read } from '../helpers.js';
import { attentionBackwardRef, attentionRef, relErr, rowErr, type Dims } from '../reference.js';
import { expectHopperWhereAsked, launchCounter } from './hopper.js';

const cuda = info().cuda;
const title = cuda.available ? 'ring attention on CUDA (virtual ranks on one GPU)' : `ring attention on CUDA (skipped: ${cuda.reason})`;
const rankModule = new URL('../fixtures/ring-rank.mjs', import.meta.url);

type Name = 'out' | 'lse' | 'dq' | 'dk' | 'dv';

async function runRing(x: Dims, worldSize: number, causal: boolean, layout: 'contiguous' | 'zigzag', deterministic = false) {
  const inputs = makeInputs(x, 300 + worldSize, 'bfloat16');
  const results = (await launch({ worldSize }, rankModule, { x, inputs, causal, layout, dtype: 'bfloat16', device: 'cuda', deterministic })) as Record<Name, Float32Array>[];
  const local = x.seqQ / worldSize;
  const gather = (name: Name, heads: number, dim = 1) =>
    read(gatherSequence(results.map((r) => tensor(r[name], dim === 1 ? [x.batch, local, heads, x.dim] : [x.batch, heads, local])), { layout, dim }));
  return {
    inputs, out: await gather('out', x.heads), lse: await gather('lse', x.heads, 2),
    dq: await gather('dq', x.heads), dk: await gather('dk', x.kvHeads), dv: await gather('dv', x.kvHeads),
  };
}

describe.skipIf(!cuda.available)(title, () => {
  for (const worldSize of [1, 2, 4, 8])
    for (const layout of ['contiguous', 'zigzag'] as const)
      for (const causal of [true, false]) {
        if (!causal && layout === 'zigzag') continue;  // the same schedule as contiguous
        it(`N=${worldSize} ${layout} causal=${causal}: equals single-device CUDA attention and float64`, async () => {
          // 2N chunks of 40 tokens: tiles are ragged in every shard.
          const x: Dims = { batch: 1, seqQ: 80 * worldSize, seqK: 80 * worldSize, heads: 4, kvHeads: 2, dim: 64 };
          const since = launchCounter();
          const r = await runRing(x, worldSize, causal, layout);
          // Run with RING_ATTENTION_SM90=1 (scripts/gpu-session.sh), every ring step takes the Hopper kernels.
          expectHopperWhereAsked(since(), x.dim);
          const t = asTensors(x, r.inputs, 'bfloat16', 'cuda');
          const one = attention(t.q, t.k, t.v, { causal });
          // The single-device backward and the float64 one from the ring's out (and lse): attention-cuda.test.ts says why.
          const ringOut = tensor(r.out, one.out.shape, { dtype: 'bfloat16', device: 'cuda' }), ringLse = tensor(r.lse, one.lse.shape, { device: 'cuda' });
          const g = attentionBackward(t.dout, t.q, t.k, t.v, ringOut, ringLse, { causal });
          const single = { out: await read(one.out), lse: await read(one.lse), dq: await read(g.dq), dk: await read(g.dk), dv: await read(g.dv) };
          const ref = attentionRef(r.inputs.q, r.inputs.k, r.inputs.v, x, { causal });
          const gref = attentionBackwardRef(r.inputs.dout, r.inputs.q, r.inputs.k, r.inputs.v, x, { causal }, r.out);
          const reference = { out: ref.out, lse: ref.lse, dq: gref.dq, dk: gref.dk, dv: gref.dv };
          for (const k of ['out', 'dq', 'dk', 'dv'] as const) {
            const tol = k === 'out' ? 1.5e-2 : 2e-2;
            expect(rowErr(r[k], single[k], x.dim), `${k} vs single device`).toBeLessThan(tol);
            expect(rowErr(r[k], reference[k], x.dim), `${k} vs float64`).toBeLessThan(tol);
          }
          expect(relErr(r.lse, reference.lse)).toBeLessThan(1e-4);
          for (const tt of [...Object.values(t), one.out, one.lse, ringOut, ringLse, g.dq, g.dk, g.dv]) tt.dispose();
        });
      }

  it('documentIds: the ring over packed sequences equals the float64 reference (4 ranks, zigzag)', async () => {
    const x: Dims = { batch: 1, seqQ: 640, seqK: 640, heads: 4, kvHeads: 2, dim: 64 };
    const ids = documentRuns([[150, 1, 300, 189]]);
    const inputs = makeInputs(x, 77, 'bfloat16');
    const since = launchCounter();
    const results = (await launch({ worldSize: 4 }, rankModule, { x, inputs, causal: true, layout: 'zigzag', dtype: 'bfloat16', device: 'cuda', documentIds: ids })) as Record<Name, Float32Array>[];
    expectHopperWhereAsked(since(), x.dim);
    const local = x.seqQ / 4;
    const gather = (name: Name, heads: number) => read(gatherSequence(results.map((r) => tensor(r[name], [1, local, heads, x.dim])), { layout: 'zigzag' }));
    const ref = attentionRef(inputs.q, inputs.k, inputs.v, x, { causal: true, documentIds: ids });
    const out = await gather('out', x.heads);
    const gref = attentionBackwardRef(inputs.dout, inputs.q, inputs.k, inputs.v, x, { causal: true, documentIds: ids }, out);
    expect(rowErr(out, ref.out, x.dim), 'out').toBeLessThan(1.5e-2);
    expect(rowErr(await gather('dq', x.heads), gref.dq, x.dim), 'dq').toBeLessThan(2e-2);
    expect(rowErr(await gather('dk', x.kvHeads), gref.dk, x.dim), 'dk').toBeLessThan(2e-2);
    expect(rowErr(await gather('dv', x.kvHeads), gref.dv, x.dim), 'dv').toBeLessThan(2e-2);
    const lse = await read(gatherSequence(results.map((r) => tensor(r.lse, [1, x.heads, local])), { layout: 'zigzag', dim: 2 }));
    expect(relErr(lse, ref.lse), 'lse').toBeLessThan(1e-4);
  });

  it('deterministic: the backward gives the same bits on every run, and the right ones', async () => {
    // Able to fail: 4 ranks x 512 tokens, so every step's dQ sums the shares of several key
    // tiles. With atomics their float32 order varies, and among 1M bfloat16 dQ values some
    // dozens would round the other way (a last-bit float32 change is ~1/30000 of a bfloat16 step).
    const x: Dims = { batch: 1, seqQ: 2048, seqK: 2048, heads: 8, kvHeads: 2, dim: 64 };
    const runs = [];
    const since = launchCounter();
    for (let i = 0; i < 3; ++i) runs.push(await runRing(x, 4, true, 'zigzag', true));
    expectHopperWhereAsked(since(), x.dim);
    const a = runs[0]!;
    for (const b of runs.slice(1)) for (const k of ['dq', 'dk', 'dv'] as const) expect(b[k], k).toEqual(a[k]);
    const gref = attentionBackwardRef(a.inputs.dout, a.inputs.q, a.inputs.k, a.inputs.v, x, { causal: true }, a.out);
    for (const k of ['dq', 'dk', 'dv'] as const) expect(rowErr(a[k], gref[k], x.dim), `${k} vs float64`).toBeLessThan(2e-2);
  });

  it('step times (benchmarks) from CUDA events: one per step, within the call; skipped steps and transfers alone compute nothing', async () => {
    type Step = { computeMs: number; transferMs: number; wholeMs: number };
    type Times = { forward: Step[]; backward: Step[]; forwardCallMs: number; backwardCallMs: number };
    const N = 3;
    const results = await launch({ worldSize: N }, new URL('../fixtures/ring-steps.mjs', import.meta.url), { device: 'cuda', seq: 2048 }) as Record<'both' | 'transfers', Times>[];
    results.forEach((r, rank) => {
      for (const pass of ['forward', 'backward'] as const) {
        const steps = r.both[pass];
        expect(steps).toHaveLength(N);
        for (const s of steps) expect(s.computeMs).toBeLessThanOrEqual(s.wholeMs + 1e-3);
        expect(steps.reduce((a, s) => a + s.wholeMs, 0)).toBeLessThanOrEqual(r.both[`${pass}CallMs`]);
        // causal, contiguous: rank r computes at steps 0..r only (a step without a kernel: 0)
        steps.forEach((s, step) => (step <= rank ? expect(s.computeMs).toBeGreaterThan(0) : expect(s.computeMs).toBe(0)));
        steps.forEach((s, step) => (pass === 'forward' && step === N - 1 ? expect(s.transferMs).toBe(0) : expect(s.transferMs).toBeGreaterThan(0)));
        expect(r.transfers[pass].every((s) => s.computeMs === 0)).toBe(true);
      }
    });
  });

  // README's memory per rank: besides its inputs, the forward holds out, lse, two K/V blocks
  // and a float32 running output; the backward dq, dk, dv, two K/V blocks, three float32
  // dK/dV blocks, a float32 dQ and delta. Sizes chosen as multiples of the allocator's 512 B
  // steps below 1 MiB, so the bytes are exact; N ranks in one process hold N times as much.
  it("memory per rank: the README's formula, exactly, whatever N", async () => {
    const d = { batch: 1, seq: 256, heads: 4, kvHeads: 2, dim: 64 }, e = 2; // bfloat16
    const q = d.batch * d.seq * d.heads * d.dim, kv = d.batch * d.seq * d.kvHeads * d.dim, lse = d.batch * d.heads * d.seq;
    const forward = q * e + lse * 4 + 2 * (2 * kv * e) + q * 4;
    const backward = q * e + 2 * kv * e + 2 * (2 * kv * e) + 3 * (2 * kv * 4) + q * 4 + lse * 4;
    expect([forward, backward]).toEqual([659456, 1576960]);
    for (const N of [1, 2, 4]) {
      const [r0] = await launch({ worldSize: N }, new URL('../fixtures/ring-memory.mjs', import.meta.url), d) as { forward: number; backward: number }[];
      expect(r0, `N=${N}`).toEqual({ forward: N * forward, backward: N * backward });
    }
  });

  it('a rank that fails part-way fails the whole ring fast, later calls are refused, and the GPU stays usable', async () => {
    const started = Date.now();
    const out = await launch({ worldSize: 3 }, new URL('../fixtures/ring-retry.mjs', import.meta.url), { device: 'cuda' }) as { first: string; second: string }[];
    expect(out[1]!.first).toBe('Error: ring step 0 failed as asked (failAtStep, a test)');
    for (const r of [out[0]!, out[2]!]) expect(r.first).toMatch(/group aborted: rank 1 failed in ring attention: ring step 0 failed/);
    for (const r of out) expect(r.second).toMatch(/group aborted: rank 1 failed in ring attention/);
    expect(Date.now() - started).toBeLessThan(20_000);
    // The streams were drained and the context survived: a correct ring runs after it.
    const x: Dims = { batch: 1, seqQ: 160, seqK: 160, heads: 4, kvHeads: 2, dim: 64 };
    const r = await runRing(x, 2, true, 'zigzag');
    expect(rowErr(r.out, attentionRef(r.inputs.q, r.inputs.k, r.inputs.v, x, { causal: true }).out, x.dim)).toBeLessThan(1.5e-2);
  });

  it('a rank with a mismatched shard fails the whole ring up front, naming it, and the GPU stays usable', async () => {
    const started = Date.now();
    const error = await launch({ worldSize: 3 }, new URL('../fixtures/mismatched-shards.mjs', import.meta.url), { device: 'cuda' }).catch((e) => e);
    expect(error).toBeInstanceOf(Error);
    expect(error.message).toContain('rank 0 and rank 1 differ: shard length 4 vs 6');
    expect(Date.now() - started).toBeLessThan(20_000);
    // The context survived: a correct ring runs after it.
    const x: Dims = { batch: 1, seqQ: 160, seqK: 160, heads: 4, kvHeads: 2, dim: 64 };
    const r = await runRing(x, 2, true, 'zigzag');
    expect(rowErr(r.out, attentionRef(r.inputs.q, r.inputs.k, r.inputs.v, x, { causal: true }).out, x.dim)).toBeLessThan(1.5e-2);
  });
});
