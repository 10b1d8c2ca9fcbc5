// An NCCL group of one on the GPU machine (NCCL refuses two ranks on one GPU, so larger
// groups are exercised by the in-process ring): init through the rendezvous, allReduce,
// barrier, destroy. Skipped, with the reason in the title, where there is no GPU or NCCL.
import { describe, expect, it } from 'vitest';

import { freePort } from '../helpers.js';

import { attention, attentionBackward, info, initProcessGroup, ringAttention, ringAttentionBackward, tensor, type RingAttentionOptions } from '../../dist/index.js';
import { randomArray } from '../reference.js';
import { findLibrary, LIBRARIES } from '../../dist/libraries.js';

const cuda = info().cuda;
const nccl = findLibrary(LIBRARIES.nccl);
const why = !cuda.available ? cuda.reason : !nccl.path ? 'libnccl.so.2 not found' : '';

describe.skipIf(!!why)(why ? `NCCL group (skipped: ${why})` : 'NCCL group', () => {
  it('a group of one: allReduce is the identity, barrier returns, destroy releases it', async () => {
    const env = { RANK: '0', WORLD_SIZE: '1', LOCAL_RANK: '0', MASTER_ADDR: '127.0.0.1', MASTER_PORT: String(await freePort()) };
    const group = await initProcessGroup({ backend: 'nccl', env, timeoutMs: 60_000 });
    expect([group.backend, group.rank, group.worldSize]).toEqual(['nccl', 0, 1]);
    for (const dtype of ['float32', 'bfloat16'] as const) {
      const t = tensor(new Float32Array([1, -2, 3.5]), [3], { dtype, device: 'cuda' });
      group.allReduce(t);
      expect(Array.from(await t.toFloat32Array())).toEqual([1, -2, 3.5]);
    }
    const pair = [tensor(new Float32Array([4, 5]), [2], { device: 'cuda' }), tensor(new Float32Array([-1, 0.5, 2]), [3], { dtype: 'bfloat16', device: 'cuda' })];
    group.allReduce(pair); // one NCCL group of two allReduces
    expect([...(await pair[0]!.toFloat32Array()), ...(await pair[1]!.toFloat32Array())]).toEqual([4, 5, -1, 0.5, 2]);
    const works = [group.allReduceAsync(pair), group.allReduceAsync(pair[0]!)];
    for (const w of works.reverse()) w.wait(); // in any order
    expect([...(await pair[0]!.toFloat32Array()), ...(await pair[1]!.toFloat32Array())]).toEqual([4, 5, -1, 0.5, 2]);
    group.barrier();

    // The ring's degenerate case: one rank, the whole sequence; equals attention() bit for bit
    // in the forward (same kernel, one merge into an empty result) and closely in the backward.
    const shape = [1, 200, 4, 64];
    const [q, k, v, dout] = [1, 2, 3, 4].map((seed) => tensor(randomArray(200 * 4 * 64, seed), shape, { dtype: 'bfloat16', device: 'cuda' }));
    const ring = ringAttention(q!, k!, v!, { group, causal: true });
    const one = attention(q!, k!, v!, { causal: true });
    expect(Array.from(await ring.out.toFloat32Array())).toEqual(Array.from(await one.out.toFloat32Array()));
    const rg = ringAttentionBackward(dout!, q!, k!, v!, ring.out, ring.lse, { group, causal: true });
    const og = attentionBackward(dout!, q!, k!, v!, one.out, one.lse, { causal: true });
    for (const [a, b] of [[rg.dq, og.dq], [rg.dk, og.dk], [rg.dv, og.dv]] as const) {
      const x = await a.toFloat32Array(), y = await b.toFloat32Array();
      let diff = 0, scale = 0;
      for (let i = 0; i < y.length; ++i) diff = Math.max(diff, Math.abs(x[i]! - y[i]!)), scale = Math.max(scale, Math.abs(y[i]!));
      expect(diff / scale).toBeLessThan(1e-2);  // dQ's atomic adds differ in order; everything else is the same arithmetic
    }
    // Each new set of arguments is compared across the ranks (an allReduce of float64 rows,
    // here over a group of one) before its first transfer: real NCCL, for new and repeated sets
    // (that a repeated set is not compared again is tested against a fake NCCL).
    for (const seq of [72, 200, 72]) {
      const [a, b, c] = [5, 6, 7].map((seed) => tensor(randomArray(seq * 4 * 64, seed), [1, seq, 4, 64], { dtype: 'bfloat16', device: 'cuda' }));
      const r = ringAttention(a!, b!, c!, { group, causal: true });
      expect(Array.from(await r.out.toFloat32Array()), `seq ${seq}`).toEqual(Array.from(await attention(a!, b!, c!, { causal: true }).out.toFloat32Array()));
    }
    expect(() => group.allReduce(tensor(new Float32Array(1), [1]))).toThrow(/^t: an NCCL group works on 'cuda' tensors, got 'cpu'/);
    expect(() => group.send(tensor(new Float32Array(1), [1], { device: 'cuda' }), 0)).toThrow(/cannot send to or receive from its own rank/);
    group.destroy();
    expect(() => group.barrier()).toThrow(/this group has been destroyed/);
  });

  it('a ring call that fails part-way aborts the communicator: later collectives are refused', async () => {
    const env = { RANK: '0', WORLD_SIZE: '1', LOCAL_RANK: '0', MASTER_ADDR: '127.0.0.1', MASTER_PORT: String(await freePort()) };
    const group = await initProcessGroup({ backend: 'nccl', env, timeoutMs: 60_000 });
    const x = tensor(randomArray(64 * 2 * 64, 8), [1, 64, 2, 64], { dtype: 'bfloat16', device: 'cuda' });
    // failAtStep is @internal: not in the .d.ts, hence the cast.
    expect(() => ringAttention(x, x, x, { group, failAtStep: 0 } as RingAttentionOptions)).toThrow(/ring step 0 failed as asked/);
    // A group of one moves no blocks: what reaches NCCL next tells (a barrier, a ring call of
    // new arguments, which the ranks first compare).
    expect(() => group.barrier()).toThrow(/aborted after an earlier error/);
    const y = tensor(randomArray(32 * 2 * 64, 9), [1, 32, 2, 64], { dtype: 'bfloat16', device: 'cuda' });
    expect(() => ringAttention(y, y, y, { group })).toThrow(/aborted after an earlier error/);
    group.destroy();
  });
});
