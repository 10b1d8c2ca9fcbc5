// Process groups. 'local': the ranks of one launch(), worker threads of this process, over
// the native in-process transport. 'nccl': one process per GPU (initProcessGroup), over
// NCCL on CUDA tensors.
import { checkInteger, describe, fail } from './errors.js';
import { native, type TensorHandle } from './native.js';
import { checkTensor, type Tensor } from './tensor.js';

export type Backend = 'local' | 'nccl';

/** An allReduceAsync() in flight. */
export interface AllReduceWork {
  /** Returns once the sums are in place (on NCCL: polled against the group's timeout, like every wait). */
  wait(): void;
}

export class ProcessGroup {
  readonly backend: Backend;
  readonly rank: number;
  readonly worldSize: number;
  readonly #id: number;
  #destroyed = false;

  private constructor(backend: Backend, id: number, rank: number, worldSize: number) {
    this.backend = backend;
    this.#id = id;
    this.rank = rank;
    this.worldSize = worldSize;
    // Read-only from JS too: rank and worldSize pick the native peer, so a reassigned rank would
    // act as another. (Not frozen: wrapping a method, e.g. to log it, stays possible.)
    Object.defineProperties(this, { backend: { writable: false }, rank: { writable: false }, worldSize: { writable: false } });
  }

  /** @internal Builds a rank's group: a launch() worker's ('local') or initProcessGroup's ('nccl'). */
  static attach(id: number, rank: number, worldSize: number, backend: Backend = 'local'): ProcessGroup {
    return new ProcessGroup(backend, id, rank, worldSize);
  }

  /** @internal The native group id; checks that `value` really is a live group. */
  static idOf(value: unknown, name: string): number {
    if (!(value instanceof ProcessGroup) || !(#id in value))
      fail('type', `${name}: expected a ProcessGroup from launch() or initProcessGroup(), got ${describe(value)}`);
    if (value.#destroyed) throw new Error(`${name}: this group has been destroyed`);
    return value.#id;
  }

  #peer(peer: unknown): number {
    const p = checkInteger(peer, 'peer', 0, this.worldSize - 1);
    if (this.backend === 'nccl' && p === this.rank) fail('range', `peer: an NCCL group cannot send to or receive from its own rank (${p})`);
    return p;
  }

  #tensor(t: unknown, name: string): Tensor {
    const x = checkTensor(t, name);
    if (this.backend === 'nccl' && x.device !== 'cuda') fail('type', `${name}: an NCCL group works on 'cuda' tensors, got '${x.device}'`);
    return x;
  }

  #list(ts: readonly unknown[], name: string): TensorHandle[] {
    if (ts.length === 0) fail('range', `${name}: expected at least one tensor, got an empty array`);
    const xs = Array.from(ts, (t, i) => this.#tensor(t, `${name}[${i}]`)); // holes too
    xs.forEach((x, i) => {
      const j = xs.indexOf(x);
      if (j !== i) fail('range', `${name}[${i}]: the same tensor as ${name}[${j}] (each is summed in place once)`);
    });
    return xs.map((x, i) => x.handle(`${name}[${i}]`));
  }

  /**
   * Sends `t` as it is now to rank `peer`, returning without waiting for the receiver: `t` may
   * be written at once (on NCCL the send is of a copy), so send(t, next); recv(t, prev) shifts
   * `t` around the ring. On an NCCL group the send is posted together with this rank's next
   * recv() (one NCCL group) or before its next collective, so that pattern cannot deadlock; the
   * receiver must recv() it before its own next collective or ring call (a 'local' group
   * refuses one received after, which over NCCL would hang).
   */
  send(t: Tensor, peer: number): void {
    const id = ProcessGroup.idOf(this, 'group'), h = this.#tensor(t, 't').handle('t'), p = this.#peer(peer);
    if (this.backend === 'nccl') native.ncclSend(id, h, p);
    else native.groupSend(id, this.rank, p, h);
  }

  /**
   * Waits for the matching send() from `peer` and writes it into `into`, which must have the
   * sent tensor's dtype and element count: a 'local' group refuses others; NCCL cannot check
   * (its recv would hang until the timeout, or read the bytes as another type).
   */
  recv(into: Tensor, peer: number): void {
    const id = ProcessGroup.idOf(this, 'group'), h = this.#tensor(into, 'into').handle('into'), p = this.#peer(peer);
    if (this.backend === 'nccl') native.ncclRecv(id, h, p);
    else native.groupRecv(id, this.rank, p, h);
  }

  /**
   * Sums `t` over all ranks, in place. Every rank must call it with the same shapes, dtypes and
   * order. The ranks compare them and refuse a mismatch, naming it (in a 'local' group on every
   * call, aborting the group; over NCCL only for a list new to the ranks, see the README). Given a
   * list, every tensor of it is summed in one collective with one wait (on NCCL, one group of
   * allReduces), which is how a training step reduces its gradients.
   */
  allReduce(t: Tensor | readonly Tensor[]): void {
    const id = ProcessGroup.idOf(this, 'group'), hs = this.#handles(t);
    if (this.backend === 'nccl') native.ncclAllReduce(id, hs);
    else native.groupAllReduce(id, this.rank, hs);
  }

  /**
   * allReduce() without waiting: returns once the sums are queued. Until the returned work's
   * wait() returns, the tensors must be neither read nor written (on NCCL the sums are still
   * in flight on the group's stream). Meanwhile other work, ring attention included, can run:
   * a training step reduces each layer's gradients while the next layer's backward computes.
   * On a 'local' group the sums are done before this returns.
   */
  allReduceAsync(t: Tensor | readonly Tensor[]): AllReduceWork {
    const id = ProcessGroup.idOf(this, 'group'), hs = this.#handles(t);
    if (this.backend !== 'nccl') {
      native.groupAllReduce(id, this.rank, hs);
      return { wait() {} };
    }
    const ticket = native.ncclAllReduceAsync(id, hs);
    return { wait: () => native.ncclWaitAllReduce(ProcessGroup.idOf(this, 'group'), ticket) };
  }

  #handles(t: Tensor | readonly Tensor[]): TensorHandle[] {
    return Array.isArray(t) ? this.#list(t, 't') : [this.#tensor(t, 't').handle('t')];
  }

  /** Returns once every rank has called barrier(). */
  barrier(): void {
    const id = ProcessGroup.idOf(this, 'group');
    if (this.backend === 'nccl') native.ncclBarrier(id);
    else native.groupBarrier(id, this.rank);
  }

  /** Releases the group (the NCCL communicator; for a 'local' group, this rank leaves it). Idempotent. */
  destroy(): void {
    if (this.#destroyed) return;
    this.#destroyed = true;
    if (this.backend === 'nccl') native.ncclGroupDestroy(this.#id);
    else {
      try {
        native.groupLeave(this.#id, this.rank, true);
      } catch {
        /* its launch() has already ended */
      }
    }
  }
}
