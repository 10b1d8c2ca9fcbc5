// Training a LlamaModel on a sequence sharded over a group: the loss is the mean over every
// counted target of the whole sequence, gradients are summed over the ranks, clipped by their
// global norm, and applied with AdamW. Checkpoints (checkpoint.ts) hold the weights (as
// transformers loads them), AdamW's moments and the step.
import { restoreCheckpointFiles, saveCheckpointFiles, type CheckpointState } from './checkpoint.js';
import { checkBeta, checkBoolean, checkFloat32, checkInteger, checkOneOf, checkOptions, describe, fail } from './errors.js';
import { ProcessGroup, type AllReduceWork } from './group.js';
import { gatherNumbers } from './group-values.js';
import { IGNORE_INDEX, runLlama, shardPositions, zeroGrads, type Checkpointing, type RunContext } from './llama.js';
import { LlamaModel, paramsFromMap, type LlamaParams } from './llama-model.js';
import { adamwMulti, scale, sumOfSquares, zero, type AdamWEntry } from './ops.js';
import { refuseShardedDir } from './safetensors-dir.js';
import { LAYOUTS, type Layout } from './shard.js';
import { freeOnThrow, tensor, zeros, type Tensor } from './tensor.js';

export interface TrainerOptions {
  /** The launch() group the sequence is sharded over; none: the whole sequence on this thread. */
  group?: ProcessGroup;
  /** How the sequence is sharded (as shardTokens). Default 'contiguous'. */
  layout?: Layout;
  /**
   * Learning rate, or a function of the step being taken, counted from 1 (torch's LambdaLR
   * passes 0 for the first step); during the call, stepCount still counts the steps before it.
   */
  lr: number | ((step: number) => number);
  /** Decoupled weight decay of the matrices, embeddings and lm_head included; norm weights get none. Default 0.01 (torch's AdamW). */
  weightDecay?: number;
  /** Default [0.9, 0.999]. */
  betas?: [number, number];
  /** Default 1e-8. */
  eps?: number;
  /** Clip the global gradient norm to this (torch's clip_grad_norm_). Default: no clipping. */
  maxGradNorm?: number;
  /**
   * true (default): keep only each layer's input, and recompute the layer in the backward.
   * 'keep-attention': keep attention's output and lse too, so that the recompute skips the
   * attention and its ring transfers (M·H·D + H·M values more per layer). false: keep every
   * activation. All three give the same bits (on CUDA, with `deterministic`).
   */
  checkpoint?: Checkpointing;
  /** Tokens per FFN row block (the (block, F) activations are all that exist). Default 256 on the cpu, 4096 on cuda. */
  ffnBlockRows?: number;
  /** Tokens per cross-entropy chunk (the (chunk, V) logits are all that exist). Default 256 on the cpu, 1024 on cuda. */
  ceChunkRows?: number;
  /**
   * CUDA: attention's backward computes dQ in its own pass instead of with atomic adds
   * (slower), so that it gives the same bits on every run; the other kernels have no atomics,
   * and cuBLAS on one stream repeats its bits on the same GPU. Default false. The CPU always
   * is deterministic.
   */
  deterministic?: boolean;
  /**
   * In a group, split AdamW's moments across the ranks (as ZeRO stage 1 does) by whole tensors:
   * each rank updates the parameters whose moments it holds, and one more allReduce per step
   * (a list per layer) brings every rank the others' (their ranks add -0, which leaves every
   * value as it is, so training gives the same bits as without). Each rank then holds about
   * 1/worldSize of the moments' 8 bytes per parameter (whole tensors: never less than its
   * largest). Checkpoints are the same files either way. Every rank must pass the same value,
   * and an lr function must give every rank the same rate. Default false.
   */
  shardOptimizer?: boolean;
}
/**
 * ffnBlockRows and ceChunkRows by default. Larger blocks on a GPU keep its matrix products large
 * (not yet tuned on one); the (block, F) and (chunk, V) intermediates stay small beside the
 * weights either way. @internal (the benchmarks record them)
 */
export const BLOCK_ROWS = { cpu: { ffn: 256, ce: 256 }, cuda: { ffn: 4096, ce: 1024 } } as const;

const TRAINER_OPTION_KEYS = ['group', 'layout', 'lr', 'weightDecay', 'betas', 'eps', 'maxGradNorm', 'checkpoint', 'ffnBlockRows',
  'ceChunkRows', 'deterministic', 'shardOptimizer'];

export interface StepResult {
  /** Mean cross-entropy over every counted target of the whole sequence (all ranks). */
  loss: number;
  /** Global L2 norm of the gradient before clipping. */
  gradNorm: number;
}

export interface StepOptions {
  /**
   * Packed sequences: the document of each of this rank's tokens (sharded as the tokens are),
   * or one such array per micro-batch. Attention then stays within a document. Positions run
   * on across documents; RoPE sees only distances within one, so each document is computed
   * as it would be alone (up to rounding), except under rope_scaling 'dynamic', whose base
   * follows the whole sequence's length. Every rank passes ids, or none.
   */
  documentIds?: Int32Array | readonly Int32Array[];
}

export interface ForwardOptions {
  /** Also return this rank's (M, V) logits. */
  logits?: boolean;
  /** As StepOptions.documentIds, for this one sequence. */
  documentIds?: Int32Array;
}

export interface ForwardResult {
  /** Mean cross-entropy over every counted target of the whole sequence (all ranks). */
  loss: number;
  /** Counted targets of the whole sequence. */
  count: number;
  /** (M, V) row-major, this rank's tokens, when asked for. */
  logits?: Float32Array;
}

/** This rank's shard of one sequence, checked, with what runLlama needs to run it. */
interface MicroBatch {
  tokens: Int32Array;
  targets: Int32Array;
  ctx: RunContext;
}

type Exclusive = 'saveCheckpoint' | 'restoreCheckpoint'; // calls that hold the trainer across awaits

function checkDir(dir: unknown): void {
  if (typeof dir !== 'string' || dir === '') fail('type', `dir: expected a path, got ${describe(dir)}`);
}

/** What f throws, or undefined. */
function thrownBy(f: () => void): unknown {
  try {
    f();
    return undefined;
  } catch (e) {
    return e;
  }
}

// AdamW's settings reach the native optimizer as float32s.
function positiveNumber(v: unknown, name: string, dflt: number, min = 0, inclusive = true): number {
  return v === undefined ? dflt : checkFloat32(v, name, min, inclusive);
}

type ResolvedOptions = Required<Omit<TrainerOptions, 'group' | 'maxGradNorm'>> & { group?: ProcessGroup; maxGradNorm?: number };

// Whole tensors dealt to the ranks, largest first, each to the rank with the fewest elements so
// far (ties: the lowest rank); every rank deals the same.
function dealTensors(tensors: ReadonlyMap<string, Tensor>, worldSize: number): Map<string, number> {
  const load = new Array<number>(worldSize).fill(0), owner = new Map<string, number>();
  const bySize = [...tensors].sort(([an, a], [bn, b]) => b.numel - a.numel || (an < bn ? -1 : an > bn ? 1 : 0));
  for (const [name, t] of bySize) {
    let r = 0;
    for (let k = 1; k < worldSize; ++k) if (load[k]! < load[r]!) r = k;
    owner.set(name, r);
    load[r]! += t.numel;
  }
  return owner;
}

export class Trainer implements Disposable {
  readonly model: LlamaModel;
  /** The gradients of the last backward()/step(), summed over the group, by parameter name (after step(), clipped). */
  readonly gradients: ReadonlyMap<string, Tensor>;
  #grads: LlamaParams;
  #m: Map<string, Tensor>; // AdamW's moments: of every parameter, or with shardOptimizer of this rank's
  #v: Map<string, Tensor>;
  // shardOptimizer: the parameters other ranks update, and the lists (a layer's, ...) that share them
  #shared: { foreign: Tensor[]; lists: Tensor[][] } | null;
  #step = 0;
  #o: ResolvedOptions;
  #disposed = false;
  #inLr = false;
  #busy: Exclusive | null = null; // one that has not finished: the trainer waits for it

  /** @internal use createTrainer. */
  constructor(model: LlamaModel, o: ResolvedOptions) {
    this.model = model;
    this.#o = o;
    const zerosLike = (t: Tensor) => zeros(t.shape, { device: t.device }); // float32, as the parameters
    const group = o.group;
    const owner = o.shardOptimizer && group && group.worldSize > 1 ? dealTensors(model.tensors, group.worldSize) : null;
    const mine = [...model.tensors].filter(([n]) => !owner || owner.get(n) === group!.rank);
    const P = model.params; // a tied head is the embedding: shared once
    this.#shared = owner && {
      foreign: [...model.tensors].filter(([n]) => owner.get(n) !== group!.rank).map(([, t]) => t),
      lists: [[P.embed], ...P.layers.map((l) => Object.values(l) as Tensor[]), P.head === P.embed ? [P.norm] : [P.norm, P.head]],
    };
    const make = (ts: [string, Tensor][]) => new Map(ts.map(([n, t]) => [n, zerosLike(t)]));
    const [g, m, v] = freeOnThrow(() => [make([...model.tensors]), make(mine), make(mine)]); // out of memory: nothing half-made is kept
    this.gradients = g;
    this.#grads = paramsFromMap(model.config, g);
    this.#m = m;
    this.#v = v;
  }

  /** @internal The parameters whose AdamW moments this trainer holds. */
  get momentNames(): string[] {
    return [...this.#m.keys()];
  }

  /** Optimizer steps taken so far. */
  get stepCount(): number {
    return this.#step;
  }

  #live(): void {
    if (this.#disposed) fail('type', 'trainer: has been disposed');
    if (this.#inLr) throw new Error('trainer: called from inside opts.lr, which step() runs before its update');
    // It reads (or writes) every tensor across many awaits: a step meanwhile would mix states.
    if (this.#busy) throw new Error(`trainer: ${this.#busy}() has not finished; await it first`);
    if (this.model.disposed) fail('type', "trainer: its model's tensors have been disposed");
    if ([...this.gradients.values()].some((g) => g.disposed)) fail('type', 'trainer: some of its gradients have been disposed');
  }

  #context(tokens: unknown, targets: unknown, at = '', documentIds?: unknown): MicroBatch {
    this.#live();
    if (!(tokens instanceof Int32Array)) fail('type', `tokens${at}: expected an Int32Array (this rank's shard), got ${describe(tokens)}`);
    if (!(targets instanceof Int32Array)) fail('type', `targets${at}: expected an Int32Array (this rank's shard), got ${describe(targets)}`);
    if (targets.length !== tokens.length) fail('range', `targets${at}: expected ${tokens.length} targets (one per token), got ${targets.length}`);
    if (tokens.length === 0) fail('range', `tokens${at}: this rank's shard is empty`);
    // Checked here, before any micro-batch runs, not by the ops half-way through a step.
    const V = this.model.config.vocab_size;
    const token = tokens.findIndex((x) => x < 0 || x >= V);
    if (token >= 0) fail('range', `tokens${at}[${token}]: ${tokens[token]} is outside the vocabulary [0, ${V})`);
    const target = targets.findIndex((x) => x !== IGNORE_INDEX && (x < 0 || x >= V));
    if (target >= 0) fail('range', `targets${at}[${target}]: ${targets[target]} is outside the vocabulary [0, ${V}) and not the ignore index ${IGNORE_INDEX}`);
    if (documentIds !== undefined) {
      if (!(documentIds instanceof Int32Array)) fail('type', `opts.documentIds${at}: expected an Int32Array (one document id per token), got ${describe(documentIds)}`);
      if (documentIds.length !== tokens.length) fail('range', `opts.documentIds${at}: expected ${tokens.length} ids (one per token), got ${documentIds.length}`);
    }
    const { group, layout } = this.#o;
    const rank = group?.rank ?? 0, worldSize = group?.worldSize ?? 1;
    const positions = shardPositions(tokens.length, rank, worldSize, layout);
    const ctx: RunContext = {
      group, layout, positions, rope: this.model.rope(tokens.length * worldSize), // the whole sequence's length
      checkpoint: this.#o.checkpoint, ffnBlockRows: this.#o.ffnBlockRows, ceChunkRows: this.#o.ceChunkRows,
      deterministic: this.#o.deterministic, documentIds: documentIds as Int32Array | undefined,
    };
    return { tokens, targets, ctx };
  }

  /** One sequence's shard, or a list of them (micro-batches), each checked and named by its index. */
  #microBatches(tokens: unknown, targets: unknown, opts: unknown): MicroBatch[] {
    const documentIds = checkOptions(opts, 'opts', ['documentIds']).documentIds as unknown;
    if (!Array.isArray(tokens)) {
      if (Array.isArray(targets)) fail('type', `targets: expected an Int32Array, as tokens is one; got an array of ${targets.length}`);
      if (Array.isArray(documentIds)) fail('type', `opts.documentIds: expected an Int32Array, as tokens is one; got an array of ${documentIds.length}`);
      return [this.#context(tokens, targets, '', documentIds)];
    }
    if (!Array.isArray(targets)) fail('type', `targets: expected an array of Int32Array (one per micro-batch), as tokens is; got ${describe(targets)}`);
    if (tokens.length === 0) fail('range', 'tokens: expected at least one micro-batch, got an empty array');
    if (targets.length !== tokens.length) fail('range', `targets: expected ${tokens.length} micro-batches (one per tokens entry), got ${targets.length}`);
    if (documentIds !== undefined && !Array.isArray(documentIds))
      fail('type', `opts.documentIds: expected an array of Int32Array (one per micro-batch), as tokens is; got ${describe(documentIds)}`);
    if (documentIds !== undefined && documentIds.length !== tokens.length)
      fail('range', `opts.documentIds: expected ${tokens.length} arrays (one per micro-batch), got ${documentIds.length}`);
    const ids = documentIds as unknown[] | undefined;
    return Array.from({ length: tokens.length }, (_, i) => {
      if (ids && !(ids[i] instanceof Int32Array)) fail('type', `opts.documentIds[${i}]: expected an Int32Array (one document id per token), got ${describe(ids[i])}`);
      return this.#context(tokens[i], targets[i], `[${i}]`, ids?.[i]); // holes too
    });
  }

  /** Every rank's numbers, in rank order (gatherNumbers; this rank's alone without a group). */
  #gatherNumbers(xs: number[]): number[][] {
    const group = this.#o.group;
    return !group || group.worldSize === 1 ? [xs] : gatherNumbers(group, xs, this.model.device); // an NCCL group reduces cuda tensors only
  }

  /** Sums numbers over the group with the same bits on every run: summed in rank order, in double. */
  #allReduceNumbers(xs: number[]): number[] {
    const all = this.#gatherNumbers(xs);
    return xs.map((_, i) => all.reduce((s, r) => s + r[i]!, 0));
  }

  /**
   * This rank's checked inputs (`check`) and the counted targets of the whole group. A rank
   * whose inputs are refused still joins the count, saying so, and every rank throws at the
   * same call: had it thrown alone, its peers would wait in the count (over NCCL until the
   * timeout) and, were its error caught, it would run a step behind them ever after.
   */
  #agreed<T>(check: () => T, targets: (value: T) => Int32Array[]): { value: T; total: number } {
    this.#live(); // this rank's own state (disposed, busy): said before any collective
    let value: T | undefined, error: unknown, refused = false;
    try {
      value = check();
    } catch (e) {
      error = e;
      refused = true;
    }
    try {
      const total = this.#totalCount(refused ? [] : targets(value!), refused);
      if (!refused) return { value: value!, total };
    } catch (e) {
      if (!refused) throw e;
    }
    throw error; // this rank's own reason, whatever the count said
  }

  /** Counted targets over every rank and micro-batch; also checks that the ranks pass as many micro-batches. */
  #totalCount(targets: Int32Array[], refused = false): number {
    let count = 0;
    for (const ts of targets) for (const t of ts) if (t !== IGNORE_INDEX) ++count;
    const all = this.#gatherNumbers([count, targets.length, refused ? 1 : 0]);
    if (refused) return 0;
    const others = all.flatMap((r, k) => (r[2] ? [k] : []));
    if (others.length > 0)
      throw new Error(`trainer: ${others.length > 1 ? `ranks ${others.join(', ')} refused their` : `rank ${others[0]} refused its`} inputs to this call (see ${others.length > 1 ? 'their errors' : 'its error'}); every rank stops here alike`);
    const batches = all.map((r) => r[1]!), total = all.reduce((s, r) => s + r[0]!, 0);
    if (batches.some((b) => b !== targets.length)) // every rank sees the same list, so every rank throws
      fail('range', `tokens: the ranks passed different numbers of micro-batches (${batches.join(', ')}, in rank order); every rank must pass as many (its shard of each sequence)`);
    if (total === 0) fail('range', `targets: every target ${targets.length > 1 ? 'of every micro-batch ' : ''}of the whole sequence is ${IGNORE_INDEX} (ignored); there is no loss to compute`);
    return total;
  }

  /** The loss of the whole sequence (every rank must call it with its shard); nothing is kept or changed. */
  forward(tokens: Int32Array, targets: Int32Array, opts?: ForwardOptions): ForwardResult {
    const { value: { ctx, wantLogits }, total } = this.#agreed(() => {
      const o = checkOptions(opts, 'opts', ['logits', 'documentIds']);
      const { ctx } = this.#context(tokens, targets, '', o.documentIds);
      const wantLogits = checkBoolean(o.logits, 'opts.logits') ?? false;
      // A Float32Array holds at most 2^32 values: say so before the step, not after it.
      const vocab = this.model.config.vocab_size;
      if (wantLogits && tokens.length * vocab > 2 ** 32)
        fail('range', `opts.logits: ${tokens.length} tokens x ${vocab} vocabulary entries is past the 2^32 values one Float32Array holds; ask for the logits of at most ${Math.floor(2 ** 32 / vocab)} tokens per rank at a time`);
      return { ctx, wantLogits };
    }, () => [targets]);
    const r = freeOnThrow(() => runLlama(this.model, null, tokens, targets, ctx, 1, wantLogits));
    const [lossSum] = this.#allReduceNumbers([r.lossSum]);
    return { loss: lossSum! / total, count: total, ...(r.logits ? { logits: r.logits } : {}) };
  }

  /**
   * Forward and backward: `gradients` then hold d(mean loss)/d(parameter), summed over the
   * group. Returns the loss. A list of sequences (micro-batches, run one after the other)
   * accumulates their gradients: the loss is the mean over every counted target of them all,
   * as one batch of those sequences would give, not a mean of per-sequence means.
   */
  backward(tokens: Int32Array | readonly Int32Array[], targets: Int32Array | readonly Int32Array[], opts?: StepOptions): number {
    const { value: batches, total } = this.#agreed(() => this.#microBatches(tokens, targets, opts), (bs) => bs.map((b) => b.targets));
    zeroGrads(this.#grads);
    // Gradients are summed over the group under the rest of the last micro-batch's backward,
    // as runLlama hands them over (on NCCL; a 'local' group sums at once): only then are they
    // final. NCCL's sums may differ from run to run in the last float32 bit; they agree on
    // every rank.
    const group = this.#o.group, works: AllReduceWork[] = [];
    let lossSum = 0;
    try {
      batches.forEach((b, i) => {
        if (group && group.worldSize > 1 && i === batches.length - 1) b.ctx.gradsReady = (ts) => void works.push(group.allReduceAsync(ts));
        lossSum += freeOnThrow(() => runLlama(this.model, this.#grads, b.tokens, b.targets, b.ctx, 1 / total)).lossSum; // a failed step holds no memory
      });
    } catch (e) {
      // Sums already posted still write the gradients: let them land before anything reuses them.
      for (const w of works) try { w.wait(); } catch { /* the backward's own error is the one to report */ }
      throw e;
    }
    for (const w of works) w.wait();
    const [lossAll] = this.#allReduceNumbers([lossSum]);
    return lossAll! / total;
  }

  /** Global L2 norm of the gradients (the same on every rank: they are summed over the group). */
  gradNorm(): number {
    this.#live();
    return Math.sqrt(sumOfSquares([...this.gradients.values()])); // one wait for the device, not one per tensor
  }

  /**
   * One training step on this rank's shard of one sequence, or of several accumulated as
   * backward() does (every rank calls it, with as many). targets[i] is the token that follows
   * tokens[i] (shifted before sharding; HF's labels are shifted by the model instead), -100 to
   * ignore it. A gradient norm that is not finite (the same on every rank) throws and updates
   * nothing.
   */
  step(tokens: Int32Array | readonly Int32Array[], targets: Int32Array | readonly Int32Array[], opts?: StepOptions): StepResult {
    const loss = this.backward(tokens, targets, opts);
    const gradNorm = this.gradNorm();
    // A step that throws here leaves the weights, the moments and stepCount as they were.
    const step = this.#step + 1;
    if (!Number.isFinite(gradNorm)) throw new Error(`step ${step}: the gradient norm is ${gradNorm} (loss ${loss}); no update was applied`);
    let lr = this.#o.lr;
    if (typeof lr === 'function') {
      this.#inLr = true; // user code: a step() or dispose() from inside it must not run half an update
      try {
        lr = lr(step);
      } finally {
        this.#inLr = false;
      }
      this.#live(); // all checks before the first change
    }
    positiveNumber(lr, `opts.lr(${step})`, 0);
    const { maxGradNorm, betas, eps, weightDecay } = this.#o;
    const coef = maxGradNorm === undefined ? 1 : maxGradNorm / (gradNorm + 1e-6); // as torch.nn.utils.clip_grad_norm_
    const gradScale = coef < 1 ? coef : 1;
    // One pass (one kernel on cuda) scales each gradient, updates its parameter and rounds
    // the parameter into its compute copy; with shardOptimizer, the copies wait for the
    // parameters other ranks update, and the gradients of those are scaled apart.
    const entries: AdamWEntry[] = [];
    for (const [name, p] of this.model.tensors) {
      const grad = this.gradients.get(name)!;
      if (!this.#m.has(name)) { // another rank's to update (shardOptimizer)
        if (gradScale !== 1) scale(grad, gradScale);
        continue;
      }
      // Decoupled weight decay on matrices only: norm weights (1-D) are not decayed, as usual for LLaMA.
      const copy = this.#shared ? undefined : this.model.computeCopy(name);
      entries.push({ param: p, grad, m: this.#m.get(name)!, v: this.#v.get(name)!, weightDecay: p.shape.length === 1 ? 0 : weightDecay, copy });
    }
    if (entries.length) adamwMulti(entries, { step, lr, beta1: betas[0], beta2: betas[1], eps, gradScale });
    if (this.#shared) {
      this.#shareUpdates(this.#shared);
      this.model.syncCompute();
    }
    this.#step = step;
    return { loss, gradNorm };
  }

  /**
   * Writes dir/config.json + model.safetensors (the weights, as transformers loads them),
   * dir/optimizer.safetensors (AdamW's m and v) and dir/trainer.json (the step). In a group,
   * rank 0 writes (every rank holds the same state; with shardOptimizer, every rank first sends
   * it its moments, one tensor at a time) and every rank returns once it is written; should
   * rank 0 fail to write, every rank throws. Each file is written beside its place and then
   * renamed into it, trainer.json last, and the files carry one id per save: a save cut short
   * leaves the last checkpoint, or files that a restore refuses as a mix of two saves, never a
   * mix it would accept. One tensor at a time is copied to host memory. Await it before any
   * other call on this trainer.
   */
  async saveCheckpoint(dir: string): Promise<void> {
    this.#live();
    // Said to the other ranks first (saveCheckpointFiles). The index matters where rank 0 writes.
    const writer = !this.#o.group || this.#o.group.rank === 0;
    const refused = thrownBy(() => (checkDir(dir), writer && refuseShardedDir(dir, 'saveCheckpoint')));
    await this.#exclusive('saveCheckpoint', () => saveCheckpointFiles(dir, this.#checkpointState(), refused));
  }

  #checkpointState(): CheckpointState {
    return { model: this.model, step: this.#step, group: this.#o.group, m: this.#m, v: this.#v, shared: this.#shared !== null };
  }

  // Runs f with every other call refused (set before f's first await) and dispose() deferred.
  async #exclusive(what: Exclusive, f: () => Promise<void>): Promise<void> {
    this.#busy = what;
    try {
      await f();
    } finally {
      this.#busy = null;
      if (this.#disposed) this.#free(); // dispose() was called meanwhile
    }
  }

  /**
   * shardOptimizer: each parameter from the rank that updated it. The others add -0 (x + -0 is
   * x, -0 included; +0 would turn -0 into +0), a list per layer as the gradients are summed, so
   * that no group buffers the whole model. (Should this fail, the group has failed, and the
   * weights here are not to be used.)
   */
  #shareUpdates({ foreign, lists }: { foreign: Tensor[]; lists: Tensor[][] }): void {
    const group = this.#o.group!;
    for (const p of foreign) {
      zero(p);
      scale(p, -1);
    }
    const works: AllReduceWork[] = [];
    try {
      for (const ts of lists) works.push(group.allReduceAsync(ts));
    } catch (e) {
      for (const w of works) try { w.wait(); } catch { /* the first error is the one to report */ }
      throw e;
    }
    for (const w of works) w.wait();
  }

  /**
   * Restores weights, AdamW's moments and the step from a saveCheckpoint() directory, into a
   * model of the same config (each differing config.json key is refused by name). AdamW's
   * settings and the learning rate stay this trainer's (unlike torch's load_state_dict, which
   * restores them from the checkpoint). Every file is checked before anything changes; then the
   * tensors are read one at a time, so that only one is in host memory. Should a read still
   * fail then (an I/O error, host memory exhausted), the model is
   * partly restored and the step count is unchanged: restore again. Over a group, every rank
   * throws, the step count unchanged, when any rank could not restore or the ranks restored
   * different saves (each rank reads its own files). Await it before any other call on this
   * trainer.
   */
  async restoreCheckpoint(dir: string): Promise<void> {
    this.#live();
    await this.#exclusive('restoreCheckpoint', async () => {
      let restored: { step: number; save: string } | undefined, error: unknown;
      try {
        checkDir(dir);
        restored = await restoreCheckpointFiles(dir, this.#checkpointState());
      } catch (e) {
        error = e;
      }
      this.#sameRestoreEverywhere(dir, restored, error);
      this.#step = restored!.step;
    });
  }

  /**
   * Each rank restores from its own files: over several nodes, perhaps other ones. Before any
   * goes on, the ranks compare whether each restored, which step and which save, and all throw
   * alike if not, rather than train from different weights, or wait at the next step for a rank
   * that failed here. (Throws this rank's own error first, if it has one.)
   */
  #sameRestoreEverywhere(dir: string, restored: { step: number; save: string } | undefined, error: unknown): void {
    const group = this.#o.group;
    if (!group || group.worldSize === 1) {
      if (error !== undefined) throw error;
      return;
    }
    let hash = 0x811c9dc5; // FNV-1a of the save's id: 32 bits, exact through gatherNumbers
    for (const c of restored?.save ?? '') hash = Math.imul(hash ^ c.codePointAt(0)!, 0x01000193) >>> 0;
    let rows: number[][];
    try {
      rows = this.#gatherNumbers(restored ? [0, restored.step, hash] : [1, 0, 0]);
    } catch (e) {
      throw error ?? e;
    }
    if (error !== undefined) throw error;
    const failed = rows.flatMap((r, k) => (r[0] ? [k] : []));
    const stopped = 'the weights and moments here are restored, the step count is not; restore again';
    if (failed.length > 0)
      throw new Error(`restoreCheckpoint: ${failed.length > 1 ? `ranks ${failed.join(', ')}` : `rank ${failed[0]}`} could not restore ${dir} (see ${failed.length > 1 ? 'their errors' : 'its error'}); ${stopped}`);
    const other = rows.findIndex((r) => r.some((x, i) => x !== rows[0]![i]));
    if (other > 0)
      throw new Error(`restoreCheckpoint: the ranks restored different checkpoints (rank 0 step ${rows[0]![1]}, rank ${other} step ${rows[other]![1]}${rows[other]![1] === rows[0]![1] ? ', another save' : ''}); every rank must restore the same save (over several nodes, a directory each node sees the same); ${stopped}`);
  }

  /**
   * Frees the gradients and AdamW's moments now, or, during a saveCheckpoint() or
   * restoreCheckpoint() not yet awaited, once it ends (the model is its owner's to dispose).
   * Idempotent.
   */
  dispose(): void {
    this.#disposed = true;
    if (!this.#busy) this.#free();
  }

  #free(): void {
    for (const map of [this.gradients, this.#m, this.#v]) for (const t of map.values()) t.dispose();
  }

  [Symbol.dispose](): void {
    this.dispose();
  }
}

function checkCheckpointing(value: unknown): Checkpointing {
  if (value === undefined) return true;
  if (typeof value === 'boolean' || value === 'keep-attention') return value;
  return fail(typeof value === 'string' ? 'range' : 'type', `opts.checkpoint: expected true, false or 'keep-attention', got ${describe(value)}`);
}

/** A trainer for `model`: gradients and AdamW state, allocated now (3 tensors per parameter; with shardOptimizer, 1 + 2 / worldSize). */
export function createTrainer(model: LlamaModel, opts: TrainerOptions): Trainer {
  if (!(model instanceof LlamaModel)) fail('type', `model: expected a LlamaModel from initLlama/loadLlama/createLlama, got ${describe(model)}`);
  if (model.disposed) fail('type', 'model: has been disposed');
  if (opts === undefined) fail('type', 'opts: expected { lr, ... }');
  const o = checkOptions(opts, 'opts', TRAINER_OPTION_KEYS);
  if (o.group !== undefined) {
    ProcessGroup.idOf(o.group, 'opts.group');
    if ((o.group as ProcessGroup).backend === 'nccl' && model.device !== 'cuda')
      fail('type', `opts.group: an NCCL group trains a model on 'cuda' (initLlama(config, { device: 'cuda', ... })); this model is on '${model.device}'`);
  }
  const onCuda = model.device === 'cuda';
  const lr = typeof o.lr === 'function' ? (o.lr as (s: number) => number) : positiveNumber(o.lr ?? fail('type', 'opts.lr: missing; expected a number >= 0 or a function of the step'), 'opts.lr', 0);
  const betas = o.betas === undefined ? [0.9, 0.999] : o.betas;
  if (!Array.isArray(betas) || betas.length !== 2) fail('type', `opts.betas: expected [beta1, beta2], got ${describe(betas)}`);
  Array.from(betas as unknown[], (b, i) => { // holes too: a default must not stand in for a missing beta
    checkBeta(b, `opts.betas[${i}]`);
  });
  return new Trainer(model, {
    group: o.group as ProcessGroup | undefined,
    layout: checkOneOf(o.layout, 'opts.layout', LAYOUTS) ?? 'contiguous',
    lr,
    weightDecay: positiveNumber(o.weightDecay, 'opts.weightDecay', 0.01),
    betas: betas as [number, number],
    eps: positiveNumber(o.eps, 'opts.eps', 1e-8, 0, false),
    maxGradNorm: o.maxGradNorm === undefined ? undefined : positiveNumber(o.maxGradNorm, 'opts.maxGradNorm', 0, 0, false),
    checkpoint: checkCheckpointing(o.checkpoint),
    deterministic: checkBoolean(o.deterministic, 'opts.deterministic') ?? false,
    shardOptimizer: checkBoolean(o.shardOptimizer, 'opts.shardOptimizer') ?? false,
    ffnBlockRows: o.ffnBlockRows === undefined ? BLOCK_ROWS[onCuda ? 'cuda' : 'cpu'].ffn : checkInteger(o.ffnBlockRows, 'opts.ffnBlockRows', 1),
    ceChunkRows: o.ceChunkRows === undefined ? BLOCK_ROWS[onCuda ? 'cuda' : 'cpu'].ce : checkInteger(o.ceChunkRows, 'opts.ceChunkRows', 1),
  });
}
