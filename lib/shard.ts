// Splitting a sequence across ranks and putting it back together.
//   contiguous: rank r holds tokens [r*S/N, (r+1)*S/N)
//   zigzag:     the sequence is cut into 2N chunks; rank r holds chunk r then chunk 2N-1-r,
//               which gives every rank the same amount of causal work at every ring step.
import { checkInteger, checkOneOf, checkOptions, describe, fail } from './errors.js';
import { checkTensor, tensor, type Tensor } from './tensor.js';

export type Layout = 'contiguous' | 'zigzag';
export const LAYOUTS: readonly Layout[] = ['contiguous', 'zigzag'];

export interface ShardOptions {
  rank: number;
  worldSize: number;
  /** Default 'contiguous'. */
  layout?: Layout;
  /** The sequence dimension. Default 1, as in [batch, seq, heads, headDim]; use 2 for lse [batch, heads, seq]. */
  dim?: number;
}

export interface GatherOptions {
  layout?: Layout;
  dim?: number;
}

/** The chunks of the full sequence (in units of S / chunks) that `rank` holds, in order. */
function chunksOf(rank: number, worldSize: number, layout: Layout): { count: number; held: number[] } {
  return layout === 'zigzag' ? { count: 2 * worldSize, held: [rank, 2 * worldSize - 1 - rank] } : { count: worldSize, held: [rank] };
}

// Copies `len` positions of dim `dim` from src (starting at `from`) into dst (starting at `to`).
function copySeq(src: Float32Array, srcShape: readonly number[], dst: Float32Array, dstShape: readonly number[], dim: number, from: number, to: number, len: number): void {
  const outer = srcShape.slice(0, dim).reduce((a, b) => a * b, 1);
  const inner = srcShape.slice(dim + 1).reduce((a, b) => a * b, 1);
  const srcSeq = srcShape[dim]!, dstSeq = dstShape[dim]!;
  for (let o = 0; o < outer; ++o)
    dst.set(src.subarray((o * srcSeq + from) * inner, (o * srcSeq + from + len) * inner), (o * dstSeq + to) * inner);
}

function checkDim(dim: unknown, name: string, rank: number, tensorName: string): number {
  if (dim === undefined && rank < 2)
    fail('range', `${tensorName}: the sequence is dim 1 unless ${name} says otherwise ([batch, seq, ...]), but this tensor has ${rank} dim${rank === 1 ? '' : 's'}`);
  return dim === undefined ? 1 : checkInteger(dim, name, 0, rank - 1);
}

/** This rank's shard of `x` along the sequence dimension, as a new tensor. */
export function shardSequence(x: Tensor, opts: ShardOptions): Tensor {
  const t = checkTensor(x, 'x');
  if (opts === undefined) fail('type', 'opts: expected { rank, worldSize, layout }');
  const o = checkOptions(opts, 'opts', ['rank', 'worldSize', 'layout', 'dim']);
  const worldSize = checkInteger(o.worldSize, 'opts.worldSize', 1);
  const rank = checkInteger(o.rank, 'opts.rank', 0, worldSize - 1);
  const layout = checkOneOf(o.layout, 'opts.layout', LAYOUTS) ?? 'contiguous';
  const dim = checkDim(o.dim, 'opts.dim', t.shape.length, 'x');
  const seq = t.shape[dim]!;
  const { count, held } = chunksOf(rank, worldSize, layout);
  if (seq % count !== 0)
    fail('range', `x: the ${layout} layout cuts the sequence into ${count} equal chunks, but its length ${seq} is not divisible by ${count}`);
  const chunk = seq / count;
  const shape = t.shape.map((d, i) => (i === dim ? chunk * held.length : d));
  const src = t.handle('x').toFloat32Array();
  const dst = new Float32Array(shape.reduce((a, b) => a * b, 1));
  held.forEach((c, i) => copySeq(src, t.shape, dst, shape, dim, c * chunk, i * chunk, chunk));
  return tensor(dst, shape, { dtype: t.dtype, device: t.device });
}

/** The full sequence from every rank's shard (shards[r] from rank r), as a new tensor. */
export function gatherSequence(shards: Tensor[], opts?: GatherOptions): Tensor {
  if (!Array.isArray(shards) || shards.length === 0) fail('type', `shards: expected a non-empty array of tensors, got ${describe(shards)}`);
  const ts = Array.from(shards, (s, i) => checkTensor(s, `shards[${i}]`)); // holes too
  const first = ts[0]!;
  const o = checkOptions(opts, 'opts', ['layout', 'dim']);
  const layout = checkOneOf(o.layout, 'opts.layout', LAYOUTS) ?? 'contiguous';
  const dim = checkDim(o.dim, 'opts.dim', first.shape.length, 'shards[0]');
  ts.forEach((t, i) => {
    if (t.shape.length !== first.shape.length || t.shape.some((d, j) => d !== first.shape[j]))
      fail('range', `shards[${i}]: expected the shape of shards[0] [${first.shape.join(', ')}], got [${t.shape.join(', ')}]`);
    if (t.dtype !== first.dtype) fail('type', `shards[${i}]: dtype '${t.dtype}' does not match shards[0]'s '${first.dtype}'`);
  });
  const worldSize = ts.length;
  const local = first.shape[dim]!;
  const perRank = layout === 'zigzag' ? 2 : 1;
  if (local % perRank !== 0) fail('range', `shards: zigzag shards have an even length along dim ${dim}, got ${local}`);
  const chunk = local / perRank;
  const shape = first.shape.map((d, i) => (i === dim ? local * worldSize : d));
  const dst = new Float32Array(shape.reduce((a, b) => a * b, 1));
  for (let r = 0; r < worldSize; ++r) {
    const src = ts[r]!.handle(`shards[${r}]`).toFloat32Array();
    chunksOf(r, worldSize, layout).held.forEach((c, i) => copySeq(src, first.shape, dst, shape, dim, i * chunk, c * chunk, chunk));
  }
  return tensor(dst, shape, { dtype: first.dtype, device: first.device });
}
