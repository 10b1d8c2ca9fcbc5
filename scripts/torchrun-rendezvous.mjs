// Under torchrun (`torchrun --nproc-per-node 2 --no-python node scripts/torchrun-rendezvous.mjs`):
// reads the job from torchrun's variables and runs our rendezvous as initProcessGroup would,
// with a stand-in for the NCCL id; no GPU or NCCL needed. Prints each rank's outcome.
import { readDistributedEnv } from '../dist/dist-env.js';
import { rendezvous } from '../dist/rendezvous.js';

const env = readDistributedEnv();
const payload = env.rank === 0 ? new Uint8Array(128).fill(7) : undefined;
const agentStore = process.env.TORCHELASTIC_USE_AGENT_STORE;
try {
  const got = await rendezvous({ rank: env.rank, worldSize: env.worldSize, addr: env.masterAddr, port: env.rendezvousPort, token: env.jobToken, timeoutMs: 20_000, payload });
  const ok = got.length === 128 && got.every((b) => b === 7);
  console.log(`rank ${env.rank}/${env.worldSize}: ${ok ? 'ok' : 'WRONG PAYLOAD'}; MASTER_PORT ${env.masterPort}, rendezvous port ${env.rendezvousPort}, agent store ${agentStore}`);
  process.exitCode = ok ? 0 : 1;
} catch (e) {
  console.log(`rank ${env.rank}/${env.worldSize}: FAILED: ${e.message} (MASTER_PORT ${env.masterPort}, agent store ${agentStore})`);
  process.exitCode = 1;
}
