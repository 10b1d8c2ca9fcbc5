#!/usr/bin/env node
// The `ring-attention` command. `ring-attention info [--json]` says which binary was loaded
// and how it was obtained, what CUDA it can use, and where NCCL and cuBLAS were found;
// `launch` starts a job; `bench` runs a benchmark suite.
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';

import { runBench } from './bench/index.js';
import { info } from './index.js';
import { launchProcesses, LAUNCH_USAGE } from './launcher.js';
import { findCublas, findLibrary, LIBRARIES, type LibraryReport } from './libraries.js';

const HELP = `usage: ring-attention <command>

commands:
  info [--json]   the loaded binary, the backend, the GPU and driver, and where NCCL and cuBLAS were found
  launch ...      one process per GPU, torchrun style (ring-attention launch --help)
  bench <suite>   mfu, attention, ring or memory; JSON, CSV and SVG under bench/results (ring-attention bench --help)
`;

const version = (v: number) => (v ? `${Math.floor(v / 1000)}.${(v % 1000) / 10}` : 'none');
const gib = (bytes: number) => `${(bytes / 2 ** 30).toFixed(1)} GiB`;

function report(json: boolean): void {
  const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string };
  const i = info();
  const [cublas, cublasLt] = findCublas();  // .so.13, else .so.12, as the CUDA ops load them
  const libraries: Record<string, LibraryReport> = { nccl: findLibrary(LIBRARIES.nccl), cublas, cublasLt };
  if (json) {
    console.log(JSON.stringify({ version: pkg.version, ...i, libraries }, null, 2));
    return;
  }
  const origin = { prebuild: 'prebuilt binary', 'cmake-js': 'built from source with cmake-js', 'node-gyp': 'built from source with node-gyp (CPU only)' }[i.build];
  const lines: [string, string][] = [
    ['version', pkg.version],
    ['binary', `${i.binary} (${origin})`],
    ['backend', i.backend === 'cuda' ? 'cuda' : `cpu${i.cuda.reason ? ` (${i.cuda.reason})` : ''}`],
    ['cpu kernels', i.cpuKernels === 'avx2+fma' ? 'compiled for AVX2 and FMA (this CPU has them)' : 'portable'],
    ['cpu threads', cpuThreads(i.cpuThreads)],
    ['cuda', i.cuda.compiled ? `compiled in: runtime ${version(i.cuda.runtimeVersion)}, architectures ${i.cuda.architectures}` : 'not compiled in'],
    ['hopper kernels', hopperKernels(i.cuda.architectures)],
    ['driver', i.cuda.driverVersion ? `supports CUDA ${version(i.cuda.driverVersion)}` : 'none found'],
    ...i.cuda.devices.map((d, n): [string, string] => [`gpu ${n}`, `${d.name} (sm_${d.computeCapability.replace('.', '')}, ${gib(d.totalMemory)}, ${d.multiprocessors} SMs)${d.supported ? '' : ': cannot run this binary\'s CUDA code'}`]),
    ...Object.values(libraries).map((l): [string, string] => [l.name, l.path ? `${l.path} (from ${l.from})` : l.skipped ?? `not found; searched ${l.searched.join(', ')}`]),
  ];
  for (const [key, value] of lines) console.log(`${key.padEnd(18)} ${value}`);
}

function cpuThreads(n: number): string {
  const asked = process.env.RING_ATTENTION_NUM_THREADS?.trim();
  if (!asked) return `${n} (the cores)`;
  return Number(asked) === n ? `${n} (RING_ATTENTION_NUM_THREADS)` : `${n} (RING_ATTENTION_NUM_THREADS=${asked}, capped at 4x the cores)`;
}

/** Whether the opt-in Hopper kernels (native/cuda/flash/{fwd,bwd}_sm90_kernel.cuh) are there and asked for. */
function hopperKernels(architectures: string): string {
  if (!architectures.split(',').some((a) => a.startsWith('90a'))) return 'not compiled in (they need sm_90a code)';
  return process.env.RING_ATTENTION_SM90 === '1'
    ? 'on (RING_ATTENTION_SM90=1): head dims 64 and 128 on sm_90 devices'
    : 'compiled in, off: RING_ATTENTION_SM90=1 turns them on (their own tests passed on an H200; the ring and model tests have not yet run through them)';
}

const [command, ...rest] = process.argv.slice(2);
if (command === 'info') {
  try {
    const { values } = parseArgs({ args: rest, options: { json: { type: 'boolean' }, help: { type: 'boolean' } }, strict: true, allowPositionals: false });
    if (values.help) process.stdout.write('usage: ring-attention info [--json]\n');
    else report(values.json === true);
  } catch (e) {
    if ((e as { code?: string }).code?.startsWith('ERR_PARSE_ARGS') !== true) throw e;
    console.error(`ring-attention info: ${(e as Error).message}; it takes only --json`);
    process.exitCode = 1;
  }
} else if (command === 'launch') {
  if (rest[0] === '--help') process.stdout.write(LAUNCH_USAGE);
  else process.exitCode = await launchProcesses(rest);
} else if (command === 'bench') {
  try {
    await runBench(rest);
  } catch (e) {
    console.error(`ring-attention bench: ${(e as Error).message}`);
    process.exitCode = 1;
  }
} else if (command === undefined || command === '--help' || command === 'help') {
  process.stdout.write(HELP);
} else {
  process.stderr.write(`ring-attention: unknown command '${command}'\n${HELP}`);
  process.exitCode = 1;
}
