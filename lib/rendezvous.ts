// Rank 0 hands a small payload (the NCCL unique id) to every other rank over TCP, as
// torchrun's store does. Messages are length-prefixed JSON with a hard size limit; every
// rank shows the job's token; anything malformed is answered with an error and dropped,
// and a deadline names the ranks that never arrived. The token identifies a job; it is not
// a secret (torchrun's and Slurm's ids are visible to other users of the machine).
import { createHash, timingSafeEqual } from 'node:crypto';
import { createServer, connect, isIPv4, isIPv6, type Socket } from 'node:net';

import { MAX_TIMER_MS } from './errors.js';

export const MAX_MESSAGE_BYTES = 64 * 1024;
/** How long rank 0 keeps a connection that has not said hello. */
export const HELLO_MS = 10_000;

export interface RendezvousOptions {
  rank: number;
  worldSize: number;
  /** Rank 0's address (MASTER_ADDR); rank 0 listens on every interface, or only on it if it is a loopback address. */
  addr: string;
  port: number;
  /** Shared by the ranks of one job; a rank with another token is refused. */
  token: string;
  timeoutMs: number;
  /** What rank 0 hands out; ignored on other ranks. */
  payload?: Uint8Array;
  /** @internal How long rank 0 keeps a connection that has not said hello (default HELLO_MS; tests shorten it). */
  helloMs?: number;
}

interface Hello {
  token: string;
  rank: number;
  worldSize: number;
}
// `joined`: rank 0 took the hello (the answer comes once every rank has); a connection lost
// after it is final for the joining rank, one lost before it is retried (anything may accept a
// connection: a proxy on the port before rank 0 listens, or rank 0 over its connection cap).
type Reply = { ok: true; payload: string } | { ok: false; error: string } | { joined: true };

function send(socket: Socket, message: Hello | Reply): void {
  const body = Buffer.from(JSON.stringify(message));
  const header = Buffer.alloc(4);
  header.writeUInt32BE(body.length);
  socket.write(Buffer.concat([header, body]));
}

// Calls onMessage with each complete JSON message; refuses one over the limit before reading
// it. A destroyed socket reads nothing more: frames sent after a refused hello are dropped.
function readMessages(socket: Socket, onMessage: (m: unknown) => void, onBad: (why: string) => void): void {
  let buffered = Buffer.alloc(0);
  socket.on('data', (chunk: Buffer) => {
    buffered = Buffer.concat([buffered, chunk]);
    while (buffered.length >= 4 && !socket.destroyed) {
      const length = buffered.readUInt32BE(0);
      if (length > MAX_MESSAGE_BYTES) return onBad(`a message of ${length} bytes exceeds the limit of ${MAX_MESSAGE_BYTES}`);
      if (buffered.length < 4 + length) return;
      const body = buffered.subarray(4, 4 + length);
      buffered = buffered.subarray(4 + length);
      let message: unknown;
      try {
        message = JSON.parse(body.toString('utf8'));
      } catch {
        return onBad('a message is not valid JSON');
      }
      onMessage(message);
    }
  });
}

const digest = (s: string) => createHash('sha256').update(s).digest();
const sameToken = (a: string, b: string) => timingSafeEqual(digest(a), digest(b));
// A literal address only: 'localhost' may resolve to either family, and peers must reach rank 0 on it.
const isLoopback = (addr: string) => (isIPv4(addr) && addr.startsWith('127.')) || (isIPv6(addr) && addr === '::1');

/** "2, 3, 5-9, 12" (runs of three or more joined), at most 16 entries; ranks ascending. */
export function rankRanges(ranks: number[]): string {
  const runs: string[] = [];
  for (let i = 0; i < ranks.length; ) {
    let j = i;
    while (j + 1 < ranks.length && ranks[j + 1] === ranks[j]! + 1) ++j;
    if (j - i >= 2) runs.push(`${ranks[i]}-${ranks[j]}`);
    else for (let k = i; k <= j; ++k) runs.push(`${ranks[k]}`);
    i = j + 1;
  }
  return runs.length > 16 ? `${runs.slice(0, 16).join(', ')}, ... (${ranks.length} in all)` : runs.join(', ');
}

const ranks = (rs: number[]) => `rank${rs.length > 1 ? 's' : ''} ${rankRanges(rs)}`;

function serve(o: RendezvousOptions): Promise<Uint8Array> {
  const payload = o.payload ?? new Uint8Array();
  if (o.worldSize === 1) return Promise.resolve(payload); // nobody to wait for: no port taken
  return new Promise((resolve, reject) => {
    const joined = new Map<number, Socket>();
    const refused = new Map<number, string>(); // connections turned away by the rank they claimed, and why
    const sockets = new Set<Socket>(); // every connection, so that idle ones are closed at the end
    const server = createServer();
    server.maxConnections = o.worldSize + 64; // a flood of idle connections cannot exhaust file descriptors
    let settled = false;
    const finish = (error?: Error) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      server.close();
      const members = new Set(joined.values());
      for (const s of sockets) {
        if (members.has(s))
          send(s, error ? { ok: false, error: error.message } : { ok: true, payload: Buffer.from(payload).toString('base64') }), s.end();
        else s.destroy(); // connections that never joined would keep this process alive
      }
      if (error) reject(error);
      else resolve(payload);
    };
    const timer = setTimeout(() => {
      const absent = Array.from({ length: o.worldSize - 1 }, (_, i) => i + 1).filter((r) => !joined.has(r));
      // A refused connection only claimed its rank (another job's rank 1, say): ours may still be missing.
      const turnedAway = absent.filter((r) => refused.has(r));
      const why = [
        `${ranks(absent)} never arrived`,
        ...turnedAway.slice(0, 4).map((r) => `a connection claiming rank ${r} was refused (${refused.get(r)})`),
        ...(turnedAway.length > 4 ? [`${turnedAway.length - 4} more such connections were refused`] : []),
      ];
      finish(new Error(`rendezvous timed out after ${o.timeoutMs} ms at port ${o.port}: ${why.join('; ')}`));
    }, o.timeoutMs);
    server.on('connection', (socket) => {
      let rank = -1;
      sockets.add(socket);
      const refuse = (why: string, claimed?: unknown) => {
        // Kept for the timeout's message: rank 0's log is the one people read.
        const r = claimed as number;
        if (Number.isInteger(r) && r >= 1 && r < o.worldSize && !joined.has(r)) refused.set(r, why);
        send(socket, { ok: false, error: `rendezvous refused: ${why}` });
        socket.end();
        socket.destroy();
      };
      // A deadline, not an idle timeout: a connection that trickles a byte now and then must not
      // hold one of the few places (the cap on connections) for the real ranks.
      const hello = setTimeout(() => socket.destroy(), o.helloMs ?? HELLO_MS);
      socket.on('error', () => socket.destroy());
      socket.on('close', () => {
        clearTimeout(hello);
        sockets.delete(socket);
        if (joined.get(rank) !== socket) return;
        joined.delete(rank);
        // Its process ended (a launcher on its node takes a failed rank's siblings down too), or
        // it gave up: the job cannot start, and the ranks still waiting, on any node, hear it now
        // rather than at the deadline.
        const absent = Array.from({ length: o.worldSize - 1 }, (_, i) => i + 1).filter((r) => r !== rank && !joined.has(r));
        finish(new Error(`rendezvous failed at port ${o.port}: rank ${rank} joined, then closed its connection (its process ended, or it gave up at its own deadline)` +
          (absent.length ? `; ${ranks(absent)} had not arrived` : '')));
      });
      readMessages(socket, (m) => {
        const h = m as Partial<Hello>;
        if (rank !== -1) return refuse('one message per connection');
        if (typeof h !== 'object' || h === null || typeof h.token !== 'string') return refuse('expected { token, rank, worldSize }');
        if (!sameToken(h.token, o.token)) return refuse('the job token does not match: this rendezvous belongs to another job', h.rank);
        if (h.worldSize !== o.worldSize) return refuse(`worldSize ${JSON.stringify(h.worldSize)} does not match rank 0's ${o.worldSize}`, h.rank);
        if (!Number.isInteger(h.rank) || h.rank! < 1 || h.rank! >= o.worldSize) return refuse(`rank ${JSON.stringify(h.rank)} is not in [1, ${o.worldSize - 1}]`);
        if (joined.has(h.rank!)) return refuse(`rank ${h.rank} has already joined`);
        rank = h.rank!;
        clearTimeout(hello); // it waits for the others now
        joined.set(rank, socket);
        send(socket, { joined: true });
        refused.delete(rank); // what is said of it now is what this connection does
        if (joined.size === o.worldSize - 1) finish();
      }, refuse);
    });
    server.on('error', (e: NodeJS.ErrnoException) => finish(new Error(`rendezvous: rank 0 cannot listen on port ${o.port}: ${e.message}` +
      (e.code === 'EADDRINUSE' ? '; another job (or a launcher\'s own store) holds it: give every rank the same free port in RING_ATTENTION_RDZV_PORT' : ''))));
    server.listen({ port: o.port, host: isLoopback(o.addr) ? o.addr : undefined });
  });
}

function answer(m: unknown, where: string): Uint8Array | Error {
  const r = m as { ok?: unknown; payload?: unknown; error?: unknown } | null;
  if (typeof r === 'object' && r !== null) {
    if (r.ok === true && typeof r.payload === 'string') return new Uint8Array(Buffer.from(r.payload, 'base64'));
    if (r.ok === false && typeof r.error === 'string') return new Error(r.error);
  }
  return new Error(`rendezvous: unexpected answer from ${where}`);
}

// Connects to rank 0, retrying while it is not listening yet, until the deadline. Once its
// hello is sent, a rank waits a little past its own deadline: rank 0's timer, started no
// earlier, answers every rank that came with the names of those that did not. A connection
// lost after rank 0 said it joined is final: rank 0's process ended, and a new one would be
// another job's rank 0 (a rendezvous is one round).
function join(o: RendezvousOptions): Promise<Uint8Array> {
  const deadline = Date.now() + o.timeoutMs, grace = Math.max(5_000, o.timeoutMs / 10);
  const where = `${o.addr}:${o.port}`;
  return new Promise((resolve, reject) => {
    const attempt = (lastError: string) => {
      if (Date.now() >= deadline)
        return reject(new Error(`rendezvous: rank ${o.rank} could not reach rank 0 at ${where} within ${o.timeoutMs} ms (${lastError})`));
      let done = false;
      const socket = connect({ host: o.addr, port: o.port });
      let timer = setTimeout(() => socket.destroy(new Error('timed out')), deadline - Date.now());
      const end = (then: () => void) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        then();
      };
      let accepted = false; // rank 0 said this rank joined
      const retry = (why: string) => end(() => {
        if (!accepted) return void setTimeout(() => attempt(why), 100);
        socket.destroy();
        reject(new Error(`rendezvous: rank 0 at ${where} closed the connection without answering (${why}; did its process end?)`));
      });
      socket.on('connect', () => {
        clearTimeout(timer);
        // Longer delays than a timer holds would fire at once (and reconnect in a loop).
        timer = setTimeout(() => end(() => {
          socket.destroy();
          reject(new Error(`rendezvous: rank ${o.rank} reached rank 0 at ${where}, which sent no answer within ${o.timeoutMs} ms and ${grace} ms of grace`));
        }), Math.min(MAX_TIMER_MS, deadline + grace - Date.now()));
        send(socket, { token: o.token, rank: o.rank, worldSize: o.worldSize });
      });
      readMessages(socket, (m) => {
        if (!accepted && typeof m === 'object' && m !== null && (m as { joined?: unknown }).joined === true) return void (accepted = true);
        end(() => {
          socket.end();
          const got = answer(m, where);
          if (got instanceof Error) reject(got);
          else resolve(got);
        });
      }, (why) => end(() => {
        socket.destroy();
        reject(new Error(`rendezvous: bad answer from ${where}: ${why}`));
      }));
      socket.on('error', (e: NodeJS.ErrnoException) => retry(e.code ?? e.message));
      socket.on('close', () => retry('closed'));
    };
    attempt('never tried');
  });
}

/** Rank 0 returns its own payload once every rank has arrived; the others return rank 0's payload. */
export function rendezvous(o: RendezvousOptions): Promise<Uint8Array> {
  return o.rank === 0 ? serve(o) : join(o);
}
