// Shared by the ESM and CommonJS entry points: runs 4 ranks, compares with attention().
export async function check(ra) {
  const shape = [1, 32, 2, 8];
  const n = shape.reduce((a, b) => a * b, 1);
  const args = { shape, q: Float32Array.from({ length: n }, (_, i) => Math.sin(i)),
    k: Float32Array.from({ length: n }, (_, i) => Math.cos(i)), v: Float32Array.from({ length: n }, (_, i) => Math.sin(3 * i)) };
  const shards = await ra.launch({ worldSize: 4 }, new URL('./rank.mjs', import.meta.url), args);
  const out = ra.gatherSequence(shards.map((s) => ra.tensor(s, [1, 8, 2, 8])), { layout: 'zigzag' });
  const ref = ra.attention(...['q', 'k', 'v'].map((x) => ra.tensor(args[x], shape)), { causal: true }).out;
  const [a, b] = [await out.toFloat32Array(), await ref.toFloat32Array()];
  const maxDiff = Math.max(...a.map((x, i) => Math.abs(x - b[i])));
  const { build, backend } = ra.info();
  return { build, backend, maxDiff };
}
