// Loads the addon (a prebuild first, then a local build; node-gyp-build decides) and
// types its functions. Nothing here checks arguments: the callers in this folder do.
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { checkArchitectures } from './cuda-arch.js';

export interface TensorHandle {
  toFloat32Array(): Float32Array;
  dispose(): void;
}

export interface CudaInfo {
  compiled: boolean;
  available: boolean;
  deviceCount: number;
  driverVersion: number;
  runtimeVersion: number;
  architectures: string;
  reason: string;
  devices: CudaDevice[];
}

export interface CudaDevice {
  name: string;
  computeCapability: string;
  totalMemory: number;
  multiprocessors: number;
  /** Whether this binary's CUDA code runs on it: compiled for its architecture, and compute capability 8.0 or newer. */
  supported: boolean;
}

/** What the native code reports; cudaInfo() adds each device's `supported`. */
export type RawCudaInfo = Omit<CudaInfo, 'devices'> & { devices: Omit<CudaDevice, 'supported'>[] };

export interface CudaMemoryStats {
  cudaMallocCalls: number;
  cacheHits: number;
  bytesInUse: number;
  bytesCached: number;
  /** Most bytes in use since start or resetPeakMemoryStats(). */
  peakBytesInUse: number;
}

export interface HostMemoryStats {
  /** Bytes of CPU tensor storage held now, by every thread of this process. */
  bytesInUse: number;
  /** Most bytes held since start or resetPeakMemoryStats(). */
  peakBytesInUse: number;
  /**
   * Tensor handles (host or CUDA) whose native object is alive, in every thread. dispose()
   * frees one at once; an undisposed one goes only after GC has collected it and the event
   * loop has turned (Node-API runs finalizers then), never inside a synchronous loop.
   */
  handles: number;
}

interface Native {
  createTensor(data: Float32Array, shape: number[], dtype: number, device: number): TensorHandle;
  createZeros(shape: number[], dtype: number, device: number): TensorHandle;
  /** documentIds: [batch, seq] ids of a packed sequence (seqQ == seqK), or undefined. */
  attentionForward(q: TensorHandle, k: TensorHandle, v: TensorHandle, causal: boolean, scale: number, documentIds?: Int32Array): [TensorHandle, TensorHandle];
  attentionBackward(
    dout: TensorHandle, q: TensorHandle, k: TensorHandle, v: TensorHandle, out: TensorHandle, lse: TensorHandle,
    causal: boolean, scale: number, deterministic: boolean, documentIds?: Int32Array,
  ): [TensorHandle, TensorHandle, TensorHandle];
  groupCreate(worldSize: number, timeoutMs: number): number;
  groupAbort(id: number, reason: string): void;
  groupLeave(id: number, rank: number, destroyed?: boolean): void;
  groupDestroy(id: number): void;
  groupSend(id: number, rank: number, peer: number, t: TensorHandle): void;
  groupRecv(id: number, rank: number, peer: number, into: TensorHandle): void;
  groupAllReduce(id: number, rank: number, ts: TensorHandle[]): void;
  groupBarrier(id: number, rank: number): void;
  // Benchmarks only: `parts` 0 the whole schedule, 1 its compute alone, 2 its transfers alone;
  // with `timeSteps`, the results end with a Float64Array of [compute, transfer, whole] ms per step.
  // Tests only: `failAtStep`, the ring step at which this rank throws.
  ringForward(
    id: number, rank: number, q: TensorHandle, k: TensorHandle, v: TensorHandle,
    causal: boolean, scale: number, zigzag: boolean, parts?: number, timeSteps?: boolean, deterministic?: boolean,
    documentIds?: Int32Array, failAtStep?: number,
  ): [TensorHandle, TensorHandle, Float64Array?];
  ringBackward(
    id: number, rank: number, dout: TensorHandle, q: TensorHandle, k: TensorHandle, v: TensorHandle,
    out: TensorHandle, lse: TensorHandle, causal: boolean, scale: number, zigzag: boolean, parts?: number, timeSteps?: boolean,
    deterministic?: boolean, documentIds?: Int32Array, failAtStep?: number,
  ): [TensorHandle, TensorHandle, TensorHandle, Float64Array?];
  /** Per ring step: [qLen, kLen, causal 0|1] that `rank` computes; [0, 0, 0] for a skipped step. */
  ringPlan(rank: number, worldSize: number, seq: number, causal: boolean, zigzag: boolean): [number, number, number][];
  ncclLoad(path: string): number;
  ncclUniqueId(): Uint8Array;
  ncclGroupCreate(id: Uint8Array, rank: number, worldSize: number, device: number, timeoutMs: number): number;
  ncclGroupDestroy(id: number): void;
  ncclSend(id: number, t: TensorHandle, peer: number): void;
  ncclRecv(id: number, into: TensorHandle, peer: number): void;
  ncclAllReduce(id: number, ts: TensorHandle[]): void;
  ncclAllReduceAsync(id: number, ts: TensorHandle[]): number;
  ncclWaitAllReduce(id: number, ticket: number): void;
  ncclBarrier(id: number): void;
  ncclRingForward(
    id: number, q: TensorHandle, k: TensorHandle, v: TensorHandle, causal: boolean, scale: number, zigzag: boolean, parts?: number,
    timeSteps?: boolean, deterministic?: boolean, documentIds?: Int32Array, failAtStep?: number,
  ): [TensorHandle, TensorHandle, Float64Array?];
  ncclRingBackward(
    id: number, dout: TensorHandle, q: TensorHandle, k: TensorHandle, v: TensorHandle, out: TensorHandle, lse: TensorHandle,
    causal: boolean, scale: number, zigzag: boolean, parts?: number, timeSteps?: boolean, deterministic?: boolean,
    documentIds?: Int32Array, failAtStep?: number,
  ): [TensorHandle, TensorHandle, TensorHandle, Float64Array?];
  /** What the CUDA runtime reports; the library asks cudaInfo() below, which also checks the architectures. */
  cudaInfo(): RawCudaInfo;
  /** CUDA attention forward and backward calls whose kernels were launched so far in this process, and those on the Hopper kernels (for tests). */
  attentionLaunches(): { forward: number; backward: number; hopperForward: number; hopperBackward: number };
  /** 'cmake-js' or 'node-gyp'. */
  buildSystem(): string;
  cpuKernels(): string;
  /** The CPU kernels' thread count (RING_ATTENTION_NUM_THREADS, capped at 4x the cores, else the cores). */
  cpuThreads(): number;
  /** The file `nameOrPath` resolves to through the dynamic loader, or '' when it cannot be opened. */
  findLibrary(nameOrPath: string): string;
  cudaMemoryStats(): CudaMemoryStats;
  /** Bytes of the CUDA tensors alive on that GPU (0 without CUDA). */
  cudaBytesInUseOn(device: number): number;
  /** Makes `device` the GPU of this thread's later tensors and kernels. */
  cudaSetDevice(device: number): void;
  hostMemoryStats(): HostMemoryStats;
  resetPeakMemoryStats(): void;
  cudaEmptyCache(): void;
  cudaSynchronize(): void;
  // Training ops (native/ops_addon.cpp): CPU (float32) or CUDA tensors; lib/ops.ts checks the arguments.
  // "+=" arguments accumulate into the tensor given, other outputs are overwritten.
  opsLinear(x: TensorHandle, w: TensorHandle): TensorHandle;
  opsLinearBackward(dy: TensorHandle, x: TensorHandle, w: TensorHandle, dx: TensorHandle | null, dw: TensorHandle): void;
  opsEmbedding(ids: Int32Array, table: TensorHandle): TensorHandle;
  opsEmbeddingBackward(ids: Int32Array, dy: TensorHandle, dtable: TensorHandle, paddingIdx: number): void; // -1: none
  /** -> [y, rstd] */
  opsRmsNorm(x: TensorHandle, w: TensorHandle, eps: number): [TensorHandle, TensorHandle];
  opsRmsNormBackward(dy: TensorHandle, x: TensorHandle, w: TensorHandle, rstd: TensorHandle, dx: TensorHandle, dw: TensorHandle): void;
  opsRope(x: TensorHandle, positions: Int32Array, invFreq: Float64Array, inverse: boolean): TensorHandle;
  opsFfn(x: TensorHandle, wGate: TensorHandle, wUp: TensorHandle, wDown: TensorHandle, blockRows: number): TensorHandle;
  opsFfnBackward(
    dy: TensorHandle, x: TensorHandle, wGate: TensorHandle, wUp: TensorHandle, wDown: TensorHandle, blockRows: number,
    dx: TensorHandle, dwGate: TensorHandle, dwUp: TensorHandle, dwDown: TensorHandle,
  ): void;
  /** -> [lossSum, count] */
  opsCrossEntropy(
    h: TensorHandle, wHead: TensorHandle, targets: Int32Array, chunkRows: number, ignoreIndex: number, gradScale: number,
    dh: TensorHandle | null, dwHead: TensorHandle | null,
  ): [number, number];
  opsAdamW(
    param: TensorHandle, grad: TensorHandle, m: TensorHandle, v: TensorHandle,
    step: number, lr: number, beta1: number, beta2: number, eps: number, weightDecay: number,
  ): void;
  /** adamw over lists of one length; copies[i] (or copies) null where there is none. */
  opsAdamWMulti(
    params: TensorHandle[], grads: TensorHandle[], m: TensorHandle[], v: TensorHandle[], copies: (TensorHandle | null)[] | null,
    weightDecay: number[],
    step: number, lr: number, beta1: number, beta2: number, eps: number, gradScale: number,
  ): void;
  opsSumOfSquares(ts: TensorHandle[]): number;
  opsScale(t: TensorHandle, s: number): void;
  opsAdd(a: TensorHandle, b: TensorHandle): void;
  opsZero(t: TensorHandle): void;
  /** dst = src in dst's dtype (same device and element count). */
  opsCopy(dst: TensorHandle, src: TensorHandle): void;
  /** out[i] ~ normal(0, std), a pure function of (seed, stream, i); in place. */
  randomNormal(out: Float32Array, seed: number, stream: number, std: number): void;
  /** A handle on the same memory with another shape of the same element count. */
  opsView(t: TensorHandle, shape: number[]): TensorHandle;
  /** Opens libcublasLt, then libcublas, for the CUDA ops' matrix products; idempotent. */
  cublasLoad(ltPath: string, path: string): void;
}

const require = createRequire(import.meta.url);
const MAX_THREADS_ASKED = 1_000_000; // far past any machine (the count is capped at 4x the cores), well inside an int
const packageRoot = join(dirname(fileURLToPath(import.meta.url)), '..');

// Checked here, before the native code reads it (once, with atoi, which gives 0, read as "all
// cores", for text and for values past an int): a typo should not quietly mean all cores.
const threads = process.env.RING_ATTENTION_NUM_THREADS;
if (threads !== undefined && threads !== '') {
  const digits = /^[ \t]*\+?([0-9]+)[ \t]*$/.exec(threads)?.[1];
  const n = digits === undefined ? NaN : Number(digits);
  if (!(n >= 1 && n <= MAX_THREADS_ASKED))
    throw new RangeError(`RING_ATTENTION_NUM_THREADS: expected a whole number of CPU threads from 1 to ${MAX_THREADS_ASKED}, got '${threads}'`);
}

export const native: Native = require('node-gyp-build')(packageRoot);
/** Path of the binary that was loaded, for diagnostics. */
export const nativePath: string = require('node-gyp-build').resolve(packageRoot);

let info: CudaInfo | undefined;
/**
 * The CUDA runtime's report, with CUDA unavailable (and why) where a GPU here cannot run the
 * compiled code. Asked once (devices do not come and go, and the native side asks the driver
 * once too): tensors check it at every 'cuda' allocation. Frozen, as it is shared.
 */
export function cudaInfo(): CudaInfo {
  if (!info) {
    const checked = checkArchitectures(native.cudaInfo());
    checked.devices.forEach((d) => Object.freeze(d));
    Object.freeze(checked.devices);
    info = Object.freeze(checked);
  }
  return info;
}

// The GPU this thread's CUDA work goes to: CUDA's default, 0, until initProcessGroup chooses one.
// Module state is per thread here as CUDA's current device is (launch() ranks are worker threads).
let currentDevice = 0;
/** Makes `device` current for this thread's later tensors and kernels. */
export function setCudaDevice(device: number): void {
  native.cudaSetDevice(device);
  currentDevice = device;
}
export function currentCudaDevice(): number {
  return currentDevice;
}
