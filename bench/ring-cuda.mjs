#!/usr/bin/env node
// Ring overhead on one GPU: N virtual ranks (threads of this process, K/V blocks moving by
// device-to-device copies on each rank's communication stream) against single-device
// attention over the same total sequence, forward and backward, per-rank blocks from 1K
// tokens up. The ranks share the GPU, so equal total work: a ratio near 1 means the ring adds
// nothing (issue target: <= 1.05 from 4K-token blocks). Also the kernel alone on one step's
// block, to set beside the ring's time per step. (The copy of one K/V block alone is not
// measured yet.) bfloat16, causal, zigzag.
//   node bench/ring-cuda.mjs [--ranks 2,4,8] [--min-block 1024] [--max-block 32768] [--heads 16] [--kv-heads 16] [--dim 128] [--reps 5] [--out FILE]
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { parseArgs } from 'node:util';

import { commitHash, medianMs, random } from './common.mjs';

import { attention, attentionBackward, cudaSynchronize, info, launch, tensor } from '../dist/index.js';

const { values: opt } = parseArgs({
  options: {
    ranks: { type: 'string', default: '2,4,8' },
    'min-block': { type: 'string', default: '1024' },
    'max-block': { type: 'string', default: '32768' },
    heads: { type: 'string', default: '16' },
    'kv-heads': { type: 'string', default: '16' },
    dim: { type: 'string', default: '128' },
    reps: { type: 'string', default: '5' },
    out: { type: 'string' },
  },
});
const cuda = info().cuda;
if (!cuda.available) {
  console.error(`ring-cuda: no CUDA device here (${cuda.reason})`);
  process.exit(1);
}
const heads = Number(opt.heads), kvHeads = Number(opt['kv-heads']), dim = Number(opt.dim), reps = Number(opt.reps);
const rankModule = new URL('./ring-rank.mjs', import.meta.url);

const make = (seq, h) => tensor(random(seq * h * dim), [1, seq, h, dim], { dtype: 'bfloat16', device: 'cuda' });

// Single-device attention over `seq` tokens: forward and backward times.
function single(seq, causal) {
  const [q, k, v, dout] = [make(seq, heads), make(seq, kvHeads), make(seq, kvHeads), make(seq, heads)];
  const fwd = attention(q, k, v, { causal });
  const r = {
    forwardMs: time(() => { const o = attention(q, k, v, { causal }); o.out.dispose(); o.lse.dispose(); }),
    backwardMs: time(() => { const g = attentionBackward(dout, q, k, v, fwd.out, fwd.lse, { causal }); g.dq.dispose(); g.dk.dispose(); g.dv.dispose(); }),
  };
  for (const t of [q, k, v, dout, fwd.out, fwd.lse]) t.dispose();
  return r;
}

const time = (fn) => medianMs(fn, reps, cudaSynchronize);
const rows = [];
console.log(`GPU ${cuda.devices[0].name}; heads ${heads}, kv heads ${kvHeads}, dim ${dim}, bfloat16, causal zigzag`);
console.log('   N   block    total | single fwd   ring fwd  ratio | single bwd   ring bwd  ratio | step kernel (non-causal block)');
for (const N of opt.ranks.split(',').map(Number))
  for (let block = Number(opt['min-block']); block <= Number(opt['max-block']); block *= 2) {
    const total = N * block;
    let s, ring, step;
    try {
      s = single(total, true);
      const results = await launch({ worldSize: N }, rankModule, { block, heads, kvHeads, dim, causal: true, layout: 'zigzag', reps });
      ring = { forwardMs: Math.max(...results.map((r) => r.forwardMs)), backwardMs: Math.max(...results.map((r) => r.backwardMs)) };
      step = single(block, false);  // what one rank computes at a step after the first: a full block (zigzag halves x 2)
    } catch (e) {
      console.log(`${String(N).padStart(4)} ${String(block).padStart(7)} ${String(total).padStart(8)} | stopped: ${e.message.split('\n')[0]}`);
      break;
    }
    const row = { N, block, total, single: s, ring, ratioForward: ring.forwardMs / s.forwardMs, ratioBackward: ring.backwardMs / s.backwardMs,
      stepKernelForwardMs: step.forwardMs / 2, stepKernelBackwardMs: step.backwardMs / 2 };
    rows.push(row);
    const f = (x) => x.toFixed(2).padStart(10);
    console.log(`${String(N).padStart(4)} ${String(block).padStart(7)} ${String(total).padStart(8)} |${f(s.forwardMs)}${f(ring.forwardMs)}${row.ratioForward.toFixed(2).padStart(7)} |` +
      `${f(s.backwardMs)}${f(ring.backwardMs)}${row.ratioBackward.toFixed(2).padStart(7)} |${f(row.stepKernelForwardMs)} fwd ${f(row.stepKernelBackwardMs)} bwd`);
  }

const commit = commitHash();
const date = new Date().toISOString();
const out = opt.out ?? join('bench', 'results', `ring-cuda-${date.slice(0, 10)}-${commit}.json`);
mkdirSync(dirname(out), { recursive: true });
writeFileSync(out, JSON.stringify({ suite: 'ring-cuda', date, commit, command: process.argv.slice(1).join(' '),
  machine: { gpu: cuda.devices[0].name, driver: cuda.driverVersion, cudaRuntime: cuda.runtimeVersion, node: process.version },
  heads, kvHeads, dim, rows }, null, 2) + '\n');
console.log(`wrote ${out}`);
