// The Hopper attention kernels (RING_ATTENTION_SM90=1), and a count that tells a test its calls
// ran them: dispatch.cu falls back to the default kernels where they cannot run (a head dim
// other than 64 or 128, rows TMA cannot describe), and a result within tolerance would pass
// either way.
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
export const hopperNotAsked = hopperUnavailable || (process.env.RING_ATTENTION_SM90 === '1' ? '' : 'RING_ATTENTION_SM90=1 is not set');

export type Launches = ReturnType<typeof native.attentionLaunches>;

/** The CUDA attention kernel launches during f(): every one, and those on the Hopper kernels. */
export async function launchesDuring(f: () => unknown): Promise<Launches> {
  const a = native.attentionLaunches();
  await f();
  const b = native.attentionLaunches();
  return { forward: b.forward - a.forward, backward: b.backward - a.backward, hopperForward: b.hopperForward - a.hopperForward, hopperBackward: b.hopperBackward - a.hopperBackward };
}

/** Launches all on the Hopper kernels, at least one forward and one backward. */
export const allHopper = (n: Launches) =>
  n.forward > 0 && n.backward > 0 && n.hopperForward === n.forward && n.hopperBackward === n.backward;
