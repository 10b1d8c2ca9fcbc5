// A LLaMA model's parameters: float32 tensors keyed by the names transformers'
// LlamaForCausalLM uses (see llamaTensorNames), made from a seed, from arrays, or from a
// checkpoint directory, and saved so that transformers loads them. On 'cuda' the model also
// holds a bfloat16 copy of every parameter: the forward and backward compute from those (the
// kernels' tensor cores take bfloat16), the optimizer updates the float32 ones.
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { isFloat32Array } from 'node:util/types';

import { checkInteger, checkOneOf, checkOptions, describe, fail } from './errors.js';
import {
  DEFAULT_MAX_POSITIONS, llamaTensorNames, parseConfigFile, parseLlamaConfig, readConfigJson, ropeKey, ropeType,
  type LlamaConfig, type ResolvedLlamaConfig,
} from './llama-config.js';
import { native } from './native.js';
import { copy } from './ops.js';
import { ropeDependsOnLength, ropeParameters, type RopeParameters } from './rope-freq.js';
import { dirReader, refuseShardedDir, safetensorsDirEntries, SINGLE_FILE } from './safetensors-dir.js';
import { checkFloatEntry } from './safetensors.js';
import { writeSafetensorsFrom, type WritableDType } from './safetensors-write.js';
import { checkDevice, DEVICES, DTYPES, tensor, zeros, type DeviceName, type DType, type Tensor } from './tensor.js';

/** One decoder layer's parameters (C hidden, F intermediate, H heads, KVH kv heads, D head dim). */
export interface LlamaLayerParams {
  inputNorm: Tensor; // (C)          input_layernorm.weight
  wq: Tensor; //        (H*D, C)     self_attn.q_proj.weight
  wk: Tensor; //        (KVH*D, C)   self_attn.k_proj.weight
  wv: Tensor; //        (KVH*D, C)   self_attn.v_proj.weight
  wo: Tensor; //        (C, H*D)     self_attn.o_proj.weight
  postNorm: Tensor; //  (C)          post_attention_layernorm.weight
  wGate: Tensor; //     (F, C)       mlp.gate_proj.weight
  wUp: Tensor; //       (F, C)       mlp.up_proj.weight
  wDown: Tensor; //     (C, F)       mlp.down_proj.weight
}

/** The whole model's parameters as fields; `head` is `embed` itself when the embeddings are tied. */
export interface LlamaParams {
  embed: Tensor; // (V, C)  model.embed_tokens.weight
  layers: LlamaLayerParams[];
  norm: Tensor; //  (C)     model.norm.weight
  head: Tensor; //  (V, C)  lm_head.weight, or embed when tie_word_embeddings
}

/** Views a name -> tensor map (llamaTensorNames' names) as LlamaParams. */
export function paramsFromMap(config: ResolvedLlamaConfig, t: ReadonlyMap<string, Tensor>): LlamaParams {
  const get = (name: string) => t.get(name) ?? fail('range', `tensors: '${name}' is missing`);
  const layers: LlamaLayerParams[] = [];
  for (let i = 0; i < config.num_hidden_layers; ++i) {
    const p = `model.layers.${i}.`;
    layers.push({
      inputNorm: get(`${p}input_layernorm.weight`),
      wq: get(`${p}self_attn.q_proj.weight`), wk: get(`${p}self_attn.k_proj.weight`),
      wv: get(`${p}self_attn.v_proj.weight`), wo: get(`${p}self_attn.o_proj.weight`),
      postNorm: get(`${p}post_attention_layernorm.weight`),
      wGate: get(`${p}mlp.gate_proj.weight`), wUp: get(`${p}mlp.up_proj.weight`), wDown: get(`${p}mlp.down_proj.weight`),
    });
  }
  const embed = get('model.embed_tokens.weight');
  return { embed, layers, norm: get('model.norm.weight'), head: config.tie_word_embeddings ? embed : get('lm_head.weight') };
}

/** The dtype the forward and backward compute in on each device (see LlamaModel.compute). */
export const COMPUTE_DTYPE: Readonly<Record<DeviceName, DType>> = { cpu: 'float32', cuda: 'bfloat16' };

export class LlamaModel implements Disposable {
  readonly config: ResolvedLlamaConfig;
  /** Where every tensor of this model lives. */
  readonly device: DeviceName;
  /** Every parameter (float32) by its transformers name, in llamaTensorNames' order (no lm_head when tied). */
  readonly tensors: ReadonlyMap<string, Tensor>;
  /** The same tensors as fields: what the optimizer updates. */
  readonly params: LlamaParams;
  /**
   * What the forward and backward read: `params` itself on the cpu; on cuda a bfloat16 copy
   * of each parameter, made again from `params` by syncCompute() after they change.
   */
  readonly compute: LlamaParams;
  readonly #rope: RopeParameters | null; // null: they depend on the sequence length ('dynamic')
  readonly #copies: Map<string, Tensor> | null;

  /** @internal use initLlama, createLlama or loadLlama. */
  constructor(config: ResolvedLlamaConfig, tensors: Map<string, Tensor>, device: DeviceName) {
    this.config = config;
    this.device = device;
    this.tensors = tensors;
    this.params = paramsFromMap(config, tensors);
    this.#rope = ropeDependsOnLength(config.rope_scaling) ? null : ropeParameters(config);
    const dtype = COMPUTE_DTYPE[device];
    this.#copies = dtype === 'float32' ? null : new Map();
    try {
      if (this.#copies) for (const [n, t] of tensors) this.#copies.set(n, zeros(t.shape, { dtype, device }));
      this.compute = this.#copies ? paramsFromMap(config, this.#copies) : this.params;
      this.syncCompute();
    } catch (e) {
      this.dispose();
      throw e;
    }
  }

  /** The dtype of `compute` (and of every activation): float32 on the cpu, bfloat16 on cuda. */
  get computeDtype(): DType {
    return COMPUTE_DTYPE[this.device];
  }

  /** RoPE's parameters (the config's rope_scaling applied) for a whole sequence of `seqLen` tokens. */
  rope(seqLen: number): RopeParameters {
    return this.#rope ?? ropeParameters(this.config, seqLen);
  }

  /** @internal The compute copy of the parameter `name`; undefined where `compute` is `params` (cpu). */
  computeCopy(name: string): Tensor | undefined {
    return this.#copies?.get(name);
  }

  /** Makes `compute` equal `params` again (rounded to computeDtype): after a restore, or an update that did not write the copies itself. */
  syncCompute(): void {
    if (this.#copies) for (const [n, t] of this.tensors) copy(this.#copies.get(n)!, t);
  }

  get disposed(): boolean {
    return [...this.tensors.values()].some((t) => t.disposed);
  }

  /** Copies every parameter out, name -> values. */
  toArrays(): Map<string, Float32Array> {
    return new Map([...this.tensors].map(([n, t]) => [n, t.handle(n).toFloat32Array()]));
  }

  /** Frees every parameter now. Idempotent. */
  dispose(): void {
    for (const t of this.tensors.values()) t.dispose();
    for (const t of this.#copies?.values() ?? []) t.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

/**
 * The config, checked, and refused when it asks for something this model does not compute (a
 * rope_scaling type, say). With `file`, the messages name it.
 */
export function checkModelConfig(config: unknown, file?: string): ResolvedLlamaConfig {
  const c = file === undefined ? parseLlamaConfig(config) : parseConfigFile(config, file);
  const where = file === undefined ? 'config.' : `${file}: `;
  ropeParameters(c, 0, `${where}${ropeKey(config)}`);
  // Quantized weights have other tensors (qweight, scales): say so, not which tensors are missing.
  const quantized = (config as Record<string, unknown>).quantization_config;
  if (quantized !== undefined && quantized !== null) {
    const method = (quantized as Record<string, unknown>).quant_method;
    fail('range', `${where}quantization_config: quantized weights${typeof method === 'string' ? ` (${method})` : ''} are not loaded here; use the model's unquantized checkpoint`);
  }
  return c;
}

// RoPE's inverse frequencies, which checkpoints saved while transformers kept them in the state
// dict carry (Llama 2's among them); transformers ignores them on load and recomputes them
// from the config, and so do we.
const ROPE_BUFFER = /^model\.(layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq$/;

// In pieces of 2^28 values: one Buffer over a Float32Array of more than 2^30 values is past its 2^32 bytes.
function sameBits(a: Float32Array, b: Float32Array): boolean {
  if (a.length !== b.length) return false;
  const bytes = (x: Float32Array, i: number, n: number) => Buffer.from(x.buffer, x.byteOffset + 4 * i, 4 * n);
  for (let i = 0; i < a.length; i += 2 ** 28) {
    const n = Math.min(2 ** 28, a.length - i);
    if (Buffer.compare(bytes(a, i, n), bytes(b, i, n)) !== 0) return false;
  }
  return true;
}

/**
 * Checks `tensors` (a shape, or the values, of each) against llamaTensorNames(config): every
 * tensor present with its shape, nothing extra but RoPE's buffers and, in a tied model, an
 * lm_head.weight (checkTiedCopy). `where` prefixes the messages.
 */
function checkArrays(c: ResolvedLlamaConfig, tensors: ReadonlyMap<string, { shape: number[] } | { data: Float32Array }>, where: string): void {
  const expected = llamaTensorNames(c);
  const missing = [...expected.keys()].filter((n) => !tensors.has(n));
  if (missing.length) fail('range', `${where}: missing ${missing.length} tensor(s): ${missing.slice(0, 5).map((n) => `'${n}'`).join(', ')}${missing.length > 5 ? ', ...' : ''}`);
  const extra = [...tensors.keys()].filter((n) => !expected.has(n) && !ROPE_BUFFER.test(n) && !(n === 'lm_head.weight' && c.tie_word_embeddings));
  if (extra.length) fail('range', `${where}: unexpected tensor(s) ${extra.slice(0, 5).map((n) => `'${n}'`).join(', ')}`);
  for (const [name, shape] of expected) {
    const a = tensors.get(name)!;
    const got = 'shape' in a ? a.shape : [a.data.length]; // values alone: only their count
    const want = 'shape' in a ? shape : [shape.reduce((x, y) => x * y, 1)];
    if (got.length !== want.length || got.some((d, i) => d !== want[i]))
      fail('range', `${where}: '${name}' has shape [${got.join(', ')}], expected [${shape.join(', ')}]`);
  }
}

// A tied model's lm_head.weight, which some tools save beside embed_tokens, must be its copy.
function checkTiedCopy(where: string, head: Float32Array, embed: Float32Array): void {
  if (!sameBits(head, embed))
    fail('range', `${where}: 'lm_head.weight' differs from 'model.embed_tokens.weight', but tie_word_embeddings is true (one matrix for both); set it to false to keep a separate head`);
}

function build(c: ResolvedLlamaConfig, device: DeviceName, data: (name: string, shape: number[]) => Float32Array): LlamaModel {
  const tensors = new Map<string, Tensor>();
  try {
    for (const [name, shape] of llamaTensorNames(c)) tensors.set(name, tensor(data(name, shape), shape, { device }));
  } catch (e) {
    for (const t of tensors.values()) t.dispose();
    throw e;
  }
  return new LlamaModel(c, tensors, device);
}

// build() for values that arrive one at a time (read from disk as each tensor is made).
async function buildAsync(c: ResolvedLlamaConfig, device: DeviceName, data: (name: string) => Promise<Float32Array>): Promise<LlamaModel> {
  const tensors = new Map<string, Tensor>();
  try {
    for (const [name, shape] of llamaTensorNames(c)) tensors.set(name, tensor(await data(name), shape, { device }));
  } catch (e) {
    for (const t of tensors.values()) t.dispose();
    throw e;
  }
  return new LlamaModel(c, tensors, device);
}

export interface LlamaDeviceOptions {
  /** Where the model lives and computes: 'cpu' (default) or 'cuda' (bfloat16 compute, float32 parameters). */
  device?: DeviceName;
}

function deviceOption(o: Record<string, unknown>, name: string): DeviceName {
  const device = checkOneOf(o.device, `${name}.device`, DEVICES) ?? 'cpu';
  checkDevice(device, `${name}.device`);
  return device;
}

export interface InitLlamaOptions extends LlamaDeviceOptions {
  /** The PRNG seed (an integer); the same seed gives the same weights on every rank. */
  seed: number;
  /** Standard deviation of the normal initialisation of matrices. Default: the config's initializer_range, else 0.02 (as transformers). */
  std?: number;
}

/**
 * A model with weights ~ normal(0, std) from a seeded counter-based generator (native,
 * multi-threaded), norm weights 1 and the pad_token_id row of the embedding 0, as HF
 * initialises LLaMA.
 */
export function initLlama(config: LlamaConfig, opts: InitLlamaOptions): LlamaModel {
  const c = checkModelConfig(config);
  if (opts === undefined) fail('type', 'opts: expected { seed }');
  const o = checkOptions(opts, 'opts', ['seed', 'std', 'device']);
  const seed = checkInteger(o.seed, 'opts.seed', -(2 ** 31), 2 ** 32 - 1);
  const std = o.std === undefined ? (c.initializer_range ?? 0.02) : o.std;
  if (typeof std !== 'number' || !Number.isFinite(std) || std < 0) fail('range', `opts.std: expected a finite number >= 0, got ${describe(std)}`);
  const device = deviceOption(o, 'opts');
  const stream = new Map([...llamaTensorNames(c).keys()].map((n, i) => [n, i])); // one random stream per tensor
  return build(c, device, (name, shape) => {
    const a = new Float32Array(shape.reduce((x, y) => x * y, 1));
    if (shape.length === 1) a.fill(1);
    else native.randomNormal(a, seed, stream.get(name)!, std);
    if (name === 'model.embed_tokens.weight' && c.pad_token_id !== undefined) // as transformers initialises nn.Embedding
      a.fill(0, c.pad_token_id * c.hidden_size, (c.pad_token_id + 1) * c.hidden_size);
    return a;
  });
}

/** A model from arrays keyed by transformers' names (each checked: present, right size, nothing extra). */
export function createLlama(config: LlamaConfig, arrays: ReadonlyMap<string, Float32Array>, opts?: LlamaDeviceOptions): LlamaModel {
  const c = checkModelConfig(config);
  const device = deviceOption(checkOptions(opts, 'opts', ['device']), 'opts');
  if (!(arrays instanceof Map)) fail('type', `arrays: expected a Map of name -> Float32Array, got ${describe(arrays)}`);
  for (const [n, a] of arrays) if (!isFloat32Array(a)) fail('type', `arrays: '${n}': expected a Float32Array, got ${describe(a)}`);
  checkArrays(c, new Map([...arrays].map(([n, data]) => [n, { data }])), 'arrays');
  const head = arrays.get('lm_head.weight');
  if (c.tie_word_embeddings && head) checkTiedCopy('arrays', head, arrays.get('model.embed_tokens.weight')!);
  return build(c, device, (name) => arrays.get(name)!);
}

/** Loads config.json and the safetensors weights of a transformers LlamaForCausalLM checkpoint directory. */
export async function loadLlama(dir: string, opts?: LlamaDeviceOptions): Promise<LlamaModel> {
  if (typeof dir !== 'string' || dir === '') fail('type', `dir: expected a path, got ${describe(dir)}`);
  const device = deviceOption(checkOptions(opts, 'opts', ['device']), 'opts');
  const { file, json } = await readConfigJson(dir);
  const c = checkModelConfig(json, file);
  // Every header checked first; then one tensor at a time, read as it is made (one in host
  // memory), each shard opened once.
  const { entries } = await safetensorsDirEntries(dir);
  checkArrays(c, new Map([...entries].map(([n, e]) => [n, e.entry])), dir);
  for (const name of llamaTensorNames(c).keys()) checkFloatEntry(entries.get(name)!.path, name, entries.get(name)!.entry);
  const reader = dirReader(entries);
  const read = async (name: string) => (await reader.read(name)).data;
  try {
    // A tied model's saved head is compared with the embedding, which is then built from that read.
    const E = 'model.embed_tokens.weight', embed = c.tie_word_embeddings && entries.has('lm_head.weight') ? await read(E) : undefined;
    if (embed) checkTiedCopy(dir, await read('lm_head.weight'), embed);
    return await buildAsync(c, device, (name) => (name === E && embed ? Promise.resolve(embed) : read(name)));
  } finally {
    await reader.close();
  }
}

// Whether RoPE is scaled. An unscaled rope_scaling is written as null: transformers 4 finds no
// RoPE type in {} and fails.
const scaled = (c: ResolvedLlamaConfig) => ropeType(c.rope_scaling) !== 'default';

// rope_parameters as transformers 5 writes it: the scaling's keys, its type as rope_type, the base.
function rope5(c: ResolvedLlamaConfig): Record<string, unknown> {
  const { type: _, ...scaling } = scaled(c) ? c.rope_scaling! : {};
  return { ...scaling, rope_type: ropeType(c.rope_scaling), rope_theta: c.rope_theta };
}

/** config.json for a LlamaForCausalLM with this config, as transformers 4 and 5 both read it. */
export function hfConfigJson(c: ResolvedLlamaConfig, dtype: DType = 'float32'): Record<string, unknown> {
  return {
    architectures: ['LlamaForCausalLM'], model_type: 'llama', hidden_act: 'silu', torch_dtype: dtype,
    attention_bias: false, mlp_bias: false, attention_dropout: 0, initializer_range: c.initializer_range ?? 0.02, pretraining_tp: 1, use_cache: true,
    hidden_size: c.hidden_size, intermediate_size: c.intermediate_size, num_hidden_layers: c.num_hidden_layers,
    num_attention_heads: c.num_attention_heads, num_key_value_heads: c.num_key_value_heads, head_dim: c.head_dim,
    vocab_size: c.vocab_size, rms_norm_eps: c.rms_norm_eps, rope_theta: c.rope_theta, rope_scaling: scaled(c) ? c.rope_scaling : null,
    // transformers 5's form too, the same values: 4 ignores it, 5 reads rope_scaling first.
    rope_parameters: rope5(c),
    tie_word_embeddings: c.tie_word_embeddings, max_position_embeddings: c.max_position_embeddings ?? DEFAULT_MAX_POSITIONS,
    pad_token_id: c.pad_token_id ?? null,
    // As the source gave them (null too); absent stays absent, so transformers takes its defaults, as it did for the source.
    ...(c.bos_token_id !== undefined ? { bos_token_id: c.bos_token_id } : {}),
    ...(c.eos_token_id !== undefined ? { eos_token_id: c.eos_token_id } : {}),
  };
}

// RoPE's float keys, which transformers checks with isinstance(x, float): JSON.stringify writes
// 8.0 as 8, which transformers 4.43+ warns of and 4.31-4.42 refused (linear and dynamic scaling).
const ROPE_FLOATS = new Set(['factor', 'low_freq_factor', 'high_freq_factor', 'beta_fast', 'beta_slow', 'attention_factor',
  'mscale', 'mscale_all_dim', 'rope_theta']);

/** config.json's text: 2-space JSON, whole-number RoPE floats written as 8.0, as Python writes them. */
export function hfConfigText(json: Record<string, unknown>): string {
  const marker = '\u0001float:';
  // A passed-through value (rope_scaling is unchecked) holding the marker's first character
  // would be rewritten too: such a config is written as it is, whole floats as ints.
  if (JSON.stringify(json).includes('\\u0001')) return `${JSON.stringify(json, null, 2)}\n`;
  const text = JSON.stringify(json, (key, v) =>
    ROPE_FLOATS.has(key) && typeof v === 'number' && Number.isInteger(v) && Math.abs(v) < 1e15 ? `${marker}${v}` : v, 2);
  return `${text.replace(/"\\u0001float:(-?\d+)"/g, '$1.0')}\n`;
}

export interface SaveLlamaOptions {
  /**
   * The stored weights' type. Default 'float32' (exact). 'bfloat16', as checkpoints are
   * published, or 'float16' halves the file and rounds each value to nearest (ties to even),
   * so it is for sharing a model, not for resuming training; config.json's torch_dtype says
   * which.
   */
  dtype?: DType;
}

const SAFETENSORS_DTYPE: Record<DType, WritableDType> = { float32: 'F32', bfloat16: 'BF16', float16: 'F16' };

/** Writes dir/config.json and dir/model.safetensors (transformers' names), creating dir. */
export async function saveLlama(dir: string, model: LlamaModel, opts?: SaveLlamaOptions): Promise<void> {
  if (typeof dir !== 'string' || dir === '') fail('type', `dir: expected a path, got ${describe(dir)}`);
  if (!(model instanceof LlamaModel)) fail('type', `model: expected a LlamaModel, got ${describe(model)}`);
  const dtype = checkOneOf(checkOptions(opts, 'opts', ['dtype']).dtype, 'opts.dtype', DTYPES) ?? 'float32';
  refuseShardedDir(dir, 'saveLlama');
  await mkdir(dir, { recursive: true });
  const files = llamaFiles(model, dtype);
  await files.writeWeights(join(dir, SINGLE_FILE), { format: 'pt' });
  await writeFile(join(dir, 'config.json'), files.config);
}

/**
 * @internal What saveLlama writes: config.json's text, and the weights by transformers' names,
 * each copied to the host only as it is written (one tensor in host memory at a time).
 */
export function llamaFiles(model: LlamaModel, dtype: DType = 'float32') {
  const stored = SAFETENSORS_DTYPE[dtype];
  return {
    config: hfConfigText(hfConfigJson(model.config, dtype)),
    /** `beforeEach` runs before each tensor is written; `syncEach` flushes each to disk as it is written. */
    writeWeights(path: string, metadata: Record<string, string>, { beforeEach, syncEach }: { beforeEach?: () => void; syncEach?: boolean } = {}): Promise<void> {
      const specs = Object.fromEntries([...model.tensors].map(([n, t]) => [n, { shape: [...t.shape], dtype: stored }]));
      return writeSafetensorsFrom(path, specs, (n) => {
        beforeEach?.();
        return model.tensors.get(n)!.handle(`model '${n}'`).toFloat32Array();
      }, metadata, { syncEach });
    },
  };
}
