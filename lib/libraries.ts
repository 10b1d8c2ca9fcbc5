// Finding the shared libraries that are loaded at run time (NCCL, cuBLAS), in the order a
// user expects: an explicit path from the environment, the dynamic loader's own search,
// the CUDA install, then the directories of NVIDIA's Python wheels (pip install torch brings them).
// cuBLAS is looked for as CUDA 13's .so.13 first, then CUDA 12's .so.12 (findCublas).
import { spawnSync } from 'node:child_process';
import { existsSync, statSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';

import { native } from './native.js';

export interface LibraryReport {
  /** The soname looked for, e.g. 'libnccl.so.2'. */
  name: string;
  /** The file the loader opened, or null when none could be. */
  path: string | null;
  /** Where it was found: 'RING_ATTENTION_NCCL_PATH', 'loader path', 'CUDA install', 'python wheel'. */
  from: string | null;
  /** Every place tried, in order, for error messages. */
  searched: string[];
  /** Why it was not looked for, when searched is empty for that reason. */
  skipped?: string;
}

interface LibrarySpec {
  name: string;
  envVar: string;
  /** Sub-directories of site-packages that NVIDIA's wheels put the library in. */
  wheelDirs: string[];
}

export const LIBRARIES = {
  nccl: { name: 'libnccl.so.2', envVar: 'RING_ATTENTION_NCCL_PATH', wheelDirs: ['nvidia/nccl/lib', 'nvidia/cu13/lib'] },
  cublas: { name: 'libcublas.so.13', envVar: 'RING_ATTENTION_CUBLAS_PATH', wheelDirs: ['nvidia/cublas/lib', 'nvidia/cu13/lib'] },
  cublasLt: { name: 'libcublasLt.so.13', envVar: 'RING_ATTENTION_CUBLAS_PATH', wheelDirs: ['nvidia/cublas/lib', 'nvidia/cu13/lib'] },
} satisfies Record<string, LibrarySpec>;

function cudaLibDirs(): string[] {
  const roots = [process.env.CUDA_HOME, process.env.CUDA_PATH, '/usr/local/cuda'].filter((r): r is string => !!r);
  return [...new Set(roots.flatMap((r) => [join(r, 'lib64'), join(r, 'targets', 'x86_64-linux', 'lib'), join(r, 'targets', 'sbsa-linux', 'lib')]))];
}

let sitePackages: string[] | undefined;
function pythonSitePackages(): string[] {
  if (sitePackages) return sitePackages;
  const r = spawnSync('python3', ['-c', 'import site; print("\\n".join(site.getsitepackages() + [site.getusersitepackages()]))'], {
    encoding: 'utf8', timeout: 10_000,
  });
  sitePackages = r.status === 0 ? r.stdout.split('\n').filter(Boolean) : [];
  return sitePackages;
}

export function findLibrary(spec: LibrarySpec): LibraryReport {
  const searched: string[] = [];
  const attempt = (candidate: string, from: string): LibraryReport | null => {
    searched.push(candidate);
    const path = native.findLibrary(candidate);
    return path ? { name: spec.name, path, from, searched } : null;
  };
  const explicit = process.env[spec.envVar];
  if (explicit) {
    // A directory, or a path that names no shared library (it may not exist yet), means "look in here".
    const isDir = existsSync(explicit) ? statSync(explicit).isDirectory() : !/\.so(\.|$)/.test(basename(explicit));
    const file = isDir ? join(explicit, spec.name) : explicit;
    const hit = attempt(file, spec.envVar);
    if (hit) return hit;
  }
  const tries: [string, string][] = [
    [spec.name, 'loader path'],
    ...cudaLibDirs().map((d): [string, string] => [join(d, spec.name), 'CUDA install']),
    ...pythonSitePackages().flatMap((site) => spec.wheelDirs.map((d): [string, string] => [join(site, d, spec.name), 'python wheel'])),
  ];
  for (const [candidate, from] of tries) {
    if (candidate !== spec.name && !existsSync(candidate)) {
      searched.push(candidate);
      continue;
    }
    const hit = attempt(candidate, from);
    if (hit) return hit;
  }
  return { name: spec.name, path: null, from: null, searched };
}

/**
 * libcublas and libcublasLt of one major version, .so.13 first, then .so.12 (both keep the
 * cublasGemmEx we call); libcublasLt is taken from libcublas's directory when it is there, so
 * that the pair matches. A report whose path is null lists every place tried.
 */
export function findCublas(lib: LibrarySpec = LIBRARIES.cublas, lt: LibrarySpec = LIBRARIES.cublasLt): [LibraryReport, LibraryReport] {
  const searched: string[] = [];
  const names = (major: string) => [lib, lt].map((s) => ({ ...s, name: s.name.replace(/\.so\.\d+$/, `.so.${major}`) }));
  for (const major of ['13', '12']) {
    const [l, t] = names(major) as [LibrarySpec, LibrarySpec];
    const found = findLibrary(l);
    searched.push(...found.searched);
    if (!found.path) continue;
    const beside = join(dirname(found.path), t.name);
    const besidePath = existsSync(beside) ? native.findLibrary(beside) : '';
    return [found, besidePath ? { name: t.name, path: besidePath, from: found.from, searched: [beside] } : findLibrary(t)];
  }
  const none = (s: LibrarySpec, tried: string[]): LibraryReport => ({ name: `${s.name} (or .so.12)`, path: null, from: null, searched: tried });
  return [none(lib, searched), { ...none(lt, []), skipped: `not looked for: it is used only with ${lib.name}, which was not found` }];
}
