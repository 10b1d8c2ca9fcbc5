// Tensors: a typed handle on native memory (host or CUDA device), freed by dispose().
import { isFloat32Array } from 'node:util/types';

import { checkOneOf, checkOptions, describe, fail } from './errors.js';
import { deviceProblem } from './cuda-arch.js';
import { cudaInfo, currentCudaDevice, native, type TensorHandle } from './native.js';

export type DType = 'float32' | 'bfloat16' | 'float16';
export type DeviceName = 'cpu' | 'cuda';

export const DTYPES: readonly DType[] = ['float32', 'bfloat16', 'float16']; // index = native enum
export const DEVICES: readonly DeviceName[] = ['cpu', 'cuda'];

export interface TensorOptions {
  /** Storage type; compute is float32 on the CPU whatever this is. Default 'float32'. */
  dtype?: DType;
  /** Default 'cpu'. 'cuda' needs a CUDA device (see `info()`). */
  device?: DeviceName;
}

const MAKE = Symbol('Tensor.fromHandle'); // the one way in: JavaScript can call a private constructor

export class Tensor implements Disposable {
  readonly shape: readonly number[];
  readonly dtype: DType;
  readonly device: DeviceName;
  #handle: TensorHandle | null;

  private constructor(token: symbol, handle: TensorHandle, shape: readonly number[], dtype: DType, device: DeviceName) {
    if (token !== MAKE) fail('type', 'new Tensor(): tensors are made by tensor(), zeros() and the library\'s functions');
    this.#handle = handle;
    this.shape = Object.freeze([...shape]);
    this.dtype = dtype;
    this.device = device;
    // Frozen: the checks in this layer read these fields, and plain JavaScript could otherwise
    // overwrite them (`t.shape = [...]`) and send the native code a shape its memory lacks.
    Object.freeze(this);
    made?.push(this);
  }

  /** @internal Whether value was made by this class (not only given its prototype). */
  static isTensor(value: unknown): value is Tensor {
    return typeof value === 'object' && value !== null && #handle in value;
  }

  /** @internal */
  static fromHandle(handle: TensorHandle, shape: readonly number[], dtype: DType, device: DeviceName): Tensor {
    return new Tensor(MAKE, handle, shape, dtype, device);
  }

  /** @internal The native handle; throws, naming the argument, once disposed. */
  handle(name: string): TensorHandle {
    if (this.#handle === null) fail('type', `${name}: tensor has been disposed`);
    return this.#handle;
  }

  get disposed(): boolean {
    return this.#handle === null;
  }

  get numel(): number {
    return this.shape.reduce((a, b) => a * b, 1);
  }

  /** Copies the values out as float32 (converting bfloat16/float16). */
  async toFloat32Array(): Promise<Float32Array> {
    return this.handle('tensor').toFloat32Array();
  }

  /** Frees the memory now. Idempotent; any later use throws. */
  dispose(): void {
    this.#handle?.dispose();
    this.#handle = null;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

/** Tensors made while freeOnThrow's function runs (null outside one). */
let made: Tensor[] | null = null;

/**
 * @internal Runs f; if it throws, every tensor made while it ran is freed at once, so that a
 * failed training step (out of GPU memory, say) holds nothing until the garbage collector
 * gets to it. On success the tensors are the caller's, as usual.
 */
export function freeOnThrow<T>(f: () => T): T {
  const outer = made;
  const mine: Tensor[] = [];
  made = mine;
  try {
    const r = f();
    outer?.push(...mine); // an enclosing freeOnThrow still answers for them
    return r;
  } catch (e) {
    for (const t of mine) t.dispose();
    throw e;
  } finally {
    made = outer;
  }
}

export function checkTensor(value: unknown, name: string): Tensor {
  if (!Tensor.isTensor(value))
    fail('type', `${name}: expected a Tensor, got ${value instanceof Tensor ? "an object with Tensor's prototype, not made by tensor() or zeros()" : describe(value)}`);
  value.handle(name);
  return value;
}

/** A checked copy of the shape: each entry read once (a getter cannot answer two checks differently). */
function checkShape(given: unknown, name: string): readonly number[] {
  if (!Array.isArray(given)) fail('type', `${name}: expected an array of integers, got ${describe(given)}`);
  const shape: unknown[] = Array.from(given); // holes too
  let numel = 1;
  for (let i = 0; i < shape.length; ++i) {
    const d = shape[i];
    if (typeof d !== 'number' || !Number.isSafeInteger(d) || d < 0)
      fail('range', `${name}[${i}]: expected a non-negative integer, got ${describe(d)}`);
    numel *= d;
  }
  // Past 2^53 the element count is no longer exact; a product with a 0 is 0 whatever the rest.
  if (!(numel <= Number.MAX_SAFE_INTEGER))
    fail('range', `${name}: [${shape.join(', ')}] holds more than 2^53 elements`);
  return shape as number[];
}

export function checkDevice(device: DeviceName, name: string): void {
  if (device !== 'cuda') return;
  const cuda = cudaInfo();
  if (!cuda.available) fail('range', `${name}: 'cuda' is not available here (${cuda.reason}); use 'cpu'`);
  const problem = deviceProblem(cuda, currentCudaDevice());
  if (problem) fail('range', `${name}: ${problem}`);
}

function dtypeAndDevice(opts: unknown): { dtype: DType; device: DeviceName } {
  const o = checkOptions(opts, 'opts', ['dtype', 'device']);
  return { dtype: checkOneOf(o.dtype, 'opts.dtype', DTYPES) ?? 'float32', device: checkOneOf(o.device, 'opts.device', DEVICES) ?? 'cpu' };
}

/** A tensor holding `data` (row-major) with the given shape. */
export function tensor(data: Float32Array, shape: readonly number[], opts?: TensorOptions): Tensor {
  if (!isFloat32Array(data)) fail('type', `data: expected a Float32Array, got ${describe(data)}`);
  shape = checkShape(shape, 'shape');
  const { dtype, device } = dtypeAndDevice(opts);
  const numel = shape.reduce((a, b) => a * b, 1);
  if (numel !== data.length)
    fail('range', `shape: [${shape.join(', ')}] holds ${numel} elements, but data has ${data.length}`);
  checkDevice(device, 'opts.device');
  const handle = native.createTensor(data, [...shape], DTYPES.indexOf(dtype), DEVICES.indexOf(device));
  return Tensor.fromHandle(handle, shape, dtype, device);
}

/** A tensor of zeros with the given shape, made on its device (no host array of its size). */
export function zeros(shape: readonly number[], opts?: TensorOptions): Tensor {
  shape = checkShape(shape, 'shape');
  const { dtype, device } = dtypeAndDevice(opts);
  checkDevice(device, 'opts.device');
  return Tensor.fromHandle(native.createZeros([...shape], DTYPES.indexOf(dtype), DEVICES.indexOf(device)), shape, dtype, device);
}
