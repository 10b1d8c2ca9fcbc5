// Compiled with tsc --noEmit against the published .d.ts: the public API must type-check,
// and misuse must not (each @ts-expect-error fails the build if its line type-checks).
import { attention, launch, ringAttention, tensor, type RankContext, type Tensor } from 'ring-attention';

const q: Tensor = tensor(new Float32Array(16), [1, 2, 2, 4], { dtype: 'bfloat16' });
const { out, lse } = attention(q, q, q, { causal: true, scale: 0.5 });
const shape: readonly number[] = out.shape;
void shape;
void lse.toFloat32Array().then((a: Float32Array) => a.length);
out[Symbol.dispose]();

export default function rank({ group }: RankContext<{ n: number }>): Promise<Float32Array> {
  return ringAttention(q, q, q, { group, layout: 'zigzag' }).out.toFloat32Array();
}
void launch({ worldSize: 2 }, new URL('./rank.js', import.meta.url), { n: 1 });
// launch<R> types the ranks' return values; without it they are unknown.
void launch<Float32Array>({ worldSize: 2 }, new URL('./rank.js', import.meta.url)).then((shards) => shards.map((s) => s.length));
void launch({ worldSize: 2 }, new URL('./rank.js', import.meta.url)).then((shards) =>
  // @ts-expect-error: unknown values, not Float32Arrays
  shards.map((s) => s.length));

// @ts-expect-error: not a dtype
tensor(new Float32Array(1), [1], { dtype: 'int8' });
// @ts-expect-error: ringAttention needs its group
ringAttention(q, q, q, {});
// @ts-expect-error: the data is a Float32Array
tensor([1, 2], [2]);
