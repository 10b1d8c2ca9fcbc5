// `ring-attention launch`: one process per GPU, in the manner of torchrun. Each gets
// torchrun's variables (so the same script runs under torchrun --no-python or srun), its
// GPU through CUDA_VISIBLE_DEVICES, and the job's token. The first rank to fail takes the
// others down, and the launcher exits with that rank's code and shows its last error output.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { constants } from 'node:os';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { MAX_TIMER_MS } from './errors.js';

export const LAUNCH_USAGE = `usage: ring-attention launch --nproc-per-node N [--nnodes M --node-rank R]
         [--master-addr HOST] [--master-port PORT] [--rdzv-id ID] [--grace-ms MS] script.js [args...]

  --nproc-per-node N   processes on this node, one per GPU (required)
  --nnodes M           nodes in the job (default 1); run the same command on each node
  --node-rank R        this node's index in [0, M) (0 with one node; required with --nnodes > 1)
  --master-addr HOST   where rank 0 runs (default 127.0.0.1; required with --nnodes > 1)
  --master-port PORT   rank 0's rendezvous port (default 29500)
  --rdzv-id ID         the job's token, the same on every node (required with --nnodes > 1)
  --grace-ms MS        how long ranks get to exit before SIGKILL, after a rank failed (default 5000)
                       or after a forwarded signal (default 30000, as torchrun, time to save a checkpoint)
`;

interface LaunchArgs {
  nprocPerNode: number;
  nnodes: number;
  nodeRank: number;
  masterAddr: string;
  masterPort: number;
  rdzvId: string;
  /** After a rank's failure, and after a forwarded signal. */
  graceMs: { failure: number; signal: number };
  script: string;
  scriptArgs: string[];
}

class UsageError extends Error {}

function integer(name: string, raw: string | undefined, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (raw === undefined || !/^\d+$/.test(raw) || Number(raw) < min || Number(raw) > max)
    throw new UsageError(`--${name}: expected an integer in [${min}, ${max}], got ${raw === undefined ? 'nothing' : `'${raw}'`}`);
  return Number(raw);
}

export function parseLaunchArgs(argv: string[]): LaunchArgs {
  const opts = new Map<string, string>();
  let i = 0;
  for (; i < argv.length && argv[i]!.startsWith('--'); ++i) {
    if (argv[i] === '--') { // the end of the launcher's options, as getopt reads it
      ++i;
      break;
    }
    const [key, inline] = argv[i]!.slice(2).split(/=(.*)/s, 2) as [string, string | undefined];
    if (!['nproc-per-node', 'nnodes', 'node-rank', 'master-addr', 'master-port', 'rdzv-id', 'grace-ms'].includes(key))
      throw new UsageError(`unknown option --${key}`);
    opts.set(key, inline ?? argv[++i] ?? '');
  }
  const script = argv[i];
  if (!opts.has('nproc-per-node')) throw new UsageError('--nproc-per-node is required');
  if (!script) throw new UsageError('no script given');
  if (!existsSync(script)) throw new UsageError(`script: no file at ${resolve(script)}`);
  const nnodes = integer('nnodes', opts.get('nnodes') ?? '1', 1);
  if (nnodes > 1 && !opts.get('rdzv-id') && !process.env.RING_ATTENTION_JOB_TOKEN)
    throw new UsageError('--rdzv-id is required with --nnodes > 1: give every node the same job id');
  if (nnodes > 1 && !opts.has('node-rank'))
    throw new UsageError('--node-rank is required with --nnodes > 1: 0 on the node of rank 0, then 1, 2, ... (two nodes both taking 0 would claim the same ranks)');
  if (nnodes > 1 && !opts.get('master-addr'))
    throw new UsageError("--master-addr is required with --nnodes > 1: the address of node 0, where rank 0 runs (127.0.0.1 would be each node's own)");
  return {
    nprocPerNode: integer('nproc-per-node', opts.get('nproc-per-node'), 1, 1024),
    nnodes,
    nodeRank: integer('node-rank', opts.get('node-rank') ?? '0', 0, nnodes - 1),
    masterAddr: opts.get('master-addr') || '127.0.0.1',
    masterPort: integer('master-port', opts.get('master-port') ?? '29500', 1, 65535),
    rdzvId: opts.get('rdzv-id') || process.env.RING_ATTENTION_JOB_TOKEN || randomBytes(12).toString('hex'),
    graceMs: opts.has('grace-ms')
      ? { failure: integer('grace-ms', opts.get('grace-ms'), 0, MAX_TIMER_MS), signal: integer('grace-ms', opts.get('grace-ms'), 0, MAX_TIMER_MS) }
      : { failure: 5_000, signal: 30_000 },
    script,
    scriptArgs: argv.slice(i + 1),
  };
}

// The devices this node may use: CUDA_VISIBLE_DEVICES if set (rank i gets its i-th entry), else 0..N-1.
function deviceFor(localRank: number, n: number): string {
  const visible = process.env.CUDA_VISIBLE_DEVICES?.split(',').map((d) => d.trim()).filter(Boolean);
  if (!visible) return String(localRank);
  if (visible.length < n) throw new UsageError(`CUDA_VISIBLE_DEVICES lists ${visible.length} device(s), fewer than --nproc-per-node ${n}`);
  return visible[localRank]!;
}

const TAIL_BYTES = 8 * 1024;
// Ends a rank whose launcher died without stopping it (rank-watch.cts).
const RANK_WATCH = fileURLToPath(new URL('./rank-watch.cjs', import.meta.url));

/** Runs the job and resolves with the launcher's exit code. */
export async function launchProcesses(argv: string[]): Promise<number> {
  let a: LaunchArgs;
  let devices: string[];
  try {
    a = parseLaunchArgs(argv);
    devices = Array.from({ length: a.nprocPerNode }, (_, l) => deviceFor(l, a.nprocPerNode));
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    process.stderr.write(`ring-attention launch: ${e.message}\n\n${LAUNCH_USAGE}`);
    return 2;
  }

  const worldSize = a.nnodes * a.nprocPerNode;
  const children: ChildProcess[] = [];
  const tails: string[] = [];
  let failure: { rank: number; code: number | null; signal: NodeJS.Signals | null } | undefined;
  let interrupted: NodeJS.Signals | undefined;
  let killTimer: NodeJS.Timeout | undefined;

  const live = () => children.filter((c) => c.exitCode === null && c.signalCode === null);
  // Each rank leads a process group of its own (as torchrun's workers do): a terminal's Ctrl-C
  // reaches the launcher alone, which forwards it once, and a signal to the group reaches what
  // the rank started too (a data loader, a helper), which would otherwise outlive the job.
  const signalGroup = (pid: number | undefined, signal: NodeJS.Signals) => {
    try {
      process.kill(-pid!, signal);
      return true;
    } catch {
      return false; // no such group (yet, or any more)
    }
  };
  const signalRank = (c: ChildProcess, signal: NodeJS.Signals) => {
    if (!signalGroup(c.pid, signal)) c.kill(signal);
  };
  // A rank that ignores the signal (a handler that never runs while NCCL blocks its thread)
  // is killed after the grace period, so that the launcher always ends; so is what the failed
  // rank left behind (its group outlives it while any of it runs).
  let failedGroup: number | undefined;
  const signalAll = (signal: NodeJS.Signals, graceMs: number) => {
    for (const c of live()) signalRank(c, signal);
    killTimer ??= setTimeout(() => {
      for (const c of live()) signalRank(c, 'SIGKILL');
      if (failedGroup) signalGroup(failedGroup, 'SIGKILL');
    }, graceMs);
  };
  const stopOthers = () => signalAll('SIGTERM', a.graceMs.failure);
  const forward = (signal: NodeJS.Signals) => {
    if (interrupted) return killAll(); // a second Ctrl-C: no more waiting
    interrupted = signal;
    signalAll(signal, a.graceMs.signal);
  };
  // As torchrun: these end the job; the ranks get the signal, then SIGKILL after the grace period.
  const FORWARDED = ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGQUIT'] as const;
  for (const s of FORWARDED) process.on(s, forward);
  // Whatever ends the launcher itself (a crash, process.exit) takes the ranks with it, so that
  // none is left holding a GPU; a SIGKILL, which runs no handler, leaves it to each rank's
  // watch (rank-watch.cts).
  const killAll = () => {
    for (const c of live()) signalRank(c, 'SIGKILL');
  };
  process.on('exit', killAll);
  // A closed stderr (`launch ... 2>&1 | head`) must not crash the launcher: the ranks' output
  // is still kept for the failure report.
  const ignore = () => {};
  process.stderr.on('error', ignore);

  await new Promise<void>((done) => {
    let running = a.nprocPerNode;
    for (let local = 0; local < a.nprocPerNode; ++local) {
      const rank = a.nodeRank * a.nprocPerNode + local;
      const child = spawn(process.execPath, ['--require', RANK_WATCH, a.script, ...a.scriptArgs], {
        stdio: ['inherit', 'inherit', 'pipe'],
        detached: true, // its own process group: see signalRank
        env: {
          ...process.env,
          RANK: String(rank), WORLD_SIZE: String(worldSize),
          LOCAL_RANK: String(local), LOCAL_WORLD_SIZE: String(a.nprocPerNode), GROUP_RANK: String(a.nodeRank), GROUP_WORLD_SIZE: String(a.nnodes),
          ROLE_RANK: String(rank), ROLE_WORLD_SIZE: String(worldSize), ROLE_NAME: 'default', // torchrun's one role
          MASTER_ADDR: a.masterAddr, MASTER_PORT: String(a.masterPort),
          RING_ATTENTION_JOB_TOKEN: a.rdzvId, CUDA_VISIBLE_DEVICES: devices[local], RING_ATTENTION_LAUNCHER_PID: String(process.pid),
        },
      });
      tails[rank] = '';
      child.stderr!.on('data', (d: Buffer) => {
        process.stderr.write(d);
        tails[rank] = (tails[rank] + d.toString()).slice(-TAIL_BYTES);
      });
      let ended = false;
      const end = (code: number | null, signal: NodeJS.Signals | null) => {
        if (ended) return; // a failed spawn may report both 'error' and 'exit'
        ended = true;
        if ((code !== 0 || signal) && !failure && !interrupted) {
          failure = { rank, code, signal };
          // What the failed rank started goes too; its group still exists while any of it lives.
          if (signalGroup(child.pid, 'SIGTERM')) failedGroup = child.pid;
          stopOthers();
        }
        if (--running === 0) done();
      };
      child.on('exit', end);
      child.on('error', (e) => {
        tails[rank] += `could not start: ${e.message}\n`;
        end(1, null);
      });
      children.push(child);
    }
  });

  clearTimeout(killTimer);
  for (const s of FORWARDED) process.off(s, forward);
  process.off('exit', killAll); // the 'error' listener stays: the failure report below writes to stderr too
  const bySignal = (signal: NodeJS.Signals) => 128 + constants.signals[signal];
  // A failure first, then a signal while the others were being stopped: the failure is the
  // job's outcome, reported and returned; the signal only cut the grace period short.
  if (!failure) return interrupted ? bySignal(interrupted) : 0;
  const how = failure.signal ? `was killed by ${failure.signal}` : `exited with code ${failure.code}`;
  process.stderr.write(`\nring-attention launch: rank ${failure.rank} ${how}; the other ranks were stopped.\n` +
    (tails[failure.rank] ? `rank ${failure.rank}'s last error output:\n${tails[failure.rank]!.trimEnd()}\n` : ''));
  return failure.signal ? bySignal(failure.signal) : failure.code!;
}
