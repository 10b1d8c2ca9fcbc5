// launch(): ranks as worker threads, results in rank order, and failure without hangs.
import { describe, expect, it } from 'vitest';

import { launch, tensor } from '../dist/index.js';
import { ProcessGroup } from '../dist/group.js';
import { native } from '../dist/native.js';

const fixture = (name: string) => new URL(`./fixtures/${name}`, import.meta.url);

describe('launch', () => {
  it('allReduce sums in rank order whatever order the ranks join in (the same bits on every run)', async () => {
    expect(await launch({ worldSize: 4 }, fixture('allreduce-order.mjs'))).toEqual([1, 1, 1, 1]);
  });

  it('runs every rank and resolves with their values in rank order', async () => {
    const results = (await launch({ worldSize: 4 }, fixture('group-ops.mjs'), { tag: 'x' })) as any[];
    expect(results.map((r) => r.rank)).toEqual([0, 1, 2, 3]);
    for (const [rank, r] of results.entries()) {
      expect(r.worldSize).toBe(4);
      expect(r.args).toEqual({ tag: 'x' });
      expect(r.device).toBe('cpu');
      expect(Array.from(r.sum)).toEqual([6, 4, 60]); // allReduce(sum) of [rank, 1, 10 rank]
      expect(r.listSums).toEqual([6, 8, 4, 6, 12]); // one allReduce of [rank, 2] and bfloat16 [1, rank, 3]
      expect(r.asyncSum).toBe(8); // allReduceAsync of [rank + 0.5]
      expect(r.errors).toEqual([
        't: expected at least one tensor, got an empty array',
        't[1]: the same tensor as t[0] (each is summed in place once)',
        't[1]: shares its memory with t[0]',
        't[1]: expected a Tensor, got number 5',
      ].map((m, i) => `${i < 3 ? 'RangeError' : 'TypeError'}: ${m}`));
      const prev = (rank + 3) % 4;
      expect(Array.from(r.fromPrev)).toEqual([prev, prev]); // send/recv around the ring
    }
  });

  it('accepts a path string as well as a URL', async () => {
    const path = new URL(fixture('group-ops.mjs')).pathname;
    const results = await launch({ worldSize: 1 }, path);
    expect(results).toHaveLength(1);
  });

  for (const op of ['barrier', 'ring'] as const)
    it(`a rank that throws rejects the launch with its error and releases ranks blocked in ${op}`, async () => {
      const started = Date.now();
      const error = await launch({ worldSize: 4, timeoutMs: 60_000 }, fixture('fail-one.mjs'), { failing: 2, op }).catch((e) => e);
      expect(error).toBeInstanceOf(RangeError);
      expect(error.message).toBe('rank 2 refuses');
      expect(error.rank).toBe(2);
      expect(Date.now() - started).toBeLessThan(20_000); // released by the abort, not by the 60 s timeout
    });

  it("a rank released by the abort that wraps its error (as the cause) does not take the failing rank's place", async () => {
    const error = await launch({ worldSize: 3, timeoutMs: 60_000 }, fixture('fail-one.mjs'), { failing: 0, op: 'barrier', wrap: true }).catch((e) => e);
    expect([error.name, error.message, error.rank]).toEqual(['RangeError', 'rank 0 refuses', 0]); // before: 'layer 3 failed: ...'
  });

  it('a rank stuck in a JavaScript loop is terminated when another fails', async () => {
    const error = await launch({ worldSize: 3 }, fixture('fail-one.mjs'), { failing: 0, spinning: 1 }).catch((e) => e);
    expect(error.message).toBe('rank 0 refuses');
  });

  for (const op of ['barrier', 'recv'] as const)
    it(`a rank that returns early makes peers waiting on it in ${op} fail fast`, async () => {
      const started = Date.now();
      const error = await launch({ worldSize: 3, timeoutMs: 60_000 }, fixture('leave-early.mjs'), { op }).catch((e) => e);
      expect(error).toBeInstanceOf(Error);
      expect(error.message).toMatch(/rank 0, which returned without/);
      expect(Date.now() - started).toBeLessThan(20_000);
    });

  for (const [op, waited] of [['barrier', 'joining it'], ['recv', 'sending it']] as const)
    it(`a rank that destroys its group makes peers waiting on it in ${op} fail fast, saying so`, async () => {
      const started = Date.now();
      const error = await launch({ worldSize: 3, timeoutMs: 60_000 }, fixture('leave-early.mjs'), { op, destroy: true }).catch((e) => e);
      expect(error.message).toMatch(new RegExp(`rank 0, which destroyed its group without ${waited}$`));
      expect(Date.now() - started).toBeLessThan(20_000);
    });

  it('a peer that does not arrive in time gives a timeout error naming the wait', async () => {
    const error = await launch({ worldSize: 2, timeoutMs: 300 }, fixture('slow-peer.mjs'), { sleepMs: 5_000 }).catch((e) => e);
    expect(error.message).toMatch(/rank 0 timed out after 300 ms waiting for every rank to join a collective/);
  });

  // Every rank compares its arguments with the others' before any block moves, and the error
  // (or the abort it causes in a rank that had not yet thrown) names what differs.
  for (const [mismatch, said] of [
    ['shard', 'shard length 4 vs 6'],
    ['causal', 'causal false vs true'],
    ['layout', 'layout contiguous vs zigzag'],
  ] as const)
    it(`ranks that pass different arguments (${mismatch}) are refused up front, naming what differs`, async () => {
      const error = await launch({ worldSize: 3 }, fixture('mismatched-shards.mjs'), { mismatch }).catch((e) => e);
      expect(error).toBeInstanceOf(Error);
      expect(error.message).toContain(`the ranks passed different arguments (rank 0 and rank 1 differ: ${said})`);
      expect(error.message).toMatch(/every rank must pass shards of the same shape/);
    });

  it('a ring call that failed part-way aborts the group: a caught error is not followed by stale blocks', async () => {
    const out = (await launch({ worldSize: 3 }, fixture('ring-retry.mjs'))) as { first: string; second: string }[];
    expect(out[1]!.first).toBe('Error: ring step 0 failed as asked (failAtStep, a test)');
    for (const r of [out[0]!, out[2]!]) expect(r.first).toMatch(/group aborted: rank 1 failed in ring attention: ring step 0 failed/);
    for (const r of out) expect(r.second).toMatch(/group aborted: rank 1 failed in ring attention: ring step 0 failed/);
  });

  it('resolves once every rank has returned, even if a rank leaves a timer running', async () => {
    const started = Date.now();
    expect(await launch({ worldSize: 2 }, fixture('leaves-timer.mjs'))).toEqual([0, 1]);
    expect(Date.now() - started).toBeLessThan(20_000);
  });

  it('a group whose launch has ended (or never began) is refused', () => {
    const stale = ProcessGroup.attach(123_456_789, 0, 1);
    expect(() => stale.barrier()).toThrow(/^group 123456789 is not active: groups live only inside their launch\(\)/);
  });

  it("a group's rank and world size cannot be reassigned (they pick the native peer)", () => {
    const group = ProcessGroup.attach(123_456_789, 0, 2);
    expect(() => ((group as any).rank = 1)).toThrow(TypeError);
    expect(() => ((group as any).worldSize = 4)).toThrow(TypeError);
    expect([group.rank, group.worldSize]).toEqual([0, 2]);
  });

  it('collective calls that do not match are named, not summed crosswise', async () => {
    const order = '; every rank must make the same collective calls, with the same tensors, in the same order';
    const expected = {
      order: "rank 1's allReduce tensor 0 is 3 float32 elements, rank 0's 2 float32 elements",
      dtype: "rank 1's allReduce tensor 0 is 2 float16 elements, rank 0's 2 float32 elements",
      count: "rank 1's allReduce has 2 tensors, rank 0's 1",
      kind: "rank 1 is in barrier() while rank 0 is in ring attention's argument check",
    };
    for (const [mode, why] of Object.entries(expected)) {
      const [zero, one] = (await launch({ worldSize: 2 }, fixture('collective-mismatch.mjs'), { mode, sync: new SharedArrayBuffer(8) })) as any[];
      expect(one, mode).toEqual({ name: 'RangeError', message: why + order });
      expect(zero, mode).toEqual({ name: 'Error', message: 'group aborted: ' + why + order });
    }
  });

  it('a recv() from the rank itself with nothing sent fails at once', async () => {
    const started = Date.now();
    const self = (await launch({ worldSize: 2, timeoutMs: 60_000 }, fixture('recv-misuse.mjs'), { mode: 'self' })) as string[];
    expect(self).toEqual([0, 1].map((r) => `rank ${r} waits for a send() from rank ${r} (itself), which it has not sent`));
    expect(Date.now() - started).toBeLessThan(20_000); // not the 60 s timeout
  });

  for (const [mode, call] of [['across-allreduce', 'allReduce'], ['across-ring', "ring attention's argument check"]] as const)
    it(`a send() received only after a later collective (${mode}) is refused, as over NCCL it would hang`, async () => {
      const out = (await launch({ worldSize: 2 }, fixture('recv-misuse.mjs'), { mode })) as string[];
      const why = `rank 0 sent rank 1 a tensor that rank 1 had not received when every rank joined ${call}; over NCCL that send ` +
        'would go out before the collective and hang (or meet its traffic): recv() it before the collective, or send() it after';
      // The last rank to arrive throws it; the other, released by the abort, says so.
      expect(out.slice().sort()).toEqual(['group aborted: ' + why, why]);
    });

  // Only rank threads send, so once every rank still in the group waits and none can be met the
  // group aborts at once, naming each wait (before, only the timeout ended it).
  const rule = '; a recv() needs a send() from its peer, and every rank must make the same collective calls in the same order';
  for (const [mode, worldSize, waits] of [
    ['cycle', 3, ['rank 0 waits for a send() from rank 1', 'rank 1 waits for a send() from rank 2', 'rank 2 waits for a send() from rank 0']],
    ['mixed', 3, ['rank 0 waits for every rank to join a collective (barrier())', 'rank 1 waits for a send() from rank 0', 'rank 2 waits for a send() from rank 0']],
    ['after-leave', 3, ['rank 1 waits for a send() from rank 2', 'rank 2 waits for a send() from rank 1']],
  ] as const)
    it(`a deadlock (${mode}) aborts the group at once, naming every wait`, async () => {
      const started = Date.now();
      const out = (await launch({ worldSize, timeoutMs: 60_000 }, fixture('recv-misuse.mjs'), { mode })) as string[];
      const message = `group aborted: deadlock: every rank still in the group waits and none can be met (${waits.join('; ')})${rule}`;
      expect(out).toEqual(mode === 'after-leave' ? ['left', message, message] : Array(worldSize).fill(message));
      expect(Date.now() - started).toBeLessThan(20_000); // not the 60 s timeout
    });

  it('a rank module that does not parse is named, as a SyntaxError; a function that never settles is said to', async () => {
    const syntax = await launch({ worldSize: 2 }, fixture('syntax-error.mjs')).catch((e) => e);
    expect(syntax).toBeInstanceOf(SyntaxError);
    expect(syntax.message).toMatch(/^file:\/\/.*\/syntax-error\.mjs: Unexpected identifier/);
    const never = await launch({ worldSize: 2 }, fixture('never-settles.mjs')).catch((e) => e);
    expect(never.message).toMatch(/^rank [01]'s function returned a promise that never settled/);
  });

  it('an allReduce that timed out is not retried into a wrong sum: the group is aborted', async () => {
    // rank 0 catches its timeout and retries; before the fix the retry returned 2 (its own value twice)
    const [zero, one] = (await launch({ worldSize: 2, timeoutMs: 300 }, fixture('allreduce-retry.mjs'), { sync: new SharedArrayBuffer(4) })) as any[];
    expect(zero.first).toMatch(/^rank 0 timed out after 300 ms waiting for every rank to join a collective/);
    expect(zero.second).toMatch(/^group aborted: rank 0 timed out/);
    expect(zero.retried).toBeUndefined();
    expect(one.error).toMatch(/^group aborted: rank 0 timed out/);
  });

  it('args that cannot be sent to the ranks are a TypeError naming args', async () => {
    await expect(launch({ worldSize: 2 }, fixture('group-ops.mjs'), { f: () => 1 })).rejects.toThrow(/^args: cannot be sent to the ranks' threads/);
  });

  it('internal handles misused from JavaScript throw instead of crashing', () => {
    const stale = ProcessGroup.attach(123_456_789, 0, 1);
    expect(() => stale.send(tensor(new Float32Array(1), [1]), 0)).toThrow(/not active/);
    const t = tensor(new Float32Array(1), [1]);
    const EmptyHandle = (t as any).handle('t').constructor;
    expect(() => new EmptyHandle().toFloat32Array()).toThrow(/tensor has been disposed/);
    // a raw handle: disposed twice, then used; a look-alike (its prototype, a faked instanceof)
    const raw = (t as any).handle('t');
    raw.dispose();
    raw.dispose();
    expect(() => raw.toFloat32Array()).toThrow(new TypeError('tensor has been disposed'));
    expect(() => native.opsScale(raw, 2)).toThrow(new TypeError('t: tensor has been disposed'));
    const lookAlike = Object.create(EmptyHandle.prototype);
    expect(() => lookAlike.toFloat32Array()).toThrow(/expected a tensor handle/);
    expect(() => lookAlike.dispose()).not.toThrow();
    Object.defineProperty(EmptyHandle, Symbol.hasInstance, { value: () => true, configurable: true });
    expect(() => native.opsScale({} as any, 2)).toThrow(new TypeError('t: expected a tensor handle'));
    delete EmptyHandle[Symbol.hasInstance];
  });

  it('native calls keep their tensors alive while JS code they run (getters) disposes them', () => {
    const a = tensor(Float32Array.of(1, 2), [2]), b = tensor(Float32Array.of(3), [1]);
    const list = [a.handle('a'), b.handle('b')];
    Object.defineProperty(list, 1, { get: () => (a.dispose(), b.handle('b')) });
    expect(native.opsSumOfSquares(list)).toBe(14); // before: a null pointer read
    // a shape getter that detaches the data's buffer runs before the data is read
    let data: Float32Array | null = new Float32Array(1 << 16).fill(1);
    const shape = [0];
    Object.defineProperty(shape, 0, { get: () => (structuredClone(data!.buffer, { transfer: [data!.buffer] }), 1 << 16) });
    expect(() => native.createTensor(data!, shape, 0, 0)).toThrow(/data: length does not match shape/);
    data = null;
  });

  it('a return value that cannot cross threads is a TypeError', async () => {
    const error = await launch({ worldSize: 2 }, fixture('returns-function.mjs')).catch((e) => e);
    expect(error).toBeInstanceOf(TypeError);
    expect(error.message).toMatch(/cannot be sent between threads/);
  });

  it('a module without a default export function is a TypeError', async () => {
    const error = await launch({ worldSize: 1 }, fixture('no-default.mjs')).catch((e) => e);
    expect(error).toBeInstanceOf(TypeError);
    expect(error.message).toMatch(/has no default export function/);
  });

  it('bad options and modules are refused before any rank starts', async () => {
    await expect(launch({ worldSize: 0 }, fixture('group-ops.mjs'))).rejects.toThrow(RangeError);
    await expect(launch({ worldSize: 0 }, fixture('group-ops.mjs'))).rejects.toThrow(/opts\.worldSize: expected an integer in \[1, 256\], got 0/);
    await expect(launch({ worldSize: 1.5 }, fixture('group-ops.mjs'))).rejects.toThrow(/opts\.worldSize/);
    await expect(launch({ worldSize: '2' } as any, fixture('group-ops.mjs'))).rejects.toThrow(TypeError);
    await expect(launch({ worldSize: 2, backend: 'mpi' } as any, fixture('group-ops.mjs'))).rejects.toThrow(/opts\.backend: expected one of 'local'/);
    await expect(launch({ worldSize: 2, timeoutMs: -1 }, fixture('group-ops.mjs'))).rejects.toThrow(/opts\.timeoutMs/);
    await expect(launch({ worldSize: 2, timeoutMs: 2 ** 40 }, fixture('group-ops.mjs'))).rejects.toThrow(/opts\.timeoutMs: expected an integer in \[1, 2147483647\]/);
    await expect(launch(undefined as any, fixture('group-ops.mjs'))).rejects.toThrow(TypeError);
    await expect(launch({ worldSize: 2 }, '/nonexistent/rank.mjs')).rejects.toThrow(/module: no file at \/nonexistent\/rank\.mjs/);
    await expect(launch({ worldSize: 2 }, 42 as any)).rejects.toThrow(TypeError);
  });

  it('ring misuse inside a rank throws errors that name the argument', async () => {
    const [r] = (await launch({ worldSize: 1 }, fixture('ring-misuse.mjs'))) as any[];
    expect(r.zigzagOdd).toEqual({ name: 'RangeError', message: expect.stringMatching(/^q: the zigzag layout .* this one has 3/) });
    expect(r.seqMismatch).toEqual({ name: 'RangeError', message: expect.stringMatching(/^k: this rank's shard has 3 tokens, q's has 4/) });
    expect(r.badLayout).toEqual({ name: 'RangeError', message: expect.stringMatching(/^opts\.layout: expected one of 'contiguous', 'zigzag', got 'spiral'/) });
    expect(r.fakeGroup).toEqual({ name: 'TypeError', message: expect.stringMatching(/^opts\.group: expected a ProcessGroup from launch\(\) or initProcessGroup\(\)/) });
    expect(r.noOpts).toEqual({ name: 'TypeError', message: expect.stringMatching(/^opts: expected \{ group \}/) });
    expect(r.badLse).toEqual({ name: 'RangeError', message: expect.stringMatching(/^lse: expected shape \[batch, heads, seqQ\] = \[1, 1, 4\], got \[1, 4, 1, 4\]/) });
    expect(r.badPeer).toEqual({ name: 'RangeError', message: expect.stringMatching(/^peer: expected an integer in \[0, 0\], got 5/) });
    expect(r.recvSize).toEqual({ name: 'RangeError', message: expect.stringMatching(/^into: rank 0 sent 16 elements, this tensor holds 12; send\(\) and recv\(\) must agree in dtype and element count/) });
    // As over NCCL, where another dtype's bytes would hang the recv or be read as another type.
    expect(r.recvDtype).toEqual({ name: 'TypeError', message: expect.stringMatching(/^into: rank 0 sent bfloat16, this tensor is float32; send\(\) and recv\(\) must agree/) });
    expect(r.lseOk).toBeNull();
  });
});
