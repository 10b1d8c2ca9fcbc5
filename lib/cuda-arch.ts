// Whether this binary's CUDA code can run on the GPUs here. A binary built from source for other
// GPUs (sm_90a, say, on an A100 or an L40) would load, report CUDA, and then fail at the first
// kernel with "no kernel image"; this says so up front, with the rebuild that fixes it, and
// leaves the CPU backend in charge when no GPU here can run it.
import type { CudaInfo, RawCudaInfo } from './native.js';

/** The oldest GPUs the CUDA code supports: compute capability 8.0 (Ampere; cp.async, bf16 MMA). */
export const MIN_COMPUTE_CAPABILITY = '8.0';

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

const capability = (cc: string) => cc.split('.').map(Number) as [number, number];

/**
 * Whether code compiled for `archs` (CMake's list, joined by ',' or ';') runs on a GPU of
 * compute capability `cc` ("8.6"): machine code runs within its major version on the same or a
 * later minor one (arch-specific 'a' code on that GPU alone), PTX is compiled by the driver for
 * the same or any later GPU (an 'a' PTX for that GPU alone). Lists it cannot read ("all",
 * "native", "unknown") are taken to run.
 */
export function archsRunOn(archs: string, cc: string): boolean {
  const [major, minor] = capability(cc);
  const entries = archs.split(/[,;]/).filter((e) => e.trim() !== '').map(parseEntry);
  if (entries.length === 0 || entries.some((e) => e === null)) return true;
  return (entries as ArchEntry[]).some((e) => {
    if (e.suffix === 'a') return major === e.major && minor === e.minor;
    const sameMajorLater = major === e.major && minor >= e.minor;
    if (e.sass && sameMajorLater) return true;
    return e.ptx && (e.suffix === 'f' ? sameMajorLater : major > e.major || sameMajorLater);
  });
}

/** Whether the CUDA code can support a GPU of capability `cc` at all (8.0 or newer). */
export function supportedCapability(cc: string): boolean {
  const [major, minor] = capability(cc), [minMajor, minMinor] = capability(MIN_COMPUTE_CAPABILITY);
  return major > minMajor || (major === minMajor && minor >= minMinor);
}

/** The CMake architecture a source build would name for a GPU of capability `cc` (9.0: the Hopper kernels' 90a). */
export function archFor(cc: string): string {
  const [major, minor] = cc.split('.');
  return `${major}${minor}${cc === '9.0' ? 'a' : ''}`;
}

/**
 * `info` with each device's `supported` (the compiled code runs on it), and CUDA marked
 * unavailable, with why, when no device here can run it. A GPU that cannot, beside others that
 * can (a display GPU), is only flagged: hide it with CUDA_VISIBLE_DEVICES.
 */
export function checkArchitectures(info: RawCudaInfo): CudaInfo {
  const devices = info.devices.map((d) => ({
    ...d, supported: supportedCapability(d.computeCapability) && archsRunOn(info.architectures, d.computeCapability) }));
  if (!info.available || devices.some((d) => d.supported)) return { ...info, devices };
  const gpus = devices.map((d, i) => `GPU ${i} (${d.name}) is compute capability ${d.computeCapability}`).join(', ');
  const fit = devices.filter((d) => supportedCapability(d.computeCapability));
  const wanted = [...new Set(fit.map((d) => archFor(d.computeCapability)))].join(', ');
  const reason = fit.length === 0
    ? `${gpus}: this library's CUDA code needs compute capability ${MIN_COMPUTE_CAPABILITY} or newer`
    : `this binary's CUDA code is for ${info.architectures.replaceAll(',', ', ')}, and ${gpus}: ` +
      `rebuild it on this machine (for ${wanted}) with RING_ATTENTION_BUILD=source npm rebuild ring-attention`;
  return { ...info, devices, available: false, reason };
}

/** Why GPU `device` cannot run the compiled code (a GPU beside others that can), or null. */
export function deviceProblem(info: CudaInfo, device: number): string | null {
  const d = info.devices[device];
  if (!d || d.supported) return null;
  const why = supportedCapability(d.computeCapability)
    ? `this binary's CUDA code is for ${info.architectures.replaceAll(',', ', ')}`
    : `the CUDA code needs compute capability ${MIN_COMPUTE_CAPABILITY} or newer`;
  return `GPU ${device} (${d.name}, compute capability ${d.computeCapability}) cannot run it: ${why}; ` +
    'leave it out with CUDA_VISIBLE_DEVICES';
}
