// Rank 0 hands a small payload (the NCCL unique id) to every other rank over TCP, as
// torchrun's store does. Messages are length-prefixed JSON with a hard size limit; every
// rank shows the job's token; anything malformed is answered with an error and dropped,
// and a deadline names the ranks that never arrived.
import { createServer, connect, type Server, type Socket } from 'node:net';

export const MAX_MESSAGE_BYTES = 64 * 1024;

export interface RendezvousOptions {
  rank: number;
  worldSize: number;
  /** Rank 0's address (MASTER_ADDR); rank 0 listens on every interface. */
  addr: string;
  port: number;
  /** Shared by the ranks of one job; a rank with another token is refused. */
  token: string;
  timeoutMs: number;
  /** What rank 0 hands out; ignored on other ranks. */
  payload?: Uint8Array;
}

interface Hello {
  token: string;
  rank: number;
  worldSize: number;
}
type Reply = { ok: true; payload: string } | { ok: false; error: string };

function send(socket: Socket, message: Hello | Reply): void {
  const body = Buffer.from(JSON.stringify(message));
  const header = Buffer.alloc(4);
  header.writeUInt32BE(body.length);
  socket.write(Buffer.concat([header, body]));
}

// Calls onMessage with each complete JSON message; refuses one over the limit before reading it.
function readMessages(socket: Socket, onMessage: (m: unknown) => void, onBad: (why: string) => void): void {
  let buffered = Buffer.alloc(0);
  socket.on('data', (chunk: Buffer) => {
    buffered = Buffer.concat([buffered, chunk]);
    while (buffered.length >= 4) {
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

function serve(o: RendezvousOptions): Promise<Uint8Array> {
  const payload = o.payload ?? new Uint8Array();
  return new Promise((resolve, reject) => {
    const joined = new Map<number, Socket>();
    const server: Server = createServer();
    let settled = false;
    const finish = (error?: Error) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      server.close();
      for (const s of joined.values()) {
        send(s, error ? { ok: false, error: error.message } : { ok: true, payload: Buffer.from(payload).toString('base64') });
        s.end();
      }
      if (error) reject(error);
      else resolve(payload);
    };
    const timer = setTimeout(() => {
      const missing = Array.from({ length: o.worldSize - 1 }, (_, i) => i + 1).filter((r) => !joined.has(r));
      finish(new Error(`rendezvous timed out after ${o.timeoutMs} ms at port ${o.port}: rank${missing.length > 1 ? 's' : ''} ${missing.join(', ')} never arrived`));
    }, o.timeoutMs);
    server.on('connection', (socket) => {
      let rank = -1;
      const refuse = (why: string) => {
        send(socket, { ok: false, error: `rendezvous refused: ${why}` });
        socket.end();
        socket.destroy();
      };
      socket.on('error', () => socket.destroy());
      socket.on('close', () => {
        if (joined.get(rank) === socket) joined.delete(rank); // it counts as missing again
      });
      readMessages(socket, (m) => {
        const h = m as Partial<Hello>;
        if (rank !== -1) return refuse('one message per connection');
        if (typeof h !== 'object' || h === null || typeof h.token !== 'string') return refuse('expected { token, rank, worldSize }');
        if (h.token !== o.token) return refuse('the job token does not match: this rendezvous belongs to another job');
        if (h.worldSize !== o.worldSize) return refuse(`worldSize ${h.worldSize} does not match rank 0's ${o.worldSize}`);
        if (!Number.isInteger(h.rank) || h.rank! < 1 || h.rank! >= o.worldSize) return refuse(`rank ${h.rank} is not in [1, ${o.worldSize - 1}]`);
        if (joined.has(h.rank!)) return refuse(`rank ${h.rank} has already joined`);
        rank = h.rank!;
        joined.set(rank, socket);
        if (joined.size === o.worldSize - 1) finish();
      }, refuse);
    });
    server.on('error', (e) => finish(new Error(`rendezvous: rank 0 cannot listen on port ${o.port}: ${e.message}`)));
    server.listen(o.port, () => {
      if (o.worldSize === 1) finish();
    });
  });
}

// Connects to rank 0, retrying while it is not listening yet, until the deadline.
function join(o: RendezvousOptions): Promise<Uint8Array> {
  const deadline = Date.now() + o.timeoutMs;
  const where = `${o.addr}:${o.port}`;
  return new Promise((resolve, reject) => {
    const attempt = (lastError: string) => {
      if (Date.now() >= deadline)
        return reject(new Error(`rendezvous: rank ${o.rank} could not reach rank 0 at ${where} within ${o.timeoutMs} ms (${lastError})`));
      let answered = false;
      const socket = connect({ host: o.addr, port: o.port });
      socket.setTimeout(Math.max(1, deadline - Date.now()));
      socket.on('connect', () => send(socket, { token: o.token, rank: o.rank, worldSize: o.worldSize }));
      readMessages(socket, (m) => {
        answered = true;
        socket.end();
        const r = m as Reply;
        if (r.ok === true && typeof r.payload === 'string') resolve(new Uint8Array(Buffer.from(r.payload, 'base64')));
        else reject(new Error(r.ok === false ? r.error : `rendezvous: unexpected answer from ${where}`));
      }, (why) => {
        answered = true;
        socket.destroy();
        reject(new Error(`rendezvous: bad answer from ${where}: ${why}`));
      });
      socket.on('timeout', () => socket.destroy(new Error('timed out')));
      socket.on('error', (e: NodeJS.ErrnoException) => {
        if (!answered) setTimeout(() => attempt(e.code ?? e.message), 100);
        answered = true;
      });
      socket.on('close', () => {
        if (!answered) reject(new Error(`rendezvous: rank 0 at ${where} closed the connection without answering`));
      });
    };
    attempt('never tried');
  });
}

/** Rank 0 returns its own payload once every rank has arrived; the others return rank 0's payload. */
export function rendezvous(o: RendezvousOptions): Promise<Uint8Array> {
  return o.rank === 0 ? serve(o) : join(o);
}
