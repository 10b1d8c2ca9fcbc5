// Trainer checkpoints: config.json and model.safetensors as transformers loads them, AdamW's
// moments in optimizer.safetensors and the step in trainer.json, each file carrying the id of
// its save. Tensors move one at a time between the files and the devices, so host memory holds
// one tensor, not the model.
import { randomUUID } from 'node:crypto';
import { mkdir, open, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';

import { checkInteger, describe, fail } from './errors.js';
import type { ProcessGroup } from './group.js';
import { anyRankSays } from './group-values.js';
import { loadLlamaConfig } from './llama-config.js';
import { hfConfigJson, llamaFiles, type LlamaModel } from './llama-model.js';
import { copy, scale } from './ops.js';
import { openSafetensors, readTextFile, type SafetensorsEntry } from './safetensors.js';
import { SafetensorsWriter, sortedNames } from './safetensors-write.js';
import { tensor, zeros, type Tensor } from './tensor.js';

/** What a checkpoint holds of a trainer, and the group it is saved over. */
export interface CheckpointState {
  model: LlamaModel;
  step: number;
  group?: ProcessGroup;
  /** AdamW's moments this rank holds: every parameter's, or with shardOptimizer its share. */
  m: Map<string, Tensor>;
  v: Map<string, Tensor>;
  /** shardOptimizer: a moment is gathered (collective) from the rank that holds it. */
  shared: boolean;
}

const TRAINER_FILE = 'trainer.json';
const MAX_TRAINER_JSON_BYTES = 1_000_000; // a few hundred bytes when we write it
const OPTIMIZER_FILE = 'optimizer.safetensors';
const WEIGHTS_FILE = 'model.safetensors';
const SAVE_KEY = 'ring_attention_save'; // the id of the save a checkpoint's safetensors file belongs to
const MOMENTS = ['m', 'v'] as const; // AdamW's, named `${moment}.${parameter}` in the optimizer file
type Moment = (typeof MOMENTS)[number];

/** Writes a small file and flushes it to disk, so that a rename after it never names an empty file. */
async function writeSynced(path: string, text: string): Promise<void> {
  const fh = await open(path, 'w');
  try {
    await fh.writeFile(text);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** JSON with object keys sorted, so that two configs compare by content, not key order. */
function canonical(v: unknown): string {
  if (v === null || typeof v !== 'object') return JSON.stringify(v);
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  return `{${Object.keys(v).sort().map((k) => `${JSON.stringify(k)}:${canonical((v as Record<string, unknown>)[k])}`).join(',')}}`;
}

/**
 * saveCheckpoint(): rank 0 writes; with shardOptimizer every rank takes part. `refused`: this
 * rank's arguments were refused (the error), which every rank hears of before anything else.
 */
export async function saveCheckpointFiles(dir: string, st: CheckpointState, refused?: unknown): Promise<void> {
  const group = st.group, writer = !group || group.rank === 0;
  if (group && group.worldSize > 1) {
    let anyRefused: boolean;
    try {
      anyRefused = anyRankSays(group, refused !== undefined, st.model.device);
    } catch (e) {
      throw refused ?? e;
    }
    if (anyRefused && refused === undefined) throw new Error('saveCheckpoint: another rank refused its arguments (see its error); nothing was saved');
  }
  if (refused !== undefined) throw refused;
  // Rank 0 writes, one tensor in host memory at a time. Every rank still takes part in what
  // is collective (with shardOptimizer, gathering each moment; then whether the save landed)
  // after a failed write, so that a full disk fails the save on every rank, none left waiting.
  let failed: { error: unknown } | undefined;
  const attempt = async (f: () => Promise<void>) => {
    if (!failed) try { await f(); } catch (error) { failed = { error }; }
  };
  const save = randomUUID(), part = (f: string) => join(dir, `${f}.partial`);
  const metadata = { format: 'pt', [SAVE_KEY]: save };
  const files = ['config.json', WEIGHTS_FILE, OPTIMIZER_FILE, TRAINER_FILE];
  const specs = Object.fromEntries([...st.model.tensors].flatMap(([n, p]) => MOMENTS.map((k) => [`${k}.${n}`, { shape: [...p.shape] }])));
  // While rank 0 writes alone, the others wait in a collective, and a whole save can outlast
  // the group's timeout (a 7B model's weights and moments are 84 GB): so rank 0 joins a
  // one-float sum before each tensor (`beat`), and ends the phase with a sum that says so,
  // which the others take part in until then. Each of their waits spans one tensor's write.
  const beats = !!group && group.worldSize > 1;
  const phase = async (write: (beat: () => void) => Promise<void>) => {
    if (!writer) {
      while (!anyRankSays(group!, false, st.model.device));
      return;
    }
    await attempt(() => write(() => void (beats && anyRankSays(group!, false, st.model.device))));
    if (beats) // after a failure too: the others wait for it
      try {
        anyRankSays(group!, true, st.model.device);
      } catch (error) {
        failed ??= { error }; // the group has failed: the files are cleaned up below, then the next collective throws
      }
  };
  let moments: SafetensorsWriter | undefined;
  await phase(async (beat) => {
    await mkdir(dir, { recursive: true });
    const model = llamaFiles(st.model);
    await writeSynced(part('config.json'), model.config);
    await model.writeWeights(part(WEIGHTS_FILE), metadata, beats ? { beforeEach: beat, syncEach: true } : {});
    moments = await SafetensorsWriter.open(part(OPTIMIZER_FILE), specs, metadata, { syncEach: beats });
  });
  // In the file's order on every rank.
  const keys = sortedNames(Object.keys(specs)), momentOf = (key: string) => [(key.slice(0, 1) as Moment) === 'm' ? st.m : st.v, key.slice(2)] as const;
  if (st.shared) // each moment gathered from the rank that holds it: collective, every wait one tensor's
    try {
      for (const key of keys)
        await withMoment(st, ...momentOf(key), async (t) => {
          if (writer) await attempt(() => moments!.write(key, t.handle(key).toFloat32Array()));
        });
    } catch (error) {
      failed ??= { error }; // the group has failed: the files are cleaned up below, then the next collective throws
    }
  else
    await phase(async (beat) => {
      for (const key of keys) {
        const [map, name] = momentOf(key);
        beat();
        await moments!.write(key, map.get(name)!.handle(key).toFloat32Array());
      }
    });
  if (writer)
    await attempt(async () => {
      await moments!.commit();
      await writeSynced(part(TRAINER_FILE), `${JSON.stringify({ format: 'ring-attention-trainer', version: 2, save, step: st.step }, null, 2)}\n`);
      for (const f of files) await rename(part(f), join(dir, f));
    });
  if (failed) // the write's error is the one to report, not the cleanup's
    await Promise.allSettled([moments?.abort(), ...files.map((f) => rm(part(f), { force: true }))]);
  if (group && anyRankSays(group, failed !== undefined, st.model.device) && !failed)
    throw new Error(`saveCheckpoint: rank 0 could not write ${dir} (its error says why); no checkpoint was saved`);
  if (failed) throw failed.error;
}

/**
 * One moment tensor, whole, to `use` (on the writer of a checkpoint). With shardOptimizer, a
 * sum to which only the rank that holds it adds non-zeros: collective, on every rank.
 */
async function withMoment(st: CheckpointState, map: Map<string, Tensor>, name: string, use: (t: Tensor) => Promise<void>): Promise<void> {
  const held = map.get(name);
  if (!st.shared) return use(held!);
  const p = st.model.tensors.get(name)!;
  const t = zeros(p.shape, { device: p.device });
  try {
    if (held) copy(t, held);
    else scale(t, -1); // -0, as the trainer's shareUpdates adds: x + -0 is x, -0 included
    st.group!.allReduce(t);
    await use(t);
  } finally {
    t.dispose();
  }
}

/** restoreCheckpoint(): the step saved and the save's id ('' for version 1); the model and this rank's moments restored. */
export async function restoreCheckpointFiles(dir: string, st: CheckpointState): Promise<{ step: number; save: string }> {
  const trainerFile = join(dir, TRAINER_FILE);
  const text = await readTextFile(trainerFile, MAX_TRAINER_JSON_BYTES);
  let meta: { format?: unknown; version?: unknown; save?: unknown; step?: unknown };
  try {
    meta = JSON.parse(text) ?? {};
  } catch (e) {
    if (!(e instanceof SyntaxError)) throw e;
    throw new Error(`${trainerFile}: not valid JSON: ${e.message}`, { cause: e });
  }
  if (typeof meta !== 'object' || meta.format !== 'ring-attention-trainer') fail('range', `${trainerFile}: not a trainer checkpoint (format ${describe(meta.format)})`);
  if (meta.version !== 1 && meta.version !== 2)
    fail('range', `${trainerFile}: version ${describe(meta.version)}; this ring-attention reads versions 1 and 2 (a later version is a later release's)`);
  const step = checkInteger(meta.step, `${trainerFile}: step`, 0);
  const saved = hfConfigJson(await loadLlamaConfig(join(dir, 'config.json'))), mine = hfConfigJson(st.model.config);
  for (const key of Object.keys(mine))
    // initializer_range only seeds a new model, and the token ids only guide generate(): neither changes training
    if (!['initializer_range', 'bos_token_id', 'eos_token_id'].includes(key) && canonical(saved[key]) !== canonical(mine[key]))
      fail('range', `${join(dir, 'config.json')}: ${key} is ${canonical(saved[key])}, this model's is ${canonical(mine[key])}; a checkpoint restores into a model of the config it was saved from`);
  // Each file opened once: its header checked before anything changes, then its tensors read
  // one at a time from the same handle (the file checked, even if a save replaces it meanwhile).
  const weightsPath = join(dir, WEIGHTS_FILE), momentsPath = join(dir, OPTIMIZER_FILE);
  const weightsFile = await openSafetensors(weightsPath);
  let momentsFile: Awaited<ReturnType<typeof openSafetensors>> | undefined;
  try {
    momentsFile = await openSafetensors(momentsPath);
    // Version 1 saves carried no id: their files must carry none either (a newer save cut short
    // over an old checkpoint leaves files that do).
    if (meta.version !== 1 && typeof meta.save !== 'string') fail('range', `${trainerFile}: save: expected the save's id, got ${describe(meta.save)}`);
    const save = meta.version === 1 ? undefined : meta.save;
    for (const [path, { metadata }] of [[weightsPath, weightsFile.header], [momentsPath, momentsFile.header]] as const)
      if (metadata[SAVE_KEY] !== save)
        fail('range', `${path}: written by another save than ${TRAINER_FILE} (save ${describe(metadata[SAVE_KEY])}, expected ${describe(save)}); was a save interrupted?`);
    const weights = weightsFile.header.tensors, moments = momentsFile.header.tensors;
    const want = (path: string, got: SafetensorsEntry | undefined, key: string, like: Tensor) => {
      if (!got) fail('range', `${path}: tensor '${key}' is missing`);
      // Saves write float32 only; anything else would not restore the same bits.
      if (got.dtype !== 'F32') fail('range', `${path}: '${key}' is ${got.dtype}; a checkpoint holds F32 tensors, restored bit for bit`);
      if (got.shape.length !== like.shape.length || got.shape.some((d, i) => d !== like.shape[i]))
        fail('range', `${path}: '${key}' has shape [${got.shape.join(', ')}], this model's is [${like.shape.join(', ')}]`);
    };
    for (const [n, t] of st.model.tensors) {
      want(weightsPath, weights.get(n), n, t);
      for (const kind of MOMENTS) want(momentsPath, moments.get(`${kind}.${n}`), `${kind}.${n}`, t);
    }
    const extra = [...weights.keys()].find((n) => !st.model.tensors.has(n));
    if (extra) fail('range', `${weightsPath}: unexpected tensor '${extra}' for this model`);
    const extraMoment = [...moments.keys()].find((n) => !MOMENTS.some((kind) => n.startsWith(`${kind}.`) && st.model.tensors.has(n.slice(kind.length + 1))));
    if (extraMoment) fail('range', `${momentsPath}: unexpected tensor '${extraMoment}' for this model`);
    // AdamW's second moments are finite and non-negative; a negative one (a damaged or edited
    // file) would turn every later update to NaN. Checked before anything changes, at the cost
    // of reading them twice.
    for (const n of st.v.keys()) {
      const d = (await momentsFile.read(`v.${n}`)).data, bad = d.findIndex((x) => !(x >= 0 && x < Infinity));
      if (bad >= 0) fail('range', `${momentsPath}: 'v.${n}' holds ${d[bad]} at element ${bad}; AdamW's second moments are finite and non-negative`);
    }
    // Then one tensor at a time from its file to its place (with shardOptimizer, only the
    // moments this rank holds).
    const plan: [Tensor, typeof weightsFile, string][] = [...st.model.tensors].map(([n, t]) => [t, weightsFile, n]);
    for (const [kind, map] of [['m', st.m], ['v', st.v]] as const) for (const [n, t] of map) plan.push([t, momentsFile, `${kind}.${n}`]);
    for (const [t, file, key] of plan) {
      const src = tensor((await file.read(key)).data, t.shape, { device: t.device });
      try {
        copy(t, src);
      } finally {
        src.dispose();
      }
    }
  } finally {
    await Promise.allSettled([weightsFile.close(), momentsFile?.close()]);
  }
  st.model.syncCompute();
  return { step, save: typeof meta.save === 'string' ? meta.save : '' };
}
