// Timing and inputs shared by the suites.

/** n uniform values in [-1, 1): 2^24 drawn, then repeated. Speed does not depend on the values,
 * and drawing all four inputs of a 1M-token run (2^30 values each) takes ~90 s of Math.random
 * (scaled from 2^28 values timed on the CI machine). */
export function randomArray(n: number): Float32Array {
  const a = new Float32Array(n);
  const drawn = Math.min(n, 1 << 24);
  for (let i = 0; i < drawn; ++i) a[i] = Math.random() * 2 - 1;
  for (let filled = drawn; filled < n; filled *= 2) a.copyWithin(filled, 0, Math.min(filled, n - filled));
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

/** The middle value, or the mean of the two middle ones when there is an even count. */
export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b), m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}
