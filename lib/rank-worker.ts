// The body of one rank's worker thread (see launch.ts).
import { parentPort, workerData } from 'node:worker_threads';

import { rankError } from './errors.js';
import { ProcessGroup } from './group.js';
import type { RankMessage } from './launch.js';
import { native } from './native.js';
import { Tensor } from './tensor.js';

const { href, rank, worldSize, groupId, args, device } = workerData as {
  href: string; rank: number; worldSize: number; groupId: number; args: unknown; device: string;
};

// Whether a Tensor is anywhere in `value`: arrays, Maps, Sets and objects' own properties, at
// any depth (not inside typed arrays, which are what a rank should return).
function holdsTensor(value: unknown, seen = new Set<object>()): boolean {
  if (value instanceof Tensor) return true;
  if (value === null || typeof value !== 'object' || ArrayBuffer.isView(value) || seen.has(value)) return false;
  seen.add(value);
  if (value instanceof Map) return [...value].some(([k, v]) => holdsTensor(k, seen) || holdsTensor(v, seen));
  if (value instanceof Set) return [...value].some((v) => holdsTensor(v, seen));
  return Object.values(value).some((v) => holdsTensor(v, seen));
}

function post(message: RankMessage): void {
  try {
    parentPort!.postMessage(message);
  } catch (e) {
    const why = e instanceof Error ? e.message : String(e);
    parentPort!.postMessage({
      ok: false,
      error: { name: 'TypeError', message: `rank ${rank} returned a value that cannot be sent between threads (${why}); return plain data such as await t.toFloat32Array()` },
    } satisfies RankMessage);
  }
}

// The module's own errors (a syntax error, a missing import) name the module: Node's message alone does not.
async function importRankModule(): Promise<{ default?: unknown }> {
  try {
    return (await import(href)) as { default?: unknown };
  } catch (e) {
    if (e instanceof Error) e.message = `${href}: ${e.message}`;
    throw e;
  }
}

try {
  const mod = await importRankModule();
  if (typeof mod.default !== 'function') throw new TypeError(`module: ${href} has no default export function`);
  const group = ProcessGroup.attach(groupId, rank, worldSize);
  const value = await (mod.default as (ctx: unknown) => unknown)({ rank, worldSize, group, args, device });
  // A Tensor would arrive as its shape alone: its memory is native, and is not copied between threads.
  if (holdsTensor(value))
    throw new TypeError(`rank ${rank} returned a Tensor, whose native memory cannot travel between threads; return its data (await t.toFloat32Array())`);
  native.groupLeave(groupId, rank); // peers still waiting on this rank now fail fast
  post({ ok: true, value });
} catch (e) {
  const error = rankError(e, rank);
  // Released because another rank failed (also when wrapped, as the cause of the error thrown):
  // that rank's error is the one to report.
  let secondary = false;
  for (let c: unknown = error, depth = 0; c instanceof Error && depth < 16 && !secondary; c = c.cause, ++depth)
    secondary = (c as { code?: string }).code === 'ERR_RING_ATTENTION_ABORTED';
  try {
    if (!secondary) native.groupAbort(groupId, `rank ${rank} failed: ${error.message}`);
  } catch {
    /* the group is already gone */
  }
  post({ ok: false, secondary, error: { name: error.name, message: error.message, stack: error.stack } });
}
