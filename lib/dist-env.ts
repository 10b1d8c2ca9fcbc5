// Where this process sits in a multi-process job, read from the variables that torchrun,
// `ring-attention launch` (the same names) or Slurm's srun set.
export interface DistributedEnv {
  rank: number;
  worldSize: number;
  localRank: number;
  /** Processes on this node. */
  localWorldSize: number;
  masterAddr: string;
  masterPort: number;
  /** Identifies the job, so that two jobs on one port cannot join each other's rendezvous. */
  jobToken: string;
  launcher: 'torchrun' | 'slurm';
}

type Env = Record<string, string | undefined>;

function intVar(env: Env, name: string, min: number, max = Number.MAX_SAFE_INTEGER): number {
  const raw = env[name];
  if (raw === undefined || raw === '') throw new RangeError(`environment: ${name} is not set`);
  const value = Number(raw);
  if (!/^\d+$/.test(raw.trim()) || value < min || value > max)
    throw new RangeError(`environment: ${name} must be an integer in [${min}, ${max}], got '${raw}'`);
  return value;
}

function master(env: Env, launcher: string): { masterAddr: string; masterPort: number } {
  const hint = launcher === 'slurm'
    ? '; under srun, export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1) and MASTER_PORT=29500'
    : '';
  if (!env.MASTER_ADDR) throw new RangeError(`environment: MASTER_ADDR is not set${hint}`);
  try {
    return { masterAddr: env.MASTER_ADDR, masterPort: intVar(env, 'MASTER_PORT', 1, 65535) };
  } catch (e) {
    throw new RangeError(`${(e as Error).message}${hint}`);
  }
}

/** Reads torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, ...) or, failing those, Slurm's (SLURM_PROCID, ...). */
export function readDistributedEnv(env: Env = process.env): DistributedEnv {
  if (env.RANK !== undefined || env.WORLD_SIZE !== undefined) {
    const worldSize = intVar(env, 'WORLD_SIZE', 1);
    const rank = intVar(env, 'RANK', 0, worldSize - 1);
    const localWorldSize = env.LOCAL_WORLD_SIZE ? intVar(env, 'LOCAL_WORLD_SIZE', 1, worldSize) : worldSize;
    const localRank = env.LOCAL_RANK ? intVar(env, 'LOCAL_RANK', 0, localWorldSize - 1) : rank % localWorldSize;
    const m = master(env, 'torchrun');
    const jobToken = env.RING_ATTENTION_JOB_TOKEN ?? env.TORCHELASTIC_RUN_ID ?? `${m.masterAddr}:${m.masterPort}`;
    return { rank, worldSize, localRank, localWorldSize, ...m, jobToken, launcher: 'torchrun' };
  }
  if (env.SLURM_PROCID !== undefined) {
    const worldSize = intVar(env, 'SLURM_NTASKS', 1);
    const rank = intVar(env, 'SLURM_PROCID', 0, worldSize - 1);
    // SLURM_NTASKS_PER_NODE is set only with --ntasks-per-node; SLURM_STEP_TASKS_PER_NODE ("4(x2)") always.
    const perNode = env.SLURM_NTASKS_PER_NODE ?? env.SLURM_STEP_TASKS_PER_NODE?.match(/^\d+/)?.[0];
    const localWorldSize = perNode ? Math.min(Number(perNode), worldSize) : worldSize;
    const localRank = intVar(env, 'SLURM_LOCALID', 0, Math.max(0, localWorldSize - 1));
    const m = master(env, 'slurm');
    const jobToken = env.RING_ATTENTION_JOB_TOKEN ?? `slurm-${env.SLURM_JOB_ID ?? '?'}.${env.SLURM_STEP_ID ?? '0'}`;
    return { rank, worldSize, localRank, localWorldSize, ...m, jobToken, launcher: 'slurm' };
  }
  throw new RangeError(
    'environment: no RANK/WORLD_SIZE (torchrun, ring-attention launch) or SLURM_PROCID/SLURM_NTASKS (srun) found; ' +
      'start this script with `npx ring-attention launch --nproc-per-node N script.js`, `torchrun --no-python`, or `srun`');
}
