// Our LLaMA (CPU) against transformers' LlamaForCausalLM on the same weights: a tiny random
// model saved with saveLlama is loaded by transformers (so the names, shapes, config keys and
// the rotary convention must all agree), and the logits, the loss and every parameter's
// gradient are compared. Runs where python3 has torch, transformers and safetensors (the GPU
// machine); skipped elsewhere with the reason in the title. Tolerances: both sides compute in
// float32 over a handful of tokens, so differences are float32 rounding, ~1e-6 relative;
// we allow 1e-4 of each tensor's scale.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

import { createTrainer, initLlama, parseLlamaConfig, readSafetensors, saveLlama } from '../../dist/index.js';
import { relErr } from '../reference.js';

const probe = spawnSync('python3', ['-c', 'import torch, transformers, safetensors, numpy; print(transformers.__version__)'], { encoding: 'utf8' });
const why = probe.status === 0 ? '' : 'python3 with torch, transformers, safetensors and numpy is not importable';
const title = why ? `LLaMA vs transformers (skipped: ${why})` : `LLaMA vs transformers ${probe.stdout.trim()}`;
const here = dirname(fileURLToPath(import.meta.url));

// The pad_token_id of the first two is a token of the sequence (tokens[0] = 11, tokens[1] = 48):
// transformers' nn.Embedding(padding_idx) gives its row no gradient from the lookup.
const configs = {
  'GQA, separate head, padding token': parseLlamaConfig({ hidden_size: 64, intermediate_size: 176, num_hidden_layers: 2, num_attention_heads: 4,
    num_key_value_heads: 2, vocab_size: 97, rms_norm_eps: 1e-5, rope_theta: 10000, tie_word_embeddings: false, pad_token_id: 11 }),
  'MHA, tied embeddings, large rope_theta, padding token': parseLlamaConfig({ hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2,
    num_attention_heads: 2, vocab_size: 50, rms_norm_eps: 1e-6, rope_theta: 500000, tie_word_embeddings: true, pad_token_id: 48 }),
  // RoPE scaling (head dim 16): llama3's three bands; yarn's ramp and attention factor;
  // dynamic NTK past max_position_embeddings 16 (the test's sequence is 24 tokens).
  ...Object.fromEntries(([
    ['llama3', 256, { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 64 }],
    ['yarn', 256, { rope_type: 'yarn', factor: 4, original_max_position_embeddings: 64 }],
    ['dynamic', 16, { rope_type: 'dynamic', factor: 2 }],
  ] as const).map(([type, maxPos, rope_scaling]) => [`rope_scaling ${type}`, parseLlamaConfig({ hidden_size: 64, intermediate_size: 96,
    num_hidden_layers: 1, num_attention_heads: 4, num_key_value_heads: 2, vocab_size: 61, rms_norm_eps: 1e-5, rope_theta: 10000,
    tie_word_embeddings: false, max_position_embeddings: maxPos, rope_scaling })])),
};

describe.skipIf(!!why)(title, () => {
  for (const [name, config] of Object.entries(configs))
    it(`${name}: logits, loss and every gradient equal transformers'`, async () => {
      const dir = mkdtempSync(join(tmpdir(), 'ra-hf-'));
      try {
        const S = 24;
        const tokens = Int32Array.from({ length: S }, (_, i) => (i * 37 + 11) % config.vocab_size);
        const targets = Int32Array.from({ length: S }, (_, i) => (i % 5 === 4 ? -100 : (i * 53 + 3) % config.vocab_size));
        using model = initLlama(config, { seed: 7, std: 0.1 });
        await saveLlama(dir, model);
        writeFileSync(join(dir, 'tokens.i32'), tokens);
        writeFileSync(join(dir, 'targets.i32'), targets);
        const r = spawnSync('python3', [join(here, 'hf_llama_oracle.py'), dir], { encoding: 'utf8', timeout: 100_000, killSignal: 'SIGKILL' }); // a hang fails the test, not the whole run
        if (r.status !== 0) throw new Error(`hf_llama_oracle.py failed${r.signal ? ` (cut off at 100 s: ${r.signal})` : ''}: ${r.stderr}`);

        using trainer = createTrainer(model, { lr: 1e-3 });
        const fwd = trainer.forward(tokens, targets, { logits: true });
        const loss = trainer.backward(tokens, targets);
        const b = readFileSync(join(dir, 'logits.f32'));
        const hfLogits = new Float32Array(b.buffer, b.byteOffset, b.length / 4);
        const hf = JSON.parse(readFileSync(join(dir, 'loss.json'), 'utf8'));
        expect(relErr(fwd.logits!, hfLogits)).toBeLessThan(1e-4);
        expect(Math.abs(loss - hf.loss)).toBeLessThan(1e-5 * hf.loss);
        const grads = (await readSafetensors(join(dir, 'grads.safetensors'))).tensors;
        expect([...grads.keys()].sort()).toEqual([...trainer.gradients.keys()].sort());
        for (const [n, g] of trainer.gradients) expect(relErr(await g.toFloat32Array(), grads.get(n)!.data), n).toBeLessThan(1e-4);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
});
