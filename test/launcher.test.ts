// `ring-attention launch` with real processes.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

const cli = new URL('../dist/cli.js', import.meta.url).pathname;
const rankScript = new URL('./fixtures/launch-rank.mjs', import.meta.url).pathname;

function launch(args: string[], env: NodeJS.ProcessEnv = {}) {
  const started = Date.now();
  const r = spawnSync(process.execPath, [cli, 'launch', ...args], { encoding: 'utf8', env: { ...process.env, CUDA_VISIBLE_DEVICES: undefined, ...env }, timeout: 60_000 });
  return { ...r, ms: Date.now() - started };
}

const reports = (stdout: string) => stdout.trim().split('\n').map((l) => JSON.parse(l)).sort((a, b) => a.env.RANK - b.env.RANK);

describe('ring-attention launch', () => {
  it('starts one process per rank with torchrun\'s variables, its GPU, and the script\'s arguments', () => {
    const r = launch(['--nproc-per-node', '3', '--master-port', '29611', '--', rankScript, 'report', '--flag', 'x']);
    expect(r.status).toBe(0);
    const ranks = reports(r.stdout);
    expect(ranks.map((x) => x.env)).toEqual([0, 1, 2].map((i) => ({
      RANK: String(i), WORLD_SIZE: '3', LOCAL_RANK: String(i), LOCAL_WORLD_SIZE: '3', GROUP_RANK: '0', GROUP_WORLD_SIZE: '1',
      ROLE_RANK: String(i), ROLE_WORLD_SIZE: '3', ROLE_NAME: 'default',
      MASTER_ADDR: '127.0.0.1', MASTER_PORT: '29611', RING_ATTENTION_JOB_TOKEN: ranks[0].env.RING_ATTENTION_JOB_TOKEN, CUDA_VISIBLE_DEVICES: String(i),
    })));
    expect(ranks[0].env.RING_ATTENTION_JOB_TOKEN).toMatch(/^[0-9a-f]{24}$/);
    for (const x of ranks) expect(x.args).toEqual(['--flag', 'x']); // after the fixture's mode word
  });

  it('numbers ranks across nodes and maps CUDA_VISIBLE_DEVICES entries to local ranks', () => {
    const r = launch(['--nnodes=2', '--node-rank=1', '--nproc-per-node=2', '--rdzv-id=job42', '--master-addr=10.0.0.1', rankScript, 'report'], { CUDA_VISIBLE_DEVICES: '4,6' });
    expect(r.status).toBe(0);
    expect(reports(r.stdout).map((x) => [x.env.RANK, x.env.WORLD_SIZE, x.env.LOCAL_RANK, x.env.GROUP_RANK, x.env.GROUP_WORLD_SIZE, x.env.ROLE_RANK, x.env.CUDA_VISIBLE_DEVICES, x.env.RING_ATTENTION_JOB_TOKEN]))
      .toEqual([['2', '4', '0', '1', '2', '2', '4', 'job42'], ['3', '4', '1', '1', '2', '3', '6', 'job42']]);
  });

  it('a rank that throws takes the job down, and the launcher exits non-zero with its error', () => {
    const r = launch(['--nproc-per-node', '3', rankScript, 'fail-1']);
    expect(r.status).toBe(1);
    expect(r.ms).toBeLessThan(20_000); // the others were stopped, not waited for (they sleep 60 s)
    expect(r.stderr).toMatch(/ring-attention launch: rank 1 exited with code 1; the other ranks were stopped\.\nrank 1's last error output:\n[\s\S]*boom from rank 1/);
  });

  it("exits with the failing rank's exit code", () => {
    const r = launch(['--nproc-per-node', '3', '--grace-ms', '100', rankScript, 'exit-3']);
    expect(r.status).toBe(3);
    expect(r.stderr).toMatch(/rank 2 exited with code 3/);
  });

  it('forwards SIGTERM to every rank and exits with 143', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ring-attention-launch-'));
    const p = spawn(process.execPath, [cli, 'launch', '--nproc-per-node', '2', rankScript, 'sigterm', dir], { env: { ...process.env, CUDA_VISIBLE_DEVICES: undefined } });
    let ready = 0;
    await new Promise<void>((resolve) => p.stdout.on('data', (d: Buffer) => {
      ready += d.toString().split('ready').length - 1;
      if (ready === 2) resolve();
    }));
    p.kill('SIGTERM');
    const code = await new Promise((resolve) => p.on('exit', resolve));
    expect(code).toBe(143);
    expect(existsSync(join(dir, 'rank-0')) && existsSync(join(dir, 'rank-1'))).toBe(true);
  });

  /** Starts a launch of `mode` ranks; resolves once each has printed 'ready' (with its pid, if it does). */
  async function started(mode: string, args: string[] = [], dir = '') {
    const p = spawn(process.execPath, [cli, 'launch', '--nproc-per-node', '2', ...args, rankScript, mode, dir], { env: { ...process.env, CUDA_VISIBLE_DEVICES: undefined } });
    const pids: number[] = [];
    let out = '';
    await new Promise<void>((resolve) => p.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      const ready = [...out.matchAll(/ready ?(\d*)/g)];
      if (ready.length === 2) resolve(void pids.push(...ready.map((m) => Number(m[1]))));
    }));
    return { p, pids, exit: new Promise<number | null>((resolve) => p.on('exit', resolve)) };
  }
  // Running: not gone, nor a zombie left to an init that reaps slowly (as in some containers).
  const running = (pid: number) => {
    try {
      return !/^\d+ \(.*\) Z /.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
    } catch {
      return false;
    }
  };
  const alive = (pid: number) => {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  };

  it("a Ctrl-C at a terminal (SIGINT to the launcher's process group) reaches each rank once, forwarded: ranks lead groups of their own", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ring-attention-launch-'));
    // The launcher leads a group, as a terminal's foreground job does; the ranks used to be in it.
    const p = spawn(process.execPath, [cli, 'launch', '--nproc-per-node', '2', rankScript, 'count-sigint', dir],
      { env: { ...process.env, CUDA_VISIBLE_DEVICES: undefined }, detached: true });
    let ready = 0;
    await new Promise<void>((resolve) => p.stdout.on('data', (d: Buffer) => {
      ready += d.toString().split('ready').length - 1;
      if (ready === 2) resolve();
    }));
    process.kill(-p.pid!, 'SIGINT');
    expect(await new Promise((resolve) => p.on('exit', resolve))).toBe(130);
    for (const rank of [0, 1]) {
      expect(readFileSync(join(dir, `rank-${rank}`), 'utf8')).toBe('SIGINT\n');
      // Its own group, so the terminal's signal did not reach it directly (two SIGINTs that close
      // together may arrive as one, so the count alone does not tell).
      const [pid, pgrp] = readFileSync(join(dir, `group-${rank}`), 'utf8').split(' ');
      expect(pgrp).toBe(pid);
    }
  });

  it("when a rank fails, what the other ranks started is stopped with them (their process groups are signalled)", async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ring-attention-launch-'));
    const { pids, exit } = await started('helper', ['--grace-ms', '2000'], dir);
    const helper = pids.find((pid) => pid > 0)!;
    expect(running(helper)).toBe(true);
    writeFileSync(join(dir, 'go'), ''); // now rank 1 fails
    expect(await exit).toBe(3);
    await new Promise((r) => setTimeout(r, 200)); // its SIGTERM was sent before the launcher exited
    expect(running(helper)).toBe(false);
  });

  it('forwards SIGHUP too, and exits with 129', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ring-attention-launch-'));
    const { p, exit } = await started('sigterm', [], dir);
    p.kill('SIGHUP');
    expect(await exit).toBe(129);
    expect(readFileSync(join(dir, 'rank-1'), 'utf8')).toBe('got SIGHUP');
  });

  it('ranks that ignore a forwarded signal are killed after the grace period', async () => {
    const { p, pids, exit } = await started('stubborn', ['--grace-ms', '300']);
    const t0 = Date.now();
    p.kill('SIGTERM');
    expect(await exit).toBe(143);
    expect(Date.now() - t0).toBeLessThan(10_000); // not when the ranks' own 60 s wait ends
    expect(pids.filter(alive)).toEqual([]);
  });

  it('a second signal kills the ranks at once, without the 30 s grace', async () => {
    const { p, pids, exit } = await started('stubborn');
    const t0 = Date.now();
    p.kill('SIGINT');
    await new Promise((r) => setTimeout(r, 200));
    p.kill('SIGINT');
    expect(await exit).toBe(130);
    expect(Date.now() - t0).toBeLessThan(10_000);
    expect(pids.filter(alive)).toEqual([]);
  });

  it('after a failure, a rank that ignores SIGTERM keeps the launcher until the failure grace (5 s by default, not the 30 s of a signal), then is killed', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'ring-attention-launch-'));
    const { pids, exit } = await started('go-stubborn', [], dir); // every rank ready: rank 0 ignores SIGTERM
    const t0 = Date.now();
    writeFileSync(join(dir, 'go'), ''); // now rank 1 fails
    expect(await exit).toBe(3);
    const waited = Date.now() - t0;
    expect(waited).toBeGreaterThanOrEqual(4_500); // it waited for rank 0 to end
    expect(waited).toBeLessThan(20_000);
    expect(pids.filter(alive)).toEqual([]);
  });

  it('a signal while the ranks are stopped after a failure still reports that rank, and exits with its code', async () => {
    const { p, pids, exit } = await started('fail-stubborn', ['--grace-ms', '1000']);
    let err = '';
    p.stderr.on('data', (d: Buffer) => (err += d.toString()));
    // Once rank 1 is reaped, the launcher has taken its failure (in the same callback); rank 0
    // ignores the SIGTERM, and its grace period runs.
    while (pids.every(alive)) await new Promise((r) => setTimeout(r, 20));
    p.kill('SIGINT');
    expect(await exit).toBe(3);
    expect(err).toMatch(/rank 1 exited with code 3; the other ranks were stopped\.\nrank 1's last error output:\nrank 1 gives up/);
    expect(pids.filter(alive)).toEqual([]);
  });

  const outright: [string, string, number][] = [
    ['stubborn', 'ranks whose launcher is killed outright (SIGKILL, no handler runs) exit within seconds', 5_000],
    ['blocked', 'ranks blocked in native code (no timer runs) whose launcher is killed outright are killed within seconds', 8_000],
  ];
  for (const [mode, title, limitMs] of outright)
    it(`${title}, and what they started goes with them`, async () => {
      const dir = mkdtempSync(join(tmpdir(), 'ring-attention-launch-'));
      const { p, exit } = await started(mode, [], dir);
      const helpers = [0, 1].map((rank) => Number(readFileSync(join(dir, `helper-${rank}`), 'utf8')));
      expect(helpers.filter(running)).toEqual(helpers);
      p.kill('SIGKILL');
      expect(await exit).toBe(null);
      const t0 = Date.now();
      while (helpers.some(running) && Date.now() - t0 < 2 * limitMs) await new Promise((r) => setTimeout(r, 100));
      expect(helpers.filter(running)).toEqual([]);
    });
  for (const [mode, title, limitMs] of outright)
    it(title, async () => {
      const { p, pids, exit } = await started(mode);
      p.kill('SIGKILL');
      expect(await exit).toBe(null);
      const t0 = Date.now();
      while (pids.some(alive) && Date.now() - t0 < 2 * limitMs) await new Promise((r) => setTimeout(r, 100));
      expect(pids.filter(alive)).toEqual([]);
      expect(Date.now() - t0).toBeLessThan(limitMs);
    });

  it("a script that only a require() hook loads (ts-node's way) runs: the ranks' watch is preloaded with --require, not --import", () => {
    // Outside this package (whose "type": "module" would send any main script to the ES module loader).
    const dir = mkdtempSync(join(tmpdir(), 'ring-attention-hook-'));
    const hook = join(dir, 'ts-hook.cjs'), typed = join(dir, 'rank.ts');
    writeFileSync(hook, "require.extensions['.ts'] = require.extensions['.js']; // as ts-node/register, without the compiling\n");
    writeFileSync(typed, 'console.log(`typed rank ${process.env.RANK} ran`);\n');
    const r = launch(['--nproc-per-node', '2', typed], { NODE_OPTIONS: `--require ${hook}` });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout.trim().split('\n').sort()).toEqual(['typed rank 0 ran', 'typed rank 1 ran']);
  });

  it("the ranks' watch thread leaves the user's NODE_OPTIONS preloads to the rank (one that calls process.chdir, which threads may not)", () => {
    const dir = mkdtempSync(join(tmpdir(), 'ring-attention-chdir-'));
    const preload = join(dir, 'chdir.cjs');
    writeFileSync(preload, "require('node:fs').appendFileSync(__dirname + '/loaded', require('node:worker_threads').threadId + '\\n'); process.chdir(__dirname);\n");
    const r = launch(['--nproc-per-node', '2', rankScript, 'linger'], { NODE_OPTIONS: `--require ${preload}` });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(readFileSync(join(dir, 'loaded'), 'utf8')).toBe('0\n0\n0\n'); // the launcher and each rank, in its main thread alone
  });

  it('a closed stderr does not end the launcher, nor orphan its ranks', async () => {
    const p = spawn(process.execPath, [cli, 'launch', '--nproc-per-node', '2', rankScript, 'noisy'], { env: { ...process.env, CUDA_VISIBLE_DEVICES: undefined } });
    await new Promise((resolve) => p.stderr.once('data', resolve));
    p.stderr.destroy(); // as `launch ... 2>&1 | head -1` does
    expect(await new Promise((resolve) => p.on('exit', resolve))).toBe(0);
  });

  it('refuses bad command lines with usage and exit code 2', () => {
    const cases: [string[], RegExp, NodeJS.ProcessEnv?][] = [
      [[rankScript, 'report'], /--nproc-per-node is required/],
      [['--nproc-per-node', '0', rankScript], /--nproc-per-node: expected an integer in \[1, 1024\], got '0'/],
      [['--nproc-per-node', '2'], /no script given/],
      [['--nproc-per-node', '2', '/nope.js'], /script: no file at \/nope\.js/],
      [['--nproc-per-node', '2', '--bogus', '1', rankScript], /unknown option --bogus/],
      [['--nproc-per-node', '2', '--grace-ms', '3000000000', rankScript], /--grace-ms: expected an integer in \[0, 2147483647\]/],
      [['--nproc-per-node', '2', '--nnodes', '2', rankScript], /--rdzv-id is required with --nnodes > 1/],
      [['--nproc-per-node', '2', '--nnodes', '2', '--rdzv-id', 'a', rankScript], /--node-rank is required with --nnodes > 1/],
      [['--nproc-per-node', '2', '--nnodes', '2', '--node-rank', '0', '--rdzv-id', 'a', rankScript], /--master-addr is required with --nnodes > 1/],
      [['--nproc-per-node', '2', '--nnodes', '2', '--node-rank', '2', '--rdzv-id', 'a', '--master-addr', 'n0', rankScript], /--node-rank: expected an integer in \[0, 1\]/],
      [['--nproc-per-node', '3', rankScript], /CUDA_VISIBLE_DEVICES lists 2 device\(s\), fewer than --nproc-per-node 3/, { CUDA_VISIBLE_DEVICES: '0,1' }],
    ];
    for (const [args, message, env] of cases) {
      const r = launch(args, env);
      expect(r.status, args.join(' ')).toBe(2);
      expect(r.stderr).toMatch(message);
      expect(r.stderr).toMatch(/usage: ring-attention launch/);
    }
  });
});
