// `bench mfu`: a LLaMA training step at context lengths doubling from --min-context until
// one does not fit (or --max-context), with tokens/s, achieved TFLOP/s and MFU per length,
// and a breakdown of the step by op family at each. On one device, on N in-process ranks
// (--ranks), or on every process of a launched NCCL job (each GPU holds 1/N of the context).
import type { ProcessGroup } from '../group.js';
import { launch } from '../launch.js';
import { gatherNumbers } from '../group-values.js';
import { DEFAULT_TIMEOUT_MS } from '../errors.js';
import { initProcessGroup } from '../process-group.js';
import { parameterCount } from '../llama-config.js';
import { flopsPerToken, matmulParameters, peakTflops, stepFlopsByFamily } from './flops.js';
import type { Breakdown } from './profile.js';
import type { Column, SuiteResult } from './report.js';
import { BLOCK_OPTIONS, blockNote, blockRows, groupTimeoutMs, intOption, MAX_CONTEXT, predictedNotToFit, type Suite } from './suite.js';
import { measureStep, type StepArgs, type StepMeasure } from './train-step.js';

export interface MfuRow {
  model: string;
  context: number;
  ranks: number;
  stepMs: number;
  tokensPerSecond: number;
  /** Model FLOPs per second over the whole group. */
  tflops: number;
  /** tflops / (peak x devices: ranks when launched, else the one device in-process ranks share), null when the peak is unknown. */
  mfu: number | null;
  loss: number;
  peakBytes: number;
  breakdownMs: Breakdown | null;
  /** Per op family of stepFlopsByFamily: its FLOPs on one rank over its profiled time, TFLOP/s (null without a breakdown). */
  familyTflops: Record<string, number> | null;
}

const FAMILY_ORDER = ['attention', 'feed-forward', 'linear (q,k,v,o)', 'LM head + loss', 'RMSNorm', 'RoPE', 'embedding',
  'residual adds', 'optimizer + clipping', 'gradient all-reduce', 'other'];

export const mfuSuite: Suite<MfuRow> = {
  name: 'mfu',
  summary: 'training-step MFU of a LLaMA preset against context length',
  options: {
    model: { type: 'string', help: 'preset (tiny, 125M, 1B, 7B) or a config.json path', cpu: 'tiny', cuda: '1B' },
    'min-context': { type: 'string', help: 'first context length (tokens, whole sequence)', cpu: '256', cuda: '4096', smoke: '64' },
    'max-context': { type: 'string', help: 'last context length; default: double until a step does not fit', cpu: '1024', cuda: '0', smoke: '128' },
    ranks: { type: 'string', help: 'in-process ranks sharing this device (a launched NCCL job uses its own size)', cpu: '1', cuda: '1' },
    steps: { type: 'string', help: 'timed steps per length (median) after one warm-up step; 0: time the warm-up step', cpu: '3', cuda: '3', smoke: '1' },
    layout: { type: 'string', help: 'contiguous or zigzag', cpu: 'zigzag', cuda: 'zigzag', choices: ['contiguous', 'zigzag'] },
    'peak-tflops': { type: 'string', help: 'the device peak, for a GPU not in the table or for the CPU', cpu: '', cuda: '' },
    'no-checkpoint': { type: 'boolean', help: 'keep every activation instead of recomputing each layer' },
    'keep-attention': { type: 'boolean', help: "checkpoint 'keep-attention': keep attention's output, so the recompute skips the attention" },
    'no-breakdown': { type: 'boolean', help: 'skip the extra profiled step (where the time goes by op family)' },
    'timeout-minutes': { type: 'string', help: "launched: the NCCL group's timeout, which a ring call at long context must not outlast", cpu: '5', cuda: '5' },
    ...BLOCK_OPTIONS,
  },
  async run(o, ctx) {
    if (o['no-checkpoint'] && o['keep-attention']) throw new RangeError('--keep-attention keeps checkpointing on: give it or --no-checkpoint, not both');
    const checkpoint = o['no-checkpoint'] ? false : o['keep-attention'] ? 'keep-attention' : true;
    const config = await ctx.modelConfig(o.model as string);
    const launched = ctx.launchedWorldSize > 1;
    if (launched && ctx.device !== 'cuda') throw new RangeError('--device: a launched job trains over NCCL, which needs cuda');
    // Every option checked before the rendezvous, so that a bad one fails the job at once.
    const timeoutMs = groupTimeoutMs(o);
    const blocks = blockRows(o);
    const steps = intOption(o, 'steps', 0);
    const ranks = launched ? ctx.launchedWorldSize : intOption(o, 'ranks');
    // The rendezvous keeps its 5 minutes (a rank that never starts) whatever the steps need.
    const group = launched ? await initProcessGroup({ backend: 'nccl', timeoutMs, rendezvousTimeoutMs: DEFAULT_TIMEOUT_MS }) : undefined;
    const { devices, ratesMeasurable } = jobShape(ranks, launched, o.layout as string);
    const given = Number(o['peak-tflops']);
    if (o['peak-tflops'] && !(given > 0)) throw new RangeError(`--peak-tflops: expected a number > 0, got '${o['peak-tflops']}'`);
    const peak = o['peak-tflops'] ? { tflops: given, matched: '--peak-tflops' } : peakTflops(ctx.machine.gpu);
    const rows: MfuRow[] = [];
    const notes: string[] = [];
    let ran: StepMeasure['blocks'] | undefined; // what the trainer was given (the notes)
    const max = intOption(o, 'max-context', 0) || Infinity;
    const contexts: number[] = [];
    for (let c = intOption(o, 'min-context'); c <= Math.min(max, MAX_CONTEXT); c *= 2) contexts.push(c);
    // The result of the rows so far: after each point (partial), and at the end.
    const result = (): SuiteResult<MfuRow> => {
      const all = [...notes];
      all.push(`checkpointing ${checkpoint === true ? 'on' : checkpoint === false ? 'off' : "on, keeping attention's output (no attention in the recompute)"}`);
      if (steps === 0) all.push('--steps 0: each time is the warm-up step\'s, first-call costs included');
      if (ran) all.push(blockNote(ran));
      if (process.env.RING_ATTENTION_SM90 === '1') all.push('RING_ATTENTION_SM90=1: attention ran on the Hopper kernels wherever they apply');
      all.push(`model ${o.model}: ${(parameterCount(config) / 1e6).toFixed(1)}M parameters, ${(matmulParameters(config) / 1e6).toFixed(1)}M ` +
        'of them in matrix products (the embedding lookup excluded, the LM head included); FLOPs per token = 6 x matmul parameters + ' +
        '12 x layers x heads x head dim x context / 2 (causal), recomputation not counted');
      all.push(peak ? `peak ${peak.tflops} TFLOP/s per device (${peak.matched}, dense bfloat16)` :
        `MFU not computed: no peak known for ${ctx.machine.gpu ?? 'the CPU'} (give --peak-tflops)`);
      if (ranks > 1 && !launched) all.push(`${ranks} in-process ranks share one device; MFU is against its peak`);
      if (launched) all.push(`a launched job of ${ranks} processes, one GPU each; peak MiB is the largest rank's`);
      const last = rows.at(-1)?.breakdownMs;
      if (last) {
        const total = Object.values(last).reduce((a, b) => a + b, 0);
        all.push(`where a step goes at context ${rows.at(-1)!.context} (one profiled step, device synced around each op): ` +
          FAMILY_ORDER.filter((f) => last[f]).map((f) => `${f} ${((100 * last[f]!) / total).toFixed(0)}%`).join(', '));
        const rates = rows.at(-1)!.familyTflops;
        if (rates)
          all.push(`the kernels' rates there (FLOPs they run, recomputation included, over that step's times; ${peak ? `of ${peak.tflops} TFLOP/s peak` : 'TFLOP/s'}): ` +
            Object.entries(rates).map(([f, t]) => `${f} ${t.toPrecision(3)} TFLOP/s${peak ? ` (${((100 * t) / peak.tflops).toFixed(0)}%)` : ''}`).join(', ') +
            (ranks > 1 ? "; attention's time includes waiting for the ring's transfers" : ''));
        else all.push(`no rates per family: ${launched ? 'the contiguous layout gives rank 0 less than its share of the attention' : 'in-process ranks share one device, whose waits time them all'}`);
      }
      return { suite: 'mfu', params: { ...o, ranks }, rows, notes: all, columns: COLUMNS, chart: {
        title: `Training-step ${peak ? 'MFU' : 'TFLOP/s'}, ${o.model}`,
        x: { title: 'context length (tokens)', value: (r) => r.context, log2: true },
        y: peak ? { title: 'MFU', value: (r) => r.mfu, format: '%' } : { title: 'model TFLOP/s', value: (r) => r.tflops },
        series: (r) => `${r.model}, ${r.ranks} rank${r.ranks > 1 ? 's' : ''}`,
        ...(peak ? { rule: { y: 0.5, label: 'target 50%' } } : {}),
      } };
    };
    const progress = ctx.progress(contexts.length);
    try {
      // The smallest GPU of the job (0: unknown), so that every rank stops its search at one context.
      const deviceBytes = group ? Math.min(...gatherNumbers(group, [ctx.machine.gpuMemoryBytes ?? 0], ctx.device).map(([b]) => b!)) || null
        : ctx.machine.gpuMemoryBytes;
      for (const context of contexts) {
        progress.start(`context ${context}`);
        // Only where the search doubles on its own: a context asked for outright is tried.
        const skip = Number.isFinite(max) ? null : predictedNotToFit(rows, context, deviceBytes);
        if (skip) {
          notes.push(`context ${context}: ${skip}`);
          progress.done('not tried');
          break;
        }
        const args: StepArgs = { config, device: ctx.device, context, checkpoint, layout: o.layout as never,
          steps, breakdown: !o['no-breakdown'], ...blocks };
        let m: StepMeasure;
        try {
          m = group ? largestPeak(measureStep(args, group), group, ctx.device)
            : ranks === 1 ? measureStep(args)
            : (await launch({ worldSize: ranks, device: ctx.device }, new URL('./train-step.js', import.meta.url), args))[0] as StepMeasure;
        } catch (e) {
          const why = (e as Error).message.split('\n')[0]!;
          notes.push(`context ${context}: stopped (${why})`);
          progress.done('does not run');
          if (rows.length === 0) throw e;
          break;
        }
        ran ??= m.blocks;
        const stepMs = m.stepMs ?? m.warmupMs;
        const tflops = (flopsPerToken(config, context) * context) / (stepMs * 1e-3) / 1e12;
        const row: MfuRow = {
          model: String(o.model), context, ranks, stepMs, tokensPerSecond: context / (stepMs * 1e-3), tflops,
          mfu: peak ? tflops / (peak.tflops * devices) : null, loss: m.loss, peakBytes: m.peakBytes, breakdownMs: m.breakdown,
          familyTflops: m.breakdown && ratesMeasurable ? familyRates(stepFlopsByFamily(config, context, checkpoint), m.breakdown, ranks) : null,
        };
        rows.push(row);
        ctx.partial(result(), contexts.indexOf(context) + 1, contexts.length);
        progress.done(`${row.tokensPerSecond.toFixed(0)} tokens/s${row.mfu === null ? '' : `, MFU ${(row.mfu * 100).toFixed(1)}%`}`);
      }
    } finally {
      progress.stop();
      group?.destroy();
    }
    return result();
  },
};

const COLUMNS: Column<MfuRow>[] = [
  { header: 'context', value: (r) => r.context },
  { header: 'ranks', value: (r) => r.ranks },
  { header: 'step ms', value: (r) => r.stepMs, digits: 1 },
  { header: 'tokens/s', value: (r) => r.tokensPerSecond, digits: 0 },
  { header: 'TFLOP/s', value: (r) => r.tflops, digits: 3 },
  { header: 'MFU %', value: (r) => (r.mfu === null ? null : r.mfu * 100), digits: 1 },
  { header: 'peak MiB', value: (r) => r.peakBytes / 2 ** 20, digits: 1 },
  { header: 'attention %', value: (r) => share(r, 'attention'), digits: 0 },
  { header: 'ffn %', value: (r) => share(r, 'feed-forward'), digits: 0 },
  { header: 'loss', value: (r) => r.loss, digits: 3 },
];

/** The step with the largest of the ranks' peaks. */
function largestPeak(m: StepMeasure, group: ProcessGroup, device: 'cpu' | 'cuda'): StepMeasure {
  return { ...m, peakBytes: Math.max(...gatherNumbers(group, [m.peakBytes], device).map(([b]) => b!)) };
}

/**
 * @internal How a run's figures divide: MFU against the peak of `devices` GPUs (a launched job's
 * each, in-process ranks share one); rates per op family only where rank 0's profile times its
 * own share. It times its calls, each between two waits for its device: a device that in-process
 * ranks share runs their kernels inside those times too. And with the contiguous layout rank 0
 * runs far less of the causal attention than 1/N (and waits for the others).
 */
export function jobShape(ranks: number, launched: boolean, layout: string): { devices: number; ratesMeasurable: boolean } {
  return { devices: launched ? ranks : 1, ratesMeasurable: ranks === 1 || (launched && layout === 'zigzag') };
}

/** @internal TFLOP/s of each family's kernels on a profiled rank: its share (1/ranks) of the step's FLOPs over its time; families not timed left out. */
export function familyRates(flops: Record<string, number>, ms: Breakdown, ranks: number): Record<string, number> {
  return Object.fromEntries(Object.entries(flops).filter(([f]) => ms[f]).map(([f, n]) => [f, n / ranks / (ms[f]! * 1e-3) / 1e12]));
}

function share(r: MfuRow, family: string): number | null {
  if (!r.breakdownMs) return null;
  const total = Object.values(r.breakdownMs).reduce((a, b) => a + b, 0);
  return (100 * (r.breakdownMs[family] ?? 0)) / total;
}
