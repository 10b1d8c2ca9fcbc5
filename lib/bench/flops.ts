// The arithmetic of MFU, kept apart so that tests can check it by hand: model FLOPs of a
// training step (PaLM's accounting, no recomputation counted) and the dense bfloat16 peak of
// the GPU the step ran on.
import type { LlamaConfig } from '../llama-config.js';

/** Parameters that take part in matmuls: every projection and the LM head (not the embedding lookup, not norms). */
export function matmulParameters(c: LlamaConfig): number {
  const d = c.head_dim ?? c.hidden_size / c.num_attention_heads;
  const C = c.hidden_size, q = c.num_attention_heads * d, kv = c.num_key_value_heads * d;
  const layer = C * q + 2 * C * kv + q * C + 3 * C * c.intermediate_size;
  return c.num_hidden_layers * layer + c.vocab_size * C;
}

/**
 * Model FLOPs per token of a forward+backward at context `seq`: 6 per matmul parameter plus
 * attention's 12 x layers x (heads x head dim) x seq, halved when causal (half the scores exist).
 */
export function flopsPerToken(c: LlamaConfig, seq: number, causal = true): number {
  const d = c.head_dim ?? c.hidden_size / c.num_attention_heads;
  const attention = 12 * c.num_hidden_layers * c.num_attention_heads * d * seq;
  return 6 * matmulParameters(c) + (causal ? attention / 2 : attention);
}

/** Dense bfloat16 tensor-core peaks (TFLOP/s, no sparsity) from NVIDIA's data sheets; first match wins. */
export const PEAK_TFLOPS: readonly (readonly [RegExp, number, string])[] = [
  [/H100.*PCIe/i, 756, 'H100 PCIe'],
  [/H100 NVL/i, 835, 'H100 NVL'],
  [/GH200/i, 989, 'GH200'],
  [/H100|H800/i, 989, 'H100/H800 SXM'],
  [/H200/i, 989, 'H200'],
  [/B200/i, 2250, 'B200'],
  [/B100/i, 1750, 'B100'],
  [/A100|A800/i, 312, 'A100/A800'],
  [/L40S/i, 362, 'L40S'],
  [/A10G/i, 70, 'A10G'],
  [/\bL4\b/i, 121, 'L4'],
];

/** The peak for a GPU name, or null when it is not in the table (give --peak-tflops). */
export function peakTflops(gpuName: string | null): { tflops: number; matched: string } | null {
  if (!gpuName) return null;
  const hit = PEAK_TFLOPS.find(([re]) => re.test(gpuName));
  return hit ? { tflops: hit[1], matched: hit[2] } : null;
}

/** Links of the paper's overlap rule, one-way GB/s per GPU (README's table). */
export const LINKS: readonly (readonly [string, number])[] = [
  ['NVLink 4 (DGX H100/H200)', 450],
  ['InfiniBand NDR, one 400 Gb/s port per GPU', 50],
];

/**
 * The paper's smallest per-rank block (tokens) whose K/V transfer hides under the attention
 * on the block before it: c >= F / B, F the GPU's FLOP/s and B the link's one-way bytes/s
 * (per step 4dc² FLOPs against 4cd bytes of bfloat16 K and V). Each rank then needs a
 * sequence of at least 6c tokens. The backward's step computes 2.5 times as much but also
 * moves the block's float32 dK/dV (8cd bytes), 3 times the bytes: c >= 1.2 F / B (without
 * `deterministic`, whose separate dQ pass computes more).
 */
export function minOverlapBlock(tflops: number, oneWayGBs: number, pass: 'forward' | 'backward' = 'forward'): number {
  return ((pass === 'backward' ? 3 / 2.5 : 1) * tflops * 1e12) / (oneWayGBs * 1e9);
}
