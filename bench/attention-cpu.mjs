#!/usr/bin/env node
// CPU attention throughput against sequence length, forward and backward, printed as a
// table and written as JSON under bench/results/. FLOPs follow the usual accounting:
// forward 4*b*s^2*h*d (halved when causal), backward 2.5x forward; recomputation not counted.
//   node bench/attention-cpu.mjs [--max-seq 4096] [--heads 4] [--dims 64,128] [--reps 3] [--out FILE]
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

import { commitHash, medianMs, random } from './common.mjs';

import { attention, attentionBackward, info, tensor } from '../dist/index.js';

const { values: opt } = parseArgs({
  options: {
    'max-seq': { type: 'string', default: '4096' },
    'min-seq': { type: 'string', default: '256' },
    heads: { type: 'string', default: '4' },
    dims: { type: 'string', default: '64,128' },
    reps: { type: 'string', default: '3' },
    out: { type: 'string' },
  },
});
const heads = Number(opt.heads), reps = Number(opt.reps);
const dims = opt.dims.split(',').map(Number);

// seconds, as the table prints
const time = (fn) => medianMs(fn, reps) / 1e3;
const rows = [];
for (const dim of dims)
  for (const causal of [false, true])
    for (let seq = Number(opt['min-seq']); seq <= Number(opt['max-seq']); seq *= 2) {
      const shape = [1, seq, heads, dim];
      const n = seq * heads * dim;
      const [q, k, v, dout] = [0, 1, 2, 3].map(() => tensor(random(n), shape));
      let fwd;
      const fwdS = time(() => {
        fwd?.out.dispose();
        fwd?.lse.dispose();
        fwd = attention(q, k, v, { causal });
      });
      const bwdS = time(() => {
        const g = attentionBackward(dout, q, k, v, fwd.out, fwd.lse, { causal });
        g.dq.dispose(), g.dk.dispose(), g.dv.dispose();
      });
      const flops = (4 * seq * seq * heads * dim) / (causal ? 2 : 1);
      const row = { seq, heads, dim, causal, forwardMs: fwdS * 1e3, backwardMs: bwdS * 1e3,
        forwardGflops: flops / fwdS / 1e9, backwardGflops: (2.5 * flops) / bwdS / 1e9 };
      rows.push(row);
      console.log(`seq ${String(seq).padStart(6)}  dim ${String(dim).padStart(3)}  ${causal ? 'causal' : 'full  '}  ` +
        `fwd ${row.forwardMs.toFixed(1).padStart(9)} ms ${row.forwardGflops.toFixed(2).padStart(7)} GFLOP/s   ` +
        `bwd ${row.backwardMs.toFixed(1).padStart(9)} ms ${row.backwardGflops.toFixed(2).padStart(7)} GFLOP/s`);
      for (const t of [q, k, v, dout, fwd.out, fwd.lse]) t.dispose();
    }

const commit = commitHash();
const date = new Date().toISOString();
const result = {
  suite: 'attention-cpu', date, commit, command: process.argv.slice(1).join(' '),
  machine: { cpu: cpus()[0]?.model ?? 'unknown', cores: cpus().length, node: process.version,
    threads: process.env.RING_ATTENTION_NUM_THREADS ?? 'all cores', binary: info().binary },
  rows,
};
const out = opt.out ?? join('bench', 'results', `attention-cpu-${date.slice(0, 10)}-${commit}.json`);
mkdirSync(join(out, '..'), { recursive: true });
writeFileSync(out, JSON.stringify(result, null, 2) + '\n');
console.log(`wrote ${out}`);
