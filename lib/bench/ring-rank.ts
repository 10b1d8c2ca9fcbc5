// One rank of `bench ring`: random shards, then the ring's forward and backward timed whole,
// compute alone and transfers alone (median of `reps` after a warm-up; every rank waits for
// its device and for the others before and after each run, so the slowest rank sets the time).
import type { ProcessGroup } from '../group.js';
import { cudaSynchronize } from '../index.js';
import { ringAttention, ringAttentionBackward, type RingAttentionOptions } from '../ring.js';
import type { Layout } from '../shard.js';
import { tensor, type Tensor } from '../tensor.js';
import { median, randomArray } from './timing.js';

export interface RingRankArgs {
  block: number; heads: number; kvHeads: number; dim: number; causal: boolean; layout: Layout; reps: number;
  device: 'cpu' | 'cuda';
}

/** Milliseconds of the whole ring call, of its compute alone and of its transfers alone. */
export interface RingParts { both: number; compute: number; transfers: number }

export default ({ group, args }: { group: ProcessGroup; args: RingRankArgs }): { forward: RingParts; backward: RingParts } => {
  const { block, heads, kvHeads, dim, causal, layout, reps, device } = args;
  const opts = device === 'cuda' ? { dtype: 'bfloat16' as const, device: 'cuda' as const } : {};
  const make = (h: number) => tensor(randomArray(block * h * dim), [1, block, h, dim], opts);
  const [q, k, v, dout] = [make(heads), make(kvHeads), make(kvHeads), make(heads)] as [Tensor, Tensor, Tensor, Tensor];
  const sync = device === 'cuda' ? cudaSynchronize : () => {};
  const time = (fn: () => void) => {
    const ts: number[] = [];
    for (let i = 0; i <= reps; ++i) {
      sync();
      group.barrier();
      const t0 = performance.now();
      fn();
      sync();
      group.barrier();
      if (i > 0) ts.push(performance.now() - t0);  // the first run warms up
    }
    return median(ts);
  };
  const ring: RingAttentionOptions = { group, causal, layout };
  const fwd = ringAttention(q, k, v, ring);
  const forward = (o: RingAttentionOptions) => time(() => { const r = ringAttention(q, k, v, o); r.out.dispose(); r.lse.dispose(); });
  const backward = (o: RingAttentionOptions) => time(() => {
    const g = ringAttentionBackward(dout, q, k, v, fwd.out, fwd.lse, o);
    g.dq.dispose(); g.dk.dispose(); g.dv.dispose();
  });
  try {
    return {
      forward: { both: forward(ring), compute: forward({ ...ring, parts: 'compute' }), transfers: forward({ ...ring, parts: 'transfers' }) },
      backward: { both: backward(ring), compute: backward({ ...ring, parts: 'compute' }), transfers: backward({ ...ring, parts: 'transfers' }) },
    };
  } finally {
    for (const t of [q, k, v, dout, fwd.out, fwd.lse]) t.dispose();
  }
};
