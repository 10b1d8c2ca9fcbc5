// Float64 references for the training ops in lib/ops.ts, written from the definitions
// (PyTorch / Hugging Face LLaMA) and sharing nothing with the native code. Row-major arrays.
type Arr = ArrayLike<number>;

/** y [M,N] = x [M,K] · wᵀ, w [N,K]. */
export function linearRef(x: Arr, w: Arr, M: number, K: number, N: number): Float64Array {
  const y = new Float64Array(M * N);
  for (let i = 0; i < M; ++i)
    for (let j = 0; j < N; ++j) {
      let s = 0;
      for (let k = 0; k < K; ++k) s += x[i * K + k]! * w[j * K + k]!;
      y[i * N + j] = s;
    }
  return y;
}

/** dx = dy · w [M,K], dw = dyᵀ · x [N,K]. */
export function linearBackwardRef(dy: Arr, x: Arr, w: Arr, M: number, K: number, N: number) {
  const dx = new Float64Array(M * K), dw = new Float64Array(N * K);
  for (let i = 0; i < M; ++i)
    for (let j = 0; j < N; ++j) {
      const g = dy[i * N + j]!;
      for (let k = 0; k < K; ++k) {
        dx[i * K + k]! += g * w[j * K + k]!;
        dw[j * K + k]! += g * x[i * K + k]!;
      }
    }
  return { dx, dw };
}

/** LlamaRMSNorm: y = w * x / sqrt(mean(x²) + eps). */
export function rmsNormRef(x: Arr, w: Arr, eps: number, M: number, C: number) {
  const y = new Float64Array(M * C), rstd = new Float64Array(M);
  for (let m = 0; m < M; ++m) {
    let ss = 0;
    for (let c = 0; c < C; ++c) ss += x[m * C + c]! ** 2;
    const r = 1 / Math.sqrt(ss / C + eps);
    rstd[m] = r;
    for (let c = 0; c < C; ++c) y[m * C + c] = w[c]! * x[m * C + c]! * r;
  }
  return { y, rstd };
}

export function rmsNormBackwardRef(dy: Arr, x: Arr, w: Arr, eps: number, M: number, C: number) {
  const { rstd } = rmsNormRef(x, w, eps, M, C);
  const dx = new Float64Array(M * C), dw = new Float64Array(C);
  for (let m = 0; m < M; ++m) {
    const r = rstd[m]!;
    let s = 0;
    for (let c = 0; c < C; ++c) s += dy[m * C + c]! * w[c]! * x[m * C + c]!;
    for (let c = 0; c < C; ++c) {
      dx[m * C + c] = r * w[c]! * dy[m * C + c]! - (r ** 3 / C) * x[m * C + c]! * s;
      dw[c]! += dy[m * C + c]! * x[m * C + c]! * r;
    }
  }
  return { dx, dw };
}

/** HF LLaMA rotary embedding (rotate_half), x [M,H,D], angles in float64. */
/** theta: inv_freq[i] = theta^(-2i/D); or the D/2 inverse frequencies themselves. */
export function ropeRef(x: Arr, positions: Arr, theta: number | Arr, M: number, H: number, D: number): Float64Array {
  const half = D / 2;
  const out = new Float64Array(M * H * D);
  for (let m = 0; m < M; ++m)
    for (let h = 0; h < H; ++h) {
      const o = (m * H + h) * D;
      // cos/sin over the full D (freqs repeated over both halves) and rotate_half(x) = cat(-x2, x1)
      for (let d = 0; d < D; ++d) {
        const angle = positions[m]! * (typeof theta === 'number' ? theta ** (-(2 * (d % half)) / D) : theta[d % half]!);
        const rot = d < half ? -x[o + d + half]! : x[o + d - half]!;
        out[o + d] = x[o + d]! * Math.cos(angle) + rot * Math.sin(angle);
      }
    }
  return out;
}

const silu = (g: number) => g / (1 + Math.exp(-g));

/** y = down(silu(gate(x)) * up(x)); wGate, wUp [F,C], wDown [C,F]. */
export function ffnRef(x: Arr, wg: Arr, wu: Arr, wd: Arr, M: number, C: number, F: number): Float64Array {
  const g = linearRef(x, wg, M, C, F), u = linearRef(x, wu, M, C, F);
  const h = g.map((gv, i) => silu(gv) * u[i]!);
  return linearRef(h, wd, M, F, C);
}

export function ffnBackwardRef(dy: Arr, x: Arr, wg: Arr, wu: Arr, wd: Arr, M: number, C: number, F: number) {
  const g = linearRef(x, wg, M, C, F), u = linearRef(x, wu, M, C, F);
  const h = g.map((gv, i) => silu(gv) * u[i]!);
  const down = linearBackwardRef(dy, h, wd, M, F, C); // dh = down.dx, dwDown = down.dw
  const dg = new Float64Array(M * F), du = new Float64Array(M * F);
  for (let i = 0; i < M * F; ++i) {
    const s = 1 / (1 + Math.exp(-g[i]!));
    du[i] = down.dx[i]! * g[i]! * s;
    dg[i] = down.dx[i]! * u[i]! * (s + g[i]! * s * (1 - s));
  }
  const gate = linearBackwardRef(dg, x, wg, M, C, F), up = linearBackwardRef(du, x, wu, M, C, F);
  return { dx: gate.dx.map((v, i) => v + up.dx[i]!), dwGate: gate.dw, dwUp: up.dw, dwDown: down.dw };
}

/** Summed cross-entropy of softmax(h · wHeadᵀ) against targets; ignored targets count for nothing. */
export function crossEntropyRef(h: Arr, w: Arr, targets: Arr, M: number, C: number, V: number, ignoreIndex = -100) {
  const logits = linearRef(h, w, M, C, V);
  let loss = 0, count = 0;
  const dlogits = new Float64Array(M * V);
  for (let m = 0; m < M; ++m) {
    const t = targets[m]!;
    if (t === ignoreIndex) continue;
    const row = logits.subarray(m * V, (m + 1) * V);
    const mx = Math.max(...row);
    let sum = 0;
    for (const l of row) sum += Math.exp(l - mx);
    const lse = mx + Math.log(sum);
    loss += lse - row[t]!;
    ++count;
    for (let j = 0; j < V; ++j) dlogits[m * V + j] = Math.exp(row[j]! - lse) - (j === t ? 1 : 0);
  }
  const { dx: dh, dw: dwHead } = linearBackwardRef(dlogits, h, w, M, C, V);
  return { loss, count, logits, dh, dwHead };
}

/** torch.optim.AdamW (amsgrad=False) over steps, in float64; returns the final param, m, v. */
export function adamwRef(
  param: Arr, grads: Arr[], o: { lr: number; beta1: number; beta2: number; eps: number; weightDecay: number },
) {
  const p = Float64Array.from(param), m = new Float64Array(p.length), v = new Float64Array(p.length);
  grads.forEach((g, s) => {
    const step = s + 1;
    const bc1 = 1 - o.beta1 ** step, bc2 = 1 - o.beta2 ** step;
    for (let i = 0; i < p.length; ++i) {
      p[i] = p[i]! * (1 - o.lr * o.weightDecay);
      m[i] = o.beta1 * m[i]! + (1 - o.beta1) * g[i]!;
      v[i] = o.beta2 * v[i]! + (1 - o.beta2) * g[i]! ** 2;
      const denom = Math.sqrt(v[i]!) / Math.sqrt(bc2) + o.eps;
      p[i] = p[i]! - (o.lr / bc1) * (m[i]! / denom);
    }
  });
  return { param: p, m, v };
}

/** Central differences of f with respect to every element of x (modified in place and restored). */
export function finiteDiff(f: () => number, x: Float64Array, h = 1e-5): Float64Array {
  const g = new Float64Array(x.length);
  for (let i = 0; i < x.length; ++i) {
    const keep = x[i]!;
    x[i] = keep + h;
    const up = f();
    x[i] = keep - h;
    const down = f();
    x[i] = keep;
    g[i] = (up - down) / (2 * h);
  }
  return g;
}

/** sum(y * r): the random projection whose gradient with respect to y is r. */
export const project = (y: Arr, r: Arr) => {
  let s = 0;
  for (let i = 0; i < y.length; ++i) s += y[i]! * r[i]!;
  return s;
};
