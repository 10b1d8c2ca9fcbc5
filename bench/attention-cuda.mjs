#!/usr/bin/env node
// CUDA attention throughput against sequence length, beside PyTorch SDPA (each backend it
// offers: flash, cuDNN, efficient) on the same GPU in the same run. bfloat16; as in
// flash-attention's benchmark, batch x seq = 16K tokens (batch 1 beyond) and heads x dim = 2048.
// FLOPs: forward 4*b*s^2*h*d (halved when causal), backward 2.5x forward, fwd+bwd 3.5x;
// recomputation is not counted. Prints a table with ours/torch-best per row and writes JSON
// under bench/results/.
//   node bench/attention-cuda.mjs [--min-seq 1024] [--max-seq 32768] [--dims 64,128] [--reps 10] [--no-torch] [--out FILE]
import { spawnSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

import { commitHash, medianMs, random } from './common.mjs';

import { attention, attentionBackward, cudaSynchronize, info, tensor } from '../dist/index.js';

const { values: opt } = parseArgs({
  options: {
    'min-seq': { type: 'string', default: '1024' },
    'max-seq': { type: 'string', default: '32768' },
    dims: { type: 'string', default: '64,128' },
    reps: { type: 'string', default: '10' },
    'no-torch': { type: 'boolean', default: false },
    out: { type: 'string' },
  },
});
const reps = Number(opt.reps);
const cuda = info().cuda;
if (!cuda.available) {
  console.error(`attention-cuda: no CUDA device here (${cuda.reason})`);
  process.exit(1);
}

const configs = [];
for (const dim of opt.dims.split(',').map(Number))
  for (const causal of [false, true])
    for (let seq = Number(opt['min-seq']); seq <= Number(opt['max-seq']); seq *= 2)
      configs.push({ batch: Math.max(1, Math.floor(16384 / seq)), seq, heads: 2048 / dim, dim, causal });

const flops = (c) => (4 * c.batch * c.seq * c.seq * c.heads * c.dim) / (c.causal ? 2 : 1);

function ours(c) {
  const shape = [c.batch, c.seq, c.heads, c.dim];
  const n = shape.reduce((a, b) => a * b, 1);
  const [q, k, v, dout] = [0, 1, 2, 3].map(() => tensor(random(n), shape, { dtype: 'bfloat16', device: 'cuda' }));
  const fwd = attention(q, k, v, { causal: c.causal });
  const dispose = (...ts) => ts.forEach((t) => t.dispose());
  const row = {
    forwardMs: time(() => { const r = attention(q, k, v, { causal: c.causal }); dispose(r.out, r.lse); }),
    backwardMs: time(() => { const g = attentionBackward(dout, q, k, v, fwd.out, fwd.lse, { causal: c.causal }); dispose(g.dq, g.dk, g.dv); }),
    totalMs: time(() => {
      const r = attention(q, k, v, { causal: c.causal });
      const g = attentionBackward(dout, q, k, v, r.out, r.lse, { causal: c.causal });
      dispose(r.out, r.lse, g.dq, g.dk, g.dv);
    }),
  };
  dispose(q, k, v, dout, fwd.out, fwd.lse);
  return row;
}

function torchRows() {
  if (opt['no-torch']) return { meta: null, rows: [] };
  const script = join(dirname(fileURLToPath(import.meta.url)), 'sdpa_bench.py');
  const r = spawnSync('python3', [script, JSON.stringify(configs), String(reps)], { encoding: 'utf8', maxBuffer: 1 << 26 });
  if (r.status !== 0) {
    console.error(`torch SDPA not measured: ${(r.stderr || r.error?.message || '').trim().split('\n').pop()}`);
    return { meta: null, rows: [] };
  }
  const [meta, ...rows] = r.stdout.trim().split('\n').map((l) => JSON.parse(l));
  return { meta, rows };
}

const tflops = (f, ms) => (ms ? f / (ms * 1e-3) / 1e12 : NaN);
const torch = torchRows();
const time = (fn) => medianMs(fn, reps, cudaSynchronize);
const rows = [];
const fmt = (x, w = 7) => (Number.isFinite(x) ? x.toFixed(1) : '-').padStart(w);
console.log(`GPU ${cuda.devices[0].name}, driver ${cuda.driverVersion}, CUDA runtime ${cuda.runtimeVersion}` +
  (torch.meta ? `, torch ${torch.meta.torch}` : ', torch not measured'));
console.log('   seq  dim  causal |  ours TFLOP/s fwd    bwd  fwd+bwd | best torch fwd+bwd (backend) | ours/torch');
for (const c of configs) {
  const f = flops(c);
  const o = ours(c);
  const t = torch.rows.filter((r) => r.seq === c.seq && r.dim === c.dim && r.causal === c.causal && !r.error);
  const best = t.sort((a, b) => a.totalMs - b.totalMs)[0];
  const row = {
    ...c,
    ours: { ...o, forwardTflops: tflops(f, o.forwardMs), backwardTflops: tflops(2.5 * f, o.backwardMs), totalTflops: tflops(3.5 * f, o.totalMs) },
    torch: Object.fromEntries(torch.rows.filter((r) => r.seq === c.seq && r.dim === c.dim && r.causal === c.causal)
      .map((r) => [r.backend, r.error ? { error: r.error } : { ...r, forwardTflops: tflops(f, r.forwardMs), backwardTflops: tflops(2.5 * f, r.backwardMs), totalTflops: tflops(3.5 * f, r.totalMs) }])),
    ratioToBestTorch: best ? best.totalMs / o.totalMs : null,
  };
  rows.push(row);
  console.log(`${String(c.seq).padStart(6)} ${String(c.dim).padStart(4)}  ${c.causal ? 'yes' : 'no '}    |` +
    `${fmt(row.ours.forwardTflops, 17)}${fmt(row.ours.backwardTflops)}${fmt(row.ours.totalTflops, 9)} |` +
    `${fmt(best ? tflops(3.5 * f, best.totalMs) : NaN, 19)} (${(best?.backend ?? '-').padEnd(9)}) |` +
    `${best ? row.ratioToBestTorch.toFixed(2).padStart(10) : '         -'}`);
}

const commit = commitHash();
const date = new Date().toISOString();
const result = {
  suite: 'attention-cuda', date, commit, command: process.argv.slice(1).join(' '),
  machine: { gpu: cuda.devices[0].name, driver: cuda.driverVersion, cudaRuntime: cuda.runtimeVersion, architectures: cuda.architectures,
    node: process.version, torch: torch.meta },
  rows,
};
const out = opt.out ?? join('bench', 'results', `attention-cuda-${date.slice(0, 10)}-${commit}.json`);
mkdirSync(dirname(out), { recursive: true });
writeFileSync(out, JSON.stringify(result, null, 2) + '\n');
console.log(`wrote ${out}`);
