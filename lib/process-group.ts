// initProcessGroup(): this process's place in a multi-process job (torchrun, srun or
// `ring-attention launch`), NCCL found and loaded, rank 0's NCCL id handed to every rank
// through our rendezvous, and an NCCL communicator on this process's GPU.
import { readDistributedEnv } from './dist-env.js';
import { checkInteger, checkOptions, fail, MAX_TIMER_MS, DEFAULT_TIMEOUT_MS } from './errors.js';
import { ProcessGroup } from './group.js';
import { findLibrary, LIBRARIES } from './libraries.js';
import { deviceProblem } from './cuda-arch.js';
import { cudaInfo, native, setCudaDevice } from './native.js';
import { rendezvous } from './rendezvous.js';

export interface InitProcessGroupOptions {
  backend: 'nccl';
  /** How long the rendezvous and each collective may take before failing. Default 300000 (5 minutes). */
  timeoutMs?: number;
  /**
   * How long the ranks wait for each other at the start, when nodes may start minutes apart
   * (torchrun waits 900000 ms); later waits keep `timeoutMs`, so that a dead peer is still found
   * soon. Default `timeoutMs`.
   */
  rendezvousTimeoutMs?: number;
  /** The variables to read instead of process.env (torchrun's or Slurm's). */
  env?: Record<string, string | undefined>;
}

/** Joins the job this process was started in and returns its NCCL group. Every rank must call it. */
export async function initProcessGroup(opts: InitProcessGroupOptions): Promise<ProcessGroup> {
  const o = checkOptions(opts, 'opts', ['backend', 'timeoutMs', 'rendezvousTimeoutMs', 'env']);
  if (o.backend !== 'nccl')
    fail(typeof o.backend === 'string' ? 'range' : 'type', `opts.backend: expected 'nccl' (groups of threads come from launch()), got ${JSON.stringify(o.backend)}`);
  const timeoutMs = o.timeoutMs === undefined ? DEFAULT_TIMEOUT_MS : checkInteger(o.timeoutMs, 'opts.timeoutMs', 1, MAX_TIMER_MS);
  const rendezvousTimeoutMs = o.rendezvousTimeoutMs === undefined ? timeoutMs
    : checkInteger(o.rendezvousTimeoutMs, 'opts.rendezvousTimeoutMs', 1, MAX_TIMER_MS);
  const env = readDistributedEnv(o.env === undefined ? process.env : (o.env as Record<string, string | undefined>));

  const nccl = findLibrary(LIBRARIES.nccl);
  if (!nccl.path)
    throw new Error(`initProcessGroup: NCCL (${nccl.name}) was not found; looked in ${nccl.searched.join(', ')}. ` +
      `Install it (pip install nvidia-nccl-cu13, or the system package libnccl2), or set ${LIBRARIES.nccl.envVar} to the library or its directory.`);
  native.ncclLoad(nccl.path);
  const cuda = cudaInfo();
  if (!cuda.available) throw new Error(`initProcessGroup: the 'nccl' backend needs a CUDA device (${cuda.reason})`);
  // `ring-attention launch` leaves each process one visible GPU; under torchrun all are visible.
  // (Slurm may also give each task a few GPUs of its own: the modulo keeps their sets apart when
  // tasks are laid out in blocks, and NCCL itself refuses two ranks on one GPU otherwise.)
  const device = cuda.deviceCount > 1 ? env.localRank % cuda.deviceCount : 0;
  const sharedGpus = cuda.deviceCount > 1 && cuda.deviceCount < env.localWorldSize;
  // This process's GPU becomes current now, before the first await, so that tensors made while
  // the rendezvous is awaited (weights being loaded, say) are made there. Tensors made before
  // this call are on GPU 0, another rank's GPU, where NCCL and the kernels would fail (or crowd
  // it) far from the cause.
  const onGpu0 = device === 0 ? 0 : native.cudaBytesInUseOn(0);
  if (onGpu0 > 0)
    throw new Error(`initProcessGroup: ${onGpu0} bytes of CUDA tensors were made on GPU 0 before this process's GPU was chosen; ` +
      `this rank's GPU is ${device} (LOCAL_RANK ${env.localRank}), and GPU 0 is another rank's. ` +
      `Call initProcessGroup, and await it, before making CUDA tensors`);
  const problem = deviceProblem(cuda, device);
  if (problem) throw new Error(`initProcessGroup: this rank's GPU (LOCAL_RANK ${env.localRank}): ${problem}`);
  try {
    setCudaDevice(device);
  } catch (e) {
    throw new Error(`initProcessGroup: cannot use GPU ${device} (LOCAL_RANK ${env.localRank} of ${cuda.deviceCount} visible): ${(e as Error).message}`);
  }

  const id = await rendezvous({
    rank: env.rank, worldSize: env.worldSize, addr: env.masterAddr, port: env.rendezvousPort, token: env.jobToken, timeoutMs: rendezvousTimeoutMs,
    payload: env.rank === 0 ? native.ncclUniqueId() : undefined,
  });
  let group: number;
  try {
    group = native.ncclGroupCreate(id, env.rank, env.worldSize, device, timeoutMs);
  } catch (e) {
    // NCCL's answer to two ranks on one GPU ("Duplicate GPU detected" in its log)
    if (sharedGpus && e instanceof Error && /invalid usage/.test(e.message))
      e.message += `; this process sees ${cuda.deviceCount} GPUs for the ${env.localWorldSize} ranks of its node and took GPU ` +
        `${device} (LOCAL_RANK ${env.localRank} mod ${cuda.deviceCount}), which another rank may have taken too when tasks are ` +
        `not laid out in blocks: give each rank its own GPU (srun --gpus-per-task 1) or all of the node's`;
    throw e;
  }
  return ProcessGroup.attach(group, env.rank, env.worldSize, 'nccl');
}

