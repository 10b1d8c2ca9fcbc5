// Argument checks shared by the public functions. Each message names the argument and
// says what was expected, as users see it.
import { inspect } from 'node:util';

/** The longest delay a Node.js timer honours (about 24.8 days); longer ones fire at once. */
export const MAX_TIMER_MS = 2 ** 31 - 1;
/** How long a rank waits for its peers, unless told otherwise: 5 minutes. */
export const DEFAULT_TIMEOUT_MS = 300_000;

export function fail(kind: 'type' | 'range', message: string): never {
  throw kind === 'type' ? new TypeError(message) : new RangeError(message);
}

export function checkBoolean(value: unknown, name: string): boolean | undefined {
  if (value !== undefined && typeof value !== 'boolean') fail('type', `${name}: expected a boolean, got ${describe(value)}`);
  return value as boolean | undefined;
}

/**
 * A number the native code takes as a float32, checked as that float32: 1e39 would become
 * Infinity there, and an eps of 1e-50 would become 0.
 */
export function checkFloat32(value: unknown, name: string, min = -Infinity, minInclusive = true): number {
  if (typeof value !== 'number') fail('type', `${name}: expected a number, got ${describe(value)}`);
  const ok = (x: number) => Number.isFinite(x) && (minInclusive ? x >= min : x > min);
  if (!ok(Math.fround(value)))
    fail('range', `${name}: expected a finite number${min === -Infinity ? '' : ` ${minInclusive ? '>=' : '>'} ${min}`}${ok(value) ? ' as a float32' : ''}, got ${value}`);
  return value;
}

/** A beta of Adam's: in [0, 1) as the float32 the native optimizer takes (1 - 1e-10 is 1 there). */
export function checkBeta(value: unknown, name: string): number {
  const b = checkFloat32(value, name, 0);
  if (Math.fround(b) >= 1) fail('range', `${name}: expected a number in [0, 1) as a float32, got ${b}`);
  return b;
}

export function checkPositiveNumber(value: unknown, name: string): number | undefined {
  return value === undefined ? undefined : checkFloat32(value, name, 0, false);
}

export function checkInteger(value: unknown, name: string, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof value !== 'number') fail('type', `${name}: expected an integer, got ${describe(value)}`);
  if (!Number.isInteger(value) || value < min || value > max)
    fail('range', `${name}: expected an integer in [${min}, ${max}], got ${value}`);
  return value;
}

export function checkOneOf<T extends string>(value: unknown, name: string, allowed: readonly T[]): T | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== 'string' || !allowed.includes(value as T))
    fail(typeof value === 'string' ? 'range' : 'type', `${name}: expected one of ${allowed.map((a) => `'${a}'`).join(', ')}, got ${describe(value)}`);
  return value as T;
}

/**
 * An options object (undefined reads as {}). A key outside `known` that holds a value is refused:
 * a misspelt option (`casual: true`) would otherwise be ignored, and the call run without it.
 */
export function checkOptions(value: unknown, name: string, known: readonly string[], internal: readonly string[] = []): Record<string, unknown> {
  if (value === undefined) return {};
  if (value === null || typeof value !== 'object') fail('type', `${name}: expected an options object, got ${describe(value)}`);
  const o = value as Record<string, unknown>;
  // `internal` keys (for tests and benchmarks) are taken but not offered in the message.
  for (const key of Object.keys(o))
    if (!known.includes(key) && !internal.includes(key) && o[key] !== undefined)
      fail('type', `${name}.${clip(key, 40)}: not an option here; expected ${known.join(', ')}`);
  return o;
}

/**
 * What a rank threw, as an Error: a thrown non-Error ({ code: 1 }, null, a string) is shown as
 * inspect shows it, not '[object Object]', and gains a message and a stack to carry.
 */
export function rankError(e: unknown, rank: number): Error {
  return e instanceof Error ? e : new Error(`rank ${rank} threw a non-Error value: ${inspect(e, { depth: 2, breakLength: Infinity })}`);
}

/** At most n characters of s, then '...' if it was longer: what a message quotes of a string it did not choose. */
function clip(s: string, n: number): string {
  return s.length <= n ? s : `${s.slice(0, n)}...`;
}

/** A JSON-style object: not null, not an array. */
export const isObject = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);

export function describe(value: unknown): string {
  if (value === undefined) return 'nothing';
  if (value === null) return 'null';
  if (Array.isArray(value)) return `an array of length ${value.length}`;
  // A string from a file (a hostile header's dtype of 50 MB) must not make the message as long.
  if (typeof value === 'string') return value.length <= 100 ? `'${value}'` : `'${clip(value, 100)}' (${value.length} characters)`;
  if (typeof value === 'object') {
    // From the prototype, not the value: parsed JSON may carry a 'constructor' key of its own.
    const name: unknown = Object.getPrototypeOf(value)?.constructor?.name;
    return typeof name === 'string' && name !== '' ? name : 'an object';
  }
  return `${typeof value} ${String(value)}`;
}
