#!/usr/bin/env bash
# Set up .venv if needed, train a small MLP under `lrdebug run`, then report on its trace.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh

out="lrdebug-traces/demo-$(date +%Y%m%d-%H%M%S)-$$"
.venv/bin/lrdebug run --out "$out" examples/train_mlp.py

if .venv/bin/python -c 'import lrdebug.report' 2>/dev/null; then
    exec .venv/bin/lrdebug report "$out"
fi
# No `lrdebug report` in this version: summarise the trace with lrdebug.load.
.venv/bin/python - "$out" <<'PY'
import sys

import lrdebug

df = lrdebug.load(sys.argv[1])
print(f"\n{sys.argv[1]}: {len(df)} rows")
print(df["event"].value_counts().to_string())
steps = df[df["event"] == "optimizer_step"]
print("\nLR used by each optimizer step (first, min, max, last):")
print(steps.groupby(["optimizer", "group"])["lr"].agg(["count", "first", "min", "max", "last"]).to_string())
PY
