// One rank of bench/ring-cuda.mjs: random shards on the GPU, then timed ring forward and
// backward (median of `reps`, every rank waiting for the GPU and for the others each time).
import { cudaSynchronize, ringAttention, ringAttentionBackward, tensor } from '../dist/index.js';

function random(n) {
  const a = new Float32Array(n);
  for (let i = 0; i < n; ++i) a[i] = Math.random() * 2 - 1;
  return a;
}

export default async ({ group, args }) => {
  const { block, heads, kvHeads, dim, causal, layout, reps } = args;
  const make = (h) => tensor(random(block * h * dim), [1, block, h, dim], { dtype: 'bfloat16', device: 'cuda' });
  const [q, k, v, dout] = [make(heads), make(kvHeads), make(kvHeads), make(heads)];
  const opts = { group, causal, layout };
  const time = (fn) => {
    const ts = [];
    for (let i = 0; i <= reps; ++i) {
      cudaSynchronize();
      group.barrier();
      const t0 = process.hrtime.bigint();
      fn();
      cudaSynchronize();
      group.barrier();
      if (i > 0) ts.push(Number(process.hrtime.bigint() - t0) / 1e6);  // the first run warms up
    }
    return ts.sort((a, b) => a - b)[Math.floor(ts.length / 2)];
  };
  const fwd = ringAttention(q, k, v, opts);
  const forwardMs = time(() => { const r = ringAttention(q, k, v, opts); r.out.dispose(); r.lse.dispose(); });
  const backwardMs = time(() => {
    const g = ringAttentionBackward(dout, q, k, v, fwd.out, fwd.lse, opts);
    g.dq.dispose(); g.dk.dispose(); g.dv.dispose();
  });
  for (const t of [q, k, v, dout, fwd.out, fwd.lse]) t.dispose();
  return { forwardMs, backwardMs };
};
