// The ops of a LLaMA-style training step, each with its backward, written per layer as in
// karpathy/llm.c (no autograd). Thin typed wrappers over native code: arguments are checked
// here with messages that name them; native/cpu/ops computes for 'cpu' tensors and
// native/cuda/ops for 'cuda' tensors (matrix products through cuBLAS, opened at first use).
//
// Conventions: rows are tokens. Forward ops return new tensors. Backward ops write into
// tensors the caller owns: an input gradient such as `dx` is overwritten, a weight gradient
// such as `dw` is accumulated into (`+=`, so micro-batches and blocks add up; zero it with
// `zero()` before a step). Token ids, targets and positions are Int32Arrays (uploaded for
// the call on CUDA).
//
// Devices and dtypes: every tensor of a call is on the device of its first tensor argument
// (else a TypeError naming both). On 'cpu' everything is float32. On 'cuda' the activations
// and weights of a call (x, w, y, dy, dx, table, h, wHead, dh, ...) are all float32 or all
// bfloat16; weight-gradient accumulators (dw, dtable, dwGate, dwUp, dwDown, dwHead), rmsNorm's
// rstd and every adamw tensor are float32. Sums are float32 or wider whatever the dtype.
// CUDA ops queue their work without waiting for it, except crossEntropyLoss and
// sumOfSquares, which return a number and so wait for the device.
import { checkBeta, checkFloat32, checkInteger, checkOptions, describe, fail } from './errors.js';
import { findCublas, LIBRARIES } from './libraries.js';
import { native, type TensorHandle } from './native.js';
import { ropeParameters } from './rope-freq.js';
import { checkTensor, Tensor, type DeviceName, type DType } from './tensor.js';

const fmt = (shape: readonly number[]) => `[${shape.join(', ')}]`;

/** The device and storage type of one call, taken from its first tensor argument. */
class Call {
  readonly device: DeviceName;
  readonly dtype: DType;
  readonly #ref: string;

  constructor(value: unknown, name: string, kind: 'same' | 'f32' = 'same') {
    const t = checkTensor(value, name);
    this.device = t.device;
    this.#ref = name;
    if (kind === 'f32' || t.device === 'cpu') {
      if (t.dtype !== 'float32')
        fail('type', kind === 'f32' ? `${name}: needs float32, got ${t.dtype}` : `${name}: cpu ops take float32 tensors (bfloat16 runs on cuda), got ${t.dtype}`);
    } else if (t.dtype !== 'float32' && t.dtype !== 'bfloat16') {
      fail('type', `${name}: cuda ops take float32 or bfloat16 tensors, got ${t.dtype}`);
    }
    this.dtype = t.dtype;
  }

  /** A tensor on this call's device: of its dtype ('same'), or float32 ('f32': accumulators, rstd). */
  tensor(value: unknown, name: string, kind: 'same' | 'f32' = 'same'): Tensor {
    const t = checkTensor(value, name);
    if (t.device !== this.device) fail('type', `${name}: device '${t.device}' does not match ${this.#ref}'s '${this.device}'`);
    const want = kind === 'f32' ? 'float32' : this.dtype;
    if (t.dtype !== want)
      fail('type', kind === 'f32'
        ? `${name}: needs float32 (it accumulates or keeps float32 state), got ${t.dtype}`
        : `${name}: dtype '${t.dtype}' does not match ${this.#ref}'s '${this.dtype}'`);
    return t;
  }

  /** A new tensor from a native handle, on this call's device. */
  wrap(handle: ReturnType<typeof native.opsLinear>, shape: readonly number[], dtype: DType = this.dtype): Tensor {
    return Tensor.fromHandle(handle, shape, dtype, this.device);
  }
}

/** A tensor of rank 2 with every size >= 1; returns [tensor, rows, cols]. */
function matrix(c: Call, value: unknown, name: string, dims: string, kind: 'same' | 'f32' = 'same'): [Tensor, number, number] {
  const t = c.tensor(value, name, kind);
  if (t.shape.length !== 2 || t.shape.some((d) => d < 1))
    fail('range', `${name}: expected shape ${dims} with every size >= 1, got ${fmt(t.shape)}`);
  return [t, t.shape[0]!, t.shape[1]!];
}

const sameShape = (a: readonly number[], b: readonly number[]) => a.length === b.length && a.every((d, i) => d === b[i]);

/** A tensor of exactly `shape`; `dims` names the sizes in the message. */
function shaped(c: Call, value: unknown, name: string, shape: readonly number[], dims: string, kind: 'same' | 'f32' = 'same'): Tensor {
  const t = c.tensor(value, name, kind);
  if (!sameShape(t.shape, shape))
    fail('range', `${name}: expected shape ${dims} = ${fmt(shape)}, got ${fmt(t.shape)}`);
  return t;
}

let cublasLoaded = false;
/** Opens cuBLAS before the first CUDA matrix product; an Error naming every place looked in when it is missing. */
function needCublas(c: Call, op: string): void {
  if (c.device !== 'cuda' || cublasLoaded) return;
  const [lib, lt] = findCublas();
  if (!lib.path || !lt.path) {
    const missing = !lib.path ? lib : lt;
    throw new Error(`${op}: cuBLAS (${missing.name}) was not found, needed for matrix products on cuda; looked in ` +
      `${missing.searched.join(', ')}. Install it (pip install nvidia-cublas, or the CUDA toolkit), or set ` +
      `${LIBRARIES.cublas.envVar} to the directory of libcublas.so and libcublasLt.so.`);
  }
  native.cublasLoad(lt.path, lib.path);
  cublasLoaded = true;
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


// ---- linear ----

/** nn.Linear without bias: y [M,N] = x [M,K] · wᵀ, w [N,K]. */
export function linear(x: Tensor, w: Tensor): Tensor {
  const c = new Call(x, 'x');
  const [tx, M, K] = matrix(c, x, 'x', '[M, K]');
  const [tw, N] = matrix(c, w, 'w', '[N, K]');
  shaped(c, tw, 'w', [N, K], "[N, K] (K: x's columns)");
  needCublas(c, 'linear');
  return c.wrap(native.opsLinear(tx.handle('x'), tw.handle('w')), [M, N]);
}

/** Gradients of linear(): dx [M,K] = dy · w (overwritten; skipped when null), dw [N,K] += dyᵀ · x (float32). */
export function linearBackward(dy: Tensor, x: Tensor, w: Tensor, dx: Tensor | null, dw: Tensor): void {
  const c = new Call(x, 'x');
  const [tx, M, K] = matrix(c, x, 'x', '[M, K]');
  const [tw, N] = matrix(c, w, 'w', '[N, K]');
  shaped(c, tw, 'w', [N, K], "[N, K] (K: x's columns)");
  const tdy = shaped(c, dy, 'dy', [M, N], '[M, N]');
  const tdx = dx === null ? null : shaped(c, dx, 'dx', [M, K], '[M, K]');
  const tdw = shaped(c, dw, 'dw', [N, K], '[N, K]', 'f32');
  needCublas(c, 'linearBackward');
  native.opsLinearBackward(tdy.handle('dy'), tx.handle('x'), tw.handle('w'), tdx?.handle('dx') ?? null, tdw.handle('dw'));
}

// ---- embedding ----

/** Rows of `table` [V,C] for each id: [M,C]. An id outside [0, V) is a RangeError naming it. */
export function embedding(ids: Int32Array, table: Tensor): Tensor {
  const a = int32Array(ids, 'ids');
  const c = new Call(table, 'table');
  const [tt, V, C] = matrix(c, table, 'table', '[V, C]');
  checkIndices(a, 'ids', V, 'the table rows');
  return c.wrap(native.opsEmbedding(a, tt.handle('table')), [a.length, C]);
}

/**
 * dtable [V,C] (float32) += the rows of dy [M,C] scattered to their ids (deterministic, no
 * atomics). Tokens whose id is paddingIdx add nothing, as with torch's nn.Embedding(padding_idx).
 */
export function embeddingBackward(ids: Int32Array, dy: Tensor, dtable: Tensor, paddingIdx?: number): void {
  const c = new Call(dy, 'dy');
  const [tt, V, C] = matrix(c, dtable, 'dtable', '[V, C]', 'f32');
  const a = int32Array(ids, 'ids');
  const tdy = shaped(c, dy, 'dy', [a.length, C], '[M, C] (M: ids.length)');
  checkIndices(a, 'ids', V, 'the table rows');
  const skip = paddingIdx === undefined ? -1 : checkInteger(paddingIdx, 'paddingIdx', 0, V - 1);
  native.opsEmbeddingBackward(a, tdy.handle('dy'), tt.handle('dtable'), skip);
}

// ---- RMSNorm ----

/** Hugging Face LlamaRMSNorm: y = w * x / sqrt(mean(x²) + eps) over the last axis; rstd [M] for the backward. */
export function rmsNorm(x: Tensor, w: Tensor, eps: number): { y: Tensor; rstd: Tensor } {
  const c = new Call(x, 'x');
  const [tx, M, C] = matrix(c, x, 'x', '[M, C]');
  const tw = shaped(c, w, 'w', [C], '[C]');
  const e = checkFloat32(eps, 'eps', 0, false); // 0 would divide a row of zeros by 0
  const [y, rstd] = native.opsRmsNorm(tx.handle('x'), tw.handle('w'), e);
  return { y: c.wrap(y, [M, C]), rstd: c.wrap(rstd, [M], 'float32') };
}

/** Gradients of rmsNorm(): dx [M,C] overwritten, dw [C] (float32) +=. */
export function rmsNormBackward(dy: Tensor, x: Tensor, w: Tensor, rstd: Tensor, dx: Tensor, dw: Tensor): void {
  const c = new Call(x, 'x');
  const [tx, M, C] = matrix(c, x, 'x', '[M, C]');
  const tw = shaped(c, w, 'w', [C], '[C]');
  const tdy = shaped(c, dy, 'dy', [M, C], '[M, C]');
  const tr = shaped(c, rstd, 'rstd', [M], '[M]', 'f32');
  const tdx = shaped(c, dx, 'dx', [M, C], '[M, C]');
  const tdw = shaped(c, dw, 'dw', [C], '[C]', 'f32');
  native.opsRmsNormBackward(tdy.handle('dy'), tx.handle('x'), tw.handle('w'), tr.handle('rstd'), tdx.handle('dx'), tdw.handle('dw'));
}

// ---- rotary position embedding ----

function ropeArgs(x: unknown, name: string, positions: unknown, freq: unknown) {
  const c = new Call(x, name);
  const t = c.tensor(x, name);
  if (t.shape.length !== 3 || t.shape.some((d) => d < 1) || t.shape[2]! % 2 !== 0)
    fail('range', `${name}: expected shape [M, H, D] with every size >= 1 and D even, got ${fmt(t.shape)}`);
  const p = int32Array(positions, 'positions', t.shape[0], `${name}'s tokens M`);
  const D = t.shape[2]!;
  let invFreq: Float64Array;
  if (freq instanceof Float64Array) {
    if (freq.length !== D / 2) fail('range', `invFreq: expected ${D / 2} inverse frequencies (head dim ${D} / 2), got ${freq.length}`);
    freq.forEach((f, i) => {
      if (!Number.isFinite(f)) fail('range', `invFreq[${i}]: expected a finite number, got ${f}`);
    });
    invFreq = freq;
  } else {
    if (typeof freq !== 'number') fail('type', `theta: expected a number (rope_theta) or a Float64Array of inverse frequencies, got ${describe(freq)}`);
    invFreq = ropeParameters({ head_dim: D, rope_theta: checkFloat32(freq, 'theta', 0, false) }).invFreq;
  }
  return { c, t, p, invFreq };
}

/**
 * Rotary embedding, Hugging Face LLaMA convention (rotate_half): for head dim D, angle =
 * positions[m] * inv_freq[i] (in double), out = x*cos + rotate_half(x)*sin. x [M,H,D];
 * positions may be any integers per token. `theta` gives inv_freq[i] = theta^(-2i/D); a
 * Float64Array of D/2 values gives them directly (ropeParameters(config).invFreq: with a
 * config's rope_scaling; its attentionFactor is the caller's to apply).
 */
export function rope(x: Tensor, positions: Int32Array, theta: number | Float64Array): Tensor {
  const a = ropeArgs(x, 'x', positions, theta);
  return a.c.wrap(native.opsRope(a.t.handle('x'), a.p, a.invFreq, false), a.t.shape);
}

/** Gradient of rope(): the inverse rotation of dy [M,H,D], as a new tensor. */
export function ropeBackward(dy: Tensor, positions: Int32Array, theta: number | Float64Array): Tensor {
  const a = ropeArgs(dy, 'dy', positions, theta);
  return a.c.wrap(native.opsRope(a.t.handle('dy'), a.p, a.invFreq, true), a.t.shape);
}

// ---- SwiGLU feed-forward ----

function ffnArgs(x: unknown, wGate: unknown, wUp: unknown, wDown: unknown, blockRows: unknown) {
  const c = new Call(x, 'x');
  const [tx, M, C] = matrix(c, x, 'x', '[M, C]');
  const [tg, F] = matrix(c, wGate, 'wGate', '[F, C]');
  shaped(c, tg, 'wGate', [F, C], "[F, C] (C: x's columns)");
  const tu = shaped(c, wUp, 'wUp', [F, C], '[F, C]');
  const td = shaped(c, wDown, 'wDown', [C, F], '[C, F]');
  return { c, tx, tg, tu, td, M, C, F, blockRows: checkInteger(blockRows, 'blockRows', 1) };
}

/**
 * SwiGLU: y [M,C] = down(silu(gate(x)) * up(x)), wGate/wUp [F,C], wDown [C,F]; computed
 * blockRows tokens at a time so only [blockRows, F] activations exist. Row results do not
 * depend on blockRows (same bits).
 */
export function ffn(x: Tensor, wGate: Tensor, wUp: Tensor, wDown: Tensor, blockRows: number): Tensor {
  const a = ffnArgs(x, wGate, wUp, wDown, blockRows);
  needCublas(a.c, 'ffn');
  const y = native.opsFfn(a.tx.handle('x'), a.tg.handle('wGate'), a.tu.handle('wUp'), a.td.handle('wDown'), a.blockRows);
  return a.c.wrap(y, [a.M, a.C]);
}

/** Gradients of ffn(), recomputing gate/up per block: dx [M,C] overwritten; dwGate, dwUp [F,C] and dwDown [C,F] (float32) +=. */
export function ffnBackward(
  dy: Tensor, x: Tensor, wGate: Tensor, wUp: Tensor, wDown: Tensor, blockRows: number,
  dx: Tensor, dwGate: Tensor, dwUp: Tensor, dwDown: Tensor,
): void {
  const a = ffnArgs(x, wGate, wUp, wDown, blockRows);
  const tdy = shaped(a.c, dy, 'dy', [a.M, a.C], '[M, C]');
  const tdx = shaped(a.c, dx, 'dx', [a.M, a.C], '[M, C]');
  const tdg = shaped(a.c, dwGate, 'dwGate', [a.F, a.C], '[F, C]', 'f32');
  const tdu = shaped(a.c, dwUp, 'dwUp', [a.F, a.C], '[F, C]', 'f32');
  const tdd = shaped(a.c, dwDown, 'dwDown', [a.C, a.F], '[C, F]', 'f32');
  needCublas(a.c, 'ffnBackward');
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
  /** [V,C] float32, += gradScale * d(lossSum)/dwHead. */
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
  const c = new Call(h, 'h');
  const [th, M, C] = matrix(c, h, 'h', '[M, C]');
  const [tw, V] = matrix(c, wHead, 'wHead', '[V, C]');
  shaped(c, tw, 'wHead', [V, C], "[V, C] (C: h's columns)");
  const o = checkOptions(opts, 'opts', ['chunkRows', 'ignoreIndex', 'gradScale', 'dh', 'dwHead']);
  const chunkRows = checkInteger(o.chunkRows, 'opts.chunkRows', 1);
  const ignoreIndex = o.ignoreIndex === undefined ? -100 : checkInteger(o.ignoreIndex, 'opts.ignoreIndex', -(2 ** 31), 2 ** 31 - 1);
  const gradScale = o.gradScale === undefined ? 1 : checkFloat32(o.gradScale, 'opts.gradScale');
  const t = int32Array(targets, 'targets', M, "h's tokens M");
  checkIndices(t, 'targets', V, 'the vocabulary', ignoreIndex);
  const dh = o.dh === undefined ? null : shaped(c, o.dh, 'opts.dh', [M, C], '[M, C]');
  const dw = o.dwHead === undefined ? null : shaped(c, o.dwHead, 'opts.dwHead', [V, C], '[V, C]', 'f32');
  needCublas(c, 'crossEntropyLoss');
  const [loss, count] = native.opsCrossEntropy(
    th.handle('h'), tw.handle('wHead'), t, chunkRows, ignoreIndex, gradScale, dh?.handle('opts.dh') ?? null, dw?.handle('opts.dwHead') ?? null,
  );
  return { loss, count };
}

/** All the logits h [M,C] · wHeadᵀ [V,C] -> [M,V], for small problems and tests. */
export function logits(h: Tensor, wHead: Tensor): Tensor {
  const c = new Call(h, 'h');
  const [th, M, C] = matrix(c, h, 'h', '[M, C]');
  const [tw, V] = matrix(c, wHead, 'wHead', '[V, C]');
  shaped(c, tw, 'wHead', [V, C], "[V, C] (C: h's columns)");
  needCublas(c, 'logits');
  return c.wrap(native.opsLinear(th.handle('h'), tw.handle('wHead')), [M, V]);
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

/** One torch.optim.AdamW step, fused and in place on param, m (first moment) and v (second moment); all float32. */
export function adamw(param: Tensor, grad: Tensor, m: Tensor, v: Tensor, opts: AdamWOptions): void {
  const c = new Call(param, 'param', 'f32');
  const tp = c.tensor(param, 'param');
  const tg = shaped(c, grad, 'grad', tp.shape, "param's shape");
  const tm = shaped(c, m, 'm', tp.shape, "param's shape");
  const tv = shaped(c, v, 'v', tp.shape, "param's shape");
  const o = adamwScalars(opts, 'weightDecay');
  const wd = (opts as AdamWOptions).weightDecay;
  const weightDecay = wd === undefined ? 0.01 : checkFloat32(wd, 'opts.weightDecay', 0);
  native.opsAdamW(tp.handle('param'), tg.handle('grad'), tm.handle('m'), tv.handle('v'), o.step, o.lr, o.beta1, o.beta2, o.eps, weightDecay);
}

function adamwScalars(opts: unknown, ownKey: 'weightDecay' | 'gradScale') {
  const o = checkOptions(opts, 'opts', ['step', 'lr', 'beta1', 'beta2', 'eps', ownKey]) as Partial<AdamWOptions>;
  const beta = (x: unknown, name: string, dflt: number) => (x === undefined ? dflt : checkBeta(x, name));
  return {
    step: checkInteger(o.step, 'opts.step', 1),
    lr: checkFloat32(o.lr, 'opts.lr', 0),
    beta1: beta(o.beta1, 'opts.beta1', 0.9),
    beta2: beta(o.beta2, 'opts.beta2', 0.999),
    eps: o.eps === undefined ? 1e-8 : checkFloat32(o.eps, 'opts.eps', 0, false),
  };
}

/** One tensor of adamwMulti(). */
export interface AdamWEntry {
  param: Tensor;
  grad: Tensor;
  m: Tensor;
  v: Tensor;
  /** This tensor's decoupled weight decay. Default 0.01, as adamw(). */
  weightDecay?: number;
  /** Receives the updated param in its own dtype, rounded to nearest (a model's compute copy; bfloat16 on cuda). */
  copy?: Tensor;
}

export interface AdamWMultiOptions extends Omit<AdamWOptions, 'weightDecay'> {
  /** Every grad is multiplied by this first, and keeps the product (clipping's coefficient). Default 1. */
  gradScale?: number;
}

/**
 * adamw() over many tensors in one native call, one kernel on CUDA (a training step's ~150
 * launches, a pass to scale the gradients for clipping and a pass to round the compute copies
 * become one pass). Per entry: grad *= gradScale (unless 1), adamw() with the entry's
 * weightDecay, copy = param; the same bits as those calls one by one (on CUDA every rounding
 * of the kernel is written out, so that no FMA contraction tells the two apart). All float32
 * but the copies; no two tensors may share memory.
 */
export function adamwMulti(entries: readonly AdamWEntry[], opts: AdamWMultiOptions): void {
  if (!Array.isArray(entries) || entries.length === 0) fail('type', `entries: expected a non-empty array of { param, grad, m, v }, got ${describe(entries)}`);
  const o = adamwScalars(opts, 'gradScale');
  const { gradScale } = opts as AdamWMultiOptions;
  const scale = gradScale === undefined ? 1 : checkFloat32(gradScale, 'opts.gradScale', 0);
  const first = entries[0] as unknown;
  if (typeof first !== 'object' || first === null) fail('type', `entries[0]: expected { param, grad, m, v }, got ${describe(first)}`);
  const c = new Call((first as AdamWEntry).param, 'entries[0].param', 'f32');
  const lists: [TensorHandle[], TensorHandle[], TensorHandle[], TensorHandle[]] = [[], [], [], []];
  const copies: (TensorHandle | null)[] = [], decays: number[] = [];
  entries.forEach((e: unknown, i) => {
    const at = `entries[${i}]`;
    if (typeof e !== 'object' || e === null) fail('type', `${at}: expected { param, grad, m, v }, got ${describe(e)}`);
    // Keys checked: a misspelt weightDecay would decay at the default 0.01.
    const x = checkOptions(e, at, ['param', 'grad', 'm', 'v', 'weightDecay', 'copy']) as unknown as AdamWEntry;
    const tp = c.tensor(x.param, `${at}.param`, 'f32');
    const same = (t: unknown, name: string) => shaped(c, t, `${at}.${name}`, tp.shape, `${at}.param's shape`, 'f32');
    (['grad', 'm', 'v'] as const).forEach((k, j) => lists[j + 1]!.push(same(x[k], k).handle(`${at}.${k}`)));
    lists[0].push(tp.handle(`${at}.param`));
    decays.push(x.weightDecay === undefined ? 0.01 : checkFloat32(x.weightDecay, `${at}.weightDecay`, 0));
    if (x.copy === undefined) return void copies.push(null);
    const tc = checkTensor(x.copy, `${at}.copy`);
    if (tc.device !== c.device) fail('type', `${at}.copy: device '${tc.device}' does not match ${at}.param's '${c.device}'`);
    if (c.device === 'cuda' && tc.dtype !== 'bfloat16') fail('type', `${at}.copy: expected bfloat16 on cuda, got ${tc.dtype}`);
    if (!sameShape(tc.shape, tp.shape))
      fail('range', `${at}.copy: expected ${at}.param's shape ${fmt(tp.shape)}, got ${fmt(tc.shape)}`);
    copies.push(tc.handle(`${at}.copy`));
  });
  native.opsAdamWMulti(...lists, copies.some((h) => h !== null) ? copies : null, decays, o.step, o.lr, o.beta1, o.beta2, o.eps, scale);
}

/**
 * Sum of squares of every element, accumulated in double, deterministic (for the global
 * gradient norm). Given a list (all on one device, of one dtype), the sum over all of them,
 * with one wait for the device instead of one per tensor.
 */
export function sumOfSquares(t: Tensor | readonly Tensor[]): number {
  const ts: readonly unknown[] = Array.isArray(t) ? t : [t];
  const name = (i: number) => (Array.isArray(t) ? `t[${i}]` : 't');
  if (ts.length === 0) fail('range', 't: expected at least one tensor, got an empty array');
  const c = new Call(ts[0], name(0));
  return native.opsSumOfSquares(Array.from(ts, (x, i) => c.tensor(x, name(i)).handle(name(i)))); // holes too
}

/** t *= s, in place. */
export function scale(t: Tensor, s: number): void {
  new Call(t, 't');
  native.opsScale(t.handle('t'), checkFloat32(s, 's'));
}

/** t = 0, in place. */
export function zero(t: Tensor): void {
  new Call(t, 't');
  native.opsZero(t.handle('t'));
}

/**
 * dst = src, converted to dst's dtype (rounded to nearest even), in place; same device and
 * element count. On cuda the source is float32 or of dst's dtype (float32 master weights
 * into their bfloat16 copies, say); on the cpu any dtype.
 */
export function copy(dst: Tensor, src: Tensor): void {
  const td = checkTensor(dst, 'dst'), ts = checkTensor(src, 'src');
  if (ts.device !== td.device) fail('type', `src: device '${ts.device}' does not match dst's '${td.device}'`);
  if (ts.numel !== td.numel) fail('range', `src: holds ${ts.numel} elements (${fmt(ts.shape)}), dst ${td.numel} (${fmt(td.shape)})`);
  if (td.device === 'cuda' && ts.dtype !== 'float32' && ts.dtype !== td.dtype)
    fail('type', `src: on cuda, copy takes a float32 source or one of dst's dtype '${td.dtype}', got '${ts.dtype}'`);
  native.opsCopy(td.handle('dst'), ts.handle('src'));
}

/** a += b, in place; b has a's shape. */
export function add(a: Tensor, b: Tensor): void {
  const c = new Call(a, 'a');
  const ta = c.tensor(a, 'a');
  const tb = shaped(c, b, 'b', ta.shape, "a's shape");
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
  // One copy, read once: what is checked is what the native view and the Tensor get.
  const dims = Array.from(shape as unknown[], (d, i) => checkInteger(d, `shape[${i}]`, 0));
  const n = dims.reduce((a, b) => a * b, 1);
  if (n !== tt.numel) fail('range', `shape: ${fmt(dims)} holds ${n} elements, the tensor ${fmt(tt.shape)} holds ${tt.numel}`);
  return Tensor.fromHandle(native.opsView(tt.handle('t'), dims), dims, tt.dtype, tt.device);
}
