#!/usr/bin/env node
// Line retrieval, the long-context test of the Ring Attention paper (after LongChat), made
// small: a sequence of `key value ;` lines, then questions `? key` whose answer is the value
// on that key's line. A tiny LLaMA is trained on the CPU with the sequence sharded over
// --ranks worker threads; attention runs as ring attention over them, so no rank ever holds
// more than its shard of the activations. Prints the loss and the retrieval accuracy on
// fresh sequences every --eval-every steps. With the defaults (3000 steps of 4 sequences
// packed into one with document ids; under half a minute on 2 cores) accuracy passes 50%
// against 6% chance and the 25% of guessing among the values in context: the retrieval
// circuit (an induction head) has formed.
//
// The same script trains on a GPU with --device cuda (bfloat16 compute; the ranks share it),
// or on several, one process per GPU, under `ring-attention launch` or torchrun (an NCCL
// group; --ranks is then the job's). Neither has run on a GPU yet: scripts/gpu-session.sh has
// both in its part `example`.
//
//   node examples/line-retrieval.mjs [--ranks 2] [--steps 3000] [--batch 4] [--accumulate] [--lr 0.001] [--lines 4] [--layout zigzag] [--device cpu|cuda]
//   npx ring-attention launch --nproc-per-node 8 examples/line-retrieval.mjs --device cuda
import { writeSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { isMainThread } from 'node:worker_threads';

import { createTrainer, initLlama, initProcessGroup, launch, shardTokens, tensor } from '../dist/index.js';

// ---- the task's vocabulary and sequences ----
const PAD = 0, BOS = 1, END = 2, ASK = 3, KEYS = 4, NKEYS = 16, VALUES = KEYS + NKEYS, NVALUES = 16;
const VOCAB = VALUES + NVALUES; // 36 tokens

function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Length of a sequence of `lines` lines and as many questions, padded to a multiple of `multiple`. */
const seqLength = (lines, multiple) => Math.ceil((1 + 6 * lines) / multiple) * multiple;

/**
 * One sequence: BOS, `lines` lines `key value END` (distinct keys, random values), then every
 * key asked once in random order as `ASK key value`. The target at each asked key is its value;
 * nothing else is scored (targets -100).
 */
function makeSequence(seed, lines, length) {
  const r = rng(seed);
  const shuffle = (a) => {
    for (let i = a.length - 1; i > 0; --i) {
      const j = Math.floor(r() * (i + 1));
      [a[i], a[j]] = [a[j], a[i]];
    }
    return a;
  };
  const keys = shuffle(Array.from({ length: NKEYS }, (_, i) => i));
  const values = keys.slice(0, lines).map(() => Math.floor(r() * NVALUES));
  const tokens = new Int32Array(length).fill(PAD), targets = new Int32Array(length).fill(-100);
  let p = 0;
  tokens[p++] = BOS;
  for (let i = 0; i < lines; ++i) {
    tokens[p++] = KEYS + keys[i];
    tokens[p++] = VALUES + values[i];
    tokens[p++] = END;
  }
  const order = shuffle(Array.from({ length: lines }, (_, i) => i));
  for (const i of order) {
    tokens[p++] = ASK;
    tokens[p] = KEYS + keys[i];
    targets[p++] = VALUES + values[i]; // predicted at the key, as the next token
    tokens[p++] = VALUES + values[i];
  }
  return { tokens, targets };
}

const concat = (arrays) => {
  const out = new Int32Array(arrays.reduce((n, a) => n + a.length, 0));
  arrays.reduce((at, a) => (out.set(a, at), at + a.length), 0);
  return out;
};

// ---- one rank ----
export default async function rank({ rank, worldSize, group, args }) {
  const { steps, batch = 1, pack = false, lines, layout, lr, seed, evalEvery, evalSequences, tty, device = 'cpu' } = args;
  const length = seqLength(lines, 2 * worldSize);
  const config = {
    hidden_size: 64, intermediate_size: 176, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2,
    vocab_size: VOCAB, rms_norm_eps: 1e-6, rope_theta: 10000, tie_word_embeddings: false, max_position_embeddings: pack ? batch * length : length,
  };
  const model = initLlama(config, { seed, device });
  const warmup = Math.min(50, Math.ceil(steps / 10));
  const trainer = createTrainer(model, {
    group, layout, weightDecay: 0.01, maxGradNorm: 1, ffnBlockRows: 64, ceChunkRows: 64,
    lr: (s) => lr * Math.min(1, s / warmup) * (s > steps / 2 ? 0.5 + 0.5 * Math.cos((Math.PI * (s - steps / 2)) / steps) : 1),
  });
  const shard = (a) => shardTokens(a, { rank, worldSize, layout }).tokens;
  // Training sequence n and evaluation sequence n draw from seeds of opposite parity: never the same.
  const sequenceSeed = (n, evaluation) => (Math.imul(seed + 1, 0x9e3779b1) + 2 * n + (evaluation ? 1 : 0)) >>> 0;
  // Written straight to fd 1: a worker's process.stdout is relayed through the main thread
  // and can lag behind (or be cut off at exit) while the rank computes.
  const say = (line) => rank === 0 && writeSync(1, line);
  const bar = (done, total, loss) => {
    const w = 24, n = Math.round((w * done) / total);
    return `\r[${'#'.repeat(n)}${'.'.repeat(w - n)}] ${done}/${total} loss ${loss.toFixed(3)}`;
  };

  // Retrieval accuracy on fresh sequences: argmax of the logits at each asked key.
  const evaluate = () => {
    const counts = new Float32Array(3); // correct, asked, loss sum
    for (let e = 0; e < evalSequences; ++e) {
      const seq = makeSequence(sequenceSeed(e, true), lines, length);
      const targets = shard(seq.targets);
      const { loss, logits } = trainer.forward(shard(seq.tokens), targets, { logits: true });
      counts[2] += loss / worldSize; // the same on every rank: the sum over ranks is the loss
      targets.forEach((t, i) => {
        if (t === -100) return;
        let best = 0;
        for (let v = 1; v < VOCAB; ++v) if (logits[i * VOCAB + v] > logits[i * VOCAB + best]) best = v;
        counts[0] += best === t ? 1 : 0;
        counts[1] += 1;
      });
    }
    const t = tensor(counts, [3], { device: group.backend === 'nccl' ? 'cuda' : 'cpu' }); // NCCL sums cuda tensors only
    group.allReduce(t);
    const [correct, asked, lossSum] = t.handle('counts').toFloat32Array();
    t.dispose();
    return { accuracy: correct / asked, asked, loss: lossSum / evalSequences };
  };

  const start = performance.now();
  let recent = 0, recentN = 0, last;
  try {
    say(`line retrieval: ${lines} lines + ${lines} questions = ${length} tokens per sequence, ${batch} per step${pack ? ' (packed)' : ''}, ${worldSize} ranks (${layout}), ` +
      `${trainer.model.tensors.size} tensors, chance accuracy ${(100 / NVALUES).toFixed(1)}%\n`);
    for (let s = 1; s <= steps; ++s) {
      // `batch` sequences per step, laid end to end in one sequence whose document ids keep
      // each one's attention to itself; or, with --accumulate, one after the other
      // (micro-batches), their gradients accumulated: the same computation up to rounding, in
      // `batch` times as many (smaller) calls
      const seqs = Array.from({ length: batch }, (_, j) => makeSequence(sequenceSeed((s - 1) * batch + j, false), lines, length));
      const { loss } = pack
        ? trainer.step(shard(concat(seqs.map((q) => q.tokens))), shard(concat(seqs.map((q) => q.targets))),
          { documentIds: shard(concat(seqs.map((q, j) => new Int32Array(q.tokens.length).fill(j)))) })
        : trainer.step(seqs.map((q) => shard(q.tokens)), seqs.map((q) => shard(q.targets)));
      recent += loss;
      recentN += 1;
      if (tty) say(bar(s, steps, loss));
      if (s % evalEvery === 0 || s === steps) {
        last = evaluate();
        const secs = ((performance.now() - start) / 1000).toFixed(1);
        say(`${tty ? '\r\x1b[K' : ''}step ${String(s).padStart(String(steps).length)}/${steps}  train loss ${(recent / recentN).toFixed(4)}  ` +
          `eval loss ${last.loss.toFixed(4)}  retrieval accuracy ${(100 * last.accuracy).toFixed(1)}%  (${secs} s)\n`);
        recent = recentN = 0;
      }
    }
    say(`final retrieval accuracy ${(100 * last.accuracy).toFixed(1)}% on ${last.asked} questions\n`);
    return last;
  } finally {
    trainer.dispose();
    model.dispose();
  }
}

// ---- the command line ----
if (isMainThread && import.meta.url === new URL(process.argv[1], 'file:').href) {
  const { values: o } = parseArgs({
    options: {
      ranks: { type: 'string', default: '2' },
      steps: { type: 'string', default: '3000' },
      batch: { type: 'string', default: '4' },
      accumulate: { type: 'boolean', default: false },
      lines: { type: 'string', default: '4' },
      layout: { type: 'string', default: 'zigzag' },
      lr: { type: 'string', default: '0.001' },
      seed: { type: 'string', default: '1' },
      'eval-every': { type: 'string' },
      'eval-sequences': { type: 'string', default: '32' },
      device: { type: 'string', default: 'cpu' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (o.help) {
    console.log('usage: node examples/line-retrieval.mjs [--ranks N] [--steps N] [--batch N] [--accumulate] [--lines N] [--layout contiguous|zigzag] [--lr X] [--seed N] [--eval-every N] [--eval-sequences N] [--device cpu|cuda]');
    process.exit(0);
  }
  const int = (name, min) => {
    const v = Number(o[name]);
    if (!Number.isInteger(v) || v < min) {
      console.error(`--${name}: expected an integer >= ${min}, got '${o[name]}'`);
      process.exit(2);
    }
    return v;
  };
  if (!['contiguous', 'zigzag'].includes(o.layout)) {
    console.error(`--layout: expected 'contiguous' or 'zigzag', got '${o.layout}'`);
    process.exit(2);
  }
  if (!['cpu', 'cuda'].includes(o.device)) {
    console.error(`--device: expected 'cpu' or 'cuda', got '${o.device}'`);
    process.exit(2);
  }
  const steps = int('steps', 1);
  const lr = Number(o.lr);
  if (!(lr > 0)) {
    console.error(`--lr: expected a number > 0, got '${o.lr}'`);
    process.exit(2);
  }
  const args = {
    steps, batch: int('batch', 1), pack: !o.accumulate, lines: int('lines', 1), layout: o.layout, lr, seed: int('seed', 0),
    evalEvery: o['eval-every'] === undefined ? Math.max(1, Math.round(steps / 10)) : int('eval-every', 1),
    evalSequences: int('eval-sequences', 1), tty: Boolean(process.stdout.isTTY), device: o.device,
  };
  if (args.lines > NKEYS) {
    console.error(`--lines: at most ${NKEYS} (the number of distinct keys), got ${args.lines}`);
    process.exit(2);
  }
  if (process.env.WORLD_SIZE === undefined) await launch({ worldSize: int('ranks', 1), device: o.device }, new URL(import.meta.url), args);
  else {
    // One rank of a job of processes (ring-attention launch, torchrun): an NCCL group.
    if (o.device !== 'cuda') {
      console.error("--device: a job of processes (WORLD_SIZE is set) trains on GPUs, one each: pass --device cuda (a CPU run's ranks are threads: --ranks, without a launcher)");
      process.exit(2);
    }
    const group = await initProcessGroup({ backend: 'nccl' });
    try {
      await rank({ rank: group.rank, worldSize: group.worldSize, group, args });
    } finally {
      group.destroy();
    }
  }
}
