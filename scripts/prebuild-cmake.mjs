#!/usr/bin/env node
// prebuildify has no cmake-js backend: `npm run build:release` points PREBUILD_NODE_GYP here.
// prebuildify calls this as it would call node-gyp ("rebuild --target=... --arch=...
// --release"); we build the release binary with cmake-js instead (CUDA required, every
// supported architecture, CUDA runtime linked statically) into build/Release, where
// prebuildify picks it up and copies it to prebuilds/<platform>-<arch>/.
//   RING_ATTENTION_CUDA_ARCHS="90a"  builds only those architectures (CI's package test)
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { dynamicSymbols, LIMITS, tooNew } from './symbol-versions.mjs';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const require = createRequire(import.meta.url);
const archs = process.env.RING_ATTENTION_CUDA_ARCHS;

const args = [require.resolve('cmake-js/bin/cmake-js'), 'rebuild', '--out', 'build', '--CDRING_ATTENTION_REQUIRE_CUDA=ON',
  archs ? `--CDCMAKE_CUDA_ARCHITECTURES=${archs}` : '--CDRING_ATTENTION_FAT_BINARY=ON'];
if (spawnSync('ninja', ['--version'], { stdio: 'ignore' }).status === 0) args.push('--generator', 'Ninja');
console.log(`ring-attention prebuild: cmake-js ${args.slice(1).join(' ')}`);
const status = spawnSync(process.execPath, args, { cwd: root, stdio: 'inherit' }).status ?? 1;
if (status !== 0) process.exit(status);
// What the binary needs of the system's C and C++ libraries decides where the prebuild loads.
const symbols = dynamicSymbols(join(root, 'build', 'Release', 'ring_attention.node'));
if (symbols === null) console.warn('ring-attention prebuild: objdump not found; the symbol versions were not checked');
const found = symbols === null ? [] : tooNew(symbols);
if (found.length > 0) {
  console.error(`ring-attention prebuild: the binary needs newer system libraries than ${JSON.stringify(LIMITS)}:\n  ${found.join('\n  ')}\n` +
    'build it on an older system (or in a container of one)');
  process.exit(1);
}
