"""How findings reach the user: warnings at their line, strict errors, ignore, -W filters, the report."""

from __future__ import annotations

import json
import runpy
import traceback
import warnings
from pathlib import Path

import pytest
import torch
from conftest import run_lrdebug, run_python

import lrdebug
from lrdebug import cli

GALLERY = Path(__file__).parent / "gallery"


def _marked_line(script: Path, code: str) -> int:
    return next(n for n, text in enumerate(script.read_text().splitlines(), 1) if f"expect: {code}" in text)


def _user_frames(tb, script: Path) -> list[int]:
    return [f.lineno for f in traceback.extract_tb(tb) if Path(f.filename) == script]


def test_python_W_error_turns_a_finding_into_an_exception_at_the_users_line(tmp_path):
    script = GALLERY / "api_trace_block.py"
    proc = run_python("-W", "error::lrdebug.LRDebugWarning", str(script), str(tmp_path / "trace"), cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "training finished" not in proc.stdout
    tb = proc.stderr[proc.stderr.index("Traceback"):]
    assert f'File "{script}", line {_marked_line(script, "scheduler-before-optimizer")}' in tb
    assert "lrdebug.LRDebugWarning: [scheduler-before-optimizer]" in tb
    # The trace is still closed and readable, with the finding.
    assert [f.code for f in lrdebug.findings(tmp_path / "trace")] == ["scheduler-before-optimizer"]


def test_run_strict_raises_lrdebugerror_at_the_users_line(tmp_path):
    script = GALLERY / "bug_scheduler_multiple_steps.py"
    proc = run_lrdebug("run", "--strict", "--out", str(tmp_path / "t"), str(script), cwd=tmp_path)
    assert proc.returncode == 1
    line = _marked_line(script, "scheduler-multiple-steps")
    assert f'File "{script}", line {line}' in proc.stderr
    assert "LRDebugError: [scheduler-multiple-steps] scheduler 0 (LambdaLR) stepped 2 times" in proc.stderr


def test_run_ignore_silences_the_code(tmp_path):
    script = GALLERY / "bug_scheduler_multiple_steps.py"
    proc = run_lrdebug("run", "--ignore", "scheduler-multiple-steps", "--out", str(tmp_path / "t"), str(script),
                       cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "LRDebugWarning" not in proc.stderr and "scheduler-multiple-steps" not in proc.stderr
    assert "lrdebug: no findings" in proc.stderr


def test_strict_in_process_raises_with_the_findings_message(tmp_path):
    script = GALLERY / "bug_grads_not_cleared.py"
    with pytest.raises(lrdebug.LRDebugError) as info:
        with lrdebug.trace(out=tmp_path / "t", strict=True, summary=False):
            runpy.run_path(str(script), run_name="__main__")
    assert str(info.value).startswith("[grads-not-cleared] SGD stepped at optimizer step 2")
    assert _user_frames(info.tb, script)[-1] == _marked_line(script, "grads-not-cleared")


def test_a_warnings_filter_raises_at_the_users_line(tmp_path):
    script = GALLERY / "bug_get_lr_called.py"
    with warnings.catch_warnings():
        warnings.simplefilter("error", lrdebug.LRDebugWarning)
        with pytest.raises(lrdebug.LRDebugWarning) as info:
            with lrdebug.trace(out=tmp_path / "t", summary=False):
                runpy.run_path(str(script), run_name="__main__")
    assert _user_frames(info.tb, script)[-1] == _marked_line(script, "get-lr-called")


def test_ignore_in_process_keeps_the_code_out_of_findings_and_warnings(tmp_path):
    script = GALLERY / "bug_scheduler_past_horizon.py"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with lrdebug.trace(out=tmp_path / "t", ignore=["scheduler-past-horizon"], summary=False) as t:
            runpy.run_path(str(script), run_name="__main__")
    assert t.findings == []
    assert not [w for w in caught if issubclass(w.category, lrdebug.LRDebugWarning)]


def test_a_handwritten_scheduler_passed_explicitly_is_recorded_and_clean(tmp_path):
    class Warmup:
        def __init__(self, optimizer, steps):
            self.optimizer, self.steps, self.n = optimizer, steps, 0

        def step(self):
            self.n += 1
            for g in self.optimizer.param_groups:
                g["lr"] = 0.1 * min(1.0, self.n / self.steps)

    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scheduler = Warmup(optimizer, 5)
    with lrdebug.trace(optimizer, scheduler, out=tmp_path / "t", summary=False) as t:
        for _ in range(12):
            optimizer.zero_grad()
            model(torch.randn(8, 4)).sum().backward()
            optimizer.step()
            scheduler.step()
    assert t.findings == []
    df = lrdebug.load(tmp_path / "t")
    assert (df["event"] == "scheduler_step").sum() == 12


def test_report_json_lists_findings_with_every_field(tmp_path, capsys):
    script = GALLERY / "bug_lr_nonfinite_or_negative.py"
    with warnings.catch_warnings(record=True), lrdebug.trace(out=tmp_path / "t", summary=False):
        runpy.run_path(str(script), run_name="__main__")
    capsys.readouterr()
    status = cli.main(["report", str(tmp_path / "t"), "--format", "json", "--fail-on", "error"])
    report = json.loads(capsys.readouterr().out)
    assert status == 1
    (finding,) = report["findings"]
    assert set(finding) >= {"code", "severity", "message", "optimizer", "scheduler", "group", "step", "file",
                            "line", "count"}
    assert (finding["code"], finding["severity"], finding["line"], finding["step"]) == (
        "lr-nonfinite-or-negative", "error", _marked_line(script, "lr-nonfinite-or-negative"), 14)
