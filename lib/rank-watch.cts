// Preloaded into each rank by `ring-attention launch` (node --require; CommonJS, because with
// --import node loads the rank's script through the ES module loader, which refuses extensions
// that require() hooks such as ts-node add). A launcher killed without running its exit handler
// (SIGKILL, the out-of-memory killer) cannot stop its ranks, so each rank checks once a second
// that the launcher is still its parent, and exits when it is not, rather than hold its GPU.
// The timer keeps no rank alive. A rank blocked in native code (a kernel's or a collective's
// wait) runs no timer, so a thread of its own watches too, and kills the rank if it is still
// there 3 s after the thread saw the launcher gone (3-5 s after the launcher went). The launcher
// starts each rank as the leader of a process group of its own, so either way what the rank
// started (a data loader, a helper) is signalled with it.
import { isMainThread, Worker } from 'node:worker_threads';

const launcher = Number(process.env.RING_ATTENTION_LAUNCHER_PID);
const rank = process.env.RANK ?? '?';
// isMainThread: node preloads this into the rank's worker threads too.
if (isMainThread && Number.isInteger(launcher) && launcher > 1 && process.ppid === launcher) {
  setInterval(() => {
    if (process.ppid === launcher) return;
    process.stderr.write(`ring-attention: rank ${rank}: its launcher (pid ${launcher}) has gone; exiting\n`);
    try {
      process.on('SIGTERM', () => {}); // the group's SIGTERM is for the rest of it: this process exits below
      process.kill(-process.pid, 'SIGTERM');
    } catch {}
    process.exit(1);
  }, 1_000).unref();
  const backstop = `
    const { workerData: { launcher, rank } } = require('node:worker_threads');
    let goneAt = 0;
    setInterval(() => {
      if (process.ppid === launcher) return;
      goneAt ||= Date.now();
      if (Date.now() - goneAt < 3000) return;
      // fd 2 directly: the thread's process.stderr goes through the blocked main thread. With
      // the launcher gone, a pipe to it has no reader (EPIPE): the kill must not depend on it.
      try {
        require('node:fs').writeSync(2, 'ring-attention: rank ' + rank + ': its launcher (pid ' + launcher + ') has gone and the rank is blocked; killing it\\n');
      } catch {}
      try {
        process.kill(-process.pid, 'SIGKILL');
      } catch {
        process.kill(process.pid, 'SIGKILL');
      }
    }, 1000);`;
  // No flags and an empty environment: the user's NODE_OPTIONS preloads (a ts-node hook, a
  // process.chdir, which threads may not call) are not the thread's business. A thread that
  // fails to start must not take the rank down with it.
  new Worker(backstop, { eval: true, execArgv: [], env: {}, workerData: { launcher, rank } }).on('error', () => {}).unref();
}
export {};
