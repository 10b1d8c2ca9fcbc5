// The native CPU code and the N-API layer under AddressSanitizer and UndefinedBehaviorSanitizer:
// the addon built CPU-only with both, in a copy of the package (so that node-gyp-build loads
// that binary), and the test files that drive the native code hardest (attention, the ring,
// every op, the model, safetensors, argument errors) run against it by a vitest of their own.
// An out-of-bounds access, a use after free or undefined behaviour aborts the run. Skipped, with
// the reason in the title, where the toolchain lacks CMake, g++ or GCC's libasan, or off x86-64
// Linux (the library preloaded into Node is GCC's there).
import { spawn, spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { arch, platform, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

const root = join(import.meta.dirname, '..');
const require = createRequire(import.meta.url);
const has = (tool: string) => spawnSync(tool, ['--version'], { stdio: 'ignore' }).status === 0;
const libasan = has('g++') ? spawnSync('g++', ['-print-file-name=libasan.so'], { encoding: 'utf8' }).stdout.trim() : '';
const why = platform() !== 'linux' || arch() !== 'x64' ? `Linux x86-64 only, this is ${platform()}-${arch()}`
  : !has('cmake') ? 'cmake not found' : !has('g++') || !has('gcc') ? 'g++ or gcc not found'
  : !libasan.startsWith('/') || !existsSync(libasan) ? "GCC's libasan not found" : '';
const dir = mkdtempSync(join(tmpdir(), 'ra-sanitizers-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

// The files the sanitized binary runs: those whose native calls cover the CPU kernels, the ring's
// threads and transport, the ops' workspaces, the safetensors reader and the argument checks.
const FILES = ['attention', 'ring', 'ops', 'llama', 'safetensors', 'shard', 'errors'].map((f) => `test/${f}.test.ts`);

function run(cmd: string, args: string[], cwd: string, env: NodeJS.ProcessEnv = process.env): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const p = spawn(cmd, args, { cwd, env });
    let out = '';
    p.stdout.on('data', (d) => (out += d));
    p.stderr.on('data', (d) => (out += d));
    p.on('close', (code) => resolve({ code, out }));
  });
}

describe.skipIf(!!why)(why ? `native code under ASan and UBSan (skipped: ${why})` : 'native code under ASan and UBSan', () => {
  it(`${FILES.length} test files pass against the addon built with -fsanitize=address,undefined, with no report`, async () => {
    // The package as it is installed, but for its binary: dist, the tests and their fixtures
    // copied (dist finds the package root from its own path), node_modules shared.
    const pkg = join(dir, 'pkg');
    for (const p of ['package.json', 'vitest.config.ts', 'dist', 'test', 'CMakeLists.txt', 'native'])
      cpSync(join(root, p), join(pkg, p), { recursive: true });
    symlinkSync(join(root, 'node_modules'), join(pkg, 'node_modules'));
    // Through the Release flags: cmake-js sets CMAKE_CXX_FLAGS itself, and flags given there are
    // lost (the binary then links libasan but nothing in it is checked). The optimisation is the
    // release's own (-O3, a target option that comes later). GCC, whose runtime is preloaded below.
    const sanitize = '-fsanitize=address,undefined -fno-sanitize-recover=undefined';
    const built = await run(process.execPath, [require.resolve('cmake-js/bin/cmake-js'), 'compile', '--out', 'build',
      ...(has('ninja') ? ['--generator', 'Ninja'] : []), '--CDRING_ATTENTION_CUDA=OFF', '--CDCMAKE_BUILD_TYPE=Release',
      '--CDCMAKE_CXX_COMPILER=g++', '--CDCMAKE_C_COMPILER=gcc',
      `--CDCMAKE_CXX_FLAGS_RELEASE=-g -fno-omit-frame-pointer ${sanitize}`, `--CDCMAKE_SHARED_LINKER_FLAGS=${sanitize}`], pkg);
    expect(built.code, built.out.slice(-3000)).toBe(0);
    // Compiled with the checks, not only linked with their runtime: the code calls ASan's and UBSan's reports.
    const symbols = spawnSync('nm', ['-D', '--undefined-only', join(pkg, 'build', 'Release', 'ring_attention.node')], { encoding: 'utf8' }).stdout;
    expect(symbols).toMatch(/__asan_report_load/);
    expect(symbols).toMatch(/__ubsan_handle_/);

    // libasan must come first in the process; Node's own allocations never freed at exit are not
    // ours. Reports go to files: a crashed vitest worker's stderr does not reach the output.
    const logs = join(dir, 'reports');
    mkdirSync(logs);
    const env = { ...process.env, LD_PRELOAD: libasan, ASAN_OPTIONS: `detect_leaks=0:log_path=${join(logs, 'asan')}`,
      UBSAN_OPTIONS: `print_stacktrace=1:log_path=${join(logs, 'ubsan')}`, CI: '' };
    const loaded = await run(process.execPath, ['--input-type=module', '-e', "import { info } from './dist/index.js'; console.log(info().binary)"], pkg, env);
    expect(loaded.out.trim(), loaded.out).toBe(join(pkg, 'build', 'Release', 'ring_attention.node'));  // the sanitized binary, not the package's
    const r = await run(process.execPath, [join(pkg, 'node_modules', 'vitest', 'vitest.mjs'), 'run', ...FILES], pkg, env);
    const out = r.out.replace(/\x1b\[[0-9;]*m/g, '');
    const reports = readdirSync(logs).map((f) => readFileSync(join(logs, f), 'utf8'));
    expect(reports.join('\n').slice(0, 6000)).toBe('');
    expect(out).toMatch(new RegExp(`Test Files\\s+${FILES.length} passed \\(${FILES.length}\\)`));
    expect(out, out.slice(-3000)).toMatch(/Tests\s+\d+ passed/);
    expect(r.code).toBe(0);
  }, 1_800_000);
});
