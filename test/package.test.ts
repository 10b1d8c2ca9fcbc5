// What users get from npm: pack the package (with a prebuild made the release way), install
// the tarball into a fresh directory, and use it. Three install paths:
//   1. prebuild present, no compiler, CMake or nvcc on PATH: the prebuild is loaded as is;
//   2. no prebuild, CMake and nvcc present: built from source with cmake-js, CUDA inside;
//   3. no prebuild, no CMake: built with node-gyp from binding.gyp, CPU only.
// Runs in scratch copies, so the project's own build/ is never touched while other tests run.
import { execFileSync, spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
// @ts-expect-error: a plain ES module of the build scripts, without declarations
import { dynamicSymbols, tooNew } from '../scripts/symbol-versions.mjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const root = join(import.meta.dirname, '..');
const npmCli = process.env.npm_execpath; // set when run through npm test
const has = (tool: string) => spawnSync(tool, ['--version'], { stdio: 'ignore' }).status === 0;
const nvcc = has('nvcc') || existsSync('/usr/local/cuda/bin/nvcc');
const ready = !!npmCli && has('cmake') && nvcc;
const why = !npmCli ? 'run through npm test' : 'needs CMake and nvcc to make the prebuild';

const scratch = mkdtempSync(join(tmpdir(), 'ring-attention-pkg-'));
afterAll(() => rmSync(scratch, { recursive: true, force: true }));

// A directory holding links to just these programs, to stand in for PATH.
function pathWith(tools: string[]): string {
  const dir = mkdtempSync(join(scratch, 'bin-'));
  for (const tool of tools) {
    // python3 may be a pyenv shim that needs pyenv on PATH: link the interpreter itself
    const found = tool === 'python3'
      ? spawnSync('python3', ['-c', 'import sys; print(sys.executable)'], { encoding: 'utf8' }).stdout.trim()
      : spawnSync('sh', ['-c', `command -v ${tool}`], { encoding: 'utf8' }).stdout.trim();
    if (found) symlinkSync(found, join(dir, tool));
  }
  return dir;
}

function npm(args: string[], cwd: string, env: NodeJS.ProcessEnv = process.env): string {
  const r = spawnSync(process.execPath, [npmCli!, ...args], { cwd, env, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`npm ${args.join(' ')} failed (${r.status}):\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

function pack(withPrebuild: boolean): string {
  const stage = mkdtempSync(join(scratch, 'stage-'));
  for (const f of ['package.json', 'package-lock.json', 'README.md', 'LICENSE', 'CMakeLists.txt', 'binding.gyp', 'native', 'scripts', 'dist'])
    cpSync(join(root, f), join(stage, f), { recursive: true });
  symlinkSync(join(root, 'node_modules'), join(stage, 'node_modules'));
  if (withPrebuild) {
    // The release recipe (npm run build:release) for one architecture, to keep CI's build short.
    npm(['run', 'build:release'], stage, { ...process.env, RING_ATTENTION_CUDA_ARCHS: '90a' });
    rmSync(join(stage, 'build'), { recursive: true });
  }
  const out = mkdtempSync(join(scratch, 'tgz-'));
  npm(['pack', '--ignore-scripts', '--pack-destination', out], stage);
  return join(out, readdirSync(out)[0]!);
}

function installInto(tarball: string, env: NodeJS.ProcessEnv): string {
  const app = mkdtempSync(join(scratch, 'app-'));
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true }));
  npm(['install', tarball, '--prefer-offline', '--no-audit', '--no-fund', '--foreground-scripts'], app, env);
  for (const f of ['rank.mjs', 'check.mjs', 'esm.mjs', 'cjs.cjs', 'consumer.ts']) cpSync(join(root, 'test', 'package', f), join(app, f));
  return app;
}

const run = (app: string, script: string) =>
  JSON.parse(execFileSync(process.execPath, [join(app, script)], { cwd: app, encoding: 'utf8' }).trim().split('\n').pop()!);

describe.skipIf(!ready)(ready ? 'the packed package' : `the packed package (skipped: ${why})`, () => {
  let tarball = '';
  beforeAll(() => {
    tarball = pack(true);
  }, 600_000);

  it('holds the prebuild, the compiled JS with types, and what a source build needs, nothing else', () => {
    const files = execFileSync('tar', ['tzf', tarball], { encoding: 'utf8' }).trim().split('\n').map((f) => f.replace(/^package\//, ''));
    expect(files).toContain('prebuilds/linux-x64/ring-attention.glibc.node');
    for (const f of ['dist/index.js', 'dist/index.d.ts', 'dist/cli.js', 'dist/rank-watch.cjs', 'CMakeLists.txt', 'binding.gyp', 'scripts/build-native.mjs', 'scripts/cuda-archs.mjs', 'native/addon.cpp', 'native/cuda/device.cu', 'package.json', 'README.md', 'LICENSE'])
      expect(files).toContain(f);
    const unwanted = files.filter((f) => /^(test|bench|lib|build|\.ci)\//.test(f) || f.endsWith('.map') || f.endsWith('.ts') && !f.endsWith('.d.ts'));
    expect(unwanted).toEqual([]);
  });

  it("the prebuild needs no newer glibc than 2.34 and no newer libstdc++ or libgcc than GCC 11's (RHEL 9's)", (ctx) => {
    // The check itself: what a build against GCC 12's libgcc or glibc 2.38 would ask for.
    expect(tooNew('0000 DF *UND* 0000 (GCC_12.0.0) __truncsfhf2\n0000 DF *UND* 0000 (GLIBC_2.38) __isoc23_strtol\n'))
      .toEqual(['GCC_12.0.0 __truncsfhf2', 'GLIBC_2.38 __isoc23_strtol']);
    // Built here against newer ones: what it links decides where it loads (elsewhere install builds from source).
    const dir = mkdtempSync(join(scratch, 'prebuild-'));
    const file = 'package/prebuilds/linux-x64/ring-attention.glibc.node';
    execFileSync('tar', ['xzf', tarball, '-C', dir, file]);
    const symbols = dynamicSymbols(join(dir, file));
    if (symbols === null) return ctx.skip('objdump not found: the prebuild\'s symbol versions cannot be read (the release build warns of it too)');
    expect(symbols).toMatch(/\(GLIBC_2\.[0-9.]+\)/);
    expect(tooNew(symbols)).toEqual([]);
  });

  it('installs with no compiler, CMake or nvcc on PATH and runs from ESM, CommonJS, the CLI and TypeScript', () => {
    const bare = pathWith(['node', 'sh']);
    for (const tool of ['cc', 'gcc', 'g++', 'make', 'cmake', 'nvcc']) expect(existsSync(join(bare, tool))).toBe(false);
    const app = installInto(tarball, { ...process.env, PATH: bare });
    for (const script of ['esm.mjs', 'cjs.cjs']) {
      const r = run(app, script);
      expect(r.build).toBe('prebuild');
      expect(r.maxDiff).toBeLessThan(1e-5);
    }
    const info = JSON.parse(execFileSync(join(app, 'node_modules', '.bin', 'ring-attention'), ['info', '--json'], { encoding: 'utf8' }));
    expect(info.build).toBe('prebuild');
    expect(info.binary).toMatch(/node_modules\/ring-attention\/prebuilds\/linux-x64\/ring-attention\.glibc\.node$/);
    expect(info.cuda.compiled).toBe(true);
    // The benchmark from the installed package: its table, JSON and CSV; no chart, since vega
    // is an optional peer dependency that a plain install leaves out, and it says so.
    const results = join(app, 'results');
    const bench = spawnSync(join(app, 'node_modules', '.bin', 'ring-attention'), ['bench', 'ring', '--smoke', '--device', 'cpu', '--out-dir', results], { encoding: 'utf8' });
    expect(bench.status, bench.stderr).toBe(0);
    expect(bench.stdout).toMatch(/no chart: charts need the packages vega and vega-lite/);
    expect(readdirSync(results).map((f) => f.replace(/^ring-cpu-.*\./, ''))).toEqual(['csv', 'json']);
    // TypeScript: the README's quick start and a consumer with misuse that must not compile,
    // against the published .d.ts; then the quick start runs.
    const readme = readFileSync(join(root, 'README.md'), 'utf8');
    writeFileSync(join(app, 'quickstart.ts'), readme.match(/### Quick start in TypeScript\n\n```ts\n([\s\S]*?)```/)![1]!);
    writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true, type: 'module' }));
    writeFileSync(join(app, 'tsconfig.json'), JSON.stringify({
      compilerOptions: { strict: true, module: 'NodeNext', moduleResolution: 'NodeNext', target: 'ES2022', lib: ['ES2022', 'ESNext.Disposable'],
        types: ['node'], typeRoots: [join(root, 'node_modules', '@types')], outDir: 'out', noEmitOnError: true, skipLibCheck: false },
      files: ['quickstart.ts', 'consumer.ts'] }));
    const tsc = spawnSync(process.execPath, [join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', app], { encoding: 'utf8' });
    expect(tsc.stdout + tsc.stderr).toBe('');
    expect(tsc.status).toBe(0);
    const printed = execFileSync(process.execPath, [join(app, 'out', 'quickstart.js')], { cwd: app, encoding: 'utf8' });
    expect(printed).toMatch(/^\[ 1, 1024, 8, 64 \] \[ 1, 1024, 8, 64 \] \[ 1, 1024, 2, 64 \] Float32Array\(2\)/);
  }, 600_000);

  for (const [mode, build] of [['source', 'cmake-js'], ['cpu', 'node-gyp']] as const)
    it(`RING_ATTENTION_BUILD=${mode} builds with ${build} even though the prebuild fits`, () => {
      const app = installInto(tarball, { ...process.env, RING_ATTENTION_BUILD: mode });
      const r = run(app, 'esm.mjs');
      expect(r.build).toBe(build);
      expect(r.maxDiff).toBeLessThan(1e-5);
    }, 600_000);

  it('without a prebuild, builds from source with cmake-js, CUDA inside', () => {
    const app = installInto(pack(false), process.env);
    const r = run(app, 'esm.mjs');
    expect(r.build).toBe('cmake-js');
    expect(r.maxDiff).toBeLessThan(1e-5);
  }, 600_000);

  it('without a prebuild or CMake, builds the CPU-only addon with node-gyp', () => {
    // A cmake that fails stands in for none: the installer must fall back to node-gyp.
    const shadow = mkdtempSync(join(scratch, 'no-cmake-'));
    writeFileSync(join(shadow, 'cmake'), '#!/bin/sh\nexit 127\n', { mode: 0o755 });
    const app = installInto(pack(false), { ...process.env, PATH: [shadow, process.env.PATH].join(delimiter) });
    const r = run(app, 'esm.mjs');
    expect(r.build).toBe('node-gyp');
    expect(r.maxDiff).toBeLessThan(1e-5);
  }, 600_000);
});
