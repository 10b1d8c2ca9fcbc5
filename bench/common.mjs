// Shared by the benchmark scripts: random inputs, median timing, and the commit a result
// file names.
import { execSync } from 'node:child_process';

/** n uniform values in [-1, 1). */
export function random(n) {
  const a = new Float32Array(n);
  for (let i = 0; i < n; ++i) a[i] = Math.random() * 2 - 1;
  return a;
}

/** Median of `reps` runs of fn after one warm-up, in milliseconds; `wait` runs after each (e.g. cudaSynchronize). */
export function medianMs(fn, reps, wait = () => {}) {
  fn();
  wait();
  const ts = [];
  for (let i = 0; i < reps; ++i) {
    const t0 = process.hrtime.bigint();
    fn();
    wait();
    ts.push(Number(process.hrtime.bigint() - t0) / 1e6);
  }
  return ts.sort((a, b) => a - b)[Math.floor(ts.length / 2)];
}

/** The short hash of HEAD, or 'unknown' outside a git checkout. */
export function commitHash() {
  try {
    return execSync('git rev-parse --short HEAD', { stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim();
  } catch {
    return 'unknown';
  }
}
