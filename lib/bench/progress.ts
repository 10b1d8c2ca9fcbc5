// Progress over a suite's points: a live bar (cli-progress) on a terminal, one plain line per
// point otherwise (CI logs, files), so that a long run always shows where it is.
import { SingleBar, Presets } from 'cli-progress';

export interface Progress {
  /** Starts work on a point (`label` names it). */
  start(label: string): void;
  /** Ends the current point; `result` is a short summary of it. */
  done(result: string): void;
  stop(): void;
}

export function createProgress(suite: string, total: number, stream: NodeJS.WriteStream = process.stderr): Progress {
  let n = 0;
  if (!stream.isTTY) {
    let current = '';
    return {
      // A line when a point starts too, so that a run cut off at a time limit shows where it was.
      start(label) {
        current = label;
        stream.write(`[${suite} ${n + 1}/${total}] ${current} ...\n`);
      },
      done(result) {
        stream.write(`[${suite} ${++n}/${total}] ${current}: ${result}\n`);
      },
      stop() {},
    };
  }
  const bar = new SingleBar({
    format: `${suite} {bar} {value}/{total} | {label}`, stream, hideCursor: true, clearOnComplete: true,
  }, Presets.shades_classic);
  bar.start(total, 0, { label: '' });
  return {
    start(label) {
      bar.update({ label: `${label} ...` });
    },
    done(result) {
      bar.increment({ label: result });
    },
    stop() {
      bar.stop();
    },
  };
}
