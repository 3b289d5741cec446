#!/usr/bin/env bash
# Set up .venv if needed, then run the test suite on two workers; extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
# Two workers: most tests run real training scripts in subprocesses, so the two cores stay busy.
exec .venv/bin/python -m pytest -n 2 "$@"
