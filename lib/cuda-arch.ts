// Whether this binary's CUDA code can run on the GPUs here. A source build compiles for sm_90a
// unless told otherwise, so on an A100 or an L40 it would load, report CUDA, and then fail at
// the first kernel with "no kernel image"; this says so up front, with the rebuild that fixes
// it, and leaves the CPU backend in charge.
import type { CudaInfo } from './native.js';

/** One entry of CMAKE_CUDA_ARCHITECTURES ("90a", "80-real", "80-virtual", "100f"). */
interface ArchEntry {
  major: number;
  minor: number;
  /** 'a': this exact GPU only; 'f': its family (same major, this minor or newer); '': same major, this minor or newer. */
  suffix: '' | 'a' | 'f';
  sass: boolean;
  ptx: boolean;
}

function parseEntry(entry: string): ArchEntry | null {
  const m = /^(\d+)(\d)([af]?)(?:-(real|virtual))?$/.exec(entry.trim());
  if (!m) return null;
  const kind = m[4];
  return { major: Number(m[1]), minor: Number(m[2]), suffix: m[3] as ArchEntry['suffix'], sass: kind !== 'virtual', ptx: kind !== 'real' };
}

/**
 * Whether code compiled for `archs` (CMake's list, joined by ',' or ';') runs on a GPU of
 * compute capability `cc` ("8.6"): machine code runs within its major version on the same or a
 * later minor one (arch-specific 'a' code on that GPU alone), PTX is compiled by the driver for
 * the same or any later GPU (an 'a' PTX for that GPU alone). Lists it cannot read ("all",
 * "native", "unknown") are taken to run.
 */
export function archsRunOn(archs: string, cc: string): boolean {
  const [major, minor] = cc.split('.').map(Number) as [number, number];
  const entries = archs.split(/[,;]/).filter((e) => e.trim() !== '').map(parseEntry);
  if (entries.length === 0 || entries.some((e) => e === null)) return true;
  return (entries as ArchEntry[]).some((e) => {
    if (e.suffix === 'a') return major === e.major && minor === e.minor;
    const sameMajorLater = major === e.major && minor >= e.minor;
    if (e.sass && sameMajorLater) return true;
    return e.ptx && (e.suffix === 'f' ? sameMajorLater : major > e.major || sameMajorLater);
  });
}

/** The CMake architecture a source build would name for a GPU of capability `cc` (9.0: the Hopper kernels' 90a). */
export function archFor(cc: string): string {
  const [major, minor] = cc.split('.');
  return `${major}${minor}${cc === '9.0' ? 'a' : ''}`;
}

/** `info` with CUDA marked unavailable, and why, when a GPU here cannot run the compiled code. */
export function checkArchitectures(info: CudaInfo): CudaInfo {
  if (!info.available) return info;
  const unfit = info.devices.map((d, i) => ({ ...d, i })).filter((d) => !archsRunOn(info.architectures, d.computeCapability));
  if (unfit.length === 0) return info;
  const gpus = unfit.map((d) => `GPU ${d.i} (${d.name}) is compute capability ${d.computeCapability}`).join(', ');
  const wanted = [...new Set(info.devices.map((d) => archFor(d.computeCapability)))].join(';');
  return {
    ...info, available: false,
    reason: `this binary's CUDA code is for ${info.architectures.replaceAll(',', ', ')}, and ${gpus}: ` +
      `rebuild it for this machine with CUDAARCHS="${wanted}" RING_ATTENTION_BUILD=source npm rebuild ring-attention`,
  };
}
