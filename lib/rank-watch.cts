// Preloaded into each rank by `ring-attention launch` (node --require; CommonJS, because with
// --import node loads the rank's script through the ES module loader, which refuses extensions
// that require() hooks such as ts-node add). A launcher killed without running its exit handler
// (SIGKILL, the out-of-memory killer) cannot stop its ranks, so each rank checks once a second
// that the launcher is still its parent, and exits when it is not, rather than hold its GPU.
// The timer keeps no rank alive. A rank blocked in native code checks when it returns.
const launcher = Number(process.env.RING_ATTENTION_LAUNCHER_PID);
if (Number.isInteger(launcher) && launcher > 1 && process.ppid === launcher) {
  setInterval(() => {
    if (process.ppid === launcher) return;
    process.stderr.write(`ring-attention: rank ${process.env.RANK ?? '?'}: its launcher (pid ${launcher}) has gone; exiting\n`);
    process.exit(1);
  }, 1_000).unref();
}
export {};
