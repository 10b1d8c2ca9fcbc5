// Which CUDA architectures a source build compiles for when CUDAARCHS does not say: those of
// the GPUs on this machine (nvidia-smi), so that a build on an A100 or an L40 runs there,
// rather than CMakeLists.txt's default (sm_90a alone). undefined: keep the default (no GPU
// seen, no nvcc, or the GPUs here are what the default covers). And whether cmake-js may reuse
// a configured build/ (compile) or must configure afresh (rebuild).
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';

export const DEFAULT_ARCHS = '90a';  // CMakeLists.txt's, for a build without CUDAARCHS

/**
 * The CMake architectures for GPUs of compute capabilities `caps` ("8.0"), given the machine
 * codes this nvcc can make (`nvcc --list-gpu-code`: "sm_80", ...): machine code for each GPU
 * (9.0 as 90a, for the Hopper kernels); for a GPU newer than this nvcc, the newest architecture
 * it has below the GPU, as machine code and PTX within the GPU's major version, else as PTX,
 * which the driver compiles at load. GPUs older than 8.0, which the CUDA code does not support
 * (a display GPU beside the others), are left out.
 */
export function archsFor(caps, nvccCodes) {
  const codes = new Set(nvccCodes);
  const have = nvccCodes.map((c) => /^sm_(\d+)$/.exec(c)).filter(Boolean).map((m) => Number(m[1])).sort((a, b) => a - b);
  const archs = new Set();
  for (const cap of caps) {
    const m = /^(\d+)\.(\d)$/.exec(cap.trim());
    if (!m || Number(m[1]) < 8) continue;
    const n = Number(m[1] + m[2]);
    if (codes.has(`sm_${n}`)) archs.add(n === 90 ? '90a' : String(n));
    else {
      const below = have.filter((h) => h <= n).pop();
      if (below !== undefined) archs.add(Math.floor(below / 10) === Number(m[1]) ? String(below) : `${below}-virtual`);
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

/**
 * 'compile' (cmake-js reuses build/ as configured, or configures it when it is not) or
 * 'rebuild' (configures afresh): afresh when asked for a source build (RING_ATTENTION_BUILD=source,
 * which may follow a new toolkit on PATH, and compile would keep the cached compiler), or when
 * build/ was configured for other architectures (`cache`: its CMakeCache.txt, null if none).
 */
export function buildVerb({ mode, archs, cache }) {
  if (cache === null) return 'compile';
  if (mode === 'source') return 'rebuild';
  const fat = /^RING_ATTENTION_FAT_BINARY:\w+=(ON|TRUE|1|YES)$/im.test(cache);
  const configured = fat ? 'release' : /^CMAKE_CUDA_ARCHITECTURES:\w+=(.*)$/m.exec(cache)?.[1] || DEFAULT_ARCHS;
  return configured === (archs || DEFAULT_ARCHS) ? 'compile' : 'rebuild';
}
