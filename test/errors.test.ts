// Bad input to attention() and attentionBackward(), and what a review found reaching native
// code elsewhere: a TypeError or RangeError that names the argument and what was expected;
// never a crash, never a NaN.
import { describe, expect, it } from 'vitest';

import { writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import {
  attention, attentionBackward, createTrainer, gatherSequence, initLlama, launch, llamaPresets, ops, parseLlamaConfig, ringAttention,
  ropeParameters, shardSequence, Tensor, tensor, zeros,
} from '../dist/index.js';
import { native } from '../dist/native.js';

const t = (shape: number[], dtype: 'float32' | 'bfloat16' | 'float16' = 'float32') =>
  tensor(new Float32Array(shape.reduce((a, b) => a * b, 1)), shape, { dtype });

describe('attention refuses bad input', () => {
  const q = t([2, 8, 4, 16]), kv = t([2, 8, 2, 16]);

  const cases: [string, () => unknown, ErrorConstructor, RegExp][] = [
    ['non-tensor q', () => attention({} as any, kv, kv), TypeError, /^q: expected a Tensor, got Object/],
    ['missing v', () => (attention as any)(q, kv), TypeError, /^v: expected a Tensor, got nothing/],
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
    ['missing lse', () => (attentionBackward as any)(q, q, kv, kv, out), TypeError, /^lse: expected a Tensor, got nothing/],
  ];
  for (const [name, call, Kind, message] of cases)
    it(name, () => {
      expect(call).toThrow(Kind);
      expect(call).toThrow(message);
    });
});

describe('what would crash native code or come back as NaN is refused', () => {
  const z = (n: number) => zeros([n]);
  const cases: [string, () => unknown, ErrorConstructor, RegExp][] = [
    // Sizes past 2^53 elements wrapped or saturated into a tiny buffer, then a memset or gemm ran past it.
    ['a shape past 2^63', () => zeros([2 ** 63]), RangeError, /^shape\[0\]: expected a non-negative integer, got number/],
    ['a shape of more than 2^53 elements', () => zeros([2 ** 32, 2 ** 32]), RangeError, /^shape: \[4294967296, 4294967296\] holds more than 2\^53 elements$/],
    ['a hole in a shape', () => tensor(new Float32Array(1), [, 1] as number[]), RangeError, /^shape\[0\]: expected a non-negative integer, got nothing$/],
    // instanceof trusts the prototype: a Uint8Array dressed as a Float32Array was read 4x past its end.
    ['a Uint8Array with the prototype of a Float32Array', () => tensor(Object.setPrototypeOf(new Uint8Array(16), Float32Array.prototype), [16]), TypeError, /^data: expected a Float32Array/],
    // Finite doubles that are Infinity or 0 as the float32 the native code takes.
    ['a scale past float32', () => attention(t([1, 4, 2, 8]), t([1, 4, 2, 8]), t([1, 4, 2, 8]), { scale: 1e39 }), RangeError, /^opts\.scale: expected a finite number > 0 as a float32, got 1e\+39$/],
    ['an eps that is 0 as a float32', () => ops.adamw(z(4), z(4), z(4), z(4), { step: 1, lr: 0.1, eps: 1e-50 }), RangeError, /^opts\.eps: expected a finite number > 0 as a float32/],
    ['a beta that is 1 as a float32', () => ops.adamw(z(4), z(4), z(4), z(4), { step: 1, lr: 0.1, beta2: 1 - 1e-10 }), RangeError, /^opts\.beta2: expected a number in \[0, 1\) as a float32/],
    ['an rmsNorm eps of 0', () => ops.rmsNorm(zeros([2, 4]), z(4), 0), RangeError, /^eps: expected a finite number > 0, got 0$/],
    ['rms_norm_eps that is 0 as a float32', () => parseLlamaConfig({ ...llamaPresets.tiny, rms_norm_eps: 1e-50 }), RangeError, /^rms_norm_eps: expected a finite number > 0/],
    ['a trainer lr past float32', () => createTrainer(initLlama(llamaPresets.tiny, { seed: 1 }), { lr: 1e39 }), RangeError, /^opts\.lr: expected a finite number >= 0 as a float32/],
    // Outputs that share memory with an input gave wrong results silently.
    ['linearBackward dx as x', () => { const x = zeros([2, 3]); ops.linearBackward(zeros([2, 4]), x, zeros([4, 3]), x, zeros([4, 3])); }, RangeError, /^dx: must not be the same memory as x$/],
    ['adamw grad as param', () => { const p = z(4); ops.adamw(p, p, z(4), z(4), { step: 1, lr: 0.1 }); }, RangeError, /^param: must not be the same memory as grad$/],
    ['adamw v as m', () => { const m = z(4); ops.adamw(z(4), z(4), m, m, { step: 1, lr: 0.1 }); }, RangeError, /^v: must not be the same memory as m$/],
  ];
  for (const [name, call, Kind, message] of cases)
    it(name, () => {
      expect(call).toThrow(Kind);
      expect(call).toThrow(message);
    });
});

describe('arguments other functions took unchecked', () => {
  const cases: [string, () => unknown, ErrorConstructor, RegExp][] = [
    ['ropeParameters(null)', () => ropeParameters(null as never), TypeError, /^config: expected \{ head_dim, rope_theta, rope_scaling\? \}, got null$/],
    ['an odd head_dim', () => ropeParameters({ head_dim: 3, rope_theta: 1e4 }), RangeError, /^head_dim: expected an even integer >= 2, got number 3$/],
    ['a negative rope_theta', () => ropeParameters({ head_dim: 4, rope_theta: -1 }), RangeError, /^rope_theta: expected a finite number > 0, got number -1$/],
    ['rope_scaling as a string', () => ropeParameters({ head_dim: 4, rope_theta: 1e4, rope_scaling: 'linear' as never }), TypeError, /^rope_scaling: expected an object or null, got 'linear'$/],
    ['a head_dim past the kernels\' maximum', () => parseLlamaConfig({ ...llamaPresets.tiny, head_dim: 512 }), RangeError, /^head_dim: 512 exceeds the attention kernels' maximum of 256$/],
    ['a hole in betas', () => createTrainer(initLlama(llamaPresets.tiny, { seed: 1 }), { lr: 1, betas: [, 0.9] as never }), TypeError, /^opts\.betas\[0\]: expected a number, got nothing$/],
    ['a NaN seqLen', () => ropeParameters({ head_dim: 4, rope_theta: 1e4 }, NaN), RangeError, /^seqLen: expected an integer/],
    ['yarn with rope_theta 1', () => ropeParameters({ head_dim: 4, rope_theta: 1, rope_scaling: { rope_type: 'yarn', factor: 2 } }), RangeError, /^rope_theta: yarn .* expected a number > 1, got 1$/],
    // forEach and map skip holes: these reached native code or a property read unchecked.
    ['a hole in gatherSequence\'s shards', () => gatherSequence([, zeros([1, 2])] as never), TypeError, /^shards\[0\]: expected a Tensor, got nothing$/],
    ['a hole in sumOfSquares\'s list', () => ops.sumOfSquares([zeros([2]), , zeros([2])] as never), TypeError, /^t\[1\]: expected a Tensor, got nothing$/],
    ['a 1-D tensor sharded along the default dim 1', () => shardSequence(zeros([4]), { rank: 0, worldSize: 2 }), RangeError, /^x: the sequence is dim 1 unless opts\.dim says otherwise .* this tensor has 1 dim$/],
  ];
  for (const [name, call, Kind, message] of cases)
    it(name, () => {
      expect(call).toThrow(Kind);
      expect(call).toThrow(message);
    });

  it("logits past one Float32Array's 2^32 values are refused before the step runs", () => {
    const config = { ...llamaPresets.tiny, hidden_size: 8, intermediate_size: 16, num_hidden_layers: 1, num_attention_heads: 2,
      num_key_value_heads: 1, head_dim: 4, vocab_size: 2 ** 20, tie_word_embeddings: true, max_position_embeddings: 8192 };
    using model = initLlama(config, { seed: 1 });
    using tr = createTrainer(model, { lr: 1e-3 });
    const n = 2 ** 12 + 1; // x 2^20 > 2^32
    expect(() => tr.forward(new Int32Array(n), new Int32Array(n), { logits: true })).toThrow(
      /^opts\.logits: 4097 tokens x 1048576 vocabulary entries is past the 2\^32 values one Float32Array holds; ask for the logits of at most 4096 tokens per rank at a time$/);
  });

  it('a disposed trainer says so; a trainer.json of null is refused naming the file', async () => {
    const model = initLlama(llamaPresets.tiny, { seed: 1 });
    const tr = createTrainer(model, { lr: 1e-3 });
    const dir = join(tmpdir(), `ra-errors-${process.pid}`);
    await tr.saveCheckpoint(dir);
    writeFileSync(join(dir, 'trainer.json'), 'null');
    await expect(tr.restoreCheckpoint(dir)).rejects.toThrow(/trainer\.json: not a trainer checkpoint \(format nothing\)$/);
    writeFileSync(join(dir, 'trainer.json'), '{"format":');
    await expect(tr.restoreCheckpoint(dir)).rejects.toThrow(/trainer\.json: not valid JSON: /);
    tr.dispose();
    expect(() => tr.step(new Int32Array(4), new Int32Array(4))).toThrow(/^trainer: has been disposed$/);
    expect(() => tr.gradNorm()).toThrow(/^trainer: has been disposed$/);
    model.dispose();
  });

  it('a rank that throws a non-Error value, or returns a Tensor, is told so', async () => {
    const file = join(tmpdir(), `ra-non-error-${process.pid}.mjs`);
    writeFileSync(file, "export default ({ rank }) => { if (rank === 1) throw { code: 7, why: 'custom' }; };\n");
    await expect(launch({ worldSize: 2 }, file)).rejects.toThrow("rank 1 threw a non-Error value: { code: 7, why: 'custom' }");
    // thrown from a callback, outside the rank's function: this crashed the launching thread
    writeFileSync(file, "export default async ({ rank, group }) => { if (rank === 1) { setTimeout(() => { throw null; }, 10); await new Promise(() => {}); } group.barrier(); };\n");
    await expect(launch({ worldSize: 2 }, file)).rejects.toThrow(/^rank 1 threw a non-Error value: null$/);
    // A Tensor would arrive as its shape alone, without its data.
    writeFileSync(file, "import { zeros } from " + JSON.stringify(new URL('../dist/index.js', import.meta.url).href) + ";\nexport default () => ({ out: [zeros([2])] });\n");
    await expect(launch({ worldSize: 1 }, file)).rejects.toThrow(/^rank 0 returned a Tensor, whose native memory cannot travel between threads; return its data/);
    // deep inside objects, or in a Map (a cycle does not loop)
    writeFileSync(file, "import { zeros } from " + JSON.stringify(new URL('../dist/index.js', import.meta.url).href) +
      ";\nexport default () => { const c = { a: { b: { c: { d: { e: [new Map([['t', zeros([2])]])] } } } } }; c.self = c; return c; };\n");
    await expect(launch({ worldSize: 1 }, file)).rejects.toThrow(/^rank 0 returned a Tensor/);
    writeFileSync(file, 'export default () => ({ data: new Float32Array(3).fill(2) });\n'); // what to return instead
    expect(await launch({ worldSize: 1 }, file)).toEqual([{ data: new Float32Array(3).fill(2) }]);
  });
});

describe('misspelt options, rewritten fields and forged tensors (a review, 2026-12-05)', () => {
  const q = t([2, 8, 4, 16]), kv = t([2, 8, 2, 16]);

  // Each of these ran before, without the option: non-causal attention, a contiguous ring on
  // zigzag shards, AdamW's default decay, a float32 tensor.
  const cases: [string, () => unknown, RegExp][] = [
    ['attention', () => attention(q, kv, kv, { casual: true } as never), /^opts\.casual: not an option here; expected causal, scale, deterministic, documentIds$/],
    ['ringAttention', () => ringAttention(q, kv, kv, { Layout: 'zigzag' } as never), /^opts\.Layout: not an option here; expected causal, scale, deterministic, documentIds, group, layout$/],  // not the benchmarks' own keys
    ['ops.adamw', () => ops.adamw(zeros([4]), zeros([4]), zeros([4]), zeros([4]), { step: 1, lr: 1, weight_decay: 0 } as never), /^opts\.weight_decay: not an option here; expected step, lr, beta1, beta2, eps, weightDecay$/],
    ['tensor', () => tensor(new Float32Array(6), [6], { dtyp: 'bfloat16' } as never), /^opts\.dtyp: not an option here; expected dtype, device$/],
    ['an adamwMulti entry', () => ops.adamwMulti([{ param: zeros([4]), grad: zeros([4]), m: zeros([4]), v: zeros([4]), weightdecay: 0 } as never], { step: 1, lr: 1 }),
      /^entries\[0\]\.weightdecay: not an option here; expected param, grad, m, v, weightDecay, copy$/],
    ['createTrainer', () => createTrainer(initLlama(llamaPresets.tiny, { seed: 1 }), { lr: 1, weight_decay: 0.1 } as never), /^opts\.weight_decay: not an option here/],
    ['a key of 10,000 characters', () => attention(q, kv, kv, { ['x'.repeat(1e4)]: 1 } as never), /^opts\.x{40}\.\.\.: not an option here/],
  ];
  for (const [name, call, message] of cases)
    it(`an unknown option key is refused: ${name}`, () => {
      expect(call).toThrow(TypeError);
      expect(call).toThrow(message);
    });

  it('a long string in a message is cut to 100 characters, with its length', () => {
    expect(() => attention(q, kv, kv, { causal: 'x'.repeat(1e6) as never })).toThrow(/^opts\.causal: expected a boolean, got 'x{100}\.\.\.' \(1000000 characters\)$/);
  });

  it('an unknown key that holds undefined is let through (spreads leave such keys)', () => {
    expect(attention(q, kv, kv, { casual: undefined } as never).out.shape).toEqual([2, 8, 4, 16]);
  });

  it("a tensor's shape, dtype and device cannot be rewritten", () => {
    const v = t([1]);
    expect(Object.isFrozen(v)).toBe(true);
    expect(() => { (v as { shape: number[] }).shape = [2, 8, 2, 16]; }).toThrow(TypeError);
    expect(() => { (v as { dtype: string }).dtype = 'bfloat16'; }).toThrow(TypeError);
    expect(v.shape).toEqual([1]);
  });

  it('an object that only has the Tensor prototype is not taken for one', () => {
    expect(() => attention(Object.create(Tensor.prototype), kv, kv)).toThrow(/^q: expected a Tensor, got an object with Tensor's prototype, not made by tensor\(\) or zeros\(\)$/);
  });

  // The native layer checks the operands itself: it reads the handles' shapes, not the JS
  // fields the TypeScript checks read.
  it('native attention refuses a v, dout, out or lse its kernels would read past', () => {
    const small = t([1]);
    expect(() => native.attentionForward(q.handle('q'), kv.handle('k'), small.handle('v'), false, 0.25)).toThrow(
      /^attention: v is \[1\] float32 on cpu, expected \[2, 8, 2, 16\] float32 on cpu$/);
    const { out, lse } = attention(q, kv, kv);
    const h = [q, q, kv, kv, out, lse].map((x) => x.handle('x'));
    for (const [i, name, expected] of [[0, 'dout', '[2, 8, 4, 16] float32'], [4, 'out', '[2, 8, 4, 16] float32'], [5, 'lse', '[2, 4, 8] float32']] as const) {
      const args = [...h];
      args[i] = small.handle('x');
      expect(() => (native.attentionBackward as (...a: unknown[]) => unknown)(...args, false, 0.25, false)).toThrow(
        `attentionBackward: ${name} is [1] float32 on cpu, expected ${expected} on cpu`);
    }
  });

  it('native attention refuses a size near 2^31 (the kernels round lengths up to whole tiles in ints)', () => {
    // No elements, so no memory, but these sizes. Within 64 of 2^31 the CPU kernels' tile
    // counts went negative and they returned at once, with nothing written (an audit's probe).
    using big = zeros([0, 2 ** 31 - 1023, 1, 1]);
    expect(() => native.attentionForward(big.handle('q'), big.handle('k'), big.handle('v'), false, 1)).toThrow(
      /^attention: q has a size of 2147482625; each size must be at most 2\^31 - 1024$/);
    using most = zeros([0, 2 ** 31 - 1024, 1, 1]);
    for (const h of native.attentionForward(most.handle('q'), most.handle('k'), most.handle('v'), false, 1)) h.dispose();
  });

  it('native ring attention refuses them too', async () => {
    const file = join(tmpdir(), `ra-ring-operands-${process.pid}.mjs`);
    const dist = (f: string) => JSON.stringify(new URL(`../dist/${f}`, import.meta.url).href);
    writeFileSync(file, `import { zeros } from ${dist('index.js')};
import { ProcessGroup } from ${dist('group.js')};
import { native } from ${dist('native.js')};
export default ({ group }) => {
  const q = zeros([1, 4, 2, 8]), k = zeros([1, 4, 1, 8]), id = ProcessGroup.idOf(group, 'group');
  try { native.ringForward(id, group.rank, q.handle('q'), k.handle('k'), zeros([3]).handle('v'), false, 0.25, false); }
  catch (e) { return e.message; }
  return 'not refused';
};
`);
    expect(await launch({ worldSize: 1 }, file)).toEqual(['ringAttention: v is [3] float32 on cpu, expected [1, 4, 1, 8] float32 on cpu']);
  });
});
