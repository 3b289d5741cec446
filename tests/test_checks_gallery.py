"""The gallery: realistic training scripts, each with one misuse (bug_*) or none (good_*).

Each script marks the line a finding must point at with ``# expect: CODE [step=N]``. The scripts run
in this process under ``lrdebug.trace()`` (one run each, shared by the tests of this module); the
live findings, the LRDebugWarnings and the findings recomputed offline from the written trace are
all checked against the markers.
"""

from __future__ import annotations

import re
import runpy
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

import lrdebug
from lrdebug.rules import CODES

GALLERY = Path(__file__).parent / "gallery"
SCRIPTS = sorted(p for p in GALLERY.glob("*.py") if p.name.startswith(("bug_", "good_")))
MARKER = re.compile(r"expect:\s*([a-z-]+)(?:\s+step=(\d+))?")


@dataclass
class Expect:
    code: str
    line: int
    step: int | None


@dataclass
class Run:
    script: Path
    expects: list[Expect]
    findings: list = field(default_factory=list)
    warned: list = field(default_factory=list)
    offline: list = field(default_factory=list)
    stored: list = field(default_factory=list)


def _markers(script: Path) -> list[Expect]:
    out = []
    for n, text in enumerate(script.read_text().splitlines(), start=1):
        if "#" in text:
            for code, step in MARKER.findall(text.split("#", 1)[1]):
                out.append(Expect(code, n, int(step) if step else None))
    return out


def _fused_cpu_ok() -> bool:
    try:
        p = torch.nn.Parameter(torch.zeros(2))
        p.grad = torch.ones(2)
        torch.optim.Adam([p], lr=0.1, fused=True).step()
        return True
    except (RuntimeError, TypeError):
        return False


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Run]:
    base = tmp_path_factory.mktemp("gallery")
    out = {}
    for script in SCRIPTS:
        if "fused" in script.name and not _fused_cpu_ok():
            continue
        run = Run(script, _markers(script))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with lrdebug.trace(out=base / script.stem, summary=False) as t:
                runpy.run_path(str(script), run_name="__main__")
        run.findings = t.findings
        run.warned = [w for w in caught if issubclass(w.category, lrdebug.LRDebugWarning)]
        run.offline = lrdebug.findings(base / script.stem)
        from lrdebug.tracefile import read_trace

        run.stored = read_trace(base / script.stem, columns=["seq"]).status[0].get("findings")
        out[script.name] = run
    return out


def _get(runs, name: str) -> Run:
    if name not in runs:
        pytest.skip("torch.optim.Adam(fused=True) does not run on this CPU build")
    return runs[name]


def test_every_code_has_a_bug_script():
    covered = {e.code for s in SCRIPTS if s.name.startswith("bug_") for e in _markers(s) if CODES[e.code] != "info"}
    assert covered == {c for c, severity in CODES.items() if severity != "info"} - {"rank-divergence"}
    infos = {e.code for s in SCRIPTS for e in _markers(s) if CODES[e.code] == "info"}
    assert infos == {"lr-changed-outside-scheduler", "step-skipped", "schedule-not-completed"}


@pytest.mark.parametrize("name", [s.name for s in SCRIPTS])
def test_findings_match_the_markers(runs, name):
    run = _get(runs, name)
    if name.startswith("good_"):
        assert not [e for e in run.expects if CODES[e.code] != "info"], "a correct loop expects no warning"
    loud = {(f.code, f.line) for f in run.findings if f.severity in ("warning", "error")}
    expected_loud = {(e.code, e.line) for e in run.expects if CODES[e.code] != "info"}
    assert loud == expected_loud, [f.message for f in run.findings]
    for e in run.expects:
        match = [f for f in run.findings if f.code == e.code and f.line == e.line]
        assert len(match) == 1, (e, run.findings)
        f = match[0]
        assert Path(f.file) == run.script
        assert f.severity == CODES[e.code]
        if e.step is not None:
            assert f.step == e.step, f
        assert f"{run.script.name}:{f.line}" in f.message, f.message


@pytest.mark.parametrize("name", [s.name for s in SCRIPTS if s.name.startswith("bug_")])
def test_each_warning_is_raised_once_at_the_users_line(runs, name):
    run = _get(runs, name)
    expected = {(f.code, f.line) for f in run.findings
                if f.severity in ("warning", "error")}  # end-of-run findings warn when the block closes
    got = [(str(w.message).split("]")[0].lstrip("["), w.lineno) for w in run.warned]
    assert sorted(got) == sorted(expected)
    assert all(Path(w.filename) == run.script for w in run.warned)


@pytest.mark.parametrize("name", [s.name for s in SCRIPTS])
def test_live_and_offline_findings_agree(runs, name):
    run = _get(runs, name)
    live = [f.to_dict() for f in run.findings]
    assert [f.to_dict() for f in run.offline] == live
    assert run.stored == live


def test_counts_say_how_often(runs):
    # 3 epochs x 8 batches: the warning fires at the epoch-end step of each epoch.
    assert _get(runs, "bug_scheduler_multiple_steps.py").findings[0].count == 3
    multiple = _get(runs, "bug_scheduler_multiple_steps.py").findings[0].message
    assert "stepped 2 times between optimizer steps 8 and 9" in multiple
    # 2 of 24 steps overflowed; the scheduler kept stepping on those iterations.
    skipped = _get(runs, "good_amp_skipped_steps.py").findings[0]
    assert skipped.count == 2 and "2 of 24 steps were skipped" in skipped.message
    assert "advanced 2 time(s)" in skipped.message
    # 4 micro-batches per step: stepped 4 times between steps (after the first step).
    accumulation = _get(runs, "bug_accumulation_sched_per_microbatch.py")
    assert "stepped 4 times between optimizer steps 1 and 2" in [
        f for f in accumulation.findings if f.code == "scheduler-multiple-steps"][0].message
