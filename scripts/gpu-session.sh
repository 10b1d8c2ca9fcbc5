#!/usr/bin/env bash
# What a GPU session checks (see ../shared/gpu/README.md for how to carry Node there), in parts
# sized so that each device call (at most 10 minutes) holds one or two of them:
#   source .gpu/env.sh && bash scripts/gpu-session.sh build tests        # ~5 min: build, test/gpu
#   source .gpu/env.sh && bash scripts/gpu-session.sh attention ring     # ~7 min: beside torch SDPA, ring overhead
#   source .gpu/env.sh && bash scripts/gpu-session.sh train              # ~8 min: 1B MFU 4K-64K, memory
#   source .gpu/env.sh && bash scripts/gpu-session.sh long               # ~10 min: 1M-token attention, 1B step at 512K
# With no part named: build and tests. Logs, JSON, CSV and SVG go under $OUT.
set -u
OUT=${OUT:-/tmp/ring-attention-gpu}
mkdir -p "$OUT"
step() { echo "== $1 ($(date +%T))"; }

build() {
  step build
  if ! node scripts/build-native.mjs --force > "$OUT/build.log" 2>&1 || ! npx tsc -p tsconfig.json >> "$OUT/build.log" 2>&1; then
    tail -40 "$OUT/build.log"
    exit 1
  fi
  node dist/cli.js info | tee "$OUT/info.txt"
}

tests() {
  step "GPU tests"
  timeout 420 npx vitest run test/gpu > "$OUT/test-gpu.log" 2>&1
  echo "test/gpu exit code $?"
  grep -E "✓|×|Tests " "$OUT/test-gpu.log" | sed 's/\x1b\[[0-9;]*m//g' | tail -60
}

attention() {
  step "attention beside torch SDPA"
  timeout 240 node dist/cli.js bench attention --max-seq "${MAX_SEQ:-16384}" --reps 5 --out-dir "$OUT" 2>&1 | tee "$OUT/bench-attention.log"
}

ring() {
  step "ring overhead"
  timeout 180 node dist/cli.js bench ring --max-block "${MAX_BLOCK:-8192}" --reps 3 --out-dir "$OUT" 2>&1 | tee "$OUT/bench-ring.log"
}

train() {
  step "training-step MFU of the 1B preset, 4K-64K (one timed step each)"
  timeout 240 node dist/cli.js bench mfu --model 1B --max-context 65536 --steps 1 --out-dir "$OUT" 2>&1 | tee "$OUT/bench-mfu.log"
  step "training-step memory of the 1B preset, checkpointing on and off"
  timeout 240 node dist/cli.js bench memory --model 1B --max-context "${MEM_MAX:-131072}" --out-dir "$OUT" 2>&1 | tee "$OUT/bench-memory.log"
}

long() {
  step "1M tokens on one GPU (issue #4's memory target: batch 1, 8 heads, dim 128)"
  timeout 240 node dist/cli.js bench attention --min-seq 1048576 --max-seq 1048576 --dims 128 --head-width 1024 --tokens 1048576 \
    --reps 1 --no-torch --out-dir "$OUT/attention-1m" 2>&1 | tee "$OUT/bench-attention-1m.log"
  step "a 1B training step at 512K tokens (issue #7's largest-context target)"
  timeout 330 node dist/cli.js bench mfu --model 1B --min-context 524288 --max-context 524288 --steps 0 --no-breakdown \
    --out-dir "$OUT/mfu-512k" 2>&1 | tee "$OUT/bench-mfu-512k.log"
}

parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(build tests)
for p in "${parts[@]}"; do
  case "$p" in
    build | tests | attention | ring | train | long) "$p" ;;
    *) echo "unknown part '$p' (build, tests, attention, ring, train, long)"; exit 2 ;;
  esac
done
