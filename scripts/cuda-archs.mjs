// Which CUDA architectures a source build compiles for when CUDAARCHS does not say: those of
// the GPUs on this machine (nvidia-smi), so that a build on an A100 or an L40 runs there,
// rather than CMakeLists.txt's default (sm_90a alone). undefined: keep the default (no GPU
// seen, no nvcc, or the GPUs here are what the default covers).
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';

export const DEFAULT_ARCHS = '90a';  // CMakeLists.txt's, for a build without CUDAARCHS

/**
 * The CMake architectures for GPUs of compute capabilities `caps` ("8.0"), given the machine
 * codes this nvcc can make (`nvcc --list-gpu-code`: "sm_80", ...): machine code for each GPU
 * (9.0 as 90a, for the Hopper kernels); for a GPU newer than this nvcc, PTX of the newest
 * architecture it has below the GPU, which the driver compiles at load.
 */
export function archsFor(caps, nvccCodes) {
  const codes = new Set(nvccCodes);
  const have = nvccCodes.map((c) => /^sm_(\d+)$/.exec(c)).filter(Boolean).map((m) => Number(m[1])).sort((a, b) => a - b);
  const archs = new Set();
  for (const cap of caps) {
    const m = /^(\d+)\.(\d)$/.exec(cap.trim());
    if (!m) continue;
    const n = Number(m[1] + m[2]);
    if (codes.has(`sm_${n}`)) archs.add(n === 90 ? '90a' : String(n));
    else {
      const below = have.filter((h) => h <= n).pop();
      if (below !== undefined) archs.add(`${below}-virtual`);
    }
  }
  return [...archs];
}

function lines(cmd, args, env) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 30_000, env });
  return r.status === 0 ? r.stdout.split('\n').map((l) => l.trim()).filter(Boolean) : null;
}

/** CUDAARCHS for this machine's GPUs, or undefined to keep CMakeLists.txt's default. */
export function detectArchs(env = process.env) {
  const caps = lines('nvidia-smi', ['--query-gpu=compute_cap', '--format=csv,noheader'], env);
  if (!caps || caps.length === 0) return undefined;
  // The nvcc CMake would find: CUDACXX, else PATH, else the CUDA install.
  const nvcc = env.CUDACXX || (lines('nvcc', ['--version'], env) ? 'nvcc' : existsSync('/usr/local/cuda/bin/nvcc') ? '/usr/local/cuda/bin/nvcc' : null);
  const codes = nvcc ? lines(nvcc, ['--list-gpu-code'], env) : null;
  if (!codes) return undefined;
  const archs = archsFor(caps, codes).join(';');
  return archs === '' || archs === DEFAULT_ARCHS ? undefined : archs;
}
