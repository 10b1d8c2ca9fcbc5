// ringAttention(): collective attention over a launch() group. Each rank passes its shard
// of the sequence (see shardSequence) and gets its shard of the result; K/V shards travel
// around the ring in native code and partial results merge through the log-sum-exp.
import { ATTENTION_OPTION_KEYS, checkAttentionInputs, checkBackwardInputs, type AttentionGradients, type AttentionOptions, type AttentionResult } from './attention.js';
import { checkInteger, checkOneOf, describe, fail } from './errors.js';
import { ProcessGroup } from './group.js';
import { native } from './native.js';
import { LAYOUTS, type Layout } from './shard.js';
import { freeOnThrow, Tensor } from './tensor.js';

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
  /**
   * @internal Benchmarks only: time each ring step on this rank and pass the times here once
   * the call is done (on CUDA the call then waits for the device).
   */
  onStepTimes?: (steps: RingStepTime[]) => void;
  /**
   * @internal Tests only: this rank throws at that ring step, after posting the step's transfer,
   * as a failure in the middle of a call would.
   */
  failAtStep?: number;
}

/** How long one ring step took on one rank, in milliseconds. */
export interface RingStepTime {
  /** The step's attention kernel; 0 when the step computes nothing. */
  computeMs: number;
  /** The block transfers posted at this step (on the CPU and over NCCL waiting for the peer included; between in-process GPU ranks, the copies alone). */
  transferMs: number;
  /** The whole step, from its compute's start to the next step's: ~computeMs when the transfers hide. */
  wholeMs: number;
}

function stepTimes(a: ReturnType<typeof checkRing>, times: Float64Array | undefined): void {
  if (!a.onStepTimes || !times) return;
  const steps: RingStepTime[] = [];
  for (let i = 0; i < times.length; i += 3) steps.push({ computeMs: times[i]!, transferMs: times[i + 1]!, wholeMs: times[i + 2]! });
  a.onStepTimes(steps);
}

const PARTS = { compute: 1, transfers: 2 } as const;
const RING_OPTION_KEYS = [...ATTENTION_OPTION_KEYS, 'group', 'layout'];
const RING_INTERNAL_KEYS = ['parts', 'onStepTimes', 'failAtStep'];  // benchmarks' and tests' (@internal above)

function checkRing(q: unknown, k: unknown, v: unknown, opts: unknown) {
  if (opts === undefined) fail('type', 'opts: expected { group } from launch()');
  const a = checkAttentionInputs(q, k, v, opts, RING_OPTION_KEYS, 'opts', RING_INTERNAL_KEYS);
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
  const onStepTimes = a.options.onStepTimes;
  if (onStepTimes !== undefined && typeof onStepTimes !== 'function') fail('type', `opts.onStepTimes: expected a function, got ${describe(onStepTimes)}`);
  const failAtStep = a.options.failAtStep === undefined ? undefined : checkInteger(a.options.failAtStep, 'opts.failAtStep', 0, 2 ** 31 - 1);
  return { ...a, groupId, group, zigzag: layout === 'zigzag', parts, onStepTimes, failAtStep };
}

/** Attention over the whole sequence, each rank holding one shard of q, k and v. Every rank of the group must call it. */
export function ringAttention(q: Tensor, k: Tensor, v: Tensor, opts: RingAttentionOptions): AttentionResult {
  const a = checkRing(q, k, v, opts);
  const timed = a.onStepTimes !== undefined;
  const [out, lse, times] = a.group.backend === 'nccl'
    ? native.ncclRingForward(a.groupId, a.q.handle('q'), a.k.handle('k'), a.v.handle('v'), a.causal, a.scale, a.zigzag, a.parts, timed, false,
      a.documentIds, a.failAtStep)
    : native.ringForward(a.groupId, a.group.rank, a.q.handle('q'), a.k.handle('k'), a.v.handle('v'), a.causal, a.scale, a.zigzag, a.parts, timed,
      false, a.documentIds, a.failAtStep);
  const [b, s, h] = a.q.shape as [number, number, number];
  // A callback that throws leaves no result behind.
  return freeOnThrow(() => {
    const result = { out: Tensor.fromHandle(out, a.q.shape, a.q.dtype, a.q.device), lse: Tensor.fromHandle(lse, [b, h, s], 'float32', a.q.device) };
    stepTimes(a, times);
    return result;
  });
}

/**
 * Gradients of ringAttention() for this rank's shard; dK/dV travel the ring and come home
 * summed. With `deterministic` (CUDA), every step computes dQ in its own pass: the same bits
 * on every run, as the steps add up in a fixed order.
 */
export function ringAttentionBackward(
  dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, opts: RingAttentionOptions,
): AttentionGradients {
  const a = checkRing(q, k, v, opts);
  const f = checkBackwardInputs(dout, out, lse, a.q);
  const h = [f.dout.handle('dout'), a.q.handle('q'), a.k.handle('k'), a.v.handle('v'), f.out.handle('out'), f.lse.handle('lse')] as const;
  const timed = a.onStepTimes !== undefined;
  const [dq, dk, dv, times] = a.group.backend === 'nccl'
    ? native.ncclRingBackward(a.groupId, ...h, a.causal, a.scale, a.zigzag, a.parts, timed, a.deterministic, a.documentIds, a.failAtStep)
    : native.ringBackward(a.groupId, a.group.rank, ...h, a.causal, a.scale, a.zigzag, a.parts, timed, a.deterministic, a.documentIds,
      a.failAtStep);
  return freeOnThrow(() => {
    const result = {
      dq: Tensor.fromHandle(dq, a.q.shape, a.q.dtype, a.q.device),
      dk: Tensor.fromHandle(dk, a.k.shape, a.k.dtype, a.k.device),
      dv: Tensor.fromHandle(dv, a.v.shape, a.v.dtype, a.v.device),
    };
    stepTimes(a, times);
    return result;
  });
}
