// Where a training step's time goes, by op family: while profiling, every native call of a
// known family is timed (after a device sync on CUDA, so the time is the op's own, which also
// makes a profiled step slower than a timed one: profile a separate step). Each thread that
// runs ranks loads its own copy of the addon, so each rank profiles itself.
import { native } from '../native.js';

/** Native function name prefix -> family; the first match wins. */
const FAMILIES: readonly (readonly [RegExp, string])[] = [
  [/^(attention|ring|ncclRing)/, 'attention'],
  [/^opsLinear/, 'linear (q,k,v,o)'],
  [/^opsFfn/, 'feed-forward'],
  [/^opsCrossEntropy/, 'LM head + loss'],
  [/^opsRmsNorm/, 'RMSNorm'],
  [/^opsRope/, 'RoPE'],
  [/^opsEmbedding/, 'embedding'],
  // The model's residual adds and the sums of its gradient paths (bandwidth alone), apart from
  // the optimizer, whose family they had swelled.
  [/^opsAdd$/, 'residual adds'],
  [/^ops(AdamW|SumOfSquares|Scale|Zero|Copy)/, 'optimizer + clipping'],
  [/^(groupAllReduce|groupBarrier|ncclAllReduce|ncclWaitAllReduce|ncclBarrier)/, 'gradient all-reduce'],
];

export type Breakdown = Record<string, number>;

export function familyOf(name: string): string | null {
  return FAMILIES.find(([re]) => re.test(name))?.[1] ?? null;
}

/**
 * Runs fn with the native functions of every family timed; returns milliseconds per family
 * and 'other' (the rest of the wall time: JavaScript, tensor creation, copies).
 */
export function profile(fn: () => void, sync: () => void): Breakdown {
  const table = native as unknown as Record<string, unknown>;
  const saved = new Map<string, (...a: unknown[]) => unknown>();
  const ms: Breakdown = {};
  for (const [name, f] of Object.entries(table)) {
    const family = familyOf(name);
    if (!family || typeof f !== 'function') continue;
    saved.set(name, f as (...a: unknown[]) => unknown);
    table[name] = (...args: unknown[]) => {
      sync();
      const t0 = performance.now();
      try {
        return (f as (...a: unknown[]) => unknown)(...args);
      } finally {
        sync();
        ms[family] = (ms[family] ?? 0) + performance.now() - t0;
      }
    };
  }
  const t0 = performance.now();
  try {
    fn();
    sync();
  } finally {
    for (const [name, f] of saved) table[name] = f;
  }
  const total = performance.now() - t0;
  ms.other = Math.max(0, total - Object.values(ms).reduce((a, b) => a + b, 0));
  return ms;
}
