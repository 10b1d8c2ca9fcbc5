// `ring-attention bench <suite> [options]` (also `npm run bench -- <suite>`): runs one suite,
// prints its table, and writes JSON, CSV and an SVG chart under --out-dir.
import { parseArgs } from 'node:util';

import { info } from '../index.js';
import { llamaPresets, loadLlamaConfig, type LlamaConfig } from '../llama-config.js';
import { attentionSuite } from './attention.js';
import { memorySuite } from './memory.js';
import { mfuSuite } from './mfu.js';
import { createProgress } from './progress.js';
import { describeMachine, resultWriter, type Written } from './report.js';
import { ringSuite } from './ring.js';
import type { Suite, SuiteOptions } from './suite.js';

export const SUITES: readonly Suite<never>[] = [mfuSuite, attentionSuite, ringSuite, memorySuite] as unknown as Suite<never>[];

const COMMON = {
  device: { type: 'string', help: 'cpu or cuda (default: cuda when a GPU is usable)' },
  'out-dir': { type: 'string', help: 'where JSON, CSV and SVG go (default bench/results)' },
  smoke: { type: 'boolean', help: 'tiny sizes, seconds on a CPU (what CI runs)' },
  help: { type: 'boolean', help: 'this text' },
} as const;

export function benchUsage(): string {
  const lines = ['usage: ring-attention bench <suite> [options]', '', 'suites:'];
  for (const s of SUITES) lines.push(`  ${s.name.padEnd(10)} ${s.summary}`);
  lines.push('', 'options of every suite:');
  for (const [name, o] of Object.entries(COMMON)) lines.push(`  --${name.padEnd(16)} ${o.help}`);
  for (const s of SUITES) {
    lines.push('', `${s.name} (defaults: cpu / cuda):`);
    for (const [name, o] of Object.entries(s.options))
      lines.push(`  --${name.padEnd(16)} ${o.help}${o.type === 'string' ? ` [${o.cpu || '-'} / ${o.cuda || '-'}]` : ''}`);
  }
  return lines.join('\n') + '\n';
}

async function modelConfig(nameOrPath: string): Promise<LlamaConfig> {
  const preset = (llamaPresets as Record<string, LlamaConfig>)[nameOrPath];
  if (preset) return preset;
  if (!/[/\\]|\.json$/.test(nameOrPath))
    throw new RangeError(`--model: expected one of ${Object.keys(llamaPresets).join(', ')} or a path to a config.json, got '${nameOrPath}'`);
  return loadLlamaConfig(nameOrPath);
}

/** Runs `ring-attention bench` with its arguments; resolves to the files written (none for --help). */
export async function runBench(argv: string[]): Promise<Written | null> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === 'help') {
    process.stdout.write(benchUsage());
    return null;
  }
  const suite = SUITES.find((s) => s.name === name);
  if (!suite) throw new RangeError(`bench: unknown suite '${name}'; expected one of ${SUITES.map((s) => s.name).join(', ')}`);

  const options = Object.fromEntries([...Object.entries(COMMON), ...Object.entries(suite.options)]
    .map(([k, o]) => [k, { type: o.type }])) as Record<string, { type: 'string' | 'boolean' }>;
  let values: SuiteOptions;
  try {
    values = parseArgs({ args: rest, options, strict: true, allowPositionals: false }).values as SuiteOptions;
  } catch (e) {
    throw new RangeError(`bench ${name}: ${(e as Error).message} (ring-attention bench --help lists the options)`);
  }
  if (values.help) {
    process.stdout.write(benchUsage());
    return null;
  }
  const usable = info().backend === 'cuda';
  const device = (values.device ?? (usable ? 'cuda' : 'cpu')) as string;
  if (device !== 'cpu' && device !== 'cuda') throw new RangeError(`--device: expected cpu or cuda, got '${device}'`);
  if (device === 'cuda' && !usable) throw new Error(`--device cuda: no usable GPU here (${info().cuda.reason})`);
  for (const [k, o] of Object.entries(suite.options)) {
    if (o.type !== 'string') continue;
    values[k] ??= (values.smoke ? o.smoke : undefined) ?? o[device];
    if (o.choices && !o.choices.includes(values[k] as string))
      throw new RangeError(`--${k}: expected one of ${o.choices.join(', ')}, got '${values[k]}'`);
  }

  const worldSize = Number(process.env.WORLD_SIZE ?? 1), rank = Number(process.env.RANK ?? 0);
  if (worldSize > 1 && suite.name !== 'mfu' && suite.name !== 'ring')
    throw new Error(`bench ${suite.name}: runs in one process; only the mfu and ring suites run across a launched job`);
  const machine = describeMachine(device);
  const quiet = rank !== 0;  // only rank 0 prints and writes
  const out = quiet ? null : resultWriter(suite.name, machine, (values['out-dir'] as string | undefined) ?? 'bench/results', argv);
  // The command recorded is this process's: say what ran it.
  const by = process.env.RING_ATTENTION_LAUNCHER_PID ? 'ring-attention launch' : process.env.TORCHELASTIC_RUN_ID ? 'torchrun' : 'a launcher that set WORLD_SIZE';
  const launched = worldSize > 1 ? [`run as rank 0 of ${worldSize} processes, started by ${by} (LOCAL_WORLD_SIZE ${process.env.LOCAL_WORLD_SIZE ?? 'not set'})`] : [];
  const result = await suite.run(values, {
    device, machine, launchedWorldSize: worldSize, launchedRank: rank, modelConfig,
    progress: (points) => (quiet ? { start() {}, done() {}, stop() {} } : createProgress(suite.name, points)),
    partial: (r, done, of) => out?.partial({ ...r, notes: [...r.notes, ...launched] }, done, of),
  });
  if (!out) return null;
  return out.final({ ...result, notes: [...result.notes, ...launched] });
}
