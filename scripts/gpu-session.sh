#!/usr/bin/env bash
# What a GPU session checks (see ../shared/gpu/README.md for how to carry Node there), sized
# for 15 minutes of device time in all, a machine's start (1-2 minutes) included.
#
# Here, first: npm ci; ../shared/gpu/pack; RING_ATTENTION_BUILD=source npm run build:native;
# npx tsc -p tsconfig.json. Then carry [".gpu", "build/Release", "dist"]: the binary built here
# (sm_90a, CUDA 13) runs there as it is (it did on 2026-12-04), so no device time goes on compiling.
# The first session (2026-12-04, bench/results/gpu-session-2026-12-04-3f61040.md) ran tests,
# attention, ring, mfu, memory and packed. Since then, all unmeasured: the Hopper backward takes
# dQ by bulk reductions; the training step's AdamW, clipping and compute copies are one kernel
# (adamwMulti, its GPU test in test/gpu/ops-cuda.test.ts); the checkpoint recompute no longer
# runs the feed-forward; the default backward adds dQ from shared memory, whole rows per atomic
# instruction (float4 atomics on sm_90) and loads each step's tiles one step ahead where the
# occupancy calculator allows (bwd_kernel.cuh); the default forward's warps own two row tiles each;
# the Hopper backward at head dim 64 takes 128-query steps, dQ split by rows (no earlier Hopper
# figure at dim 64: sm90bench's 'ours sm90' dim-64 rows against 'ours' and torch of the same run);
# a failed CUDA ring call frees its non-travelling buffers, and over NCCL aborts its group (the
# tests part runs both: ring-cuda's retry test, nccl's group of one); every backward kernel
# (default dK/dV and dQ, Hopper) tests the mask element by element only on tiles that need it,
# as the forwards already did.
# What the next session needs, in this order:
#   1. source .gpu/env.sh && bash scripts/gpu-session.sh check tests example memory   # ~6-7 min, timeout_s 480
#      What issue #6 still lacks, so that it can close: every GPU test at this commit (the model
#      against the CPU model and transformers, each op's backward on CUDA, adamwMulti), the
#      example on a GPU (in-process ranks, then a launched job of one), and the 1B memory curve's
#      files (suites now write their points as they go, marked partial, and the script packs them
#      every 30 s, so a memory part cut off by the call's limit keeps what it measured).
#   2. at once, while the machine is warm (30 s): sm90bench torchrun   # ~5 min, timeout_s 300
#      (the two calls' limits and a machine's start fit the 15 minutes of device time)
#      (sm90bench's rows against attention-cuda-sm90-2026-12-04-3f61040.csv on an H200, or against
#      torch's rows of the same run on an H100: 'ours' forward and backward, 'ours sm90' backward;
#      its 'ours det' rows tell what the atomics cost, and its RING_ATTENTION_BWD_PREFETCH=0 run
#      what the default backward's loads ahead gain)
#      (torchrun needs only torch: our rendezvous beside torchrun's agent store, which holds
#      MASTER_PORT; reasoned from torchrun's source, never run there; at most 2 x 30 s, expected
#      a few seconds each)
#   Then, in later sessions: sm90 (every attention, ring and model test with the Hopper kernels
#   asked for, those at head dims 64 and 128 checking by call counts that they ran; ~4 min, before they can be the default), mfu (~4 min; step ms and the breakdown's
#   feed-forward and optimizer rows against mfu-cuda-2026-12-04-3f61040.csv), ring (~2 min; its
#   'queued' ratios tell whether the ring's 15% is a per-call cost the host queues ahead of),
#   profile (~5 min), long1m (~3 min).
#   long512k (~8 min on the default kernels, ~5-6 with RING_ATTENTION_SM90=1) needs a session of
#   its own. The parts' limits add up to more than a call's: they bound a part that hangs;
#   typical times are what the plan counts, the last part the one at risk.
# `check` rebuilds there only when the carried binary does not load or sees no GPU (~3 min).
# Every part has its own time limit, so a slow one costs its limit, not the call. Logs, JSON,
# CSV and SVG are written under $WORK and packed into $OUT/results.tgz after every part (at
# most 8 files come back), so a call cut short keeps what it finished; the summary of each part
# is printed, and so comes back in the output. Suites print a line as each point starts, so a
# point cut off at its limit still shows.
set -u
OUT=${OUT:-/tmp/ring-attention-gpu}
WORK=${WORK:-/tmp/ring-attention-gpu-work}
mkdir -p "$OUT" "$WORK"
# Through a temporary name and a rename, so that two packs at once never leave a broken archive.
# tar's exit 1 says a file changed while it read it (a log being written): the archive is whole.
pack() {
  local tmp="$OUT/results.tgz.$BASHPID"
  tar czf "$tmp" --warning=no-file-changed -C "$WORK" . 2>/dev/null
  [ $? -le 1 ] && mv -f "$tmp" "$OUT/results.tgz"
  rm -f "$tmp"
  cp "$WORK"/build.log "$WORK"/info.txt "$OUT"/ 2>/dev/null; true
}
# Also every 30 s: a call killed at its limit runs no EXIT trap, and keeps what the last pack
# held (the suites write their points as they go). Its output goes nowhere, so that its last
# sleep holds no pipe of the caller's open. At exit it is stopped with its children (a tar it
# may be running) before the last pack, and any archive it left half-written is removed.
( while sleep 30; do kill -0 $$ 2>/dev/null || exit; pack; done ) > /dev/null 2>&1 &
packer=$!
trap 'pkill -P $packer 2>/dev/null; kill $packer 2>/dev/null; wait $packer 2>/dev/null; rm -f "$OUT"/results.tgz.*; pack' EXIT
step() { echo "== $1 ($(date +%T))"; }
clean() { sed 's/\x1b\[[0-9;]*m//g'; }

build() {
  step build
  # Native only: the pack leaves TypeScript behind and has no npx, so dist/ must be carried.
  if ! node scripts/build-native.mjs --force > "$WORK/build.log" 2>&1; then
    tail -40 "$WORK/build.log"
    exit 1
  fi
}

check() {
  step "check the carried binary"
  if [ -f dist/index.js ] && node --input-type=module -e \
      "import { info } from './dist/index.js'; process.exit(info().cuda.available ? 0 : 1)" 2>/dev/null; then
    echo "the carried binary loads and sees the GPU: no build"
  else
    echo "the carried binary does not load or sees no GPU: building here"
    build
  fi
  node dist/cli.js info | tee "$WORK/info.txt"
}

tests() {
  step "GPU tests"
  timeout 210 node node_modules/vitest/vitest.mjs run test/gpu > "$WORK/test-gpu.txt" 2>&1
  echo "test/gpu exit code $? (124: cut off at its limit)"
  grep -E "✓|×|Tests |FAIL|AssertionError" "$WORK/test-gpu.txt" | clean | tail -80
}

attention() {
  step "attention beside torch SDPA"
  timeout 120 node dist/cli.js bench attention --max-seq "${MAX_SEQ:-8192}" --reps 3 --out-dir "$WORK" 2>&1 | clean | tail -40
}

ring() {
  step "ring overhead"
  timeout 240 node dist/cli.js bench ring --ranks 2,4,8 --max-block "${MAX_BLOCK:-8192}" --reps 2 --out-dir "$WORK" 2>&1 | clean | tail -24
}

mfu() {
  step "training-step MFU of the 1B preset, 4K-16K (one timed step each)"
  timeout 120 node dist/cli.js bench mfu --model 1B --max-context "${MFU_MAX:-16384}" --steps 1 --out-dir "$WORK" 2>&1 | clean | tail -40
  step "the same with checkpoint 'keep-attention' (no attention in the recompute)"
  timeout 100 node dist/cli.js bench mfu --model 1B --max-context "${MFU_MAX:-16384}" --steps 1 --no-breakdown --keep-attention \
    --out-dir "$WORK/mfu-keep-attention" 2>&1 | clean | tail -20
  step "the same on the Hopper attention kernels (RING_ATTENTION_SM90=1; trust it once the sm90 part's model tests pass)"
  RING_ATTENTION_SM90=1 timeout 100 node dist/cli.js bench mfu --model 1B --max-context "${MFU_MAX:-16384}" --steps 1 \
    --out-dir "$WORK/mfu-sm90" 2>&1 | clean | tail -20
}

memory() {
  step "training-step memory of the 1B preset, checkpointing on and off"
  timeout 150 node dist/cli.js bench memory --model 1B --max-context "${MEM_MAX:-65536}" --out-dir "$WORK" 2>&1 | clean | tail -24
}

long1m() {
  # Causal only, Hopper kernels only: 5 forwards and 4 backwards, ~2.5 min at the 2026-12-04 rates.
  step "1M tokens on one GPU (issue #4's memory target: batch 1, 8 heads, dim 128, causal; Hopper kernels)"
  RING_ATTENTION_SM90=1 timeout 300 node dist/cli.js bench attention --min-seq 1048576 --max-seq 1048576 --dims 128 --head-width 1024 \
    --tokens 1048576 --causal yes --reps 1 --no-torch --out-dir "$WORK/attention-1m" 2>&1 | clean | tail -12
}

long512k() {
  # 5.8e16 model FLOPs, but the kernels run more: attention's forward is 1.8e16 FLOPs a pass at
  # 512K, run 3.5 times with 'keep-attention' (forward, backward at 2.5) and 4.5 times without
  # (the recompute's forward too). At the ~130 TFLOP/s the default kernels reached in the 1B
  # step (head dim 64), that is ~490 s with 'keep-attention' and ~620 s without, past the limit;
  # the rest of the step adds ~10 s at the 16K rates, and the warm-up's first calls some more:
  # ~50 s of margin. So 'keep-attention' (~33 GiB more at 512K, computed), and
  # RING_ATTENTION_SM90=1 given to this part once the sm90 part's model tests pass (~5-6 min
  # at their head-dim-128 rates; head dim 64 is unmeasured).
  step "a 1B training step at 512K tokens (issue #7's largest-context target), one step, checkpoint 'keep-attention'"
  timeout 560 node dist/cli.js bench mfu --model 1B --min-context 524288 --max-context 524288 --steps 0 --no-breakdown \
    --keep-attention --out-dir "$WORK/mfu-512k" 2>&1 | clean | tail -12
}

example() {
  step "the line-retrieval example on the GPU (2 ranks sharing it)"
  timeout 150 node examples/line-retrieval.mjs --device cuda > "$WORK/example-cuda.txt" 2>&1
  echo "example exit code $? (124: cut off at its limit)"
  clean < "$WORK/example-cuda.txt" | tail -8
  step "the same as a job of one process (ring-attention launch: an NCCL group of one; 300 steps)"
  timeout 90 node dist/cli.js launch --nproc-per-node 1 examples/line-retrieval.mjs --device cuda --steps 300 > "$WORK/example-launch.txt" 2>&1
  echo "example (launch) exit code $? (124: cut off at its limit)"
  clean < "$WORK/example-launch.txt" | tail -4
}

sm90() {
  step "every CUDA attention, ring and model test with RING_ATTENTION_SM90=1 (the Hopper kernels where they apply: head dims 64 and 128), with their own tests"
  RING_ATTENTION_SM90=1 timeout 240 node node_modules/vitest/vitest.mjs run test/gpu/wgmma-unit.test.ts test/gpu/attention-sm90.test.ts \
    test/gpu/attention-cuda.test.ts test/gpu/ring-cuda.test.ts test/gpu/llama-cuda.test.ts > "$WORK/test-sm90.txt" 2>&1
  echo "sm90 tests exit code $? (124: cut off at its limit)"
  grep -E "✓|×|Tests |FAIL|AssertionError" "$WORK/test-sm90.txt" | clean | tail -60
}

sm90bench() {
  step "the Hopper kernels beside the default ones and torch"
  timeout 90 node dist/cli.js bench attention --min-seq 4096 --max-seq 16384 --dims 64,128 --sm90 --reps 3 \
    --out-dir "$WORK/sm90" 2>&1 | clean | tail -30
  step "the Hopper forward without its ping-pong (rows 'ours sm90' against the run above)"
  RING_ATTENTION_SM90_PINGPONG=0 timeout 45 node dist/cli.js bench attention --min-seq 16384 --max-seq 16384 --dims 128 --sm90 \
    --no-torch --reps 3 --out-dir "$WORK/sm90-no-pingpong" 2>&1 | clean | tail -12
  step "the default backward without its loads one step ahead (rows 'ours' and 'ours det' against the runs above and below)"
  RING_ATTENTION_BWD_PREFETCH=0 timeout 45 node dist/cli.js bench attention --min-seq 16384 --max-seq 16384 --dims 64,128 --causal yes \
    --deterministic --no-torch --reps 3 --out-dir "$WORK/no-prefetch" 2>&1 | clean | tail -12
  step "the deterministic backward (dQ in its own pass, no atomics) beside the atomic one, 16K causal"
  timeout 45 node dist/cli.js bench attention --min-seq 16384 --max-seq 16384 --dims 128 --causal yes --sm90 --deterministic \
    --no-torch --reps 3 --out-dir "$WORK/deterministic" 2>&1 | clean | tail -12
}

profile() {
  # What no timing tells: tensor-core use, stall reasons, occupancy of each attention kernel.
  local ncu
  ncu=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu /usr/local/cuda*/nsight-compute*/ncu 2>/dev/null | head -1)
  if [ -z "$ncu" ]; then echo "profile: no ncu on this machine"; return; fi
  local sections=(--section SpeedOfLight --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis
    --section WarpStateStats --section Occupancy --section LaunchStats)
  for kernels in sm90 default; do
    step "Nsight Compute: one forward and one backward, 16K causal, 16 heads, dim 128, $kernels kernels"
    RING_ATTENTION_SM90=$([ $kernels = sm90 ] && echo 1 || echo 0) timeout 150 "$ncu" --clock-control none --target-processes all \
      --kernel-name regex:'fwd|bwd|delta' --launch-count 3 "${sections[@]}" node bench/attention-once.mjs --seq 16384 --causal \
      > "$WORK/ncu-$kernels.txt" 2>&1
    local rc=$?
    echo "ncu exit code $rc (124: cut off at its limit)"
    [ $rc -ne 0 ] && tail -5 "$WORK/ncu-$kernels.txt"
    grep -E "^  [a-z_].*\(|Duration|Compute \(SM\) Throughput|Memory Throughput|Registers Per|Achieved Occupancy|No Eligible|Issued Warp" \
      "$WORK/ncu-$kernels.txt" | head -70
  done
}

torchrun() {
  # No GPU needed, only torch: our rendezvous beside torchrun's agent store (static and c10d).
  step "torchrun: the rendezvous under torchrun's agent store"
  # Under c10d, MASTER_PORT is the port the agent's store took (any free one); ours is the next.
  for rdzv in "--master-port 29533" "--rdzv-backend c10d --rdzv-endpoint localhost:29544"; do
    # shellcheck disable=SC2086
    timeout 30 python3 -m torch.distributed.run --nproc-per-node 2 $rdzv --no-python node scripts/torchrun-rendezvous.mjs > "$WORK/torchrun.log" 2>&1
    echo "torchrun $rdzv: exit $?"
    grep -E "^rank|Error|error" "$WORK/torchrun.log" | head -6
  done
}

packed() {
  step "packed sequences: 16K tokens as 8 documents, beside torch on a batch of 8 x 2K"
  timeout 45 node dist/cli.js bench attention --min-seq 16384 --max-seq 16384 --dims 128 --documents 8 --reps 3 \
    --out-dir "$WORK/packed" 2>&1 | clean | tail -12
}

parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(check tests)
for p in "${parts[@]}"; do
  case "$p" in
    build | check | tests | example | attention | ring | mfu | memory | long1m | long512k | packed | sm90 | sm90bench | profile | torchrun) "$p"; pack ;;
    *) echo "unknown part '$p' (build, check, tests, example, attention, ring, mfu, memory, long1m, long512k, packed, sm90, sm90bench, profile, torchrun)"; exit 2 ;;
  esac
done
