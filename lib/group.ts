// A process group as launch() hands it to each rank: the ranks are worker threads of this
// process and talk through the native in-process transport.
import { checkInteger, describe, fail } from './errors.js';
import { native } from './native.js';
import { checkTensor, type Tensor } from './tensor.js';

export class ProcessGroup {
  readonly backend = 'local' as const;
  readonly rank: number;
  readonly worldSize: number;
  readonly #id: number;

  private constructor(id: number, rank: number, worldSize: number) {
    this.#id = id;
    this.rank = rank;
    this.worldSize = worldSize;
  }

  /** @internal Used by the launcher's worker to build its rank's group. */
  static attach(id: number, rank: number, worldSize: number): ProcessGroup {
    return new ProcessGroup(id, rank, worldSize);
  }

  /** @internal The native group id; checks that `value` really is a group. */
  static idOf(value: unknown, name: string): number {
    if (!(value instanceof ProcessGroup) || !(#id in value))
      fail('type', `${name}: expected the ProcessGroup that launch() passed to this rank, got ${describe(value)}`);
    return value.#id;
  }

  #peer(peer: unknown): number {
    return checkInteger(peer, 'peer', 0, this.worldSize - 1);
  }

  /** Sends a copy of `t` to rank `peer`; returns without waiting for the receiver. */
  send(t: Tensor, peer: number): void {
    native.groupSend(this.#id, this.rank, this.#peer(peer), checkTensor(t, 't').handle('t'));
  }

  /** Waits for the matching send() from `peer` and writes it into `into` (same element count). */
  recv(into: Tensor, peer: number): void {
    native.groupRecv(this.#id, this.rank, this.#peer(peer), checkTensor(into, 'into').handle('into'));
  }

  /** Sums `t` over all ranks, in place, accumulating in float32. Every rank must call it. */
  allReduce(t: Tensor): void {
    native.groupAllReduce(this.#id, this.rank, checkTensor(t, 't').handle('t'));
  }

  /** Returns once every rank has called barrier(). */
  barrier(): void {
    native.groupBarrier(this.#id, this.rank);
  }
}
