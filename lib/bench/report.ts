// What every benchmark result carries (machine, versions, commit, date, the exact command),
// and writing it: a table on stdout, then JSON, CSV and an SVG chart under the output folder.
import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

import { stringify } from 'csv-stringify/sync';

import { info } from '../index.js';
import { findLibrary, LIBRARIES } from '../libraries.js';
import { native } from '../native.js';
import { renderChart, type ChartSpec } from './chart.js';

export const packageRoot = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

export interface Machine {
  device: 'cpu' | 'cuda';
  gpu: string | null;
  gpuMemoryBytes: number | null;
  /** The kernel module's version (580.159.04) where /proc says it, else the CUDA version the driver supports. */
  driver: string | null;
  cudaRuntime: string | null;
  nccl: string | null;
  cpu: string;
  cores: number;
  node: string;
  binary: string;
}

/** CUDA's version codes (12040) as text (12.4). */
const cudaVersion = (v: number) => (v ? `${Math.floor(v / 1000)}.${(v % 1000) / 10}` : null);

/** NCCL's version where it can be loaded (loading it has no other effect), else null. */
function ncclVersion(): string | null {
  const found = findLibrary(LIBRARIES.nccl);
  if (!found.path) return null;
  try {
    const code = native.ncclLoad(found.path);  // e.g. 22703 -> 2.27.3
    return `${Math.floor(code / 10000)}.${Math.floor(code / 100) % 100}.${code % 100}`;
  } catch {
    return null;
  }
}

/** The NVIDIA kernel module's version, as nvidia-smi prints it, where Linux exposes it. */
function driverModuleVersion(): string | null {
  try {
    return /Kernel Module\s+(?:for \S+\s+)?(\d+(?:\.\d+)+)/.exec(readFileSync('/proc/driver/nvidia/version', 'utf8'))?.[1] ?? null;
  } catch {
    return null;
  }
}

export function describeMachine(device: 'cpu' | 'cuda'): Machine {
  const i = info();
  const gpu = device === 'cuda' ? i.cuda.devices[0] : undefined;
  return {
    device,
    gpu: gpu?.name ?? null,
    gpuMemoryBytes: gpu?.totalMemory ?? null,
    driver: device === 'cuda' ? driverModuleVersion() ?? `supports CUDA ${cudaVersion(i.cuda.driverVersion)}` : null,
    cudaRuntime: device === 'cuda' ? cudaVersion(i.cuda.runtimeVersion) : null,
    nccl: device === 'cuda' ? ncclVersion() : null,
    cpu: cpus()[0]?.model ?? 'unknown',
    cores: cpus().length,
    node: process.version,
    binary: i.binary,
  };
}

/**
 * HEAD of the checkout the package runs from, '-dirty' when tracked files differ from it; or
 * the package version when the package is no checkout of its own (installed under a user's
 * project, whose HEAD is not ours to report).
 */
export function commitOf(root = packageRoot): string {
  const git = (...args: string[]) => execFileSync('git', args, { cwd: root, stdio: ['ignore', 'pipe', 'ignore'] }).toString().trim();
  try {
    if (realpathSync(git('rev-parse', '--show-toplevel')) !== realpathSync(root)) throw new Error('not our checkout');
    const changed = git('--no-optional-locks', 'status', '--porcelain', '--untracked-files=no') !== ''; // takes no index lock
    return git('rev-parse', '--short', 'HEAD') + (changed ? '-dirty' : '');
  } catch {
    const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string };
    return `v${pkg.version}`;
  }
}

/** One column of the table and the CSV: a header and how to read it from a row. */
export interface Column<R> {
  header: string;
  value: (row: R) => string | number | boolean | null;
  /** Digits after the point in the table (CSV keeps full precision). */
  digits?: number;
}

export function formatTable<R>(columns: Column<R>[], rows: R[]): string {
  const cell = (c: Column<R>, r: R) => {
    const v = c.value(r);
    if (v === null || (typeof v === 'number' && !Number.isFinite(v))) return '-';
    return typeof v === 'number' && c.digits !== undefined ? v.toFixed(c.digits) : String(v);
  };
  const cells = rows.map((r) => columns.map((c) => cell(c, r)));
  const widths = columns.map((c, j) => Math.max(c.header.length, ...cells.map((row) => row[j]!.length)));
  const line = (xs: string[]) => xs.map((x, j) => x.padStart(widths[j]!)).join('  ');
  return [line(columns.map((c) => c.header)), line(widths.map((w) => '-'.repeat(w))), ...cells.map(line)].join('\n');
}

export interface SuiteResult<R> {
  suite: string;
  /** Suite parameters as given (after defaults), recorded in the JSON. */
  params: Record<string, unknown>;
  rows: R[];
  columns: Column<R>[];
  chart: ChartSpec<R> | null;
  /** Lines printed under the table: what limits the figures, what was not measured. */
  notes: string[];
}

export interface Written {
  json: string;
  csv: string;
  svg: string | null;
  /** Why there is no chart, when there is none. */
  chartSkipped?: string;
}

export interface ResultWriter {
  /**
   * Rewrites the JSON and CSV with the rows so far, marked partial (no table, no chart), after
   * each point: a run stopped from outside (a time limit's kill) keeps what it measured.
   */
  partial<R>(result: SuiteResult<R>, done: number, of: number): void;
  /** Prints the table and notes, writes JSON, CSV and (when vega is installed) the SVG chart over the partial files. */
  final<R>(result: SuiteResult<R>): Promise<Written>;
}

/** Where a run's results go: one set of file names, from its start's date and the commit, for its partial and final writes. */
export function resultWriter(suite: string, machine: Machine, outDir: string, argv: string[]): ResultWriter {
  const commit = commitOf();
  const base = join(outDir, `${suite}-${machine.device}-${new Date().toISOString().slice(0, 10)}-${commit}`);
  const json = `${base}.json`, csv = `${base}.csv`;
  const write = <R>(result: SuiteResult<R>, partial: { points: number; of: number } | null) => {
    mkdirSync(outDir, { recursive: true });
    writeFileSync(json, JSON.stringify({
      suite: result.suite, date: new Date().toISOString(), commit, command: ['ring-attention', 'bench', ...argv].join(' '), machine,
      ...(partial ? { partial } : {}), params: result.params, notes: result.notes, rows: result.rows,
    }, null, 2) + '\n');
    writeFileSync(csv, stringify([result.columns.map((c) => c.header), ...result.rows.map((r) => result.columns.map((c) => c.value(r)))]));
  };
  let first = true, failed = false;
  return {
    partial(result, done, of) {
      if (failed) return;
      try {
        // A chart of an earlier run under these names would not match what follows.
        if (first) rmSync(`${base}.svg`, { force: true });
        first = false;
        write({ ...result, notes: [`partial: written after point ${done} of ${of}; the run stopped before its end, which rewrites this file without this line`, ...result.notes] },
          { points: done, of });
      } catch (e) {
        // A safeguard, not the result: the run goes on (in a launched job the other ranks would
        // otherwise wait in their next collective), and the end's write says what is wrong.
        failed = true;
        console.error(`bench: could not write the partial results (${(e as Error).message}); going on`);
      }
    },
    async final(result) {
      console.log(formatTable(result.columns, result.rows));
      for (const n of result.notes) console.log(n);
      write(result, null);
      const written: Written = { json, csv, svg: null };
      if (result.chart) {
        const date = new Date().toISOString().slice(0, 10);
        const title = `${result.chart.title} — ${machine.gpu ?? machine.cpu}, ${date}, ${commit}`;
        const chart = await renderChart({ ...result.chart, title }, result.rows);
        if (typeof chart === 'string') {
          written.svg = `${base}.svg`;
          writeFileSync(written.svg, chart);
        } else {
          written.chartSkipped = chart.skipped;
        }
      }
      console.log(`wrote ${[written.json, written.csv, written.svg].filter(Boolean).join(', ')}`);
      if (written.chartSkipped) console.log(`no chart: ${written.chartSkipped}`);
      return written;
    },
  };
}
