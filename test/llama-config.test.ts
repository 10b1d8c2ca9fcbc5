// LlamaConfig: HF's defaults, every bad key named, presets with their published parameter
// counts, and LlamaForCausalLM's tensor names and shapes.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';

import { llamaPresets, llamaTensorNames, loadLlamaConfig, parameterCount, parseLlamaConfig, ropeParameters } from '../dist/index.js';

const minimal = { hidden_size: 64, intermediate_size: 176, num_hidden_layers: 2, num_attention_heads: 4, vocab_size: 256 };

describe('parseLlamaConfig', () => {
  it("fills Hugging Face's defaults and derives head_dim", () => {
    expect(parseLlamaConfig(minimal)).toEqual({
      ...minimal, num_key_value_heads: 4, rms_norm_eps: 1e-6, rope_theta: 10000, tie_word_embeddings: false, head_dim: 16,
    });
    // null means "default" for these two, as in transformers
    expect(parseLlamaConfig({ ...minimal, num_key_value_heads: null, head_dim: null }).head_dim).toBe(16);
  });

  it('keeps given values, ignores unknown keys, passes rope_scaling through', () => {
    const rope_scaling = { rope_type: 'llama3', factor: 8 };
    const c = parseLlamaConfig({
      ...minimal, num_key_value_heads: 2, rms_norm_eps: 1e-5, rope_theta: 500000, tie_word_embeddings: true,
      max_position_embeddings: 4096, rope_scaling, model_type: 'llama', architectures: ['LlamaForCausalLM'], hidden_act: 'silu',
    });
    expect(c).toEqual({
      ...minimal, num_key_value_heads: 2, rms_norm_eps: 1e-5, rope_theta: 500000, tie_word_embeddings: true,
      head_dim: 16, max_position_embeddings: 4096, rope_scaling,
    });
    expect(c).not.toHaveProperty('model_type');
  });

  it('an explicit head_dim need not divide hidden_size (Mistral-Nemo style)', () => {
    expect(parseLlamaConfig({ ...minimal, hidden_size: 80, head_dim: 16 }).head_dim).toBe(16);
  });

  it('refuses each bad key, naming it', () => {
    const bad = (patch: Record<string, unknown>) => () => parseLlamaConfig({ ...minimal, ...patch });
    for (const key of ['hidden_size', 'intermediate_size', 'num_hidden_layers', 'num_attention_heads', 'vocab_size']) {
      expect(bad({ [key]: 0 })).toThrow(new RangeError(`${key}: expected an integer in [1, 2147483647], got 0`));
      expect(bad({ [key]: 2.5 })).toThrow(RangeError);
      expect(bad({ [key]: 2 ** 31 })).toThrow(new RangeError(`${key}: expected an integer in [1, 2147483647], got 2147483648`));
      expect(bad({ [key]: '64' })).toThrow(new TypeError(`${key}: expected an integer, got '64'`));
      expect(bad({ [key]: undefined })).toThrow(new TypeError(`${key}: missing; expected a positive integer`));
    }
    expect(bad({ num_key_value_heads: 3 })).toThrow(new RangeError('num_key_value_heads: 3 does not divide num_attention_heads 4'));
    expect(bad({ num_key_value_heads: -1 })).toThrow(/^num_key_value_heads: expected an integer in \[1/);
    expect(bad({ hidden_size: 66 })).toThrow(new RangeError('num_attention_heads: 4 does not divide hidden_size 66 (give head_dim to decouple them)'));
    expect(bad({ hidden_size: 12, num_attention_heads: 4 })).toThrow(new RangeError('head_dim: expected an even number (RoPE rotates pairs), got 3'));
    expect(bad({ head_dim: 0 })).toThrow(/^head_dim: expected an integer in \[1/);
    expect(bad({ head_dim: 258 })).toThrow(new RangeError("head_dim: 258 exceeds the attention kernels' maximum of 256"));
    expect(parseLlamaConfig({ ...minimal, hidden_size: 512, num_attention_heads: 2 }).head_dim).toBe(256); // the maximum itself
    for (const key of ['rms_norm_eps', 'rope_theta']) {
      expect(bad({ [key]: 0 })).toThrow(new RangeError(`${key}: expected a finite number > 0, got 0`));
      expect(bad({ [key]: -1e-5 })).toThrow(RangeError);
      expect(bad({ [key]: Infinity })).toThrow(RangeError);
      expect(bad({ [key]: '1e-5' })).toThrow(new TypeError(`${key}: expected a number, got '1e-5'`));
    }
    expect(bad({ tie_word_embeddings: 'true' })).toThrow(new TypeError("tie_word_embeddings: expected a boolean, got 'true'"));
    expect(bad({ max_position_embeddings: 0 })).toThrow(/^max_position_embeddings: expected an integer/);
    expect(bad({ rope_scaling: 'llama3' })).toThrow(new TypeError("rope_scaling: expected an object or null, got 'llama3'"));
    expect(bad({ hidden_act: 'gelu' })).toThrow(/^hidden_act: expected one of 'silu', got 'gelu'/);
    expect(bad({ attention_bias: true })).toThrow(new RangeError('attention_bias: true is not supported (no bias tensors)'));
    expect(bad({ mlp_bias: true })).toThrow(/^mlp_bias: true is not supported/);
    expect(parseLlamaConfig({ ...minimal, attention_bias: false, mlp_bias: false }).hidden_size).toBe(64);
    // architectures with LLaMA's tensor names but other arithmetic
    expect(parseLlamaConfig({ ...minimal, model_type: 'llama', sliding_window: 4096 }).hidden_size).toBe(64); // transformers' Llama ignores it
    expect(parseLlamaConfig({ ...minimal, model_type: 'mistral', sliding_window: null }).hidden_size).toBe(64);
    expect(bad({ model_type: 'granite' })).toThrow(new RangeError("model_type: 'granite' is not computed here (expected 'llama', or 'mistral' without a sliding window); a model of LLaMA's exact architecture under another name loads with model_type 'llama'"));
    expect(bad({ model_type: 'gemma', hidden_act: 'gelu' })).toThrow(/^model_type: 'gemma' is not computed here/); // named first
    expect(bad({ model_type: 'mistral', sliding_window: 4096 })).toThrow(/^sliding_window: 4096: Mistral's sliding-window attention is not computed here; null attends over the whole sequence/);
    expect(bad({ model_type: 'mistral' })).toThrow(/^sliding_window: absent, so transformers' default of 4096: Mistral's/);
    expect(() => parseLlamaConfig(null)).toThrow(new TypeError('config: expected a config object, got null'));
    expect(() => parseLlamaConfig([minimal])).toThrow(/^config: expected a config object, got an array/);
  });
});

describe("transformers 5's rope_parameters", () => {
  const llama3 = { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 };

  it('gives the base and the scaling as rope_theta and rope_scaling', () => {
    const c = parseLlamaConfig({ ...minimal, rope_parameters: { ...llama3, rope_theta: 500000 } });
    expect(c.rope_theta).toBe(500000);
    expect(c.rope_scaling).toEqual(llama3);
    expect(c).not.toHaveProperty('rope_parameters');
    // plain RoPE: no scaling; a null rope_theta beside it (as some writers leave it) is absent
    const plainRope = parseLlamaConfig({ ...minimal, rope_theta: null, rope_parameters: { rope_type: 'default', rope_theta: 1e6 } });
    expect(plainRope).toMatchObject({ rope_theta: 1e6, rope_scaling: null });
    expect(parseLlamaConfig({ ...minimal, rope_parameters: { rope_theta: 1e6 } })).toMatchObject({ rope_theta: 1e6, rope_scaling: null });
    expect(parseLlamaConfig({ ...minimal, rope_parameters: { rope_type: 'linear', factor: 2 } })).toMatchObject({ rope_theta: 10000, rope_scaling: { rope_type: 'linear', factor: 2 } });
    // 'type', the older key, names the type there too
    expect(parseLlamaConfig({ ...minimal, rope_parameters: { type: 'linear', factor: 2 } }).rope_scaling).toEqual({ type: 'linear', factor: 2 });
    expect(parseLlamaConfig({ ...minimal, rope_parameters: { type: 'default', rope_theta: 1e6 } }).rope_scaling).toBeNull();
    // a null rope_scaling beside it is absent; a null rope_parameters beside rope_scaling too
    expect(parseLlamaConfig({ ...minimal, rope_scaling: null, rope_parameters: { ...llama3, rope_theta: 5e5 } })).toMatchObject({ rope_theta: 5e5, rope_scaling: llama3 });
    expect(parseLlamaConfig({ ...minimal, rope_theta: 5e5, rope_scaling: llama3, rope_parameters: null })).toMatchObject({ rope_theta: 5e5, rope_scaling: llama3 });
    // both forms, agreeing: as either alone
    expect(parseLlamaConfig({ ...minimal, rope_theta: 500000, rope_scaling: llama3, rope_parameters: { ...llama3, rope_theta: 500000 } }))
      .toEqual(parseLlamaConfig({ ...minimal, rope_theta: 500000, rope_scaling: llama3 }));
  });

  it('a non-empty rope_scaling wins, as in transformers 5; an empty one does not', () => {
    const c = parseLlamaConfig({ ...minimal, rope_scaling: { rope_type: 'linear', factor: 4 }, rope_parameters: { ...llama3, rope_theta: 5e5 } });
    expect(c.rope_scaling).toEqual({ rope_type: 'linear', factor: 4 });
    expect(c.rope_theta).toBe(10000); // rope_parameters is not read at all, its base neither
    expect(parseLlamaConfig({ ...minimal, rope_scaling: {}, rope_parameters: { ...llama3 } }).rope_scaling).toEqual(llama3);
  });

  it('refuses what transformers 4 and 5 would read differently, or a LLaMA model cannot compute, naming the key', () => {
    const bad = (patch: Record<string, unknown>) => () => parseLlamaConfig({ ...minimal, ...patch });
    expect(bad({ rope_theta: 10000, rope_parameters: { rope_theta: 500000 } })).toThrow(new RangeError(
      'rope_theta: 10000 differs from rope_parameters.rope_theta 500000 (transformers 4 reads the first, 5 the second); give one'));
    expect(bad({ rope_parameters: { rope_theta: 0 } })).toThrow(new RangeError('rope_parameters.rope_theta: expected a finite number > 0, got 0'));
    expect(bad({ rope_parameters: 'llama3' })).toThrow(new TypeError("rope_parameters: expected an object or null, got 'llama3'"));
    expect(bad({ rope_parameters: [llama3] })).toThrow(/^rope_parameters: expected an object or null, got an array/);
    expect(bad({ rope_parameters: { rope_theta: 1e6, partial_rotary_factor: 0.5 } })).toThrow(new RangeError(
      'rope_parameters.partial_rotary_factor: a LLaMA model rotates whole heads; expected 1, got 0.5'));
    expect(bad({ partial_rotary_factor: 0.25 })).toThrow(/^partial_rotary_factor: a LLaMA model rotates whole heads; expected 1, got 0.25$/);
    expect(parseLlamaConfig({ ...minimal, partial_rotary_factor: 1, rope_parameters: { rope_theta: 1e6, partial_rotary_factor: 1 } }))
      .toMatchObject({ rope_theta: 1e6, rope_scaling: null });
    expect(bad({ rope_parameters: { full_attention: { rope_theta: 1e6 }, sliding_attention: { rope_theta: 1e4 } } })).toThrow(new RangeError(
      "rope_parameters.full_attention: per-layer-type RoPE parameters are not supported (a LLaMA model's layers are all alike)"));
    expect(bad({ attention_dropout: 0.1 })).toThrow(new RangeError(
      "attention_dropout: 0.1: dropout is not computed here, so training would differ from transformers'; expected 0"));
    expect(bad({ attention_dropout: '0' })).toThrow(new TypeError("attention_dropout: expected a number, got '0'"));
    expect(parseLlamaConfig({ ...minimal, attention_dropout: 0.0 })).toEqual(parseLlamaConfig({ ...minimal, attention_dropout: null }));
  });

  it('bos_token_id and eos_token_id (one id or a list, as Llama 3.1 writes it, or null) are kept; anything else is dropped, unused here', () => {
    const c = parseLlamaConfig({ ...minimal, bos_token_id: 128000, eos_token_id: [128001, 128008, 128009] });
    expect([c.bos_token_id, c.eos_token_id]).toEqual([128000, [128001, 128008, 128009]]);
    expect(parseLlamaConfig({ ...minimal, eos_token_id: 2 }).eos_token_id).toBe(2);
    const nulls = parseLlamaConfig({ ...minimal, bos_token_id: null, eos_token_id: null }); // None in the source: None when saved
    expect([nulls.bos_token_id, nulls.eos_token_id]).toEqual([null, null]);
    expect(parseLlamaConfig(minimal)).not.toHaveProperty('eos_token_id');
    const odd = parseLlamaConfig({ ...minimal, bos_token_id: '1', eos_token_id: [1, 2.5] });
    expect(odd).not.toHaveProperty('bos_token_id');
    expect(odd).not.toHaveProperty('eos_token_id');
    expect(parseLlamaConfig({ ...minimal, eos_token_id: [] })).not.toHaveProperty('eos_token_id');
  });

  it("pad_token_id as torch's padding_idx reads it: a row of the table, negatives from the end; null or absent: none", () => {
    expect(parseLlamaConfig({ ...minimal, pad_token_id: 0 }).pad_token_id).toBe(0);
    expect(parseLlamaConfig({ ...minimal, pad_token_id: 255 }).pad_token_id).toBe(255);
    expect(parseLlamaConfig({ ...minimal, pad_token_id: -1 }).pad_token_id).toBe(255); // as old LLaMA configs on the Hub write it
    expect(parseLlamaConfig({ ...minimal, pad_token_id: -256 }).pad_token_id).toBe(0);
    expect(parseLlamaConfig({ ...minimal, pad_token_id: null })).not.toHaveProperty('pad_token_id');
    expect(parseLlamaConfig(minimal)).not.toHaveProperty('pad_token_id');
    const bad = (pad: unknown) => () => parseLlamaConfig({ ...minimal, pad_token_id: pad });
    expect(bad(256)).toThrow(new RangeError(
      "pad_token_id: 256 is outside the 256 embedding rows (torch's padding_idx takes [-256, 256), negatives from the end); use null for no padding token"));
    expect(bad(-257)).toThrow(/^pad_token_id: -257 is outside the 256 embedding rows/);
    expect(bad(1.5)).toThrow(new RangeError('pad_token_id: expected an integer in [-256, 255], got 1.5'));
    expect(bad('0')).toThrow(new TypeError("pad_token_id: expected an integer, got '0'"));
  });
});

describe('loadLlamaConfig', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'llama-config-test-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('reads config.json from a directory or a file path, and names the file in errors', async () => {
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...minimal, num_key_value_heads: 2 }));
    expect((await loadLlamaConfig(dir)).num_key_value_heads).toBe(2);
    expect((await loadLlamaConfig(join(dir, 'config.json'))).head_dim).toBe(16);
    const file = join(dir, 'bad.json');
    writeFileSync(file, JSON.stringify({ ...minimal, vocab_size: -1 }));
    await expect(loadLlamaConfig(file)).rejects.toThrow(`${file}: vocab_size: expected an integer in [1, 2147483647], got -1`);
    writeFileSync(file, '{"hidden_size": ');
    await expect(loadLlamaConfig(file)).rejects.toThrow(`${file}: not valid JSON`);
    await expect(loadLlamaConfig(join(dir, 'missing'))).rejects.toThrow(`${join(dir, 'missing')}: no such directory or file`);
    const original = join(dir, 'original'); // Meta's own layout: params.json and consolidated.00.pth
    mkdirSync(original);
    writeFileSync(join(original, 'params.json'), '{}');
    await expect(loadLlamaConfig(original)).rejects.toThrow(
      `${original}: no config.json there; expected a Hugging Face model directory (config.json and model.safetensors, or its shards)`);
  });
});

describe('presets, parameter counts and tensor names', () => {
  it('presets are valid configs and frozen', () => {
    for (const [name, c] of Object.entries(llamaPresets)) {
      expect(parseLlamaConfig(c), name).toEqual(c);
      expect(Object.isFrozen(c)).toBe(true);
    }
    expect(llamaPresets['1B'].rope_scaling).toMatchObject({ rope_type: 'llama3', factor: 32 });
  });

  it('counts parameters as published: Llama-3.2-1B (tied) and Llama-2-7B', () => {
    expect(parameterCount(llamaPresets['1B'])).toBe(1_235_814_400);
    expect(parameterCount(llamaPresets['7B'])).toBe(6_738_415_616);
    // By hand: embed + 12 * (4 * 768^2 attention + 3 * 768 * 2048 mlp + 2 * 768 norms) + norm + lm_head
    expect(parameterCount(llamaPresets['125M'])).toBe(32000 * 768 + 12 * (4 * 768 ** 2 + 3 * 768 * 2048 + 2 * 768) + 768 + 32000 * 768);
    // tiny: kv projections are half width (2 of 4 heads)
    expect(parameterCount(llamaPresets.tiny)).toBe(256 * 64 * 2 + 2 * (64 * 64 * 2 + 32 * 64 * 2 + 3 * 64 * 176 + 2 * 64) + 64);
  });

  it("names LlamaForCausalLM's tensors with their shapes", () => {
    const names = llamaTensorNames(llamaPresets.tiny);
    expect(names.size).toBe(1 + 2 * 9 + 2);
    expect([...names].slice(0, 10)).toEqual([
      ['model.embed_tokens.weight', [256, 64]],
      ['model.layers.0.self_attn.q_proj.weight', [64, 64]],
      ['model.layers.0.self_attn.k_proj.weight', [32, 64]],
      ['model.layers.0.self_attn.v_proj.weight', [32, 64]],
      ['model.layers.0.self_attn.o_proj.weight', [64, 64]],
      ['model.layers.0.mlp.gate_proj.weight', [176, 64]],
      ['model.layers.0.mlp.up_proj.weight', [176, 64]],
      ['model.layers.0.mlp.down_proj.weight', [64, 176]],
      ['model.layers.0.input_layernorm.weight', [64]],
      ['model.layers.0.post_attention_layernorm.weight', [64]],
    ]);
    expect(names.get('model.layers.1.mlp.down_proj.weight')).toEqual([64, 176]);
    expect([...names.keys()].slice(-2)).toEqual(['model.norm.weight', 'lm_head.weight']);
    expect(names.get('lm_head.weight')).toEqual([256, 64]);

    const tied = llamaTensorNames(llamaPresets['1B']);
    expect(tied.has('lm_head.weight')).toBe(false);
    expect(tied.get('model.layers.15.self_attn.k_proj.weight')).toEqual([512, 2048]);
    // An explicit head_dim sets the projection widths, not hidden_size / heads.
    const wide = llamaTensorNames({ ...llamaPresets.tiny, head_dim: 32 });
    expect(wide.get('model.layers.0.self_attn.q_proj.weight')).toEqual([128, 64]);
    expect(wide.get('model.layers.0.self_attn.o_proj.weight')).toEqual([64, 128]);
    expect(() => llamaTensorNames({ ...llamaPresets.tiny, num_key_value_heads: 3 })).toThrow(/^config\.num_key_value_heads: 3 does not divide/);
  });
});

describe('ropeParameters', () => {
  const inv = (D: number, theta: number, rope_scaling?: Record<string, unknown> | null, max_position_embeddings?: number, seqLen?: number) =>
    ropeParameters({ head_dim: D, rope_theta: theta, rope_scaling, max_position_embeddings }, seqLen).invFreq;
  const plain = (D: number, theta: number) => Array.from({ length: D / 2 }, (_, i) => theta ** (-(2 * i) / D));

  it('plain RoPE: theta^(-2i/D); null, absent and rope_type default mean the same', () => {
    const want = plain(64, 500000);
    for (const s of [undefined, null, { rope_type: 'default' }]) {
      const got = inv(64, 500000, s);
      want.forEach((w, i) => expect(Math.abs(got[i]! - w) / w).toBeLessThan(1e-15));
    }
  });

  it("Llama-3.2-1B's llama3 scaling: short wavelengths kept, long ones / factor, a blend between", () => {
    // D 64, theta 500000, original context 8192: wavelength 2π·500000^(i/32) is below 8192/4
    // for i <= 14 and above 8192/1 for i >= 18 (worked out by hand).
    const c = llamaPresets['1B'];
    const got = ropeParameters(c).invFreq, base = plain(64, 500000);
    expect(ropeParameters(c).attentionFactor).toBe(1);
    for (let i = 0; i < 32; ++i) {
      const rel = got[i]! / base[i]!;
      if (i <= 14) expect(rel, `i ${i}`).toBeCloseTo(1, 12);
      else if (i >= 18) expect(rel, `i ${i}`).toBeCloseTo(1 / 32, 12);
      else expect(rel > 1 / 32 && rel < 1, `i ${i} blended: ${rel}`).toBe(true);
    }
    // the blend falls with the wavelength: (1 - s)/32 + s with s = (8192/wavelength - 1) / 3
    const s15 = (8192 / ((2 * Math.PI) / base[15]!) - 1) / 3;
    expect(got[15]! / base[15]!).toBeCloseTo((1 - s15) / 32 + s15, 12);
  });

  it('linear scaling divides every frequency; unsupported types and bad fields are named', () => {
    const got = inv(16, 10000, { type: 'linear', factor: 4 }); // 'type': the older key
    plain(16, 10000).forEach((w, i) => expect(got[i]! * 4 / w).toBeCloseTo(1, 14));
    expect(() => inv(16, 10000, { rope_type: 'longrope', factor: 4 })).toThrow(/^rope_scaling: rope_type 'longrope' is not supported \(supported: default, linear, llama3, yarn, dynamic/);
    expect(() => inv(16, 10000, { rope_type: 'linear', factor: -1 })).toThrow(/^rope_scaling.factor: expected a number > 0, got number -1/);
    expect(() => inv(16, 10000, { rope_type: 'llama3', factor: 8, low_freq_factor: 4, high_freq_factor: 1,
      original_max_position_embeddings: 64 })).toThrow(/^rope_scaling.high_freq_factor: expected more than low_freq_factor 4/);
    // Without max_position_embeddings, transformers' default 2048 (here: dynamic's threshold).
    expect(Array.from(inv(16, 10000, { rope_type: 'dynamic', factor: 2 }, undefined, 2048))).toEqual(Array.from(inv(16, 10000, null)));
    expect(inv(16, 10000, { rope_type: 'dynamic', factor: 2 }, undefined, 2049)[1]).toBeLessThan(inv(16, 10000, null)[1]!);
    expect(() => inv(16, 10000, { rope_type: 'yarn', factor: 4, beta_fast: 'x' }, 256)).toThrow(/^rope_scaling.beta_fast: expected a number > 0, got 'x'/);
  });

  it('yarn: kept, ramped and interpolated dimensions; attention factor 0.1 ln(factor) + 1', () => {
    // D 16, theta 10000, original context 64: dimension d turns 64 / (2π · 10000^(d/16)) times,
    // so beta_fast 32 falls at d = -0.99 (floor, clamped: 0) and beta_slow 1 at d = 2.02 (ceil: 3).
    // Frequency i keeps 1 - i/3 of itself and takes i/3 of itself / factor (by hand).
    const s = { rope_type: 'yarn', factor: 4, original_max_position_embeddings: 64 };
    const p = ropeParameters({ head_dim: 16, rope_theta: 10000, rope_scaling: s, max_position_embeddings: 256 });
    const base = plain(16, 10000);
    p.invFreq.forEach((f, i) => {
      const ramp = Math.min(1, i / 3);
      expect(f / base[i]!, `i ${i}`).toBeCloseTo((1 - ramp) + ramp / 4, 12);
    });
    expect(p.attentionFactor).toBeCloseTo(0.1 * Math.log(4) + 1, 14);
    // The factor is the given one, whatever max_position_embeddings is (transformers 4.56 on: Qwen's
    // configs give factor 4 with max_position_embeddings equal to the original context).
    const qwen = ropeParameters({ head_dim: 16, rope_theta: 10000, rope_scaling: s, max_position_embeddings: 64 });
    expect(qwen.attentionFactor).toBeCloseTo(0.1 * Math.log(4) + 1, 14);
    expect(Array.from(qwen.invFreq)).toEqual(Array.from(p.invFreq));
    // truncate: false keeps the fractional range (-0.99 clamped to 0, 2.016): frequency 1 ramps 1 / 2.016.
    const exact = ropeParameters({ head_dim: 16, rope_theta: 10000, rope_scaling: { ...s, truncate: false }, max_position_embeddings: 256 });
    const r1 = 1 / ((16 * Math.log(64 / (2 * Math.PI))) / (2 * Math.log(10000)));
    expect(exact.invFreq[1]! / base[1]!).toBeCloseTo((1 - r1) + r1 / 4, 12);
    const own = { rope_type: 'yarn', factor: 2, attention_factor: 0.5, beta_fast: 8, beta_slow: 2 };
    const q = ropeParameters({ head_dim: 16, rope_theta: 10000, rope_scaling: own, max_position_embeddings: 64 });
    expect(q.attentionFactor).toBe(0.5);
    expect(q.invFreq[7]! / base[7]!).toBeCloseTo(0.5, 14); // beyond the ramp: interpolated
    expect(q.invFreq[0]).toBe(base[0]); // before it: kept
    const ds = { rope_type: 'yarn', factor: 40, mscale: 1, mscale_all_dim: 0.707 }; // DeepSeek's form
    expect(ropeParameters({ head_dim: 16, rope_theta: 10000, rope_scaling: ds, max_position_embeddings: 4096 }).attentionFactor)
      .toBeCloseTo((0.1 * Math.log(40) + 1) / (0.0707 * Math.log(40) + 1), 14);
  });

  it("yarn's range at its edges, worked out by hand as transformers' find_correction_range computes it", () => {
    // D 16, theta 10000: dimension d turns original / (2π · 10000^(d/8)) times over the original context.
    const base = plain(16, 10000);
    const ratios = (s: Record<string, unknown>, maxPos = 64) =>
      Array.from(ropeParameters({ head_dim: 16, rope_theta: 10000, rope_scaling: { rope_type: 'yarn', ...s }, max_position_embeddings: maxPos }).invFreq, (f, i) => f / base[i]!);
    // beta_fast 8 at d = 0.21 (floor: 0), beta_slow 2 at d = 1.41 (ceil: 2): frequency 1 ramps halfway.
    expect(ratios({ factor: 2, beta_fast: 8, beta_slow: 2 })[1]).toBeCloseTo(0.75, 14);
    // Original context 65536: beta_fast 32 at d = 5.03 (floor 5), beta_slow 1 at d = 8.04 (ceil 9),
    // clamped to D - 1 = 15, not D/2 - 1: frequencies 5, 6, 7 keep 1, 3/4, 1/2 of themselves.
    const wide = ratios({ factor: 4, original_max_position_embeddings: 65536 });
    [1, 0.8125, 0.625].forEach((w, j) => expect(wide[5 + j], `i ${5 + j}`).toBeCloseTo(w, 14));
    // beta_slow 16 at d = -0.39 (ceil: 0) meets beta_fast 32 at d = -0.99 (0): the range is [0, 0.001].
    expect(ratios({ factor: 4, beta_slow: 16 })).toEqual([1, ...Array(7).fill(0.25)]);
    // A beta of 0 means its default (Python's `or`), as a missing one does.
    expect(ratios({ factor: 4, beta_fast: 0, beta_slow: 0 })).toEqual(ratios({ factor: 4 }));
    // mscale and mscale_all_dim divide only when both are given and non-zero; else 0.1 ln(factor) + 1.
    for (const m of [{ mscale: 1 }, { mscale_all_dim: 1 }, { mscale: 0.707, mscale_all_dim: 0 }])
      expect(ropeParameters({ head_dim: 16, rope_theta: 10000, rope_scaling: { rope_type: 'yarn', factor: 40, ...m }, max_position_embeddings: 4096 }).attentionFactor, JSON.stringify(m))
        .toBeCloseTo(0.1 * Math.log(40) + 1, 14);
    // llama3 with equal factors has no blend to divide by: refused.
    expect(() => inv(16, 10000, { rope_type: 'llama3', factor: 8, low_freq_factor: 2, high_freq_factor: 2, original_max_position_embeddings: 64 }))
      .toThrow(/^rope_scaling.high_freq_factor: expected more than low_freq_factor 2, got 2/);
  });

  it('dynamic NTK: plain up to max_position_embeddings, then theta · (factor · len / max - (factor - 1))^(D / (D - 2))', () => {
    const s = { rope_type: 'dynamic', factor: 2 };
    expect(Array.from(inv(16, 10000, s, 64, 64))).toEqual(Array.from(inv(16, 10000, null)));
    expect(Array.from(inv(16, 10000, s, 64, 10))).toEqual(Array.from(inv(16, 10000, null)));
    const theta = 10000 * (2 * 256 / 64 - 1) ** (16 / 14); // 256 tokens, 4x the trained length
    const got = inv(16, 10000, s, 64, 256);
    plain(16, theta).forEach((w, i) => expect(got[i]! / w, `i ${i}`).toBeCloseTo(1, 13));
  });
});
