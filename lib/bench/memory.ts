// `bench memory`: peak memory of a training step against context length, with gradient
// checkpointing on and off (and 'keep-attention' when asked). What the step adds to the weights, gradients and AdamW moments
// ("activations") should grow linearly with the context (blockwise attention and FFN keep no
// seq x seq or seq x ffn tensors), with a slope of about one hidden-sized vector per token per
// layer plus one layer's working set when checkpointing (the paper's Table 1). The suite fits
// that line and prints its slope in hidden-sized vectors (of the compute dtype) per token per layer.
import type { Column, SuiteResult } from './report.js';
import { BLOCK_OPTIONS, blockNote, blockRows, intOption, MAX_CONTEXT, predictedNotToFit, type Suite } from './suite.js';
import { measureStep, type StepArgs, type StepMeasure } from './train-step.js';
import type { LlamaConfig } from '../llama-config.js';
import { COMPUTE_DTYPE } from '../llama-model.js';
import type { Checkpointing } from '../llama.js';

export interface MemoryRow {
  model: string;
  context: number;
  checkpoint: Checkpointing;
  /** Weights, gradients and optimizer moments: held before the step. */
  baseBytes: number;
  peakBytes: number;
  /** peak - base: what the step itself needs. */
  activationBytes: number;
  /** activationBytes / (context x layers x hidden x bytes of the compute dtype): hidden-sized vectors per token per layer. */
  vectorsPerTokenLayer: number;
}

/** Least-squares line through (x, y); r2 is the share of the variance it explains. */
export function fitLine(xs: number[], ys: number[]): { slope: number; intercept: number; r2: number } {
  const n = xs.length, mx = xs.reduce((a, b) => a + b, 0) / n, my = ys.reduce((a, b) => a + b, 0) / n;
  let sxy = 0, sxx = 0, syy = 0;
  for (let i = 0; i < n; ++i) {
    sxy += (xs[i]! - mx) * (ys[i]! - my);
    sxx += (xs[i]! - mx) ** 2;
    syy += (ys[i]! - my) ** 2;
  }
  const slope = sxx ? sxy / sxx : 0;
  return { slope, intercept: my - slope * mx, r2: syy ? (sxy * sxy) / (sxx * syy) : 1 };
}

const label = (c: Checkpointing) => (c === true ? 'on' : c === false ? 'off' : 'keep-attention');

export const memorySuite: Suite<MemoryRow> = {
  name: 'memory',
  summary: 'peak memory of a training step against context length, checkpointing on and off',
  options: {
    model: { type: 'string', help: 'preset (tiny, 125M, 1B, 7B) or a config.json path', cpu: 'tiny', cuda: '1B' },
    'min-context': { type: 'string', help: 'first context length', cpu: '256', cuda: '4096', smoke: '64' },
    'max-context': { type: 'string', help: 'last context length; 0: double until a step does not fit', cpu: '4096', cuda: '0', smoke: '256' },
    'keep-attention': { type: 'boolean', help: "also checkpoint 'keep-attention' (attention's output kept, not recomputed)" },
    ...BLOCK_OPTIONS,
  },
  async run(o, ctx) {
    const config: LlamaConfig = await ctx.modelConfig(o.model as string);
    const dtype = COMPUTE_DTYPE[ctx.device], elementBytes = dtype === 'float32' ? 4 : 2; // activations are in the compute dtype
    const max = intOption(o, 'max-context', 0) || Infinity;
    const contexts: number[] = [];
    for (let c = intOption(o, 'min-context'); c <= Math.min(max, MAX_CONTEXT); c *= 2) contexts.push(c);
    const rows: MemoryRow[] = [];
    const blocks = blockRows(o);
    const notes: string[] = [];
    let ran: StepMeasure['blocks'] | undefined; // what the trainer was given (the notes)
    const modes: Checkpointing[] = o['keep-attention'] ? [true, 'keep-attention', false] : [true, false];
    // The result of the rows so far: after each point (partial), and at the end.
    const result = (): SuiteResult<MemoryRow> => {
      const all = [...notes];
      if (ran) all.push(blockNote(ran));
      for (const checkpoint of modes) {
        const rs = rows.filter((r) => r.checkpoint === checkpoint);
        if (rs.length < 2) continue;
        const f = fitLine(rs.map((r) => r.context), rs.map((r) => r.activationBytes));
        const mib = Math.round((10 * f.intercept) / 2 ** 20) / 10 || 0;  // no "-0.0" from rounding noise
        all.push(`checkpointing ${label(checkpoint)}: activations = ${mib.toFixed(1)} MiB + ` +
          `${(f.slope / 1024).toFixed(1)} KiB x context (r² ${f.r2.toFixed(4)}); ` +
          `${(f.slope / (config.num_hidden_layers * config.hidden_size * elementBytes)).toFixed(2)} ${dtype} hidden vectors per token per layer`);
      }
      all.push(ctx.device === 'cuda' ? 'bytes from the CUDA caching allocator (tensors in use, not the cache)'
        : 'bytes of CPU tensor storage (op workspaces, bounded by their block sizes, are not counted)');
      return { suite: 'memory', params: o, rows, notes: all, columns: COLUMNS, chart: {
        title: `Peak memory of a training step, ${o.model}`,
        x: { title: 'context length (tokens)', value: (r) => r.context, log2: true },
        y: { title: 'peak memory (GiB)', value: (r) => r.peakBytes / 2 ** 30 },
        series: (r) => `checkpointing ${label(r.checkpoint)}`,
      } };
    };
    const points = modes.length * contexts.length;
    const progress = ctx.progress(points);
    let started = 0;  // as the progress lines count (a mode that stops early skips the rest of its contexts)
    try {
      for (const checkpoint of modes)
        for (const context of contexts) {
          progress.start(`context ${context}, checkpointing ${label(checkpoint)}`);
          ++started;
          const skip = Number.isFinite(max) ? null
            : predictedNotToFit(rows.filter((r) => r.checkpoint === checkpoint), context, ctx.machine.gpuMemoryBytes);
          if (skip) {
            notes.push(`context ${context}, checkpointing ${label(checkpoint)}: ${skip}`);
            progress.done('not tried');
            break;
          }
          const args: StepArgs = { config, device: ctx.device, context, checkpoint, layout: 'contiguous', steps: 0, breakdown: false, ...blocks };
          let m;
          try {
            m = measureStep(args);
          } catch (e) {
            notes.push(`context ${context}, checkpointing ${label(checkpoint)}: stopped (${(e as Error).message.split('\n')[0]})`);
            progress.done('does not fit');
            if (rows.length === 0) throw e;
            break;
          }
          ran ??= m.blocks;
          const activationBytes = m.peakBytes - m.baseBytes;
          rows.push({ model: String(o.model), context, checkpoint, baseBytes: m.baseBytes, peakBytes: m.peakBytes, activationBytes,
            vectorsPerTokenLayer: activationBytes / (context * config.num_hidden_layers * config.hidden_size * elementBytes) });
          ctx.partial(result(), started, points);
          progress.done(`peak ${(m.peakBytes / 2 ** 20).toFixed(1)} MiB`);
        }
    } finally {
      progress.stop();
    }
    return result();
  },
};

const COLUMNS: Column<MemoryRow>[] = [
  { header: 'context', value: (r) => r.context },
  { header: 'checkpoint', value: (r) => label(r.checkpoint) },
  { header: 'base MiB', value: (r) => r.baseBytes / 2 ** 20, digits: 1 },
  { header: 'peak MiB', value: (r) => r.peakBytes / 2 ** 20, digits: 1 },
  { header: 'activations MiB', value: (r) => r.activationBytes / 2 ** 20, digits: 2 },
  { header: 'vectors/token/layer', value: (r) => r.vectorsPerTokenLayer, digits: 2 },
];
