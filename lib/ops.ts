// The CPU ops of a LLaMA-style training step, each with its backward, written per layer as
// in karpathy/llm.c (no autograd). Thin typed wrappers over native/cpu/ops: arguments are
// checked here with messages that name them; the native side computes.
//
// Conventions: tensors are float32 on the CPU (other dtypes/devices throw a TypeError).
// Rows are tokens. Forward ops return new tensors. Backward ops write into tensors the
// caller owns: an input gradient such as `dx` is overwritten, a weight gradient such as
// `dw` is accumulated into (`+=`, so micro-batches and blocks add up; zero it with
// `zero()` before a step). Token ids, targets and positions are Int32Arrays.
import { checkInteger, checkOptions, describe, fail } from './errors.js';
import { native } from './native.js';
import { checkTensor, Tensor } from './tensor.js';

const fmt = (shape: readonly number[]) => `[${shape.join(', ')}]`;

/** A float32 CPU tensor, or a TypeError naming the argument. */
function f32(value: unknown, name: string): Tensor {
  const t = checkTensor(value, name);
  if (t.dtype !== 'float32' || t.device !== 'cpu')
    fail('type', `${name}: needs float32 cpu tensors; CUDA ops are not implemented yet (got ${t.dtype} on ${t.device})`);
  return t;
}

/** A float32 CPU tensor of rank 2 with every size >= 1; returns [rows, cols]. */
function matrix(value: unknown, name: string, dims: string): [Tensor, number, number] {
  const t = f32(value, name);
  if (t.shape.length !== 2 || t.shape.some((d) => d < 1))
    fail('range', `${name}: expected shape ${dims} with every size >= 1, got ${fmt(t.shape)}`);
  return [t, t.shape[0]!, t.shape[1]!];
}

/** A float32 CPU tensor of exactly `shape`; `dims` names the sizes in the message. */
function shaped(value: unknown, name: string, shape: readonly number[], dims: string): Tensor {
  const t = f32(value, name);
  if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i]))
    fail('range', `${name}: expected shape ${dims} = ${fmt(shape)}, got ${fmt(t.shape)}`);
  return t;
}

function int32Array(value: unknown, name: string, length?: number, lengthName?: string): Int32Array {
  if (!(value instanceof Int32Array)) fail('type', `${name}: expected an Int32Array, got ${describe(value)}`);
  if (length !== undefined && value.length !== length)
    fail('range', `${name}: expected length ${length} (${lengthName}), got ${value.length}`);
  return value;
}

/** Every element in [0, hi) (or equal to `except`). */
function checkIndices(a: Int32Array, name: string, hi: number, what: string, except?: number): void {
  for (let i = 0; i < a.length; ++i) {
    const v = a[i]!;
    if ((v < 0 || v >= hi) && v !== except) fail('range', `${name}[${i}]: ${v} is outside ${what} [0, ${hi})`);
  }
}

function checkFinite(value: unknown, name: string, min = -Infinity, minInclusive = true): number {
  if (typeof value !== 'number') fail('type', `${name}: expected a number, got ${describe(value)}`);
  if (!Number.isFinite(value) || (minInclusive ? value < min : value <= min))
    fail('range', `${name}: expected a finite number ${minInclusive ? '>=' : '>'} ${min}, got ${value}`);
  return value;
}

// ---- linear ----

/** nn.Linear without bias: y [M,N] = x [M,K] · wᵀ, w [N,K]. */
export function linear(x: Tensor, w: Tensor): Tensor {
  const [tx, M, K] = matrix(x, 'x', '[M, K]');
  const [tw, N] = matrix(w, 'w', '[N, K]');
  shaped(tw, 'w', [N, K], "[N, K] (K: x's columns)");
  return Tensor.fromHandle(native.opsLinear(tx.handle('x'), tw.handle('w')), [M, N], 'float32', 'cpu');
}

/** Gradients of linear(): dx [M,K] = dy · w (overwritten; skipped when null), dw [N,K] += dyᵀ · x. */
export function linearBackward(dy: Tensor, x: Tensor, w: Tensor, dx: Tensor | null, dw: Tensor): void {
  const [tx, M, K] = matrix(x, 'x', '[M, K]');
  const [tw, N] = matrix(w, 'w', '[N, K]');
  shaped(tw, 'w', [N, K], "[N, K] (K: x's columns)");
  const tdy = shaped(dy, 'dy', [M, N], '[M, N]');
  const tdx = dx === null ? null : shaped(dx, 'dx', [M, K], '[M, K]');
  const tdw = shaped(dw, 'dw', [N, K], '[N, K]');
  native.opsLinearBackward(tdy.handle('dy'), tx.handle('x'), tw.handle('w'), tdx?.handle('dx') ?? null, tdw.handle('dw'));
}

// ---- embedding ----

/** Rows of `table` [V,C] for each id: [M,C]. An id outside [0, V) is a RangeError naming it. */
export function embedding(ids: Int32Array, table: Tensor): Tensor {
  const a = int32Array(ids, 'ids');
  const [tt, V, C] = matrix(table, 'table', '[V, C]');
  checkIndices(a, 'ids', V, 'the table rows');
  return Tensor.fromHandle(native.opsEmbedding(a, tt.handle('table')), [a.length, C], 'float32', 'cpu');
}

/** dtable [V,C] += the rows of dy [M,C] scattered to their ids (deterministic). */
export function embeddingBackward(ids: Int32Array, dy: Tensor, dtable: Tensor): void {
  const [tt, V, C] = matrix(dtable, 'dtable', '[V, C]');
  const a = int32Array(ids, 'ids');
  const tdy = shaped(dy, 'dy', [a.length, C], '[M, C] (M: ids.length)');
  checkIndices(a, 'ids', V, 'the table rows');
  native.opsEmbeddingBackward(a, tdy.handle('dy'), tt.handle('dtable'));
}

// ---- RMSNorm ----

/** Hugging Face LlamaRMSNorm: y = w * x / sqrt(mean(x²) + eps) over the last axis; rstd [M] for the backward. */
export function rmsNorm(x: Tensor, w: Tensor, eps: number): { y: Tensor; rstd: Tensor } {
  const [tx, M, C] = matrix(x, 'x', '[M, C]');
  const tw = shaped(w, 'w', [C], '[C]');
  const e = checkFinite(eps, 'eps', 0);
  const [y, rstd] = native.opsRmsNorm(tx.handle('x'), tw.handle('w'), e);
  return { y: Tensor.fromHandle(y, [M, C], 'float32', 'cpu'), rstd: Tensor.fromHandle(rstd, [M], 'float32', 'cpu') };
}

/** Gradients of rmsNorm(): dx [M,C] overwritten, dw [C] +=. */
export function rmsNormBackward(dy: Tensor, x: Tensor, w: Tensor, rstd: Tensor, dx: Tensor, dw: Tensor): void {
  const [tx, M, C] = matrix(x, 'x', '[M, C]');
  const tw = shaped(w, 'w', [C], '[C]');
  const tdy = shaped(dy, 'dy', [M, C], '[M, C]');
  const tr = shaped(rstd, 'rstd', [M], '[M]');
  const tdx = shaped(dx, 'dx', [M, C], '[M, C]');
  const tdw = shaped(dw, 'dw', [C], '[C]');
  native.opsRmsNormBackward(tdy.handle('dy'), tx.handle('x'), tw.handle('w'), tr.handle('rstd'), tdx.handle('dx'), tdw.handle('dw'));
}

// ---- rotary position embedding ----

function ropeArgs(x: unknown, name: string, positions: unknown, theta: unknown) {
  const t = f32(x, name);
  if (t.shape.length !== 3 || t.shape.some((d) => d < 1) || t.shape[2]! % 2 !== 0)
    fail('range', `${name}: expected shape [M, H, D] with every size >= 1 and D even, got ${fmt(t.shape)}`);
  const p = int32Array(positions, 'positions', t.shape[0], `${name}'s tokens M`);
  return { t, p, theta: checkFinite(theta, 'theta', 0, false) };
}

/**
 * Rotary embedding, Hugging Face LLaMA convention (rotate_half): for head dim D,
 * inv_freq[i] = theta^(-2i/D), angle = positions[m] * inv_freq[i] (computed in double),
 * out = x*cos + rotate_half(x)*sin. x [M,H,D]; positions may be any integers per token.
 */
export function rope(x: Tensor, positions: Int32Array, theta: number): Tensor {
  const a = ropeArgs(x, 'x', positions, theta);
  return Tensor.fromHandle(native.opsRope(a.t.handle('x'), a.p, a.theta, false), a.t.shape, 'float32', 'cpu');
}

/** Gradient of rope(): the inverse rotation of dy [M,H,D], as a new tensor. */
export function ropeBackward(dy: Tensor, positions: Int32Array, theta: number): Tensor {
  const a = ropeArgs(dy, 'dy', positions, theta);
  return Tensor.fromHandle(native.opsRope(a.t.handle('dy'), a.p, a.theta, true), a.t.shape, 'float32', 'cpu');
}

// ---- SwiGLU feed-forward ----

function ffnArgs(x: unknown, wGate: unknown, wUp: unknown, wDown: unknown, blockRows: unknown) {
  const [tx, M, C] = matrix(x, 'x', '[M, C]');
  const [tg, F] = matrix(wGate, 'wGate', '[F, C]');
  shaped(tg, 'wGate', [F, C], "[F, C] (C: x's columns)");
  const tu = shaped(wUp, 'wUp', [F, C], '[F, C]');
  const td = shaped(wDown, 'wDown', [C, F], '[C, F]');
  return { tx, tg, tu, td, M, C, F, blockRows: checkInteger(blockRows, 'blockRows', 1) };
}

/**
 * SwiGLU: y [M,C] = down(silu(gate(x)) * up(x)), wGate/wUp [F,C], wDown [C,F]; computed
 * blockRows tokens at a time so only [blockRows, F] activations exist. Row results do not
 * depend on blockRows (same bits).
 */
export function ffn(x: Tensor, wGate: Tensor, wUp: Tensor, wDown: Tensor, blockRows: number): Tensor {
  const a = ffnArgs(x, wGate, wUp, wDown, blockRows);
  const y = native.opsFfn(a.tx.handle('x'), a.tg.handle('wGate'), a.tu.handle('wUp'), a.td.handle('wDown'), a.blockRows);
  return Tensor.fromHandle(y, [a.M, a.C], 'float32', 'cpu');
}

/** Gradients of ffn(), recomputing gate/up per block: dx [M,C] overwritten; dwGate, dwUp [F,C] and dwDown [C,F] +=. */
export function ffnBackward(
  dy: Tensor, x: Tensor, wGate: Tensor, wUp: Tensor, wDown: Tensor, blockRows: number,
  dx: Tensor, dwGate: Tensor, dwUp: Tensor, dwDown: Tensor,
): void {
  const a = ffnArgs(x, wGate, wUp, wDown, blockRows);
  const tdy = shaped(dy, 'dy', [a.M, a.C], '[M, C]');
  const tdx = shaped(dx, 'dx', [a.M, a.C], '[M, C]');
  const tdg = shaped(dwGate, 'dwGate', [a.F, a.C], '[F, C]');
  const tdu = shaped(dwUp, 'dwUp', [a.F, a.C], '[F, C]');
  const tdd = shaped(dwDown, 'dwDown', [a.C, a.F], '[C, F]');
  native.opsFfnBackward(
    tdy.handle('dy'), a.tx.handle('x'), a.tg.handle('wGate'), a.tu.handle('wUp'), a.td.handle('wDown'), a.blockRows,
    tdx.handle('dx'), tdg.handle('dwGate'), tdu.handle('dwUp'), tdd.handle('dwDown'),
  );
}

// ---- LM head + cross-entropy ----

export interface CrossEntropyOptions {
  /** Tokens per chunk: the chunk's logits [chunkRows, V] are the only ones that exist at a time. */
  chunkRows: number;
  /** Targets equal to this count for nothing (no loss, zero gradient). Default -100, as PyTorch. */
  ignoreIndex?: number;
  /** Multiplies the gradients written to dh and added to dwHead (e.g. 1 / tokens for a mean loss). Default 1. */
  gradScale?: number;
  /** [M,C], overwritten with gradScale * d(lossSum)/dh. */
  dh?: Tensor;
  /** [V,C], += gradScale * d(lossSum)/dwHead. */
  dwHead?: Tensor;
}

export interface CrossEntropyResult {
  /** Sum over the counted tokens of -log softmax(h · wHeadᵀ)[target], accumulated in double. */
  loss: number;
  /** Tokens whose target is not ignoreIndex. */
  count: number;
}

/**
 * Cross-entropy of the LM head's logits h [M,C] · wHeadᵀ [V,C] against targets, summed
 * over tokens, computed chunkRows tokens at a time (the [M, V] logits never exist); with
 * dh / dwHead it also computes their gradients in the same pass.
 */
export function crossEntropyLoss(h: Tensor, wHead: Tensor, targets: Int32Array, opts: CrossEntropyOptions): CrossEntropyResult {
  const [th, M, C] = matrix(h, 'h', '[M, C]');
  const [tw, V] = matrix(wHead, 'wHead', '[V, C]');
  shaped(tw, 'wHead', [V, C], "[V, C] (C: h's columns)");
  const o = checkOptions(opts, 'opts');
  const chunkRows = checkInteger(o.chunkRows, 'opts.chunkRows', 1);
  const ignoreIndex = o.ignoreIndex === undefined ? -100 : checkInteger(o.ignoreIndex, 'opts.ignoreIndex', -(2 ** 31), 2 ** 31 - 1);
  const gradScale = o.gradScale === undefined ? 1 : checkFinite(o.gradScale, 'opts.gradScale');
  const t = int32Array(targets, 'targets', M, "h's tokens M");
  checkIndices(t, 'targets', V, 'the vocabulary', ignoreIndex);
  const dh = o.dh === undefined ? null : shaped(o.dh, 'opts.dh', [M, C], '[M, C]');
  const dw = o.dwHead === undefined ? null : shaped(o.dwHead, 'opts.dwHead', [V, C], '[V, C]');
  const [loss, count] = native.opsCrossEntropy(
    th.handle('h'), tw.handle('wHead'), t, chunkRows, ignoreIndex, gradScale, dh?.handle('opts.dh') ?? null, dw?.handle('opts.dwHead') ?? null,
  );
  return { loss, count };
}

/** All the logits h [M,C] · wHeadᵀ [V,C] -> [M,V], for small problems and tests. */
export function logits(h: Tensor, wHead: Tensor): Tensor {
  const [th, M, C] = matrix(h, 'h', '[M, C]');
  const [tw, V] = matrix(wHead, 'wHead', '[V, C]');
  shaped(tw, 'wHead', [V, C], "[V, C] (C: h's columns)");
  return Tensor.fromHandle(native.opsLinear(th.handle('h'), tw.handle('wHead')), [M, V], 'float32', 'cpu');
}

// ---- optimizer and gradient utilities ----

export interface AdamWOptions {
  /** The step number, from 1 (bias correction). */
  step: number;
  lr: number;
  /** Default 0.9. */
  beta1?: number;
  /** Default 0.999. */
  beta2?: number;
  /** Default 1e-8. */
  eps?: number;
  /** Decoupled: param *= 1 - lr * weightDecay. Default 0.01, as torch.optim.AdamW. */
  weightDecay?: number;
}

/** One torch.optim.AdamW step, fused and in place on param, m (first moment) and v (second moment). */
export function adamw(param: Tensor, grad: Tensor, m: Tensor, v: Tensor, opts: AdamWOptions): void {
  const tp = f32(param, 'param');
  const tg = shaped(grad, 'grad', tp.shape, "param's shape");
  const tm = shaped(m, 'm', tp.shape, "param's shape");
  const tv = shaped(v, 'v', tp.shape, "param's shape");
  const o = checkOptions(opts, 'opts');
  const step = checkInteger(o.step, 'opts.step', 1);
  const lr = checkFinite(o.lr, 'opts.lr', 0);
  const beta = (x: unknown, name: string, dflt: number) => {
    if (x === undefined) return dflt;
    const b = checkFinite(x, name, 0);
    if (b >= 1) fail('range', `${name}: expected a number in [0, 1), got ${b}`);
    return b;
  };
  const beta1 = beta(o.beta1, 'opts.beta1', 0.9), beta2 = beta(o.beta2, 'opts.beta2', 0.999);
  const eps = o.eps === undefined ? 1e-8 : checkFinite(o.eps, 'opts.eps', 0, false);
  const weightDecay = o.weightDecay === undefined ? 0.01 : checkFinite(o.weightDecay, 'opts.weightDecay', 0);
  native.opsAdamW(tp.handle('param'), tg.handle('grad'), tm.handle('m'), tv.handle('v'), step, lr, beta1, beta2, eps, weightDecay);
}

/** Sum of squares of every element, accumulated in double (for the global gradient norm). */
export function sumOfSquares(t: Tensor): number {
  return native.opsSumOfSquares(f32(t, 't').handle('t'));
}

/** t *= s, in place. */
export function scale(t: Tensor, s: number): void {
  native.opsScale(f32(t, 't').handle('t'), checkFinite(s, 's'));
}

/** t = 0, in place. */
export function zero(t: Tensor): void {
  native.opsZero(f32(t, 't').handle('t'));
}

/** a += b, in place; b has a's shape. */
export function add(a: Tensor, b: Tensor): void {
  const ta = f32(a, 'a');
  const tb = shaped(b, 'b', ta.shape, "a's shape");
  native.opsAdd(ta.handle('a'), tb.handle('b'));
}

/**
 * The same memory seen with another shape of the same element count (e.g. [M, H*D] as
 * [M, H, D] for rope(), or [1, M, H, D] for attention()). Writes through either are seen
 * by both; disposing one leaves the other valid.
 */
export function reshape(t: Tensor, shape: readonly number[]): Tensor {
  const tt = checkTensor(t, 't');
  if (!Array.isArray(shape)) fail('type', `shape: expected an array of integers, got ${describe(shape)}`);
  shape.forEach((d, i) => checkInteger(d, `shape[${i}]`, 0));
  const n = shape.reduce((a, b) => a * b, 1);
  if (n !== tt.numel) fail('range', `shape: ${fmt(shape)} holds ${n} elements, the tensor ${fmt(tt.shape)} holds ${tt.numel}`);
  return Tensor.fromHandle(native.opsView(tt.handle('t'), [...shape]), shape, tt.dtype, tt.device);
}
