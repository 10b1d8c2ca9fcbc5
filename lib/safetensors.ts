// Safetensors checkpoints (https://huggingface.co/docs/safetensors): an 8-byte little-endian
// header length N, N bytes of JSON, then the tensors' bytes. The header is untrusted input:
// every field is checked before any offset in it is used, so a hostile file gives an error
// naming the file and field, never a huge allocation or a read past the data.
import { constants } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';

import { checkOptions, describe, fail, isObject } from './errors.js';
import { bf16BitsToF32s, fromBf16Bits, fromF16Bits } from './half.js';

/** Every dtype the format defines; the header may name any of them. */
export type SafetensorsDType =
  'BOOL' | 'U8' | 'I8' | 'F8_E4M3' | 'F8_E5M2' | 'I16' | 'U16' | 'F16' | 'BF16' | 'I32' | 'U32' | 'F32' | 'I64' | 'U64' | 'F64';
/** Each dtype's size in bytes. */
const ITEM_SIZE: Readonly<Record<SafetensorsDType, number>> = {
  BOOL: 1, U8: 1, I8: 1, F8_E4M3: 1, F8_E5M2: 1, I16: 2, U16: 2, F16: 2, BF16: 2,
  I32: 4, U32: 4, F32: 4, I64: 8, U64: 8, F64: 8,
};
/** The dtypes whose values can be read (as float32). */
export type FloatDType = 'F32' | 'BF16' | 'F16' | 'F64';
const READABLE: readonly string[] = ['F32', 'BF16', 'F16', 'F64'];

/** @internal Refuses, from its header entry, a tensor that cannot be read as float32. */
export function checkFloatEntry(file: string, name: string, entry: SafetensorsEntry): void {
  if (!READABLE.includes(entry.dtype)) fail('range', `${file}: '${name}' is ${entry.dtype}, not a float type (${READABLE.join(', ')})`);
}

/** The safetensors reference implementation's limit: larger headers are refused unread. */
export const MAX_HEADER_BYTES = 100_000_000;

export interface SafetensorsEntry {
  dtype: SafetensorsDType;
  shape: number[];
  /** [begin, end) in bytes, relative to the start of the data section. */
  dataOffsets: [number, number];
}

export interface SafetensorsHeader {
  /** `__metadata__`, or {} when the file has none. */
  metadata: Record<string, string>;
  /** In header order, except that integer-like names come first (JavaScript's key order). */
  tensors: Map<string, SafetensorsEntry>;
  /** Absolute file offset of the data section (8 + N). */
  dataStart: number;
  fileSize: number;
}

export interface LoadedTensor {
  dtype: FloatDType;
  shape: number[];
  /** The values, row-major, converted to float32. */
  data: Float32Array;
}

export interface SafetensorsContents {
  metadata: Record<string, string>;
  tensors: Map<string, LoadedTensor>;
}

export interface ReadSafetensorsOptions {
  /** Read only these tensors (each must exist). Default: all. */
  names?: string[];
}

/** Reads and checks the header only (two small reads, whatever the file's size). */
export async function readSafetensorsHeader(path: string): Promise<SafetensorsHeader> {
  checkPath(path, 'path');
  const fh = await openFile(path);
  try {
    return await readHeader(fh, path);
  } finally {
    await fh.close();
  }
}

/**
 * @internal A file opened once for reading its tensors one at a time: the header is read once,
 * and the open handle keeps reading the file that header came from, even should another
 * replace it meanwhile. close() when done.
 */
export async function openSafetensors(path: string): Promise<{ header: SafetensorsHeader; read(name: string): Promise<LoadedTensor>; close(): Promise<void> }> {
  const fh = await openFile(path);
  try {
    const header = await readHeader(fh, path);
    return {
      header,
      read: async (name) => {
        const entry = header.tensors.get(name);
        // Callers name tensors from a header read earlier: the file was replaced since.
        if (!entry) fail('range', `${path}: tensor '${name}' is no longer in this file`);
        return readTensor(fh, path, name, entry, header.dataStart);
      },
      close: () => fh.close(),
    };
  } catch (e) {
    await fh.close();
    throw e;
  }
}

/** Reads the tensors (all, or `opts.names`) as float32, one positional read per chunk. */
export async function readSafetensors(path: string, opts?: ReadSafetensorsOptions): Promise<SafetensorsContents> {
  checkPath(path, 'path');
  const names = checkNames(opts);
  const fh = await openFile(path);
  try {
    const header = await readHeader(fh, path);
    const tensors = new Map<string, LoadedTensor>();
    for (const name of names ?? header.tensors.keys()) {
      const entry = header.tensors.get(name);
      if (!entry) fail('range', `opts.names: ${path} has no tensor '${name}'`);
      tensors.set(name, await readTensor(fh, path, name, entry, header.dataStart));
    }
    return { metadata: header.metadata, tensors };
  } finally {
    await fh.close();
  }
}

/** @internal Also used by the sharded-checkpoint loader. */
export function checkNames(opts: unknown): string[] | undefined {
  const names = checkOptions(opts, 'opts', ['names']).names;
  if (names === undefined) return undefined;
  if (!Array.isArray(names)) fail('type', `opts.names: expected an array of strings, got ${describe(names)}`);
  names.forEach((n, i) => {
    if (typeof n !== 'string') fail('type', `opts.names[${i}]: expected a string, got ${describe(n)}`);
  });
  return [...new Set(names)];
}

/** @internal */
export function checkPath(path: unknown, name: string): asserts path is string {
  if (typeof path !== 'string' || path === '') fail('type', `${name}: expected a file path, got ${describe(path)}`);
}

/**
 * @internal Opens a regular file for reading. Non-blocking, so that a FIFO in a file's place
 * cannot block the open (and the process) forever; refused once open.
 */
export async function openFile(path: string): Promise<FileHandle> {
  const fh = await open(path, constants.O_RDONLY | constants.O_NONBLOCK);
  try {
    if (!(await fh.stat()).isFile()) fail('type', `${path}: not a regular file`);
  } catch (e) {
    await fh.close();
    throw e;
  }
  return fh;
}

/**
 * @internal A small text file (a config.json, an index, trainer.json) through openFile: a FIFO
 * or device in its place is refused rather than waited on or read without end.
 */
export async function readTextFile(path: string, maxBytes: number): Promise<string> {
  const fh = await openFile(path);
  try {
    const size = (await fh.stat()).size;
    if (size > maxBytes) fail('range', `${path}: larger than ${maxBytes} bytes`);
    return await fh.readFile('utf8');
  } finally {
    await fh.close();
  }
}

/** @internal */
export async function readHeader(fh: FileHandle, file: string): Promise<SafetensorsHeader> {
  const fileSize = (await fh.stat()).size;
  if (fileSize < 8) throw new Error(`${file}: not a safetensors file: ${fileSize} bytes, shorter than the 8-byte header length`);
  const lenBytes = new Uint8Array(8);
  await readFully(fh, lenBytes, 0, file, 'header length');
  const n = new DataView(lenBytes.buffer).getBigUint64(0, true);
  if (n > BigInt(MAX_HEADER_BYTES))
    fail('range', `${file}: header length ${n} bytes exceeds the limit of ${MAX_HEADER_BYTES}`);
  if (n > BigInt(fileSize - 8))
    fail('range', `${file}: header length ${n} bytes is beyond the end of the file (${fileSize} bytes)`);
  const headerBytes = new Uint8Array(Number(n));
  await readFully(fh, headerBytes, 8, file, 'header');
  let json: unknown, text: string;
  try {
    // ignoreBOM keeps a byte-order mark in the text, so that JSON.parse refuses it (as the reference does).
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(headerBytes);
    json = JSON.parse(text);
  } catch (e) {
    throw new Error(`${file}: header is not valid UTF-8 JSON: ${(e as Error).message}`, { cause: e });
  }
  const dataStart = 8 + Number(n);
  const parsed = parseHeader(json, file, fileSize - dataStart);
  const notInteger = firstNonIntegerNumber(text);
  if (notInteger !== undefined) fail('range', `${file}: header: number ${notInteger}: expected shapes and offsets written as non-negative integers`);
  return { ...parsed, dataStart, fileSize };
}

/**
 * Every number of a header is a shape or an offset, and JSON.parse has already turned 2.0,
 * 1e0, -0 or 3.9999999999999999 into an integer: their text is refused, as the reference
 * refuses it. Returns the first number not written as plain digits. A scan of its own, as a
 * regular expression over a long string (a big __metadata__ value) overflows V8's stack.
 */
function firstNonIntegerNumber(json: string): string | undefined {
  const isDigit = (c: number) => c >= 48 && c <= 57;
  const inNumber = (c: number) => isDigit(c) || c === 46 || c === 101 || c === 69 || c === 43 || c === 45; // . e E + -
  for (let i = 0; i < json.length; ) {
    const c = json.charCodeAt(i);
    if (c === 34) { // a string: skip to its closing quote, past escapes
      for (++i; i < json.length && json.charCodeAt(i) !== 34; ++i) if (json.charCodeAt(i) === 92) ++i;
      ++i;
    } else if (c === 45 || isDigit(c)) {
      let j = i + 1;
      while (j < json.length && inNumber(json.charCodeAt(j))) ++j;
      for (let k = i; k < j; ++k) if (!isDigit(json.charCodeAt(k))) return json.slice(i, j);
      i = j;
    } else ++i;
  }
  return undefined;
}

function parseHeader(json: unknown, file: string, dataSize: number): Pick<SafetensorsHeader, 'metadata' | 'tensors'> {
  if (!isObject(json)) fail('type', `${file}: header: expected a JSON object, got ${describe(json)}`);
  let metadata: Record<string, string> = {};
  const tensors = new Map<string, SafetensorsEntry>();
  for (const [name, value] of Object.entries(json)) {
    if (name === '__metadata__') metadata = parseMetadata(value, `${file}: __metadata__`);
    else tensors.set(name, parseEntry(value, `${file}: tensor '${name}'`, dataSize));
  }
  // As the reference implementation requires: sorted by offsets, the tensors tile the data
  // section from its start to its end, with no gap, overlap or trailing byte. This also refuses
  // a name given twice with different entries (JSON.parse keeps only the last).
  const spans = [...tensors].sort(([, a], [, b]) => a.dataOffsets[0] - b.dataOffsets[0] || a.dataOffsets[1] - b.dataOffsets[1]);
  let at = 0, before = 'the start of the data section';
  for (const [name, t] of spans) {
    const [begin, end] = t.dataOffsets;
    if (begin < at) fail('range', `${file}: tensor '${name}': data_offsets [${begin}, ${end}] overlap ${before}, which ends at ${at}`);
    if (begin > at) fail('range', `${file}: tensor '${name}': data_offsets [${begin}, ${end}] leave bytes ${at} to ${begin} after ${before} unused`);
    at = end, before = `tensor '${name}'`;
  }
  if (at !== dataSize) fail('range', `${file}: the tensors end at byte ${at} of the ${dataSize}-byte data section: ${dataSize - at} bytes after ${before} are unused`);
  return { metadata, tensors };
}

/** @internal `__metadata__` must map strings to strings (also used for writing). */
export function parseMetadata(value: unknown, where: string): Record<string, string> {
  if (value === null) return {}; // the reference reads null as none
  if (!isObject(value)) fail('type', `${where}: expected an object of strings, got ${describe(value)}`);
  for (const [k, v] of Object.entries(value))
    if (typeof v !== 'string') fail('type', `${where}['${k}']: expected a string, got ${describe(v)}`);
  return Object.fromEntries(Object.entries(value)) as Record<string, string>; // own keys only, '__proto__' included
}

function parseEntry(value: unknown, where: string, dataSize: number): SafetensorsEntry {
  if (!isObject(value)) fail('type', `${where}: expected an object with dtype, shape, data_offsets, got ${describe(value)}`);
  const { dtype, shape, data_offsets: offsets } = value;
  if (typeof dtype !== 'string' || !Object.hasOwn(ITEM_SIZE, dtype))
    fail(typeof dtype === 'string' ? 'range' : 'type', `${where}: dtype: expected one of ${Object.keys(ITEM_SIZE).join(', ')}, got ${describe(dtype)}`);
  if (!Array.isArray(shape)) fail('type', `${where}: shape: expected an array of non-negative integers, got ${describe(shape)}`);
  shape.forEach((d: unknown, i) => {
    if (typeof d !== 'number' || !Number.isSafeInteger(d) || d < 0)
      fail('range', `${where}: shape[${i}]: expected a non-negative integer, got ${describe(d)}`);
  });
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((o) => Number.isSafeInteger(o) && o >= 0))
    fail('range', `${where}: data_offsets: expected two non-negative integers [begin, end], got ${JSON.stringify(offsets) ?? 'nothing'}`);
  const [begin, end] = offsets as [number, number];
  if (begin > end) fail('range', `${where}: data_offsets: begin ${begin} is after end ${end}`);
  if (end > dataSize) fail('range', `${where}: data_offsets: end ${end} is beyond the data section (${dataSize} bytes)`);
  // The product stops once past 2^53, so the comparison is exact whatever the dimensions.
  const span = end - begin, dims = shape as number[];
  let bytes = dims.includes(0) ? 0 : ITEM_SIZE[dtype as SafetensorsDType];
  for (const d of dims) if ((bytes *= d) > Number.MAX_SAFE_INTEGER) break;
  if (bytes !== span) {
    const needs = bytes > Number.MAX_SAFE_INTEGER ? `more than 2^53` : `${bytes}`;
    fail('range', `${where}: data_offsets span ${span} bytes, but ${dtype} [${dims.join(', ')}] needs ${needs}`);
  }
  return { dtype: dtype as SafetensorsDType, shape: [...dims], dataOffsets: [begin, end] };
}

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
const CHUNK_BYTES = 1 << 24; // converting types goes through a buffer this size, not one the tensor's size

/** @internal One tensor's values as float32, read with positional reads. */
export async function readTensor(fh: FileHandle, file: string, name: string, entry: SafetensorsEntry, dataStart: number): Promise<LoadedTensor> {
  const { dtype, shape, dataOffsets } = entry;
  if (!READABLE.includes(dtype))
    fail('range', `${file}: tensor '${name}': dtype ${dtype} cannot be read as float32 (supported: ${READABLE.join(', ')})`);
  const itemSize = ITEM_SIZE[dtype];
  const numel = (dataOffsets[1] - dataOffsets[0]) / itemSize;
  let data: Float32Array;
  try {
    data = new Float32Array(numel);
  } catch (e) {
    throw new RangeError(`${file}: tensor '${name}': ${numel} values do not fit in one Float32Array here: ${(e as Error).message}`, { cause: e });
  }
  const where = `tensor '${name}'`, start = dataStart + dataOffsets[0];
  if (dtype === 'F32' && LITTLE_ENDIAN) {
    await readFully(fh, data, start, file, where);
  } else {
    const buf = new Uint8Array(Math.min(numel * itemSize, CHUNK_BYTES));
    const view = new DataView(buf.buffer);
    const per = CHUNK_BYTES / itemSize;
    for (let i = 0; i < numel; i += per) {
      const m = Math.min(per, numel - i);
      await readFully(fh, buf.subarray(0, m * itemSize), start + i * itemSize, file, where);
      if (dtype === 'F32') for (let j = 0; j < m; ++j) data[i + j] = view.getFloat32(4 * j, true);
      else if (dtype === 'F64') for (let j = 0; j < m; ++j) data[i + j] = view.getFloat64(8 * j, true);
      else if (dtype === 'BF16' && LITTLE_ENDIAN) bf16BitsToF32s(new Uint16Array(buf.buffer, 0, m), data.subarray(i, i + m));
      else if (dtype === 'BF16') for (let j = 0; j < m; ++j) data[i + j] = fromBf16Bits(view.getUint16(2 * j, true));
      else for (let j = 0; j < m; ++j) data[i + j] = fromF16Bits(view.getUint16(2 * j, true));
    }
  }
  return { dtype: dtype as FloatDType, shape: [...shape], data };
}

// fs reads are capped near 2 GiB and may return short; loop, and refuse a file that shrank.
// Each read goes through its own byte view: one Uint8Array over a whole Float32Array of more
// than 2^30 values would be past a typed array's 2^32 elements.
async function readFully(fh: FileHandle, buf: ArrayBufferView, position: number, file: string, what: string): Promise<void> {
  for (let done = 0; done < buf.byteLength;) {
    const len = Math.min(buf.byteLength - done, 1 << 30);
    const { bytesRead } = await fh.read(new Uint8Array(buf.buffer, buf.byteOffset + done, len), 0, len, position + done);
    if (bytesRead === 0) throw new Error(`${file}: ${what}: file ended at byte ${position + done}; was it changed while being read?`);
    done += bytesRead;
  }
}
