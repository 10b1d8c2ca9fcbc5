// A rank of the installed-package check: ring attention over 4 ranks, zigzag, causal.
import { ringAttention, shardSequence, tensor } from 'ring-attention';

export default async ({ rank, worldSize, group, args }) => {
  const opts = { rank, worldSize, layout: 'zigzag' };
  const [q, k, v] = ['q', 'k', 'v'].map((n) => shardSequence(tensor(args[n], args.shape), opts));
  const { out } = ringAttention(q, k, v, { group, causal: true, layout: 'zigzag' });
  return out.toFloat32Array();
};
