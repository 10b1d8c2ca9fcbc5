// Reading a process's place in the job from torchrun's or Slurm's variables.
import { describe, expect, it } from 'vitest';

import { readDistributedEnv } from '../dist/dist-env.js';

const torchrun = { RANK: '5', WORLD_SIZE: '16', LOCAL_RANK: '1', LOCAL_WORLD_SIZE: '4', MASTER_ADDR: 'node-a', MASTER_PORT: '29500', TORCHELASTIC_RUN_ID: 'job7' };
const slurm = { SLURM_PROCID: '6', SLURM_NTASKS: '8', SLURM_LOCALID: '2', SLURM_STEP_TASKS_PER_NODE: '4(x2)', SLURM_JOB_ID: '991', SLURM_STEP_ID: '0', MASTER_ADDR: 'gpu01', MASTER_PORT: '12345' };

describe('readDistributedEnv', () => {
  it("reads torchrun's variables", () => {
    expect(readDistributedEnv(torchrun)).toEqual({
      rank: 5, worldSize: 16, localRank: 1, localWorldSize: 4, masterAddr: 'node-a', masterPort: 29500, rendezvousPort: 29500, jobToken: 'job7', launcher: 'torchrun' });
  });

  it("reads Slurm's variables, the master from the environment", () => {
    expect(readDistributedEnv(slurm)).toEqual({
      rank: 6, worldSize: 8, localRank: 2, localWorldSize: 4, masterAddr: 'gpu01', masterPort: 12345, rendezvousPort: 12345, jobToken: 'slurm-991.0', launcher: 'slurm' });
  });

  it('prefers torchrun variables when both are present (torchrun inside an allocation)', () => {
    expect(readDistributedEnv({ ...slurm, ...torchrun }).launcher).toBe('torchrun');
  });

  it("under torchrun's agent store, which holds MASTER_PORT for the whole job, the rendezvous takes the next port; RING_ATTENTION_RDZV_PORT wins", () => {
    const agent = { ...torchrun, TORCHELASTIC_USE_AGENT_STORE: 'True' };
    expect(readDistributedEnv(agent)).toMatchObject({ masterPort: 29500, rendezvousPort: 29501 });
    expect(readDistributedEnv({ ...agent, MASTER_PORT: '65535' }).rendezvousPort).toBe(65534);
    expect(readDistributedEnv({ ...torchrun, TORCHELASTIC_USE_AGENT_STORE: 'False' }).rendezvousPort).toBe(29500);
    expect(readDistributedEnv({ ...agent, RING_ATTENTION_RDZV_PORT: '40000' }).rendezvousPort).toBe(40000);
    expect(readDistributedEnv({ ...slurm, RING_ATTENTION_RDZV_PORT: '40000' }).rendezvousPort).toBe(40000);
    expect(() => readDistributedEnv({ ...torchrun, RING_ATTENTION_RDZV_PORT: '0' })).toThrow(/^environment: RING_ATTENTION_RDZV_PORT must be an integer in \[1, 65535\], got '0'$/);
  });

  it('an explicit job token wins', () => {
    expect(readDistributedEnv({ ...torchrun, RING_ATTENTION_JOB_TOKEN: 'mine' }).jobToken).toBe('mine');
  });

  it('srun tasks under an sbatch script that exported WORLD_SIZE, or with an empty RANK, are Slurm tasks', () => {
    expect(readDistributedEnv({ ...slurm, WORLD_SIZE: '8' }).launcher).toBe('slurm');
    expect(readDistributedEnv({ ...slurm, RANK: '' }).rank).toBe(6);
    expect(() => readDistributedEnv({ WORLD_SIZE: '8', MASTER_ADDR: 'a', MASTER_PORT: '1' })).toThrow(/^environment: RANK is not set$/);
  });

  it("without LOCAL_RANK (launchers that set only RANK), the local rank is RANK modulo LOCAL_WORLD_SIZE", () => {
    const { LOCAL_RANK: _, ...noLocal } = torchrun;
    expect(readDistributedEnv(noLocal)).toMatchObject({ rank: 5, localRank: 1, localWorldSize: 4 });
  });

  it("Slurm's tasks on this node: the step's layout first, then the job's, then SLURM_NTASKS_PER_NODE, at most SLURM_NTASKS", () => {
    const node1 = { ...slurm, SLURM_NTASKS: '4', SLURM_PROCID: '3', SLURM_NODEID: '1', SLURM_LOCALID: '2' };
    const { SLURM_STEP_TASKS_PER_NODE: _, ...noStep } = node1;
    // srun in an allocation of 4(x2) that starts a step of 1,3: the step's counts hold.
    expect(readDistributedEnv({ ...node1, SLURM_STEP_TASKS_PER_NODE: '1,3', SLURM_TASKS_PER_NODE: '4(x2)' }).localWorldSize).toBe(3);
    expect(readDistributedEnv({ ...noStep, SLURM_TASKS_PER_NODE: '1,3' }).localWorldSize).toBe(3);
    expect(readDistributedEnv({ ...noStep, SLURM_NTASKS_PER_NODE: '3' }).localWorldSize).toBe(3);
    // Nothing says how tasks spread over nodes: all of them may be here.
    expect(readDistributedEnv({ ...noStep, SLURM_NTASKS: '2', SLURM_PROCID: '1', SLURM_NODEID: '0', SLURM_LOCALID: '1' }).localWorldSize).toBe(2);
    for (const bad of ['4(x2', '4junk', '4(x0)', '0'])
      expect(() => readDistributedEnv({ ...node1, SLURM_STEP_TASKS_PER_NODE: bad }), bad).toThrow(/expected counts such as '4\(x2\),1'/);
  });

  it("Slurm's tasks on this node come from the step's layout at SLURM_NODEID", () => {
    const uneven = { ...slurm, SLURM_NTASKS: '4', SLURM_PROCID: '3', SLURM_STEP_TASKS_PER_NODE: '1,3', SLURM_NODEID: '1', SLURM_LOCALID: '2', SLURM_NTASKS_PER_NODE: '1' };
    expect(readDistributedEnv(uneven)).toMatchObject({ localRank: 2, localWorldSize: 3 });
    expect(readDistributedEnv({ ...slurm, SLURM_STEP_TASKS_PER_NODE: '2(x3),1', SLURM_NODEID: '3', SLURM_NTASKS: '7', SLURM_LOCALID: '0' }).localWorldSize).toBe(1);
    expect(() => readDistributedEnv({ ...slurm, SLURM_STEP_TASKS_PER_NODE: 'abc' })).toThrow(/^environment: SLURM_STEP_TASKS_PER_NODE: expected counts such as '4\(x2\),1', got 'abc'$/);
    expect(() => readDistributedEnv({ ...slurm, SLURM_NODEID: '2' })).toThrow(/^environment: SLURM_NODEID must be an integer in \[0, 1\]/);
  });

  it("takes [::1] as torchrun writes IPv6 masters; torchrun's default run id 'none' is no job token", () => {
    expect(readDistributedEnv({ ...torchrun, MASTER_ADDR: '[::1]' }).masterAddr).toBe('::1');
    expect(readDistributedEnv({ ...torchrun, TORCHELASTIC_RUN_ID: 'none' }).jobToken).toBe('node-a:29500');
  });

  it('refuses missing or bad values, naming the variable', () => {
    expect(() => readDistributedEnv({})).toThrow(/no RANK\/WORLD_SIZE .* or SLURM_PROCID\/SLURM_NTASKS .* found/);
    expect(() => readDistributedEnv({ ...torchrun, RANK: '16' })).toThrow(/^environment: RANK must be an integer in \[0, 15\], got '16'/);
    expect(() => readDistributedEnv({ ...torchrun, WORLD_SIZE: 'two' })).toThrow(/^environment: WORLD_SIZE must be an integer/);
    expect(() => readDistributedEnv({ ...torchrun, MASTER_ADDR: undefined })).toThrow(/^environment: MASTER_ADDR is not set$/);
    expect(() => readDistributedEnv({ ...torchrun, MASTER_PORT: '70000' })).toThrow(/^environment: MASTER_PORT must be an integer in \[1, 65535\]/);
    expect(() => readDistributedEnv({ ...slurm, MASTER_ADDR: undefined })).toThrow(/MASTER_ADDR is not set; under srun, export MASTER_ADDR=\$\(scontrol show hostnames/);
    expect(() => readDistributedEnv({ ...slurm, SLURM_LOCALID: '4' })).toThrow(/^environment: SLURM_LOCALID must be an integer in \[0, 3\]/);
    expect(() => readDistributedEnv({ ...torchrun, WORLD_SIZE: String(2 ** 33), RANK: '0' })).toThrow(/^environment: WORLD_SIZE must be an integer in \[1, 1048576\]/);
    expect(() => readDistributedEnv({ ...torchrun, RANK: 5 as never })).toThrow(/^environment: RANK must be a string, got number/);
    expect(() => readDistributedEnv(null as never)).toThrow(/^env: expected an object of environment variables, got null/);
  });

  it('refuses values that would pass a looser reading: padded integers, a port in MASTER_ADDR, a repeat of 0', () => {
    for (const [name, value] of [['RANK', ' 1 '], ['RANK', '1\n'], ['MASTER_PORT', ' 29500']] as const)
      expect(() => readDistributedEnv({ ...torchrun, [name]: value })).toThrow(new RegExp(`^environment: ${name} must be an integer`));
    for (const addr of ['127.0.0.1:29500', 'node-a:29500', '[]', '127.0.0.1 ', ' node-a', 'node-a\n', 'node a'])
      expect(() => readDistributedEnv({ ...torchrun, MASTER_ADDR: addr })).toThrow(/^environment: MASTER_ADDR must be a host name or an IP address \(the port goes in MASTER_PORT\), got/);
    expect(readDistributedEnv({ ...torchrun, MASTER_ADDR: 'fe80::1' }).masterAddr).toBe('fe80::1');
    expect(() => readDistributedEnv({ ...slurm, SLURM_STEP_TASKS_PER_NODE: '2(x0)' })).toThrow(/^environment: SLURM_STEP_TASKS_PER_NODE: expected counts such as/);
  });
});
