// launch(): one worker thread per rank, each running the module's default export with its
// own ProcessGroup. The first rank to fail aborts the group, which releases every rank
// waiting in native code, and the promise rejects with that rank's error.
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Worker } from 'node:worker_threads';

import { checkInteger, checkOneOf, checkOptions, describe, fail, MAX_TIMER_MS, DEFAULT_TIMEOUT_MS, rankError } from './errors.js';
import type { ProcessGroup } from './group.js';
import { native } from './native.js';
import { checkDevice, DEVICES, type DeviceName } from './tensor.js';

export interface LaunchOptions {
  worldSize: number;
  backend?: 'local';
  /** Passed to each rank as `device`. Default 'cpu'. */
  device?: DeviceName;
  /** How long a rank waits for a peer before failing. Default 300000 (5 minutes). */
  timeoutMs?: number;
}

/** What each rank's function receives. */
export interface RankContext<A = unknown> {
  rank: number;
  worldSize: number;
  group: ProcessGroup;
  args: A;
  device: DeviceName;
}

export const MAX_WORLD_SIZE = 256;

/** @internal What a rank worker posts back. */
export type RankMessage =
  | { ok: true; value: unknown }
  | { ok: false; secondary?: boolean; error: { name: string; message: string; stack?: string } };

function moduleHref(module: unknown): string {
  if (module instanceof URL) return module.href;
  if (typeof module !== 'string') fail('type', `module: expected a path or URL, got ${describe(module)}`);
  if (module.startsWith('file:')) return module;
  const path = resolve(module);
  if (!existsSync(path)) fail('range', `module: no file at ${path}`);
  return pathToFileURL(path).href;
}

const ERROR_KINDS: Record<string, ErrorConstructor> = { TypeError, RangeError, SyntaxError, ReferenceError, EvalError, URIError };

function rebuild(e: { name: string; message: string; stack?: string }, rank: number): Error {
  const error = new (ERROR_KINDS[e.name] ?? Error)(e.message);
  if (e.stack) error.stack = e.stack;
  return Object.assign(error, { rank });
}

/**
 * Runs the module's default export once per rank and resolves with their return values in rank
 * order. `R` types those values for the caller; nothing checks them (they come from another module).
 */
export async function launch<R = unknown>(opts: LaunchOptions, module: string | URL, args?: unknown): Promise<R[]> {
  if (opts === undefined) fail('type', 'opts: expected { worldSize }');
  const o = checkOptions(opts, 'opts', ['worldSize', 'backend', 'device', 'timeoutMs']);
  const worldSize = checkInteger(o.worldSize, 'opts.worldSize', 1, MAX_WORLD_SIZE);
  checkOneOf(o.backend, 'opts.backend', ['local'] as const);
  const device = checkOneOf(o.device, 'opts.device', DEVICES) ?? 'cpu';
  checkDevice(device, 'opts.device');
  const timeoutMs = o.timeoutMs === undefined ? DEFAULT_TIMEOUT_MS : checkInteger(o.timeoutMs, 'opts.timeoutMs', 1, MAX_TIMER_MS);
  const href = moduleHref(module);
  try {
    structuredClone(args); // what every rank receives: refuse it here, not in N workers
  } catch (e) {
    fail('type', `args: cannot be sent to the ranks' threads (${(e as Error).message}); pass plain data`);
  }

  const groupId = native.groupCreate(worldSize, timeoutMs);
  const results: unknown[] = new Array(worldSize);
  const workers: Worker[] = [];
  let firstError: Error | undefined;
  let secondaryError: Error | undefined; // a rank released by another's failure; reported only if nothing else is

  const failRank = (rank: number, error: Error) => {
    if (firstError) return;
    firstError = error;
    native.groupAbort(groupId, `rank ${rank} failed: ${error.message}`);
    for (const w of workers) void w.terminate(); // ranks spinning in JavaScript; those in native code were released by the abort
  };

  try {
    // Settles once every rank has reported (or failed); workers are then terminated, so a
    // timer left running in a rank cannot keep the launch pending.
    await new Promise<void>((done) => {
      let pending = worldSize;
      const settle = () => {
        if (--pending === 0) done();
      };
      for (let rank = 0; rank < worldSize; ++rank) {
        let reported = false;
        const w = new Worker(new URL('./rank-worker.js', import.meta.url), {
          workerData: { href, rank, worldSize, groupId, args, device },
        });
        const report = (handle: () => void) => {
          if (reported) return;
          reported = true;
          handle();
          settle();
        };
        w.on('message', (m: RankMessage) =>
          report(() => {
            if (m.ok) results[rank] = m.value;
            else if (m.secondary) secondaryError ??= rebuild(m.error, rank);
            else failRank(rank, rebuild(m.error, rank));
          }));
        // What a rank's callback threw after its function returned: any value, null too.
        w.on('error', (e: unknown) => report(() => failRank(rank, Object.assign(rankError(e, rank), { rank }))));
        w.on('exit', (code) =>
          report(() => {
            if (!firstError && !secondaryError)
              failRank(rank, Object.assign(new Error(code === 13 // Node's code for a top-level await that never settles
                ? `rank ${rank}'s function returned a promise that never settled (nothing left for it to wait on)`
                : `rank ${rank} exited with code ${code} before returning`), { rank }));
          }));
        workers.push(w);
      }
    });
  } finally {
    native.groupDestroy(groupId);
    await Promise.all(workers.map((w) => w.terminate()));
  }
  if (firstError ?? secondaryError) throw firstError ?? secondaryError;
  return results as R[];
}
