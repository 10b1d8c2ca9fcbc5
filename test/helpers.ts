// Shared by the test files: random inputs as tensors, and reading results back.
import { createServer } from 'node:net';

import { tensor, type DeviceName, type DType, type Tensor } from '../dist/index.js';
import { randomArray, roundTo, type Dims } from './reference.js';

export interface Inputs {
  q: Float32Array;
  k: Float32Array;
  v: Float32Array;
  dout: Float32Array;
}

/** Document ids of packed rows: per row, run d of lengths[row][d] tokens has id d. */
export const documentRuns = (lengths: number[][]) =>
  Int32Array.from(lengths.flatMap((row) => row.flatMap((n, d) => new Array<number>(n).fill(d))));

/** Random q, k, v, dout for `x`, already rounded to `dtype` so the reference sees what the kernel sees. */
export function makeInputs(x: Dims, seed: number, dtype: DType = 'float32'): Inputs {
  const nq = x.batch * x.seqQ * x.heads * x.dim, nk = x.batch * x.seqK * x.kvHeads * x.dim;
  return {
    q: roundTo(dtype, randomArray(nq, seed)),
    k: roundTo(dtype, randomArray(nk, seed + 1)),
    v: roundTo(dtype, randomArray(nk, seed + 2)),
    dout: roundTo(dtype, randomArray(nq, seed + 3)),
  };
}

export function asTensors(x: Dims, inp: Inputs, dtype: DType = 'float32', device: DeviceName = 'cpu') {
  return {
    q: tensor(inp.q, [x.batch, x.seqQ, x.heads, x.dim], { dtype, device }),
    k: tensor(inp.k, [x.batch, x.seqK, x.kvHeads, x.dim], { dtype, device }),
    v: tensor(inp.v, [x.batch, x.seqK, x.kvHeads, x.dim], { dtype, device }),
    dout: tensor(inp.dout, [x.batch, x.seqQ, x.heads, x.dim], { dtype, device }),
  };
}

export const read = (t: Tensor) => t.toFloat32Array();

/** A TCP port that was free a moment ago, for rendezvous tests. */
export async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as { port: number }).port;
  await new Promise((r) => s.close(r));
  return port;
}
