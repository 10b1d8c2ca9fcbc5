// Safetensors: a file built byte by byte from the spec reads back; our files round-trip with
// IEEE rounding; every malformed header is refused naming the file and field; sharded dirs.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import {
  bfloat16BitsToFloat32, float16BitsToFloat32, float32ToBfloat16Bits, float32ToFloat16Bits,
  readSafetensors, readSafetensorsDir, readSafetensorsHeader, writeSafetensors,
} from '../dist/index.js';
import { bf16BitsToF32s, f32sToBf16Bits, fromBf16Bits, toBf16Bits } from '../dist/half.js';
import { SafetensorsWriter, writeSafetensorsFrom } from '../dist/safetensors-write.js';
import { randomArray, roundTo } from './reference.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'safetensors-test-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

const bytes = (...b: number[]) => Uint8Array.from(b);
const u64le = (n: bigint) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(n);
  return b;
};

/** A file from raw parts: length prefix (the header's byte length unless given), header, data. */
function rawFile(name: string, header: string | Uint8Array, data: Uint8Array = bytes(), length?: bigint): string {
  const h = typeof header === 'string' ? Buffer.from(header, 'utf8') : header;
  const path = join(dir, name);
  writeFileSync(path, Buffer.concat([u64le(length ?? BigInt(h.length)), h, data]));
  return path;
}

/** A one-tensor header with the given entry fields, over `dataBytes` zero bytes. */
function oneTensor(entry: Record<string, unknown>, dataBytes = 8): string {
  return rawFile('bad.safetensors', JSON.stringify({ w: entry }), new Uint8Array(dataBytes));
}
const f32Entry = { dtype: 'F32', shape: [2], data_offsets: [0, 8] };

describe('reading', () => {
  it('reads a file built byte by byte from the spec (F32, BF16, F16, F64, metadata)', async () => {
    const header =
      '{"__metadata__":{"format":"pt"},' +
      '"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},' +
      '"b":{"dtype":"BF16","shape":[2,1],"data_offsets":[8,12]},' +
      '"c":{"dtype":"F16","shape":[3],"data_offsets":[12,18]},' +
      '"d":{"dtype":"F64","shape":[],"data_offsets":[18,26]},' +
      '"e":{"dtype":"F32","shape":[0,5],"data_offsets":[26,26]}}   '; // trailing padding is allowed
    const data = bytes(
      0x00, 0x00, 0xc0, 0x3f, 0x00, 0x00, 0x00, 0xc0, // F32 1.5, -2
      0x80, 0x3f, 0x00, 0xbf, // BF16 1, -0.5
      0x00, 0x3c, 0xff, 0x7b, 0x01, 0x00, // F16 1, 65504, 2^-24
      0x9a, 0x99, 0x99, 0x99, 0x99, 0x99, 0xb9, 0x3f, // F64 0.1
    );
    const path = rawFile('known.safetensors', header, data);

    const h = await readSafetensorsHeader(path);
    expect(h.metadata).toEqual({ format: 'pt' });
    expect(h.dataStart).toBe(8 + header.length);
    expect(h.fileSize).toBe(8 + header.length + 26);
    expect([...h.tensors.keys()]).toEqual(['a', 'b', 'c', 'd', 'e']);
    expect(h.tensors.get('c')).toEqual({ dtype: 'F16', shape: [3], dataOffsets: [12, 18] });

    const { metadata, tensors } = await readSafetensors(path);
    expect(metadata).toEqual({ format: 'pt' });
    const got = Object.fromEntries([...tensors].map(([n, t]) => [n, { dtype: t.dtype, shape: t.shape, data: [...t.data] }]));
    expect(got).toEqual({
      a: { dtype: 'F32', shape: [2], data: [1.5, -2] },
      b: { dtype: 'BF16', shape: [2, 1], data: [1, -0.5] },
      c: { dtype: 'F16', shape: [3], data: [1, 65504, 2 ** -24] },
      d: { dtype: 'F64', shape: [], data: [Math.fround(0.1)] },
      e: { dtype: 'F32', shape: [0, 5], data: [] },
    });
    expect(tensors.get('a')!.data).toBeInstanceOf(Float32Array);
  });

  it('reads only the tensors named in opts.names, and refuses a name the file lacks', async () => {
    const path = join(dir, 'two.safetensors');
    await writeSafetensors(path, { x: { shape: [1], data: new Float32Array([3]) }, y: { shape: [1], data: new Float32Array([4]) } });
    const { tensors } = await readSafetensors(path, { names: ['y'] });
    expect([...tensors.keys()]).toEqual(['y']);
    expect([...tensors.get('y')!.data]).toEqual([4]);
    await expect(readSafetensors(path, { names: ['z'] })).rejects.toThrow(new RangeError(`opts.names: ${path} has no tensor 'z'`));
    await expect(readSafetensors(path, { name: ['z'] } as never)).rejects.toThrow(new TypeError('opts.name: not an option here; expected names'));
    await expect(readSafetensors(path, { names: 'y' as any })).rejects.toThrow(/^opts\.names: expected an array of strings/);
  });

  it('lists a dtype it cannot convert in the header, and refuses to read it as float32', async () => {
    const path = oneTensor({ dtype: 'I64', shape: [1], data_offsets: [0, 8] });
    expect((await readSafetensorsHeader(path)).tensors.get('w')!.dtype).toBe('I64');
    await expect(readSafetensors(path)).rejects.toThrow(`${path}: tensor 'w': dtype I64 cannot be read as float32`);
  });
});

describe('malformed files are refused, naming the file and field', () => {
  it('a file shorter than 8 bytes', async () => {
    const path = join(dir, 'short.safetensors');
    writeFileSync(path, bytes(1, 2, 3, 4, 5));
    await expect(readSafetensorsHeader(path)).rejects.toThrow(`${path}: not a safetensors file: 5 bytes, shorter than the 8-byte header length`);
  });

  it('a header length beyond the end of the file', async () => {
    const path = rawFile('long.safetensors', '{}', bytes(), 1000n);
    await expect(readSafetensorsHeader(path)).rejects.toThrow(new RangeError(`${path}: header length 1000 bytes is beyond the end of the file (10 bytes)`));
    const byOne = rawFile('long1.safetensors', '{}', bytes(), 3n); // one byte past the file's 2
    await expect(readSafetensorsHeader(byOne)).rejects.toThrow(new RangeError(`${byOne}: header length 3 bytes is beyond the end of the file (10 bytes)`));
  });

  it('a hostile header length (2^64 - 1, and 200 MB) is refused before anything is allocated', async () => {
    for (const n of [2n ** 64n - 1n, 200_000_000n, 100_000_001n]) {
      const path = rawFile('huge.safetensors', '{}', bytes(), n);
      await expect(readSafetensors(path)).rejects.toThrow(new RangeError(`${path}: header length ${n} bytes exceeds the limit of 100000000`));
    }
    const atLimit = rawFile('limit.safetensors', '{}', bytes(), 100_000_000n); // allowed, but past this file's end
    await expect(readSafetensors(atLimit)).rejects.toThrow(new RangeError(`${atLimit}: header length 100000000 bytes is beyond the end of the file (10 bytes)`));
  });

  it('a header that is not UTF-8, not JSON, or not an object', async () => {
    const notUtf8 = rawFile('a.safetensors', bytes(0x7b, 0xff, 0x7d));
    await expect(readSafetensorsHeader(notUtf8)).rejects.toThrow(`${notUtf8}: header is not valid UTF-8 JSON`);
    const notJson = rawFile('b.safetensors', '{"w":');
    await expect(readSafetensorsHeader(notJson)).rejects.toThrow(`${notJson}: header is not valid UTF-8 JSON`);
    const array = rawFile('c.safetensors', '[1, 2]');
    await expect(readSafetensorsHeader(array)).rejects.toThrow(new TypeError(`${array}: header: expected a JSON object, got an array of length 2`));
    const nul = rawFile('d.safetensors', 'null');
    await expect(readSafetensorsHeader(nul)).rejects.toThrow(`${nul}: header: expected a JSON object, got null`);
  });

  it('an entry that is not an object', async () => {
    const path = rawFile('e.safetensors', '{"w": 5}');
    await expect(readSafetensorsHeader(path)).rejects.toThrow(new TypeError(`${path}: tensor 'w': expected an object with dtype, shape, data_offsets, got number 5`));
  });

  it('an unknown or missing dtype', async () => {
    const path = oneTensor({ ...f32Entry, dtype: 'F128' });
    await expect(readSafetensorsHeader(path)).rejects.toThrow(new RegExp(`^${path}: tensor 'w': dtype: expected one of BOOL, .*F64, got 'F128'$`));
    await expect(readSafetensorsHeader(oneTensor({ ...f32Entry, dtype: undefined }))).rejects.toThrow(/tensor 'w': dtype: expected one of .*, got nothing$/);
  });

  it('a shape that is not an array of non-negative safe integers', async () => {
    await expect(readSafetensorsHeader(oneTensor({ ...f32Entry, shape: 2 }))).rejects.toThrow(/tensor 'w': shape: expected an array of non-negative integers, got number 2$/);
    await expect(readSafetensorsHeader(oneTensor({ ...f32Entry, shape: [-2] }))).rejects.toThrow(/tensor 'w': shape\[0\]: expected a non-negative integer, got number -2$/);
    await expect(readSafetensorsHeader(oneTensor({ ...f32Entry, shape: [2, 1.5] }))).rejects.toThrow(/tensor 'w': shape\[1\]: expected a non-negative integer, got number 1.5$/);
    await expect(readSafetensorsHeader(oneTensor({ ...f32Entry, shape: ['2'] }))).rejects.toThrow(/tensor 'w': shape\[0\]: expected a non-negative integer, got '2'$/);
    await expect(readSafetensorsHeader(oneTensor({ ...f32Entry, shape: [2 ** 60] }))).rejects.toThrow(/tensor 'w': shape\[0\]: expected a non-negative integer/);
    // Each dimension fits, the product would not: refused without computing it inexactly.
    await expect(readSafetensorsHeader(oneTensor({ ...f32Entry, shape: [2 ** 40, 2 ** 40] }))).rejects.toThrow(/tensor 'w': data_offsets span 8 bytes, but F32 \[1099511627776, 1099511627776\] needs more than 2\^53$/);
  });

  it('data_offsets that are not two ordered integers inside the data section', async () => {
    const cases: [unknown, RegExp][] = [
      [undefined, /tensor 'w': data_offsets: expected two non-negative integers \[begin, end\], got nothing$/],
      [[0, 8, 16], /tensor 'w': data_offsets: expected two non-negative integers \[begin, end\], got \[0,8,16\]$/],
      [[-8, 0], /tensor 'w': data_offsets: expected two non-negative integers/],
      [[0, 8.5], /tensor 'w': data_offsets: expected two non-negative integers/],
      [['0', 8], /tensor 'w': data_offsets: expected two non-negative integers/],
      [[8, 0], /tensor 'w': data_offsets: begin 8 is after end 0$/],
      [[9, 8], /tensor 'w': data_offsets: begin 9 is after end 8$/],
      [[8, 16], /tensor 'w': data_offsets: end 16 is beyond the data section \(8 bytes\)$/],
      [[1, 9], /tensor 'w': data_offsets: end 9 is beyond the data section \(8 bytes\)$/],
      [[0, 4], /tensor 'w': data_offsets span 4 bytes, but F32 \[2\] needs 8$/],
    ];
    for (const [offsets, message] of cases) {
      const path = oneTensor({ ...f32Entry, data_offsets: offsets });
      await expect(readSafetensorsHeader(path)).rejects.toThrow(message);
      await expect(readSafetensorsHeader(path)).rejects.toThrow(path);
    }
  });

  it('a truncated file: the data section is shorter than the header says', async () => {
    const path = oneTensor(f32Entry, 6);
    await expect(readSafetensors(path)).rejects.toThrow(new RangeError(`${path}: tensor 'w': data_offsets: end 8 is beyond the data section (6 bytes)`));
  });

  it('tensors that do not tile the data section exactly: overlaps, gaps, trailing bytes, a name given twice', async () => {
    const file = (name: string, entries: Record<string, number[]>, size: number, text?: string) =>
      rawFile(name, text ?? JSON.stringify(Object.fromEntries(Object.entries(entries).map(([n, o]) => [n, { dtype: 'U8', shape: [o[1]! - o[0]!], data_offsets: o }]))), new Uint8Array(size));
    const overlap = file('overlap.safetensors', { a: [0, 8], b: [4, 12] }, 12);
    await expect(readSafetensorsHeader(overlap)).rejects.toThrow(new RangeError(`${overlap}: tensor 'b': data_offsets [4, 12] overlap tensor 'a', which ends at 8`));
    const inside = file('inside.safetensors', { a: [0, 8], e: [4, 4] }, 8); // the reference refuses an empty one inside another too
    await expect(readSafetensorsHeader(inside)).rejects.toThrow(`${inside}: tensor 'e': data_offsets [4, 4] overlap tensor 'a', which ends at 8`);
    const gap = file('gap.safetensors', { a: [0, 4], b: [6, 8] }, 8);
    await expect(readSafetensorsHeader(gap)).rejects.toThrow(`${gap}: tensor 'b': data_offsets [6, 8] leave bytes 4 to 6 after tensor 'a' unused`);
    const oneByte = file('gap1.safetensors', { a: [0, 4], b: [5, 8] }, 8);
    await expect(readSafetensorsHeader(oneByte)).rejects.toThrow(`${oneByte}: tensor 'b': data_offsets [5, 8] leave bytes 4 to 5 after tensor 'a' unused`);
    const late = file('late.safetensors', { a: [4, 8] }, 8);
    await expect(readSafetensorsHeader(late)).rejects.toThrow(`${late}: tensor 'a': data_offsets [4, 8] leave bytes 0 to 4 after the start of the data section unused`);
    const trailing = file('trailing.safetensors', { a: [0, 4] }, 8);
    await expect(readSafetensorsHeader(trailing)).rejects.toThrow(`${trailing}: the tensors end at byte 4 of the 8-byte data section: 4 bytes after tensor 'a' are unused`);
    // JSON.parse keeps the last of two entries of one name: the first one's bytes are left over.
    const twice = file('twice.safetensors', {}, 8, '{"a":{"dtype":"XX","shape":[-1],"data_offsets":[9,1]},"a":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}}');
    await expect(readSafetensorsHeader(twice)).rejects.toThrow(/tensor 'a': data_offsets \[4, 8\] leave bytes 0 to 4 after the start of the data section unused$/);
    const empty = file('empty.safetensors', { a: [0, 8], e: [8, 8] }, 8); // an empty tensor where the last one ends
    expect((await readSafetensorsHeader(empty)).tensors.size).toBe(2);
  });

  it('numbers written other than as plain integers, and a byte-order mark, as the reference refuses them', async () => {
    // Each parses to the offsets the file needs: only the text is wrong.
    for (const [offsets, literal] of [['0,1.0', '1.0'], ['0,1E+0', '1E+0'], ['0,0.99999999999999999999', '0.99999999999999999999'], ['-0,1', '-0']]) {
      const path = rawFile('literal.safetensors', `{"w":{"dtype":"U8","shape":[1],"data_offsets":[${offsets}]}}`, new Uint8Array(1));
      await expect(readSafetensorsHeader(path)).rejects.toThrow(new RangeError(`${path}: header: number ${literal}: expected shapes and offsets written as non-negative integers`));
    }
    const inString = rawFile('in-string.safetensors', '{"__metadata__":{"x":"-1.5e3 \\" 2.0"},"w":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}', new Uint8Array(1));
    expect((await readSafetensorsHeader(inString)).metadata).toEqual({ x: '-1.5e3 " 2.0' });
    // A metadata string of 12M characters (20M in JSON, escapes included): a regex over it overflowed V8's stack.
    const big = join(dir, 'big-metadata.safetensors');
    await writeSafetensors(big, { w: { shape: [1], data: Float32Array.of(1) } }, { note: 'x\\"'.repeat(4_000_000) });
    expect((await readSafetensorsHeader(big)).metadata.note!.length).toBe(12_000_000);
    const bom = rawFile('bom.safetensors', `\uFEFF${JSON.stringify({ w: f32Entry })}`, new Uint8Array(8));
    await expect(readSafetensorsHeader(bom)).rejects.toThrow(/header is not valid UTF-8 JSON/);
  });

  it('a header whose objects carry a constructor key: the messages still say what is wrong', async () => {
    const path = oneTensor({ ...f32Entry, dtype: { constructor: { name: { toString: 1 } } } });
    await expect(readSafetensorsHeader(path)).rejects.toThrow(/tensor 'w': dtype: expected one of .*, got Object$/);
    const meta = rawFile('meta.safetensors', '{"__metadata__":{"k":{"constructor":{"name":"string"}}}}');
    await expect(readSafetensorsHeader(meta)).rejects.toThrow(`${meta}: __metadata__['k']: expected a string, got Object`);
    expect((await readSafetensorsHeader(rawFile('null.safetensors', '{"__metadata__":null}'))).metadata).toEqual({}); // as the reference reads it
  });

  it('a FIFO or a directory in a file\'s place is refused, not waited on', async () => {
    const fifo = join(dir, 'fifo.safetensors');
    expect(spawnSync('mkfifo', [fifo]).status).toBe(0);
    await expect(readSafetensors(fifo)).rejects.toThrow(new TypeError(`${fifo}: not a regular file`));
    const sub = join(dir, 'sub.safetensors');
    mkdirSync(sub);
    await expect(readSafetensorsHeader(sub)).rejects.toThrow(`${sub}: not a regular file`);
  });

  it('__metadata__ that is not an object of strings', async () => {
    const num = rawFile('m1.safetensors', '{"__metadata__":{"format":"pt","step":1}}');
    await expect(readSafetensorsHeader(num)).rejects.toThrow(new TypeError(`${num}: __metadata__['step']: expected a string, got number 1`));
    const arr = rawFile('m2.safetensors', '{"__metadata__":["pt"]}');
    await expect(readSafetensorsHeader(arr)).rejects.toThrow(`${arr}: __metadata__: expected an object of strings, got an array of length 1`);
  });
});

describe('writing', () => {
  const readBack = async (dtype: 'F32' | 'BF16' | 'F16', values: number[]) => {
    const path = join(dir, `${dtype}.safetensors`);
    await writeSafetensors(path, { t: { shape: [values.length], data: Float32Array.from(values), dtype } });
    const t = (await readSafetensors(path)).tensors.get('t')!;
    expect(t.dtype).toBe(dtype);
    return [...t.data];
  };

  it('F32 round-trips exactly, -0, infinities and NaN included', async () => {
    const values = [...randomArray(100, 7), -0, Infinity, -Infinity, NaN, 1e-45, 3.4028234663852886e38];
    expect(await readBack('F32', values)).toEqual(values.map(Math.fround));
  });

  it('BF16 rounds to nearest, ties to even, and keeps NaN a NaN', async () => {
    const nanLowPayload = new Float32Array(new Uint32Array([0x7f800001]).buffer)[0]!; // truncation would give Infinity
    const got = await readBack('BF16', [1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -8 + 2 ** -20, -3.14159, 3.4028234663852886e38, -0, NaN, nanLowPayload]);
    expect(got.slice(0, 6)).toEqual([1, 1 + 2 ** -6, 1 + 2 ** -7, -3.140625, Infinity, -0]);
    expect(got.slice(6).every(Number.isNaN)).toBe(true);
    const random = randomArray(1000, 3);
    expect(await readBack('BF16', [...random])).toEqual([...roundTo('bfloat16', random)]);
  });

  it('F16 rounds to nearest even: subnormals, overflow to Infinity, NaN', async () => {
    const got = await readBack('F16', [
      1 + 2 ** -11, 1 + 3 * 2 ** -11, 65504, 65519, 65520, 1e5, -1e5, // ties; largest finite; overflow
      2 ** -24, 2 ** -25, 1.5 * 2 ** -25, 3 * 2 ** -25, 1023.5 * 2 ** -24, 1e-10, -1e-10, NaN, // subnormals
    ]);
    expect(got.slice(0, -1)).toEqual([
      1, 1 + 2 ** -9, 65504, 65504, Infinity, Infinity, -Infinity,
      2 ** -24, 0, 2 ** -24, 2 ** -23, 2 ** -14, 0, -0,
    ]);
    expect(got.at(-1)).toBeNaN();
    const random = randomArray(1000, 5);
    expect(await readBack('F16', [...random])).toEqual([...roundTo('float16', random)]);
  });

  it('half conversions match a table of known bit patterns and invert exactly on all 65536 patterns', () => {
    const table: [number, number][] = [
      [1, 0x3c00], [-2, 0xc000], [0.1, 0x2e66], [1 / 3, 0x3555], [65504, 0x7bff], [2 ** -14, 0x0400],
      [2 ** -24, 0x0001], [1023 * 2 ** -24, 0x03ff], [-0, 0x8000], [Infinity, 0x7c00], [-Infinity, 0xfc00],
    ];
    for (const [x, bits] of table) expect(float32ToFloat16Bits(x)).toBe(bits);
    expect([1, -0.5, 0.1, Infinity].map(float32ToBfloat16Bits)).toEqual([0x3f80, 0xbf00, 0x3dcd, 0x7f80]);
    for (let h = 0; h < 65536; ++h) {
      const f16 = float16BitsToFloat32(h), bf16 = bfloat16BitsToFloat32(h);
      if (Number.isNaN(f16)) expect(Number.isNaN(float16BitsToFloat32(float32ToFloat16Bits(f16)))).toBe(true);
      else if (float32ToFloat16Bits(f16) !== h) expect.fail(`float16 0x${h.toString(16)} -> ${f16} -> 0x${float32ToFloat16Bits(f16).toString(16)}`);
      if (Number.isNaN(bf16)) expect(Number.isNaN(bfloat16BitsToFloat32(float32ToBfloat16Bits(bf16)))).toBe(true);
      else if (float32ToBfloat16Bits(bf16) !== h) expect.fail(`bfloat16 0x${h.toString(16)} round trip`);
    }
  });

  it("the checkpoint loops' bulk bfloat16 conversions give the single-value functions' bits: every pattern in, rounding edges and random words out", () => {
    const all = Uint16Array.from({ length: 65536 }, (_, h) => h), got = new Float32Array(65536);
    bf16BitsToF32s(all, got);
    const bits = new Uint32Array(got.buffer);
    for (let h = 0; h < 65536; ++h) {
      const x = fromBf16Bits(h); // through a JavaScript number, which need not keep a NaN's payload: the bulk form keeps the file's bits
      if (Number.isNaN(x) ? !Number.isNaN(got[h]) || bits[h] !== h << 16 >>> 0 : got[h] !== x || bits[h] !== h << 16 >>> 0)
        expect.fail(`0x${h.toString(16)}: ${got[h]} (0x${bits[h]!.toString(16)})`);
    }
    const words = new Uint32Array(1 << 16);
    for (let i = 0; i < words.length; ++i) words[i] = (Math.imul(i, 2654435761) ^ (i << 7)) >>> 0;
    // ties to even both ways, the largest finite values rounding to infinity, NaNs with low-bit payloads, subnormals
    words.set([0x3f808000, 0x3f818000, 0x7f7fffff, 0xff7fffff, 0x7f800001, 0xff800001, 0x7fc00000, 0x00008000, 0x00018000, 0x80000001]);
    const xs = new Float32Array(words.buffer), out = new Uint16Array(words.length);
    f32sToBf16Bits(xs, out);
    for (let i = 0; i < words.length; ++i) if (out[i] !== toBf16Bits(xs[i]!)) expect.fail(`0x${words[i]!.toString(16)}: 0x${out[i]!.toString(16)}`);
    expect(Array.from(out.subarray(0, 10))).toEqual([0x3f80, 0x3f82, 0x7f80, 0xff80, 0x7fc0, 0xffc0, 0x7fc0, 0x0000, 0x0002, 0x8000]);
  });

  it('half conversions refuse what is not a number, or not 16 bits, naming the argument', () => {
    for (const f of [float16BitsToFloat32, bfloat16BitsToFloat32]) {
      expect(() => f(1.5)).toThrow(/^bits: expected an integer in \[0, 65535\], got 1.5$/);
      expect(() => f(65536)).toThrow(RangeError);
      expect(() => f(-1)).toThrow(RangeError);
      expect(() => f('1' as any)).toThrow(/^bits: expected an integer, got '1'$/);
    }
    for (const f of [float32ToFloat16Bits, float32ToBfloat16Bits]) {
      expect(() => f('1' as any)).toThrow(TypeError);
      expect(() => f(1n as any)).toThrow(/^x: expected a number, got bigint 1$/);
    }
    // NaN is a number: converted to a NaN pattern, not refused
    expect(Number.isNaN(float16BitsToFloat32(float32ToFloat16Bits(NaN)))).toBe(true);
    expect(Number.isNaN(bfloat16BitsToFloat32(float32ToBfloat16Bits(NaN)))).toBe(true);
  });

  it('pads the header to a multiple of 8 with spaces, sorts names, and lays tensors out contiguously', async () => {
    const path = join(dir, 'layout.safetensors');
    const t = (n: number, dtype?: 'BF16' | 'F16') => ({ shape: [n], data: new Float32Array(n).fill(n), dtype });
    await writeSafetensors(path, { b: t(3, 'F16'), 10: t(1), a: t(2, 'BF16'), 2: t(5) }, { format: 'pt' });
    const file = readFileSync(path);
    const n = Number(file.readBigUInt64LE(0));
    expect(n % 8).toBe(0);
    const text = file.subarray(8, 8 + n).toString('utf8');
    expect(text).toMatch(/^\{"__metadata__":\{"format":"pt"\},"10":.*\} *$/);
    const { __metadata__, ...entries } = JSON.parse(text);
    expect(__metadata__).toEqual({ format: 'pt' });
    // Code-point order ('10' < '2' < 'a' < 'b'), whatever JS object key order says.
    expect([...text.matchAll(/"(\w+)":\{"dtype"/g)].map((m) => m[1])).toEqual(['10', '2', 'a', 'b']);
    expect(entries['10'].data_offsets).toEqual([0, 4]);
    expect(entries['2'].data_offsets).toEqual([4, 24]);
    expect(entries.a).toEqual({ dtype: 'BF16', shape: [2], data_offsets: [24, 28] });
    expect(entries.b).toEqual({ dtype: 'F16', shape: [3], data_offsets: [28, 34] });
    expect(file.length).toBe(8 + n + 34);
    const back = await readSafetensors(path);
    expect([...back.tensors.get('b')!.data]).toEqual([3, 3, 3]);
    expect(back.metadata).toEqual({ format: 'pt' });
  });

  it('converts tensors larger than one conversion chunk', async () => {
    const n = 9_000_000; // over both the writer's and the reader's chunk, in BF16
    const data = new Float32Array(n);
    for (let i = 0; i < n; ++i) data[i] = (i % 251) - 125; // exact in bfloat16
    const path = join(dir, 'big.safetensors');
    await writeSafetensors(path, { big: { shape: [n], data, dtype: 'BF16' } });
    const got = (await readSafetensors(path)).tensors.get('big')!.data;
    expect(got.length).toBe(n);
    expect(got[8_388_607]).toBe(data[8_388_607]);
    expect(got[n - 1]).toBe(data[n - 1]);
    expect(got.every((v, i) => v === data[i])).toBe(true);
  });

  it('replaces an existing file whole and leaves no temporary file behind', async () => {
    const path = join(dir, 'model.safetensors');
    await writeSafetensors(path, { a: { shape: [1], data: new Float32Array([1]) } });
    await writeSafetensors(path, { b: { shape: [1], data: new Float32Array([2]) } });
    expect(readdirSync(dir)).toEqual(['model.safetensors']);
    expect([...(await readSafetensors(path)).tensors.keys()]).toEqual(['b']);
    await expect(writeSafetensors(join(dir, 'no-such-dir', 'x.safetensors'), {})).rejects.toThrow(/ENOENT/);
    expect(readdirSync(dir)).toEqual(['model.safetensors']);
  });

  it('refuses bad arguments before writing anything, naming them', async () => {
    const path = join(dir, 'x.safetensors');
    const ok = { shape: [2], data: new Float32Array(2) };
    await expect(writeSafetensors(path, { w: { ...ok, shape: [3] } })).rejects.toThrow(new RangeError(`tensors['w'].shape: [3] holds 3 elements, but data has 2`));
    await expect(writeSafetensors(path, { w: { ...ok, data: [0, 0] as any } })).rejects.toThrow(/^tensors\['w'\]\.data: expected a Float32Array, got an array/);
    await expect(writeSafetensors(path, { w: { ...ok, shape: [-2] } })).rejects.toThrow(/^tensors\['w'\]\.shape\[0\]: expected a non-negative integer/);
    await expect(writeSafetensors(path, { w: { ...ok, dtype: 'F64' as any } })).rejects.toThrow(/^tensors\['w'\]\.dtype: expected one of 'F32', 'BF16', 'F16', got 'F64'/);
    // A misspelt key would have written F32 unasked.
    await expect(writeSafetensors(path, { w: { ...ok, dtyp: 'BF16' } as any })).rejects.toThrow(/^tensors\['w'\]\.dtyp: not an option here; expected shape, data, dtype$/);
    await expect(writeSafetensors(path, { __metadata__: ok })).rejects.toThrow(/reserved for the metadata/);
    await expect(writeSafetensors(path, { w: ok }, { step: 1 as any })).rejects.toThrow(new TypeError(`metadata['step']: expected a string, got number 1`));
    await expect(writeSafetensors(path, null as any)).rejects.toThrow(/^tensors: expected an object/);
    expect(existsSync(path)).toBe(false);
    expect(readdirSync(dir)).toEqual([]);
  });

  it('tensor by tensor (how models and checkpoints are saved): each value asked for only once the one before is written', async () => {
    const path = join(dir, 'lazy.safetensors'), asked: string[] = [], sizes: number[] = [];
    const specs = { '10': { shape: [2] }, b: { shape: [3], dtype: 'BF16' as const }, a: { shape: [1] } };
    await writeSafetensorsFrom(path, specs, (name) => {
      const tmp = readdirSync(dir).filter((f) => f.startsWith('lazy.safetensors.tmp-'));
      expect(tmp).toHaveLength(1);
      sizes.push(statSync(join(dir, tmp[0]!)).size);
      asked.push(name);
      return Float32Array.from({ length: specs[name as keyof typeof specs].shape[0]! }, (_, i) => asked.length * 10 + i);
    });
    expect(asked).toEqual(['10', 'a', 'b']); // the header's (code point) order
    expect([sizes[1]! - sizes[0]!, sizes[2]! - sizes[1]!]).toEqual([8, 4]); // the file so far: the tensors before, no more
    const back = (await readSafetensors(path)).tensors;
    expect([...back.get('10')!.data]).toEqual([10, 11]);
    expect([...back.get('a')!.data]).toEqual([20]);
    expect([...back.get('b')!.data]).toEqual([30, 31, 32]);
    // a value that fails leaves no file, temporary or final
    await expect(writeSafetensorsFrom(join(dir, 'failed.safetensors'), specs, (name) => {
      if (name === 'a') throw new Error('no values for a');
      return new Float32Array(2);
    })).rejects.toThrow('no values for a');
    expect(readdirSync(dir)).toEqual(['lazy.safetensors']);
  });

  it('a writer takes its tensors in order, each of its size, and commits only when all are written', async () => {
    const path = join(dir, 'w.safetensors');
    const w = await SafetensorsWriter.open(path, { b: { shape: [2] }, a: { shape: [1] } });
    expect(w.names).toEqual(['a', 'b']);
    await expect(w.write('b', new Float32Array(2))).rejects.toThrow(`${path}: 'b' written out of order; expected 'a'`);
    await expect(w.write('a', new Float32Array(2))).rejects.toThrow(new RangeError(`tensors['a'].shape: [1] holds 1 elements, but data has 2`));
    await w.write('a', new Float32Array(1));
    await expect(w.commit()).rejects.toThrow(`${path}: 1 of 2 tensors not written`);
    expect(existsSync(path)).toBe(false);
    await w.abort();
    expect(readdirSync(dir)).toEqual([]);
  });
});

describe('checkpoint directories', () => {
  const shard = (values: Record<string, number>) =>
    Object.fromEntries(Object.entries(values).map(([n, v]) => [n, { shape: [2], data: new Float32Array([v, -v]) }]));

  async function sharded(weightMap: Record<string, string>) {
    await writeSafetensors(join(dir, 'model-00001-of-00002.safetensors'), shard({ a: 1, b: 2 }), { format: 'pt' });
    await writeSafetensors(join(dir, 'model-00002-of-00002.safetensors'), shard({ c: 3 }), { format: 'pt' });
    writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: 24 }, weight_map: weightMap }));
  }
  const goodMap = { a: 'model-00001-of-00002.safetensors', b: 'model-00001-of-00002.safetensors', c: 'model-00002-of-00002.safetensors' };

  it('reads a sharded checkpoint through its index, all tensors or some', async () => {
    await sharded(goodMap);
    const all = await readSafetensorsDir(dir);
    expect([...all.tensors.keys()]).toEqual(['a', 'b', 'c']);
    expect([...all.tensors.get('c')!.data]).toEqual([3, -3]);
    expect(all.metadata).toEqual({ format: 'pt' });
    const some = await readSafetensorsDir(dir, { names: ['c', 'a'] });
    expect([...some.tensors.keys()]).toEqual(['c', 'a']);
    await expect(readSafetensorsDir(dir, { names: ['z'] })).rejects.toThrow(`opts.names: ${dir} has no tensor 'z'`);
  });

  it('reads a single model.safetensors', async () => {
    await writeSafetensors(join(dir, 'model.safetensors'), shard({ x: 5 }));
    expect([...(await readSafetensorsDir(dir)).tensors.get('x')!.data]).toEqual([5, -5]);
  });

  it('a file with 200000 metadata entries reads as a directory too', async () => {
    const metadata = Object.fromEntries(Array.from({ length: 200_000 }, (_, i) => [`k${i}`, 'v']));
    await writeSafetensors(join(dir, 'model.safetensors'), { a: { shape: [1], data: Float32Array.of(1) } }, metadata);
    expect(Object.keys((await readSafetensorsDir(dir)).metadata).length).toBe(200_000);
  });

  it('refuses a missing shard, a tensor not in its shard, a path outside the directory, a bad index', async () => {
    await sharded({ ...goodMap, d: 'model-00003-of-00002.safetensors' });
    await expect(readSafetensorsDir(dir, { names: ['a'] })).rejects.toThrow(/weight_map names model-00003-of-00002\.safetensors, which does not exist/);
    await sharded({ ...goodMap, d: 'model-00002-of-00002.safetensors' });
    await expect(readSafetensorsDir(dir)).rejects.toThrow(`${join(dir, 'model-00002-of-00002.safetensors')}: tensor 'd' is not in this file, though the index puts it there`);
    for (const evil of ['../model-00001-of-00002.safetensors', '..\\model-00001-of-00002.safetensors', '/etc/passwd', '..', 7]) {
      await sharded({ ...goodMap, a: evil as string });
      await expect(readSafetensorsDir(dir)).rejects.toThrow(/weight_map\['a'\]: expected a file name in the directory/);
    }
    writeFileSync(join(dir, 'model.safetensors.index.json'), '{"weight_map": [1]}');
    await expect(readSafetensorsDir(dir)).rejects.toThrow(/model\.safetensors\.index\.json: weight_map: expected an object of tensor name -> file name, got an array/);
    writeFileSync(join(dir, 'model.safetensors.index.json'), '{"weight_map":');
    await expect(readSafetensorsDir(dir)).rejects.toThrow(/model\.safetensors\.index\.json: not valid JSON/);
  });

  it('refuses a directory with neither file, and a path that is not a directory', async () => {
    mkdirSync(join(dir, 'empty'));
    await expect(readSafetensorsDir(join(dir, 'empty'))).rejects.toThrow(/neither model\.safetensors nor model\.safetensors\.index\.json is there$/);
    writeFileSync(join(dir, 'empty', 'pytorch_model.bin'), 'pickle');
    await expect(readSafetensorsDir(join(dir, 'empty'))).rejects.toThrow(/is there \(pytorch_model.bin is not read: save the model as safetensors/);
    writeFileSync(join(dir, 'file'), '');
    await expect(readSafetensorsDir(join(dir, 'file'))).rejects.toThrow(`dir: ${join(dir, 'file')} is not a directory`);
  });
});
