#!/usr/bin/env bash
# Step time of selfroute-train on an NVIDIA GPU (CUDA toolkit required), on SmolLM2-135M:
# builds with --features cuda, prepares the model, runs a few GAPG steps on `arith`, and prints
# each step's time and its split (rollout vs update) from metrics.jsonl, beside the same run on
# the CPU for comparison.
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo xtask fetch-model
cargo build --release -p selfroute-train --features cuda
T=./target/release/selfroute-train
OUT=${OUT:-runs/gpu-step-time}
mkdir -p "$OUT"
$T prepare --model models/SmolLM2-135M-Instruct.Q4_1.gguf --out "$OUT/prepared.gguf" --task arith:1-4
for device in cuda cpu; do
  $T train --model "$OUT/prepared.gguf" --task arith:1-4 --device "$device" --steps "${STEPS:-4}" \
    --prompts-per-step 8 --group 8 --max-new-tokens 128 --lr 1e-6 --out "$OUT/$device"
  python3 - "$OUT/$device/metrics.jsonl" "$device" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"{sys.argv[2]}: step s / rollout s / update s / rollout tok/s")
for r in rows:
    print(f"  step {r['step']}: {r['step_s']:.2f} / {r['rollout_s']:.2f} / {r['update_s']:.2f} / {r['tokens_per_s']:.1f}")
PY
done
