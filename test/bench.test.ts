// The benchmark suites: their arithmetic checked by hand, and each suite run end to end on the
// CPU at --smoke sizes through the CLI (what `npm run bench -- <suite>` runs), its JSON, CSV
// and SVG read back and checked for consistency.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

import { flopsPerToken, matmulParameters, minOverlapBlock, peakTflops, stepFlopsByFamily } from '../dist/bench/flops.js';
import { fitLine } from '../dist/bench/memory.js';
import { familyRates, jobShape } from '../dist/bench/mfu.js';
import { predictedNotToFit } from '../dist/bench/suite.js';
import { commitOf, formatTable } from '../dist/bench/report.js';
import { median } from '../dist/bench/timing.js';
import { familyOf, profile } from '../dist/bench/profile.js';
import { measureStep, type StepArgs } from '../dist/bench/train-step.js';
import { stepOverlap } from '../dist/bench/ring.js';
import { native } from '../dist/native.js';
import {
  createTrainer, hostMemoryStats, initLlama, launch, llamaPresets, parameterCount, tensor,
} from '../dist/index.js';

const root = join(import.meta.dirname, '..');
const out = mkdtempSync(join(tmpdir(), 'ring-attention-bench-'));
afterAll(() => rmSync(out, { recursive: true, force: true }));

function bench(...args: string[]) {
  const r = spawnSync(process.execPath, [join(root, 'dist', 'cli.js'), 'bench', ...args], { encoding: 'utf8', timeout: 300_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

interface Written { json: Record<string, unknown> & { rows: Record<string, unknown>[] }; csv: string[]; svg: string }

/** Runs a suite at smoke sizes into its own folder and reads back what it wrote. */
function smoke(suite: string, ...args: string[]): Written & { stdout: string; stderr: string } {
  const dir = join(out, suite);
  const r = bench(suite, '--smoke', '--device', 'cpu', '--out-dir', dir, ...args);
  expect(r.status, r.stderr).toBe(0);
  const file = (ext: string) => join(dir, readdirSync(dir).find((f) => f.endsWith(ext))!);
  return {
    json: JSON.parse(readFileSync(file('.json'), 'utf8')),
    csv: readFileSync(file('.csv'), 'utf8').trim().split('\n'),
    svg: readFileSync(file('.svg'), 'utf8'),
    stdout: r.stdout, stderr: r.stderr,
  };
}

function checkCommon(w: Written, suite: string): void {
  expect(w.json.suite).toBe(suite);
  expect(w.json.command).toMatch(new RegExp(`^ring-attention bench ${suite} --smoke`));
  expect(w.json.date).toMatch(/^\d{4}-\d\d-\d\dT/);
  expect(w.json.commit).toMatch(/^([0-9a-f]{7,}|v\d)/);
  expect(w.json.machine).toMatchObject({ device: 'cpu', gpu: null, node: process.version });
  expect(w.json.rows.length).toBeGreaterThan(0);
  expect(w.csv.length).toBe(w.json.rows.length + 1); // a header, then one line per row
  expect(w.svg.startsWith('<svg')).toBe(true);
  expect(w.svg).toContain('<path'); // lines were drawn
  expect(w.json.partial).toBeUndefined(); // the end rewrote the files written after each point
  expect((w.json.notes as string[]).some((n) => n.startsWith('partial'))).toBe(false);
}

describe('FLOP accounting and peaks', () => {
  it('counts the matmul parameters of Llama-2-7B by hand', () => {
    const layer = 4 * 4096 * 4096 + 3 * 4096 * 11008;
    const expected = 32 * layer + 32000 * 4096; // the LM head; the embedding lookup is no matmul
    expect(matmulParameters(llamaPresets['7B'])).toBe(expected);
    // = all parameters less the embedding and the 2L+1 norm vectors
    expect(parameterCount(llamaPresets['7B']) - 32000 * 4096 - 65 * 4096).toBe(expected);
    expect(flopsPerToken(llamaPresets['7B'], 4096)).toBe(6 * expected + (12 * 32 * 4096 * 4096) / 2);
    expect(flopsPerToken(llamaPresets['7B'], 4096, false)).toBe(6 * expected + 12 * 32 * 4096 * 4096);
  });

  it('counts GQA (Llama-3.2-1B, tied head) by hand', () => {
    const layer = 2048 * 2048 + 2 * 2048 * 512 + 2048 * 2048 + 3 * 2048 * 8192;
    expect(matmulParameters(llamaPresets['1B'])).toBe(16 * layer + 128256 * 2048);
  });

  it("counts the FLOPs a 1B step's kernels run, by family, recomputation included, by hand", () => {
    const S = 16384, L = 16;
    const scores = (S * S) / 2; // causal
    const attentionFwd = L * 4 * scores * 32 * 64; // QK^T and PV, 2 FLOPs a multiply-add each
    const proj = L * 2 * S * (2048 * 2048 + 2 * 2048 * 512 + 2048 * 2048); // q, k, v, o
    const ffnProduct = L * 2 * S * 2048 * 8192;
    const want = (fwdRuns: number, projRuns: number) => ({
      attention: attentionFwd * (fwdRuns + 2.5),
      'feed-forward': ffnProduct * 11, // 3 forward; ffnBackward: gate and up again, then 6 for the gradients
      'linear (q,k,v,o)': proj * (projRuns + 2),
      'LM head + loss': 3 * 2 * S * 2048 * 128256,
    });
    expect(stepFlopsByFamily(llamaPresets['1B'], S, true)).toEqual(want(2, 2));
    expect(stepFlopsByFamily(llamaPresets['1B'], S, 'keep-attention')).toEqual(want(1, 2));
    expect(stepFlopsByFamily(llamaPresets['1B'], S, false)).toEqual(want(1, 1));
    // The H200's 16K step of 2026-12-04 (bench/results/mfu-cuda-2026-12-04-3f61040.json):
    // attention 601.45 ms -> 131.6 TFLOP/s, the README's "about 130".
    expect(stepFlopsByFamily(llamaPresets['1B'], S, true).attention / 0.60145 / 1e12).toBeCloseTo(131.6, 1);
  });

  it('looks up dense bfloat16 peaks from CUDA device names', () => {
    expect(peakTflops('NVIDIA H100 80GB HBM3')?.tflops).toBe(989);
    expect(peakTflops('NVIDIA H100 PCIe')?.tflops).toBe(756);
    expect(peakTflops('NVIDIA H100 NVL')?.tflops).toBe(835);
    expect(peakTflops('NVIDIA H200')?.tflops).toBe(989);
    expect(peakTflops('NVIDIA H200 NVL')?.tflops).toBe(835); // not the SXM part's 989
    expect(peakTflops('NVIDIA H800 PCIe')?.tflops).toBe(756);
    expect(peakTflops('NVIDIA GH200 480GB')?.tflops).toBe(989);
    expect(peakTflops('NVIDIA GB200')?.tflops).toBe(2500);
    expect(peakTflops('NVIDIA B200')?.tflops).toBe(2250);
    expect(peakTflops('NVIDIA A100 80GB PCIe')?.tflops).toBe(312);
    expect(peakTflops('NVIDIA A100-SXM4-80GB')?.tflops).toBe(312);
    expect(peakTflops('nvidia h100 80gb pcie')?.tflops).toBe(756); // any case, words between
    expect(peakTflops('NVIDIA L4')?.tflops).toBe(121);
    expect(peakTflops('NVIDIA L40')?.tflops).toBe(181); // not L4's, nor L40S's
    expect(peakTflops('NVIDIA L40S')?.tflops).toBe(362);
    expect(peakTflops('NVIDIA GeForce GTX 1080')).toBeNull();
    expect(peakTflops(null)).toBeNull();
  });

  it("a launched job's MFU is against all its GPUs, its family rates per rank and only with zigzag; in-process ranks share one GPU and give no rates", () => {
    // Only a launched NCCL job (GPUs) reaches the launched cases through the suite itself.
    expect(jobShape(4, true, 'zigzag')).toEqual({ devices: 4, ratesMeasurable: true });
    expect(jobShape(4, true, 'contiguous')).toEqual({ devices: 4, ratesMeasurable: false });
    expect(jobShape(4, false, 'zigzag')).toEqual({ devices: 1, ratesMeasurable: false });
    expect(jobShape(1, false, 'contiguous')).toEqual({ devices: 1, ratesMeasurable: true });
    expect(familyRates({ attention: 8e12, 'feed-forward': 2e12, embedding: 1e9 }, { attention: 1000, 'feed-forward': 250 }, 4))
      .toEqual({ attention: 2, 'feed-forward': 2 });
  });

  it('the table shows a missing, infinite or NaN value as -, and numbers to their digits', () => {
    const table = formatTable([{ header: 'x', value: (r: number | null) => r, digits: 1 }], [Infinity, NaN, null, 2.25]);
    expect(table.split('\n').map((l) => l.trim())).toEqual(['x', '---', '-', '-', '-', '2.3']);
  });

  it("records the package's own commit, marked -dirty when tracked files differ; inside another project's checkout, its version", () => {
    const dir = mkdtempSync(join(tmpdir(), 'ra-commit-'));
    const git = (...args: string[]) => execFileSync('git', ['-c', 'user.name=t', '-c', 'user.email=t@t', ...args], { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] }).toString().trim();
    mkdirSync(join(dir, 'pkg'));
    writeFileSync(join(dir, 'pkg', 'package.json'), '{ "version": "9.8.7" }\n');
    git('init', '-q');
    git('add', '.');
    git('commit', '-qm', 'x');
    const head = git('rev-parse', '--short', 'HEAD');
    expect(commitOf(dir)).toBe(head);
    writeFileSync(join(dir, 'untracked.txt'), 'x');
    expect(commitOf(dir)).toBe(head); // untracked files do not count
    writeFileSync(join(dir, 'pkg', 'package.json'), '{ "version": "9.8.8" }\n');
    expect(commitOf(dir)).toBe(`${head}-dirty`);
    expect(commitOf(join(dir, 'pkg'))).toBe('v9.8.8'); // installed under a user's project: not that project's HEAD
    rmSync(dir, { recursive: true, force: true });
  });

  it('takes the median of an odd count, and the mean of the two middle values of an even one', () => {
    expect(median([5, 1, 3])).toBe(3);
    expect(median([4, 1, 3, 10])).toBe(3.5);
  });

  it('fits a line', () => {
    const f = fitLine([1, 2, 4, 8], [5, 7, 11, 19]);
    expect(f.slope).toBeCloseTo(2, 12);
    expect(f.intercept).toBeCloseTo(3, 12);
    expect(f.r2).toBeCloseTo(1, 12);
    expect(fitLine([1, 2, 3], [1, 3, 2]).r2).toBeLessThan(0.5);
  });

  it("a doubling search skips a context whose peak, on the line through the last two, is over the GPU's memory", () => {
    const GiB = 2 ** 30;
    // 20.7 GiB of weights and state plus 0.18 GiB a 1K tokens (the 1B preset's shape, computed)
    const rows = [256, 512].map((k) => ({ context: k * 1024, peakBytes: (20.7 + 0.18 * k) * GiB }));
    expect(predictedNotToFit(rows, 1024 * 1024, 139 * GiB)).toBe(
      'not tried: contexts 262144 and 524288 predict a peak of 205.0 GiB, over the GPU\'s 139.0 GiB');
    expect(predictedNotToFit(rows, 1024 * 1024, 210 * GiB)).toBeNull(); // fits: tried
    expect(predictedNotToFit(rows.slice(1), 1024 * 1024, 139 * GiB)).toBeNull(); // one point draws no line
    expect(predictedNotToFit(rows, 1024 * 1024, null)).toBeNull(); // the CPU: no limit known
  });
});

describe('profiling by op family', () => {
  it('names the families of the native calls a step makes', () => {
    expect(familyOf('ringBackward')).toBe('attention');
    expect(familyOf('opsFfnBackward')).toBe('feed-forward');
    expect(familyOf('opsCrossEntropy')).toBe('LM head + loss');
    expect(familyOf('opsAdamW')).toBe('optimizer + clipping');
    expect(familyOf('opsAdamWMulti')).toBe('optimizer + clipping');
    expect(familyOf('opsAdd')).toBe('residual adds');
    expect(familyOf('groupAllReduce')).toBe('gradient all-reduce');
    for (const f of ['ncclAllReduceAsync', 'ncclWaitAllReduce']) expect(familyOf(f), f).toBe('gradient all-reduce');
    expect(familyOf('createTensor')).toBeNull();
  });

  it('times a training step by family and puts the native functions back', () => {
    const before = native.opsLinear;
    using model = initLlama(llamaPresets.tiny, { seed: 3 });
    using trainer = createTrainer(model, { lr: 1e-3 });
    const t = Int32Array.from({ length: 64 }, (_, i) => (i * 7) % 256);
    const ms = profile(() => void trainer.step(t, t), () => {});
    expect(native.opsLinear).toBe(before);
    for (const f of ['attention', 'linear (q,k,v,o)', 'feed-forward', 'LM head + loss', 'RMSNorm', 'RoPE', 'embedding', 'residual adds', 'optimizer + clipping'])
      expect(ms[f], f).toBeGreaterThan(0);
    expect(ms.other).toBeGreaterThanOrEqual(0);
  });
});

describe('memory accounting', () => {
  it('counts host tensor bytes, and a training step gives back everything it took', () => {
    const base = hostMemoryStats().bytesInUse;
    const t = tensor(new Float32Array(1000), [1000]);
    expect(hostMemoryStats().bytesInUse - base).toBe(4032); // 4000 bytes, 64-byte aligned
    t.dispose();
    expect(hostMemoryStats().bytesInUse).toBe(base);

    using model = initLlama(llamaPresets.tiny, { seed: 3 });
    using trainer = createTrainer(model, { lr: 1e-3, checkpoint: true });
    const held = hostMemoryStats().bytesInUse, handles = hostMemoryStats().handles;
    const tokens = Int32Array.from({ length: 128 }, (_, i) => i % 256);
    trainer.step(tokens, tokens);
    trainer.step(tokens, tokens);
    expect(hostMemoryStats().bytesInUse).toBe(held); // nothing left for the garbage collector
    expect(hostMemoryStats().handles).toBe(handles); // nor any handle's native object
    expect(hostMemoryStats().peakBytesInUse).toBeGreaterThan(held);
  });
});

describe('ring parts (benchmarks only)', () => {
  it('refuses an unknown part by name', async () => {
    const err = await launch({ worldSize: 2 }, new URL('./fixtures/ring-parts.mjs', import.meta.url), { parts: 'bogus' }).catch((e: Error) => e);
    expect(String(err)).toMatch(/opts\.parts/);
  });

  it('runs the compute alone and the transfers alone without a hang, on both passes; the transfers alone compute nothing', async () => {
    type Part = { out: number; dk: number; noKeys: boolean };
    const results = await launch({ worldSize: 3 }, new URL('./fixtures/ring-parts.mjs', import.meta.url), {}) as { finite: boolean[]; parts: Record<string, Part> }[];
    expect(results.map((r) => r.finite)).toEqual([[true, true, true, true], [true, true, true, true], [true, true, true, true]]);
    for (const r of results) {
      expect(r.parts.transfers).toEqual({ out: 0, dk: 0, noKeys: true });
      expect(r.parts.compute!.out).toBeGreaterThan(0);
      expect(r.parts.compute!.dk).toBeGreaterThan(0);
      expect(r.parts.compute!.noKeys).toBe(false);
    }
  });
});

describe('ring step times (benchmarks only)', () => {
  type Step = { computeMs: number; transferMs: number; wholeMs: number };
  type Times = { forward: Step[]; backward: Step[]; forwardCallMs: number; backwardCallMs: number };
  it('one entry per step; each step within the call, its compute within the step; skipped steps and transfers alone compute nothing', async () => {
    const N = 3;
    const results = await launch({ worldSize: N }, new URL('./fixtures/ring-steps.mjs', import.meta.url), {}) as Record<'both' | 'transfers', Times>[];
    results.forEach((r, rank) => {
      for (const pass of ['forward', 'backward'] as const) {
        const steps = r.both[pass], callMs = r.both[`${pass}CallMs`];
        expect(steps, `rank ${rank} ${pass}`).toHaveLength(N);
        for (const s of steps) {
          expect(Math.min(s.computeMs, s.transferMs)).toBeGreaterThanOrEqual(0);
          expect(s.computeMs).toBeLessThanOrEqual(s.wholeMs + 1e-6);
        }
        expect(steps.reduce((a, s) => a + s.wholeMs, 0)).toBeLessThanOrEqual(callMs);
        // Causal and contiguous: rank r computes at steps 0..r (blocks of ranks r, r-1, ..., 0), none later.
        steps.forEach((s, step) => (step <= rank ? expect(s.computeMs, `rank ${rank} step ${step}`).toBeGreaterThan(0)
          : expect(s.computeMs, `rank ${rank} step ${step}`).toBe(0)));
        // Every step but the forward's last moves a block (the backward's last brings our dK/dV home).
        steps.forEach((s, step) => (pass === 'forward' && step === N - 1 ? expect(s.transferMs).toBe(0) : expect(s.transferMs).toBeGreaterThan(0)));
        expect(r.transfers[pass].every((s) => s.computeMs === 0)).toBe(true);
      }
    });
  });

  it('refuses a callback that is not a function, by name; one that throws leaves no result behind', async () => {
    const [r] = await launch({ worldSize: 1 }, new URL('./fixtures/ring-steps.mjs', import.meta.url), { badCallback: true }) as Record<string, unknown>[];
    expect(r!.error).toBe('TypeError: opts.onStepTimes: expected a function, got number 5');
    expect([r!.forwardThrown, r!.backwardThrown]).toEqual(['from the callback', 'from the callback']);
    expect([r!.forwardKept, r!.backwardKept, r!.keptInAll]).toEqual([0, 0, 0]);
  });
});

describe('bench ring across a launched job', () => {
  it("gathers every rank's figures on every rank, as they were; every rank learns that one failed", async () => {
    const results = await launch({ worldSize: 3 }, new URL('./fixtures/ring-gather.mjs', import.meta.url), { failing: 1 }) as
      { figures: unknown; allOk: boolean; oneFailed: boolean }[];
    const figures = (rank: number, pass: number) => ({
      both: rank * 100 + pass + 0.5, compute: rank * 100 + pass + 0.25, transfers: rank * 100 + pass + 0.125, queued: rank * 100 + pass + 0.375,
      steps: [0, 1, 2].map((i) => ({ computeMs: rank * 100 + pass + 10 * i + 1, transferMs: rank * 100 + pass + 10 * i + 2, wholeMs: rank * 100 + pass + 10 * i + 3 })),
    });
    const all = [0, 1, 2].map((r) => ({ forward: figures(r, 0), backward: figures(r, 50) }));
    for (const r of results) expect(r).toEqual({ figures: all, allOk: true, oneFailed: false });
  });
});

describe('ring-attention bench (CPU, smoke sizes)', () => {
  it('mfu: tokens/s and TFLOP/s follow from the step time and the FLOP count', () => {
    const w = smoke('mfu');
    checkCommon(w, 'mfu');
    for (const r of w.json.rows as unknown as { context: number; stepMs: number; tokensPerSecond: number; tflops: number; mfu: null; breakdownMs: Record<string, number>; familyTflops: Record<string, number> }[]) {
      expect(r.tokensPerSecond).toBeCloseTo(r.context / (r.stepMs / 1e3), 6);
      expect(r.tflops).toBeCloseTo((flopsPerToken(llamaPresets.tiny, r.context) * r.context) / (r.stepMs / 1e3) / 1e12, 9);
      expect(r.mfu).toBeNull(); // no peak is known for a CPU
      expect(r.breakdownMs.attention).toBeGreaterThan(0);
      const flops = stepFlopsByFamily(llamaPresets.tiny, r.context, true);
      for (const f of ['attention', 'feed-forward', 'linear (q,k,v,o)', 'LM head + loss'])
        expect(r.familyTflops[f], f).toBeCloseTo(flops[f]! / (r.breakdownMs[f]! / 1e3) / 1e12, 12);
    }
    expect(w.stdout).toMatch(/MFU not computed: no peak known/);
    expect(w.stdout).toMatch(/the kernels' rates there \(FLOPs they run, recomputation included.*\): attention \d.*TFLOP\/s, feed-forward /);
    expect(w.stderr).toMatch(/\[mfu 1\/2\] context 64: /); // plain progress lines when not a terminal
  });

  it('mfu: MFU against a given peak; no rates per family for in-process ranks', () => {
    const w = smoke('mfu', '--peak-tflops', '0.5', '--ranks', '2');
    const r = w.json.rows[0] as { tflops: number; mfu: number; ranks: number; familyTflops: unknown };
    expect(r.ranks).toBe(2);
    expect(r.mfu).toBeCloseTo(r.tflops / 0.5, 12); // both ranks ran on the one device
    expect(w.stdout).toMatch(/2 in-process ranks share one device; MFU is against its peak/);
    expect(r.familyTflops).toBeNull(); // rank 0's profile would time the other rank's kernels too
    expect(w.stdout).toMatch(/no rates per family: in-process ranks share one device/);
  });

  it('mfu --steps 0 --no-breakdown: one step per length, timed as it runs, no profile', () => {
    const w = smoke('mfu', '--steps', '0', '--no-breakdown');
    for (const r of w.json.rows as unknown as { stepMs: number; breakdownMs: unknown }[]) {
      expect(r.stepMs).toBeGreaterThan(0);
      expect(r.breakdownMs).toBeNull();
    }
    expect(w.stdout).toMatch(/--steps 0: each time is the warm-up step's/);
  });

  it('attention: ours at every point, TFLOP/s from the stated FLOPs', () => {
    const w = smoke('attention');
    checkCommon(w, 'attention');
    const rows = w.json.rows as unknown as { impl: string; seq: number; batch: number; heads: number; dim: number; causal: boolean; forwardMs: number; forwardTflops: number }[];
    expect(rows.filter((r) => r.impl === 'ours').length).toBe(4); // seq 64, 128 x causal or not, dim 32
    for (const r of rows.filter((x) => x.impl === 'ours')) {
      const f = (4 * r.batch * r.seq * r.seq * r.heads * r.dim) / (r.causal ? 2 : 1);
      expect(r.forwardTflops).toBeCloseTo(f / (r.forwardMs * 1e-3) / 1e12, 9);
    }
  });

  it('attention --documents: packed sequences, FLOPs counted within documents; a length they do not divide is refused', () => {
    const w = smoke('attention', '--documents', '4', '--no-torch');
    const rows = w.json.rows as unknown as { impl: string; seq: number; batch: number; heads: number; dim: number; causal: boolean; documents: number; forwardMs: number; forwardTflops: number }[];
    expect(rows.length).toBe(4);
    for (const r of rows) {
      expect(r.documents).toBe(4);
      const f = (4 * r.batch * 4 * (r.seq / 4) ** 2 * r.heads * r.dim) / (r.causal ? 2 : 1);
      expect(r.forwardTflops).toBeCloseTo(f / (r.forwardMs * 1e-3) / 1e12, 9);
    }
    expect(w.stdout).toMatch(/packed: 4 equal documents end to end/);
    const bad = bench('attention', '--smoke', '--device', 'cpu', '--documents', '3', '--no-torch', '--out-dir', join(out, 'bad'));
    expect(bad.status).not.toBe(0);
    expect(bad.stderr).toMatch(/--documents: expected a divisor of every sequence length, got 3 for 64/);
  });

  it("attention --deterministic: an 'ours det' row beside each 'ours' row, timed with the deterministic backward", () => {
    const dir = join(out, 'attention-det');
    const r = bench('attention', '--smoke', '--device', 'cpu', '--deterministic', '--no-torch', '--out-dir', dir);
    expect(r.status, r.stderr).toBe(0);
    const rows = JSON.parse(readFileSync(join(dir, readdirSync(dir).find((f) => f.endsWith('.json'))!), 'utf8')).rows as { impl: string; seq: number; causal: boolean; backwardTflops: number }[];
    const key = (x: { seq: number; causal: boolean }) => `${x.seq} ${x.causal}`;
    const det = rows.filter((x) => x.impl === 'ours det');
    expect(det.map(key)).toEqual(rows.filter((x) => x.impl === 'ours').map(key));
    for (const x of det) expect(x.backwardTflops).toBeGreaterThan(0);
    expect(r.stdout).toMatch(/'ours det': the CPU backward is deterministic anyway/);
  });

  it('attention --sm90 (the Hopper kernels) is refused by name on the CPU, where they cannot run', () => {
    const r = bench('attention', '--smoke', '--device', 'cpu', '--sm90', '--no-torch', '--out-dir', join(out, 'sm90'));
    expect(r.status).not.toBe(0);
    expect(r.stderr).toMatch(/--sm90: the Hopper kernels run on CUDA devices only; this run is on the cpu/);
  });

  it('ring: the whole call, its compute alone and its transfers alone, calls queued back to back, and each step inside the whole call', () => {
    const w = smoke('ring');
    checkCommon(w, 'ring');
    type Pass = { both: number; compute: number; transfers: number; queued: number; steps: { computeMs: number; transferMs: number; wholeMs: number }[] };
    type Row = {
      ranks: number; forward: Pass; backward: Pass; ratioForward: number; singleForwardMs: number; stepOverlapForward: number; stepOverlapBackward: number;
      singleForwardQueuedMs: number; ratioForwardQueued: number; singleBackwardQueuedMs: number; ratioBackwardQueued: number;
    };
    for (const r of w.json.rows as unknown as Row[]) {
      expect(r.ratioForwardQueued).toBeCloseTo(r.forward.queued / r.singleForwardQueuedMs, 9);
      expect(r.ratioBackwardQueued).toBeCloseTo(r.backward.queued / r.singleBackwardQueuedMs, 9);
      for (const p of [r.forward, r.backward]) {
        for (const k of ['both', 'compute', 'transfers', 'queued'] as const) expect(p[k]).toBeGreaterThan(0);
        expect(p.steps).toHaveLength(r.ranks);
        expect(p.steps.every((s) => s.wholeMs > 0 && s.computeMs > 0)).toBe(true); // zigzag: every step computes
      }
      expect(r.ratioForward).toBeCloseTo(r.forward.both / r.singleForwardMs, 9);
      expect(r.stepOverlapForward).toBeCloseTo(stepOverlap(r.forward.steps)!, 9);
      expect(r.stepOverlapBackward).toBeGreaterThan(0);
    }
    expect(stepOverlap([{ computeMs: 2, transferMs: 1, wholeMs: 2 }, { computeMs: 1, transferMs: 2, wholeMs: 3 }, { computeMs: 0, transferMs: 0, wholeMs: 0.1 }])).toBe(1.25);
    expect(stepOverlap([])).toBeNull();
    expect(w.stdout).toMatch(/fwd per step whole\/max/);
    expect(w.stdout).toMatch(/queued ring\/single fwd/);
    expect(w.stdout).toMatch(/queued: the same ratio per call of 4 calls queued back to back.*a fixed host cost per call shows at 1\/4\)/);
    // The README's table: H100 at 989 TFLOP/s over NVLink 4 (450 GB/s) and InfiniBand NDR (50 GB/s).
    expect(w.stdout).toMatch(/c >= F \/ B at 989 TFLOP\/s .*NVLink 4 .* at 450 GB\/s: c >= 2\.2K tokens per rank block, 13\.2K per rank \(backward, .*c >= 2\.6K\); InfiniBand .* at 50 GB\/s: c >= 19\.8K tokens per rank block, 118\.7K per rank \(backward, .*c >= 23\.7K\)/);
  });

  it("the paper's overlap rule: its Table 2 rows, c = F / B", () => {
    expect(minOverlapBlock(312, 300)).toBeCloseTo(1040, 6); // A100 NVLink: 1.0K
    expect(minOverlapBlock(123, 112)).toBeCloseTo(1098.2, 1); // TPU v3: 1.1K
    expect(minOverlapBlock(275, 268)).toBeCloseTo(1026.1, 1); // TPU v4: 1.0K
    expect(minOverlapBlock(989, 450)).toBeCloseTo(2197.8, 1);
    // the backward: 2.5x the FLOPs for 3x the bytes (bfloat16 K/V plus float32 dK/dV)
    expect(minOverlapBlock(989, 450, 'backward')).toBeCloseTo(2637.3, 1);
  });

  it('memory: activations grow linearly with the context, and checkpointing keeps fewer', () => {
    const w = smoke('memory');
    checkCommon(w, 'memory');
    const rows = w.json.rows as unknown as { context: number; checkpoint: boolean; activationBytes: number }[];
    for (const ck of [true, false]) {
      const rs = rows.filter((r) => r.checkpoint === ck);
      expect(rs.map((r) => r.context)).toEqual([64, 128, 256]);
      expect(fitLine(rs.map((r) => r.context), rs.map((r) => r.activationBytes)).r2).toBeGreaterThan(0.999);
    }
    for (const on of rows.filter((r) => r.checkpoint)) {
      const off = rows.find((r) => !r.checkpoint && r.context === on.context)!;
      expect(on.activationBytes).toBeLessThan(off.activationBytes);
    }
  });

  it('a run stopped from outside (as by a time limit) leaves the points it measured, marked partial', async () => {
    const dir = join(out, 'stopped');
    // A whole run first, under the same file names (suite, device, date, commit): its chart must go.
    expect(bench('memory', '--smoke', '--device', 'cpu', '--out-dir', dir).status).toBe(0);
    expect(readdirSync(dir).filter((f) => f.endsWith('.svg'))).toHaveLength(1);
    const p = spawn(process.execPath, [join(root, 'dist', 'cli.js'), 'bench', 'memory', '--device', 'cpu', '--model', 'tiny',
      '--min-context', '2048', '--max-context', '4096', '--out-dir', dir]);
    let err = '';
    // Point 2 (context 4096) takes seconds on the CPU: stopped as it starts, point 1 is all there is.
    const signal = await new Promise<NodeJS.Signals | null>((resolve) => {
      p.stderr.on('data', (d) => {
        err += d;
        if (err.includes('[memory 2/4] context 4096')) p.kill('SIGTERM');
      });
      p.on('close', (_code, sig) => resolve(sig));
    });
    expect(signal, err).toBe('SIGTERM');
    const files = readdirSync(dir);
    expect(files.some((f) => f.endsWith('.svg'))).toBe(false); // the chart is drawn at the end only; the earlier one is gone
    const json = JSON.parse(readFileSync(join(dir, files.find((f) => f.endsWith('.json'))!), 'utf8'));
    expect(json.partial).toEqual({ points: 1, of: 4 });
    expect(json.notes[0]).toMatch(/^partial: written after point 1 of 4; the run stopped before its end/);
    expect(json.rows).toHaveLength(1);
    expect(json.rows[0]).toMatchObject({ context: 2048, checkpoint: true });
    expect(json.rows[0].peakBytes).toBeGreaterThan(json.rows[0].baseBytes);
    const csv = readFileSync(join(dir, files.find((f) => f.endsWith('.csv'))!), 'utf8').trim().split('\n');
    expect(csv).toHaveLength(2);
    expect(csv[1]).toMatch(/^2048,on,/);
  }, 60_000);

  it('attention --causal yes: causal rows only (the 1M-token run needs no full-mask pass); a wrong value is refused', () => {
    const dir = join(out, 'attention-causal');
    expect(bench('attention', '--smoke', '--device', 'cpu', '--no-torch', '--causal', 'yes', '--out-dir', dir).status).toBe(0);
    const rows = JSON.parse(readFileSync(join(dir, readdirSync(dir).find((f) => f.endsWith('.json'))!), 'utf8')).rows as { causal: boolean }[];
    expect(rows.length).toBe(2);
    expect(rows.every((r) => r.causal)).toBe(true);
    expect(bench('attention', '--smoke', '--device', 'cpu', '--causal', 'maybe').stderr).toMatch(/--causal: expected one of both, yes, no, got 'maybe'/);
  });

  it("memory --keep-attention: a third line, between checkpointing on and off; mfu takes it too", () => {
    const dir = join(out, 'memory-keep');
    expect(bench('memory', '--smoke', '--device', 'cpu', '--keep-attention', '--out-dir', dir).status).toBe(0);
    const rows = JSON.parse(readFileSync(join(dir, readdirSync(dir).find((f) => f.endsWith('.json'))!), 'utf8')).rows as
      { context: number; checkpoint: boolean | string; activationBytes: number }[];
    for (const context of [64, 128, 256]) {
      const at = (ck: boolean | string) => rows.find((r) => r.checkpoint === ck && r.context === context)!.activationBytes;
      expect(at('keep-attention')).toBeGreaterThan(at(true));
      expect(at('keep-attention')).toBeLessThan(at(false));
    }
    const mfu = bench('mfu', '--smoke', '--device', 'cpu', '--keep-attention', '--out-dir', join(out, 'mfu-keep'));
    expect(mfu.status, mfu.stderr).toBe(0);
    expect(mfu.stdout).toMatch(/checkpointing on, keeping attention's output/);
    // its kernels' rates count the FLOPs of that recompute (attention's forward not run again)
    const md = join(out, 'mfu-keep');
    const mrows = JSON.parse(readFileSync(join(md, readdirSync(md).find((f) => f.endsWith('.json'))!), 'utf8')).rows as
      { context: number; breakdownMs: Record<string, number>; familyTflops: Record<string, number> }[];
    expect(mrows.length).toBeGreaterThan(0);
    for (const r of mrows) {
      const flops = stepFlopsByFamily(llamaPresets.tiny, r.context, 'keep-attention');
      for (const f of ['attention', 'feed-forward'])
        expect(r.familyTflops[f], f).toBeCloseTo(flops[f]! / (r.breakdownMs[f]! / 1e3) / 1e12, 12);
    }
    expect(bench('mfu', '--smoke', '--device', 'cpu', '--keep-attention', '--no-checkpoint').stderr).toMatch(/--keep-attention keeps checkpointing on: give it or --no-checkpoint, not both/);
  });

  it("mfu and memory pass the step's block sizes to the trainer (given, else its defaults) and note which ran", () => {
    // The CPU ops keep their block temporaries off the counted tensors, so the peak cannot show
    // them here: the native calls' block arguments are read instead.
    const seen: Record<string, number[]> = { opsFfn: [], opsFfnBackward: [], opsCrossEntropy: [] };
    const table = native as unknown as Record<string, (...a: unknown[]) => unknown>;
    const saved = Object.keys(seen).map((n) => [n, table[n]!] as const);
    for (const [n, f] of saved) table[n] = (...a: unknown[]) => (seen[n]!.push(a[n === 'opsFfnBackward' ? 5 : n === 'opsFfn' ? 4 : 3] as number), f(...a));
    try {
      const step = (extra: Partial<StepArgs>) => {
        for (const k in seen) seen[k] = [];
        measureStep({ config: llamaPresets.tiny, device: 'cpu', context: 64, checkpoint: true, layout: 'contiguous', steps: 0, breakdown: false, ...extra });
        return Object.fromEntries(Object.entries(seen).map(([n, xs]) => [n, [...new Set(xs)]]));
      };
      expect(step({ ffnBlockRows: 16, ceChunkRows: 8 })).toEqual({ opsFfn: [16], opsFfnBackward: [16], opsCrossEntropy: [8] });
      expect(step({})).toEqual({ opsFfn: [256], opsFfnBackward: [256], opsCrossEntropy: [256] });
    } finally {
      for (const [n, f] of saved) table[n] = f;
    }
    const mfu = bench('mfu', '--smoke', '--device', 'cpu', '--ffn-block-rows', '32', '--out-dir', join(out, 'mfu-blocks'));
    expect(mfu.status, mfu.stderr).toBe(0);
    expect(mfu.stdout).toMatch(/feed-forward blocks of 32 tokens, cross-entropy chunks of 256/);
    const memory = bench('memory', '--smoke', '--device', 'cpu', '--ce-chunk-rows', '8', '--out-dir', join(out, 'memory-blocks'));
    expect(memory.status, memory.stderr).toBe(0);
    expect(memory.stdout).toMatch(/feed-forward blocks of 256 tokens, cross-entropy chunks of 8/);
    expect(bench('mfu', '--smoke', '--device', 'cpu', '--ce-chunk-rows', '0').stderr).toMatch(/--ce-chunk-rows: expected an integer >= 1, got '0'/);
  });

  it('refuses bad arguments with messages that name them', () => {
    expect(bench('nope').stderr).toMatch(/unknown suite 'nope'; expected one of mfu, attention, ring, memory/);
    expect(bench('mfu', '--bogus').stderr).toMatch(/bench mfu: .*--bogus/);
    expect(bench('mfu', '--model', 'huge', '--device', 'cpu').stderr).toMatch(/--model: expected one of tiny, 125M, 1B, 7B/);
    expect(bench('ring', '--reps', '0', '--device', 'cpu').stderr).toMatch(/--reps: expected an integer >= 1/);
    expect(bench('mfu', '--timeout-minutes', '0', '--device', 'cpu').stderr).toMatch(/--timeout-minutes: expected an integer >= 1 and <= 35791, got '0'/);
    expect(bench('ring', '--timeout-minutes', '1e9', '--device', 'cpu').stderr).toMatch(/--timeout-minutes: expected an integer >= 1 and <= 35791/);
    expect(bench('mfu', '--layout', 'spiral', '--device', 'cpu').stderr).toMatch(/--layout: expected one of contiguous, zigzag, got 'spiral'/);
    expect(bench('ring', '--device', 'tpu').stderr).toMatch(/--device: expected cpu or cuda/);
    expect(bench('ring', '--device', 'tpu').status).toBe(1);
    expect(bench('--help').stdout).toMatch(/usage: ring-attention bench <suite>/);
    // Under a launched job: mfu and ring join it (on cuda only); the others refuse.
    const launched = (...args: string[]) => spawnSync(process.execPath, [join(root, 'dist', 'cli.js'), 'bench', ...args],
      { encoding: 'utf8', timeout: 60_000, env: { ...process.env, WORLD_SIZE: '2', RANK: '0', MASTER_ADDR: '' } });
    expect(launched('memory', '--smoke').stderr).toMatch(/bench memory: runs in one process; only the mfu and ring suites run across a launched job/);
    expect(launched('ring', '--smoke', '--device', 'cpu').stderr).toMatch(/--device: a launched job rings over NCCL, which needs cuda/);
    expect(launched('mfu', '--smoke', '--device', 'cpu').stderr).toMatch(/--device: a launched job trains over NCCL, which needs cuda/);
  });
});
