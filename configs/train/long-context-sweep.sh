#!/usr/bin/env bash
# The θ sweep behind the first stage of configs/train/bundled-long-theta.yaml (docs/bundled-model.md, "Long
# context"): for each candidate θ, the shipped decoder trained STEPS steps at 4x its length (10,240 tokens)
# on that recipe's data, then asked for needles at 10,240 tokens (5 depths x SEEDS held-out seeds).
#
# Usage: configs/train/long-context-sweep.sh OUT_DIR [THETA ...]   (default: 1e4 4.4e4 1e5 1e6)
# Environment: STEPS (default 40), SEEDS (default 2).
set -euo pipefail
out=$1; shift
[ $# -gt 0 ] || set -- 1e4 4.4e4 1e5 1e6
steps=${STEPS:-40}
for theta in "$@"; do
  run="$out/theta-$theta"
  lwm train configs/train/bundled-long-theta.yaml output_dir="$run" logging.progress_bar=false \
    "stages=[{name: sweep, seq_len: 10240, rope_theta: $theta, steps: $steps}]"
  lwm eval --model "$run/pretrained/stage0" --out "$run/eval" --tasks needle --trained-length 10240 \
    --needle-multiples 1 --needle-seeds "${SEEDS:-2}" --no-ring || true   # a miss of the model's bars is a result
done
