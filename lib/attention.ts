// attention() and attentionBackward() on one device: exact blockwise attention,
// layout [batch, seq, heads, headDim] as in flash-attn.
import { checkBoolean, checkOptions, checkPositiveNumber, describe, fail } from './errors.js';
import { native } from './native.js';
import { checkTensor, Tensor } from './tensor.js';

export interface AttentionOptions {
  /** Mask keys after the query; with seqQ != seqK aligned bottom right (key j visible to query i when j <= i + seqK - seqQ). */
  causal?: boolean;
  /** Softmax scale; default 1/sqrt(headDim). */
  scale?: number;
  /**
   * Backward only (a forward takes and ignores it, so that one options object serves both): the
   * same bits on every run. On CUDA, dQ is computed in its own pass instead of with atomic adds
   * (slower); the CPU backward is always deterministic.
   */
  deterministic?: boolean;
  /**
   * Packed sequences: the document of each token, [batch, seq] row-major (for ringAttention,
   * this rank's shard, sharded like the tokens). A query then sees only keys of its own
   * document, besides the causal rule; ids are any int32 values. Needs seqQ == seqK.
   */
  documentIds?: Int32Array;
}

export interface AttentionResult {
  /** [batch, seqQ, heads, headDim], dtype of q. */
  out: Tensor;
  /** [batch, heads, seqQ] float32, natural-log log-sum-exp of the scaled scores; -Infinity for a row that sees no key. */
  lse: Tensor;
}

export interface AttentionGradients {
  dq: Tensor;
  dk: Tensor;
  dv: Tensor;
}

export const MAX_HEAD_DIM = 256;

const fmt = (shape: readonly number[]) => `[${shape.join(', ')}]`;

function check4d(t: Tensor, name: string): void {
  if (t.shape.length !== 4 || t.shape.some((d) => d < 1))
    fail('range', `${name}: expected shape [batch, seq, heads, headDim] with every size >= 1, got ${fmt(t.shape)}`);
}

export const ATTENTION_OPTION_KEYS = ['causal', 'scale', 'deterministic', 'documentIds'] as const;

/** Checks q, k, v for attention and returns the resolved options (internal; the ring uses it too, with keys of its own). */
export function checkAttentionInputs(
  q: unknown, k: unknown, v: unknown, opts: unknown, optionKeys: readonly string[] = ATTENTION_OPTION_KEYS, optsName = 'opts', internalKeys: readonly string[] = [],
) {
  const tq = checkTensor(q, 'q'), tk = checkTensor(k, 'k'), tv = checkTensor(v, 'v');
  check4d(tq, 'q');
  check4d(tk, 'k');
  check4d(tv, 'v');
  for (const [t, name] of [[tk, 'k'], [tv, 'v']] as const) {
    if (t.dtype !== tq.dtype) fail('type', `${name}: dtype '${t.dtype}' does not match q's '${tq.dtype}'`);
    if (t.device !== tq.device) fail('type', `${name}: device '${t.device}' does not match q's '${tq.device}'`);
  }
  const [bq, , hq, dq] = tq.shape as [number, number, number, number];
  const [bk, , hk, dk] = tk.shape as [number, number, number, number];
  if (bk !== bq) fail('range', `k: batch ${bk} does not match q's batch ${bq}`);
  if (dk !== dq) fail('range', `k: headDim ${dk} does not match q's headDim ${dq}`);
  if (tv.shape.some((d, i) => d !== tk.shape[i])) fail('range', `v: expected the shape of k ${fmt(tk.shape)}, got ${fmt(tv.shape)}`);
  if (hq % hk !== 0) fail('range', `k: ${hk} kv heads must divide q's ${hq} heads (GQA/MQA)`);
  if (dq > MAX_HEAD_DIM) fail('range', `q: headDim ${dq} exceeds the supported maximum of ${MAX_HEAD_DIM}`);
  if (tq.device === 'cuda' && tq.dtype === 'float32')
    fail('type', `q: attention on 'cuda' tensors takes dtype 'bfloat16' or 'float16' (the kernels use tensor cores), got 'float32'`);
  const o = checkOptions(opts, optsName, optionKeys, internalKeys);
  const causal = checkBoolean(o.causal, `${optsName}.causal`) ?? false;
  const scale = checkPositiveNumber(o.scale, `${optsName}.scale`) ?? 1 / Math.sqrt(dq);
  const deterministic = checkBoolean(o.deterministic, `${optsName}.deterministic`) ?? false;
  const documentIds = o.documentIds as unknown;
  if (documentIds !== undefined) {
    const name = `${optsName}.documentIds`;
    if (!(documentIds instanceof Int32Array)) fail('type', `${name}: expected an Int32Array (one document id per token), got ${describe(documentIds)}`);
    if (tk.shape[1] !== tq.shape[1]) fail('range', `${name}: needs q and k of the same sequence length (one id per token serves both), got ${tq.shape[1]} and ${tk.shape[1]}`);
    if (documentIds.length !== bq * tq.shape[1]!)
      fail('range', `${name}: expected batch x seq = ${bq * tq.shape[1]!} ids, got ${documentIds.length}`);
  }
  return { q: tq, k: tk, v: tv, causal, scale, deterministic, documentIds: documentIds as Int32Array | undefined, options: o };
}

/** Checks the forward results handed to a backward call (internal). */
export function checkBackwardInputs(dout: unknown, out: unknown, lse: unknown, q: Tensor): { dout: Tensor; out: Tensor; lse: Tensor } {
  const td = checkTensor(dout, 'dout'), to = checkTensor(out, 'out'), tl = checkTensor(lse, 'lse');
  for (const [t, name] of [[td, 'dout'], [to, 'out']] as const) {
    if (t.shape.length !== 4 || t.shape.some((d, i) => d !== q.shape[i]))
      fail('range', `${name}: expected the shape of q ${fmt(q.shape)}, got ${fmt(t.shape)}`);
    if (t.dtype !== q.dtype) fail('type', `${name}: dtype '${t.dtype}' does not match q's '${q.dtype}'`);
    if (t.device !== q.device) fail('type', `${name}: device '${t.device}' does not match q's '${q.device}'`);
  }
  const [b, s, h] = q.shape as [number, number, number];
  if (tl.shape.length !== 3 || tl.shape[0] !== b || tl.shape[1] !== h || tl.shape[2] !== s)
    fail('range', `lse: expected shape [batch, heads, seqQ] = ${fmt([b, h, s])}, got ${fmt(tl.shape)}`);
  if (tl.dtype !== 'float32') fail('type', `lse: expected dtype 'float32', got '${tl.dtype}'`);
  if (tl.device !== q.device) fail('type', `lse: device '${tl.device}' does not match q's '${q.device}'`);
  return { dout: td, out: to, lse: tl };
}

/** Exact attention softmax(q k^T * scale) v, computed blockwise; k/v may have fewer heads than q. */
export function attention(q: Tensor, k: Tensor, v: Tensor, opts?: AttentionOptions): AttentionResult {
  const a = checkAttentionInputs(q, k, v, opts);
  const [out, lse] = native.attentionForward(a.q.handle('q'), a.k.handle('k'), a.v.handle('v'), a.causal, a.scale, a.documentIds);
  const [b, s, h] = a.q.shape as [number, number, number];
  return { out: Tensor.fromHandle(out, a.q.shape, a.q.dtype, a.q.device), lse: Tensor.fromHandle(lse, [b, h, s], 'float32', a.q.device) };
}

/** Gradients of attention() given dout, recomputing the probabilities from q, k and lse. */
export function attentionBackward(
  dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, opts?: AttentionOptions,
): AttentionGradients {
  const a = checkAttentionInputs(q, k, v, opts);
  const f = checkBackwardInputs(dout, out, lse, a.q);
  const [dq, dk, dv] = native.attentionBackward(
    f.dout.handle('dout'), a.q.handle('q'), a.k.handle('k'), a.v.handle('v'), f.out.handle('out'), f.lse.handle('lse'),
    a.causal, a.scale, a.deterministic, a.documentIds,
  );
  return {
    dq: Tensor.fromHandle(dq, a.q.shape, a.q.dtype, a.q.device),
    dk: Tensor.fromHandle(dk, a.k.shape, a.k.dtype, a.k.device),
    dv: Tensor.fromHandle(dv, a.v.shape, a.v.dtype, a.v.device),
  };
}
