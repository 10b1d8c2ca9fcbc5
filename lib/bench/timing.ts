// Timing and inputs shared by the suites.

/** n uniform values in [-1, 1). */
export function randomArray(n: number): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; ++i) a[i] = Math.random() * 2 - 1;
  return a;
}

/** Median of `reps` runs of fn after one warm-up, in milliseconds; `sync` runs after each (e.g. cudaSynchronize). */
export function medianMs(fn: () => void, reps: number, sync: () => void = () => {}): number {
  fn();
  sync();
  const ts: number[] = [];
  for (let i = 0; i < reps; ++i) {
    const t0 = performance.now();
    fn();
    sync();
    ts.push(performance.now() - t0);
  }
  return median(ts);
}

export function median(xs: number[]): number {
  return [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
}
