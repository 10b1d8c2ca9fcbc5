// ring-attention: exact attention over sequences split across devices (Ring Attention with
// Blockwise Transformers, Liu, Zaharia & Abbeel 2023), for TypeScript.
import { cudaInfo, native, nativePath, type CudaDevice, type CudaInfo, type CudaMemoryStats, type HostMemoryStats } from './native.js';

export { attention, attentionBackward, MAX_HEAD_DIM } from './attention.js';
export type { AttentionGradients, AttentionOptions, AttentionResult } from './attention.js';
export { ProcessGroup } from './group.js';
export type { AllReduceWork, Backend } from './group.js';
export { initProcessGroup } from './process-group.js';
export type { InitProcessGroupOptions } from './process-group.js';
export { readDistributedEnv } from './dist-env.js';
export type { DistributedEnv } from './dist-env.js';
export { launch, MAX_WORLD_SIZE } from './launch.js';
/** CPU ops of a LLaMA-style training step with their backwards (linear, embedding, rmsNorm, rope, ffn, cross-entropy, AdamW, ...). */
export * as ops from './ops.js';
export type { LaunchOptions, RankContext } from './launch.js';
export { ringAttention, ringAttentionBackward } from './ring.js';
export type { RingAttentionOptions } from './ring.js';
export { gatherSequence, shardSequence } from './shard.js';
export type { GatherOptions, Layout, ShardOptions } from './shard.js';
export { float16BitsToFloat32, float32ToBfloat16Bits, float32ToFloat16Bits, bfloat16BitsToFloat32 } from './half.js';
export { llamaPresets, llamaTensorNames, loadLlamaConfig, parameterCount, parseLlamaConfig } from './llama-config.js';
export type { LlamaConfig, LlamaPreset, ResolvedLlamaConfig } from './llama-config.js';
export { createLlama, initLlama, LlamaModel, loadLlama, saveLlama } from './llama-model.js';
export type { InitLlamaOptions, LlamaDeviceOptions, LlamaLayerParams, LlamaParams, SaveLlamaOptions } from './llama-model.js';
export { IGNORE_INDEX, shardTokens } from './llama.js';
export { ropeParameters, ROPE_TYPES, type RopeConfig, type RopeParameters } from './rope-freq.js';
export type { Checkpointing, ShardTokensOptions } from './llama.js';
export { createTrainer, Trainer } from './train.js';
export type { ForwardOptions, ForwardResult, StepOptions, StepResult, TrainerOptions } from './train.js';
export { MAX_HEADER_BYTES, readSafetensors, readSafetensorsHeader } from './safetensors.js';
export type {
  FloatDType, LoadedTensor, ReadSafetensorsOptions, SafetensorsContents, SafetensorsDType, SafetensorsEntry, SafetensorsHeader,
} from './safetensors.js';
export { INDEX_FILE, readSafetensorsDir, safetensorsWeightMap, SINGLE_FILE } from './safetensors-dir.js';
export { writeSafetensors } from './safetensors-write.js';
export type { TensorToWrite, WritableDType } from './safetensors-write.js';
export { Tensor, tensor, zeros } from './tensor.js';
export type { DeviceName, DType, TensorOptions } from './tensor.js';
export type { CudaDevice, CudaInfo, CudaMemoryStats, HostMemoryStats };

export interface BuildInfo {
  /** The .node file that was loaded. */
  binary: string;
  /** How it was obtained: a prebuilt binary from the package, or built at install. */
  build: 'prebuild' | 'cmake-js' | 'node-gyp';
  /** 'cuda' when a CUDA device can be used, else 'cpu'. */
  backend: 'cpu' | 'cuda';
  /** The CPU backend's attention and matrix-product code in use: compiled for AVX2 and FMA
   * (x86-64 CPUs that have them), or the portable build (`RING_ATTENTION_PORTABLE_CPU=1` forces it). */
  cpuKernels: 'avx2+fma' | 'portable';
  /** Threads each CPU kernel call may use: `RING_ATTENTION_NUM_THREADS` (at most 4x the cores), else the cores. */
  cpuThreads: number;
  cuda: CudaInfo;
}

/** What was loaded and what it can use here. */
export function info(): BuildInfo {
  const cuda = cudaInfo();
  const build = /[\\/]prebuilds[\\/]/.test(nativePath) ? 'prebuild' : (native.buildSystem() as 'cmake-js' | 'node-gyp');
  return { binary: nativePath, build, backend: cuda.available ? 'cuda' : 'cpu', cpuKernels: native.cpuKernels() as BuildInfo['cpuKernels'],
    cpuThreads: native.cpuThreads(), cuda };
}

/**
 * Waits until the GPU has finished all queued work (a no-op without CUDA). Library calls
 * return once their kernels are queued; time GPU work with this, and it also surfaces an
 * asynchronous kernel error as an exception here rather than at a later call.
 */
export function cudaSynchronize(): void {
  native.cudaSynchronize();
}

/** The CUDA caching allocator's counters (all zero without CUDA). */
export function cudaMemoryStats(): CudaMemoryStats {
  return native.cudaMemoryStats();
}

/**
 * CPU tensor storage held by this process (all threads, so all in-process ranks together).
 * Workspaces inside native ops are not counted; they are bounded by the op's block sizes.
 */
export function hostMemoryStats(): HostMemoryStats {
  return native.hostMemoryStats();
}

/** Starts both peaks (host and CUDA) afresh from what is in use now. */
export function resetPeakMemoryStats(): void {
  native.resetPeakMemoryStats();
}
