#!/usr/bin/env node
// One attention forward and one backward on CUDA, nothing else: the program a profiler
// (Nsight Compute, `ncu`) runs to read the kernels' own counters, which no timing can give
// (where the backward's time goes is the open question of issue #4). bfloat16, batch 1.
//
//   node bench/attention-once.mjs [--seq 16384] [--heads 16] [--kv-heads 16] [--dim 128] [--causal] [--deterministic]
// RING_ATTENTION_SM90=1 in the environment selects the Hopper kernels, as everywhere.
import { parseArgs } from 'node:util';

import { randomArray } from '../dist/bench/timing.js';
import { attention, attentionBackward, cudaSynchronize, info, tensor } from '../dist/index.js';

const { values: o } = parseArgs({
  options: {
    seq: { type: 'string', default: '16384' },
    heads: { type: 'string', default: '16' },
    'kv-heads': { type: 'string' },
    dim: { type: 'string', default: '128' },
    causal: { type: 'boolean', default: false },
    deterministic: { type: 'boolean', default: false },
  },
});
if (!info().cuda.available) {
  console.error(`attention-once: needs a CUDA device (${info().cuda.reason})`);
  process.exit(1);
}
const seq = Number(o.seq), heads = Number(o.heads), kvHeads = Number(o['kv-heads'] ?? o.heads), dim = Number(o.dim);
const make = (h) => tensor(randomArray(seq * h * dim), [1, seq, h, dim], { dtype: 'bfloat16', device: 'cuda' });
const [q, k, v, dout] = [make(heads), make(kvHeads), make(kvHeads), make(heads)];
const { out, lse } = attention(q, k, v, { causal: o.causal });
const { dq, dk, dv } = attentionBackward(dout, q, k, v, out, lse, { causal: o.causal, deterministic: o.deterministic });
cudaSynchronize();
for (const t of [q, k, v, dout, out, lse, dq, dk, dv]) t.dispose();
console.log(`attention-once: seq ${seq}, ${heads} heads (${kvHeads} K/V), dim ${dim}${o.causal ? ', causal' : ''}${o.deterministic ? ', deterministic' : ''}, ` +
  `Hopper kernels ${process.env.RING_ATTENTION_SM90 === '1' ? 'asked for' : 'off'}: done`);
