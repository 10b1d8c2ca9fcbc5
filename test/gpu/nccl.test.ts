// An NCCL group of one on the GPU machine (NCCL refuses two ranks on one GPU, so larger
// groups are exercised by the in-process ring): init through the rendezvous, allReduce,
// barrier, destroy. Skipped, with the reason in the title, where there is no GPU or NCCL.
import { describe, expect, it } from 'vitest';

import { freePort } from '../helpers.js';

import { info, initProcessGroup, tensor } from '../../dist/index.js';
import { findLibrary, LIBRARIES } from '../../dist/libraries.js';

const cuda = info().cuda;
const nccl = findLibrary(LIBRARIES.nccl);
const why = !cuda.available ? cuda.reason : !nccl.path ? 'libnccl.so.2 not found' : '';

describe.skipIf(!!why)(why ? `NCCL group (skipped: ${why})` : 'NCCL group', () => {
  it('a group of one: allReduce is the identity, barrier returns, destroy releases it', async () => {
    const env = { RANK: '0', WORLD_SIZE: '1', LOCAL_RANK: '0', MASTER_ADDR: '127.0.0.1', MASTER_PORT: String(await freePort()) };
    const group = await initProcessGroup({ backend: 'nccl', env, timeoutMs: 60_000 });
    expect([group.backend, group.rank, group.worldSize]).toEqual(['nccl', 0, 1]);
    for (const dtype of ['float32', 'bfloat16'] as const) {
      const t = tensor(new Float32Array([1, -2, 3.5]), [3], { dtype, device: 'cuda' });
      group.allReduce(t);
      expect(Array.from(await t.toFloat32Array())).toEqual([1, -2, 3.5]);
    }
    group.barrier();
    expect(() => group.allReduce(tensor(new Float32Array(1), [1]))).toThrow(/^t: an NCCL group works on 'cuda' tensors, got 'cpu'/);
    expect(() => group.send(tensor(new Float32Array(1), [1], { device: 'cuda' }), 0)).toThrow(/cannot send to or receive from its own rank/);
    group.destroy();
    expect(() => group.barrier()).toThrow(/this group has been destroyed/);
  });
});
