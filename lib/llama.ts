// The LLaMA forward and backward, written out per layer as in karpathy/llm.c (no autograd):
// the backward mirrors the forward call by call, in reverse. The sequence is sharded over a
// group: each rank holds M tokens of it and the attention runs as ring attention.
//
// Sizes: M tokens of this rank's shard, C hidden, F intermediate, H heads, KVH kv heads,
// D head dim, V vocabulary, L layers.
//
// What is kept between the forward and the backward, per layer:
//   checkpoint: true   only the layer's input x (M, C); the backward recomputes the layer
//                      up to the FFN's input (ring attention included) before going back
//                      through it (the FFN's output is never needed again).
//   checkpoint: 'keep-attention'  x, and attention's output and lse: the recompute skips
//                      the attention (and its ring transfers), the costliest part of a layer
//                      at long context, for M·H·D + H·M values more per layer.
//   checkpoint: false  every activation of LayerActs below.
// Either way the FFN keeps nothing: ffnBackward recomputes gate/up per row block, and the
// cross-entropy never forms the (M, V) logits.
//
// Calls that accumulate (+=): every weight gradient (linearBackward's dw, rmsNormBackward's
// dw, ffnBackward's dW, embeddingBackward, crossEntropyLoss's dwHead) and ops.add. Calls that
// overwrite: every input gradient (dx, dh). Weight gradients are zeroed before a backward.
import { attention, attentionBackward } from './attention.js';
import { checkInteger, checkOneOf, checkOptions, describe, fail } from './errors.js';
import type { ProcessGroup } from './group.js';
import type { LlamaLayerParams, LlamaModel, LlamaParams } from './llama-model.js';
import {
  add, crossEntropyLoss, embedding, embeddingBackward, ffn, ffnBackward, linear, linearBackward, logits as headLogits,
  reshape, rmsNorm, rmsNormBackward, rope, ropeBackward, zero,
} from './ops.js';
import { ringAttention, ringAttentionBackward } from './ring.js';
import type { RopeParameters } from './rope-freq.js';
import { LAYOUTS, type Layout } from './shard.js';
import { zeros, type Tensor } from './tensor.js';

export const IGNORE_INDEX = -100;

export interface ShardTokensOptions {
  rank: number;
  worldSize: number;
  /** Default 'contiguous'. */
  layout?: Layout;
}

/** Positions (in the whole sequence) of the `local` tokens that `rank` holds. */
export function shardPositions(local: number, rank: number, worldSize: number, layout: Layout): Int32Array {
  // RoPE takes positions as int32s (0 to 2^31 - 1): past that they would wrap to negative angles.
  if (local * worldSize > 2 ** 31)
    fail('range', `tokens: a whole sequence of ${worldSize} shards of ${local} tokens is past 2^31 tokens (positions are int32)`);
  const pos = new Int32Array(local);
  if (layout === 'contiguous') for (let i = 0; i < local; ++i) pos[i] = rank * local + i;
  else {
    if (local % 2 !== 0) fail('range', `tokens: a zigzag shard holds two equal chunks, so its length is even; got ${local}`);
    const c = local / 2;
    for (let i = 0; i < c; ++i) {
      pos[i] = rank * c + i;
      pos[c + i] = (2 * worldSize - 1 - rank) * c + i;
    }
  }
  return pos;
}

/** This rank's shard of a whole sequence of token ids (or targets), and its tokens' positions. */
export function shardTokens(tokens: Int32Array, opts: ShardTokensOptions): { tokens: Int32Array; positions: Int32Array } {
  if (!(tokens instanceof Int32Array)) fail('type', `tokens: expected an Int32Array, got ${describe(tokens)}`);
  if (opts === undefined) fail('type', 'opts: expected { rank, worldSize, layout }');
  const o = checkOptions(opts, 'opts', ['rank', 'worldSize', 'layout']);
  const worldSize = checkInteger(o.worldSize, 'opts.worldSize', 1);
  const rank = checkInteger(o.rank, 'opts.rank', 0, worldSize - 1);
  const layout = checkOneOf(o.layout, 'opts.layout', LAYOUTS) ?? 'contiguous';
  const chunks = layout === 'zigzag' ? 2 * worldSize : worldSize;
  if (tokens.length === 0 || tokens.length % chunks !== 0)
    fail('range', `tokens: the ${layout} layout cuts the sequence into ${chunks} equal chunks; its length ${tokens.length} is not a positive multiple of ${chunks}`);
  const local = tokens.length / worldSize;
  const positions = shardPositions(local, rank, worldSize, layout);
  return { tokens: Int32Array.from(positions, (p) => tokens[p]!), positions };
}

/** What the forward keeps for the backward (see the top of this file). */
export type Checkpointing = boolean | 'keep-attention';

/** How one run of the model goes (resolved and checked by the caller). */
export interface RunContext {
  group: ProcessGroup | undefined;
  layout: Layout;
  positions: Int32Array; // (M) this rank's tokens' positions in the whole sequence
  rope: RopeParameters; //   for the whole sequence's length (model.rope)
  checkpoint: Checkpointing;
  ffnBlockRows: number;
  ceChunkRows: number;
  /** Attention's backward on CUDA without atomic adds (see AttentionOptions.deterministic). Default false. */
  deterministic?: boolean;
  /** Packed sequences: the document of each of this rank's M tokens; attention stays within a document. */
  documentIds?: Int32Array;
  /**
   * Called during the backward with gradient tensors once they are final (each once: the head
   * and final norm, then each layer's, last to first, then the embedding), so that their sum
   * over the group can run under the rest of the backward. A layer's are handed over once the
   * layer before it has been recomputed (checkpointing), just before its backward: NCCL runs
   * a communicator's work in order, so sums posted earlier would hold up the recompute's ring
   * transfers, while the backward starts with the feed-forward, which needs no transfer.
   */
  gradsReady?: (ts: Tensor[]) => void;
}

/** One layer's activations; all but `x` are freed after the layer's backward (or right away with checkpointing). */
interface LayerActs {
  x: Tensor; //     (M, C)          the layer's input (owned by the caller)
  h: Tensor; //     (M, C)          rmsNorm(x, input_layernorm)
  rstd1: Tensor; // (M)
  q: Tensor; //     (1, M, H, D)    rope(h · wqᵀ)
  k: Tensor; //     (1, M, KVH, D)  rope(h · wkᵀ)
  v: Tensor; //     (1, M, KVH, D)  h · wvᵀ
  att: Tensor; //   (1, M, H, D)    (ring) attention over the whole sequence
  lse: Tensor; //   (1, H, M)
  x1: Tensor; //    (M, C)          x + att · woᵀ
  h2: Tensor; //    (M, C)          rmsNorm(x1, post_attention_layernorm)
  rstd2: Tensor; // (M)
}

/** Zeros of `like`'s dtype and device (the model's compute dtype), of `like`'s shape or `shape`. */
const zerosAs = (like: Tensor, shape: readonly number[] = like.shape) => zeros(shape, { dtype: like.dtype, device: like.device });

/** A view of t with another shape; t's own handle is released (the memory lives on in the view). */
function as(t: Tensor, shape: number[]): Tensor {
  const v = reshape(t, shape);
  t.dispose();
  return v;
}

/** f(t), then t's handle released: for a temporary that only f reads. */
function consume(t: Tensor, f: (t: Tensor) => Tensor): Tensor {
  try {
    return f(t);
  } finally {
    t.dispose();
  }
}

/** Attention's results, kept from the forward for the backward's recompute ('keep-attention'). */
interface KeptAttention {
  att: Tensor;
  lse: Tensor;
}

/** Frees every activation but x (the caller's) and those of `keep`. */
function freeActs(a: LayerActs, keep?: KeptAttention): void {
  for (const t of [a.h, a.rstd1, a.q, a.k, a.v, a.att, a.lse, a.x1, a.h2, a.rstd2]) if (t !== keep?.att && t !== keep?.lse) t.dispose();
}

// transformers multiplies RoPE's cos and sin by the attention factor (yarn), so q·k by its
// square: the same as a softmax scale of factor² / sqrt(D), with no pass over q and k.
const softmaxScale = (ctx: RunContext, D: number) => ctx.rope.attentionFactor ** 2 / Math.sqrt(D);

/** The layer's activations, up to the feed-forward's input h2: all its backward reads (which
 * is what the recompute before a layer's backward runs; ffnBackward recomputes its own block
 * products from h2). With `kept`, attention's results from an earlier run stand in for
 * running it again (they become the activations' own). */
function layerActs(model: LlamaModel, p: LlamaLayerParams, x: Tensor, ctx: RunContext, kept?: KeptAttention): LayerActs {
  const c = model.config, M = x.shape[0]!, H = c.num_attention_heads, KVH = c.num_key_value_heads, D = c.head_dim;
  const { y: h, rstd: rstd1 } = rmsNorm(x, p.inputNorm, c.rms_norm_eps);
  const q = as(consume(as(linear(h, p.wq), [M, H, D]), (t) => rope(t, ctx.positions, ctx.rope.invFreq)), [1, M, H, D]);
  const k = as(consume(as(linear(h, p.wk), [M, KVH, D]), (t) => rope(t, ctx.positions, ctx.rope.invFreq)), [1, M, KVH, D]);
  const v = as(linear(h, p.wv), [1, M, KVH, D]);
  const opts = { causal: true, scale: softmaxScale(ctx, D), documentIds: ctx.documentIds };
  let att: Tensor, lse: Tensor;
  if (kept) ({ att, lse } = kept);
  else ({ out: att, lse } = ctx.group ? ringAttention(q, k, v, { ...opts, group: ctx.group, layout: ctx.layout }) : attention(q, k, v, opts));
  const att2 = reshape(att, [M, H * D]);
  const x1 = linear(att2, p.wo); // o_proj, then the residual: x1 = x + o
  att2.dispose();
  add(x1, x);
  const { y: h2, rstd: rstd2 } = rmsNorm(x1, p.postNorm, c.rms_norm_eps);
  return { x, h, rstd1, q, k, v, att, lse, x1, h2, rstd2 };
}

/** The layer's forward: its activations and its output x2 = x1 + ffn(h2) (M, C). */
function layerForward(model: LlamaModel, p: LlamaLayerParams, x: Tensor, ctx: RunContext): { acts: LayerActs; out: Tensor } {
  const acts = layerActs(model, p, x, ctx);
  const out = ffn(acts.h2, p.wGate, p.wUp, p.wDown, ctx.ffnBlockRows);
  add(out, acts.x1);
  return { acts, out };
}

/** The layer's backward, opposite layerForward: dout (M, C) -> dx (M, C); weight grads +=. */
function layerBackward(model: LlamaModel, p: LlamaLayerParams, g: LlamaLayerParams, a: LayerActs, dout: Tensor, ctx: RunContext): Tensor {
  const c = model.config, M = a.x.shape[0]!, H = c.num_attention_heads, KVH = c.num_key_value_heads, D = c.head_dim;
  // out = x1 + ffn(h2)
  const dh2 = zerosAs(dout);
  ffnBackward(dout, a.h2, p.wGate, p.wUp, p.wDown, ctx.ffnBlockRows, dh2, g.wGate, g.wUp, g.wDown); // dh2 =, dW +=
  const dx1 = zerosAs(dout);
  rmsNormBackward(dh2, a.x1, p.postNorm, a.rstd2, dx1, g.postNorm); // dx1 =, dw +=
  dh2.dispose();
  add(dx1, dout); // the residual
  // x1 = x + att · woᵀ
  const att2 = reshape(a.att, [M, H * D]);
  const datt = zerosAs(dout, [M, H * D]);
  linearBackward(dx1, att2, p.wo, datt, g.wo); // datt =, dwo +=
  att2.dispose();
  const datt4 = as(datt, [1, M, H, D]);
  const opts = { causal: true, scale: softmaxScale(ctx, D), deterministic: ctx.deterministic ?? false, documentIds: ctx.documentIds };
  const { dq, dk, dv } = ctx.group
    ? ringAttentionBackward(datt4, a.q, a.k, a.v, a.att, a.lse, { ...opts, group: ctx.group, layout: ctx.layout })
    : attentionBackward(datt4, a.q, a.k, a.v, a.att, a.lse, opts);
  datt4.dispose();
  // q = rope(h · wqᵀ), k = rope(h · wkᵀ), v = h · wvᵀ
  const dqLin = as(consume(as(dq, [M, H, D]), (t) => ropeBackward(t, ctx.positions, ctx.rope.invFreq)), [M, H * D]);
  const dkLin = as(consume(as(dk, [M, KVH, D]), (t) => ropeBackward(t, ctx.positions, ctx.rope.invFreq)), [M, KVH * D]);
  const dvLin = as(dv, [M, KVH * D]);
  const dh = zerosAs(dout), tmp = zerosAs(dout);
  linearBackward(dqLin, a.h, p.wq, dh, g.wq); // dh =, dwq +=
  linearBackward(dkLin, a.h, p.wk, tmp, g.wk); // tmp =, dwk +=
  add(dh, tmp);
  linearBackward(dvLin, a.h, p.wv, tmp, g.wv); // tmp =, dwv +=
  add(dh, tmp);
  for (const t of [dqLin, dkLin, dvLin, tmp]) t.dispose();
  // h = rmsNorm(x)
  const dx = zerosAs(dout);
  rmsNormBackward(dh, a.x, p.inputNorm, a.rstd1, dx, g.inputNorm); // dx =, dw +=
  dh.dispose();
  add(dx, dx1); // the residual
  dx1.dispose();
  return dx;
}

export interface RunResult {
  /** Sum of -log p(target) over this rank's counted tokens. */
  lossSum: number;
  /** This rank's targets that are not IGNORE_INDEX. */
  count: number;
  /** (M, V) logits of this rank's tokens, when asked for. */
  logits?: Float32Array;
}

/**
 * One forward (and, with `grads`, the backward) over this rank's M tokens. `gradScale`
 * multiplies every gradient (1 / the number of counted targets of the whole sequence for a
 * mean loss). Gradients are those of this rank's share of the loss; the caller sums them
 * over the group.
 */
export function runLlama(
  model: LlamaModel, grads: LlamaParams | null, tokens: Int32Array, targets: Int32Array, ctx: RunContext,
  gradScale: number, wantLogits = false,
): RunResult {
  const { compute: P, config } = model; // the weights in the compute dtype (bfloat16 copies on cuda)
  const L = config.num_hidden_layers;
  // xs[l]: the input of layer l, xs[L]: the last layer's output. acts[l]: kept only without
  // checkpointing; kept[l]: attention's results, only with 'keep-attention'.
  const xs: Tensor[] = [embedding(tokens, P.embed)];
  const acts: (LayerActs | null)[] = [];
  const kept: (KeptAttention | null)[] = [];
  try {
    for (let l = 0; l < L; ++l) {
      const { acts: a, out } = layerForward(model, P.layers[l]!, xs[l]!, ctx);
      xs.push(out);
      if (grads === null || ctx.checkpoint) {
        const keep = grads && ctx.checkpoint === 'keep-attention' ? { att: a.att, lse: a.lse } : null;
        freeActs(a, keep ?? undefined);
        if (grads === null) xs[l]!.dispose(); // a forward alone keeps nothing behind
        acts.push(null);
        kept.push(keep);
      } else {
        acts.push(a);
        kept.push(null);
      }
    }
    const xL = xs[L]!;
    const { y: hf, rstd: rstdF } = rmsNorm(xL, P.norm, config.rms_norm_eps);
    const dhf = grads ? zerosAs(hf) : undefined;
    let result: RunResult;
    try {
      const ce = crossEntropyLoss(hf, P.head, targets, {
        chunkRows: ctx.ceChunkRows, ignoreIndex: IGNORE_INDEX, gradScale, dh: dhf, dwHead: grads?.head,
      }); // dhf =, dhead += (into dembed when tied)
      result = { lossSum: ce.loss, count: ce.count };
      if (wantLogits) {
        const lg = headLogits(hf, P.head);
        result.logits = lg.handle('logits').toFloat32Array();
        lg.dispose();
      }
    } finally {
      hf.dispose();
    }
    if (!grads) {
      rstdF.dispose();
      return result;
    }
    // ---- backward: the mirror image ----
    let dx = zerosAs(xL);
    rmsNormBackward(dhf!, xL, P.norm, rstdF, dx, grads.norm); // dx =, dnorm +=
    dhf!.dispose();
    rstdF.dispose();
    // Final gradients not yet handed over to ctx.gradsReady (see there for when they are).
    let ready: Tensor[] = grads.head === grads.embed ? [grads.norm] : [grads.norm, grads.head]; // a tied head waits for the embedding
    const handOver = () => {
      ctx.gradsReady?.(ready);
      ready = [];
    };
    for (let l = L - 1; l >= 0; --l) {
      let a = acts[l];
      if (!a) {
        a = layerActs(model, P.layers[l]!, xs[l]!, ctx, kept[l] ?? undefined); // recompute (checkpointing)
        kept[l] = null; // a owns them now
      }
      acts[l] = a;
      handOver();
      const dPrev = layerBackward(model, P.layers[l]!, grads.layers[l]!, a, dx, ctx);
      ready = Object.values(grads.layers[l]!) as Tensor[];
      freeActs(a);
      acts[l] = null;
      dx.dispose();
      xs[l + 1]!.dispose();
      dx = dPrev;
    }
    embeddingBackward(tokens, dx, grads.embed, model.config.pad_token_id); // dembed += (the padding row: nothing)
    ready.push(grads.embed);
    handOver();
    dx.dispose();
    return result;
  } finally {
    for (const a of acts) if (a) freeActs(a);
    for (const k of kept) if (k) for (const t of [k.att, k.lse]) t.dispose();
    for (const x of xs) x.dispose();
  }
}

/** Zeroes every gradient tensor (a tied head is the embedding, zeroed once). */
export function zeroGrads(g: LlamaParams): void {
  for (const t of new Set(allTensors(g))) zero(t);
}

export function allTensors(p: LlamaParams): Tensor[] {
  return [p.embed, ...p.layers.flatMap((l) => Object.values(l) as Tensor[]), p.norm, p.head];
}
