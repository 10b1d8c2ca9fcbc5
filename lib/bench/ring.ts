// `bench ring`: the ring of N in-process ranks on this device against single-device
// attention over the same total sequence, forward and backward, at per-rank blocks doubling
// from --min-block. The ranks share the device, so the work is equal: a ratio near 1 means
// the ring adds nothing (issue #5's target: <= 1.05 from 4K-token blocks). Under a launched
// job (one process per GPU, over NCCL) the ring is the job's and each GPU does 1/N of the
// work, so the ring's time is set against 1/N of one GPU's. Each ring call is also timed with
// its compute alone and its transfers alone: when the transfers hide under the compute, the
// whole takes about max(compute, transfers), not their sum.
import { attention, attentionBackward } from '../attention.js';
import { cudaSynchronize } from '../index.js';
import type { ProcessGroup } from '../group.js';
import { anyRankSays, gatherNumbers } from '../group-values.js';
import { launch } from '../launch.js';
import { initProcessGroup } from '../process-group.js';
import type { Layout } from '../shard.js';
import { freeOnThrow, tensor } from '../tensor.js';
import type { Column, SuiteResult } from './report.js';
import ringRank, { QUEUED, type RingParts, type RingRankArgs } from './ring-rank.js';
import type { RingStepTime } from '../ring.js';
import { LINKS, minOverlapBlock, peakTflops } from './flops.js';
import { groupTimeoutMs, intList, intOption, type Suite } from './suite.js';
import { medianMs, randomArray } from './timing.js';

export interface RingRow {
  ranks: number;
  block: number;
  total: number;
  singleForwardMs: number;
  singleBackwardMs: number;
  forward: RingParts;
  backward: RingParts;
  /** Single-device time per call of QUEUED calls back to back. */
  singleForwardQueuedMs: number;
  singleBackwardQueuedMs: number;
  /** Ring time / single-device time. */
  ratioForward: number;
  ratioBackward: number;
  /** The same, per call of QUEUED calls queued back to back on both sides. */
  ratioForwardQueued: number;
  ratioBackwardQueued: number;
  /** Whole / max(compute alone, transfers alone): 1 when the transfers hide completely. */
  overlapForward: number;
  overlapBackward: number;
  /** The same per step, inside the whole call (stepOverlap); null when no step did anything. */
  stepOverlapForward: number | null;
  stepOverlapBackward: number | null;
}

type SingleTimes = { forwardMs: number; backwardMs: number; forwardQueuedMs: number; backwardQueuedMs: number };
const NO_SINGLE: SingleTimes = { forwardMs: NaN, backwardMs: NaN, forwardQueuedMs: NaN, backwardQueuedMs: NaN };

function single(seq: number, a: RingRankArgs): SingleTimes {
  const opts = a.device === 'cuda' ? { dtype: 'bfloat16' as const, device: 'cuda' as const } : {};
  const make = (h: number) => tensor(randomArray(seq * h * a.dim), [1, seq, h, a.dim], opts);
  // A sequence too long for one device fails here, and the suite goes on to its next point:
  // nothing made before the failure may stay on the device.
  const [q, k, v, dout, fwd] = freeOnThrow(() => {
    const t = [make(a.heads), make(a.kvHeads), make(a.kvHeads), make(a.heads)] as const;
    return [...t, attention(t[0], t[1], t[2], { causal: a.causal })] as const;
  });
  const sync = a.device === 'cuda' ? cudaSynchronize : () => {};
  const forward = () => { const o = attention(q, k, v, { causal: a.causal }); o.out.dispose(); o.lse.dispose(); };
  const backward = () => {
    const g = attentionBackward(dout, q, k, v, fwd.out, fwd.lse, { causal: a.causal });
    g.dq.dispose(); g.dk.dispose(); g.dv.dispose();
  };
  const queued = (fn: () => void) => medianMs(() => { for (let i = 0; i < QUEUED; ++i) fn(); }, a.reps, sync) / QUEUED;
  try {
    return {
      forwardMs: medianMs(forward, a.reps, sync), backwardMs: medianMs(backward, a.reps, sync),
      forwardQueuedMs: queued(forward), backwardQueuedMs: queued(backward),
    };
  } finally {
    for (const t of [q, k, v, dout, fwd.out, fwd.lse]) t.dispose();
  }
}

// The slowest rank's figures (per step too: the slowest rank at each step).
const worst = (rs: { forward: RingParts; backward: RingParts }[], pass: 'forward' | 'backward'): RingParts => ({
  both: Math.max(...rs.map((r) => r[pass].both)),
  compute: Math.max(...rs.map((r) => r[pass].compute)),
  transfers: Math.max(...rs.map((r) => r[pass].transfers)),
  queued: Math.max(...rs.map((r) => r[pass].queued)),
  steps: rs[0]![pass].steps.map((_, i) => ({
    computeMs: Math.max(...rs.map((r) => r[pass].steps[i]!.computeMs)),
    transferMs: Math.max(...rs.map((r) => r[pass].steps[i]!.transferMs)),
    wholeMs: Math.max(...rs.map((r) => r[pass].steps[i]!.wholeMs)),
  })),
});

type RankFigures = { forward: RingParts; backward: RingParts };

/** Every rank's figures, on every rank (gatherNumbers). */
export function gatherFigures(group: ProcessGroup, mine: RankFigures, device: 'cpu' | 'cuda'): RankFigures[] {
  const flat = (p: RingParts) => [p.both, p.compute, p.transfers, p.queued, ...p.steps.flatMap((s) => [s.computeMs, s.transferMs, s.wholeMs])];
  const rows = gatherNumbers(group, [...flat(mine.forward), ...flat(mine.backward)], device);
  const steps = mine.forward.steps.length, half = rows[0]!.length / 2;
  const parts = (v: number[], at: number): RingParts => ({
    both: v[at]!, compute: v[at + 1]!, transfers: v[at + 2]!, queued: v[at + 3]!,
    steps: Array.from({ length: steps }, (_, i) => ({ computeMs: v[at + 4 + 3 * i]!, transferMs: v[at + 5 + 3 * i]!, wholeMs: v[at + 6 + 3 * i]! })),
  });
  return rows.map((v) => ({ forward: parts(v, 0), backward: parts(v, half) }));
}

/** A point that every rank of a launched job skips together (still in step). */
class SkippedPoint extends Error {}

/** Whether every rank says `ok` (one allReduce: a rank that is not in step fails it). */
export function allSucceeded(group: ProcessGroup, ok: boolean, device: 'cpu' | 'cuda'): boolean {
  return !anyRankSays(group, !ok, device);
}

/** Mean over steps of whole / max(compute, transfers), measured inside the whole call (steps doing neither left out). */
export function stepOverlap(steps: readonly RingStepTime[]): number | null {
  const ratios = steps.filter((s) => Math.max(s.computeMs, s.transferMs) > 0).map((s) => s.wholeMs / Math.max(s.computeMs, s.transferMs));
  return ratios.length ? ratios.reduce((a, b) => a + b, 0) / ratios.length : null;
}

export const ringSuite: Suite<RingRow> = {
  name: 'ring',
  summary: 'ring overhead against single-device attention for N in-process ranks or a launched job; compute and transfers apart',
  options: {
    ranks: { type: 'string', help: 'ring sizes', cpu: '2,4', cuda: '2,4,8', smoke: '2' },
    'min-block': { type: 'string', help: 'first per-rank block (tokens)', cpu: '256', cuda: '1024', smoke: '32' },
    'max-block': { type: 'string', help: 'last per-rank block (doubling)', cpu: '1024', cuda: '32768', smoke: '64' },
    heads: { type: 'string', help: 'query heads', cpu: '4', cuda: '16', smoke: '2' },
    'kv-heads': { type: 'string', help: 'key/value heads', cpu: '4', cuda: '16', smoke: '2' },
    dim: { type: 'string', help: 'head dim', cpu: '64', cuda: '128', smoke: '16' },
    layout: { type: 'string', help: 'contiguous or zigzag', cpu: 'zigzag', cuda: 'zigzag', choices: ['contiguous', 'zigzag'] },
    reps: { type: 'string', help: 'timed runs per figure (median)', cpu: '3', cuda: '5', smoke: '1' },
    'no-causal': { type: 'boolean', help: 'full attention instead of causal' },
    'timeout-minutes': { type: 'string', help: "launched: the NCCL group's timeout (the other ranks wait while rank 0 times one GPU alone)", cpu: '30', cuda: '30' },
  },
  async run(o, ctx) {
    const base = {
      heads: intOption(o, 'heads'), kvHeads: intOption(o, 'kv-heads'), dim: intOption(o, 'dim'), causal: !o['no-causal'],
      layout: o.layout as Layout, reps: intOption(o, 'reps'), device: ctx.device,
    };
    const launched = ctx.launchedWorldSize > 1;
    if (launched && ctx.device !== 'cuda') throw new RangeError('--device: a launched job rings over NCCL, which needs cuda');
    // On one device the ranks share it (the same work as one rank alone); launched, each has its own.
    const share = launched ? 1 / ctx.launchedWorldSize : 1;
    const points: [number, number][] = [];
    for (const n of launched ? [ctx.launchedWorldSize] : intList(o, 'ranks'))
      for (let b = intOption(o, 'min-block'); b <= intOption(o, 'max-block'); b *= 2) points.push([n, b]);
    // Launched, the other ranks wait in a collective while rank 0 times one GPU alone on the
    // whole sequence: a generous timeout by default.
    const timeoutMs = groupTimeoutMs(o);
    const group = launched ? await initProcessGroup({ backend: 'nccl', timeoutMs, rendezvousTimeoutMs: 30 * 60_000 }) : undefined;  // as before the option
    const rows: RingRow[] = [];
    const notes: string[] = [];
    // The result of the rows so far: after each point (partial), and at the end.
    const result = (): SuiteResult<RingRow> => {
      const all = [...notes];
      all.push((launched
        ? `ring/single: ring time over 1/${ctx.launchedWorldSize} of one GPU's time for the same total sequence (a launched job, one GPU per rank; --ranks is ignored); `
        : `ring/single: ring time over single-device time for the same total sequence (the ranks share ${ctx.device === 'cuda' ? 'one GPU' : 'the CPU'}); `) +
        `queued: the same ratio per call of ${QUEUED} calls queued back to back between one wait, on both sides (the host runs ahead ` +
        'of the device, as in a training step, so what a call costs the host before its first kernel hides, but for the first ' +
        `call of each batch: a fixed host cost per call shows at 1/${QUEUED}${launched ? '; over NCCL each call waits on the host for its transfers, which leaves less to queue' : ''}); ` +
        'whole/max: the whole ring call over the larger of its compute alone and its transfers alone (1.00: transfers fully hidden; ' +
        '(compute+transfers)/max: none hidden); per step: the same ratio for each step inside the whole call ' +
        '(its kernels, its block transfers, and the step from its compute\'s start to the next\'s), averaged over the steps ' +
        '(the backward\'s steps also hold the add of their dK/dV share, so they stay a little above 1.00); ' +
        'transfers between in-process GPU ranks are the copies alone; over NCCL and on the CPU they include waiting for the peer; ' +
        'every step\'s figures are in the JSON');
      if (ctx.device === 'cpu') all.push('on the CPU, in-process transfers pass pointers: there is nothing to hide, and the ranks contend for the same cores');
      const peak = peakTflops(ctx.machine.gpu) ?? { tflops: 989, matched: `H100/H200 SXM's; ${ctx.machine.gpu ? `${ctx.machine.gpu} is not in the table` : 'no GPU detected'}` };
      const k = (tokens: number) => `${(tokens / 1e3).toFixed(1)}K`;
      all.push(`the paper's rule for transfers to hide across GPUs, c >= F / B at ${peak.tflops} TFLOP/s (${peak.matched}): ` +
        LINKS.map(([link, gbs]) => `${link} at ${gbs} GB/s: c >= ${k(minOverlapBlock(peak.tflops, gbs))} tokens per rank block, ` +
          `${k(6 * minOverlapBlock(peak.tflops, gbs))} per rank (backward, whose float32 dK/dV travel too: c >= ` +
          `${k(minOverlapBlock(peak.tflops, gbs, 'backward'))})`).join('; '));
      return { suite: 'ring', params: o, rows, notes: all, columns: COLUMNS, chart: {
        title: 'Ring overhead: ring / single-device time (forward+backward)',
        x: { title: 'ranks', value: (r) => r.ranks, log2: true },
        y: { title: launched ? `ring time / (single-GPU time / ${ctx.launchedWorldSize})` : 'ring time / single-device time',
          value: (r) => (r.forward.both + r.backward.both) / ((r.singleForwardMs + r.singleBackwardMs) * share) },
        series: (r) => `block ${r.block}`,
        rule: { y: 1.05, label: 'target 1.05' },
      } };
    };
    const progress = ctx.progress(points.length);
    try {
      for (const [i, [ranks, block]] of points.entries()) {
        progress.start(`${ranks} ranks x ${block} tokens`);
        const args: RingRankArgs = { ...base, block };
        let results: { forward: RingParts; backward: RingParts }[], s: SingleTimes;
        try {
          if (group) {
            // Rank 0 alone times the whole sequence on its GPU (it may not fit there); every
            // rank learns whether it did, so that all skip the point together.
            let failed: unknown = null;
            try {
              s = ctx.launchedRank === 0 ? single(ranks * block, args) : NO_SINGLE;
            } catch (e) {
              failed = e;
              s = NO_SINGLE;
            }
            if (!allSucceeded(group, failed === null, ctx.device))
              throw new SkippedPoint(`one GPU alone cannot run the whole sequence${failed ? `: ${(failed as Error).message}` : ''}`);
            // A rank failing inside the ring leaves the others waiting in it until the group's
            // timeout; then each stops the suite (below) and rank 0 writes what it has.
            results = gatherFigures(group, ringRank({ group, args }), ctx.device);
          } else {
            s = single(ranks * block, args);
            results = await launch({ worldSize: ranks, device: ctx.device }, new URL('./ring-rank.js', import.meta.url), args) as typeof results;
          }
        } catch (e) {
          notes.push(`${ranks} ranks x ${block}: stopped (${(e as Error).message.split('\n')[0]})`);
          progress.done('does not run');
          if (group && !(e instanceof SkippedPoint)) break; // the ranks may no longer be in step
          continue;
        }
        const forward = worst(results, 'forward'), backward = worst(results, 'backward');
        const row: RingRow = {
          ranks, block, total: ranks * block, singleForwardMs: s.forwardMs, singleBackwardMs: s.backwardMs,
          singleForwardQueuedMs: s.forwardQueuedMs, singleBackwardQueuedMs: s.backwardQueuedMs, forward, backward,
          ratioForward: forward.both / (s.forwardMs * share), ratioBackward: backward.both / (s.backwardMs * share),
          ratioForwardQueued: forward.queued / (s.forwardQueuedMs * share), ratioBackwardQueued: backward.queued / (s.backwardQueuedMs * share),
          overlapForward: forward.both / Math.max(forward.compute, forward.transfers),
          overlapBackward: backward.both / Math.max(backward.compute, backward.transfers),
          stepOverlapForward: stepOverlap(forward.steps), stepOverlapBackward: stepOverlap(backward.steps),
        };
        rows.push(row);
        ctx.partial(result(), i + 1, points.length);
        progress.done(`ring/single fwd ${row.ratioForward.toFixed(2)}, bwd ${row.ratioBackward.toFixed(2)}; ` +
          `${QUEUED} queued: fwd ${row.ratioForwardQueued.toFixed(2)}, bwd ${row.ratioBackwardQueued.toFixed(2)}`);
      }
    } finally {
      progress.stop();
      group?.destroy();
    }
    return result();
  },
};

const COLUMNS: Column<RingRow>[] = [
  { header: 'ranks', value: (r) => r.ranks },
  { header: 'block', value: (r) => r.block },
  { header: 'total', value: (r) => r.total },
  { header: 'single fwd ms', value: (r) => r.singleForwardMs, digits: 2 },
  { header: 'ring fwd ms', value: (r) => r.forward.both, digits: 2 },
  { header: 'ring/single fwd', value: (r) => r.ratioForward, digits: 2 },
  { header: 'single bwd ms', value: (r) => r.singleBackwardMs, digits: 2 },
  { header: 'ring bwd ms', value: (r) => r.backward.both, digits: 2 },
  { header: 'ring/single bwd', value: (r) => r.ratioBackward, digits: 2 },
  { header: 'queued ring/single fwd', value: (r) => r.ratioForwardQueued, digits: 2 },
  { header: 'queued ring/single bwd', value: (r) => r.ratioBackwardQueued, digits: 2 },
  { header: 'fwd compute ms', value: (r) => r.forward.compute, digits: 2 },
  { header: 'fwd transfers ms', value: (r) => r.forward.transfers, digits: 2 },
  { header: 'fwd whole/max', value: (r) => r.overlapForward, digits: 2 },
  { header: 'bwd compute ms', value: (r) => r.backward.compute, digits: 2 },
  { header: 'bwd transfers ms', value: (r) => r.backward.transfers, digits: 2 },
  { header: 'bwd whole/max', value: (r) => r.overlapBackward, digits: 2 },
  { header: 'fwd per step whole/max', value: (r) => r.stepOverlapForward, digits: 2 },
  { header: 'bwd per step whole/max', value: (r) => r.stepOverlapBackward, digits: 2 },
];
