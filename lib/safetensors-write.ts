// Writing safetensors files: header padded with spaces to a multiple of 8 bytes (so the data
// section is aligned), tensors in sorted name order at contiguous offsets. The file is written
// under a temporary name, synced, then renamed, so a crash never leaves a half-written file
// under the final name.
import { randomBytes } from 'node:crypto';
import { open, rename, rm, type FileHandle } from 'node:fs/promises';
import { isFloat32Array } from 'node:util/types';

import { checkOptions, describe, fail } from './errors.js';
import { f32sToBf16Bits, toBf16Bits, toF16Bits } from './half.js';
import { checkPath, parseMetadata } from './safetensors.js';

export type WritableDType = 'F32' | 'BF16' | 'F16';
const ITEM_SIZE: Record<WritableDType, number> = { F32: 4, BF16: 2, F16: 2 };

export interface TensorToWrite {
  shape: number[];
  /** Row-major values; converted to `dtype` (round to nearest even) when that is not F32. */
  data: Float32Array;
  /** Default 'F32'. */
  dtype?: WritableDType;
}

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
const CHUNK_ELEMS = 1 << 22;

export async function writeSafetensors(
  path: string, tensors: Record<string, TensorToWrite>, metadata?: Record<string, string>,
): Promise<void> {
  checkPath(path, 'path');
  if (tensors === null || typeof tensors !== 'object' || Array.isArray(tensors))
    fail('type', `tensors: expected an object of name -> { shape, data, dtype? }, got ${describe(tensors)}`);
  if (metadata !== undefined) parseMetadata(metadata, 'metadata');
  for (const name of sortedNames(Object.keys(tensors))) checkData(name, tensors[name]!, checkSpec(name, tensors[name]).numel);
  await writeSafetensorsFrom(path, tensors, (name) => tensors[name]!.data, metadata);
}

/** @internal writeSafetensors, taking each tensor's values from valueOf only as its turn comes. */
export async function writeSafetensorsFrom(
  path: string, specs: Record<string, TensorSpec>, valueOf: (name: string) => Float32Array, metadata?: Record<string, string>,
  opts?: { syncEach?: boolean },
): Promise<void> {
  const w = await SafetensorsWriter.open(path, specs, metadata, opts);
  try {
    for (const name of w.names) await w.write(name, valueOf(name));
    await w.commit();
  } catch (e) {
    await w.abort();
    throw e;
  }
}

/** A tensor's shape and stored type, without its values. */
export type TensorSpec = Pick<TensorToWrite, 'shape' | 'dtype'>;

interface Planned { name: string; shape: number[]; numel: number; dtype: WritableDType }

/**
 * @internal A safetensors file written one tensor at a time, in its header's order (names
 * sorted), so that only one tensor's values need be in memory (a checkpoint of a large model
 * copies each from the GPU as it writes it). Under a temporary name until commit(), which
 * syncs and renames; abort() removes it.
 */
export class SafetensorsWriter {
  /** The order write() takes the tensors in. */
  readonly names: readonly string[];
  #next = 0;

  private constructor(readonly path: string, private readonly tmp: string, private readonly fh: FileHandle, private readonly plan: Planned[],
    private readonly syncEach: boolean) {
    this.names = plan.map((t) => t.name);
  }

  /**
   * `syncEach`: each tensor flushed to disk as it is written, so that no single wait (the
   * commit's included) flushes the whole file: a checkpoint's other ranks wait on each.
   */
  static async open(path: string, specs: Record<string, TensorSpec>, metadata?: Record<string, string>,
    { syncEach = false }: { syncEach?: boolean } = {}): Promise<SafetensorsWriter> {
    checkPath(path, 'path');
    if (specs === null || typeof specs !== 'object' || Array.isArray(specs))
      fail('type', `tensors: expected an object of name -> { shape, dtype? }, got ${describe(specs)}`);
    const meta = metadata === undefined ? undefined : parseMetadata(metadata, 'metadata');
    const plan = sortedNames(Object.keys(specs)).map((name) => checkSpec(name, specs[name]));
    const tmp = `${path}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
    const fh = await open(tmp, 'wx');
    const w = new SafetensorsWriter(path, tmp, fh, plan, syncEach);
    try {
      await writeAll(fh, header(plan, meta));
    } catch (e) {
      await w.abort();
      throw e;
    }
    return w;
  }

  /** Writes the next tensor's values (converted to its dtype). */
  async write(name: string, data: Float32Array): Promise<void> {
    const t = this.plan[this.#next];
    if (t?.name !== name) throw new Error(`${this.path}: '${name}' written out of order; expected ${t ? `'${t.name}'` : 'no more tensors'}`);
    checkData(name, { shape: t.shape, data }, t.numel);
    await writeData(this.fh, data, t.dtype);
    if (this.syncEach) await this.fh.datasync();
    ++this.#next;
  }

  /** Every tensor written: flushes to disk and moves the file to its name. */
  async commit(): Promise<void> {
    if (this.#next !== this.plan.length) throw new Error(`${this.path}: ${this.plan.length - this.#next} of ${this.plan.length} tensors not written`);
    await this.fh.sync();
    await this.fh.close();
    await rename(this.tmp, this.path);
  }

  /** Removes the unfinished file (idempotent). */
  async abort(): Promise<void> {
    await this.fh.close().catch(() => {}); // already closed when the rename failed
    await rm(this.tmp, { force: true });
  }
}

/** @internal The order of a file's tensors: by code point, not JS object key order (which puts integer-like names first). */
export function sortedNames(names: string[]): string[] {
  return [...names].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
}

// The 8-byte length, then the JSON header padded with spaces to a multiple of 8 bytes.
function header(plan: Planned[], meta: Record<string, string> | undefined): Buffer {
  // Built by hand, not with JSON.stringify(object), to keep the sorted order for integer-like names.
  const parts = meta ? [`"__metadata__":${JSON.stringify(meta)}`] : [];
  let offset = 0;
  for (const t of plan) {
    const end = offset + t.numel * ITEM_SIZE[t.dtype];
    parts.push(`${JSON.stringify(t.name)}:${JSON.stringify({ dtype: t.dtype, shape: t.shape, data_offsets: [offset, end] })}`);
    offset = end;
  }
  const json = Buffer.from(`{${parts.join(',')}}`, 'utf8');
  const h = Buffer.alloc(8 + Math.ceil(json.length / 8) * 8, 0x20);
  h.writeBigUInt64LE(BigInt(h.length - 8), 0);
  json.copy(h, 8);
  return h;
}

function checkSpec(name: string, t: unknown): Planned {
  const where = `tensors['${name}']`;
  if (name === '__metadata__') fail('range', `${where}: the name '__metadata__' is reserved for the metadata`);
  if (t === null || typeof t !== 'object') fail('type', `${where}: expected { shape, data, dtype? }, got ${describe(t)}`);
  checkOptions(t, where, ['shape', 'data', 'dtype']);  // a misspelt dtype would write F32 unasked
  const { shape, dtype = 'F32' } = t as TensorSpec;
  if (!Array.isArray(shape)) fail('type', `${where}.shape: expected an array of non-negative integers, got ${describe(shape)}`);
  Array.from(shape, (d: unknown, i) => { // holes too
    if (typeof d !== 'number' || !Number.isSafeInteger(d) || d < 0)
      fail('range', `${where}.shape[${i}]: expected a non-negative integer, got ${describe(d)}`);
  });
  if (typeof dtype !== 'string' || !Object.hasOwn(ITEM_SIZE, dtype))
    fail('range', `${where}.dtype: expected one of 'F32', 'BF16', 'F16', got ${describe(dtype)}`);
  return { name, shape: [...shape], numel: shape.reduce((a: number, b: number) => a * b, 1), dtype };
}

function checkData(name: string, t: { shape: number[]; data: unknown }, numel: number): void {
  const where = `tensors['${name}']`;
  if (!isFloat32Array(t.data)) fail('type', `${where}.data: expected a Float32Array, got ${describe(t.data)}`);
  if (numel !== t.data.length) fail('range', `${where}.shape: [${t.shape.join(', ')}] holds ${numel} elements, but data has ${t.data.length}`);
}

async function writeData(fh: FileHandle, data: Float32Array, dtype: WritableDType): Promise<void> {
  if (dtype === 'F32' && LITTLE_ENDIAN) {
    await writeAll(fh, data);
    return;
  }
  const size = ITEM_SIZE[dtype];
  const buf = new Uint8Array(Math.min(data.length, CHUNK_ELEMS) * size);
  const view = new DataView(buf.buffer);
  for (let i = 0; i < data.length; i += CHUNK_ELEMS) {
    const m = Math.min(CHUNK_ELEMS, data.length - i);
    if (dtype === 'F32') for (let j = 0; j < m; ++j) view.setFloat32(4 * j, data[i + j]!, true);
    else if (dtype === 'BF16' && LITTLE_ENDIAN) f32sToBf16Bits(data.subarray(i, i + m), new Uint16Array(buf.buffer, 0, m));
    else if (dtype === 'BF16') for (let j = 0; j < m; ++j) view.setUint16(2 * j, toBf16Bits(data[i + j]!), true);
    else for (let j = 0; j < m; ++j) view.setUint16(2 * j, toF16Bits(data[i + j]!), true);
    await writeAll(fh, buf.subarray(0, m * size));
  }
}

// Appends at the current position; fs writes may be short and are capped near 2 GiB. Each
// write goes through its own byte view (see safetensors.ts' readFully).
async function writeAll(fh: FileHandle, buf: ArrayBufferView): Promise<void> {
  for (let done = 0; done < buf.byteLength;) {
    const len = Math.min(buf.byteLength - done, 1 << 30);
    const { bytesWritten } = await fh.write(new Uint8Array(buf.buffer, buf.byteOffset + done, len), 0, len);
    done += bytesWritten;
  }
}
