// The TCP rendezvous with real processes on loopback.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { connect } from 'node:net';
import { describe, expect, it } from 'vitest';

import { freePort } from './helpers.js';

const script = new URL('./fixtures/rdzv-rank.mjs', import.meta.url).pathname;

interface Outcome {
  ok: boolean;
  payload?: string;
  error?: string;
}

function rank(opts: Record<string, unknown>): Promise<Outcome> {
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, [script, JSON.stringify({ addr: '127.0.0.1', timeoutMs: 10_000, token: 'job-1', ...opts })]);
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    p.on('error', reject);
    p.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out.trim())) : reject(new Error(`exit ${code}`))));
  });
}

const id = randomBytes(128).toString('base64'); // the size of an NCCL unique id

describe('rendezvous', () => {
  it('every rank receives rank 0\'s id, whichever starts first', async () => {
    const port = await freePort();
    const others = [1, 2, 3].map((r) => rank({ rank: r, worldSize: 4, port })); // before rank 0 listens
    await new Promise((r) => setTimeout(r, 300));
    const zero = rank({ rank: 0, worldSize: 4, port, payload: id });
    const all = await Promise.all([zero, ...others]);
    for (const o of all) expect(o).toEqual({ ok: true, payload: id });
  });

  it('a world of one needs nobody', async () => {
    expect(await rank({ rank: 0, worldSize: 1, port: await freePort(), payload: id })).toEqual({ ok: true, payload: id });
  });

  it('a rank with another job\'s token is refused, and the job still completes', async () => {
    const port = await freePort();
    const zero = rank({ rank: 0, worldSize: 2, port, payload: id });
    const intruder = await rank({ rank: 1, worldSize: 2, port, token: 'job-2' });
    expect(intruder.ok).toBe(false);
    expect(intruder.error).toMatch(/rendezvous refused: the job token does not match/);
    expect(await rank({ rank: 1, worldSize: 2, port })).toEqual({ ok: true, payload: id });
    expect(await zero).toEqual({ ok: true, payload: id });
  });

  it('a missing rank times out with an error naming it, on rank 0 and on those that came', async () => {
    const port = await freePort();
    const [zero, one] = await Promise.all([
      rank({ rank: 0, worldSize: 4, port, payload: id, timeoutMs: 1_500 }),
      rank({ rank: 1, worldSize: 4, port, timeoutMs: 5_000 }),
    ]);
    expect(zero.error).toMatch(/^rendezvous timed out after 1500 ms at port \d+: ranks 2, 3 never arrived$/);
    expect(one.error).toBe(zero.error);
  });

  it('a rank that finds no rank 0 gives up at its deadline', async () => {
    const o = await rank({ rank: 1, worldSize: 2, port: await freePort(), timeoutMs: 700 });
    expect(o.error).toMatch(/^rendezvous: rank 1 could not reach rank 0 at 127\.0\.0\.1:\d+ within 700 ms \(ECONNREFUSED\)/);
  });

  it('oversized, garbled and wrong messages are refused without stopping rank 0', async () => {
    const port = await freePort();
    const zero = rank({ rank: 0, worldSize: 2, port, payload: id });
    await new Promise((r) => setTimeout(r, 300));
    const answer = (bytes: Buffer) =>
      new Promise<string>((resolve) => {
        const s = connect(port, '127.0.0.1', () => s.write(bytes));
        let got = Buffer.alloc(0);
        s.on('data', (d) => (got = Buffer.concat([got, d])));
        s.on('close', () => resolve(got.length > 4 ? got.subarray(4).toString() : ''));
        s.on('error', () => {});
      });
    const frame = (body: string) => {
      const b = Buffer.from(body);
      const h = Buffer.alloc(4);
      h.writeUInt32BE(b.length);
      return Buffer.concat([h, b]);
    };
    const huge = Buffer.alloc(4);
    huge.writeUInt32BE(1 << 30);
    expect(await answer(huge)).toMatch(/exceeds the limit of 65536/);
    expect(await answer(frame('{not json'))).toMatch(/not valid JSON/);
    expect(await answer(frame('[1,2]'))).toMatch(/expected \{ token, rank, worldSize \}/);
    expect(await answer(frame(JSON.stringify({ token: 'job-1', rank: 7, worldSize: 2 })))).toMatch(/rank 7 is not in \[1, 1\]/);
    expect(await answer(frame(JSON.stringify({ token: 'job-1', rank: 1, worldSize: 3 })))).toMatch(/worldSize 3 does not match rank 0's 2/);
    expect(await rank({ rank: 1, worldSize: 2, port })).toEqual({ ok: true, payload: id });
    expect(await zero).toEqual({ ok: true, payload: id });
  });
});
