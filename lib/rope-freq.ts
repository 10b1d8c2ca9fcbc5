// The rotary embedding's parameters, as transformers computes them for LLaMA
// (modeling_rope_utils): inverse frequencies inv_freq[i] = theta^(-2i/D), rescaled by the
// config's rope_scaling, and an attention factor that multiplies cos and sin (1 but for
// yarn). Types: 'linear' (all divided by factor), 'llama3' (long wavelengths divided by
// factor, short ones kept, a blend between), 'yarn' (the same idea with a ramp over
// dimensions, plus the attention factor), 'dynamic' (NTK: theta grows with the sequence
// length once it passes max_position_embeddings). Computed in double; ops.rope takes inv_freq.
import { checkInteger, describe, fail } from './errors.js';
import { DEFAULT_MAX_POSITIONS, ropeType } from './llama-config.js';

export const ROPE_TYPES = ['default', 'linear', 'llama3', 'yarn', 'dynamic'] as const;

/** What RoPE needs from a LLaMA config (config.json keys). */
export interface RopeConfig {
  head_dim: number;
  rope_theta: number;
  rope_scaling?: Record<string, unknown> | null;
  max_position_embeddings?: number;
}

export interface RopeParameters {
  /** head_dim / 2 inverse frequencies. */
  invFreq: Float64Array;
  /**
   * transformers multiplies cos and sin by this, so q·k by its square: the model folds that
   * into the softmax scale. 1 except for yarn.
   */
  attentionFactor: number;
}

function positive(scaling: Record<string, unknown>, key: string, where: string, fallback?: number): number {
  const v = scaling[key] ?? fallback;
  if (v === undefined) fail('range', `${where}.${key}: missing; expected a number > 0`);
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0)
    fail(typeof v === 'number' ? 'range' : 'type', `${where}.${key}: expected a number > 0, got ${describe(v)}`);
  return v;
}

const maxPositions = (c: RopeConfig) => c.max_position_embeddings ?? DEFAULT_MAX_POSITIONS;

const plain = (D: number, theta: number) => Float64Array.from({ length: D / 2 }, (_, i) => Math.pow(theta, (-2 * i) / D));

// The prefix of a key beside rope_scaling (or transformers 5's rope_parameters) in `where`.
const beside = (where: string) => where.replace(/rope_(scaling|parameters)$/, '');

/**
 * RoPE's parameters for a config. `seqLen` is the whole sequence's length, which only
 * 'dynamic' reads (transformers: the largest position + 1). An unsupported or malformed
 * rope_scaling is an error naming the key; `where` names rope_scaling (or rope_parameters) in them.
 */
export function ropeParameters(c: RopeConfig, seqLen = 0, where = 'rope_scaling'): RopeParameters {
  const key = (k: string) => `${beside(where)}${k}`;
  if (c === null || typeof c !== 'object') fail('type', `config: expected { head_dim, rope_theta, rope_scaling? }, got ${describe(c)}`);
  if (typeof c.head_dim !== 'number' || !Number.isInteger(c.head_dim) || c.head_dim < 2 || c.head_dim % 2 !== 0)
    fail('range', `${key('head_dim')}: expected an even integer >= 2, got ${describe(c.head_dim)}`);
  if (typeof c.rope_theta !== 'number' || !Number.isFinite(c.rope_theta) || c.rope_theta <= 0)
    fail('range', `${key('rope_theta')}: expected a finite number > 0, got ${describe(c.rope_theta)}`);
  checkInteger(seqLen, 'seqLen', 0);
  const scaling = c.rope_scaling;
  if (scaling !== undefined && scaling !== null && (typeof scaling !== 'object' || Array.isArray(scaling)))
    fail('type', `${where}: expected an object or null, got ${describe(scaling)}`);
  const D = c.head_dim, inv = plain(D, c.rope_theta);
  const type = ropeType(scaling);
  if (!scaling || type === 'default') return { invFreq: inv, attentionFactor: 1 };
  if (type === 'linear') {
    const factor = positive(scaling, 'factor', where);
    return { invFreq: inv.map((f) => f / factor), attentionFactor: 1 };
  }
  if (type === 'llama3') {
    const factor = positive(scaling, 'factor', where);
    const low = positive(scaling, 'low_freq_factor', where), high = positive(scaling, 'high_freq_factor', where);
    const context = positive(scaling, 'original_max_position_embeddings', where);
    if (high <= low) fail('range', `${where}.high_freq_factor: expected more than low_freq_factor ${low}, got ${high}`);
    const invFreq = inv.map((f) => {
      const wavelength = (2 * Math.PI) / f;
      if (wavelength < context / high) return f; // high frequencies: as trained
      if (wavelength > context / low) return f / factor; // low frequencies: stretched
      const smooth = (context / wavelength - low) / (high - low);
      return (1 - smooth) * (f / factor) + smooth * f;
    });
    return { invFreq, attentionFactor: 1 };
  }
  if (type === 'dynamic') {
    const factor = positive(scaling, 'factor', where), maxPos = maxPositions(c);
    const len = Math.max(seqLen, maxPos);
    const theta = c.rope_theta * Math.pow((factor * len) / maxPos - (factor - 1), D / (D - 2));
    return { invFreq: plain(D, theta), attentionFactor: 1 };
  }
  if (type === 'yarn') return yarn(c, scaling, where);
  return fail('range', `${where}: rope_type ${describe(type)} is not supported (supported: ${ROPE_TYPES.join(', ')}, or null)`);
}

// YaRN (arXiv 2309.00071) as transformers' _compute_yarn_parameters (4.56 on): dimensions
// that turn fewer than beta_slow times over the original context are interpolated (divided
// by factor), those that turn more than beta_fast times are kept, a linear ramp between.
// The original context is rope_scaling's original_max_position_embeddings, else the
// config's max_position_embeddings. (transformers 4.50-4.55 replaced factor by their ratio,
// a bug fixed there; before 4.50 the correction range used max_position_embeddings.)
function yarn(c: RopeConfig, s: Record<string, unknown>, where: string): RopeParameters {
  const D = c.head_dim, theta = c.rope_theta;
  // transformers 5 keeps the base inside rope_parameters
  const thetaKey = where.endsWith('rope_parameters') ? `${where}.rope_theta` : `${beside(where)}rope_theta`;
  if (theta <= 1) fail('range', `${thetaKey}: yarn takes its logarithm's ratios; expected a number > 1, got ${theta}`);
  const factor = positive(s, 'factor', where);
  const given = s.original_max_position_embeddings !== undefined && s.original_max_position_embeddings !== null;
  const original = given ? positive(s, 'original_max_position_embeddings', where) : maxPositions(c);
  const mscale = (scale: number, m = 1) => (scale <= 1 ? 1 : 0.1 * m * Math.log(scale) + 1);
  let attentionFactor: number;
  if (s.attention_factor !== undefined && s.attention_factor !== null) attentionFactor = positive(s, 'attention_factor', where);
  else if (s.mscale && s.mscale_all_dim)
    attentionFactor = mscale(factor, positive(s, 'mscale', where)) / mscale(factor, positive(s, 'mscale_all_dim', where));
  else attentionFactor = mscale(factor);
  const orDefault = (key: string, d: number) => (s[key] === undefined || s[key] === null || s[key] === 0 ? d : positive(s, key, where));
  const betaFast = orDefault('beta_fast', 32), betaSlow = orDefault('beta_slow', 1);
  // The dimension at which a frequency turns `rotations` times over the original context.
  const dimAt = (rotations: number) => (D * Math.log(original / (rotations * 2 * Math.PI))) / (2 * Math.log(theta));
  let low = dimAt(betaFast), high = dimAt(betaSlow);
  if (!('truncate' in s) || s.truncate) (low = Math.floor(low)), (high = Math.ceil(high)); // Python's get('truncate', True)
  low = Math.max(low, 0);
  high = Math.min(high, D - 1);
  if (low === high) high += 0.001; // no division by zero
  const invFreq = plain(D, theta).map((f, i) => {
    const keep = 1 - Math.min(1, Math.max(0, (i - low) / (high - low))); // 1: extrapolate (keep f), 0: interpolate
    return (f / factor) * (1 - keep) + f * keep;
  });
  return { invFreq, attentionFactor };
}

/** Whether the parameters depend on the sequence length (then the model computes them per run). */
export function ropeDependsOnLength(scaling: Record<string, unknown> | null | undefined): boolean {
  return ropeType(scaling) === 'dynamic';
}
