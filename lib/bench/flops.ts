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

/**
 * The FLOPs a training step's kernels run, by op family, over a whole causal sequence of
 * `seq` tokens (split over the ranks, each runs its share): recomputation included, unlike
 * flopsPerToken, so that a family's FLOPs over its time is the rate its kernels reached.
 * Per layer, with the forward's products F (attention: 2·seq²·H·D, half the scores):
 * attention runs F, again in the recompute (checkpointing without 'keep-attention'), and a
 * backward of 2.5 F (the attention suite's count); the q/k/v/o projections F, again in any
 * recompute, and 2 F back; the feed-forward 3 products forward and 8 in ffnBackward (gate and
 * up again, then 6 for the gradients), none in the recompute; the LM head 3 (logits, dh, dW).
 */
export function stepFlopsByFamily(c: LlamaConfig, seq: number, checkpoint: boolean | 'keep-attention'): Record<string, number> {
  const d = c.head_dim ?? c.hidden_size / c.num_attention_heads;
  const C = c.hidden_size, q = c.num_attention_heads * d, kv = c.num_key_value_heads * d, L = c.num_hidden_layers;
  const attention = 2 * seq * seq * q; // 4·seq²·H·D, halved: causal
  const linear = 2 * seq * (C * q + 2 * C * kv + q * C);
  const product = 2 * seq * C * c.intermediate_size; // one of the feed-forward's products
  return {
    attention: L * attention * ((checkpoint === true ? 2 : 1) + 2.5),
    'feed-forward': L * product * (3 + 8),
    'linear (q,k,v,o)': L * linear * ((checkpoint ? 2 : 1) + 2),
    'LM head + loss': 3 * 2 * seq * C * c.vocab_size,
  };
}

/** Dense bfloat16 tensor-core peaks (TFLOP/s, no sparsity) from NVIDIA's data sheets; first match wins. */
export const PEAK_TFLOPS: readonly (readonly [RegExp, number, string])[] = [
  [/H100.*PCIe/i, 756, 'H100 PCIe'],
  [/H100 NVL/i, 835, 'H100 NVL'],
  [/GH200/i, 989, 'GH200'],
  [/H800.*PCIe/i, 756, 'H800 PCIe'],
  [/H100|H800/i, 989, 'H100/H800 SXM'],
  [/H200 NVL/i, 835, 'H200 NVL'],
  [/H200/i, 989, 'H200'],
  [/GB200/i, 2500, 'GB200'],
  [/B200/i, 2250, 'B200'],
  [/B100/i, 1750, 'B100'],
  [/A100|A800/i, 312, 'A100/A800'],
  [/L40S/i, 362, 'L40S'],
  [/\bL40\b/i, 181, 'L40'],
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
