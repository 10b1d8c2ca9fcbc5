#!/usr/bin/env bash
# Everything a GPU session checks, in one command (see ../shared/gpu/README.md for how to carry
# Node there): build, the GPU tests, then the benchmark suites; logs, JSON, CSV and SVG under $OUT.
#   source .gpu/env.sh && bash scripts/gpu-session.sh        (QUICK=1: tests only)
set -u
OUT=${OUT:-/tmp/ring-attention-gpu}
mkdir -p "$OUT"
step() { echo "== $1"; }

step build
if ! node scripts/build-native.mjs --force > "$OUT/build.log" 2>&1 || ! npx tsc -p tsconfig.json >> "$OUT/build.log" 2>&1; then
  tail -40 "$OUT/build.log"
  exit 1
fi
node dist/cli.js info | tee "$OUT/info.txt"

step "GPU tests"
npx vitest run test/gpu > "$OUT/test-gpu.log" 2>&1
echo "test/gpu exit code $?"
grep -E "✓|×|Tests " "$OUT/test-gpu.log" | sed 's/\x1b\[[0-9;]*m//g' | tail -60
[ "${QUICK:-0}" = 1 ] && exit 0

step "attention beside torch SDPA"
timeout 240 node dist/cli.js bench attention --max-seq "${MAX_SEQ:-16384}" --reps 5 --out-dir "$OUT" 2>&1 | tee "$OUT/bench-attention.log"
step "1M tokens on one GPU (issue #4's memory target: batch 1, 8 heads, dim 128, causal and not)"
timeout 400 node dist/cli.js bench attention --min-seq 1048576 --max-seq 1048576 --dims 128 --head-width 1024 --tokens 1048576 \
  --reps 1 --no-torch --out-dir "$OUT/attention-1m" 2>&1 | tee "$OUT/bench-attention-1m.log"
step "ring overhead"
timeout 180 node dist/cli.js bench ring --max-block "${MAX_BLOCK:-8192}" --reps 3 --out-dir "$OUT" 2>&1 | tee "$OUT/bench-ring.log"
step "training-step MFU and memory (needs the model layer on CUDA)"
timeout 120 node dist/cli.js bench mfu --out-dir "$OUT" 2>&1 | tee "$OUT/bench-mfu.log"
timeout 120 node dist/cli.js bench memory --out-dir "$OUT" 2>&1 | tee "$OUT/bench-memory.log"
