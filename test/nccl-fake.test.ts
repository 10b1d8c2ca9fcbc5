// The NCCL process group (native/nccl/group.cu, unmodified) against a fake NCCL and a fake
// CUDA runtime (test/nccl-fake/): the ring exchange's grouping, the ordering after the
// default stream, and the timeouts and aborts that keep a dead or missing rank from hanging
// the others. CI has neither NCCL nor a GPU; test/gpu/nccl.test.ts covers the real library.
// Skipped, with the reason in the title, where g++ is missing.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('..', import.meta.url));
const why = spawnSync('g++', ['--version']).status === 0 ? '' : 'g++ not found';
const dir = mkdtempSync(join(tmpdir(), 'ra-nccl-fake-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe.skipIf(!!why)(why ? `NCCL group against a fake NCCL (skipped: ${why})` : 'NCCL group against a fake NCCL', () => {
  it('one group per ring exchange, sends after the default stream, ring arguments and allReduce lists compared, timeouts and errors abort instead of hanging', () => {
    const exe = join(dir, 'nccl-fake');
    const args = ['-std=c++20', '-O1', `-I${join(root, 'test', 'nccl-fake')}`, `-I${root}`, join(root, 'test', 'nccl-fake', 'test.cpp'), '-o', exe];
    let b = spawnSync('g++', ['-fsanitize=address', ...args], { encoding: 'utf8' });
    if (b.status !== 0) b = spawnSync('g++', args, { encoding: 'utf8' });
    expect(b.status, b.stderr).toBe(0);
    const r = spawnSync(exe, [], { encoding: 'utf8', env: { ...process.env, ASAN_OPTIONS: 'detect_leaks=0' }, timeout: 60_000 });
    const out = `${r.stdout}${r.stderr}`;
    expect(out).toMatch(/^0 failures$/m);
    expect(out).not.toMatch(/FAIL|ERROR: AddressSanitizer/);
    expect(out.match(/^ {2}ok /gm)?.length ?? 0).toBe(51);
    expect(r.status).toBe(0);
  }, 120_000);
});
