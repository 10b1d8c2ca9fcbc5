#!/usr/bin/env node
// CPU matrix-product throughput of ops.linear (y = x·wᵀ) and ops.linearBackward (dx = dy·w,
// dw += dyᵀ·x) at square sizes, in GFLOP/s (2·M·N·K per product), best of --reps.
//   node bench/linear-cpu.mjs [--sizes 256,512,1024] [--reps 5]
// RING_ATTENTION_PORTABLE_CPU=1 measures the portable kernel; RING_ATTENTION_NUM_THREADS caps threads.
import { cpus } from 'node:os';
import { parseArgs } from 'node:util';

import { ops, tensor } from '../dist/index.js';

const { values: opt } = parseArgs({ options: { sizes: { type: 'string', default: '256,512,1024' }, reps: { type: 'string', default: '5' } } });
const reps = Number(opt.reps);
const random = (n) => Float32Array.from({ length: n }, () => Math.random() * 2 - 1);

function best(fn) {
  fn();
  let t = Infinity;
  for (let r = 0; r < reps; ++r) {
    const t0 = process.hrtime.bigint();
    fn();
    t = Math.min(t, Number(process.hrtime.bigint() - t0) / 1e9);
  }
  return t;
}

console.log(`${cpus()[0]?.model} x${cpus().length}, RING_ATTENTION_NUM_THREADS=${process.env.RING_ATTENTION_NUM_THREADS ?? '(all)'}`);
console.log('size   forward GFLOP/s   dx GFLOP/s   dw GFLOP/s   (dx: the dx+dw call minus the dw-only call)');
for (const n of opt.sizes.split(',').map(Number)) {
  const x = tensor(random(n * n), [n, n]), w = tensor(random(n * n), [n, n]), dy = tensor(random(n * n), [n, n]);
  const dx = tensor(new Float32Array(n * n), [n, n]), dw = tensor(new Float32Array(n * n), [n, n]);
  const flop = 2 * n ** 3;
  const f = best(() => ops.linear(x, w).dispose());
  const both = best(() => ops.linearBackward(dy, x, w, dx, dw));
  const bw = best(() => ops.linearBackward(dy, x, w, null, dw));
  console.log(`${String(n).padEnd(6)} ${(flop / f / 1e9).toFixed(1).padStart(15)} ${(flop / Math.max(both - bw, 1e-9) / 1e9).toFixed(1).padStart(12)} ${(flop / bw / 1e9).toFixed(1).padStart(12)}`);
}
