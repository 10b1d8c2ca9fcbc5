// One rank's part of the `mfu` and `memory` suites: a LLaMA training step (forward, backward
// with or without checkpointing, clipping, AdamW) on random tokens at one context length,
// timed, profiled by op family, and its peak memory read. The default export is the launch()
// rank module, so N in-process ranks run the same code as one.
import type { ProcessGroup } from '../group.js';
import { cudaMemoryStats, cudaSynchronize, hostMemoryStats, resetPeakMemoryStats } from '../index.js';
import type { LlamaConfig } from '../llama-config.js';
import { shardTokens, type Checkpointing } from '../llama.js';
import { initLlama } from '../llama-model.js';
import type { Layout } from '../shard.js';
import { BLOCK_ROWS, createTrainer } from '../train.js';
import { profile, type Breakdown } from './profile.js';
import type { BlockRows } from './suite.js';

/** The step's block sizes (BlockRows) are the trainer's, its defaults where absent. */
export interface StepArgs extends BlockRows {
  config: LlamaConfig;
  device: 'cpu' | 'cuda';
  /** Whole sequence length, over all ranks. */
  context: number;
  checkpoint: Checkpointing;
  layout: Layout;
  /** Timed steps after one warm-up step; 0 measures memory only (the warm-up step). */
  steps: number;
  /** Also run one step with every op timed. */
  breakdown: boolean;
}

export interface StepMeasure {
  /** Median of the timed steps (ms), null when steps = 0. */
  stepMs: number | null;
  /** The warm-up step (ms): first-call costs included (cuBLAS handles, allocator growth). */
  warmupMs: number;
  /** Milliseconds per op family in one profiled step, when asked for. */
  breakdown: Breakdown | null;
  /** Bytes held before the first step: weights, gradients, AdamW moments (this rank's device). */
  baseBytes: number;
  /** Most bytes held during the warm-up step (this rank's device). */
  peakBytes: number;
  loss: number;
  /** The block sizes the trainer was given (its defaults where the args had none), for the notes. */
  blocks: Required<BlockRows>;
}

/** A seeded stream of token ids in [0, vocab). */
function randomTokens(n: number, vocab: number, seed: number): Int32Array {
  let a = seed >>> 0;
  const out = new Int32Array(n);
  for (let i = 0; i < n; ++i) {
    a = (Math.imul(a, 1664525) + 1013904223) >>> 0;
    out[i] = a % vocab;
  }
  return out;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

export function measureStep(args: StepArgs, group?: ProcessGroup): StepMeasure {
  const memory = () => (args.device === 'cuda' ? cudaMemoryStats() : hostMemoryStats());
  const sync = args.device === 'cuda' ? cudaSynchronize : () => {};
  const rank = group?.rank ?? 0, worldSize = group?.worldSize ?? 1;

  const blocks = { ffnBlockRows: args.ffnBlockRows ?? BLOCK_ROWS[args.device].ffn, ceChunkRows: args.ceChunkRows ?? BLOCK_ROWS[args.device].ce };
  using model = initLlama(args.config, { seed: 1, device: args.device });
  using trainer = createTrainer(model, {
    group, layout: args.layout, lr: 1e-4, maxGradNorm: 1, checkpoint: args.checkpoint, ...blocks,
  });
  const whole = randomTokens(args.context + 1, args.config.vocab_size, 7);
  const shard = (a: Int32Array) => shardTokens(a, { rank, worldSize, layout: args.layout }).tokens;
  const tokens = shard(whole.subarray(0, args.context)), targets = shard(whole.subarray(1));

  sync();
  resetPeakMemoryStats();
  const baseBytes = memory().bytesInUse;
  group?.barrier();
  const w0 = performance.now();
  let { loss } = trainer.step(tokens, targets);
  sync();
  const warmupMs = performance.now() - w0;
  const peakBytes = memory().peakBytesInUse;

  const times: number[] = [];
  for (let i = 0; i < args.steps; ++i) {
    group?.barrier();
    const t0 = performance.now();
    loss = trainer.step(tokens, targets).loss;  // returns the loss as a number: the step has finished
    sync();
    times.push(performance.now() - t0);
  }
  const breakdown = args.breakdown ? profile(() => void trainer.step(tokens, targets), sync) : null;
  return { stepMs: times.length ? median(times) : null, warmupMs, breakdown, baseBytes, peakBytes, loss, blocks };
}

export default ({ group, args }: { group: ProcessGroup; args: StepArgs }): StepMeasure => measureStep(args, group);
