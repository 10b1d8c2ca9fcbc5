// Naive float64 attention, written from the definition and sharing nothing with the
// library: the oracle every test compares against. Layout [batch, seq, heads, dim].

export interface Dims {
  batch: number;
  seqQ: number;
  seqK: number;
  heads: number;
  kvHeads: number;
  dim: number;
}

export interface RefOptions {
  causal: boolean;
  scale?: number;
  /** Packed sequences: [batch, seq] document ids (seqQ == seqK); a query sees only its own document's keys. */
  documentIds?: ArrayLike<number>;
}

const idx = (b: number, s: number, h: number, d: number, seq: number, heads: number, dim: number) =>
  ((b * seq + s) * heads + h) * dim + d;

function visible(b: number, i: number, j: number, x: Dims, o: RefOptions): boolean {
  const sameDocument = !o.documentIds || o.documentIds[b * x.seqQ + i] === o.documentIds[b * x.seqK + j];
  return sameDocument && (!o.causal || j <= i + x.seqK - x.seqQ);
}

/** Probabilities P[b][h][i][j] in float64 (a row that sees nothing is all zeros), and lse. */
function probs(q: ArrayLike<number>, k: ArrayLike<number>, x: Dims, o: RefOptions) {
  const scale = o.scale ?? 1 / Math.sqrt(x.dim);
  const group = x.heads / x.kvHeads;
  const P = new Float64Array(x.batch * x.heads * x.seqQ * x.seqK);
  const lse = new Float64Array(x.batch * x.heads * x.seqQ).fill(-Infinity);
  for (let b = 0; b < x.batch; ++b)
    for (let h = 0; h < x.heads; ++h)
      for (let i = 0; i < x.seqQ; ++i) {
        const row = ((b * x.heads + h) * x.seqQ + i) * x.seqK;
        const s = new Float64Array(x.seqK).fill(-Infinity);
        for (let j = 0; j < x.seqK; ++j) {
          if (!visible(b, i, j, x, o)) continue;
          let dot = 0;
          for (let d = 0; d < x.dim; ++d)
            dot += q[idx(b, i, h, d, x.seqQ, x.heads, x.dim)]! * k[idx(b, j, Math.floor(h / group), d, x.seqK, x.kvHeads, x.dim)]!;
          s[j] = dot * scale;
        }
        const m = Math.max(...s);
        if (m === -Infinity) continue;
        let sum = 0;
        for (let j = 0; j < x.seqK; ++j) sum += Math.exp(s[j]! - m);
        for (let j = 0; j < x.seqK; ++j) P[row + j] = Math.exp(s[j]! - m) / sum;
        lse[(b * x.heads + h) * x.seqQ + i] = m + Math.log(sum);
      }
  return { P, lse, scale, group };
}

export function attentionRef(q: ArrayLike<number>, k: ArrayLike<number>, v: ArrayLike<number>, x: Dims, o: RefOptions) {
  const { P, lse, group } = probs(q, k, x, o);
  const out = new Float64Array(x.batch * x.seqQ * x.heads * x.dim);
  for (let b = 0; b < x.batch; ++b)
    for (let h = 0; h < x.heads; ++h)
      for (let i = 0; i < x.seqQ; ++i)
        for (let j = 0; j < x.seqK; ++j) {
          const p = P[((b * x.heads + h) * x.seqQ + i) * x.seqK + j]!;
          if (p === 0) continue;
          for (let d = 0; d < x.dim; ++d)
            out[idx(b, i, h, d, x.seqQ, x.heads, x.dim)]! += p * v[idx(b, j, Math.floor(h / group), d, x.seqK, x.kvHeads, x.dim)]!;
        }
  return { out, lse };
}

/**
 * Gradients of sum(out * dout) by the textbook formulas: dV = P^T dO, dS = P * (dO V^T - rowsum(dO * O)).
 * `storedOut` replaces O in rowsum(dO * O) when the kernel is handed a rounded (bf16) forward output.
 */
export function attentionBackwardRef(
  dout: ArrayLike<number>, q: ArrayLike<number>, k: ArrayLike<number>, v: ArrayLike<number>, x: Dims, o: RefOptions,
  storedOut?: ArrayLike<number>,
) {
  const { P, scale, group } = probs(q, k, x, o);
  const out = storedOut ?? attentionRef(q, k, v, x, o).out;
  const dq = new Float64Array(q.length), dk = new Float64Array(k.length), dv = new Float64Array(v.length);
  const qi = (b: number, i: number, h: number, d: number) => idx(b, i, h, d, x.seqQ, x.heads, x.dim);
  const ki = (b: number, j: number, h: number, d: number) => idx(b, j, Math.floor(h / group), d, x.seqK, x.kvHeads, x.dim);
  for (let b = 0; b < x.batch; ++b)
    for (let h = 0; h < x.heads; ++h)
      for (let i = 0; i < x.seqQ; ++i) {
        let delta = 0;
        for (let d = 0; d < x.dim; ++d) delta += dout[qi(b, i, h, d)]! * out[qi(b, i, h, d)]!;
        for (let j = 0; j < x.seqK; ++j) {
          const p = P[((b * x.heads + h) * x.seqQ + i) * x.seqK + j]!;
          if (p === 0) continue;
          let dp = 0;
          for (let d = 0; d < x.dim; ++d) dp += dout[qi(b, i, h, d)]! * v[ki(b, j, h, d)]!;
          const ds = p * (dp - delta);
          for (let d = 0; d < x.dim; ++d) {
            dv[ki(b, j, h, d)]! += p * dout[qi(b, i, h, d)]!;
            dq[qi(b, i, h, d)]! += scale * ds * k[ki(b, j, h, d)]!;
            dk[ki(b, j, h, d)]! += scale * ds * q[qi(b, i, h, d)]!;
          }
        }
      }
  return { dq, dk, dv };
}

/** Deterministic uniform values in [-1, 1) (mulberry32). */
export function randomArray(n: number, seed: number): Float32Array {
  let a = seed >>> 0;
  const out = new Float32Array(n);
  for (let i = 0; i < n; ++i) {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    out[i] = ((t ^ (t >>> 14)) >>> 0) / 4294967296 * 2 - 1;
  }
  return out;
}

/** Largest |a - b| / (atol + rtol * |b|); <= 1 means within tolerance. Infinities must match exactly. */
export function worstError(a: ArrayLike<number>, b: ArrayLike<number>, atol: number, rtol = 0): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} != ${b.length}`);
  let worst = 0;
  for (let i = 0; i < a.length; ++i) {
    const x = a[i]!, y = b[i]!;
    if (Number.isNaN(x) || Number.isNaN(y)) return Infinity;
    if (!Number.isFinite(y) || !Number.isFinite(x)) {
      if (x !== y) return Infinity;
      continue;
    }
    worst = Math.max(worst, Math.abs(x - y) / (atol + rtol * Math.abs(y)));
  }
  return worst;
}

/** max |a - b| / max |b| (the error relative to the reference's scale); Infinity when a holds a NaN. */
export function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let diff = 0, scale = 1e-30;
  for (let i = 0; i < b.length; ++i) {
    if (Number.isNaN(a[i]!)) return Infinity;
    diff = Math.max(diff, Math.abs(a[i]! - b[i]!));
    scale = Math.max(scale, Math.abs(b[i]!));
  }
  return diff / scale;
}

/**
 * relErr row by row: each run of `row` values (one token's head) against its own largest value,
 * floored at `floor` of the whole tensor's. Against the tensor's largest value alone, a small row
 * could be wrong whole (a ragged tile's last key dropped) and pass; never less than relErr.
 */
export function rowErr(a: ArrayLike<number>, b: ArrayLike<number>, row: number, floor = 0.05): number {
  if (a.length !== b.length || b.length % row !== 0) throw new Error(`rowErr: lengths ${a.length}, ${b.length} in rows of ${row}`);
  let whole = 1e-30;
  for (let i = 0; i < b.length; ++i) whole = Math.max(whole, Math.abs(b[i]!));
  let worst = 0;
  for (let r0 = 0; r0 < b.length; r0 += row) {
    let diff = 0, size = 0;
    for (let i = r0; i < r0 + row; ++i) {
      if (Number.isNaN(a[i]!)) return Infinity;
      diff = Math.max(diff, Math.abs(a[i]! - b[i]!));
      size = Math.max(size, Math.abs(b[i]!));
    }
    worst = Math.max(worst, diff / Math.max(size, floor * whole));
  }
  return worst;
}

/** Rounds float32 values to bfloat16 or float16 as the library's storage does (via the typed arrays). */
export function roundTo(dtype: 'float32' | 'bfloat16' | 'float16', x: Float32Array): Float32Array {
  if (dtype === 'float32') return x;
  const out = new Float32Array(x.length);
  const u = new Uint32Array(x.buffer, x.byteOffset, x.length);
  const o = new Uint32Array(out.buffer);
  if (dtype === 'bfloat16') {
    for (let i = 0; i < x.length; ++i) {
      const bits = u[i]!;
      o[i] = ((bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16) << 16;
    }
    return out;
  }
  return Float32Array.from(x, (v) => Math.fround(f16round(v)));
}

// Round to the nearest IEEE binary16 value (normal range, ties to even), computed in float64.
function f16round(v: number): number {
  if (v === 0 || !Number.isFinite(v)) return v;
  const e = Math.max(Math.floor(Math.log2(Math.abs(v))), -14);
  const step = 2 ** (e - 10);
  const q = v / step;
  let r = Math.round(q);
  if (Math.abs(q - Math.trunc(q)) === 0.5) r = 2 * Math.round(q / 2);
  return r * step;
}
