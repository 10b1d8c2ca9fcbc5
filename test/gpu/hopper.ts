// The Hopper attention kernels (RING_ATTENTION_SM90=1), and a count that tells a test its calls
// ran them: dispatch.cu falls back to the default kernels where they cannot run (a head dim
// other than 64 or 128, rows TMA cannot describe), and a result within tolerance would pass
// either way. The counts are the process's: this relies on vitest's 'forks' pool (one process
// per test file), so that no other file's calls land in them.
import { info } from '../../dist/index.js';
import { native } from '../../dist/native.js';

const cuda = info().cuda;
const device = cuda.devices[0];

/** Why the Hopper kernels cannot run here; '' where they can. */
export const hopperUnavailable = !cuda.available
  ? cuda.reason
  : !cuda.architectures.split(',').some((a) => a.startsWith('90a'))
    ? `this build has no sm_90a code (architectures ${cuda.architectures})`
    : device?.computeCapability !== '9.0'
      ? `the GPU is not sm_90 (compute capability ${device?.computeCapability})`
      : '';

/** Why a check that calls ran the Hopper kernels is skipped: they cannot run, or RING_ATTENTION_SM90=1 is not set; '' otherwise. */
const hopperNotAsked = hopperUnavailable || (process.env.RING_ATTENTION_SM90 === '1' ? '' : 'RING_ATTENTION_SM90=1 is not set');

export type Launches = ReturnType<typeof native.attentionLaunches>;

/** A function that gives the CUDA attention calls since this one: every one, and those on the Hopper kernels. */
export function launchCounter(): () => Launches {
  const a = native.attentionLaunches();
  return () => {
    const b = native.attentionLaunches();
    return { forward: b.forward - a.forward, backward: b.backward - a.backward, hopperForward: b.hopperForward - a.hopperForward, hopperBackward: b.hopperBackward - a.hopperBackward };
  };
}

/** Calls all on the Hopper kernels, at least one forward and one backward. */
const allHopper = (n: Launches) =>
  n.forward > 0 && n.backward > 0 && n.hopperForward === n.forward && n.hopperBackward === n.backward;

/** With RING_ATTENTION_SM90=1 on an sm_90 GPU, calls at a head dim the Hopper kernels take must all have run them. */
export function expectHopperWhereAsked(n: Launches, headDim: number): void {
  if (hopperNotAsked || (headDim !== 64 && headDim !== 128)) return;
  if (!allHopper(n)) throw new Error(`RING_ATTENTION_SM90=1, head dim ${headDim}: not every attention call ran the Hopper kernels: ${JSON.stringify(n)}`);
}
