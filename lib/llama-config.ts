// LLaMA-style model shapes, spelled as Hugging Face's config.json spells them, and the tensor
// names and shapes of transformers' LlamaForCausalLM, so checkpoints can be checked against them.
import { existsSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';

import { MAX_HEAD_DIM } from './attention.js';
import { checkBoolean, checkFloat32, checkInteger, checkOneOf, describe, fail, isObject } from './errors.js';
import { readTextFile } from './safetensors.js';

export interface LlamaConfig {
  hidden_size: number;
  intermediate_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  /** Default num_attention_heads (multi-head attention); fewer is grouped-query attention. */
  num_key_value_heads: number;
  vocab_size: number;
  /** Default 1e-6. */
  rms_norm_eps: number;
  /** Default 10000. transformers 5 writes it inside rope_parameters instead. */
  rope_theta: number;
  /** lm_head shares embed_tokens' weight. Default false. */
  tie_word_embeddings: boolean;
  /** Default hidden_size / num_attention_heads. */
  head_dim?: number;
  /** Absent stays absent; RoPE scalings that read it, and saveLlama, then take transformers' default, 2048. */
  max_position_embeddings?: number;
  /** The standard deviation of initLlama's random matrices; when absent (it stays absent), initLlama uses 0.02. */
  initializer_range?: number;
  /**
   * The padding token, as torch's nn.Embedding padding_idx: its embedding row gets no gradient
   * from the lookup and starts at zero in initLlama. Negative counts from the end (-1: the last
   * row). Null or absent: none. A parsed config holds it in [0, vocab_size).
   */
  pad_token_id?: number | null;
  /**
   * The tokens that begin and end a sequence (eos: one id, or several as Llama 3.1 lists them).
   * Not used here; kept (an integer, a list of them, or null; anything else is dropped) so that
   * saveLlama writes them back, since transformers' generate() stops where they say (absent,
   * transformers takes 1 and 2).
   */
  bos_token_id?: number | null;
  eos_token_id?: number | number[] | null;
  /** Passed through unchecked (e.g. Llama 3's { rope_type: 'llama3', factor, ... }); null or absent: plain RoPE. */
  rope_scaling?: Record<string, unknown> | null;
  /**
   * transformers 5's form of the two above: { rope_type, rope_theta, ...the scaling's keys }.
   * Read as transformers 5 reads it (a non-empty rope_scaling wins); a parsed config holds it
   * as rope_theta and rope_scaling.
   */
  rope_parameters?: Record<string, unknown> | null;
}

/**
 * A checked config with every default filled in, head_dim included (max_position_embeddings and
 * initializer_range stay absent when absent); RoPE as rope_theta and rope_scaling; pad_token_id,
 * when there is one, as a row of the table.
 */
export type ResolvedLlamaConfig = Omit<LlamaConfig, 'rope_parameters' | 'pad_token_id' | 'bos_token_id' | 'eos_token_id'> &
  { head_dim: number; pad_token_id?: number; bos_token_id?: number | null; eos_token_id?: number | number[] | null };

/**
 * Checks a parsed config.json (keys as HF spells them; unknown keys ignored) and fills HF's
 * defaults. Each error names the key.
 */
export function parseLlamaConfig(json: unknown): ResolvedLlamaConfig {
  return parse(json, 'config', '');
}

// `what` names the whole object in errors, `where` prefixes its keys.
function parse(json: unknown, what: string, where: string): ResolvedLlamaConfig {
  if (json === null || typeof json !== 'object' || Array.isArray(json))
    fail('type', `${what}: expected a config object, got ${describe(json)}`);
  const c = json as Record<string, unknown>;
  checkArchitecture(c, where); // first: another architecture is named as such, not by a key of its
  // At most int32: vocab_size bounds int32 token ids, and no real model has a larger size.
  const int = (key: string) => {
    if (c[key] === undefined) fail('type', `${where}${key}: missing; expected a positive integer`);
    return checkInteger(c[key], `${where}${key}`, 1, 2 ** 31 - 1);
  };
  // HF treats null like absent for these two (the Python default is None).
  const optInt = (key: string) => (c[key] === undefined || c[key] === null ? undefined : int(key));
  const positive = (key: string, dflt: number) => {
    // As a float32 (rms_norm_eps reaches the kernels as one: 1e-50 would be 0).
    return checkFloat32(c[key] ?? dflt, `${where}${key}`, 0, false);
  };

  const hidden = int('hidden_size'), heads = int('num_attention_heads');
  const kvHeads = optInt('num_key_value_heads') ?? heads;
  if (heads % kvHeads !== 0)
    fail('range', `${where}num_key_value_heads: ${kvHeads} does not divide num_attention_heads ${heads}`);
  let headDim = optInt('head_dim');
  if (headDim === undefined) {
    if (hidden % heads !== 0)
      fail('range', `${where}num_attention_heads: ${heads} does not divide hidden_size ${hidden} (give head_dim to decouple them)`);
    headDim = hidden / heads;
  }
  if (headDim % 2 !== 0) fail('range', `${where}head_dim: expected an even number (RoPE rotates pairs), got ${headDim}`);
  if (headDim > MAX_HEAD_DIM) fail('range', `${where}head_dim: ${headDim} exceeds the attention kernels' maximum of ${MAX_HEAD_DIM}`);
  // Keys that change the computation or the tensor set in ways this layer does not implement.
  checkOneOf(c.hidden_act, `${where}hidden_act`, ['silu']);
  for (const key of ['attention_bias', 'mlp_bias'])
    if (checkBoolean(c[key], `${where}${key}`)) fail('range', `${where}${key}: true is not supported (no bias tensors)`);
  // transformers drops attention probabilities in training when this is above 0; we never do.
  if (given(c.attention_dropout) && checkFloat32(c.attention_dropout, `${where}attention_dropout`, 0) !== 0)
    fail('range', `${where}attention_dropout: ${show(c.attention_dropout)}: dropout is not computed here, so training would differ from transformers'; expected 0`);
  const rope = readRope(c, where);

  const config: ResolvedLlamaConfig = {
    hidden_size: hidden,
    intermediate_size: int('intermediate_size'),
    num_hidden_layers: int('num_hidden_layers'),
    num_attention_heads: heads,
    num_key_value_heads: kvHeads,
    vocab_size: int('vocab_size'),
    rms_norm_eps: positive('rms_norm_eps', 1e-6),
    rope_theta: checkFloat32(rope.theta ?? 10000, `${where}${rope.thetaKey}`, 0, false),
    tie_word_embeddings: checkBoolean(c.tie_word_embeddings, `${where}tie_word_embeddings`) ?? false,
    head_dim: headDim,
  };
  if (c.max_position_embeddings !== undefined) config.max_position_embeddings = int('max_position_embeddings');
  if (given(c.initializer_range)) config.initializer_range = checkFloat32(c.initializer_range, `${where}initializer_range`, 0);
  if (given(c.pad_token_id)) config.pad_token_id = padRow(c.pad_token_id, config.vocab_size, `${where}pad_token_id`);
  if (rope.scaling !== undefined) config.rope_scaling = rope.scaling;
  // Unused here, so not refused: kept when transformers could read them back, else dropped.
  const ids = (v: unknown) => v === null || Number.isSafeInteger(v) ||
    (Array.isArray(v) && v.length > 0 && v.every((x) => Number.isSafeInteger(x)));
  if (ids(c.bos_token_id) && !Array.isArray(c.bos_token_id)) config.bos_token_id = c.bos_token_id as number | null;
  if (ids(c.eos_token_id)) config.eos_token_id = Array.isArray(c.eos_token_id) ? [...c.eos_token_id as number[]] : c.eos_token_id as number | null;
  return config;
}

const given = (v: unknown) => v !== undefined && v !== null;

// torch's reading of nn.Embedding's padding_idx: [-V, V), negatives from the end; transformers
// builds its embedding with it, so a value outside fails there too.
function padRow(v: unknown, vocab: number, key: string): number {
  if (typeof v === 'number' && Number.isInteger(v) && (v >= vocab || v < -vocab))
    fail('range', `${key}: ${v} is outside the ${vocab} embedding rows (torch's padding_idx takes [-${vocab}, ${vocab}), negatives from the end); use null for no padding token`);
  const row = checkInteger(v, key, -vocab, vocab - 1);
  return row < 0 ? vocab + row : row;
}
const show = (v: unknown) => (typeof v === 'number' ? String(v) : describe(v));

// Other architectures share LLaMA's tensor names but not its arithmetic (Granite's multipliers,
// Mistral's sliding window), so a file of theirs would load and compute the wrong model.
function checkArchitecture(c: Record<string, unknown>, where: string): void {
  const type = c.model_type;
  if (given(type) && type !== 'llama' && type !== 'mistral')
    fail('range', `${where}model_type: ${describe(type)} is not computed here (expected 'llama', or 'mistral' without a sliding window); a model of LLaMA's exact architecture under another name loads with model_type 'llama'`);
  if (type === 'mistral' && c.sliding_window !== null) {
    const window = c.sliding_window === undefined ? "absent, so transformers' default of 4096" : show(c.sliding_window);
    fail('range', `${where}sliding_window: ${window}: Mistral's sliding-window attention is not computed here; null attends over the whole sequence (the same model on sequences no longer than the window)`);
  }
}

/**
 * Which key holds a config's RoPE scaling: transformers 5 reads rope_scaling when it is a
 * non-empty object (configs of earlier versions), else rope_parameters.
 */
export function ropeKey(json: unknown): 'rope_scaling' | 'rope_parameters' {
  if (!isObject(json)) return 'rope_scaling';
  const legacy = json.rope_scaling;
  return given(json.rope_parameters) && !(isObject(legacy) && Object.keys(legacy).length > 0) ? 'rope_parameters' : 'rope_scaling';
}

// RoPE's base and scaling from either form, read as transformers 5 reads them (4 ignores
// rope_parameters; only 5-aware writers write it). 5 takes the base from the scaling's object
// before rope_theta; two bases that differ are refused, as the file means one model to 4 and
// another to 5. A file of transformers 5 has no rope_theta: read as 4 reads it, it would
// silently get the default base.
function readRope(c: Record<string, unknown>, where: string) {
  for (const key of ['rope_scaling', 'rope_parameters'])
    if (given(c[key]) && !isObject(c[key])) fail('type', `${where}${key}: expected an object or null, got ${describe(c[key])}`);
  const key = ropeKey(c);
  const dict = c[key] as Record<string, unknown> | null | undefined;
  const inner = dict?.rope_theta, outer = c.rope_theta;
  if (given(inner) && given(outer) && inner !== outer)
    fail('range', `${where}rope_theta: ${show(outer)} differs from ${key}.rope_theta ${show(inner)} (transformers 4 reads the first, 5 the second); give one`);
  for (const [k, v] of [['partial_rotary_factor', c.partial_rotary_factor], [`${key}.partial_rotary_factor`, dict?.partial_rotary_factor]] as const)
    if (given(v) && v !== 1) fail('range', `${where}${k}: a LLaMA model rotates whole heads; expected 1, got ${show(v)}`);
  const theta = given(inner) ? inner : given(outer) ? outer : undefined;
  const thetaKey = given(inner) ? `${key}.rope_theta` : 'rope_theta';
  if (key === 'rope_scaling') return { theta, thetaKey, scaling: dict as Record<string, unknown> | null | undefined };
  const nested = Object.keys(dict!).find((k) => isObject(dict![k]));
  if (nested !== undefined)
    fail('range', `${where}rope_parameters.${nested}: per-layer-type RoPE parameters are not supported (a LLaMA model's layers are all alike)`);
  const { rope_theta: _t, partial_rotary_factor: _p, ...scaling } = dict!;
  return { theta, thetaKey, scaling: ropeType(scaling) === 'default' ? null : scaling };
}

/** The RoPE scaling's type: rope_type, or the older key type; 'default' when there is no scaling. */
export function ropeType(scaling: Record<string, unknown> | null | undefined): unknown {
  return scaling ? (scaling.rope_type ?? scaling.type ?? 'default') : 'default';
}

/** Reads and checks `config.json` from a checkpoint directory, or the file itself. */
export async function loadLlamaConfig(dirOrFile: string): Promise<ResolvedLlamaConfig> {
  const { file, json } = await readConfigJson(dirOrFile);
  return parseConfigFile(json, file);
}

/** @internal parseLlamaConfig with each message prefixed by the file's path. */
export function parseConfigFile(json: unknown, file: string): ResolvedLlamaConfig {
  return parse(json, file, `${file}: `);
}

/** @internal A config.json's path (from a directory or the file) and its JSON, unchecked. */
export async function readConfigJson(dirOrFile: string): Promise<{ file: string; json: unknown }> {
  if (typeof dirOrFile !== 'string' || dirOrFile === '') fail('type', `dirOrFile: expected a path, got ${describe(dirOrFile)}`);
  const info = await stat(dirOrFile).catch((e: NodeJS.ErrnoException) => {
    throw e.code === 'ENOENT' ? new Error(`${dirOrFile}: no such directory or file`, { cause: e }) : e;
  });
  const file = info.isDirectory() ? join(dirOrFile, 'config.json') : dirOrFile;
  // Meta's original/ folder (consolidated.*.pth, params.json) and other layouts have none.
  if (info.isDirectory() && !existsSync(file))
    throw new Error(`${dirOrFile}: no config.json there; expected a Hugging Face model directory (config.json and model.safetensors, or its shards)`);
  const text = await readTextFile(file, 10_000_000);
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new Error(`${file}: not valid JSON: ${(e as Error).message}`, { cause: e });
  }
  return { file, json };
}

const preset = (c: ResolvedLlamaConfig): Readonly<ResolvedLlamaConfig> => {
  if (c.rope_scaling) Object.freeze(c.rope_scaling);
  return Object.freeze(c);
};

/** max_position_embeddings when a config.json has none: transformers' LlamaConfig default. */
export const DEFAULT_MAX_POSITIONS = 2048;

/** Shapes of known models (from their config.json), and a tiny one for tests. */
export const llamaPresets = Object.freeze({
  tiny: preset({
    hidden_size: 64, intermediate_size: 176, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2,
    vocab_size: 256, rms_norm_eps: 1e-6, rope_theta: 10000, tie_word_embeddings: false, head_dim: 16,
    max_position_embeddings: 256,
  }),
  '125M': preset({
    hidden_size: 768, intermediate_size: 2048, num_hidden_layers: 12, num_attention_heads: 12, num_key_value_heads: 12,
    vocab_size: 32000, rms_norm_eps: 1e-6, rope_theta: 10000, tie_word_embeddings: false, head_dim: 64,
    max_position_embeddings: 2048,
  }),
  /** meta-llama/Llama-3.2-1B */
  '1B': preset({
    hidden_size: 2048, intermediate_size: 8192, num_hidden_layers: 16, num_attention_heads: 32, num_key_value_heads: 8,
    vocab_size: 128256, rms_norm_eps: 1e-5, rope_theta: 500000, tie_word_embeddings: true, head_dim: 64,
    max_position_embeddings: 131072,
    rope_scaling: { rope_type: 'llama3', factor: 32, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 8192 },
  }),
  /** meta-llama/Llama-2-7b-hf */
  '7B': preset({
    hidden_size: 4096, intermediate_size: 11008, num_hidden_layers: 32, num_attention_heads: 32, num_key_value_heads: 32,
    vocab_size: 32000, rms_norm_eps: 1e-5, rope_theta: 10000, tie_word_embeddings: false, head_dim: 128,
    max_position_embeddings: 4096,
  }),
});
export type LlamaPreset = keyof typeof llamaPresets;

/** LlamaForCausalLM's tensors, name -> shape, in the order the model defines them. */
export function llamaTensorNames(config: LlamaConfig): Map<string, number[]> {
  const c = parse(config, 'config', 'config.');
  const { hidden_size: h, intermediate_size: ffn, vocab_size: vocab, head_dim: d } = c;
  const q = c.num_attention_heads * d, kv = c.num_key_value_heads * d;
  const names = new Map<string, number[]>([['model.embed_tokens.weight', [vocab, h]]]);
  for (let i = 0; i < c.num_hidden_layers; ++i) {
    const p = `model.layers.${i}.`;
    names.set(`${p}self_attn.q_proj.weight`, [q, h]);
    names.set(`${p}self_attn.k_proj.weight`, [kv, h]);
    names.set(`${p}self_attn.v_proj.weight`, [kv, h]);
    names.set(`${p}self_attn.o_proj.weight`, [h, q]);
    names.set(`${p}mlp.gate_proj.weight`, [ffn, h]);
    names.set(`${p}mlp.up_proj.weight`, [ffn, h]);
    names.set(`${p}mlp.down_proj.weight`, [h, ffn]);
    names.set(`${p}input_layernorm.weight`, [h]);
    names.set(`${p}post_attention_layernorm.weight`, [h]);
  }
  names.set('model.norm.weight', [h]);
  if (!c.tie_word_embeddings) names.set('lm_head.weight', [vocab, h]);
  return names;
}

/** The exact number of parameters in llamaTensorNames(config) (a tied lm_head counts once). */
export function parameterCount(config: LlamaConfig): number {
  let n = 0;
  for (const shape of llamaTensorNames(config).values()) n += shape.reduce((a, b) => a * b, 1);
  return n;
}
