// initProcessGroup({ backend: 'nccl' }) on a machine without NCCL or a GPU: every failure
// is an error that says what is missing and how to fix it. (The GPU side is test/gpu/nccl.test.ts.)
import { spawnSync } from 'node:child_process';

import { afterEach, describe, expect, it } from 'vitest';

import { initProcessGroup } from '../dist/index.js';
import { findCublas, findLibrary, LIBRARIES } from '../dist/libraries.js';

const env = { RANK: '0', WORLD_SIZE: '2', LOCAL_RANK: '0', MASTER_ADDR: '127.0.0.1', MASTER_PORT: '29777' };
const saved = process.env.RING_ATTENTION_NCCL_PATH;
afterEach(() => {
  if (saved === undefined) delete process.env.RING_ATTENTION_NCCL_PATH;
  else process.env.RING_ATTENTION_NCCL_PATH = saved;
});

const ncclHere = findLibrary(LIBRARIES.nccl).path !== null;

describe('initProcessGroup', () => {
  it('refuses bad options before anything else', async () => {
    await expect(initProcessGroup({ backend: 'gloo' } as any)).rejects.toThrow(/^opts\.backend: expected 'nccl' \(groups of threads come from launch\(\)\), got "gloo"/);
    await expect(initProcessGroup(undefined as any)).rejects.toThrow(TypeError);
    await expect(initProcessGroup({ backend: 'nccl', timeoutMs: 0, env })).rejects.toThrow(/^opts\.timeoutMs/);
    await expect(initProcessGroup({ backend: 'nccl', rendezvousTimeoutMs: 1.5, env })).rejects.toThrow(/^opts\.rendezvousTimeoutMs/);
    await expect(initProcessGroup({ backend: 'nccl', env: {} })).rejects.toThrow(/no RANK\/WORLD_SIZE/);
  });

  it.skipIf(ncclHere)('without NCCL: an error that lists where it looked and how to point at it', async () => {
    delete process.env.RING_ATTENTION_NCCL_PATH;
    const error = await initProcessGroup({ backend: 'nccl', env }).catch((e) => e);
    expect(error.message).toMatch(/^initProcessGroup: NCCL \(libnccl\.so\.2\) was not found; looked in libnccl\.so\.2, \/usr\/local\/cuda\/lib64\/libnccl\.so\.2, /);
    expect(error.message).toMatch(/Install it \(pip install nvidia-nccl-cu13, or the system package libnccl2\), or set RING_ATTENTION_NCCL_PATH to the library or its directory\./);
  });

  it('RING_ATTENTION_NCCL_PATH is looked at first', async () => {
    process.env.RING_ATTENTION_NCCL_PATH = '/opt/nowhere/libnccl.so.2';
    expect(findLibrary(LIBRARIES.nccl).searched[0]).toBe('/opt/nowhere/libnccl.so.2');
    process.env.RING_ATTENTION_NCCL_PATH = '/opt/nowhere';
    expect(findLibrary(LIBRARIES.nccl).searched[0]).toBe('/opt/nowhere/libnccl.so.2');
  });

  it('without libcublas, libcublasLt says why it was not looked for (not an empty list of places)', () => {
    const [cublas, lt] = findCublas({ ...LIBRARIES.cublas, name: 'libnocublas.so.13' });
    expect(cublas.path).toBeNull();
    expect(cublas.searched).toContain('libnocublas.so.12');
    expect(lt.path).toBeNull();
    expect(lt.skipped).toBe('not looked for: it is used only with libnocublas.so.13, which was not found');
  });

  it('a library that is not NCCL is refused, naming the missing symbol', async () => {
    process.env.RING_ATTENTION_NCCL_PATH = findLibrary({ name: 'libstdc++.so.6', envVar: 'NONE', wheelDirs: [] }).path!;
    const error = await initProcessGroup({ backend: 'nccl', env }).catch((e) => e);
    expect(error.message).toMatch(/libstdc\+\+\.so\.6 is not a usable NCCL: it has no ncclGetVersion \(NCCL 2\.19 or newer is needed\)/);
  });

  // In a child with every GPU hidden, so that it runs on the GPU machine (which has NCCL) too.
  it.skipIf(!ncclHere)(`with NCCL but no GPU: says the backend needs a CUDA device${ncclHere ? '' : ' (skipped: NCCL is not installed here)'}`, () => {
    const index = JSON.stringify(new URL('../dist/index.js', import.meta.url).href);
    const script = `const { initProcessGroup } = await import(${index});
initProcessGroup({ backend: 'nccl', env: ${JSON.stringify(env)} }).then(() => console.log('not refused'), (e) => console.log(e.message));`;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8', timeout: 60_000, env: { ...process.env, CUDA_VISIBLE_DEVICES: '' } });
    expect(r.stdout, `exit ${r.status}, stderr: ${r.stderr}`).toMatch(/the 'nccl' backend needs a CUDA device/);
  });
});
