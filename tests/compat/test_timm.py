"""timm's real ``Lookahead`` (an Optimizer subclass that never runs ``Optimizer.__init__`` and shares
the inner optimizer's param groups) under ``lrdebug run``: no false finding, every step recorded as
the inner AdamW's with the LR the loop used."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from conftest import run_lrdebug

import lrdebug

# Looked up, not imported: the scripts import timm after declaring torchvision's ops (cpu_torchvision.py).
pytestmark = pytest.mark.skipif(importlib.util.find_spec("timm") is None,
                                reason="timm is not installed: pip install -e '.[compat]'")

SCRIPT = Path(__file__).parent / "scripts" / "timm_lookahead.py"


def test_lookahead_is_the_inner_optimizer_and_raises_nothing(tmp_path):
    proc = run_lrdebug("run", "--out", str(tmp_path / "trace"), str(SCRIPT), str(tmp_path / "lrs.json"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "LRDebugWarning" not in proc.stderr
    assert [f.code for f in lrdebug.findings(tmp_path / "trace") if f.severity != "info"] == []
    df = lrdebug.load(tmp_path / "trace")
    steps = df[df.event == "optimizer_step"].sort_values("step")
    assert set(steps.optimizer) == {0}  # the wrapper is no second optimizer
    assert steps.lr.tolist() == json.loads((tmp_path / "lrs.json").read_text())
    assert steps.step.tolist() == list(range(1, 13))
    meta = lrdebug.Report(tmp_path / "trace").to_dict()
    assert meta["optimizers"][0]["class"] == "AdamW"


@pytest.mark.parametrize("mode, moves", [("updates", 15), ("epochs", 3)])
def test_timm_schedulers_are_schedulers(tmp_path, mode, moves):
    """The call that moves the LR is a scheduler step (with timm's class and the caller's line); the
    other is timm's no-op and is not counted, so stepping both is no scheduler-multiple-steps."""
    script = Path(__file__).parent / "scripts" / "timm_scheduler.py"
    proc = run_lrdebug("run", "--out", str(tmp_path / "trace"), str(script), str(tmp_path / "lrs.json"), mode,
                       cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert lrdebug.findings(tmp_path / "trace") == []
    df = lrdebug.load(tmp_path / "trace")
    sched = df[df.event == "scheduler_step"]
    assert len(sched) == moves
    call = "scheduler.step_update(" if mode == "updates" else "scheduler.step(epoch + 1)"
    line = next(i for i, text in enumerate(script.read_text().splitlines(), 1) if call in text)
    assert set(sched.line) == {line}
    steps = df[df.event == "optimizer_step"].sort_values("step")
    assert steps.lr.tolist() == json.loads((tmp_path / "lrs.json").read_text())
    report = lrdebug.Report(tmp_path / "trace").to_dict()
    assert [s["class"] for s in report["schedulers"]] == ["CosineLRScheduler"]
