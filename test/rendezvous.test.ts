// The TCP rendezvous with real processes on loopback.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { connect, createServer, type Socket } from 'node:net';
import { describe, expect, it } from 'vitest';

import { rankRanges } from '../dist/rendezvous.js';
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

/** One length-prefixed message, as the rendezvous frames them. */
function frame(body: string): Buffer {
  const b = Buffer.from(body);
  const h = Buffer.alloc(4);
  h.writeUInt32BE(b.length);
  return Buffer.concat([h, b]);
}

const id = randomBytes(128).toString('base64'); // the size of an NCCL unique id

/** What rank 0 answers to `bytes`, sent from this process: its error text, or '' for none. */
function answer(port: number, bytes: Buffer): Promise<string> {
  return new Promise<string>((resolve) => {
    const s = connect(port, '127.0.0.1', () => s.write(bytes));
    let got = Buffer.alloc(0);
    s.on('data', (d) => (got = Buffer.concat([got, d])));
    s.on('close', () => resolve(got.length > 4 ? got.subarray(4).toString() : ''));
    s.on('error', () => {});
  });
}

/** Resolves once rank 0 (a process just started, slow on a loaded machine) accepts connections. */
async function listening(port: number): Promise<void> {
  for (const t0 = Date.now(); Date.now() - t0 < 20_000; await new Promise((r) => setTimeout(r, 50))) {
    const up = await new Promise<boolean>((resolve) => {
      const s = connect(port, '127.0.0.1', () => resolve(true)).on('error', () => resolve(false));
      s.on('connect', () => s.destroy());
    });
    if (up) return;
  }
  throw new Error(`nothing listens on port ${port}`);
}

/** Whether something accepts a connection on host:port (within 5 s: a dropped SYN is no answer). */
function accepts(port: number, host: string): Promise<boolean> {
  return new Promise<boolean>((resolve) => {
    const s = connect(port, host, () => (s.destroy(), resolve(true))).on('error', () => resolve(false));
    s.setTimeout(5_000, () => (s.destroy(), resolve(false)));
  });
}

// All of 127/8 is loopback on Linux; a container or another OS may route only 127.0.0.1.
const loopback2 = await new Promise<boolean>((resolve) => {
  const s = createServer().on('error', () => resolve(false));
  s.listen(0, '127.0.0.2', () => s.close(() => resolve(true)));
});

describe('rendezvous', () => {
  it.skipIf(!loopback2)(`rank 0 listens only on a loopback MASTER_ADDR, and on every interface for any other${loopback2 ? '' : ' (skipped: 127.0.0.2 is not a local address here)'}`, async () => {
    // 127.0.0.2 is loopback too, but another address than 127.0.0.1.
    const port = await freePort();
    const local = rank({ rank: 0, worldSize: 2, port, payload: id });
    await listening(port);
    expect(await accepts(port, '127.0.0.2')).toBe(false);
    expect(await rank({ rank: 1, worldSize: 2, port })).toEqual({ ok: true, payload: id });
    expect(await local).toEqual({ ok: true, payload: id });

    // A rank 0 told its address is 192.0.2.1 (a documentation address, not this machine's)
    // listens on every interface of this one: loopback included.
    const port2 = await freePort();
    const every = rank({ rank: 0, worldSize: 2, port: port2, payload: id, addr: '192.0.2.1' });
    await listening(port2);
    expect(await accepts(port2, '127.0.0.2')).toBe(true);
    expect(await rank({ rank: 1, worldSize: 2, port: port2, addr: '127.0.0.2' })).toEqual({ ok: true, payload: id });
    expect(await every).toEqual({ ok: true, payload: id });
  });

  it('every rank receives rank 0\'s id, whichever starts first', async () => {
    const port = await freePort();
    const others = [1, 2, 3].map((r) => rank({ rank: r, worldSize: 4, port })); // before rank 0 listens
    await new Promise((r) => setTimeout(r, 300));
    const zero = rank({ rank: 0, worldSize: 4, port, payload: id });
    const all = await Promise.all([zero, ...others]);
    for (const o of all) expect(o).toEqual({ ok: true, payload: id });
  });

  it('a world of one needs nobody, and takes no port (one held by another program is no error)', async () => {
    const holder = createServer();
    await new Promise<void>((resolve) => holder.listen(0, '127.0.0.1', resolve));
    const port = (holder.address() as { port: number }).port;
    try {
      expect(await rank({ rank: 0, worldSize: 1, port, payload: id })).toEqual({ ok: true, payload: id });
      // A larger world needs the port, and says what to do when it is taken.
      const taken = await rank({ rank: 0, worldSize: 2, port, payload: id, timeoutMs: 2_000 });
      expect(taken.error).toMatch(new RegExp(`^rendezvous: rank 0 cannot listen on port ${port}: listen EADDRINUSE.*; another job \\(or a launcher's own store\\) holds it: give every rank the same free port in RING_ATTENTION_RDZV_PORT$`));
    } finally {
      holder.close();
    }
  });

  it('a token beyond ASCII is framed by its bytes, not its characters', async () => {
    const port = await freePort();
    const others = [1, 2].map((r) => rank({ rank: r, worldSize: 3, port, token: 'jöb-✓-1' }));
    const zero = rank({ rank: 0, worldSize: 3, port, payload: id, token: 'jöb-✓-1' });
    for (const o of await Promise.all([zero, ...others])) expect(o).toEqual({ ok: true, payload: id });
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

  it("under torchrun's agent store, which holds MASTER_PORT, the ranks meet on the next port (torchrun's variables, a listener standing in for its store)", async () => {
    const store = createServer();
    let port = 0;
    for (;;) { // a port whose next one is free too
      await new Promise<void>((resolve) => store.listen(0, '127.0.0.1', resolve));
      port = (store.address() as { port: number }).port;
      const next = createServer();
      const free = await new Promise<boolean>((resolve) => next.once('error', () => resolve(false)).listen(port + 1, '127.0.0.1', () => resolve(true)));
      if (free) {
        await new Promise((r) => next.close(r));
        break;
      }
      await new Promise((r) => store.close(r));
    }
    const torchrunRank = (r: number) => new Promise<string>((resolve) => {
      const env = { ...process.env, RANK: String(r), WORLD_SIZE: '2', LOCAL_RANK: String(r), MASTER_ADDR: '127.0.0.1', MASTER_PORT: String(port),
        TORCHELASTIC_USE_AGENT_STORE: 'True', TORCHELASTIC_RUN_ID: 'job-9', RING_ATTENTION_RDZV_PORT: undefined, RING_ATTENTION_JOB_TOKEN: undefined };
      const p = spawn(process.execPath, [new URL('../scripts/torchrun-rendezvous.mjs', import.meta.url).pathname], { env });
      let out = '';
      p.stdout.on('data', (d) => (out += d));
      p.on('exit', () => resolve(out.trim()));
    });
    try {
      expect(await Promise.all([torchrunRank(0), torchrunRank(1)])).toEqual([0, 1].map((r) =>
        `rank ${r}/2: ok; MASTER_PORT ${port}, rendezvous port ${port + 1}, agent store True`));
    } finally {
      store.close();
    }
  });

  it("rank 0's timeout names the ranks it refused, and why, apart from those that never came", async () => {
    const port = await freePort();
    const zero = rank({ rank: 0, worldSize: 3, port, payload: id, timeoutMs: 3_000 });
    await listening(port);
    expect(await answer(port, frame(JSON.stringify({ token: 'job-1', rank: 1, worldSize: 2 })))).toMatch(/rendezvous refused: worldSize 2 does not match rank 0's 3/);
    expect((await zero).error).toBe(`rendezvous timed out after 3000 ms at port ${port}: ranks 1, 2 never arrived; a connection claiming rank 1 was refused (worldSize 2 does not match rank 0's 3)`);
  });

  it('a rank refused, then joined for real and gone, fails the rendezvous at once, named for what it did last', async () => {
    const port = await freePort();
    const t0 = Date.now();
    const zero = rank({ rank: 0, worldSize: 3, port, payload: id, timeoutMs: 20_000 });
    await listening(port);
    expect(await answer(port, frame(JSON.stringify({ token: 'job-2', rank: 1, worldSize: 3 })))).toMatch(/rendezvous refused: the job token does not match/);
    // Joins, then closes: the end comes after the hello in the stream, so rank 0 reads both in order.
    connect(port, '127.0.0.1', function (this: Socket) { this.end(frame(JSON.stringify({ token: 'job-1', rank: 1, worldSize: 3 }))); }).on('error', () => {});
    expect((await zero).error).toBe(`rendezvous failed at port ${port}: rank 1 joined, then closed its connection (its process ended, or it gave up at its own deadline); rank 2 had not arrived`);
    expect(Date.now() - t0).toBeLessThan(15_000); // not its 20 s deadline
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

  it('a rank whose own deadline passes first still gets rank 0\'s answer, which names the missing rank', async () => {
    const port = await freePort();
    const zero = rank({ rank: 0, worldSize: 3, port, payload: id, timeoutMs: 3_000 });
    await listening(port);
    const one = rank({ rank: 1, worldSize: 3, port, timeoutMs: 1_000 }); // its deadline passes long before rank 0's
    expect((await zero).error).toMatch(/^rendezvous timed out after 3000 ms at port \d+: rank 2 never arrived$/);
    expect((await one).error).toBe((await zero).error);
  });

  it('a rank that joined and left ends the rendezvous at once, naming the ranks still absent as ranges', async () => {
    // Rank 0 answers the ranks waiting through the same path as its timeout (tested above with a
    // rank that came): here, only its own error and how soon it comes.
    const port = await freePort();
    const t0 = Date.now();
    const zero = rank({ rank: 0, worldSize: 5, port, payload: id, timeoutMs: 20_000 });
    await listening(port);
    const s = connect(port, '127.0.0.1', () => s.end(frame(JSON.stringify({ token: 'job-1', rank: 3, worldSize: 5 }))));
    s.on('error', () => {});
    expect((await zero).error).toBe(`rendezvous failed at port ${port}: rank 3 joined, then closed its connection (its process ended, or it gave up at its own deadline); ranks 1, 2, 4 had not arrived`);
    expect(Date.now() - t0).toBeLessThan(15_000);
    expect(rankRanges([1, 2, 3, 4, 5, 7, 9, 10])).toBe('1-5, 7, 9, 10');
    expect(rankRanges(Array.from({ length: 40 }, (_, i) => 2 * i))).toMatch(/^0, 2, .*, 30, \.\.\. \(40 in all\)$/);
  });

  it('a rank that rank 0 said joined fails at once when rank 0 goes away, not at its deadline', async () => {
    const port = await freePort();
    // Reads the hello, says "joined" as rank 0 does, then "dies".
    const fakeZero = createServer((c) => c.once('data', () => c.end(frame(JSON.stringify({ joined: true })), () => c.destroy())));
    await new Promise<void>((r) => fakeZero.listen(port, '127.0.0.1', r));
    try {
      const t0 = Date.now();
      const one = await rank({ rank: 1, worldSize: 2, port, timeoutMs: 20_000 });
      expect(one.error).toMatch(/^rendezvous: rank 0 at 127\.0\.0\.1:\d+ closed the connection without answering \((closed|ECONNRESET); did its process end\?\)$/);
      expect(Date.now() - t0).toBeLessThan(15_000);
    } finally {
      fakeZero.close();
    }
  });

  it('a connection closed before rank 0 said "joined" (a proxy on the port, a full connection cap) is retried', async () => {
    const port = await freePort();
    let accepted = 0;
    const closer = createServer((c) => (++accepted, c.destroy())); // accepts, reads nothing, closes
    await new Promise<void>((r) => closer.listen(port, '127.0.0.1', r));
    try {
      const one = await rank({ rank: 1, worldSize: 2, port, timeoutMs: 1_500 });
      expect(one.error).toMatch(/^rendezvous: rank 1 could not reach rank 0 at 127\.0\.0\.1:\d+ within 1500 ms \((closed|ECONNRESET)\)/);
      expect(accepted).toBeGreaterThan(1); // it came back
    } finally {
      closer.close();
    }
  });

  it('frames after a refused hello are not read: a wrong token cannot be followed by a rank\'s hello', async () => {
    const port = await freePort();
    const zero = rank({ rank: 0, worldSize: 2, port, payload: id, timeoutMs: 1_500 });
    await listening(port);
    const both = Buffer.concat([frame(JSON.stringify({ token: 'job-2', rank: 1, worldSize: 2 })), frame(JSON.stringify({ token: 'job-1', rank: 1, worldSize: 2 }))]);
    const s = connect(port, '127.0.0.1', () => s.write(both));
    s.on('error', () => {});
    // Refused for the first frame; the second, the right hello, was never read.
    expect((await zero).error).toMatch(/: rank 1 never arrived; a connection claiming rank 1 was refused \(the job token does not match: this rendezvous belongs to another job\)$/);
  });

  it('rank 0 closes connections that never joined when it is done, and does not wait for them to leave', async () => {
    const port = await freePort();
    const zero = rank({ rank: 0, worldSize: 2, port, payload: id });
    await listening(port);
    const idle: Socket[] = Array.from({ length: 5 }, () => connect(port, '127.0.0.1').on('error', () => {}));
    expect(await rank({ rank: 1, worldSize: 2, port })).toEqual({ ok: true, payload: id });
    const exited = await Promise.race([zero.then(() => 'exited'), new Promise((r) => setTimeout(() => r('still running'), 5_000))]);
    expect(exited).toBe('exited');
    for (const s of idle) s.destroy();
  });

  it('a connection that never says hello is closed at its deadline, even while it trickles bytes', async () => {
    const port = await freePort();
    const zero = rank({ rank: 0, worldSize: 2, port, payload: id, helloMs: 1_000 });
    await listening(port);
    const started = Date.now();
    const slow = connect(port, '127.0.0.1').on('error', () => {});
    const closed = new Promise<number>((r) => slow.on('close', () => r(Date.now() - started)));
    slow.write(frame('{"token":"job-1","rank":1,"worldSize":2}').subarray(0, 5)); // a length, then one byte of 41
    const trickle = setInterval(() => slow.write(' '), 200); // an idle timeout would never fire
    const after = await Promise.race([closed, new Promise<number>((r) => setTimeout(() => r(-1), 5_000))]);
    clearInterval(trickle);
    expect(after).toBeGreaterThanOrEqual(900);
    expect(after).toBeLessThan(3_000);
    expect(await rank({ rank: 1, worldSize: 2, port })).toEqual({ ok: true, payload: id });
    expect(await zero).toEqual({ ok: true, payload: id });
  });

  it('a joining rank refuses an answer that is not { ok, payload } or { ok, error } without crashing', async () => {
    for (const body of ['null', '{"ok":false,"error":{"x":1}}', '7']) {
      const server = createServer((s) => s.on('data', () => s.end(frame(body)))).listen(0, '127.0.0.1');
      await new Promise((r) => server.once('listening', r));
      const { port } = server.address() as { port: number };
      const o = await rank({ rank: 1, worldSize: 2, port, timeoutMs: 2_000 });
      server.close();
      expect(o, body).toEqual({ ok: false, error: `rendezvous: unexpected answer from 127.0.0.1:${port}` });
    }
  });

  it('oversized, garbled and wrong messages are refused without stopping rank 0', async () => {
    const port = await freePort();
    const zero = rank({ rank: 0, worldSize: 2, port, payload: id });
    await listening(port);
    const huge = Buffer.alloc(4);
    huge.writeUInt32BE(1 << 30);
    expect(await answer(port, huge)).toMatch(/exceeds the limit of 65536/);
    const justOver = Buffer.alloc(4); // the size is refused from the header, one byte past the limit
    justOver.writeUInt32BE(65537);
    expect(await answer(port, justOver)).toMatch(/a message of 65537 bytes exceeds the limit of 65536/);
    // At the limit the size passes, and the message is read (and refused for what it holds).
    expect(await answer(port, frame(`"${'x'.repeat(65534)}"`))).toMatch(/expected \{ token, rank, worldSize \}/);
    expect(await answer(port, frame('{not json'))).toMatch(/not valid JSON/);
    expect(await answer(port, frame('[1,2]'))).toMatch(/expected \{ token, rank, worldSize \}/);
    expect(await answer(port, frame(JSON.stringify({ token: 'job-1', rank: 7, worldSize: 2 })))).toMatch(/rank 7 is not in \[1, 1\]/);
    expect(await answer(port, frame(JSON.stringify({ token: 'job-1', rank: 2, worldSize: 2 })))).toMatch(/rank 2 is not in \[1, 1\]/);
    expect(await answer(port, frame(JSON.stringify({ token: 'job-1', rank: 0, worldSize: 2 })))).toMatch(/rank 0 is not in \[1, 1\]/);
    expect(await answer(port, frame(JSON.stringify({ token: 'job-1', rank: 1, worldSize: 3 })))).toMatch(/worldSize 3 does not match rank 0's 2/);
    expect(await rank({ rank: 1, worldSize: 2, port })).toEqual({ ok: true, payload: id });
    expect(await zero).toEqual({ ok: true, payload: id });
  });
});
