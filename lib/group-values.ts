// Small values shared across a group's ranks through one allReduce: each rank writes into its
// own slot of a zeroed buffer, so the sum adds only zeros to each value (exact, whatever the
// order of the additions). On NCCL the buffer must be a cuda tensor, hence `device`.
import type { ProcessGroup } from './group.js';
import { tensor } from './tensor.js';

/**
 * Every rank's numbers, in rank order (every rank passes as many). Each value travels as a
 * float32 pair (hi + lo), so doubles keep ~14 digits and integers below 2^48 are exact.
 */
export function gatherNumbers(group: ProcessGroup, xs: readonly number[], device: 'cpu' | 'cuda'): number[][] {
  const n = 2 * xs.length, a = new Float32Array(n * group.worldSize), base = n * group.rank;
  xs.forEach((x, i) => {
    a[base + 2 * i] = x;
    a[base + 2 * i + 1] = x - a[base + 2 * i]!;
  });
  const t = tensor(a, [a.length], { device });
  try {
    group.allReduce(t);
    const r = t.handle('t').toFloat32Array();
    return Array.from({ length: group.worldSize }, (_, k) => xs.map((_, i) => r[k * n + 2 * i]! + r[k * n + 2 * i + 1]!));
  } finally {
    t.dispose();
  }
}

/** Whether any rank says yes (a sum, which also waits for every rank). */
export function anyRankSays(group: ProcessGroup, mine: boolean, device: 'cpu' | 'cuda'): boolean {
  const flag = tensor(Float32Array.of(mine ? 1 : 0), [1], { device });
  try {
    group.allReduce(flag);
    return flag.handle('flag').toFloat32Array()[0] !== 0;
  } finally {
    flag.dispose();
  }
}
