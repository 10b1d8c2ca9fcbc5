// A checkpoint directory as Hugging Face saves it: one `model.safetensors`, or shards listed
// by `model.safetensors.index.json` ({ "weight_map": { tensor name: shard file } }). The index
// is checked like a header: shard names must be plain file names in the directory, every shard
// must exist, and every tensor must be in the shard the index names.
import { existsSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { basename, join } from 'node:path';

import { describe, fail } from './errors.js';
import {
  checkNames, checkPath, openFile, openSafetensors, readHeader, readTextFile,
  type LoadedTensor, type ReadSafetensorsOptions, type SafetensorsContents, type SafetensorsEntry,
} from './safetensors.js';

export const SINGLE_FILE = 'model.safetensors';
export const INDEX_FILE = 'model.safetensors.index.json';
const MAX_INDEX_BYTES = 100_000_000;

/**
 * Refuses to save into a directory that holds a sharded checkpoint: a model.safetensors written
 * beside its index is what transformers and this library read, but tools that follow the index
 * (vLLM, SGLang) and uploads to the Hub would go on with the old shards.
 */
export function refuseShardedDir(dir: string, what: string): void {
  if (existsSync(join(dir, INDEX_FILE)))
    fail('range', `${what}: ${dir} holds a sharded checkpoint (${INDEX_FILE}), which tools that follow the index would go on reading instead of the ${SINGLE_FILE} saved beside it; save into another directory`);
}

/** Which files hold which tensors: the single file, or the shards the index names. */
export async function safetensorsWeightMap(dir: string): Promise<Map<string, string>> {
  checkPath(dir, 'dir');
  if (!(await stat(dir)).isDirectory()) fail('type', `dir: ${dir} is not a directory`);
  const single = join(dir, SINGLE_FILE), index = join(dir, INDEX_FILE);
  if (await exists(single)) {
    const fh = await openFile(single);
    try {
      const header = await readHeader(fh, single);
      return new Map([...header.tensors.keys()].map((n) => [n, SINGLE_FILE]));
    } finally {
      await fh.close();
    }
  }
  if (!(await exists(index))) {
    // PyTorch's pickle files are not read (loading one runs its code); say how to convert.
    const pickled = (await exists(join(dir, 'pytorch_model.bin'))) || (await exists(join(dir, 'pytorch_model.bin.index.json')));
    const hint = pickled ? " (pytorch_model.bin is not read: save the model as safetensors, e.g. transformers' save_pretrained(dir, safe_serialization=True))" : '';
    throw new Error(`${dir}: neither ${SINGLE_FILE} nor ${INDEX_FILE} is there${hint}`);
  }
  const text = await readTextFile(index, MAX_INDEX_BYTES);
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new Error(`${index}: not valid JSON: ${(e as Error).message}`, { cause: e });
  }
  const weightMap = (json as { weight_map?: unknown } | null)?.weight_map;
  if (weightMap === null || typeof weightMap !== 'object' || Array.isArray(weightMap))
    fail('type', `${index}: weight_map: expected an object of tensor name -> file name, got ${describe(weightMap)}`);
  const map = new Map<string, string>();
  for (const [name, file] of Object.entries(weightMap)) {
    // A hostile index must not reach outside the directory ('../x', '/etc/x').
    if (typeof file !== 'string' || file === '' || file === '.' || file === '..' || basename(file) !== file || file.includes('\\'))
      fail('range', `${index}: weight_map['${name}']: expected a file name in the directory, got ${describe(file)}`);
    map.set(name, file);
  }
  return map;
}

/** Where each tensor of a checkpoint directory is: its file's path and its header entry. */
export interface DirEntry { path: string; entry: SafetensorsEntry }

/**
 * @internal Every shard's header, checked (each shard there, each tensor in the shard the
 * index names), without reading any values: the tensors by name, in the index's order, and the
 * files' metadata (shards normally agree; later ones win).
 */
export async function safetensorsDirEntries(dir: string): Promise<{ metadata: Record<string, string>; entries: Map<string, DirEntry> }> {
  const weightMap = await safetensorsWeightMap(dir);
  const inFile = new Map<string, string[]>();
  for (const [name, file] of weightMap) {
    const list = inFile.get(file);
    if (list) list.push(name);
    else inFile.set(file, [name]);
  }
  const metadata: [string, string][] = [];
  const found = new Map<string, DirEntry>();
  for (const [file, names] of inFile) {
    const path = join(dir, file);
    if (!(await exists(path))) throw new Error(`${join(dir, INDEX_FILE)}: weight_map names ${file}, which does not exist in ${dir}`);
    const fh = await openFile(path);
    try {
      const header = await readHeader(fh, path);
      // One push per entry: a spread of many overflows the stack.
      for (const entry of Object.entries(header.metadata)) metadata.push(entry);
      for (const name of names) {
        const entry = header.tensors.get(name);
        if (!entry) fail('range', `${path}: tensor '${name}' is not in this file, though the index puts it there`);
        found.set(name, { path, entry });
      }
    } finally {
      await fh.close();
    }
  }
  return { metadata: Object.fromEntries(metadata), entries: new Map([...weightMap.keys()].map((n) => [n, found.get(n)!])) };
}

/**
 * @internal Reads the tensors of `entries` one at a time, each file opened once, on first use,
 * and kept open until close().
 */
export function dirReader(entries: ReadonlyMap<string, DirEntry>): { read(name: string): Promise<LoadedTensor>; close(): Promise<void> } {
  const files = new Map<string, ReturnType<typeof openSafetensors>>();
  return {
    async read(name) {
      const { path } = entries.get(name)!;
      let file = files.get(path);
      if (!file) files.set(path, (file = openSafetensors(path)));
      return (await file).read(name);
    },
    async close() {
      await Promise.allSettled([...files.values()].map(async (f) => (await f).close()));
    },
  };
}

/** Reads a checkpoint directory (all tensors, or `opts.names`) as float32. */
export async function readSafetensorsDir(dir: string, opts?: ReadSafetensorsOptions): Promise<SafetensorsContents> {
  const names = checkNames(opts);
  const { metadata, entries } = await safetensorsDirEntries(dir);
  const order = names ?? [...entries.keys()];
  const missing = order.find((name) => !entries.has(name));
  if (missing !== undefined) fail('range', `opts.names: ${dir} has no tensor '${missing}'`);
  const reader = dirReader(entries);
  try {
    const tensors = new Map<string, LoadedTensor>();
    for (const name of order) tensors.set(name, await reader.read(name));
    return { metadata, tensors };
  } finally {
    await reader.close();
  }
}

// Anything by that name: a FIFO or a directory there is then refused by name (openFile), not
// passed over as if the file were missing.
async function exists(path: string): Promise<boolean> {
  return stat(path).then(() => true, () => false);
}
