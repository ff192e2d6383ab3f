#!/usr/bin/env bash
# The main job, offline on a CPU-only machine: build a tiny random-weight Stable Diffusion pipeline, validate the
# plans, and apply the example plan to it with --dry-run, writing an image and a transfer trace to out/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
export HF_HUB_OFFLINE=1
.venv/bin/planner validate plans
.venv/bin/planner tiny sd out/tiny-sd
.venv/bin/planner apply plans/examples/tiny-sd.yaml --source out/tiny-sd --dry-run --calls 2 \
  --out out/image.png --trace-json out/trace.json
