// The rotary embedding's inverse frequencies, as transformers computes them for LLaMA
// (modeling_rope_utils): inv_freq[i] = theta^(-2i/D), then rescaled when the config has a
// rope_scaling of type 'linear' (all divided by factor) or 'llama3' (Llama 3.1+: long
// wavelengths divided by factor, short ones kept, a smooth blend between). Computed in
// double; ops.rope takes the array.
import { describe, fail } from './errors.js';

export const ROPE_TYPES = ['default', 'linear', 'llama3'] as const;

function positive(scaling: Record<string, unknown>, key: string, where: string): number {
  const v = scaling[key];
  if (v === undefined) fail('range', `${where}.${key}: missing; expected a number > 0`);
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0)
    fail(typeof v === 'number' ? 'range' : 'type', `${where}.${key}: expected a number > 0, got ${describe(v)}`);
  return v;
}

/**
 * inv_freq (D/2 values) for head dim D, rope_theta and rope_scaling (null or absent: none).
 * An unsupported scaling type is a RangeError naming it; `where` prefixes the messages.
 */
export function ropeInvFreq(headDim: number, theta: number, scaling?: Record<string, unknown> | null, where = 'rope_scaling'): Float64Array {
  const half = headDim / 2;
  const inv = Float64Array.from({ length: half }, (_, i) => Math.pow(theta, (-2 * i) / headDim));
  if (scaling === undefined || scaling === null) return inv;
  const type = scaling.rope_type ?? scaling.type ?? 'default'; // 'type' is the older key
  if (type === 'default') return inv;
  if (type === 'linear') {
    const factor = positive(scaling, 'factor', where);
    return inv.map((f) => f / factor);
  }
  if (type === 'llama3') {
    const factor = positive(scaling, 'factor', where);
    const low = positive(scaling, 'low_freq_factor', where), high = positive(scaling, 'high_freq_factor', where);
    const context = positive(scaling, 'original_max_position_embeddings', where);
    if (high <= low) fail('range', `${where}.high_freq_factor: expected more than low_freq_factor ${low}, got ${high}`);
    return inv.map((f) => {
      const wavelength = (2 * Math.PI) / f;
      if (wavelength < context / high) return f; // high frequencies: as trained
      if (wavelength > context / low) return f / factor; // low frequencies: stretched
      const smooth = (context / wavelength - low) / (high - low);
      return (1 - smooth) * (f / factor) + smooth * f;
    });
  }
  return fail('range', `${where}: rope_type ${describe(type)} is not supported (supported: ${ROPE_TYPES.join(', ')}, or null)`);
}
