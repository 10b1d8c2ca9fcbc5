// What the LLaMA tests share (test/llama.test.ts, test/llama-checkpoint.test.ts): tiny configs,
// seeded weights and sequences, and the rank module that runs the model on a launched group.
import { llamaPresets, llamaTensorNames, type LlamaConfig, type ResolvedLlamaConfig } from '../dist/index.js';
import { randomArray } from './reference.js';

export const rankModule = new URL('./fixtures/llama-rank.mjs', import.meta.url);
export const tiny = llamaPresets.tiny as ResolvedLlamaConfig; // C 64, F 176, L 2, H 4, KVH 2 (GQA), D 16, V 256
export const tiedTiny: ResolvedLlamaConfig = { ...tiny, tie_word_embeddings: true };
// Llama 3's RoPE scaling at a size where all three bands occur (D 16: wavelengths 6.3, 20, 63,
// 199, ...; kept below 64/4 = 16, stretched above 64, blended between).
export const llama3Tiny: ResolvedLlamaConfig = {
  ...tiny, rope_scaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 64 },
};
// YaRN at D 16 with an original context of 64: frequencies kept, ramped and interpolated,
// and an attention factor of 1.07 (factor 2, not max_position_embeddings 256 / 64).
// Dynamic NTK past max_position_embeddings 16 (S is 32).
export const yarnTiny: ResolvedLlamaConfig = { ...tiny, rope_scaling: { rope_type: 'yarn', factor: 2, original_max_position_embeddings: 64 } };
export const dynamicTiny: ResolvedLlamaConfig = { ...tiny, max_position_embeddings: 16, rope_scaling: { rope_type: 'dynamic', factor: 2 } };
export const S = 32; // whole sequence; a multiple of 2 * 4 for zigzag over 4 ranks

export function randomWeights(c: LlamaConfig, seed: number): Map<string, Float32Array> {
  const out = new Map<string, Float32Array>();
  let s = seed;
  for (const [name, shape] of llamaTensorNames(c)) {
    const n = shape.reduce((a, b) => a * b, 1);
    const r = randomArray(n, ++s);
    out.set(name, shape.length === 1 ? r.map((v) => 1 + 0.2 * v) : r.map((v) => 0.25 * v));
  }
  return out;
}

export function sequence(seed: number, V: number) {
  const r = randomArray(2 * S, seed);
  const tokens = Int32Array.from({ length: S }, (_, i) => Math.floor(((r[i]! + 1) / 2) * V));
  const targets = Int32Array.from({ length: S }, (_, i) => Math.floor(((r[S + i]! + 1) / 2) * V));
  targets[3] = -100; // ignored targets count for nothing, in any shard
  targets[S - 2] = -100;
  return { tokens, targets };
}

export const bits = (a: Float32Array) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);
