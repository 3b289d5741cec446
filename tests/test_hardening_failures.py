"""A failure inside lrdebug never changes the training, and an existing trace is never overwritten."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch
from conftest import run_lrdebug

import lrdebug


def train(steps: int = 60, at: int | None = None, action=None) -> list[bytes]:
    """A small deterministic loop; ``action`` runs after step ``at``. Returns the parameters' bytes."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.5)
    x, y = torch.randn(16, 8), torch.randn(16, 2)
    for step in range(1, steps + 1):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        sched.step()
        if step == at:
            action()
    return [p.detach().numpy().tobytes() for p in model.parameters()]


@pytest.fixture(scope="module")
def untraced() -> list[bytes]:
    return train()


def _status(trace: Path) -> dict:
    return json.loads((trace / "rank=0" / "_lrdebug_status.json").read_text())


def _lrdebug_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("lrdebug")]


# ------------------------------------------------------------------------------ internal failures


def test_output_folder_removed_mid_run(tmp_path, capsys, untraced):
    out = tmp_path / "trace"
    with lrdebug.trace(out=out) as t:
        params = train(at=30, action=lambda: (t.dataframe(), shutil.rmtree(out)))
    err = capsys.readouterr().err
    assert params == untraced
    lines = _lrdebug_lines(err)
    assert len(lines) == 1 and "cannot write the trace" in lines[0] and str(out) in lines[0], err
    assert not out.exists()  # nothing half-written appears where the user removed the trace


def test_full_disk(tmp_path, capsys, untraced):
    """Every part after the first resolves to /dev/full: the kernel answers ENOSPC."""
    out = tmp_path / "trace"

    def fill_disk():
        t.dataframe()  # part 0 is written
        for i in range(1, 50):
            os.symlink("/dev/full", out / "rank=0" / f".part-{i:06d}.parquet.tmp")

    with lrdebug.trace(out=out) as t:
        params = train(at=30, action=fill_disk)
    err = capsys.readouterr().err
    assert params == untraced
    lines = _lrdebug_lines(err)
    assert len(lines) == 1 and "No space left on device" in lines[0], err
    status = _status(out)
    assert status["state"] == "closed" and status["complete"] is False
    assert "No space left on device" in status["reason"]
    df = lrdebug.load(out)  # what was written before the disk filled is intact
    assert df[df.event == "optimizer_step"]["step"].tolist() == list(range(1, 31))


@pytest.fixture
def checker_class(monkeypatch):
    """The rule engine's class; a stand-in with the same interface where it is not installed."""
    try:
        from lrdebug.rules import Checker
    except ImportError:
        class Checker:
            def __init__(self, ignore=()):
                self.findings = []

            def register_optimizer(self, index, info):
                pass

            def register_scheduler(self, index, info):
                pass

            def feed(self, ev):
                return []

            def finish(self):
                return []

        module = types.ModuleType("lrdebug.rules")
        module.Checker = Checker
        monkeypatch.setitem(sys.modules, "lrdebug.rules", module)
    return Checker


def test_bug_in_a_rule(tmp_path, capsys, untraced, checker_class, monkeypatch):
    fed = []
    original = checker_class.feed

    def feed(self, ev):
        fed.append(ev)
        if len(fed) == 40:
            raise ZeroDivisionError("a rule divided by zero")
        return original(self, ev)

    monkeypatch.setattr(checker_class, "feed", feed)
    out = tmp_path / "trace"
    with lrdebug.trace(out=out):
        params = train()
    err = capsys.readouterr().err
    assert params == untraced
    lines = _lrdebug_lines(err)
    assert len(lines) == 1 and "a rule divided by zero" in lines[0] and str(out) in lines[0], err
    status = _status(out)
    assert status["complete"] is False and "a rule divided by zero" in status["reason"]
    df = lrdebug.load(out)  # the checks stopped, the recording did not
    assert df[df.event == "optimizer_step"]["step"].tolist() == list(range(1, 61))


# ------------------------------------------------------------------------------ never overwrite


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def existing(tmp_path) -> Path:
    out = tmp_path / "existing"
    with lrdebug.trace(out=out, summary=False):
        train(steps=5)
    return out


def test_trace_refuses_an_existing_trace(existing):
    before = _digest(existing)
    with pytest.raises(lrdebug.LRDebugError) as info:
        with lrdebug.trace(out=existing, summary=False):
            train(steps=3)
    assert str(existing) in str(info.value) and "--out" in str(info.value)
    assert _digest(existing) == before


def test_trace_refuses_a_folder_with_other_files(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("not a trace")
    with pytest.raises(lrdebug.LRDebugError, match="--out"):
        with lrdebug.trace(out=out, summary=False):
            pass
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_cli_run_refuses_an_existing_trace(existing, tmp_path):
    before = _digest(existing)
    script = tmp_path / "train.py"
    script.write_text("print('the script ran')\n")
    proc = run_lrdebug("run", "--out", str(existing), str(script), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and str(existing) in lines[0] and "--out" in lines[0], proc.stderr
    assert _digest(existing) == before


def test_ranks_of_one_run_share_a_folder_but_a_rank_is_written_once(tmp_path, monkeypatch):
    out = tmp_path / "ddp"
    monkeypatch.setenv("LRDEBUG_RUN_ID", "one-run")
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        with lrdebug.trace(out=out, summary=False):
            train(steps=4)
    df = lrdebug.load(out)
    assert sorted(df["rank"].unique()) == [0, 1]
    before = _digest(out)
    with pytest.raises(lrdebug.LRDebugError, match="--out"):
        with lrdebug.trace(out=out, summary=False):
            train(steps=2)
    assert _digest(out) == before
