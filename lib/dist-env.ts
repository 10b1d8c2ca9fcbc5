// Where this process sits in a multi-process job, read from the variables that torchrun,
// `ring-attention launch` (the same names) or Slurm's srun set.
import { isIPv6 } from 'node:net';

export interface DistributedEnv {
  rank: number;
  worldSize: number;
  localRank: number;
  /** Processes on this node. */
  localWorldSize: number;
  masterAddr: string;
  masterPort: number;
  /**
   * Where rank 0 listens for the rendezvous: RING_ATTENTION_RDZV_PORT if set; under torchrun's
   * agent store (TORCHELASTIC_USE_AGENT_STORE=True), whose server holds MASTER_PORT for the whole
   * job, the port after it; else MASTER_PORT.
   */
  rendezvousPort: number;
  /** Identifies the job, so that two jobs on one port cannot join each other's rendezvous. */
  jobToken: string;
  launcher: 'torchrun' | 'slurm';
}

type Env = Record<string, string | undefined>;

/** The most processes a job may have: far beyond any cluster, small enough for rank lists. */
export const MAX_PROCESSES = 2 ** 20;

function intVar(env: Env, name: string, min: number, max = Number.MAX_SAFE_INTEGER): number {
  const raw: unknown = env[name];
  if (raw === undefined || raw === '') throw new RangeError(`environment: ${name} is not set`);
  if (typeof raw !== 'string') throw new TypeError(`environment: ${name} must be a string, got ${typeof raw}`);
  const value = Number(raw);
  if (!/^\d+$/.test(raw) || value < min || value > max)
    throw new RangeError(`environment: ${name} must be an integer in [${min}, ${max}], got '${raw}'`);
  return value;
}

function master(env: Env, launcher: string): { masterAddr: string; masterPort: number; rendezvousPort: number } {
  const hint = launcher === 'slurm'
    ? '; under srun, export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1) and MASTER_PORT=29500'
    : '';
  if (!env.MASTER_ADDR) throw new RangeError(`environment: MASTER_ADDR is not set${hint}`);
  // torchrun's help writes IPv6 addresses in brackets ([::1]); sockets take them without.
  const masterAddr = /^\[.*\]$/.test(env.MASTER_ADDR) ? env.MASTER_ADDR.slice(1, -1) : env.MASTER_ADDR;
  // 'host:29500' would be looked up as a host name, and fail only at the rendezvous's deadline.
  // A space or newline (a quoting slip) would also fail only at the deadline, as an unknown host.
  if (masterAddr === '' || /\s/.test(masterAddr) || (masterAddr.includes(':') && !isIPv6(masterAddr)))
    throw new RangeError(`environment: MASTER_ADDR must be a host name or an IP address (the port goes in MASTER_PORT), got ${JSON.stringify(env.MASTER_ADDR)}${hint}`);
  let masterPort: number;
  try {
    masterPort = intVar(env, 'MASTER_PORT', 1, 65535);
  } catch (e) {
    throw new RangeError(`${(e as Error).message}${hint}`);
  }
  const rendezvousPort = env.RING_ATTENTION_RDZV_PORT
    ? intVar(env, 'RING_ATTENTION_RDZV_PORT', 1, 65535)
    : env.TORCHELASTIC_USE_AGENT_STORE === 'True' ? (masterPort < 65535 ? masterPort + 1 : masterPort - 1) : masterPort;
  return { masterAddr, masterPort, rendezvousPort };
}

/**
 * This node's task count in the step: SLURM_STEP_TASKS_PER_NODE ("2(x3),1": 2 on each of the
 * first three nodes, then 1) at SLURM_NODEID, else the job's SLURM_TASKS_PER_NODE alike; else
 * SLURM_NTASKS_PER_NODE (set only with --ntasks-per-node, and inherited from sbatch); else no
 * bound (the caller caps it at SLURM_NTASKS).
 */
function slurmTasksHere(env: Env): number {
  const name = env.SLURM_STEP_TASKS_PER_NODE ? 'SLURM_STEP_TASKS_PER_NODE' : 'SLURM_TASKS_PER_NODE', layout = env[name];
  if (layout) {
    const counts: number[] = [];
    for (const part of layout.split(',')) {
      const m = /^(\d+)(?:\(x(\d+)\))?$/.exec(part.trim());
      if (!m || Number(m[1]) < 1 || Number(m[2] ?? 1) < 1) throw new RangeError(`environment: ${name}: expected counts such as '4(x2),1', got '${layout}'`);
      for (let i = 0; i < Number(m[2] ?? 1) && counts.length < MAX_PROCESSES; ++i) counts.push(Number(m[1]));
    }
    const node = env.SLURM_NODEID ? intVar(env, 'SLURM_NODEID', 0, counts.length - 1) : 0;
    return counts[node]!;
  }
  return env.SLURM_NTASKS_PER_NODE ? intVar(env, 'SLURM_NTASKS_PER_NODE', 1) : Number.MAX_SAFE_INTEGER;
}

/** Reads torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, ...) or, failing those, Slurm's (SLURM_PROCID, ...). */
export function readDistributedEnv(env: Record<string, string | undefined> = process.env): DistributedEnv {
  if (env === null || typeof env !== 'object') throw new TypeError(`env: expected an object of environment variables, got ${env === null ? 'null' : typeof env}`);
  // An sbatch script may export WORLD_SIZE for srun's tasks, and a shell may hold an empty
  // RANK: only a RANK with a value means torchrun (or our launcher) when Slurm's are there.
  const torchrun = env.RANK ? true : env.SLURM_PROCID === undefined && (env.RANK !== undefined || env.WORLD_SIZE !== undefined);
  if (torchrun) {
    const worldSize = intVar(env, 'WORLD_SIZE', 1, MAX_PROCESSES);
    const rank = intVar(env, 'RANK', 0, worldSize - 1);
    const localWorldSize = env.LOCAL_WORLD_SIZE ? intVar(env, 'LOCAL_WORLD_SIZE', 1, worldSize) : worldSize;
    const localRank = env.LOCAL_RANK ? intVar(env, 'LOCAL_RANK', 0, localWorldSize - 1) : rank % localWorldSize;
    const m = master(env, 'torchrun');
    // torchrun's --rdzv-id defaults to 'none', shared by every job: no better than none.
    const runId = env.TORCHELASTIC_RUN_ID && env.TORCHELASTIC_RUN_ID !== 'none' ? env.TORCHELASTIC_RUN_ID : undefined;
    const jobToken = env.RING_ATTENTION_JOB_TOKEN || runId || `${m.masterAddr}:${m.masterPort}`;
    return { rank, worldSize, localRank, localWorldSize, ...m, jobToken, launcher: 'torchrun' };
  }
  if (env.SLURM_PROCID !== undefined) {
    const worldSize = intVar(env, 'SLURM_NTASKS', 1, MAX_PROCESSES);
    const rank = intVar(env, 'SLURM_PROCID', 0, worldSize - 1);
    const localWorldSize = Math.min(slurmTasksHere(env), worldSize);
    const localRank = intVar(env, 'SLURM_LOCALID', 0, localWorldSize - 1);
    const m = master(env, 'slurm');
    const jobToken = env.RING_ATTENTION_JOB_TOKEN || `slurm-${env.SLURM_JOB_ID ?? '?'}.${env.SLURM_STEP_ID ?? '0'}`;
    return { rank, worldSize, localRank, localWorldSize, ...m, jobToken, launcher: 'slurm' };
  }
  throw new RangeError(
    'environment: no RANK/WORLD_SIZE (torchrun, ring-attention launch) or SLURM_PROCID/SLURM_NTASKS (srun) found; ' +
      'start this script with `npx ring-attention launch --nproc-per-node N script.js`, `torchrun --no-python`, or `srun`');
}
