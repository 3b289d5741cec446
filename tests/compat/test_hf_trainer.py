"""Hugging Face Trainer (with accelerate), unchanged, under ``lrdebug run``: the LR per optimizer
step equals ``trainer.state.log_history``'s ``learning_rate`` (logging_steps=1), for linear and
cosine schedules with warmup and gradient accumulation; the warmup's first LR of 0.0 raises nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import lrdebug

from conftest import run_lrdebug

pytest.importorskip("transformers", reason="the compat extra is not installed: pip install -e '.[compat]'")
pytest.importorskip("accelerate", reason="the compat extra is not installed: pip install -e '.[compat]'")

SCRIPT = Path(__file__).parent / "scripts" / "hf_trainer.py"
SCHEDULES = ("linear", "cosine")  # in the order the script runs them: optimizers 0 and 1
MAX_STEPS = 8


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hf")
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "HF_HOME": str(tmp / "hf_home")}
    proc = run_lrdebug("run", "--out", str(tmp / "trace"), str(SCRIPT), str(tmp / "history.json"), str(tmp / "work"),
                       cwd=tmp, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc, lrdebug.load(tmp / "trace"), json.loads((tmp / "history.json").read_text()), tmp / "trace"


def test_lr_per_optimizer_step_equals_log_history(hf):
    _, df, history, _ = hf
    steps = df[df.event == "optimizer_step"]
    for optimizer, schedule in enumerate(SCHEDULES):
        logged = {e["step"]: e["learning_rate"] for e in history[schedule] if "learning_rate" in e}
        mine = steps[steps.optimizer == optimizer]
        recorded = {int(s): rows.sort_values("group").lr.tolist() for s, rows in mine.groupby("step")}
        assert sorted(recorded) == sorted(logged) == list(range(1, MAX_STEPS + 1))
        for step, lr in logged.items():
            assert recorded[step] == [lr] * len(recorded[step]), (schedule, step)
        assert logged[1] == 0.0  # warmup starts at 0 by design


def test_warmup_from_zero_and_accumulation_raise_nothing(hf):
    proc, _, _, trace = hf
    assert "LRDebugWarning" not in proc.stderr
    assert [f for f in lrdebug.findings(trace) if f.severity != "info"] == []


def test_call_site_is_the_users_train_line_and_the_frameworks_frame(hf):
    _, df, _, _ = hf
    train_line = next(i for i, text in enumerate(SCRIPT.read_text().splitlines(), 1) if "trainer.train()" in text)
    for event, package in (("optimizer_step", "accelerate/"), ("scheduler_step", "transformers/")):
        rows = df[(df.event == event) & (df.origin.astype(str) != "init")]
        assert set(rows.file.astype(str)) == {str(SCRIPT)} and set(rows.line) == {train_line}, event
        assert all(site.startswith(package) for site in rows.framework_site.astype(str)), event
