// ringAttention(): collective attention over a launch() group. Each rank passes its shard
// of the sequence (see shardSequence) and gets its shard of the result; K/V shards travel
// around the ring in native code and partial results merge through the log-sum-exp.
import { checkAttentionInputs, checkBackwardInputs, type AttentionGradients, type AttentionOptions, type AttentionResult } from './attention.js';
import { checkOneOf, fail } from './errors.js';
import { ProcessGroup } from './group.js';
import { native } from './native.js';
import { LAYOUTS, type Layout } from './shard.js';
import { Tensor } from './tensor.js';

export interface RingAttentionOptions extends AttentionOptions {
  /** The group that launch() passed to this rank. */
  group: ProcessGroup;
  /** How the sequence was sharded; must match shardSequence(). Default 'contiguous'. */
  layout?: Layout;
  /**
   * @internal Benchmarks only: run the step's compute alone or its transfers alone, to time
   * them apart (the results are then meaningless).
   */
  parts?: 'compute' | 'transfers';
}

const PARTS = { compute: 1, transfers: 2 } as const;

function checkRing(q: unknown, k: unknown, v: unknown, opts: unknown) {
  if (opts === undefined) fail('type', 'opts: expected { group } from launch()');
  const a = checkAttentionInputs(q, k, v, opts);
  const groupId = ProcessGroup.idOf(a.options.group, 'opts.group');
  const group = a.options.group as ProcessGroup;
  if (group.backend === 'nccl' && a.q.device !== 'cuda')
    fail('type', `q: ring attention over an NCCL group works on 'cuda' tensors, got '${a.q.device}'`);
  const layout = checkOneOf(a.options.layout, 'opts.layout', LAYOUTS) ?? 'contiguous';
  const seq = a.q.shape[1]!;
  if (a.k.shape[1] !== seq) fail('range', `k: this rank's shard has ${a.k.shape[1]} tokens, q's has ${seq}; ring attention needs equal shards`);
  if (layout === 'zigzag' && seq % 2 !== 0)
    fail('range', `q: the zigzag layout cuts the sequence into 2*worldSize chunks, so each shard has an even length; this one has ${seq}`);
  const parts = a.options.parts === undefined ? 0 : PARTS[checkOneOf(a.options.parts, 'opts.parts', ['compute', 'transfers'] as const)!];
  return { ...a, groupId, group, zigzag: layout === 'zigzag', parts };
}

/** Attention over the whole sequence, each rank holding one shard of q, k and v. Every rank of the group must call it. */
export function ringAttention(q: Tensor, k: Tensor, v: Tensor, opts: RingAttentionOptions): AttentionResult {
  const a = checkRing(q, k, v, opts);
  const [out, lse] = a.group.backend === 'nccl'
    ? native.ncclRingForward(a.groupId, a.q.handle('q'), a.k.handle('k'), a.v.handle('v'), a.causal, a.scale, a.zigzag, a.parts)
    : native.ringForward(a.groupId, a.group.rank, a.q.handle('q'), a.k.handle('k'), a.v.handle('v'), a.causal, a.scale, a.zigzag, a.parts);
  const [b, s, h] = a.q.shape as [number, number, number];
  return { out: Tensor.fromHandle(out, a.q.shape, a.q.dtype, a.q.device), lse: Tensor.fromHandle(lse, [b, h, s], 'float32', a.q.device) };
}

/** Gradients of ringAttention() for this rank's shard; dK/dV travel the ring and come home summed. */
export function ringAttentionBackward(
  dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, opts: RingAttentionOptions,
): AttentionGradients {
  const a = checkRing(q, k, v, opts);
  const f = checkBackwardInputs(dout, out, lse, a.q);
  const h = [f.dout.handle('dout'), a.q.handle('q'), a.k.handle('k'), a.v.handle('v'), f.out.handle('out'), f.lse.handle('lse')] as const;
  const [dq, dk, dv] = a.group.backend === 'nccl'
    ? native.ncclRingBackward(a.groupId, ...h, a.causal, a.scale, a.zigzag, a.parts)
    : native.ringBackward(a.groupId, a.group.rank, ...h, a.causal, a.scale, a.zigzag, a.parts);
  return {
    dq: Tensor.fromHandle(dq, a.q.shape, a.q.dtype, a.q.device),
    dk: Tensor.fromHandle(dk, a.k.shape, a.k.dtype, a.k.device),
    dv: Tensor.fromHandle(dv, a.v.shape, a.v.dtype, a.v.device),
  };
}
