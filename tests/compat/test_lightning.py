"""PyTorch Lightning, unchanged, under ``lrdebug run``: the LR lrdebug records at every optimizer
step is the one LearningRateMonitor(logging_interval="step") logs, no warning is raised, the call
site names the user's ``trainer.fit(...)`` line and Lightning's frame, and ``strategy="ddp"`` with
two CPU processes (Lightning starts the second itself) gives both ranks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import lrdebug

from conftest import run_lrdebug

pytest.importorskip("lightning", reason="the compat extra is not installed: pip install -e '.[compat]'")

SCRIPT = Path(__file__).parent / "scripts" / "lightning_fit.py"
ENV = {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore::DeprecationWarning"}
# LearningRateMonitor names: param group names, else the optimizer class.
GROUPS = {"onecycle": ["lr-AdamW/body", "lr-AdamW/head"], "steplr": ["lr-SGD"]}


def _run(tmp: Path, *extra: str):
    proc = run_lrdebug("run", "--out", str(tmp / "trace"), str(SCRIPT), str(tmp / "logged.json"), *extra,
                       cwd=tmp, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc, lrdebug.load(tmp / "trace")


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lightning")
    proc, df = _run(tmp)
    return proc, df, json.loads((tmp / "logged.json").read_text()), tmp / "trace"


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lightning_ddp")
    proc, df = _run(tmp, "ddp")
    logged = {r: json.loads((tmp / f"logged.rank{r}.json").read_text()) for r in (0, 1)}
    return proc, df, logged, tmp / "trace"


def recorded_lrs(df, optimizer: int, rank: int = 0) -> dict[int, list[float]]:
    """Optimizer step -> the LR of each group at that step, as recorded."""
    steps = df[(df.event == "optimizer_step") & (df.optimizer == optimizer) & (df["rank"] == rank)]
    return {int(step): rows.sort_values("group").lr.tolist() for step, rows in steps.groupby("step")}


def assert_matches_monitor(recorded: dict[int, list[float]], fit: dict, names: list[str]) -> None:
    # The monitor logs at batch start with step = optimizer steps done so far: the LR of the next step.
    logged = {step: [metrics[n] for n in names] for step, metrics in fit["logged"] if names[0] in metrics}
    assert sorted(recorded) == list(range(1, fit["steps"] + 1))
    assert sorted(logged) == list(range(fit["steps"]))
    assert {step - 1: lrs for step, lrs in recorded.items()} == logged


def test_lr_at_every_optimizer_step_equals_learning_rate_monitor(single):
    _, df, logged, _ = single
    assert_matches_monitor(recorded_lrs(df, 0), logged["onecycle"], GROUPS["onecycle"])
    assert_matches_monitor(recorded_lrs(df, 1), logged["steplr"], GROUPS["steplr"])
    # OneCycleLR per optimizer step (accumulation 2: half as many steps as batches), StepLR per epoch.
    scheduler_steps = df[(df.event == "scheduler_step") & (df.origin == "user") & (df.group.fillna(0) == 0)]
    assert scheduler_steps.groupby("scheduler").size().to_dict() == {0: logged["onecycle"]["steps"], 1: 3}


def test_no_warning(single):
    proc, _, _, trace = single
    assert "LRDebugWarning" not in proc.stderr
    assert [f for f in lrdebug.findings(trace) if f.severity != "info"] == []


def test_call_site_is_the_users_fit_line_and_lightnings_frame(single):
    _, df, _, _ = single
    fit_line = next(i for i, text in enumerate(SCRIPT.read_text().splitlines(), 1) if "trainer.fit(" in text)
    steps = df[df.event == "optimizer_step"]
    assert set(steps.file.astype(str)) == {str(SCRIPT)}
    assert set(steps.line) == {fit_line}
    assert all(site.startswith("lightning/") for site in steps.framework_site.astype(str))
    # The scheduler is built in the user's configure_optimizers: that line, no framework frame.
    inits = df[df.event == "scheduler_init"]
    assert set(inits.func.astype(str)) == {"configure_optimizers"} and inits.framework_site.isna().all()


def test_ddp_with_two_cpu_processes_gives_both_ranks(ddp):
    proc, df, logged, trace = ddp
    assert sorted(df["rank"].unique()) == [0, 1]
    for rank in (0, 1):
        assert_matches_monitor(recorded_lrs(df, 0, rank), logged[rank]["onecycle"], GROUPS["onecycle"])
    # (the parent's closing line lists rank=1 only if that process closed first: Lightning does not wait for it)
    assert [f for f in lrdebug.findings(trace) if f.severity != "info"] == []
