#!/usr/bin/env bash
# Everything a GPU session checks, in one command (see ../shared/gpu/README.md for how to carry
# Node there): build, the GPU tests, then both GPU benchmarks, logs and JSON under $OUT.
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
timeout 240 node bench/attention-cuda.mjs --max-seq "${MAX_SEQ:-16384}" --reps 5 --out "$OUT/attention-cuda.json" 2>&1 | tee "$OUT/bench-attention.log"
step "ring overhead"
timeout 180 node bench/ring-cuda.mjs --max-block "${MAX_BLOCK:-8192}" --reps 3 --out "$OUT/ring-cuda.json" 2>&1 | tee "$OUT/bench-ring.log"
