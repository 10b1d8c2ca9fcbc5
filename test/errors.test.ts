// Bad input to attention() and attentionBackward(): a TypeError or RangeError that names
// the argument and what was expected; never a crash, never a NaN.
import { describe, expect, it } from 'vitest';

import { attention, attentionBackward, tensor } from '../dist/index.js';

const t = (shape: number[], dtype: 'float32' | 'bfloat16' | 'float16' = 'float32') =>
  tensor(new Float32Array(shape.reduce((a, b) => a * b, 1)), shape, { dtype });

describe('attention refuses bad input', () => {
  const q = t([2, 8, 4, 16]), kv = t([2, 8, 2, 16]);

  const cases: [string, () => unknown, ErrorConstructor, RegExp][] = [
    ['non-tensor q', () => attention({} as any, kv, kv), TypeError, /^q: expected a Tensor, got Object/],
    ['missing v', () => (attention as any)(q, kv), TypeError, /^v: expected a Tensor, got undefined/],
    ['q of rank 3', () => attention(t([2, 8, 64]), kv, kv), RangeError, /^q: expected shape \[batch, seq, heads, headDim\] with every size >= 1, got \[2, 8, 64\]/],
    ['k with a zero dim', () => attention(q, t([2, 0, 2, 16]), t([2, 0, 2, 16])), RangeError, /^k: expected shape/],
    ['batch mismatch', () => attention(q, t([1, 8, 2, 16]), t([1, 8, 2, 16])), RangeError, /^k: batch 1 does not match q's batch 2/],
    ['headDim mismatch', () => attention(q, t([2, 8, 2, 32]), t([2, 8, 2, 32])), RangeError, /^k: headDim 32 does not match q's headDim 16/],
    ['v not shaped like k', () => attention(q, kv, t([2, 9, 2, 16])), RangeError, /^v: expected the shape of k \[2, 8, 2, 16\], got \[2, 9, 2, 16\]/],
    ['heads that do not divide', () => attention(q, t([2, 8, 3, 16]), t([2, 8, 3, 16])), RangeError, /^k: 3 kv heads must divide q's 4 heads/],
    ['dtype mismatch', () => attention(q, t([2, 8, 2, 16], 'bfloat16'), kv), TypeError, /^k: dtype 'bfloat16' does not match q's 'float32'/],
    ['headDim above 256', () => attention(t([1, 2, 1, 257]), t([1, 2, 1, 257]), t([1, 2, 1, 257])), RangeError, /^q: headDim 257 exceeds the supported maximum of 256/],
    ['causal not boolean', () => attention(q, kv, kv, { causal: 'yes' as any }), TypeError, /^opts\.causal: expected a boolean, got 'yes'/],
    ['deterministic not boolean', () => attention(q, kv, kv, { deterministic: 1 as any }), TypeError, /^opts\.deterministic: expected a boolean, got number 1/],
    ['negative scale', () => attention(q, kv, kv, { scale: -1 }), RangeError, /^opts\.scale: expected a finite number > 0, got -1/],
    ['NaN scale', () => attention(q, kv, kv, { scale: NaN }), RangeError, /^opts\.scale/],
    ['options not an object', () => attention(q, kv, kv, 5 as any), TypeError, /^opts: expected an options object, got number 5/],
  ];
  for (const [name, call, Kind, message] of cases)
    it(name, () => {
      expect(call).toThrow(Kind);
      expect(call).toThrow(message);
    });

  it('a disposed input', () => {
    const k = t([2, 8, 2, 16]);
    k.dispose();
    expect(() => attention(q, k, kv)).toThrow(new TypeError('k: tensor has been disposed'));
  });
});

describe('attentionBackward refuses bad input', () => {
  const q = t([1, 8, 2, 16]), kv = t([1, 8, 1, 16]);
  const { out, lse } = attention(q, kv, kv);
  const cases: [string, () => unknown, ErrorConstructor, RegExp][] = [
    ['dout of another shape', () => attentionBackward(t([1, 7, 2, 16]), q, kv, kv, out, lse), RangeError, /^dout: expected the shape of q \[1, 8, 2, 16\], got \[1, 7, 2, 16\]/],
    ['out of another dtype', () => attentionBackward(q, q, kv, kv, t([1, 8, 2, 16], 'float16'), lse), TypeError, /^out: dtype 'float16' does not match q's 'float32'/],
    ['lse of another shape', () => attentionBackward(q, q, kv, kv, out, t([1, 8, 2])), RangeError, /^lse: expected shape \[batch, heads, seqQ\] = \[1, 2, 8\], got \[1, 8, 2\]/],
    ['lse not float32', () => attentionBackward(q, q, kv, kv, out, t([1, 2, 8], 'bfloat16')), TypeError, /^lse: expected dtype 'float32', got 'bfloat16'/],
    ['missing lse', () => (attentionBackward as any)(q, q, kv, kv, out), TypeError, /^lse: expected a Tensor, got undefined/],
  ];
  for (const [name, call, Kind, message] of cases)
    it(name, () => {
      expect(call).toThrow(Kind);
      expect(call).toThrow(message);
    });
});
