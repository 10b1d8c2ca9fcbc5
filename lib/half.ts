// Bit-exact float32 <-> bfloat16 / float16 conversions for checkpoint files (Node 20 has no
// Float16Array). Rounding is to nearest, ties to even, as IEEE 754 and PyTorch do. The
// checkpoint loops call the unchecked forms; the exported API (end of file) checks its argument.
import { checkInteger, fail, describe } from './errors.js';

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** The bfloat16 bits nearest to `x`; NaN stays a (quiet) NaN of the same sign. */
export function toBf16Bits(x: number): number {
  f32[0] = x;
  const bits = u32[0]!;
  // A NaN whose payload sits only in the low 16 bits would otherwise truncate to Infinity.
  if ((bits & 0x7fffffff) > 0x7f800000) return (bits >>> 16) | 0x0040;
  return ((bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16) & 0xffff;
}

export function fromBf16Bits(h: number): number {
  u32[0] = (h & 0xffff) << 16;
  return f32[0]!;
}

/**
 * fromBf16Bits over arrays (little-endian hosts: the typed arrays' order is the file's), one
 * shift a value on whole-word views rather than a call through a scratch float each: a loaded
 * 8B bfloat16 checkpoint is 8e9 of them.
 */
export function bf16BitsToF32s(src: Uint16Array, dst: Float32Array): void {
  const out = new Uint32Array(dst.buffer, dst.byteOffset, src.length);
  for (let j = 0; j < src.length; ++j) out[j] = src[j]! << 16;
}

/** toBf16Bits over arrays, the same bits (little-endian hosts). */
export function f32sToBf16Bits(src: Float32Array, dst: Uint16Array): void {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let j = 0; j < src.length; ++j) {
    const b = bits[j]!;
    dst[j] = (b & 0x7fffffff) > 0x7f800000 ? (b >>> 16) | 0x0040 : (b + 0x7fff + ((b >>> 16) & 1)) >>> 16;
  }
}

/** The float16 bits nearest to `x`: subnormals rounded correctly, overflow to ±Infinity. */
export function toF16Bits(x: number): number {
  f32[0] = x;
  const bits = u32[0]!;
  const sign = (bits >>> 16) & 0x8000;
  const exp = (bits >>> 23) & 0xff;
  let mant = bits & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant !== 0 ? 0x200 | (mant >>> 13) : 0);
  const e = exp - 127 + 15; // the float16 biased exponent
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    // Subnormal result: units of 2^-24. Below 2^-25 everything rounds to zero.
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let h = mant >>> shift;
    const rem = mant & ((1 << shift) - 1), halfway = 1 << (shift - 1);
    if (rem > halfway || (rem === halfway && (h & 1) !== 0)) h++; // a carry gives the smallest normal
    return sign | h;
  }
  let h = (e << 10) | (mant >>> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && (h & 1) !== 0)) h++; // a carry past 0x7bff gives Infinity
  return sign | h;
}

let f16Table: Float32Array | undefined;

export function fromF16Bits(h: number): number {
  // 65536 entries (256 KiB), built on first use: decoding a multi-GB checkpoint stays a lookup.
  f16Table ??= Float32Array.from({ length: 65536 }, (_, i) => decodeFloat16(i));
  return f16Table[h & 0xffff]!;
}

function decodeFloat16(h: number): number {
  const sign = h & 0x8000 ? -1 : 1, exp = (h >>> 10) & 0x1f, mant = h & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 31) return mant !== 0 ? NaN : sign * Infinity;
  return sign * (1024 + mant) * 2 ** (exp - 25);
}

function checkNumber(x: unknown): number {
  if (typeof x !== 'number') fail('type', `x: expected a number, got ${describe(x)}`);
  return x;
}

/** The bfloat16 bits (an integer in [0, 65535]) nearest to `x` taken as a float32; NaN stays a quiet NaN of its sign. */
export function float32ToBfloat16Bits(x: number): number {
  return toBf16Bits(checkNumber(x));
}
/** The float32 value of bfloat16 `bits` (an integer in [0, 65535]). */
export function bfloat16BitsToFloat32(bits: number): number {
  return fromBf16Bits(checkInteger(bits, 'bits', 0, 0xffff));
}
/** The float16 bits (an integer in [0, 65535]) nearest to `x` taken as a float32: subnormals rounded correctly, overflow to ±Infinity. */
export function float32ToFloat16Bits(x: number): number {
  return toF16Bits(checkNumber(x));
}
/** The float32 value of float16 `bits` (an integer in [0, 65535]). */
export function float16BitsToFloat32(bits: number): number {
  return fromF16Bits(checkInteger(bits, 'bits', 0, 0xffff));
}
