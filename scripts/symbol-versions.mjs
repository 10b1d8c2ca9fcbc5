// The newest glibc, libstdc++ and libgcc symbol versions the prebuild may need: those of RHEL 9
// (glibc 2.34, GCC 11's libstdc++ and libgcc_s), the oldest systems the README says it loads on
// (Ubuntu 22.04 and Debian 12 have newer). A build on a newer system can quietly need more
// (glibc 2.38's __isoc23_strtol, GCC 12's __truncsfhf2): the release build and the package test
// check what the binary asks for.
import { spawnSync } from 'node:child_process';

export const LIMITS = { GLIBC: '2.34', GLIBCXX: '3.4.29', CXXABI: '1.3.13', GCC: '7.0.0' };

const newer = (a, b) => {
  const x = a.split('.').map(Number), y = b.split('.').map(Number);
  for (let i = 0; i < Math.max(x.length, y.length); ++i) if ((x[i] ?? 0) !== (y[i] ?? 0)) return (x[i] ?? 0) > (y[i] ?? 0);
  return false;
};

/** The versions in `objdump -T` output beyond LIMITS, as "GLIBC_2.36 strtol" lines. */
export function tooNew(objdump) {
  const found = [];
  for (const line of objdump.split('\n')) {
    const m = /\((GLIBC|GLIBCXX|CXXABI|GCC)_([0-9.]+)\)\s+(\S+)/.exec(line);
    if (m && newer(m[2], LIMITS[m[1]])) found.push(`${m[1]}_${m[2]} ${m[3]}`);
  }
  return found;
}

/** objdump -T of `file`, or null when objdump is not installed. */
export function dynamicSymbols(file) {
  const r = spawnSync('objdump', ['-T', file], { encoding: 'utf8', maxBuffer: 256 << 20 });
  if (r.error) return null;
  if (r.status !== 0) throw new Error(`objdump -T ${file} failed: ${r.stderr}`);
  return r.stdout;
}
