// Writing safetensors files: header padded with spaces to a multiple of 8 bytes (so the data
// section is aligned), tensors in sorted name order at contiguous offsets. The file is written
// under a temporary name, synced, then renamed, so a crash never leaves a half-written file
// under the final name.
import { randomBytes } from 'node:crypto';
import { open, rename, rm, type FileHandle } from 'node:fs/promises';
import { isFloat32Array } from 'node:util/types';

import { describe, fail } from './errors.js';
import { toBf16Bits, toF16Bits } from './half.js';
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
  const meta = metadata === undefined ? undefined : parseMetadata(metadata, 'metadata');
  // Sorted by code point, not by JS object key order (which puts integer-like names first).
  const names = Object.keys(tensors).sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  const plan = names.map((name) => checkTensor(name, tensors[name]));

  // Built by hand, not with JSON.stringify(object), to keep the sorted order for integer-like names.
  const parts = meta ? [`"__metadata__":${JSON.stringify(meta)}`] : [];
  let offset = 0;
  for (const t of plan) {
    const end = offset + t.data.length * ITEM_SIZE[t.dtype];
    parts.push(`${JSON.stringify(t.name)}:${JSON.stringify({ dtype: t.dtype, shape: t.shape, data_offsets: [offset, end] })}`);
    offset = end;
  }
  const json = Buffer.from(`{${parts.join(',')}}`, 'utf8');
  const header = Buffer.alloc(8 + Math.ceil(json.length / 8) * 8, 0x20);
  header.writeBigUInt64LE(BigInt(header.length - 8), 0);
  json.copy(header, 8);

  const tmp = `${path}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  const fh = await open(tmp, 'wx');
  try {
    await writeAll(fh, header);
    for (const t of plan) await writeData(fh, t.data, t.dtype);
    await fh.sync();
    await fh.close();
    await rename(tmp, path);
  } catch (e) {
    await fh.close().catch(() => {}); // already closed when the rename failed
    await rm(tmp, { force: true });
    throw e;
  }
}

function checkTensor(name: string, t: unknown): { name: string; shape: number[]; data: Float32Array; dtype: WritableDType } {
  const where = `tensors['${name}']`;
  if (name === '__metadata__') fail('range', `${where}: the name '__metadata__' is reserved for the metadata`);
  if (t === null || typeof t !== 'object') fail('type', `${where}: expected { shape, data, dtype? }, got ${describe(t)}`);
  const { shape, data, dtype = 'F32' } = t as TensorToWrite;
  if (!Array.isArray(shape)) fail('type', `${where}.shape: expected an array of non-negative integers, got ${describe(shape)}`);
  Array.from(shape, (d: unknown, i) => { // holes too
    if (typeof d !== 'number' || !Number.isSafeInteger(d) || d < 0)
      fail('range', `${where}.shape[${i}]: expected a non-negative integer, got ${describe(d)}`);
  });
  if (!isFloat32Array(data)) fail('type', `${where}.data: expected a Float32Array, got ${describe(data)}`);
  const numel = shape.reduce((a: number, b: number) => a * b, 1);
  if (numel !== data.length) fail('range', `${where}.shape: [${shape.join(', ')}] holds ${numel} elements, but data has ${data.length}`);
  if (typeof dtype !== 'string' || !Object.hasOwn(ITEM_SIZE, dtype))
    fail('range', `${where}.dtype: expected one of 'F32', 'BF16', 'F16', got ${describe(dtype)}`);
  return { name, shape: [...shape], data, dtype };
}

async function writeData(fh: FileHandle, data: Float32Array, dtype: WritableDType): Promise<void> {
  if (dtype === 'F32' && LITTLE_ENDIAN) {
    await writeAll(fh, new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    return;
  }
  const size = ITEM_SIZE[dtype];
  const buf = new Uint8Array(Math.min(data.length, CHUNK_ELEMS) * size);
  const view = new DataView(buf.buffer);
  for (let i = 0; i < data.length; i += CHUNK_ELEMS) {
    const m = Math.min(CHUNK_ELEMS, data.length - i);
    if (dtype === 'F32') for (let j = 0; j < m; ++j) view.setFloat32(4 * j, data[i + j]!, true);
    else if (dtype === 'BF16') for (let j = 0; j < m; ++j) view.setUint16(2 * j, toBf16Bits(data[i + j]!), true);
    else for (let j = 0; j < m; ++j) view.setUint16(2 * j, toF16Bits(data[i + j]!), true);
    await writeAll(fh, buf.subarray(0, m * size));
  }
}

// Appends at the current position; fs writes may be short and are capped near 2 GiB.
async function writeAll(fh: FileHandle, buf: Uint8Array): Promise<void> {
  for (let done = 0; done < buf.length;) {
    const { bytesWritten } = await fh.write(buf, done, Math.min(buf.length - done, 1 << 30));
    done += bytesWritten;
  }
}
