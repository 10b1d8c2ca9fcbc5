// `bench attention`: our attention kernels' forward, backward and forward+backward TFLOP/s
// against sequence length, beside PyTorch's scaled_dot_product_attention (each backend torch
// offers on this device) in the same run when python3 can import torch. FLOPs: forward
// 4·b·s²·h·d, halved when causal; backward 2.5x forward; recomputation not counted.
// bfloat16 on CUDA (flash-attention's benchmark shapes: batch x seq = 16K tokens, heads x dim
// = 2048), float32 on the CPU. --documents N packs N equal documents into each sequence (ours:
// documentIds; torch: a batch of N times as many separate sequences, the same work), FLOPs
// counted within documents only.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';

import { attention, attentionBackward } from '../attention.js';
import { cudaMemoryStats, cudaSynchronize, hostMemoryStats, resetPeakMemoryStats } from '../index.js';
import { freeOnThrow, tensor, type Tensor } from '../tensor.js';
import { medianMs, randomArray } from './timing.js';
import { packageRoot, type Column, type SuiteResult } from './report.js';
import { intList, intOption, type Suite } from './suite.js';

interface Config { batch: number; seq: number; heads: number; dim: number; causal: boolean; documents: number }

interface Timings { forwardMs: number; backwardMs: number; totalMs: number; peakBytes?: number }

export interface AttentionRow extends Config {
  /** 'ours' or a torch backend (flash, cudnn, efficient, math). */
  impl: string;
  forwardMs: number | null;
  backwardMs: number | null;
  totalMs: number | null;
  forwardTflops: number | null;
  backwardTflops: number | null;
  totalTflops: number | null;
  /** Ours: most bytes held during the runs, inputs included (the issue's memory target is O(seq)). */
  peakBytes: number | null;
  /** Ours: fastest torch backend's fwd+bwd time / ours (above 1: ours faster). */
  ratioToBestTorch: number | null;
  error?: string;
}

const flops = (c: Config) => (4 * c.batch * (c.seq * c.seq / c.documents) * c.heads * c.dim) / (c.causal ? 2 : 1);
/** Each row of the batch: documents 0, 1, ... of seq / documents tokens each. */
const documentIds = (c: Config) => Int32Array.from({ length: c.batch * c.seq }, (_, i) => Math.floor((i % c.seq) / (c.seq / c.documents)));
const tf = (f: number, ms: number | null | undefined) => (ms ? f / (ms * 1e-3) / 1e12 : null);

function ours(c: Config, device: 'cpu' | 'cuda', reps: number, deterministic: boolean): Timings {
  const shape = [c.batch, c.seq, c.heads, c.dim];
  const n = shape.reduce((a, b) => a * b, 1);
  const opts = device === 'cuda' ? { dtype: 'bfloat16' as const, device: 'cuda' as const } : {};
  const o = { causal: c.causal, deterministic, ...(c.documents > 1 ? { documentIds: documentIds(c) } : {}) };
  const sync = device === 'cuda' ? cudaSynchronize : () => {};
  const dispose = (...ts: Tensor[]) => ts.forEach((t) => t.dispose());
  resetPeakMemoryStats();
  const [q, k, v, dout, fwd] = freeOnThrow(() => {
    const t = [0, 1, 2, 3].map(() => tensor(randomArray(n), shape, opts)) as [Tensor, Tensor, Tensor, Tensor];
    return [...t, attention(t[0], t[1], t[2], o)] as const;
  });
  try {
    return {
      forwardMs: medianMs(() => { const r = attention(q, k, v, o); dispose(r.out, r.lse); }, reps, sync),
      backwardMs: medianMs(() => {
        const g = attentionBackward(dout, q, k, v, fwd.out, fwd.lse, o);
        dispose(g.dq, g.dk, g.dv);
      }, reps, sync),
      totalMs: medianMs(() => freeOnThrow(() => {
        const r = attention(q, k, v, o);
        const g = attentionBackward(dout, q, k, v, r.out, r.lse, o);
        dispose(r.out, r.lse, g.dq, g.dk, g.dv);
      }), reps, sync),
    };
  } finally {
    dispose(q, k, v, dout, fwd.out, fwd.lse);
  }
}

/** ours() with the peak memory of its runs. */
function oursMeasured(c: Config, device: 'cpu' | 'cuda', reps: number, deterministic = false): Timings {
  const t = ours(c, device, reps, deterministic);
  return { ...t, peakBytes: (device === 'cuda' ? cudaMemoryStats() : hostMemoryStats()).peakBytesInUse };
}

/** f() with the Hopper kernels asked for (native/cuda/flash/dispatch.cu reads the variable per call). */
function withSm90<R>(f: () => R): R {
  const before = process.env.RING_ATTENTION_SM90;
  process.env.RING_ATTENTION_SM90 = '1';
  try {
    return f();
  } finally {
    if (before === undefined) delete process.env.RING_ATTENTION_SM90;
    else process.env.RING_ATTENTION_SM90 = before;
  }
}

type TorchRow = Partial<Timings> & { id: number; backend: string; error?: string };

const TORCH_TIMEOUT_MS = 30 * 60_000; // far past what a sweep needs: only a hung torch (a wedged GPU) meets it

/** Torch's rows (`id`: the index of their config), or why there are none. Packed documents run
 * as a batch of separate sequences. */
function torchRows(configs: Config[], reps: number, device: string): { rows: TorchRow[]; meta: unknown } | string {
  const script = join(packageRoot, 'bench', 'sdpa_bench.py');
  const plain = configs.map((c, id) => ({ id, batch: c.batch * c.documents, seq: c.seq / c.documents, heads: c.heads, dim: c.dim, causal: c.causal }));
  // Bounded: a hung torch (a wedged GPU) costs its rows, not the suite.
  const r = spawnSync('python3', [script, JSON.stringify(plain), String(reps), device], { encoding: 'utf8', maxBuffer: 1 << 26, timeout: TORCH_TIMEOUT_MS, killSignal: 'SIGKILL' });
  if (r.error) return r.error.message; // not started, or killed at the limit (ETIMEDOUT)
  if (r.status !== 0) return (r.stderr || `exit ${r.status}`).trim().split('\n').pop()!;
  const [meta, ...rows] = r.stdout.trim().split('\n').map((l) => JSON.parse(l));
  return { meta, rows };
}

export const attentionSuite: Suite<AttentionRow> = {
  name: 'attention',
  summary: 'our attention kernels beside PyTorch SDPA, TFLOP/s against sequence length',
  options: {
    'min-seq': { type: 'string', help: 'first sequence length', cpu: '256', cuda: '1024', smoke: '64' },
    'max-seq': { type: 'string', help: 'last sequence length (doubling)', cpu: '2048', cuda: '32768', smoke: '128' },
    dims: { type: 'string', help: 'head dims', cpu: '64,128', cuda: '64,128', smoke: '32' },
    'head-width': { type: 'string', help: 'heads x head dim', cpu: '256', cuda: '2048', smoke: '64' },
    tokens: { type: 'string', help: 'batch x seq per config (batch 1 beyond)', cpu: '2048', cuda: '16384', smoke: '128' },
    reps: { type: 'string', help: 'timed runs per figure (median)', cpu: '3', cuda: '10', smoke: '1' },
    documents: { type: 'string', help: 'equal documents packed end to end in each sequence', cpu: '1', cuda: '1', smoke: '1' },
    causal: { type: 'string', help: 'which masks to time: both, yes (causal only) or no', cpu: 'both', cuda: 'both', choices: ['both', 'yes', 'no'] },
    'no-torch': { type: 'boolean', help: 'do not run PyTorch' },
    sm90: { type: 'boolean', help: "also time the Hopper kernels (RING_ATTENTION_SM90=1; off by default), as rows 'ours sm90'" },
    deterministic: { type: 'boolean', help: "also time the deterministic backward (dQ in a pass of its own, no atomics), as rows 'ours det' (and 'ours sm90 det' with --sm90)" },
  },
  async run(o, ctx) {
    const reps = intOption(o, 'reps'), width = intOption(o, 'head-width'), tokens = intOption(o, 'tokens');
    const documents = intOption(o, 'documents');
    if (o.sm90 && ctx.device !== 'cuda') throw new RangeError(`--sm90: the Hopper kernels run on CUDA devices only; this run is on the ${ctx.device}`);
    const configs: Config[] = [];
    const masks = o.causal === 'yes' ? [true] : o.causal === 'no' ? [false] : [false, true];
    for (const dim of intList(o, 'dims'))
      for (const causal of masks)
        for (let seq = intOption(o, 'min-seq'); seq <= intOption(o, 'max-seq'); seq *= 2) {
          if (seq % documents !== 0) throw new RangeError(`--documents: expected a divisor of every sequence length, got ${documents} for ${seq}`);
          configs.push({ batch: Math.max(1, Math.floor(tokens / seq)), seq, heads: Math.max(1, Math.floor(width / dim)), dim, causal, documents });
        }
    const notes: string[] = [];
    const torch = o['no-torch'] ? 'not asked for (--no-torch)' : torchRows(configs, reps, ctx.device);
    if (typeof torch === 'string') notes.push(`PyTorch SDPA not measured: ${torch}`);
    else notes.push(`PyTorch: ${JSON.stringify(torch.meta)}`);

    const rows: AttentionRow[] = [];
    // The result of the rows so far: after each point (partial), and at the end.
    const result = (): SuiteResult<AttentionRow> => {
      const all = [...notes];
      all.push(`ours/torch: the fastest torch backend's fwd+bwd time over ours, per row (above 1: ours is faster); ${ctx.device === 'cuda' ? 'bfloat16' : 'float32'}`);
      if (process.env.RING_ATTENTION_SM90 === '1')
        all.push("'ours': RING_ATTENTION_SM90=1 was set, so the Hopper kernels ran wherever they apply (head dims 64 and 128 on sm_90)");
      if (o.sm90 && process.env.RING_ATTENTION_SM90_PINGPONG === '0')
        all.push("'ours sm90': RING_ATTENTION_SM90_PINGPONG=0, the Hopper forward without its ping-pong");
      const prefetch = process.env.RING_ATTENTION_BWD_PREFETCH;
      if (ctx.device === 'cuda' && (prefetch === '0' || prefetch === '1'))
        all.push(`RING_ATTENTION_BWD_PREFETCH=${prefetch}: the default backward kernels ${prefetch === '0' ? 'never' : 'always, where it fits,'} loaded their next tile one step ahead`);
      if (o.deterministic && ctx.device === 'cpu') all.push("'ours det': the CPU backward is deterministic anyway; these rows time the same code");
      if (documents > 1)
        all.push(`packed: ${documents} equal documents end to end in each sequence (ours: documentIds; torch: a batch of ${documents}x as many separate sequences); FLOPs counted within documents`);
      return { suite: 'attention', params: o, rows, notes: all, columns: COLUMNS, chart: {
        title: 'Attention forward+backward TFLOP/s',
        x: { title: 'sequence length', value: (r) => r.seq, log2: true },
        y: { title: 'TFLOP/s (fwd+bwd)', value: (r) => r.totalTflops },
        series: (r) => `${r.impl}, d${r.dim}${r.causal ? ', causal' : ''}${r.documents > 1 ? `, ${r.documents} documents` : ''}`,
      } };
    };
    const progress = ctx.progress(configs.length);
    try {
      for (const [id, c] of configs.entries()) {
        progress.start(`seq ${c.seq} dim ${c.dim}${c.causal ? ' causal' : ''}`);
        const f = flops(c);
        const row = (impl: string, t: Partial<Timings>, error?: string): AttentionRow => ({
          ...c, impl, forwardMs: t.forwardMs ?? null, backwardMs: t.backwardMs ?? null, totalMs: t.totalMs ?? null,
          forwardTflops: tf(f, t.forwardMs), backwardTflops: tf(2.5 * f, t.backwardMs), totalTflops: tf(3.5 * f, t.totalMs),
          peakBytes: t.peakBytes ?? null, ratioToBestTorch: null, ...(error ? { error } : {}),
        });
        const mine = row('ours', oursMeasured(c, ctx.device, reps));
        const hopper = o.sm90 ? [row('ours sm90', withSm90(() => oursMeasured(c, ctx.device, reps)))] : [];
        const det = !o.deterministic ? [] : [row('ours det', oursMeasured(c, ctx.device, reps, true)),
          ...(o.sm90 ? [row('ours sm90 det', withSm90(() => oursMeasured(c, ctx.device, reps, true)))] : [])];
        const theirs = typeof torch === 'string' ? [] : torch.rows
          .filter((r) => r.id === id)
          .map((r) => row(`torch ${r.backend}`, r, r.error));
        const best = theirs.filter((r) => r.totalMs).sort((a, b) => a.totalMs! - b.totalMs!)[0];
        if (best) for (const r of [mine, ...hopper, ...det]) r.ratioToBestTorch = best.totalMs! / r.totalMs!;
        rows.push(mine, ...hopper, ...det, ...theirs);
        ctx.partial(result(), id + 1, configs.length);
        progress.done(`ours ${mine.totalTflops!.toFixed(3)} TFLOP/s fwd+bwd${best ? `, x${mine.ratioToBestTorch!.toFixed(2)} torch ${best.impl.slice(6)}` : ''}`);
      }
    } finally {
      progress.stop();
    }
    return result();
  },
};

const COLUMNS: Column<AttentionRow>[] = [
  { header: 'impl', value: (r) => r.impl },
  { header: 'seq', value: (r) => r.seq },
  { header: 'batch', value: (r) => r.batch },
  { header: 'heads', value: (r) => r.heads },
  { header: 'dim', value: (r) => r.dim },
  { header: 'causal', value: (r) => (r.causal ? 'yes' : 'no') },
  { header: 'docs', value: (r) => r.documents },
  { header: 'fwd TFLOP/s', value: (r) => r.forwardTflops, digits: 3 },
  { header: 'bwd TFLOP/s', value: (r) => r.backwardTflops, digits: 3 },
  { header: 'fwd+bwd TFLOP/s', value: (r) => r.totalTflops, digits: 3 },
  { header: 'ours/torch', value: (r) => r.ratioToBestTorch, digits: 2 },
  { header: 'peak MiB', value: (r) => (r.peakBytes === null ? null : r.peakBytes / 2 ** 20), digits: 1 },
  { header: 'error', value: (r) => r.error ?? null },
];
