// shardSequence / gatherSequence: which tokens each rank holds, and exact round trips.
import { describe, expect, it } from 'vitest';

import { gatherSequence, shardSequence, tensor } from '../dist/index.js';

// [1, S, 1, 1] with token t holding the value t
const tokens = (S: number) => tensor(Float32Array.from({ length: S }, (_, i) => i), [1, S, 1, 1]);

describe('sharding', () => {
  it('contiguous: rank r holds tokens [r*S/N, (r+1)*S/N)', async () => {
    const x = tokens(12);
    const shards = [0, 1, 2].map((rank) => shardSequence(x, { rank, worldSize: 3 }));
    expect(Array.from(await shards[1]!.toFloat32Array())).toEqual([4, 5, 6, 7]);
    expect(shards[2]!.shape).toEqual([1, 4, 1, 1]);
  });

  it('zigzag: rank r holds chunk r then chunk 2N-1-r of 2N', async () => {
    const x = tokens(16); // N = 2 -> 4 chunks of 4
    const r0 = shardSequence(x, { rank: 0, worldSize: 2, layout: 'zigzag' });
    const r1 = shardSequence(x, { rank: 1, worldSize: 2, layout: 'zigzag' });
    expect(Array.from(await r0.toFloat32Array())).toEqual([0, 1, 2, 3, 12, 13, 14, 15]);
    expect(Array.from(await r1.toFloat32Array())).toEqual([4, 5, 6, 7, 8, 9, 10, 11]);
  });

  for (const layout of ['contiguous', 'zigzag'] as const)
    it(`${layout}: gather inverts shard, across batch and heads, keeping dtype`, async () => {
      const data = Float32Array.from({ length: 2 * 24 * 3 * 2 }, (_, i) => i % 251);
      const x = tensor(data, [2, 24, 3, 2], { dtype: 'bfloat16' });
      const shards = [0, 1, 2, 3].map((rank) => shardSequence(x, { rank, worldSize: 4, layout }));
      const back = gatherSequence(shards, { layout });
      expect(back.dtype).toBe('bfloat16');
      expect(back.shape).toEqual([2, 24, 3, 2]);
      expect(Array.from(await back.toFloat32Array())).toEqual(Array.from(await x.toFloat32Array()));
    });

  it('dim 2 shards lse-shaped [batch, heads, seq] tensors', async () => {
    const x = tensor(Float32Array.from({ length: 2 * 8 }, (_, i) => i), [1, 2, 8]);
    const s = shardSequence(x, { rank: 1, worldSize: 2, layout: 'zigzag', dim: 2 });
    expect(Array.from(await s.toFloat32Array())).toEqual([2, 3, 4, 5, 10, 11, 12, 13]);
  });

  it('refuses lengths the layout cannot split, naming the argument', () => {
    expect(() => shardSequence(tokens(10), { rank: 0, worldSize: 3 })).toThrow(
      new RangeError('x: the contiguous layout cuts the sequence into 3 equal chunks, but its length 10 is not divisible by 3'));
    expect(() => shardSequence(tokens(12), { rank: 0, worldSize: 4, layout: 'zigzag' })).toThrow(
      /^x: the zigzag layout cuts the sequence into 8 equal chunks, but its length 12 is not divisible by 8/);
    expect(() => shardSequence(tokens(12), { rank: 3, worldSize: 3 })).toThrow(/^opts\.rank: expected an integer in \[0, 2\], got 3/);
    expect(() => shardSequence(tokens(12), undefined as any)).toThrow(TypeError);
    expect(() => shardSequence(tokens(12), { rank: 0, worldSize: 2, dim: 4 })).toThrow(/^opts\.dim/);
    expect(() => gatherSequence([])).toThrow(/^shards: expected a non-empty array/);
    expect(() => gatherSequence([tokens(4), tokens(6)])).toThrow(/^shards\[1\]: expected the shape of shards\[0\]/);
    expect(() => gatherSequence([tokens(3), tokens(3)], { layout: 'zigzag' })).toThrow(/^shards: zigzag shards have an even length/);
  });
});
