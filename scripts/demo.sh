#!/usr/bin/env bash
# Set up .venv if needed, train a small MLP under `lrdebug run`, then report on its trace.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh

out="lrdebug-traces/demo-$(date +%Y%m%d-%H%M%S)-$$"
.venv/bin/lrdebug run --out "$out" examples/train_mlp.py
status=0
.venv/bin/lrdebug report "$out" || status=$?
# the same report as one self-contained page (the html extra: plotly, in the dev install)
.venv/bin/lrdebug report "$out" --format html -o "$out.html" 2>/dev/null \
    && echo "HTML report: $PWD/$out.html (open it in a browser)"
exit "$status"
