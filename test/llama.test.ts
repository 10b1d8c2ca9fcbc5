// The LLaMA model layer (lib/llama*.ts, lib/train.ts) against an independent float64 model
// written below from the definitions (sharing no code with lib/): logits, loss, and every
// parameter's gradient against central finite differences of the float64 loss. Then the
// invariances the ring must keep: world size 1 vs 4, contiguous vs zigzag, checkpointing on
// vs off; initialisation and a short training run. Saving, loading and the trainer's
// checkpoints: test/llama-checkpoint.test.ts.
import { spawnSync } from 'node:child_process';

import { beforeAll, describe, expect, it } from 'vitest';

import {
  createLlama, createTrainer, initLlama, launch, llamaTensorNames, shardTokens, tensor, type LlamaModel, type ResolvedLlamaConfig, type Tensor,
} from '../dist/index.js';
import { runLlama, shardPositions, type Checkpointing } from '../dist/llama.js';
import { native } from '../dist/native.js';
import { llamaFiles, paramsFromMap } from '../dist/llama-model.js';
import { bits, dynamicTiny, llama3Tiny, randomWeights, rankModule, S, sequence, tiedTiny, tiny, yarnTiny } from './llama-fixtures.js';
import { randomArray, worstError } from './reference.js';

// ---------------- the independent float64 reference ----------------

type W = Map<string, Float64Array>;

function rmsnormRef(x: Float64Array, w: Float64Array, M: number, C: number, eps: number): Float64Array {
  const y = new Float64Array(M * C);
  for (let m = 0; m < M; ++m) {
    let ss = 0;
    for (let c = 0; c < C; ++c) ss += x[m * C + c]! ** 2;
    const r = 1 / Math.sqrt(ss / C + eps);
    for (let c = 0; c < C; ++c) y[m * C + c] = x[m * C + c]! * r * w[c]!;
  }
  return y;
}

/** y [M, N] = x [M, K] · wᵀ, w [N, K]. */
function matmulT(x: Float64Array, w: Float64Array, M: number, K: number, N: number): Float64Array {
  const y = new Float64Array(M * N);
  for (let m = 0; m < M; ++m)
    for (let n = 0; n < N; ++n) {
      let s = 0;
      for (let k = 0; k < K; ++k) s += x[m * K + k]! * w[n * K + k]!;
      y[m * N + n] = s;
    }
  return y;
}

/**
 * RoPE's inverse frequencies and cos/sin factor as transformers' _compute_*_parameters write
 * them: llama3 masks over the wavelengths, then a blend; yarn a ramp between interpolated
 * and extrapolated frequencies over dimension ranges; dynamic a larger base for M tokens.
 */
function ropeRefParams(c: ResolvedLlamaConfig, M: number): { inv: number[]; factor: number } {
  const D = c.head_dim, baseOf = (b: number) => Array.from({ length: D / 2 }, (_, i) => 1 / b ** ((2 * i) / D));
  const base = baseOf(c.rope_theta);
  const s = c.rope_scaling as Record<string, number> | null | undefined;
  if (!s) return { inv: base, factor: 1 };
  if (s.rope_type === 'dynamic') {
    const maxPos = c.max_position_embeddings!, len = M > maxPos ? M : maxPos;
    return { inv: baseOf(c.rope_theta * ((s.factor! * len) / maxPos - (s.factor! - 1)) ** (D / (D - 2))), factor: 1 };
  }
  if (s.rope_type === 'yarn') {
    const orig = s.original_max_position_embeddings!, factor = s.factor!;
    const corr = (rot: number) => (D * Math.log(orig / (rot * 2 * Math.PI))) / (2 * Math.log(c.rope_theta));
    const low = Math.max(Math.floor(corr(32)), 0), high = Math.min(Math.ceil(corr(1)), D - 1);
    const extrapolation = base.map((_, i) => 1 - Math.min(Math.max((i - low) / (high - low), 0), 1));
    const inv = base.map((f, i) => (f / factor) * (1 - extrapolation[i]!) + f * extrapolation[i]!);
    return { inv, factor: 0.1 * Math.log(factor) + 1 };
  }
  return { inv: llama3InvFreqRef(base, s), factor: 1 };
}

function llama3InvFreqRef(base: number[], s: Record<string, number>): number[] {
  const [factor, lowF, highF, old] = [s.factor!, s.low_freq_factor!, s.high_freq_factor!, s.original_max_position_embeddings!];
  const wavelen = base.map((f) => (2 * Math.PI) / f);
  const llama = base.map((f, i) => (wavelen[i]! > old / lowF ? f / factor : f));
  const smoothFactor = wavelen.map((w) => (old / w - lowF) / (highF - lowF));
  const smoothed = llama.map((f, i) => (1 - smoothFactor[i]!) * f / factor + smoothFactor[i]! * f);
  const medium = wavelen.map((w) => !(w < old / highF) && !(w > old / lowF));
  return llama.map((f, i) => (medium[i] ? smoothed[i]! : f));
}

/** HF rotate_half RoPE on [M, heads, D] at positions 0..M-1, cos and sin times `factor`, in place. */
function ropeRef(x: Float64Array, M: number, heads: number, D: number, { inv: invFreq, factor }: { inv: number[]; factor: number }): void {
  const half = D / 2;
  for (let m = 0; m < M; ++m)
    for (let h = 0; h < heads; ++h)
      for (let i = 0; i < half; ++i) {
        const angle = m * invFreq[i]!;
        const o = (m * heads + h) * D, a = x[o + i]!, b = x[o + i + half]!;
        const cos = Math.cos(angle) * factor, sin = Math.sin(angle) * factor;
        x[o + i] = a * cos - b * sin;
        x[o + i + half] = b * cos + a * sin;
      }
}

/** Logits [M, V] and mean cross-entropy over targets != -100 of the whole model, in float64. */
function referenceModel(c: ResolvedLlamaConfig, w: W, tokens: ArrayLike<number>, targets: ArrayLike<number>) {
  const M = tokens.length, C = c.hidden_size, F = c.intermediate_size, H = c.num_attention_heads, KVH = c.num_key_value_heads;
  const D = c.head_dim, V = c.vocab_size, eps = c.rms_norm_eps;
  const get = (n: string) => w.get(n)!;
  const embed = get('model.embed_tokens.weight');
  let x = new Float64Array(M * C);
  for (let m = 0; m < M; ++m) for (let i = 0; i < C; ++i) x[m * C + i] = embed[tokens[m]! * C + i]!;
  for (let l = 0; l < c.num_hidden_layers; ++l) {
    const p = `model.layers.${l}.`;
    const h = rmsnormRef(x, get(`${p}input_layernorm.weight`), M, C, eps);
    const q = matmulT(h, get(`${p}self_attn.q_proj.weight`), M, C, H * D);
    const k = matmulT(h, get(`${p}self_attn.k_proj.weight`), M, C, KVH * D);
    const v = matmulT(h, get(`${p}self_attn.v_proj.weight`), M, C, KVH * D);
    ropeRef(q, M, H, D, ropeRefParams(c, M));
    ropeRef(k, M, KVH, D, ropeRefParams(c, M));
    const att = new Float64Array(M * H * D);
    for (let hd = 0; hd < H; ++hd) {
      const kv = Math.floor(hd / (H / KVH));
      for (let i = 0; i < M; ++i) {
        const s = new Float64Array(i + 1);
        let mx = -Infinity;
        for (let j = 0; j <= i; ++j) {
          let dot = 0;
          for (let d = 0; d < D; ++d) dot += q[(i * H + hd) * D + d]! * k[(j * KVH + kv) * D + d]!;
          s[j] = dot / Math.sqrt(D);
          mx = Math.max(mx, s[j]!);
        }
        let z = 0;
        for (let j = 0; j <= i; ++j) z += (s[j] = Math.exp(s[j]! - mx));
        for (let j = 0; j <= i; ++j)
          for (let d = 0; d < D; ++d) att[(i * H + hd) * D + d] += (s[j]! / z) * v[(j * KVH + kv) * D + d]!;
      }
    }
    const o = matmulT(att, get(`${p}self_attn.o_proj.weight`), M, H * D, C);
    for (let i = 0; i < M * C; ++i) x[i] += o[i]!;
    const h2 = rmsnormRef(x, get(`${p}post_attention_layernorm.weight`), M, C, eps);
    const g = matmulT(h2, get(`${p}mlp.gate_proj.weight`), M, C, F);
    const u = matmulT(h2, get(`${p}mlp.up_proj.weight`), M, C, F);
    for (let i = 0; i < M * F; ++i) g[i] = (g[i]! / (1 + Math.exp(-g[i]!))) * u[i]!; // silu(gate) * up
    const f = matmulT(g, get(`${p}mlp.down_proj.weight`), M, F, C);
    for (let i = 0; i < M * C; ++i) x[i] += f[i]!;
  }
  x = rmsnormRef(x, get('model.norm.weight'), M, C, eps);
  const logits = matmulT(x, c.tie_word_embeddings ? embed : get('lm_head.weight'), M, C, V);
  let loss = 0, count = 0;
  for (let m = 0; m < M; ++m) {
    const t = targets[m]!;
    if (t === -100) continue;
    let mx = -Infinity;
    for (let j = 0; j < V; ++j) mx = Math.max(mx, logits[m * V + j]!);
    let z = 0;
    for (let j = 0; j < V; ++j) z += Math.exp(logits[m * V + j]! - mx);
    loss += mx + Math.log(z) - logits[m * V + t]!;
    ++count;
  }
  return { logits, loss: loss / count };
}

// ---------------- inputs ----------------

/** Random weights large enough that every path matters: matrices ~U(-0.25, 0.25), norms ~1 ± 0.2. */
const f64Map = (w: Map<string, Float32Array>): W => new Map([...w].map(([n, a]) => [n, Float64Array.from(a)]));
const maxAbs = (a: ArrayLike<number>) => Array.prototype.reduce.call(a, (m: number, v) => Math.max(m, Math.abs(v as number)), 0) as number;

/** Loss, logits and every gradient on one thread (no group). */
async function single(c: ResolvedLlamaConfig, weights: Map<string, Float32Array>, seq: ReturnType<typeof sequence>, checkpoint: Checkpointing = true) {
  using model = createLlama(c, weights);
  using trainer = createTrainer(model, { lr: 1e-3, checkpoint, ffnBlockRows: 7, ceChunkRows: 5 });
  const fwd = trainer.forward(seq.tokens, seq.targets, { logits: true });
  const loss = trainer.backward(seq.tokens, seq.targets);
  const grads = new Map<string, Float32Array>();
  for (const [n, g] of trainer.gradients) grads.set(n, await g.toFloat32Array());
  return { logits: fwd.logits!, forwardLoss: fwd.loss, count: fwd.count, loss, grads };
}

interface RankOut { positions: number[]; logits: Float32Array; forwardLoss: number; loss: number; grads: Record<string, Float32Array> }

async function ranks(worldSize: number, layout: 'contiguous' | 'zigzag', c: ResolvedLlamaConfig, weights: Map<string, Float32Array>, seq: ReturnType<typeof sequence>, checkpoint: Checkpointing = true) {
  const args = { config: c, weights: Object.fromEntries(weights), tokens: seq.tokens, targets: seq.targets, layout, checkpoint };
  const out = (await launch({ worldSize }, rankModule, args)) as RankOut[];
  // Put every rank's logits rows back at their positions in the whole sequence.
  const V = c.vocab_size, logits = new Float32Array(S * V);
  for (const r of out) r.positions.forEach((p, i) => logits.set(r.logits.subarray(i * V, (i + 1) * V), p * V));
  return { out, logits };
}

// ---------------- tests ----------------

// |Σ g·r - finite difference| over Σ |g·r| (see the directional test): at most 4.8e-7 measured
// here over the six configs; an embedding gradient missing one token's row gave 1e-3 to 8e-3 (tried with
// the directions of an earlier seed).
const DIRECTION_TOLERANCE = 1e-5;

describe('against the independent float64 model', () => {
  // rms_norm_eps 1e-2: the config's own, in every norm (the others share 1e-6, which a constant would match)
  for (const c of [tiny, tiedTiny, llama3Tiny, yarnTiny, dynamicTiny, { ...tiny, rms_norm_eps: 1e-2 }]) {
    const rope = (c.rope_scaling as { rope_type?: string } | undefined)?.rope_type;
    const what = rope ? `${rope} rope scaling` : c.tie_word_embeddings ? 'tied embeddings' : c.rms_norm_eps !== 1e-6 ? `rms_norm_eps ${c.rms_norm_eps}` : 'separate lm_head';
    const weights = randomWeights(c, 10), seq = sequence(77, c.vocab_size);
    const ref = referenceModel(c, f64Map(weights), seq.tokens, seq.targets);

    it(`${what}: logits and loss`, async () => {
      const ours = await single(c, weights, seq);
      // float32 sums of <= 176 terms through 2 layers: logits of size ~3 within 1e-4 abs + 1e-4 rel.
      expect(worstError(ours.logits, ref.logits, 1e-4, 1e-4)).toBeLessThan(1);
      expect(Math.abs(ours.forwardLoss - ref.loss)).toBeLessThan(1e-5 * ref.loss);
      expect(ours.loss).toBe(ours.forwardLoss); // the backward's forward is the same computation
      expect(ours.count).toBe(S - 2);
    });

    it(`${what}: every parameter's gradient against central differences of the float64 loss`, async () => {
      const ours = await single(c, weights, seq);
      const w64 = f64Map(weights);
      expect([...ours.grads.keys()]).toEqual([...llamaTensorNames(c).keys()]);
      const h = 1e-4; // float64 central differences: truncation ~h² · |f'''| ≈ 1e-9, far below float32 noise
      for (const [name, g] of ours.grads) {
        const scaleOfTensor = maxAbs(g);
        expect(scaleOfTensor, name).toBeGreaterThan(0);
        // 4 coordinates per tensor: the largest gradient and 3 random ones.
        let arg = 0;
        for (let i = 1; i < g.length; ++i) if (Math.abs(g[i]!) > Math.abs(g[arg]!)) arg = i;
        const r = randomArray(3, name.length * 31 + 7);
        const coords = [arg, ...[...r].map((v) => Math.floor(((v + 1) / 2) * g.length))];
        const p = w64.get(name)!;
        for (const i of coords) {
          const keep = p[i]!;
          p[i] = keep + h;
          const up = referenceModel(c, w64, seq.tokens, seq.targets).loss;
          p[i] = keep - h;
          const down = referenceModel(c, w64, seq.tokens, seq.targets).loss;
          p[i] = keep;
          const fd = (up - down) / (2 * h);
          // float32 gradient against float64: within 1e-3 of the tensor's largest gradient, + 1e-7.
          expect(Math.abs(g[i]! - fd), `${name}[${i}]: ours ${g[i]} vs finite difference ${fd}`).toBeLessThan(1e-3 * scaleOfTensor + 1e-7);
        }
      }
    });

    // A few coordinates miss most of a tensor (an embedding's rows are mostly unused, so
    // mostly 0): a gradient that lost one token's, one shard's or one head's share passes
    // them unless it hits one. A derivative along a random direction over the whole tensor
    // sees every value; for the embedding, also one over the rows the tokens use alone.
    it(`${what}: every parameter's gradient along random directions, against central differences of the float64 loss`, async () => {
      const ours = await single(c, weights, seq);
      const w64 = f64Map(weights), h = 1e-4, C = c.hidden_size;
      const used = new Set(seq.tokens);
      const seedOf = (name: string) => [...name].reduce((h, ch) => Math.imul(h ^ ch.charCodeAt(0), 16777619) >>> 0, 2166136261);
      for (const [name, g] of ours.grads) {
        const whole = Float64Array.from(randomArray(g.length, seedOf(name)));
        const directions = [whole];
        // Tied, the head's gradient fills the unused rows too; untied they are 0, and the second
        // direction would give the first's sum again.
        if (name === 'model.embed_tokens.weight' && c.tie_word_embeddings) directions.push(whole.map((v, i) => (used.has(Math.floor(i / C)) ? v : 0)));
        for (const [k, r] of directions.entries()) {
          let dot = 0, size = 0;
          for (let i = 0; i < g.length; ++i) (dot += g[i]! * r[i]!), (size += Math.abs(g[i]! * r[i]!));
          const p = w64.get(name)!, keep = Float64Array.from(p);
          p.set(keep.map((v, i) => v + h * r[i]!));
          const up = referenceModel(c, w64, seq.tokens, seq.targets).loss;
          p.set(keep.map((v, i) => v - h * r[i]!));
          const down = referenceModel(c, w64, seq.tokens, seq.targets).loss;
          p.set(keep);
          const fd = (up - down) / (2 * h);
          expect(size, name).toBeGreaterThan(0);
          expect(Math.abs(dot - fd) / size, `${name} direction ${k}: ours ${dot} vs finite difference ${fd}`).toBeLessThan(DIRECTION_TOLERANCE);
        }
      }
    });
  }
});

describe("pad_token_id: the padding row's embedding gets no gradient from the lookup, as with nn.Embedding(padding_idx)", () => {
  const seq = sequence(77, tiny.vocab_size), pad = seq.tokens[5]!;
  const uses = seq.tokens.filter((x) => x === pad).length;
  for (const c of [tiny, tiedTiny]) {
    it(c.tie_word_embeddings ? "tied: the head's gradient alone reaches that row" : "separate head: that row's gradient is 0; every other value as without", async () => {
      expect(uses).toBeGreaterThan(0);
      const weights = randomWeights(c, 10);
      const plain = await single(c, weights, seq), padded = await single({ ...c, pad_token_id: pad }, weights, seq);
      const C = c.hidden_size, row = (g: Float32Array) => g.subarray(pad * C, (pad + 1) * C);
      const E = 'model.embed_tokens.weight';
      expect(padded.loss).toBe(plain.loss);
      for (const [n, g] of padded.grads) {
        const want = plain.grads.get(n)!;
        if (n !== E) expect(Buffer.compare(bits(g), bits(want)), n).toBe(0);
      }
      const got = padded.grads.get(E)!, want = plain.grads.get(E)!;
      for (let v = 0; v < c.vocab_size; ++v)
        if (v !== pad) expect(Buffer.compare(bits(got.subarray(v * C, (v + 1) * C)), bits(want.subarray(v * C, (v + 1) * C))), `row ${v}`).toBe(0);
      if (!c.tie_word_embeddings) {
        expect(row(got).every((x) => x === 0)).toBe(true);
        expect(row(want).some((x) => x !== 0)).toBe(true);
      } else {
        // the head's part of that row: the untied model's lm_head gradient for the same weights
        const untied = new Map(weights).set('lm_head.weight', weights.get(E)!);
        const head = (await single({ ...c, tie_word_embeddings: false }, untied, seq)).grads.get('lm_head.weight')!;
        expect(worstError(row(got), Float64Array.from(row(head)), 1e-7, 1e-6)).toBeLessThan(1);
        expect(worstError(row(want), Float64Array.from(row(head)), 1e-7, 1e-6)).toBeGreaterThan(1); // the lookup's part is gone
      }
    });
  }

  it('initLlama zeroes that row (as transformers initialises nn.Embedding); a step leaves it 0; config.json keeps it', async () => {
    using model = initLlama({ ...tiny, pad_token_id: -1 }, { seed: 3 });
    const V = tiny.vocab_size, C = tiny.hidden_size;
    expect(model.config.pad_token_id).toBe(V - 1);
    const row = (m: LlamaModel) => m.toArrays().get('model.embed_tokens.weight')!.subarray((V - 1) * C, V * C);
    expect(row(model).every((x) => x === 0)).toBe(true);
    expect(model.toArrays().get('model.embed_tokens.weight')!.subarray(0, C).every((x) => x !== 0)).toBe(true);
    using trainer = createTrainer(model, { lr: 1e-2, weightDecay: 0.1 });
    const tokens = Int32Array.from({ length: 16 }, (_, i) => (i % 2 ? V - 1 : i)), targets = Int32Array.from({ length: 16 }, (_, i) => (i * 7) % V);
    trainer.step(tokens, targets);
    expect(row(model).every((x) => x === 0)).toBe(true);
    expect(JSON.parse(llamaFiles(model).config).pad_token_id).toBe(V - 1);
    using plain = initLlama(tiny, { seed: 3 });
    expect(JSON.parse(llamaFiles(plain).config).pad_token_id).toBe(null);
  });

  it("config.json keeps the source's bos and eos ids (generate() stops on them) and writes RoPE's whole-number floats as 8.0", () => {
    const rope_scaling = { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 64 };
    using model = initLlama({ ...tiny, bos_token_id: 1, eos_token_id: [2, 3], rope_theta: 500000, rope_scaling }, { seed: 3 });
    const text = llamaFiles(model).config, json = JSON.parse(text);
    expect([json.bos_token_id, json.eos_token_id]).toEqual([1, [2, 3]]);
    // transformers checks isinstance(factor, float): 4.43+ warns of an int, 4.31-4.42 refused linear and dynamic ones
    expect(text).toMatch(/"factor": 8\.0,/);
    expect(text).toMatch(/"low_freq_factor": 1\.0,/);
    expect(text).toMatch(/"rope_theta": 500000\.0,/);
    expect(text).toMatch(/"original_max_position_embeddings": 64\b(?!\.)/); // an int stays one
    using plain = initLlama(tiny, { seed: 3 });
    expect(JSON.parse(llamaFiles(plain).config)).not.toHaveProperty('eos_token_id'); // transformers' defaults, as for the source
    using none = initLlama({ ...tiny, eos_token_id: null }, { seed: 3 });
    expect(JSON.parse(llamaFiles(none).config).eos_token_id).toBe(null); // None stays None
  });
});

describe('sharded over a ring: the same loss and the same gradients', () => {
  const weights = randomWeights(tiny, 20), seq = sequence(5, tiny.vocab_size);
  let base: Awaited<ReturnType<typeof single>>;
  beforeAll(async () => {
    base = await single(tiny, weights, seq);
  });

  // World size 1 vs 4: the ring merges partial attention in another order, and the gradient
  // allReduce sums 4 partial float32 sums: differences ~1e-6 relative. Tolerances: loss 1e-6
  // relative; logits 2e-5 abs + 1e-5 rel; every gradient element within 1e-4 of its tensor's
  // largest |gradient| (and 1e-5 relative elementwise for the rest).
  const expectSame = (r: Awaited<ReturnType<typeof ranks>>, exact = false) => {
    for (const o of r.out) {
      expect(Math.abs(o.loss - base.loss), 'loss').toBeLessThan(1e-6 * base.loss);
      expect(Math.abs(o.forwardLoss - base.loss), 'forward loss').toBeLessThan(1e-6 * base.loss);
    }
    expect(worstError(r.logits, base.logits, 2e-5, 1e-5), 'logits').toBeLessThan(1);
    for (const [name, g] of base.grads) {
      for (const o of r.out) {
        const got = o.grads[name]!;
        if (exact) expect(got, name).toEqual(r.out[0]!.grads[name]);
        expect(worstError(got, g, 1e-4 * maxAbs(g), 1e-5), `${name} on rank ${o.positions[0]}`).toBeLessThan(1);
      }
    }
  };

  it('4 ranks, contiguous (every rank ends with the same summed gradients)', async () => expectSame(await ranks(4, 'contiguous', tiny, weights, seq), true));
  it('4 ranks, zigzag', async () => expectSame(await ranks(4, 'zigzag', tiny, weights, seq), true));
  it('2 ranks, zigzag, tied embeddings (the head and embedding gradients add up)', async () => {
    const tw = randomWeights(tiedTiny, 30);
    const b = await single(tiedTiny, tw, seq);
    const r = await ranks(2, 'zigzag', tiedTiny, tw, seq);
    expect(Math.abs(r.out[0]!.loss - b.loss)).toBeLessThan(1e-6 * b.loss);
    for (const [name, g] of b.grads) expect(worstError(r.out[1]!.grads[name]!, g, 1e-4 * maxAbs(g), 1e-5), name).toBeLessThan(1);
  });

  it("dynamic NTK and yarn over 4 zigzag ranks: one thread's loss and gradients (dynamic's base comes from the whole sequence)", async () => {
    for (const c of [dynamicTiny, yarnTiny]) {
      const w = randomWeights(c, 40), b = await single(c, w, seq), r = await ranks(4, 'zigzag', c, w, seq);
      expect(Math.abs(r.out[1]!.loss - b.loss), c.rope_scaling!.rope_type as string).toBeLessThan(1e-6 * b.loss);
      for (const [name, g] of b.grads) expect(worstError(r.out[1]!.grads[name]!, g, 1e-4 * maxAbs(g), 1e-5), name).toBeLessThan(1);
    }
  });

  it('a rank whose targets are all ignored: the same finite loss and gradients as one thread (counts are global)', async () => {
    const masked = { tokens: seq.tokens, targets: seq.targets.map((t, i) => (i < S / 2 ? -100 : t)) };
    const b = await single(tiny, weights, masked), r = await ranks(2, 'contiguous', tiny, weights, masked);
    expect(Number.isFinite(b.loss)).toBe(true);
    for (const o of r.out) {
      expect(Math.abs(o.loss - b.loss), `loss on the rank at ${o.positions[0]}`).toBeLessThan(1e-6 * b.loss);
      for (const [name, g] of b.grads) {
        expect(o.grads[name]!.every(Number.isFinite), name).toBe(true);
        expect(worstError(o.grads[name]!, g, 1e-4 * maxAbs(g), 1e-5), name).toBeLessThan(1);
      }
    }
  });

  it('contiguous vs zigzag over 4 ranks agree (gradients within 1e-4 of each tensor\'s scale)', async () => {
    const a = await ranks(4, 'contiguous', tiny, weights, seq), b = await ranks(4, 'zigzag', tiny, weights, seq);
    expect(Math.abs(a.out[0]!.loss - b.out[0]!.loss)).toBeLessThan(1e-6 * base.loss);
    for (const [name, g] of Object.entries(a.out[0]!.grads))
      expect(worstError(b.out[0]!.grads[name]!, g, 1e-4 * maxAbs(g), 1e-5), name).toBeLessThan(1);
  });

  it('checkpointing on vs off: bit-identical loss and gradients, on one thread and over 4 zigzag ranks', async () => {
    const off = await single(tiny, weights, seq, false);
    expect(off.loss).toBe(base.loss);
    for (const [name, g] of base.grads) expect(off.grads.get(name), name).toEqual(g);
    // Over ranks too: the allReduce sums in rank order, whatever order the ranks arrive in.
    const a = await ranks(4, 'zigzag', tiny, weights, seq, true), b = await ranks(4, 'zigzag', tiny, weights, seq, false);
    expect(b.out[2]!.loss).toBe(a.out[2]!.loss);
    for (const [name, g] of Object.entries(a.out[2]!.grads)) expect(b.out[2]!.grads[name], name).toEqual(g);
  });

  it("checkpoint 'keep-attention': the same bits as recomputing everything, with attention run once per layer, not twice; no recompute runs the FFN", async () => {
    // Count attention's native calls (one thread: no group, so attention() runs, not the ring).
    const table = native as unknown as Record<string, (...a: unknown[]) => unknown>;
    const calls = { attentionForward: 0, attentionBackward: 0, opsFfn: 0, opsFfnBackward: 0 };
    const saved = { ...table };
    for (const name of Object.keys(calls) as (keyof typeof calls)[])
      table[name] = (...a: unknown[]) => {
        ++calls[name];
        return saved[name]!(...a);
      };
    const counted = async (checkpoint: Checkpointing) => {
      calls.attentionForward = calls.attentionBackward = calls.opsFfn = calls.opsFfnBackward = 0;
      const r = await single(tiny, weights, seq, checkpoint);
      return { r, calls: { ...calls } };
    };
    try {
      const L = tiny.num_hidden_layers; // the forward with logits, then the backward's own forward
      const all = await counted(true), keep = await counted('keep-attention'), none = await counted(false);
      // The recompute stops at the FFN's input: its output is never read, and ffnBackward
      // recomputes its own products.
      expect(all.calls).toEqual({ attentionForward: 3 * L, attentionBackward: L, opsFfn: 2 * L, opsFfnBackward: L });
      expect(keep.calls).toEqual({ attentionForward: 2 * L, attentionBackward: L, opsFfn: 2 * L, opsFfnBackward: L });
      expect(none.calls).toEqual({ attentionForward: 2 * L, attentionBackward: L, opsFfn: 2 * L, opsFfnBackward: L });
      expect(keep.r.loss).toBe(all.r.loss);
      for (const [name, g] of all.r.grads) expect(keep.r.grads.get(name), name).toEqual(g);
    } finally {
      for (const name of Object.keys(calls)) table[name] = saved[name]!;
    }
    // Over 4 zigzag ranks (ring attention): the same bits as without it.
    const a = await ranks(4, 'zigzag', tiny, weights, seq, true), b = await ranks(4, 'zigzag', tiny, weights, seq, 'keep-attention');
    expect(b.out[1]!.loss).toBe(a.out[1]!.loss);
    for (const [name, g] of Object.entries(a.out[1]!.grads)) expect(b.out[1]!.grads[name], name).toEqual(g);
  });

  // The trainer sums each gradient over the group as soon as the backward hands it over, under
  // the rest of the backward: each must be handed over once, and only once it is final.
  it('the backward hands over each gradient once, already final: head and norm, layers last to first, embedding', async () => {
    for (const c of [tiny, tiedTiny]) {
      using model = createLlama(c, randomWeights(c, 21));
      const g = new Map([...model.tensors].map(([n, t]) => [n, tensor(new Float32Array(t.numel), t.shape)]));
      const nameOf = new Map([...g].map(([n, t]) => [t, n]));
      const handed: [string, Float32Array][] = [];
      const ctx = {
        group: undefined, layout: 'contiguous' as const, positions: shardPositions(S, 0, 1, 'contiguous'), rope: model.rope(S),
        checkpoint: true, ffnBlockRows: 7, ceChunkRows: 5,
        gradsReady: (ts: Tensor[]) => { for (const t of ts) handed.push([nameOf.get(t)!, t.handle('t').toFloat32Array()]); },
      };
      runLlama(model, paramsFromMap(model.config, g), seq.tokens, seq.targets, ctx, 1 / S);
      const names = handed.map(([n]) => n);
      expect([...names].sort(), 'every gradient once').toEqual([...g.keys()].sort());
      expect(names.slice(0, c.tie_word_embeddings ? 1 : 2)).toEqual(c.tie_word_embeddings ? ['model.norm.weight'] : ['model.norm.weight', 'lm_head.weight']);
      expect(names.at(-1)).toBe('model.embed_tokens.weight');
      const layerOf = names.slice(c.tie_word_embeddings ? 1 : 2, -1).map((n) => Number(/^model\.layers\.(\d+)\./.exec(n)![1]));
      expect(layerOf).toEqual([...layerOf].sort((a, b) => b - a));
      for (const [n, early] of handed) {
        expect(maxAbs(early), `${n} is not all zeros`).toBeGreaterThan(0);
        expect(await g.get(n)!.toFloat32Array(), `${n} did not change after it was handed over`).toEqual(early);
      }
      for (const t of g.values()) t.dispose();
    }
  });

  it('the trainer waits for every gradient sum it posted, once; after a failure part-way too, then rethrows', async () => {
    const module = new URL('./fixtures/grad-sums.mjs', import.meta.url);
    // tiny has 2 layers: [norm, head], then layer 1's, then layer 0's with the embedding.
    for (const r of (await launch({ worldSize: 2 }, module, {})) as { log: string[]; error: string | null }[])
      expect(r).toEqual({ log: ['post 1', 'post 2', 'post 3', 'wait 1', 'wait 2', 'wait 3'], error: null });
    const failed = (await launch({ worldSize: 2 }, module, { failAt: 3 })) as { log: string[]; error: string | null }[];
    failed.forEach((r, rank) => expect(r).toEqual({ log: ['post 1', 'post 2', 'wait 1', 'wait 2'], error: `rank ${rank} refuses post 3` }));
  });

  // Micro-batches: gradients accumulate in float32 over the sequences, scaled once by the
  // count of all their targets; the reference combines each sequence's own backward by its
  // count, in double. Tolerances as above.
  it('micro-batches: the loss and gradients of one batch, weighted by counted targets; the same over 2 zigzag ranks', async () => {
    const a = seq, b = sequence(6, tiny.vocab_size);
    const half = { tokens: b.tokens.slice(0, S / 2), targets: b.targets.slice(0, S / 2).map((t, i) => (i % 3 === 0 ? -100 : t)) };
    const [ra, rb] = [await single(tiny, weights, a), await single(tiny, weights, half)];
    const n = ra.count + rb.count, wa = ra.count / n, wb = rb.count / n;
    expect(rb.count).toBeLessThan(ra.count / 2); // unequal weights: a mean of means would differ
    using model = createLlama(tiny, weights);
    using trainer = createTrainer(model, { lr: 1e-3, ffnBlockRows: 7, ceChunkRows: 5 });
    const loss = trainer.backward([a.tokens, half.tokens], [a.targets, half.targets]);
    expect(Math.abs(loss - (wa * ra.loss + wb * rb.loss))).toBeLessThan(1e-6 * loss);
    const want = new Map([...ra.grads].map(([name, g]) => [name, g.map((v, i) => wa * v + wb * rb.grads.get(name)![i]!)]));
    for (const [name, g] of want) {
      const got = await trainer.gradients.get(name)!.toFloat32Array();
      expect(worstError(got, g, 1e-5 * maxAbs(g), 1e-5), name).toBeLessThan(1);
    }
    const args = { config: tiny, weights: Object.fromEntries(weights), layout: 'zigzag', batches: [a, half] };
    for (const r of (await launch({ worldSize: 2 }, rankModule, args)) as { loss: number; grads: Record<string, Float32Array> }[]) {
      expect(Math.abs(r.loss - loss), 'loss over 2 ranks').toBeLessThan(1e-6 * loss);
      for (const [name, g] of want) expect(worstError(r.grads[name]!, g, 1e-4 * maxAbs(g), 1e-5), `${name} over 2 ranks`).toBeLessThan(1);
    }
    // every rank must pass as many micro-batches; when they do not, every rank is told so
    // before any ring step (1 + 3 = 2 + 2: no sum could tell)
    const misuse = { ...args, batches: [a, half, a], batchesOnRank: [1, 2, 3, 2] };
    for (const r of (await launch({ worldSize: 4 }, rankModule, misuse)) as { error: string | null }[])
      expect(r.error).toMatch(/^tokens: the ranks passed different numbers of micro-batches \(1, 2, 3, 2, in rank order\)/);
  });

  // Packed sequences: two documents laid end to end, with their ids, are the two computed
  // apart (micro-batches of one backward): attention stays in each, and RoPE sees only
  // distances within one. Positions differ (the second starts at 20, not 0), so cos/sin differ
  // in rounding: tolerances as above.
  it('packed sequences: two documents with documentIds equal the two apart; the same over 2 zigzag ranks', async () => {
    const b = sequence(8, tiny.vocab_size), n = 20;
    const first = { tokens: seq.tokens.slice(0, n), targets: seq.targets.slice(0, n) };
    const second = { tokens: b.tokens.slice(0, S - n), targets: b.targets.slice(0, S - n) };
    const packed = { tokens: Int32Array.from([...first.tokens, ...second.tokens]), targets: Int32Array.from([...first.targets, ...second.targets]) };
    const documentIds = Int32Array.from({ length: S }, (_, i) => (i < n ? 7 : -3));
    using model = createLlama(tiny, weights);
    using apart = createTrainer(model, { lr: 1e-3, ffnBlockRows: 7, ceChunkRows: 5 });
    const want = apart.backward([first.tokens, second.tokens], [first.targets, second.targets]);
    const wantGrads = new Map<string, Float32Array>();
    for (const [name, g] of apart.gradients) wantGrads.set(name, await g.toFloat32Array());
    using together = createTrainer(model, { lr: 1e-3, ffnBlockRows: 7, ceChunkRows: 5 });
    const loss = together.backward(packed.tokens, packed.targets, { documentIds });
    expect(Math.abs(loss - want), 'loss').toBeLessThan(1e-6 * want);
    for (const [name, g] of wantGrads) expect(worstError(await together.gradients.get(name)!.toFloat32Array(), g, 1e-4 * maxAbs(g), 1e-5), name).toBeLessThan(1);
    // without the ids the second document would attend to the first: a different loss
    expect(Math.abs(together.backward(packed.tokens, packed.targets) - want)).toBeGreaterThan(1e-3 * want);
    expect(Math.abs(together.forward(packed.tokens, packed.targets, { documentIds }).loss - want), 'forward loss').toBeLessThan(1e-6 * want);
    // as micro-batches, each with its ids: the same mean loss
    const twice = together.backward([packed.tokens, packed.tokens], [packed.targets, packed.targets], { documentIds: [documentIds, documentIds] });
    expect(Math.abs(twice - want), 'two packed micro-batches').toBeLessThan(1e-6 * want);
    const args = { config: tiny, weights: Object.fromEntries(weights), layout: 'zigzag', ...packed, documentIds };
    for (const r of (await launch({ worldSize: 2 }, rankModule, args)) as RankOut[]) {
      expect(Math.abs(r.loss - want), 'loss over 2 ranks').toBeLessThan(1e-6 * want);
      expect(Math.abs(r.forwardLoss - want), 'forward loss over 2 ranks').toBeLessThan(1e-6 * want);
      for (const [name, g] of wantGrads) expect(worstError(r.grads[name]!, g, 1e-4 * maxAbs(g), 1e-5), `${name} over 2 ranks`).toBeLessThan(1);
    }
    expect(() => together.step(packed.tokens, packed.targets, { documentIds: new Int32Array(3) })).toThrow(/opts\.documentIds: expected 32 ids \(one per token\), got 3/);
    expect(() => together.step([packed.tokens], [packed.targets], { documentIds })).toThrow(/opts\.documentIds: expected an array of Int32Array/);
    expect(() => together.step([packed.tokens], [packed.targets], { documentIds: [] })).toThrow(/opts\.documentIds: expected 1 arrays/);
    expect(() => together.step([packed.tokens], [packed.targets], { documentIds: [undefined as never] })).toThrow(/opts\.documentIds\[0\]: expected an Int32Array/);
  });

  it('training steps: the same losses on 1 thread and over 2 zigzag ranks (with clipping)', async () => {
    const args = { config: tiny, weights: Object.fromEntries(weights), tokens: seq.tokens, targets: seq.targets, layout: 'zigzag', steps: 4, lr: 3e-3, maxGradNorm: 0.5 };
    const [r0] = (await launch({ worldSize: 2 }, rankModule, args)) as { losses: number[] }[];
    using model = createLlama(tiny, weights);
    using trainer = createTrainer(model, { lr: 3e-3, maxGradNorm: 0.5, ffnBlockRows: 7, ceChunkRows: 5 });
    const losses = [0, 1, 2, 3].map(() => trainer.step(seq.tokens, seq.targets).loss);
    expect(losses[3]).toBeLessThan(losses[0]!);
    r0!.losses.forEach((l, i) => expect(Math.abs(l - losses[i]!), `step ${i + 1}`).toBeLessThan(1e-5 * losses[i]!));
  });

  it('inputs one rank refuses: every rank throws at that call, and the ranks stay in step after it (the error caught)', async () => {
    const args = { config: tiny, weights: Object.fromEntries(weights), tokens: seq.tokens, targets: seq.targets, layout: 'zigzag', steps: 3, badToken: { rank: 1, step: 0 } };
    const [r0, r1] = (await launch({ worldSize: 2 }, rankModule, args)) as { losses: (number | null)[]; errors: (string | null)[] }[];
    expect(r1!.errors[0]).toMatch(/^tokens\[1\]: 1000000 is outside the vocabulary/);
    expect(r0!.errors[0]).toBe('trainer: rank 1 refused its inputs to this call (see its error); every rank stops here alike');
    // Before, rank 1 went on alone: its next count met rank 0's first, and the ranks trained
    // one step apart (each sequence made of shards of two steps) with no error.
    expect(r0!.errors.slice(1)).toEqual([null, null]);
    expect(r1!.errors.slice(1)).toEqual([null, null]);
    expect(r1!.losses).toEqual(r0!.losses);
  });
});

describe('shardTokens', () => {
  it('contiguous and zigzag shards, with positions', () => {
    const t = Int32Array.from({ length: 8 }, (_, i) => 10 + i);
    expect(shardTokens(t, { rank: 1, worldSize: 2 })).toEqual({ tokens: Int32Array.from([14, 15, 16, 17]), positions: Int32Array.from([4, 5, 6, 7]) });
    expect(shardTokens(t, { rank: 1, worldSize: 2, layout: 'zigzag' })).toEqual({ tokens: Int32Array.from([12, 13, 14, 15]), positions: Int32Array.from([2, 3, 4, 5]) });
    expect(shardTokens(t, { rank: 0, worldSize: 2, layout: 'zigzag' }).positions).toEqual(Int32Array.from([0, 1, 6, 7]));
  });
  it('refuses lengths the layout cannot cut, naming the argument', () => {
    expect(() => shardTokens(new Int32Array(6), { rank: 0, worldSize: 2, layout: 'zigzag' })).toThrow(/tokens: the zigzag layout cuts the sequence into 4/);
    expect(() => shardTokens([1, 2] as unknown as Int32Array, { rank: 0, worldSize: 1 })).toThrow(/tokens: expected an Int32Array/);
    expect(() => shardTokens(new Int32Array(4), { rank: 2, worldSize: 2 })).toThrow(/opts.rank/);
    // Positions are int32: a whole sequence past 2^31 tokens is refused, not wrapped to negative angles.
    expect(() => shardPositions(1, 0, 2 ** 31 + 1, 'contiguous')).toThrow(
      new RangeError('tokens: a whole sequence of 2147483649 shards of 1 tokens is past 2^31 tokens (positions are int32)'));
    expect(shardPositions(1, 2 ** 31 - 1, 2 ** 31, 'contiguous')).toEqual(Int32Array.from([2 ** 31 - 1]));
  });
});

describe('initLlama', () => {
  it('normal(0, std) weights and unit norms; the same seed gives the same weights whatever the thread count', async () => {
    const wide = { ...tiny, vocab_size: 8192 }; // an embedding of 512K values: 16 chunks of work, so several threads
    using model = initLlama(wide, { seed: 11, std: 0.05 });
    const arrays = model.toArrays();
    const embed = arrays.get('model.embed_tokens.weight')!;
    const mean = embed.reduce((a, b) => a + b, 0) / embed.length;
    const sd = Math.sqrt(embed.reduce((a, b) => a + (b - mean) ** 2, 0) / embed.length);
    expect(Math.abs(mean)).toBeLessThan(4 * 0.05 / Math.sqrt(embed.length)); // 4 standard errors
    expect(Math.abs(sd / 0.05 - 1)).toBeLessThan(0.005); // the standard error of sd is ~0.1%
    expect(arrays.get('model.norm.weight')!.every((v) => v === 1)).toBe(true);
    // each tensor draws its own stream: no two matrices share values
    expect(arrays.get('model.layers.0.self_attn.q_proj.weight')![0]).not.toBe(arrays.get('model.layers.1.self_attn.q_proj.weight')![0]);
    using other = initLlama(wide, { seed: 12, std: 0.05 });
    expect((await other.tensors.get('model.embed_tokens.weight')!.toFloat32Array())[0]).not.toBe(embed[0]);
    // without opts.std, the config's initializer_range (as transformers), else 0.02; saved with the model
    using fromConfig = initLlama({ ...wide, initializer_range: 0.05 }, { seed: 11 }), plainStd = initLlama(wide, { seed: 11, std: 0.02 });
    using byDefault = initLlama(wide, { seed: 11 });
    const bits = (m: LlamaModel) => { const a = m.toArrays().get('model.embed_tokens.weight')!; return Buffer.from(a.buffer, a.byteOffset, a.byteLength); };
    expect(Buffer.compare(bits(fromConfig), Buffer.from(embed.buffer, embed.byteOffset, embed.byteLength))).toBe(0); // 512K values: no diff printed
    expect(Buffer.compare(bits(byDefault), bits(plainStd))).toBe(0);
    expect(fromConfig.config.initializer_range).toBe(0.05);
    expect(JSON.parse(llamaFiles(fromConfig).config).initializer_range).toBe(0.05);
    expect(() => initLlama({ ...wide, initializer_range: -1 }, { seed: 1 })).toThrow(/^initializer_range: expected a finite number >= 0, got -1/);
    // one thread in a child process gives the bits this process's threads gave
    const script = `import { initLlama, llamaPresets } from ${JSON.stringify(new URL('../dist/index.js', import.meta.url).href)};
      const m = initLlama({ ...llamaPresets.tiny, vocab_size: 8192 }, { seed: 11, std: 0.05 });
      const a = m.toArrays().get('model.embed_tokens.weight');
      process.stdout.write(Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString('base64'));`;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { env: { ...process.env, RING_ATTENTION_NUM_THREADS: '1' }, encoding: 'utf8', maxBuffer: 1 << 26 });
    expect(r.status, r.stderr).toBe(0);
    const b = Buffer.from(r.stdout, 'base64');
    expect(Buffer.compare(b, Buffer.from(embed.buffer, embed.byteOffset, embed.byteLength))).toBe(0);
  });
});

describe('training', () => {
  it('the loss falls on a synthetic task (next token of a repeated random pattern), over 2 zigzag ranks', async () => {
    const pattern = Int32Array.from(randomArray(11, 3), (v) => Math.floor(((v + 1) / 2) * 256));
    const tokens = Int32Array.from({ length: 64 }, (_, i) => pattern[i % 11]!);
    const targets = Int32Array.from({ length: 64 }, (_, i) => pattern[(i + 1) % 11]!);
    using model = initLlama(tiny, { seed: 7 });
    const weights = model.toArrays();
    const args = { config: tiny, weights: Object.fromEntries(weights), tokens, targets, layout: 'zigzag', steps: 30, lr: 3e-3, maxGradNorm: 1 };
    const [r0] = (await launch({ worldSize: 2 }, rankModule, args)) as { losses: number[] }[];
    const l = r0!.losses;
    expect(l[0]).toBeGreaterThan(5); // ~ln 256 = 5.55 at the start
    expect(l[29]).toBeLessThan(0.25 * l[0]!);
    expect(Math.min(...l.slice(20))).toBeLessThan(Math.min(...l.slice(0, 10)));
  });
});
