// Which CUDA architectures a source build compiles for when CUDAARCHS does not say: those of
// the GPUs on this machine (nvidia-smi), so that a build on an A100 or an L40 runs there,
// rather than CMakeLists.txt's default (sm_90a alone). undefined: keep the default (no GPU
// seen, no nvcc, or the GPUs here are what the default covers). And whether cmake-js may reuse
// a configured build/ (compile) or must configure afresh (rebuild).
import { spawnSync } from 'node:child_process';
import { existsSync, realpathSync } from 'node:fs';

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

/** The nvcc CMake would find (CUDACXX, else PATH, else the CUDA install), as a path; null if none. */
export function findNvcc(env = process.env) {
  if (env.CUDACXX) return env.CUDACXX;
  for (const dir of (env.PATH ?? '').split(':').filter(Boolean)) if (existsSync(`${dir}/nvcc`)) return `${dir}/nvcc`;
  return existsSync('/usr/local/cuda/bin/nvcc') ? '/usr/local/cuda/bin/nvcc' : null;
}

/** CUDAARCHS for this machine's GPUs, or undefined to keep CMakeLists.txt's default. */
export function detectArchs(env = process.env) {
  const caps = lines('nvidia-smi', ['--query-gpu=compute_cap', '--format=csv,noheader'], env);
  if (!caps || caps.length === 0) return undefined;
  const nvcc = findNvcc(env);
  const codes = nvcc ? lines(nvcc, ['--list-gpu-code'], env) : null;
  if (!codes) return undefined;
  const archs = archsFor(caps, codes).join(';');
  return archs === '' || archs === DEFAULT_ARCHS ? undefined : archs;
}

const real = (p) => {
  try {
    return realpathSync(p);
  } catch {
    return p;
  }
};

/**
 * 'compile' (cmake-js reuses build/ as configured, or configures it when it is not) or
 * 'rebuild' (configures afresh): afresh when build/ (`cache`: its CMakeCache.txt, null if none)
 * was configured for other architectures, or with another nvcc than `nvcc` (the one found now,
 * null if none), or with none (a toolkit put on PATH since: compile would keep both cached).
 */
export function buildVerb({ archs, cache, nvcc }) {
  if (cache === null) return 'compile';
  const fat = /^RING_ATTENTION_FAT_BINARY:\w+=(ON|TRUE|1|YES)$/im.test(cache);
  const configured = fat ? 'release' : /^CMAKE_CUDA_ARCHITECTURES:\w+=(.*)$/m.exec(cache)?.[1] || DEFAULT_ARCHS;
  if (configured !== (archs || DEFAULT_ARCHS)) return 'rebuild';
  if (/^RING_ATTENTION_CUDA:\w+=(OFF|FALSE|0|NO)$/im.test(cache)) return 'compile';  // CPU only, as asked
  const compiler = /^CMAKE_CUDA_COMPILER:\w+=(.*)$/m.exec(cache)?.[1] ?? '';
  return nvcc && (compiler === '' || compiler.endsWith('NOTFOUND') || real(compiler) !== real(nvcc)) ? 'rebuild' : 'compile';
}
