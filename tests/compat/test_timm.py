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

# Not imported here: on a CPU torch, timm's torchvision needs the script's op declarations first.
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
