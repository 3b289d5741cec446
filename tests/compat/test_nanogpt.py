"""A nanoGPT-style loop under ``lrdebug run``: the LR written into the param groups by hand each
iteration is recorded exactly at every optimizer step, GradScaler's skipped step is recorded as
skipped with its LR, and the findings are information only (a hand-written schedule, a skipped step)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import lrdebug

from conftest import run_lrdebug

SCRIPT = Path(__file__).parent / "scripts" / "nanogpt_loop.py"


@pytest.fixture(scope="module")
def nano(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nanogpt")
    proc = run_lrdebug("run", "--out", str(tmp / "trace"), str(SCRIPT), str(tmp / "history.json"), cwd=tmp,
                       env={"OMP_NUM_THREADS": "1"}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc, lrdebug.load(tmp / "trace"), json.loads((tmp / "history.json").read_text()), tmp / "trace"


def per_event_lrs(df, event: str) -> list[list[float]]:
    rows = df[df.event == event]
    return [g.sort_values("group").lr.tolist() for _, g in rows.groupby("seq", sort=True)]


def test_exact_lrs_at_every_step_and_the_skipped_one(nano):
    _, df, history, _ = nano
    assert sum(h["skipped"] for h in history) == 1  # the poisoned iteration really was skipped
    assert per_event_lrs(df, "optimizer_step") == [[h["lr"]] * 2 for h in history if not h["skipped"]]
    assert per_event_lrs(df, "optimizer_step_skipped") == [[h["lr"]] * 2 for h in history if h["skipped"]]


def test_only_info_findings(nano):
    proc, _, _, trace = nano
    found = lrdebug.findings(trace)
    assert "LRDebugWarning" not in proc.stderr
    assert {f.severity for f in found} == {"info"}
    assert {f.code for f in found} <= {"lr-changed-outside-scheduler", "step-skipped"}
    assert "step-skipped" in {f.code for f in found}
