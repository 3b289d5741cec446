"""`lrdebug report` and `lrdebug.Report` on real traces recorded from scripts, and on bad input."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import EXAMPLES, run_lrdebug, run_python
from rich.console import Console

import lrdebug
from lrdebug import cli
from lrdebug.tracefile.schema import STATUS_FILE

# Two param groups (one named, with an escape sequence in the name), a DataLoader of 4 batches for 3
# epochs, StepLR per epoch, and one misuse: the scheduler steps once before the first optimizer step.
RICH_SCRIPT = textwrap.dedent('''
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    backbone, head = torch.nn.Linear(4, 8), torch.nn.Linear(8, 1)
    optimizer = torch.optim.SGD([{"params": backbone.parameters(), "name": "enc\\x1b[31moder"},
                                 {"params": head.parameters(), "lr": 0.05}], lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    loader = DataLoader(TensorDataset(torch.randn(16, 4), torch.randn(16, 1)), batch_size=4)
    scheduler.step()  # too early
    for epoch in range(3):
        for x, y in loader:
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(head(backbone(x)), y).backward()
            optimizer.step()
        scheduler.step()
''')
EARLY_LINE = 11  # the line of `scheduler.step()  # too early` in RICH_SCRIPT
ENCODER = "enc\x1b[31moder"


@pytest.fixture(scope="module")
def steplr(tmp_path_factory) -> Path:
    """examples/train_steplr.py: Adam(lr=0.1), StepLR(3, 0.1), 10 steps."""
    out = tmp_path_factory.mktemp("steplr") / "trace"
    proc = run_lrdebug("run", "--out", str(out), str(EXAMPLES / "train_steplr.py"))
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def rich_trace(tmp_path_factory) -> Path:
    """A script named `train[red].py`, recorded with --sample-updates 3."""
    d = tmp_path_factory.mktemp("rich")
    (d / "train[red].py").write_text(RICH_SCRIPT)
    proc = run_lrdebug("run", "--out", "trace", "--sample-updates", "3", "train[red].py", cwd=d)
    assert proc.returncode == 0, proc.stderr
    return d / "trace"


def render(report, width=120) -> str:
    buf = io.StringIO()
    Console(file=buf, width=width).print(report)
    return buf.getvalue()


def run_main(capsys, *argv) -> tuple[int, str, str]:
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


# ------------------------------------------------------------------------------------------ facts
def test_text_report_shows_the_schedule_steps_and_profile(steplr):
    text = render(lrdebug.Report(steplr))
    assert "train_steplr.py" in text
    assert "complete" in text and "torch 2." in text
    row = next(line for line in text.splitlines() if "Adam/pg1" in line and "StepLR" in line)
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    assert cells[:7] == ["Adam/pg1", "10", "0", "0.1", "0.0001", "0.1", "0.0001"]
    assert "StepLR #0 (10 steps)" in cells[7]
    assert "LR schedule: Adam" in text and "1e-1" in text and "1e-4" in text  # log scale over 3 decades
    assert "No findings." in text
    for name in ("optimizer step", "iteration", "scheduler step", "zero_grad", "Slowest steps"):
        assert name in text


def test_json_report_matches_the_trace(steplr, capsys):
    status, out, _ = run_main(capsys, "report", str(steplr), "--format", "json")
    assert status == 0
    d = json.loads(out)
    assert d["schema_version"] == "1.0" and d["ranks"] == [0]
    assert d["trace"]["complete"] is True and d["trace"]["script"].endswith("train_steplr.py")
    [opt] = d["optimizers"]
    assert (opt["index"], opt["class"], opt["steps"], opt["skipped"]) == (0, "Adam", 10, 0)
    [g] = opt["groups"]
    assert g["label"] == "Adam/pg1" and g["name"] is None and g["steps"] == 10
    assert g["first_lr"] == 0.1 and g["max_lr"] == 0.1
    assert g["last_lr"] == pytest.approx(1e-4) and g["min_lr"] == pytest.approx(1e-4)
    assert d["schedulers"] == [{"index": 0, "class": "StepLR", "optimizer": 0, "steps": 10, "children": []}]
    assert d["findings"] == [] and d["findings_source"] == "rechecked"

    # The profile agrees with the rows themselves.
    df = lrdebug.load(steplr)
    steps = df[(df.event == "optimizer_step")]
    [t] = d["timing"]["optimizers"]
    assert t["dur_ns"]["n"] == 10 and t["dur_ns"]["max"] == steps.dur_ns.max()
    assert t["dur_ns"]["p50"] == float(np.quantile(steps.dur_ns.astype(float), 0.5, method="inverted_cdf"))
    assert t["iter_ns"]["n"] == steps.iter_ns.notna().sum() == 9
    slowest = t["slowest"][0]
    assert slowest["iter_ns"] == steps.iter_ns.max()
    assert slowest["step"] == int(steps.loc[steps.iter_ns.astype(float).idxmax(), "step"])
    assert t["step_share"] == pytest.approx(steps.dur_ns[steps.iter_ns.notna()].sum() / steps.iter_ns.sum())
    sched = df[(df.event == "scheduler_step") & (df.origin == "user")]
    assert d["timing"]["scheduler_step_ns"]["n"] == len(sched) == 10


def test_markdown_report(steplr, capsys):
    status, out, _ = run_main(capsys, "report", str(steplr), "--format", "markdown")
    assert status == 0
    assert out.startswith("### lrdebug report:")
    assert "| Adam/pg1 | 10 | 0 | 0.1 | 0.0001 | 0.1 | 0.0001 | StepLR #0 (10 steps) |" in out
    assert "#### Findings (0)" in out and "#### Step time: Adam" in out


def test_groups_findings_epochs_and_updates(rich_trace, capsys):
    status, out, _ = run_main(capsys, "report", str(rich_trace), "--format", "json")
    assert status == 0
    d = json.loads(out)
    enc, head = d["optimizers"][0]["groups"]
    assert (enc["name"], enc["label"], head["label"]) == (ENCODER, ENCODER, "SGD/pg2")
    # The early scheduler step halved both LRs before the first optimizer step, then once per epoch.
    assert (enc["steps"], enc["first_lr"], enc["last_lr"]) == (12, 0.05, 0.0125)
    assert (head["steps"], head["first_lr"], head["last_lr"]) == (12, 0.025, 0.00625)
    assert d["schedulers"][0]["steps"] == 4
    assert d["epochs"]["count"] == 3

    [f] = [f for f in d["findings"] if f["code"] == "scheduler-before-optimizer"]
    assert f["severity"] == "warning" and f["file"].endswith("train[red].py") and f["line"] == EARLY_LINE

    # Plain SGD: the update applied is exactly lr * grad, so eff_lr equals lr at every sample.
    u = enc["updates"]
    assert u["samples"] == 4 and (u["first_step"], u["last_step"]) == (1, 10)
    for k in ("first", "median", "last"):
        assert u["eff_lr"][k] == pytest.approx(u["lr"][k], rel=1e-5)
    assert u["ratio_hint"] in ("low", "typical", "high")


def test_text_escapes_markup_and_control_characters(rich_trace):
    report = lrdebug.Report(rich_trace)
    text = render(report, width=160)
    assert "train[red].py" in text  # markup in a file name is printed, not interpreted
    assert f"train[red].py:{EARLY_LINE}" in text
    assert "\x1b" not in text  # no escape sequence from the trace reaches the terminal
    assert "enc\\x1b[31moder" in text
    assert "scheduler-before-optimizer" in text and "WARNING" in text
    assert "Measured update per group" in text and "eff_lr" in text
    assert "vertical lines: epoch starts" in text and "(3 epochs)" in text
    md = report.to_markdown()
    assert "train\\[red\\].py" in md and "\x1b" not in md


def test_fail_on_sets_the_exit_status(rich_trace, capsys):
    assert run_main(capsys, "report", str(rich_trace), "--fail-on", "warning")[0] == 1
    assert run_main(capsys, "report", str(rich_trace), "--fail-on", "info", "--format", "json")[0] == 1
    assert run_main(capsys, "report", str(rich_trace), "--fail-on", "error")[0] == 0
    assert run_main(capsys, "report", str(rich_trace))[0] == 0


def test_report_works_without_torch(rich_trace, tmp_path):
    """A trace is readable where torch cannot be imported (and the findings are still rechecked)."""
    blocker = tmp_path / "blocked" / "torch"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('torch is blocked in this test')\n")
    env = {"PYTHONPATH": str(blocker.parent)}
    proc = run_lrdebug("report", str(rich_trace), "--format", "json", env=env)
    assert proc.returncode == 0, proc.stderr
    d = json.loads(proc.stdout)
    assert d["findings_source"] == "rechecked"
    assert "scheduler-before-optimizer" in {f["code"] for f in d["findings"]}
    proc = run_lrdebug("report", str(rich_trace), "--width", "100", env=env, module=True)
    assert proc.returncode == 0 and "Learning rate per param group" in proc.stdout, proc.stderr
    assert run_python("-c", "import torch", env=env).returncode != 0  # the blocker really blocks


# ------------------------------------------------------------------------------------------ bad input
def _one_line_error(status, err):
    assert status == 2
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_missing_path(capsys, tmp_path):
    err = _one_line_error(*run_main(capsys, "report", str(tmp_path / "nope"))[::2])
    assert "no such trace" in err


def test_empty_folder(capsys, tmp_path):
    err = _one_line_error(*run_main(capsys, "report", str(tmp_path))[::2])
    assert "empty" in err


def test_a_file_and_a_folder_that_are_not_traces(capsys, tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("hello")
    assert "not a trace" in _one_line_error(*run_main(capsys, "report", str(f))[::2])
    assert "not an lrdebug trace" in _one_line_error(*run_main(capsys, "report", str(tmp_path))[::2])
    junk = tmp_path / "junk" / "rank=0"
    junk.mkdir(parents=True)
    (junk / "part-000000.parquet").write_bytes(b"PAR1 this is not parquet")
    err = _one_line_error(*run_main(capsys, "report", str(junk.parent))[::2])
    assert "no readable part" in err and "part-000000.parquet" in err


def test_newer_major_schema_version(capsys, steplr, tmp_path):
    copy = tmp_path / "newer"
    shutil.copytree(steplr, copy)
    status_file = copy / "rank=0" / STATUS_FILE
    status = json.loads(status_file.read_text())
    status["schema_version"] = "2.0"
    status_file.write_text(json.dumps(status))
    err = _one_line_error(*run_main(capsys, "report", str(copy))[::2])
    assert "2.0" in err and "newer" in err


def test_no_optimizer_steps_is_reported_as_such(capsys, tmp_path):
    import torch

    out = tmp_path / "nosteps"
    opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
    with lrdebug.trace(opt, out=out, summary=False):
        for _ in range(3):
            opt.zero_grad()
    status, text, err = run_main(capsys, "report", str(out), "--width", "100")
    assert status == 0, err
    assert "No optimizer steps were recorded" in text
    status, js, _ = run_main(capsys, "report", str(out), "--format", "json")
    d = json.loads(js)
    assert d["optimizers"][0]["groups"][0]["steps"] == 0 and "no optimizer steps were recorded" in d["notes"]


def test_a_corrupt_part_is_skipped_and_named(capsys, tmp_path):
    import torch

    out = tmp_path / "parts"
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with lrdebug.trace(opt, out=out, summary=False) as t:
        for i in range(20):
            opt.zero_grad()
            model(torch.ones(1, 2)).sum().backward()
            opt.step()
            if i % 5 == 4:
                t.dataframe()  # flushes the steps so far as one part
            if i == 14:  # damaged while the run goes on: merging the parts at close must keep them all
                parts = sorted((out / "rank=0").glob("part-*.parquet"))
                assert len(parts) >= 3
                victim = parts[1]
                lost = pq.read_table(victim).column("event").to_pylist().count("optimizer_step")
                assert lost > 0
                victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    assert victim.exists() and len(list((out / "rank=0").glob("part-*.parquet"))) >= 4

    status, js, err = run_main(capsys, "report", str(out), "--format", "json")
    assert status == 0
    assert victim.name in err and "skipped" in err
    d = json.loads(js)
    assert any(victim.name in s for s in d["trace"]["skipped_parts"]) and d["trace"]["complete"] is False
    assert d["optimizers"][0]["groups"][0]["steps"] == 20 - lost
    status, text, _ = run_main(capsys, "report", str(out), "--width", "120")
    assert status == 0 and victim.name in text and "INCOMPLETE" in text


def test_default_trace_is_the_newest_under_lrdebug_traces(capsys, steplr, rich_trace, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = _one_line_error(*run_main(capsys, "report")[::2])
    assert "lrdebug-traces" in err
    root = tmp_path / "lrdebug-traces"
    root.mkdir()
    shutil.copytree(steplr, root / "b-old")
    shutil.copytree(rich_trace, root / "a-new")
    os.utime(root / "b-old", ns=(1_000_000_000, 1_000_000_000))
    status, out, _ = run_main(capsys, "report", "--format", "json")
    assert status == 0
    assert json.loads(out)["trace"]["path"] == os.path.join("lrdebug-traces", "a-new")


def test_a_killed_rank_and_the_cross_rank_table(capsys, steplr, tmp_path):
    """Two ranks; rank 1's process never closed its trace (its status still says running)."""
    copy = tmp_path / "ranks"
    shutil.copytree(steplr, copy)
    shutil.copytree(copy / "rank=0", copy / "rank=1")
    status_file = copy / "rank=1" / STATUS_FILE
    status = json.loads(status_file.read_text())
    status.update(state="running", complete=False)
    status_file.write_text(json.dumps(status))
    code, out, _ = run_main(capsys, "report", str(copy), "--format", "json")
    d = json.loads(out)
    assert code == 0 and d["ranks"] == [0, 1] and d["trace"]["complete"] is False
    assert [s["state"] for s in d["trace"]["status"]] == ["closed", "running"]
    assert [r["steps"] for r in d["optimizers"][0]["ranks"]] == [10, 10]
    text = render(lrdebug.Report(copy), width=160)
    assert "INCOMPLETE" in text and "rank 1" in text and "killed" in text
    rank_rows = [line for line in text.splitlines() if line.startswith("│    1 │")]
    assert rank_rows and "running" in rank_rows[0] and "0.0001" in rank_rows[0]


# A NaN among finite LRs must be counted even where no inf shares its part of the trace (parts are
# cut by time, so any split of the run can happen).
@pytest.mark.parametrize("lrs", [(0.1, float("nan"), float("inf"), 0.05), (0.1, float("nan"), 0.05)],
                         ids=["nan-and-inf", "nan-alone"])
def test_nonfinite_lrs_are_reported_not_fatal(capsys, tmp_path, lrs):
    import torch

    out = tmp_path / "nan"
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(lrdebug.LRDebugWarning, match="lr-nonfinite"), lrdebug.trace(opt, out=out, summary=False):
        for lr in lrs:
            opt.param_groups[0]["lr"] = lr
            opt.zero_grad()
            model(torch.ones(1, 2)).sum().backward()
            opt.step()
    code, out_json, _ = run_main(capsys, "report", str(out), "--format", "json")
    g = json.loads(out_json)["optimizers"][0]["groups"][0]
    nonfinite = sum(1 for lr in lrs if not math.isfinite(lr))
    assert code == 0 and g["steps"] == len(lrs) and g["nonfinite_lr"] == nonfinite
    assert (g["first_lr"], g["min_lr"], g["max_lr"], g["last_lr"]) == (0.1, 0.05, 0.1, 0.05)
    code, text, _ = run_main(capsys, "report", str(out), "--width", "100")
    assert code == 0 and "lr-nonfinite-or-negative" in text
