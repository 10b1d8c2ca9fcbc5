// One rank of `bench ring`: random shards, then the ring's forward and backward timed whole,
// compute alone and transfers alone (median of `reps` after a warm-up; every rank waits for
// its device and for the others before and after each run, so the slowest rank sets the time),
// then whole calls queued back to back, then each step of the whole call timed on its own.
import type { ProcessGroup } from '../group.js';
import { cudaSynchronize } from '../index.js';
import { ringAttention, ringAttentionBackward, type RingAttentionOptions, type RingStepTime } from '../ring.js';
import type { Layout } from '../shard.js';
import { freeOnThrow, tensor } from '../tensor.js';
import { median, randomArray } from './timing.js';

export interface RingRankArgs {
  block: number; heads: number; kvHeads: number; dim: number; causal: boolean; layout: Layout; reps: number;
  device: 'cpu' | 'cuda';
}

/**
 * Milliseconds of the whole ring call, of its compute alone and of its transfers alone; per
 * call of QUEUED whole calls run back to back (`queued`); and, per step of the whole call, its
 * compute, transfers and whole (median over the runs).
 */
export interface RingParts { both: number; compute: number; transfers: number; queued: number; steps: RingStepTime[] }

/**
 * Calls queued back to back between one wait for the device: the host runs ahead of the
 * device, as it does in a training step (other work before and after each call), so what the
 * call costs the host before its first kernel starts hides, as it does not in a call timed alone.
 */
export const QUEUED = 4;

export default ({ group, args }: { group: ProcessGroup; args: RingRankArgs }): { forward: RingParts; backward: RingParts } => {
  const { block, heads, kvHeads, dim, causal, layout, reps, device } = args;
  const opts = device === 'cuda' ? { dtype: 'bfloat16' as const, device: 'cuda' as const } : {};
  const make = (h: number) => tensor(randomArray(block * h * dim), [1, block, h, dim], opts);
  const ring: RingAttentionOptions = { group, causal, layout };
  const [q, k, v, dout, fwd] = freeOnThrow(() => {
    const t = [make(heads), make(kvHeads), make(kvHeads), make(heads)] as const;
    return [...t, ringAttention(t[0], t[1], t[2], ring)] as const;
  });
  const sync = device === 'cuda' ? cudaSynchronize : () => {};
  const time = (fn: () => void) => {
    const ts: number[] = [];
    for (let i = 0; i <= reps; ++i) {
      sync();
      group.barrier();
      const t0 = performance.now();
      fn();
      sync();
      // This rank's own time (the slowest rank's is taken later): the barrier after it, a
      // collective and a polled host wait over NCCL, stays out of the figure.
      const ms = performance.now() - t0;
      group.barrier();
      if (i > 0) ts.push(ms);  // the first run warms up
    }
    return median(ts);
  };
  // Each step timed inside the whole call, in runs of their own (timing waits for the device).
  const steps = (run: (o: RingAttentionOptions) => void): RingStepTime[] => {
    const runs: RingStepTime[][] = [];
    time(() => run({ ...ring, onStepTimes: (s) => void runs.push(s) }));
    const runsAfterWarmUp = runs.slice(1);
    return runsAfterWarmUp[0]!.map((_, i) => ({
      computeMs: median(runsAfterWarmUp.map((r) => r[i]!.computeMs)),
      transferMs: median(runsAfterWarmUp.map((r) => r[i]!.transferMs)),
      wholeMs: median(runsAfterWarmUp.map((r) => r[i]!.wholeMs)),
    }));
  };
  const runForward = (o: RingAttentionOptions) => { const r = ringAttention(q, k, v, o); r.out.dispose(); r.lse.dispose(); };
  const runBackward = (o: RingAttentionOptions) => {
    const g = ringAttentionBackward(dout, q, k, v, fwd.out, fwd.lse, o);
    g.dq.dispose(); g.dk.dispose(); g.dv.dispose();
  };
  const parts = (run: (o: RingAttentionOptions) => void): RingParts => ({
    both: time(() => run(ring)), compute: time(() => run({ ...ring, parts: 'compute' })),
    transfers: time(() => run({ ...ring, parts: 'transfers' })),
    queued: time(() => { for (let i = 0; i < QUEUED; ++i) run(ring); }) / QUEUED,
    steps: steps(run),
  });
  try {
    return { forward: parts(runForward), backward: parts(runBackward) };
  } finally {
    for (const t of [q, k, v, dout, fwd.out, fwd.lse]) t.dispose();
  }
};
