// The LLaMA model layer's files and state: save then load (transformers' names and dtypes),
// what a real checkpoint directory holds beside the model's tensors, the trainer's checkpoints
// (weights, AdamW's moments and the step; restore then step as if never interrupted; sharded
// moments), refusals that change nothing, and one step against a float64 AdamW reference.
import { spawnSync } from 'node:child_process';
import { mkdtemp, readdir, readFile, rm, writeFile, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import {
  createLlama, createTrainer, hostMemoryStats, initLlama, launch, llamaTensorNames, loadLlama, loadLlamaConfig, readSafetensors, saveLlama,
  writeSafetensors, type LlamaModel, type ResolvedLlamaConfig, type Trainer,
} from '../dist/index.js';
import { bits, llama3Tiny, randomWeights, rankModule, sequence, tiedTiny, tiny } from './llama-fixtures.js';
import { adamwRef } from './ops-reference.js';
import { worstError } from './reference.js';

describe('saving, loading, checkpoints', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'llama-test-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });
  const seq = sequence(9, tiny.vocab_size);

  for (const c of [tiny, tiedTiny]) {
    it(`save then load gives identical logits (${c.tie_word_embeddings ? 'tied' : 'untied'}), as transformers names them`, async () => {
      const where = join(dir, `saved-${c.tie_word_embeddings}`);
      let before: Float32Array;
      {
        using model = initLlama(c, { seed: 3 });
        using tr = createTrainer(model, { lr: 1e-2 });
        tr.step(seq.tokens, seq.targets); // norms no longer all 1
        before = tr.forward(seq.tokens, seq.targets, { logits: true }).logits!;
        await saveLlama(where, model);
      }
      const cfg = JSON.parse(await readFile(join(where, 'config.json'), 'utf8'));
      expect(cfg).toMatchObject({ architectures: ['LlamaForCausalLM'], model_type: 'llama', hidden_act: 'silu', tie_word_embeddings: c.tie_word_embeddings, rope_scaling: null, num_key_value_heads: 2,
        rope_parameters: { rope_type: 'default', rope_theta: 10000 } });
      using loaded = await loadLlama(where);
      expect([...loaded.tensors.keys()]).toEqual([...llamaTensorNames(c).keys()]);
      expect(loaded.tensors.has('lm_head.weight')).toBe(!c.tie_word_embeddings);
      using tr2 = createTrainer(loaded, { lr: 1e-2 });
      expect(tr2.forward(seq.tokens, seq.targets, { logits: true }).logits).toEqual(before);
    });
  }

  it("saving into a sharded checkpoint's directory is refused (tools that follow its index would read the old shards)", async () => {
    const sharded = join(dir, 'sharded');
    await mkdir(sharded, { recursive: true });
    await writeFile(join(sharded, 'model.safetensors.index.json'), '{"weight_map": {}}');
    using model = initLlama(tiny, { seed: 4 });
    const why = `${sharded} holds a sharded checkpoint (model.safetensors.index.json), which tools that follow the index would go on reading instead of the model.safetensors saved beside it; save into another directory`;
    await expect(saveLlama(sharded, model)).rejects.toThrow(new RangeError(`saveLlama: ${why}`));
    using tr = createTrainer(model, { lr: 1e-2 });
    await expect(tr.saveCheckpoint(sharded)).rejects.toThrow(new RangeError(`saveCheckpoint: ${why}`));
    expect((await readdir(sharded)).sort()).toEqual(['model.safetensors.index.json']); // nothing written
  });

  it("saveLlama({ dtype: 'bfloat16' }): half the bytes, each value rounded to bfloat16, torch_dtype says so; loads back", async () => {
    using model = initLlama(tiny, { seed: 4 });
    const where = join(dir, 'saved-bf16'), full = join(dir, 'saved-f32');
    await saveLlama(where, model, { dtype: 'bfloat16' });
    await saveLlama(full, model);
    const stored = await readSafetensors(join(where, 'model.safetensors'));
    expect(new Set([...stored.tensors.values()].map((t) => t.dtype))).toEqual(new Set(['BF16']));
    expect(JSON.parse(await readFile(join(where, 'config.json'), 'utf8')).torch_dtype).toBe('bfloat16');
    expect(JSON.parse(await readFile(join(full, 'config.json'), 'utf8')).torch_dtype).toBe('float32');
    const size = async (d: string) => (await readFile(join(d, 'model.safetensors'))).length;
    expect(await size(where)).toBeLessThan(0.51 * (await size(full)));
    using loaded = await loadLlama(where);
    const orig = model.toArrays();
    for (const [n, a] of loaded.toArrays()) {
      const o = orig.get(n)!, lowBits = new Uint32Array(a.buffer, a.byteOffset, a.length);
      expect(lowBits.every((b) => (b & 0xffff) === 0), n).toBe(true); // a bfloat16 value in float32
      // round to nearest: within half a bfloat16 unit (2^-8 relative) of the float32 value
      expect(a.every((x, i) => Math.abs(x - o[i]!) <= Math.abs(o[i]!) * 2 ** -8), n).toBe(true);
    }
    const half = join(dir, 'saved-f16');
    await saveLlama(half, model, { dtype: 'float16' });
    expect(new Set([...(await readSafetensors(join(half, 'model.safetensors'))).tensors.values()].map((t) => t.dtype))).toEqual(new Set(['F16']));
    expect(JSON.parse(await readFile(join(half, 'config.json'), 'utf8')).torch_dtype).toBe('float16');
    await expect(saveLlama(where, model, { dtype: 'int8' as never })).rejects.toThrow(/^opts\.dtype: expected one of 'float32', 'bfloat16', 'float16', got 'int8'/);
  });

  it("a config.json of transformers 5 (rope_parameters, no rope_theta) loads as the same model as transformers 4's form", async () => {
    const c = { ...llama3Tiny, rope_theta: 500000 }; // not the default base, so a base left unread shows
    const where = join(dir, 'saved-llama3'), where5 = join(dir, 'saved-llama3-v5');
    let before: Float32Array;
    {
      using model = initLlama(c, { seed: 3 });
      using tr = createTrainer(model, { lr: 1e-2 });
      before = tr.forward(seq.tokens, seq.targets, { logits: true }).logits!;
      await saveLlama(where, model);
    }
    const cfg = JSON.parse(await readFile(join(where, 'config.json'), 'utf8'));
    expect(cfg.rope_parameters).toEqual({ ...c.rope_scaling, rope_theta: 500000 }); // both forms are written
    expect(cfg.rope_scaling).toEqual(c.rope_scaling);
    const { rope_theta: _t, rope_scaling: _s, ...only5 } = cfg;
    await mkdir(where5, { recursive: true });
    await writeFile(join(where5, 'config.json'), JSON.stringify(only5));
    await writeFile(join(where5, 'model.safetensors'), await readFile(join(where, 'model.safetensors')));
    using loaded = await loadLlama(where5);
    expect(loaded.config).toMatchObject({ rope_theta: 500000, rope_scaling: c.rope_scaling });
    using tr5 = createTrainer(loaded, { lr: 1e-2 });
    expect(tr5.forward(seq.tokens, seq.targets, { logits: true }).logits).toEqual(before);
    // the older key 'type' is written as rope_type in rope_parameters; an unscaled {} as null (transformers 4 finds no type in {})
    using older = initLlama({ ...tiny, rope_scaling: { type: 'linear', factor: 2 } }, { seed: 1 }), empty = initLlama({ ...tiny, rope_scaling: {} }, { seed: 1 });
    await saveLlama(join(dir, 'saved-type'), older);
    await saveLlama(join(dir, 'saved-empty'), empty);
    const typed = JSON.parse(await readFile(join(dir, 'saved-type', 'config.json'), 'utf8'));
    expect(typed).toMatchObject({ rope_scaling: { type: 'linear', factor: 2 }, rope_parameters: { rope_type: 'linear', factor: 2, rope_theta: 10000 } });
    expect(typed.rope_parameters).not.toHaveProperty('type');
    const unscaled = JSON.parse(await readFile(join(dir, 'saved-empty', 'config.json'), 'utf8'));
    expect(unscaled).toMatchObject({ rope_scaling: null, rope_parameters: { rope_type: 'default', rope_theta: 10000 } });
  });

  // Tied: one tensor is both the embedding and the head, whose gradient is summed once; clipping
  // that acts (0.05) scales every gradient, whichever rank updates its tensor.
  it('shardOptimizer with tied embeddings and clipping: the same weights and clipped gradients as without, bit for bit', async () => {
    const base = { config: tiedTiny, weights: Object.fromEntries(randomWeights(tiedTiny, 21)), tokens: seq.tokens, targets: seq.targets, layout: 'zigzag', lr: 3e-3, maxGradNorm: 0.05, steps: 2 };
    type Ranks = { losses: number[]; weights: Record<string, Float32Array>; grads: Record<string, Float32Array> }[];
    const [plain, sharded] = await Promise.all([false, true].map(async (shardOptimizer) => (await launch({ worldSize: 4 }, rankModule, { ...base, shardOptimizer })) as Ranks));
    for (let r = 0; r < 4; ++r) {
      expect(sharded[r]!.losses).toEqual(plain[r]!.losses);
      for (const n of Object.keys(plain[r]!.weights)) expect(Buffer.compare(bits(sharded[r]!.weights[n]!), bits(plain[r]!.weights[n]!)), `rank ${r} ${n}`).toBe(0);
      for (const n of Object.keys(plain[r]!.grads)) expect(Buffer.compare(bits(sharded[r]!.grads[n]!), bits(plain[r]!.grads[n]!)), `rank ${r} gradient ${n}`).toBe(0);
    }
  });

  it('shardOptimizer: each rank holds the moments of its tensors only, training gives the same bits as without, checkpoints are the same files', async () => {
    const weights = randomWeights(tiny, 21);
    // Embedding rows of tokens the sequence lacks keep their values, -0 too (a sum with +0 would not)
    const embed = weights.get('model.embed_tokens.weight')!, C = tiny.hidden_size;
    const unused = [...Array(tiny.vocab_size).keys()].filter((id) => !seq.tokens.includes(id)).slice(0, 3);
    for (const id of unused) embed.fill(-0, id * C, (id + 1) * C);
    const base = { config: tiny, weights: Object.fromEntries(weights), tokens: seq.tokens, targets: seq.targets, layout: 'zigzag', lr: 3e-3, maxGradNorm: 0.5 };
    type Ranks = { losses: number[]; weights: Record<string, Float32Array>; grads: Record<string, Float32Array>; momentNames: string[] }[];
    const run = async (args: object) => (await launch({ worldSize: 4 }, rankModule, { ...base, ...args })) as Ranks;
    const plain = await run({ steps: 3 }), sharded = await run({ steps: 3, shardOptimizer: true });
    const names = [...llamaTensorNames(tiny).keys()].sort();
    expect([...plain[0]!.momentNames].sort()).toEqual(names);
    const held = sharded.map((r) => r.momentNames);
    held.forEach((h, r) => expect(h.length, `rank ${r}`).toBeGreaterThan(0));
    expect(held.flat().sort()).toEqual(names); // disjoint, and every tensor's somewhere
    // the largest tensors (embedding, head) go to different ranks
    expect(held.findIndex((h) => h.includes('model.embed_tokens.weight'))).not.toBe(held.findIndex((h) => h.includes('lm_head.weight')));
    const same = (a: Ranks[number], b: Ranks[number]) => {
      expect(a.losses).toEqual(b.losses);
      for (const n of names) expect(Buffer.compare(bits(a.weights[n]!), bits(b.weights[n]!)), n).toBe(0);
    };
    sharded.forEach((r, i) => same(r, plain[i]!));
    // and the last step's gradients, clipped alike on every rank whoever holds the moments
    sharded.forEach((r, i) => { for (const n of names) expect(Buffer.compare(bits(r.grads[n]!), bits(plain[i]!.grads[n]!)), `rank ${i} gradient ${n}`).toBe(0); });
    expect(Object.is(plain[0]!.weights['model.embed_tokens.weight']![unused[0]! * C], -0)).toBe(true); // the case above occurs
    // A save of either kind restores into either: one step, saved, then two more give the three steps' bits.
    for (const [from, into] of [[true, false], [false, true]]) {
      const ck = join(dir, `ck-shard-${from}`);
      await run({ steps: 1, shardOptimizer: from, saveDir: ck });
      const resumed = await run({ steps: 2, shardOptimizer: into, restoreFrom: ck });
      resumed.forEach((r, i) => same({ ...r, losses: [plain[i]!.losses[0]!, ...r.losses] }, plain[i]!));
    }
    // and both kinds of save wrote the same moments
    const [a, b] = await Promise.all([true, false].map((k) => readSafetensors(join(dir, `ck-shard-${k}`, 'optimizer.safetensors'))));
    expect([...a!.tensors.keys()].sort()).toEqual([...b!.tensors.keys()].sort());
    for (const [n, t] of a!.tensors) expect(Buffer.compare(bits(t.data), bits(b!.tensors.get(n)!.data)), n).toBe(0);
    using m = initLlama(tiny, { seed: 1 });
    expect(() => createTrainer(m, { lr: 1, shardOptimizer: 'yes' as never })).toThrow(/^opts.shardOptimizer: expected a boolean/);
  });

  it("a save rank 0 cannot write fails on every rank, none left waiting (early: no directory; late: the moments' rename), and leaves no files", async () => {
    const base = { config: tiny, weights: Object.fromEntries(randomWeights(tiny, 22)), tokens: seq.tokens, targets: seq.targets, layout: 'zigzag', steps: 1, catchSave: true };
    for (const shardOptimizer of [false, true]) {
      const blocked = join(dir, `ck-blocked-${shardOptimizer}`), late = join(dir, `ck-late-${shardOptimizer}`);
      await writeFile(blocked, 'a file where the directory should be');
      await mkdir(join(late, 'optimizer.safetensors.partial', 'x'), { recursive: true }); // a rename onto it fails
      for (const [where, error] of [[blocked, /EEXIST|ENOTDIR/], [late, /EISDIR|ENOTEMPTY|EEXIST/]] as const) {
        const out = (await launch({ worldSize: 2 }, rankModule, { ...base, shardOptimizer, saveDir: where })) as { saveError: string | null }[];
        expect(out[0]!.saveError, `${where}, rank 0`).toMatch(error);
        expect(out[1]!.saveError, `${where}, rank 1`).toBe(`saveCheckpoint: rank 0 could not write ${where} (its error says why); no checkpoint was saved`);
      }
      expect(await readdir(late)).toEqual(['optimizer.safetensors.partial']); // ours; no partial or final file of the save
    }
  });

  it("while rank 0 writes alone, every rank joins a sum per tensor it writes and one per phase's end, so that no wait need span the whole save (the group's timeout)", async () => {
    const base = { config: tiny, weights: Object.fromEntries(randomWeights(tiny, 23)), tokens: seq.tokens, targets: seq.targets, layout: 'zigzag', steps: 1, countSave: true };
    for (const shardOptimizer of [false, true]) {
      const out = (await launch({ worldSize: 2 }, rankModule, { ...base, shardOptimizer, saveDir: join(dir, `ck-beats-${shardOptimizer}`) })) as { saveSums: number; tensorCount: number }[];
      const T = out[0]!.tensorCount;
      // whether every rank's arguments passed; weights: T + the phase's end; moments: 2T + the
      // end (without shardOptimizer, beats; with it, the gathers, which end no phase); then
      // whether every rank's save landed
      const want = shardOptimizer ? 1 + T + 1 + 2 * T + 1 : 1 + T + 1 + 2 * T + 1 + 1;
      expect(out.map((r) => r.saveSums), `shardOptimizer ${shardOptimizer}`).toEqual([want, want]);
    }
  });

  it('ranks that restore different saves, or one that cannot restore, throw on every rank (the step count unchanged) rather than train apart', async () => {
    const base = { config: tiny, weights: Object.fromEntries(randomWeights(tiny, 24)), tokens: seq.tokens, targets: seq.targets, layout: 'zigzag' };
    const one = join(dir, 'ck-restore-1'), two = join(dir, 'ck-restore-2'), again = join(dir, 'ck-restore-2-again');
    await launch({ worldSize: 2 }, rankModule, { ...base, steps: 1, saveDir: one });
    await launch({ worldSize: 2 }, rankModule, { ...base, steps: 2, saveDir: two });
    await launch({ worldSize: 2 }, rankModule, { ...base, steps: 2, saveDir: again });
    type Out = { restoreError: string | null; stepCount: number };
    const run = async (dirs: string[]) => (await launch({ worldSize: 2 }, rankModule, { ...base, steps: 1, restoreFrom: dirs })) as Out[];
    const tail = 'the weights and moments here are restored, the step count is not; restore again';
    const same = await run([two, two]);
    expect(same).toEqual([{ restoreError: null, stepCount: 2 }, { restoreError: null, stepCount: 2 }]);
    for (const r of await run([one, two]))
      expect(r).toEqual({ restoreError: expect.stringMatching(/^restoreCheckpoint: the ranks restored different checkpoints \(rank 0 step 1, rank 1 step 2\); every rank must restore the same save/), stepCount: 0 });
    for (const r of await run([two, again])) // the same step of two saves
      expect(r.restoreError).toBe(`restoreCheckpoint: the ranks restored different checkpoints (rank 0 step 2, rank 1 step 2, another save); every rank must restore the same save (over several nodes, a directory each node sees the same); ${tail}`);
    const [r0, r1] = await run([two, join(dir, 'ck-restore-missing')]);
    expect(r1!.restoreError).toMatch(/ENOENT/);
    expect(r0).toEqual({ restoreError: `restoreCheckpoint: rank 1 could not restore ${two} (see its error); ${tail}`, stepCount: 0 });
    // an argument one rank refuses is a failed restore like any other
    const [s0, s1] = await run([two, '']);
    expect(s1!.restoreError).toBe("dir: expected a path, got ''");
    expect(s0!.restoreError).toBe(`restoreCheckpoint: rank 1 could not restore ${two} (see its error); ${tail}`);
    // and a save's: every rank hears of it before anything is written
    const saved = join(dir, 'ck-refused-save');
    const out = (await launch({ worldSize: 2 }, rankModule, { ...base, steps: 1, saveDir: ['', saved], catchSave: true })) as { saveError: string | null }[];
    expect(out.map((r) => r.saveError)).toEqual(["dir: expected a path, got ''", 'saveCheckpoint: another rank refused its arguments (see its error); nothing was saved']);
    await expect(readdir(saved)).rejects.toThrow(/ENOENT/);
  });

  it('a save or restore not yet awaited: other calls are refused until it ends, and dispose() waits for it', async () => {
    using a = initLlama(tiny, { seed: 8 });
    const ta = createTrainer(a, { lr: 1e-2 });
    ta.step(seq.tokens, seq.targets);
    const ck = join(dir, 'ck-unawaited');
    const saving = ta.saveCheckpoint(ck);
    expect(() => ta.step(seq.tokens, seq.targets)).toThrow('trainer: saveCheckpoint() has not finished; await it first');
    await expect(ta.restoreCheckpoint(ck)).rejects.toThrow('trainer: saveCheckpoint() has not finished; await it first');
    const grad = ta.gradients.get('model.norm.weight')!;
    ta.dispose(); // as `using` does when a function returns the save's promise without awaiting it
    expect(grad.disposed).toBe(false);
    await saving;
    expect(grad.disposed).toBe(true);
    using b = initLlama(tiny, { seed: 9 });
    using tb = createTrainer(b, { lr: 1e-2 });
    const restoring = tb.restoreCheckpoint(ck);
    expect(() => tb.forward(seq.tokens, seq.targets)).toThrow('trainer: restoreCheckpoint() has not finished; await it first');
    await restoring;
    expect(tb.stepCount).toBe(1);
    expect(Buffer.compare(bits(b.toArrays().get('lm_head.weight')!), bits(a.toArrays().get('lm_head.weight')!))).toBe(0);
  });

  it('restore a checkpoint, then step: the same losses as an uninterrupted run', async () => {
    const opts = { lr: 5e-3, weightDecay: 0.1, maxGradNorm: 1 };
    using a = initLlama(tiny, { seed: 4 });
    using ta = createTrainer(a, opts);
    const straight = [0, 1, 2, 3, 4, 5].map(() => ta.step(seq.tokens, seq.targets).loss);

    const ck = join(dir, 'ck');
    {
      using b = initLlama(tiny, { seed: 4 });
      using tb = createTrainer(b, opts);
      for (let i = 0; i < 3; ++i) expect(tb.step(seq.tokens, seq.targets).loss).toBe(straight[i]);
      await tb.saveCheckpoint(ck);
    }
    using c = initLlama(tiny, { seed: 999 }); // other weights: the restore must replace them all
    using tc = createTrainer(c, opts);
    await tc.restoreCheckpoint(ck);
    expect(tc.stepCount).toBe(3);
    for (let i = 3; i < 6; ++i) expect(tc.step(seq.tokens, seq.targets).loss, `step ${i + 1}`).toBe(straight[i]);
  });

  it('a restore refuses a checkpoint of another config, or files of two saves; a save leaves no partial files', async () => {
    const ck = join(dir, 'ck-checked'), older = join(dir, 'ck-older');
    using a = initLlama(tiny, { seed: 5 });
    using ta = createTrainer(a, { lr: 1e-2 });
    await ta.saveCheckpoint(older);
    ta.step(seq.tokens, seq.targets);
    await ta.saveCheckpoint(ck);
    expect((await readdir(ck)).sort()).toEqual(['config.json', 'model.safetensors', 'optimizer.safetensors', 'trainer.json']);
    // Same tensor shapes, other computations: only config.json tells them apart.
    for (const [key, value] of [['rope_theta', 500000], ['rms_norm_eps', 1e-2], ['rope_scaling', { rope_type: 'linear', factor: 2 }]] as const) {
      using other = initLlama({ ...tiny, [key]: value }, { seed: 5 });
      using to = createTrainer(other, { lr: 1e-2 });
      await expect(to.restoreCheckpoint(ck)).rejects.toThrow(new RegExp(`config.json: ${key} is .*, this model's is .*; a checkpoint restores into a model of the config it was saved from`));
      expect(to.stepCount).toBe(0);
    }
    // initializer_range changes only a new model's random start, not what a trained one computes
    using spread = initLlama({ ...tiny, initializer_range: 0.05 }, { seed: 5 });
    using ts = createTrainer(spread, { lr: 1e-2 });
    await ts.restoreCheckpoint(ck);
    expect(ts.stepCount).toBe(1);
    // ... nor the token ids, which a checkpoint saved before they were kept lacks
    using withIds = initLlama({ ...tiny, bos_token_id: 1, eos_token_id: [2, 3] }, { seed: 5 });
    using ti = createTrainer(withIds, { lr: 1e-2 });
    await ti.restoreCheckpoint(ck);
    expect(ti.stepCount).toBe(1);
    // A save cut short between its renames: the moments of an older save beside newer weights.
    await writeFile(join(ck, 'optimizer.safetensors'), await readFile(join(older, 'optimizer.safetensors')));
    using b = initLlama(tiny, { seed: 5 });
    using tb = createTrainer(b, { lr: 1e-2 });
    await expect(tb.restoreCheckpoint(ck)).rejects.toThrow(/optimizer.safetensors: written by another save than trainer.json .*was a save interrupted\?/);
    await tb.restoreCheckpoint(older); // a whole save restores
    expect(tb.stepCount).toBe(0);
    // A newer save cut short over a version 1 checkpoint (whose files carry no save id).
    await writeFile(join(older, 'trainer.json'), JSON.stringify({ format: 'ring-attention-trainer', version: 1, step: 0 }));
    await expect(tb.restoreCheckpoint(older)).rejects.toThrow(/model.safetensors: written by another save than trainer.json \(save '.*', expected nothing\)/);
    // A moment stored as integers: refused from the header, before any tensor is read or changed.
    const ints = join(dir, 'ck-i32');
    await ta.saveCheckpoint(ints);
    const file = await readFile(join(ints, 'optimizer.safetensors')), at = file.indexOf('"dtype":"F32"');
    file.write('"dtype":"I32"', at); // the same size: offsets stay valid
    await writeFile(join(ints, 'optimizer.safetensors'), file);
    using c = initLlama(tiny, { seed: 6 });
    using tc = createTrainer(c, { lr: 1e-2 });
    const weightsBefore = c.toArrays();
    await expect(tc.restoreCheckpoint(ints)).rejects.toThrow(/optimizer\.safetensors: '[mv]\..+' is I32; a checkpoint holds F32 tensors, restored bit for bit$/);
    // A version this release does not know, and a moment of no tensor of the model, likewise.
    const meta = JSON.parse(await readFile(join(ck, 'trainer.json'), 'utf8'));
    await writeFile(join(ints, 'trainer.json'), JSON.stringify({ ...meta, version: 3 }));
    await expect(tc.restoreCheckpoint(ints)).rejects.toThrow(/trainer\.json: version number 3; this ring-attention reads versions 1 and 2/);
    const extra = join(dir, 'ck-extra-moment');
    await ta.saveCheckpoint(extra);
    const moments = await readSafetensors(join(extra, 'optimizer.safetensors'));
    const withExtra = Object.fromEntries([...moments.tensors].map(([n, e]) => [n, { data: e.data, shape: e.shape }]));
    withExtra['m.bogus'] = { data: new Float32Array(2), shape: [2] };
    await writeSafetensors(join(extra, 'optimizer.safetensors'), withExtra, moments.metadata);
    await expect(tc.restoreCheckpoint(extra)).rejects.toThrow(/optimizer\.safetensors: unexpected tensor 'm\.bogus' for this model$/);
    // A negative second moment (a damaged or edited file), found before anything is restored.
    const negative = join(dir, 'ck-negative-v');
    await ta.saveCheckpoint(negative);
    const saved = await readSafetensors(join(negative, 'optimizer.safetensors'));
    const edited = Object.fromEntries([...saved.tensors].map(([n, e]) => [n, { data: e.data, shape: e.shape }]));
    const lastV = [...saved.tensors.keys()].filter((n) => n.startsWith('v.')).sort().pop()!; // read after every weight and m
    edited[lastV]!.data[3] = -0.5;
    await writeSafetensors(join(negative, 'optimizer.safetensors'), edited, saved.metadata);
    await expect(tc.restoreCheckpoint(negative)).rejects.toThrow(new RegExp(`optimizer\\.safetensors: '${lastV.replace(/\./g, '\\.')}' holds -0.5 at element 3; AdamW's second moments are finite and non-negative$`));
    // An infinite one too (the check is not only for sign).
    edited[lastV]!.data[3] = Infinity;
    await writeSafetensors(join(negative, 'optimizer.safetensors'), edited, saved.metadata);
    await expect(tc.restoreCheckpoint(negative)).rejects.toThrow(new RegExp(`optimizer\\.safetensors: '${lastV.replace(/\./g, '\\.')}' holds Infinity at element 3; AdamW's second moments are finite and non-negative$`));
    expect(tc.stepCount).toBe(0);
    for (const [n, a] of c.toArrays()) expect(Buffer.compare(bits(a), bits(weightsBefore.get(n)!)), n).toBe(0);
    // A save that fails part-way leaves the checkpoint there as it was, and no partial files.
    await mkdir(join(older, 'trainer.json.partial')); // the last file cannot be written
    const before = (await readdir(older)).sort();
    await expect(ta.saveCheckpoint(older)).rejects.toThrow(/^EISDIR: illegal operation on a directory, open .*trainer\.json\.partial/); // the write's error, not the cleanup's
    expect((await readdir(older)).sort()).toEqual(before); // the three partial files written first are gone
  });

  // maxGradNorm 0.05 clips; 1e3 leaves the gradients as they are (torch clamps the coefficient at 1).
  for (const maxGradNorm of [0.05, 1e3])
  it(`a step is clip_grad_norm_ then AdamW, decaying matrices only: weights and ${maxGradNorm < 1 ? 'clipped' : 'unclipped'} gradients as a float64 reference`, async () => {
    const opts = { lr: 1e-2, weightDecay: 0.1, maxGradNorm, betas: [0.9, 0.95] as [number, number], eps: 1e-8 };
    using a = initLlama(tiny, { seed: 12 }), b = initLlama(tiny, { seed: 12 });
    using ta = createTrainer(a, opts), tb = createTrainer(b, opts);
    const before = a.toArrays();
    ta.backward(seq.tokens, seq.targets);
    const norm = ta.gradNorm(), coef = Math.min(1, opts.maxGradNorm / (norm + 1e-6));
    const raw = new Map(await Promise.all([...ta.gradients].map(async ([n, g]) => [n, await g.toFloat32Array()] as const)));
    // The norm itself, from the gradients' values: sqrt of the sum of squares over every tensor.
    let squares = 0;
    for (const g of raw.values()) for (const x of g) squares += x * x;
    expect(Math.abs(norm - Math.sqrt(squares))).toBeLessThan(1e-6 * norm);
    if (maxGradNorm < 1) expect(coef).toBeLessThan(0.5); // clipping acts
    else expect(norm).toBeLessThan(maxGradNorm); // it must not: the gradients stay as they are
    expect(tb.step(seq.tokens, seq.targets).gradNorm).toBe(norm);
    for (const [name, p] of b.toArrays()) {
      const g = raw.get(name)!.map((x) => x * coef), p0 = before.get(name)!;
      expect(worstError(await tb.gradients.get(name)!.toFloat32Array(), g, 1e-9, 1e-6), name).toBeLessThan(1);
      const decay = p0.length === tiny.hidden_size ? 0 : opts.weightDecay; // norm weights are the 1-D tensors of hidden_size
      const want = adamwRef(p0, [g], { lr: opts.lr, beta1: 0.9, beta2: 0.95, eps: opts.eps, weightDecay: decay }).param;
      expect(worstError(p, want, 1e-6, 1e-5), name).toBeLessThan(1);
      expect(p, name).not.toEqual(p0);
    }
  });

  // The defaults are torch.optim.AdamW's, as the options' documentation says.
  it("createTrainer's defaults: betas [0.9, 0.999], eps 1e-8, weight decay 0.01 (torch's AdamW)", () => {
    using a = initLlama(tiny, { seed: 3 }), b = initLlama(tiny, { seed: 3 });
    using ta = createTrainer(a, { lr: 1e-2 }), tb = createTrainer(b, { lr: 1e-2, betas: [0.9, 0.999], eps: 1e-8, weightDecay: 0.01 });
    for (let i = 0; i < 2; ++i) expect(ta.step(seq.tokens, seq.targets)).toEqual(tb.step(seq.tokens, seq.targets));
    const wb = b.toArrays();
    for (const [n, w] of a.toArrays()) expect(Buffer.compare(bits(w), bits(wb.get(n)!)), n).toBe(0);
  });

  it('a step refused for its learning rate changes nothing: the next one is still step 1', async () => {
    using a = initLlama(tiny, { seed: 6 }), b = initLlama(tiny, { seed: 6 });
    let refuse = true;
    using ta = createTrainer(a, { lr: (s) => (refuse ? NaN : 1e-2 / s), maxGradNorm: 0.01 });
    expect(() => ta.step(seq.tokens, seq.targets)).toThrow(/^opts.lr\(1\): expected a finite number >= 0, got NaN/);
    refuse = false;
    expect(ta.stepCount).toBe(0);
    using tb = createTrainer(b, { lr: (s) => 1e-2 / s, maxGradNorm: 0.01 });
    expect(ta.step(seq.tokens, seq.targets)).toEqual(tb.step(seq.tokens, seq.targets));
    expect(ta.stepCount).toBe(1);
    expect(a.toArrays()).toEqual(b.toArrays());
  });

  it('opts.lr cannot re-enter the trainer, and a model disposed by it is refused before any change', async () => {
    using a = initLlama(tiny, { seed: 6 }), b = initLlama(tiny, { seed: 6 });
    let inner: unknown;
    const ta: Trainer = createTrainer(a, {
      lr: () => {
        try {
          ta.step(seq.tokens, seq.targets);
        } catch (e) {
          inner ??= e;
        }
        return 1e-2;
      },
    });
    using tb = createTrainer(b, { lr: 1e-2 });
    expect(ta.step(seq.tokens, seq.targets)).toEqual(tb.step(seq.tokens, seq.targets)); // one update, not two
    expect((inner as Error).message).toBe('trainer: called from inside opts.lr, which step() runs before its update');
    expect(ta.stepCount).toBe(1);
    expect(a.toArrays()).toEqual(b.toArrays());
    ta.dispose();

    using c = initLlama(tiny, { seed: 7 });
    const before = c.toArrays(), last = [...c.tensors.values()].at(-1)!;
    using tc = createTrainer(c, { lr: () => (last.dispose(), 1e-2) });
    expect(() => tc.step(seq.tokens, seq.targets)).toThrow(new TypeError("trainer: its model's tensors have been disposed"));
    expect(tc.stepCount).toBe(0);
    const first = [...c.tensors.keys()][0]!;
    expect(Array.from(c.tensors.get(first)!.handle('t').toFloat32Array())).toEqual(Array.from(before.get(first)!));
    expect(() => tc.forward(seq.tokens, seq.targets)).toThrow(/^trainer: its model's tensors have been disposed/);
  });

  it("loads what transformers loads beside a model's tensors: RoPE's buffers (Llama 2), a tied head saved as a copy", async () => {
    const weights = randomWeights(tiny, 1), tiedWeights = new Map(weights);
    tiedWeights.delete('lm_head.weight');
    const write = async (name: string, cfg: object, w: Map<string, Float32Array>) => {
      const d = join(dir, name);
      await mkdir(d, { recursive: true });
      await writeFile(join(d, 'config.json'), JSON.stringify(cfg));
      await writeSafetensors(join(d, 'model.safetensors'), Object.fromEntries([...w].map(([n, data]) => [n, { data, shape: llamaTensorNames(cfg as ResolvedLlamaConfig).get(n) ?? [data.length] }])));
      return d;
    };
    const logits = (m: LlamaModel) => {
      using tr = createTrainer(m, { lr: 1e-2 });
      return tr.forward(seq.tokens, seq.targets, { logits: true }).logits!;
    };
    const withBuffers = new Map(weights).set('model.rotary_emb.inv_freq', new Float32Array(8).fill(7));
    for (let i = 0; i < tiny.num_hidden_layers; ++i) withBuffers.set(`model.layers.${i}.self_attn.rotary_emb.inv_freq`, new Float32Array(8).fill(7));
    using plain = await loadLlama(await write('plain', tiny, weights)), buffered = await loadLlama(await write('inv-freq', tiny, withBuffers));
    expect(buffered.tensors.has('model.rotary_emb.inv_freq')).toBe(false);
    expect(logits(buffered)).toEqual(logits(plain)); // the stored frequencies (7s) are not used
    const copiedHead = new Map(tiedWeights).set('lm_head.weight', tiedWeights.get('model.embed_tokens.weight')!.slice());
    using tied = await loadLlama(await write('tied', tiedTiny, tiedWeights)), copied = await loadLlama(await write('tied-copy', tiedTiny, copiedHead));
    expect(copied.tensors.has('lm_head.weight')).toBe(false);
    expect(logits(copied)).toEqual(logits(tied));
    // shards and their index, as transformers saves a large model: the same model
    const sharded = join(dir, 'sharded'), names = [...weights.keys()], weight_map: Record<string, string> = {};
    await mkdir(sharded, { recursive: true });
    await writeFile(join(sharded, 'config.json'), JSON.stringify(tiny));
    for (const [k, part] of [names.filter((_, i) => i % 2 === 0), names.filter((_, i) => i % 2 === 1)].entries()) {
      const file = `model-0000${k + 1}-of-00002.safetensors`;
      await writeSafetensors(join(sharded, file), Object.fromEntries(part.map((n) => [n, { data: weights.get(n)!, shape: llamaTensorNames(tiny).get(n)! }])));
      for (const n of part) weight_map[n] = file;
    }
    await writeFile(join(sharded, 'model.safetensors.index.json'), JSON.stringify({ metadata: {}, weight_map }));
    using fromShards = await loadLlama(sharded);
    expect(logits(fromShards)).toEqual(logits(plain));
  });

  it('refuses missing, extra and mis-shaped tensors, and rope_scaling, naming them', async () => {
    const good = randomWeights(tiny, 1);
    const write = async (name: string, cfg: object, w: Map<string, Float32Array>, shapes: Map<string, number[]> = llamaTensorNames(tiny)) => {
      const d = join(dir, name);
      await mkdir(d, { recursive: true });
      await writeFile(join(d, 'config.json'), JSON.stringify(cfg));
      await writeSafetensors(join(d, 'model.safetensors'), Object.fromEntries([...w].map(([n, data]) => [n, { data, shape: shapes.get(n) ?? [data.length] }])));
      return d;
    };
    const missing = new Map(good);
    missing.delete('model.layers.1.mlp.up_proj.weight');
    await expect(loadLlama(await write('missing', tiny, missing))).rejects.toThrow(/missing 1 tensor\(s\): 'model.layers.1.mlp.up_proj.weight'/);
    const extra = new Map(good).set('model.layers.0.self_attn.q_proj.bias', new Float32Array(64));
    await expect(loadLlama(await write('extra', tiny, extra))).rejects.toThrow(/unexpected tensor\(s\) 'model.layers.0.self_attn.q_proj.bias'$/);
    const shapes = new Map(llamaTensorNames(tiny)).set('model.layers.0.self_attn.k_proj.weight', [64, 32]);
    await expect(loadLlama(await write('shape', tiny, good, shapes))).rejects.toThrow(/'model.layers.0.self_attn.k_proj.weight' has shape \[64, 32\], expected \[32, 64\]/);
    await expect(loadLlama(await write('tied-with-head', tiedTiny, good))).rejects.toThrow(
      /'lm_head.weight' differs from 'model.embed_tokens.weight', but tie_word_embeddings is true \(one matrix for both\); set it to false/);
    const longrope = { ...tiny, rope_scaling: { rope_type: 'longrope', factor: 8 } };
    await expect(loadLlama(await write('longrope', longrope, good))).rejects.toThrow(/config.json: rope_scaling: rope_type 'longrope' is not supported \(supported: default, linear, llama3, yarn, dynamic/);
    // transformers 5's form: the message names the key the file used
    const { rope_theta: _, ...tiny5 } = tiny;
    const longrope5 = { ...tiny5, rope_parameters: { rope_type: 'longrope', rope_theta: 10000, factor: 8 } };
    await expect(loadLlama(await write('longrope5', longrope5, good))).rejects.toThrow(/config.json: rope_parameters: rope_type 'longrope' is not supported/);
    expect(() => initLlama({ ...tiny5, rope_parameters: { rope_type: 'yarn' } }, { seed: 1 })).toThrow(/^config.rope_parameters.factor: missing; expected a number > 0/);
    expect(() => initLlama({ ...tiny5, rope_parameters: { rope_type: 'yarn', factor: 2, rope_theta: 1 } }, { seed: 1 })).toThrow(/^config.rope_parameters.rope_theta: yarn takes/);
    const gptq = { ...tiny, quantization_config: { quant_method: 'gptq', bits: 4 } };
    await expect(loadLlama(await write('gptq', gptq, good))).rejects.toThrow(/config.json: quantization_config: quantized weights \(gptq\) are not loaded here; use the model's unquantized checkpoint$/);
    expect(() => initLlama({ ...tiny, rope_scaling: { rope_type: 'llama3', factor: 8 } }, { seed: 1 })).toThrow(/^config.rope_scaling.low_freq_factor: missing; expected a number > 0/);
    expect(() => initLlama({ ...tiny, rope_scaling: { type: 'yarn' } }, { seed: 1 })).toThrow(/^config.rope_scaling.factor: missing; expected a number > 0/);
    const short = new Map(good).set('model.norm.weight', new Float32Array(3));
    expect(() => createLlama(tiny, short)).toThrow(/arrays: 'model.norm.weight' has shape \[3\], expected \[64\]/);
    // a tensor stored as integers: refused from the header, by name, before any is read
    const ints = await write('i32', tiny, good), file = await readFile(join(ints, 'model.safetensors'));
    const at = file.indexOf('"model.norm.weight":{"dtype":"F32"') + '"model.norm.weight":{"dtype":"'.length;
    file.write('I32', at); // the same size: offsets stay valid
    await writeFile(join(ints, 'model.safetensors'), file);
    await expect(loadLlama(ints)).rejects.toThrow(/model.safetensors: 'model.norm.weight' is I32, not a float type \(F32, BF16, F16, F64\)$/);
  });

  it('a FIFO in place of config.json, the shards\' index or trainer.json is refused, not waited on', async () => {
    const fifos = join(dir, 'fifos');
    using model = initLlama(tiny, { seed: 1 });
    using tr = createTrainer(model, { lr: 1e-3 });
    await tr.saveCheckpoint(fifos);
    const fifo = async (name: string) => {
      await rm(join(fifos, name));
      expect(spawnSync('mkfifo', [join(fifos, name)]).status).toBe(0);
      return join(fifos, name);
    };
    const trainerJson = await fifo('trainer.json');
    await expect(tr.restoreCheckpoint(fifos)).rejects.toThrow(new TypeError(`${trainerJson}: not a regular file`));
    await writeFile(join(fifos, 'model.safetensors.index.json'), '{}');
    const index = await fifo('model.safetensors.index.json');
    await rm(join(fifos, 'model.safetensors'));
    await expect(loadLlama(fifos)).rejects.toThrow(new TypeError(`${index}: not a regular file`));
    const config = await fifo('config.json');
    await expect(loadLlamaConfig(fifos)).rejects.toThrow(new TypeError(`${config}: not a regular file`));
  });

  it('trainer arguments are checked; dispose frees every tensor', () => {
    using model = initLlama(tiny, { seed: 1 });
    expect(() => createTrainer(model, {} as never)).toThrow(/opts.lr: missing/);
    expect(() => createTrainer(model, { lr: 1, betas: [0.9, 1] })).toThrow(/opts.betas\[1\]/);
    expect(() => createTrainer(model, { lr: 1, deterministic: 1 as never })).toThrow(/opts.deterministic: expected a boolean/);
    expect(() => createTrainer(model, { lr: 1, checkpoint: 'attention' as never })).toThrow(/^opts.checkpoint: expected true, false or 'keep-attention', got 'attention'/);
    expect(() => createTrainer(model, { lr: 1, checkpoint: 1 as never })).toThrow(TypeError);
    const tr = createTrainer(model, { lr: 1e-3 });
    expect(() => tr.step(new Int32Array(4), new Int32Array(3))).toThrow(/targets: expected 4 targets/);
    expect(() => tr.step(new Int32Array(4), new Int32Array(4).fill(-100))).toThrow(/targets: every target .* is -100/);
    expect(() => tr.step([new Int32Array(4)], new Int32Array(4))).toThrow(/targets: expected an array of Int32Array \(one per micro-batch\)/);
    expect(() => tr.step(new Int32Array(4), [new Int32Array(4)])).toThrow(/targets: expected an Int32Array, as tokens is one/);
    expect(() => tr.step([], [])).toThrow(/tokens: expected at least one micro-batch/);
    expect(() => tr.step([new Int32Array(4)], [new Int32Array(4), new Int32Array(4)])).toThrow(/targets: expected 1 micro-batches/);
    expect(() => tr.step([new Int32Array(4), [1, 2] as never], [new Int32Array(4), new Int32Array(2)])).toThrow(/tokens\[1\]: expected an Int32Array/);
    expect(() => tr.step([, new Int32Array(4)] as never, [new Int32Array(4), new Int32Array(4)])).toThrow(/tokens\[0\]: expected an Int32Array .*got nothing/);
    expect(() => tr.step([new Int32Array(4), new Int32Array(2)], [new Int32Array(4), new Int32Array(3)])).toThrow(/targets\[1\]: expected 2 targets/);
    expect(() => tr.step([new Int32Array(4), new Int32Array(4)], [new Int32Array(4).fill(-100), new Int32Array(4).fill(-100)])).toThrow(/every target of every micro-batch/);
    // Token ids and targets outside the vocabulary are refused before any micro-batch runs,
    // named by micro-batch and position.
    const held = hostMemoryStats().bytesInUse;
    expect(() => tr.step(new Int32Array(4).fill(300), new Int32Array(4))).toThrow(/^tokens\[0\]: 300 is outside the vocabulary \[0, 256\)$/);
    // the first id past the table, and the last target past it: the trainer's, not a native op's
    expect(() => tr.step(Int32Array.from([1, 2, 3, 256]), new Int32Array(4))).toThrow(/^tokens\[3\]: 256 is outside the vocabulary \[0, 256\)$/);
    expect(() => tr.step(new Int32Array(4), Int32Array.from([1, 2, 3, 256]))).toThrow(/^targets\[3\]: 256 is outside the vocabulary/);
    expect(() => tr.step([new Int32Array(4), Int32Array.of(1, 2, -1, 4)], [new Int32Array(4), new Int32Array(4)])).toThrow(/^tokens\[1\]\[2\]: -1 is outside/);
    expect(() => tr.step(new Int32Array(8), Int32Array.from([1, 2, 3, 4, 5, 6, 7, 999]))).toThrow(/^targets\[7\]: 999 is outside the vocabulary \[0, 256\) and not the ignore index -100$/);
    expect(() => tr.forward(new Int32Array(8), new Int32Array(8).fill(-2))).toThrow(/^targets\[0\]: -2 is outside/);
    expect(tr.stepCount).toBe(0);
    expect(hostMemoryStats().bytesInUse).toBe(held);
    tr.dispose();
    expect([...tr.gradients.values()].every((g) => g.disposed)).toBe(true);
    model.dispose();
    expect(model.disposed).toBe(true);
    expect(() => createTrainer(model, { lr: 1 })).toThrow(/model: has been disposed/);
  });
});
