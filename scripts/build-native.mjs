#!/usr/bin/env node
// Install step: use a binary that already loads (a prebuild, or an earlier build); else
// build from source with cmake-js (CUDA inside when nvcc is found); else, with no CMake,
// the CPU-only addon through node-gyp and binding.gyp.
//   RING_ATTENTION_BUILD=source  only cmake-js      RING_ATTENTION_BUILD=cpu  only node-gyp
//   --force                      rebuild even when a binary loads
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildVerb, detectArchs, findNvcc } from './cuda-archs.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);
const mode = process.env.RING_ATTENTION_BUILD ?? 'auto';
const force = process.argv.includes('--force') || mode !== 'auto';

if (!['auto', 'source', 'cpu'].includes(mode)) {
  console.error(`ring-attention: RING_ATTENTION_BUILD must be "source" or "cpu", not "${mode}"`);
  process.exit(1);
}

function loads() {
  try {
    require('node-gyp-build')(root);
    return true;
  } catch {
    return false;
  }
}

function run(cmd, args) {
  console.log(`ring-attention: ${cmd} ${args.join(' ')}`);
  return spawnSync(cmd, args, { cwd: root, stdio: 'inherit', env: process.env }).status === 0;
}

const has = (tool) => spawnSync(tool, ['--version'], { stdio: 'ignore' }).status === 0;

function cmakeBuild() {
  if (!has('cmake')) return false;
  const archs = process.env.CUDAARCHS || detectArchs();
  let cache = null;
  try {
    cache = readFileSync(join(root, 'build', 'CMakeCache.txt'), 'utf8');
  } catch {}
  const verb = buildVerb({ archs, cache, nvcc: findNvcc() });
  const args = [require.resolve('cmake-js/bin/cmake-js'), verb, '--out', 'build'];
  if (has('ninja')) args.push('--generator', 'Ninja');
  if (archs) {
    console.log(`ring-attention: CUDA code for ${archs}${process.env.CUDAARCHS ? ' (CUDAARCHS)' : ', the GPUs here (set CUDAARCHS to choose)'}`);
    args.push(`--CDCMAKE_CUDA_ARCHITECTURES=${archs}`);
  }
  return run(process.execPath, args);
}

function nodeGypBuild() {
  const gyp = process.env.npm_config_node_gyp;
  return gyp ? run(process.execPath, [gyp, 'rebuild']) : run('node-gyp', ['rebuild']);
}

if (!force && loads()) process.exit(0);
const ok = mode === 'cpu' ? nodeGypBuild() : cmakeBuild() || (mode === 'auto' && nodeGypBuild());
if (!ok || !loads()) {
  console.error('ring-attention: no binary could be built; see the output above');
  process.exit(1);
}
