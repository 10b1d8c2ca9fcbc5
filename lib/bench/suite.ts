// What a benchmark suite is: named options with defaults per device (and smaller ones for
// --smoke, CI's run), and a run that returns rows, table columns, a chart and notes.
import { MAX_TIMER_MS } from '../errors.js';
import { BLOCK_ROWS, type TrainerOptions } from '../train.js';
import type { LlamaConfig } from '../llama-config.js';
import type { Progress } from './progress.js';
import type { Machine, SuiteResult } from './report.js';

export interface OptionSpec {
  type: 'string' | 'boolean';
  help: string;
  /** Defaults of string options on each device, and under --smoke (on the CPU). */
  cpu?: string;
  cuda?: string;
  smoke?: string;
  /** The values a string option may take. */
  choices?: readonly string[];
}

export interface SuiteContext {
  device: 'cpu' | 'cuda';
  machine: Machine;
  /** Processes in the launched job (ring-attention launch, torchrun: WORLD_SIZE); 1 when not launched. */
  launchedWorldSize: number;
  /** This process's rank in that job; only rank 0 prints and writes. */
  launchedRank: number;
  progress(points: number): Progress;
  /** The result so far, after each point (written as partial JSON and CSV by rank 0; see ResultWriter). */
  partial<R>(result: SuiteResult<R>, done: number, of: number): void;
  /** A preset's config, or a config.json file's. */
  modelConfig(nameOrPath: string): Promise<LlamaConfig>;
}

export type SuiteOptions = Record<string, string | boolean | undefined>;

export interface Suite<R> {
  name: string;
  summary: string;
  options: Record<string, OptionSpec>;
  run(options: SuiteOptions, ctx: SuiteContext): Promise<SuiteResult<R>>;
}

/** A positive integer option, or a RangeError that names it. */
export function intOption(o: SuiteOptions, name: string, min = 1, max = Number.MAX_SAFE_INTEGER): number {
  const v = Number(o[name]);
  if (!Number.isSafeInteger(v) || v < min || v > max)
    throw new RangeError(`--${name}: expected an integer >= ${min}${max < Number.MAX_SAFE_INTEGER ? ` and <= ${max}` : ''}, got '${o[name]}'`);
  return v;
}

/**
 * --timeout-minutes of the suites that join a launched job: the NCCL group's timeoutMs, which
 * bounds every wait, a ring call's GPU work included (README: long sequences need more).
 */
export function groupTimeoutMs(o: SuiteOptions): number {
  return intOption(o, 'timeout-minutes', 1, Math.floor(MAX_TIMER_MS / 60_000)) * 60_000;
}

/** A comma-separated list of positive integers. */
export function intList(o: SuiteOptions, name: string): number[] {
  const xs = String(o[name]).split(',').map(Number);
  if (xs.length === 0 || xs.some((x) => !Number.isSafeInteger(x) || x < 1))
    throw new RangeError(`--${name}: expected comma-separated integers >= 1, got '${o[name]}'`);
  return xs;
}

/** Where "double until it does not fit" stops at the latest: 64M tokens. */
export const MAX_CONTEXT = 2 ** 26;

/**
 * Why a doubling search should not try `context`: the peak memory that a line through the last
 * two steps measured predicts for it (training memory grows linearly with the context) exceeds
 * the GPU's, or null to try it. A step that cannot fit would otherwise run for minutes (its
 * attention grows as the square) before running out of memory near its end.
 */
export function predictedNotToFit(measured: readonly { context: number; peakBytes: number }[], context: number,
  deviceBytes: number | null): string | null {
  if (deviceBytes === null || measured.length < 2) return null;
  const [a, b] = measured.slice(-2) as [{ context: number; peakBytes: number }, { context: number; peakBytes: number }];
  if (b.context === a.context) return null;
  const predicted = b.peakBytes + ((b.peakBytes - a.peakBytes) / (b.context - a.context)) * (context - b.context);
  if (predicted <= deviceBytes) return null;
  const gib = (x: number) => `${(x / 2 ** 30).toFixed(1)} GiB`;
  return `not tried: contexts ${a.context} and ${b.context} predict a peak of ${gib(predicted)}, over the GPU's ${gib(deviceBytes)}`;
}

/** The step's block sizes, for the suites that train (mfu, memory): untuned on a GPU, so they can be swept. */
export const BLOCK_OPTIONS: Record<string, OptionSpec> = {
  'ffn-block-rows': { type: 'string', help: `tokens per feed-forward row block (default ${BLOCK_ROWS.cpu.ffn} on cpu, ${BLOCK_ROWS.cuda.ffn} on cuda)`, cpu: '', cuda: '' },
  'ce-chunk-rows': { type: 'string', help: `tokens per cross-entropy chunk (default ${BLOCK_ROWS.cpu.ce} on cpu, ${BLOCK_ROWS.cuda.ce} on cuda)`, cpu: '', cuda: '' },
};

/** The trainer's block-size options, as the suites pass them on. */
export type BlockRows = Pick<TrainerOptions, 'ffnBlockRows' | 'ceChunkRows'>;

/** The block sizes given (checked); absent ones are left to the trainer's defaults. */
export function blockRows(o: SuiteOptions): BlockRows {
  return {
    ...(o['ffn-block-rows'] ? { ffnBlockRows: intOption(o, 'ffn-block-rows') } : {}),
    ...(o['ce-chunk-rows'] ? { ceChunkRows: intOption(o, 'ce-chunk-rows') } : {}),
  };
}

/** The note of the block sizes a step ran with (StepMeasure.blocks). */
export const blockNote = (b: Required<BlockRows>) => `feed-forward blocks of ${b.ffnBlockRows} tokens, cross-entropy chunks of ${b.ceChunkRows}`;
