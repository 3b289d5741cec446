#!/usr/bin/env bash
# Set up .venv if needed, train a small MLP under `lrdebug run`, then report on its trace.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh

out="lrdebug-traces/demo-$(date +%Y%m%d-%H%M%S)-$$"
.venv/bin/lrdebug run --out "$out" examples/train_mlp.py
exec .venv/bin/lrdebug report "$out"
