"""The end-of-run summary (``lrdebug/record/summary.py``): one block per job, printed once, covering
every rank, with counts that agree with ``lrdebug report``, messages wrapped and never cut.

Real launches, run side by side (module fixture): ``torchrun -m lrdebug run``, ``torchrun --no-python
lrdebug run`` and a Lightning-like job (rank 0 starts rank 1 as a subprocess and ends first), each
on 2 CPU ranks with gloo. Then the waiting and the layout on hand-made traces.
"""

from __future__ import annotations

import collections
import functools
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import run_lrdebug

from lrdebug.record import summary
from lrdebug.tracefile.schema import STATUS_FILE

SCRIPTS = Path(__file__).resolve().parent / "dist_scripts"
GOLDEN = Path(__file__).resolve().parent / "golden"
LRDEBUG = str(Path(sys.executable).with_name("lrdebug"))


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LRDEBUG_", "TORCHELASTIC_"))}
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "COLUMNS"):
        env.pop(k, None)
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **extra)
    return env


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    base = tmp_path_factory.mktemp("endrun")
    script = str(SCRIPTS / "findings.py")
    cmds = {
        "module": _torchrun("-m", "lrdebug", "run", "--out", "module", script, "--rank1-extra"),
        "no_python": _torchrun("--no-python", LRDEBUG, "run", "--out", "no_python", script, "--rank1-extra"),
        # a console script on PATH, run by `lrdebug run` itself: the ranks are its hooked children
        "console": [LRDEBUG, "run", "--out", "console", "torchrun", "--standalone", "--nproc-per-node", "2",
                    script, "--rank1-extra"],
        "lightning": [LRDEBUG, "run", "--out", "lightning", str(SCRIPTS / "lightning_like.py"),
                      "--rank1-delay", "1.5"],
    }
    env = _env(PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    procs = {name: subprocess.Popen(cmd, cwd=base, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True) for name, cmd in cmds.items()}
    results = {}
    try:
        for name, p in procs.items():
            out, err = p.communicate(timeout=300)
            results[name] = (subprocess.CompletedProcess(p.args, p.returncode, out, err), base / name)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    return results


def _summary_lines(stderr: str) -> list[str]:
    """The summary block: from its first line to the end of stderr's lrdebug lines."""
    lines = stderr.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("lrdebug: trace written to"))
    block = []
    for line in lines[start:]:
        if not (line.startswith("lrdebug: ") or line.startswith("  ")):
            break
        block.append(line)
    return block


@functools.lru_cache(maxsize=None)
def _report(trace: Path) -> dict:
    """``lrdebug report --format json`` of a trace of the module fixture (asked by several tests)."""
    proc = run_lrdebug("report", str(trace), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("name", ["module", "no_python", "console", "lightning"])
def test_one_summary_per_job_covering_every_rank(jobs, name):
    proc, trace = jobs[name]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("lrdebug: trace written to") == 1, proc.stderr
    assert f"lrdebug: trace written to {trace.name} (ranks 0, 1)" in proc.stderr.splitlines(), proc.stderr
    assert "processes started by the target" not in proc.stderr  # siblings are no children
    assert "not waited for" not in proc.stderr  # every rank closed within the wait
    for line in proc.stderr.splitlines():  # no two ranks' lines on one line
        assert line.count("lrdebug:") <= 1, line


@pytest.mark.parametrize("name", ["module", "no_python", "console", "lightning"])
def test_counts_match_the_report(jobs, name):
    proc, trace = jobs[name]
    report = _report(trace)
    by_severity = collections.Counter(f["severity"] for f in report["findings"])
    assert by_severity["warning"] >= 1 and by_severity["error"] == 1  # rank-divergence: rank 1 stepped twice
    block = "\n".join(_summary_lines(proc.stderr))
    n = sum(by_severity.values())
    parts = [f"{by_severity[s]} {s}{'' if by_severity[s] == 1 else 's'}" for s in ("error", "warning", "info")
             if by_severity[s]]
    assert f"lrdebug: {n} finding{'s' if n != 1 else ''} over ranks 0, 1: {', '.join(parts)}" in block, block
    for f in report["findings"]:
        assert f"{f['severity']:7} {f['code']}" in block


def test_messages_are_wrapped_never_cut(jobs):
    proc, trace = jobs["module"]
    block = _summary_lines(proc.stderr)
    assert all(len(line) <= 100 for line in block), block
    flat = " ".join(" ".join(block).split())
    for f in _report(trace)["findings"]:
        assert " ".join(f["message"].split()) in flat, f["message"]


def test_a_finding_of_one_rank_says_so(jobs):
    proc, _ = jobs["module"]
    block = " ".join(" ".join(_summary_lines(proc.stderr)).split())
    assert re.search(r"scheduler-multiple-steps at \S+findings\.py:\d+ \(x1, rank 1 only\)", block), block


# --------------------------------------------------------------------------- waiting, on hand-made traces
def _status(rank_dir: Path, state: str = "closed", findings=(), world: int = 2, **extra) -> None:
    rank_dir.mkdir(parents=True, exist_ok=True)
    status = {"schema_version": "1.0", "run_id": "x", "parts": 0, "rows": 0, "state": state,
              "complete": state == "closed", "meta": {"world_size": world}, "findings": list(findings), **extra}
    tmp = rank_dir / ".tmp"
    tmp.write_text(json.dumps(status))
    os.replace(tmp, rank_dir / STATUS_FILE)


F_WARN = {"code": "scheduler-multiple-steps", "severity": "warning", "message": "stepped twice", "file": "t.py",
          "line": 3, "count": 2, "optimizer": 0, "scheduler": 0, "group": None, "step": 4}
F_INFO = {"code": "lr-changed-outside-scheduler", "severity": "info", "message": "hand-written", "file": "t.py",
          "line": 9, "count": 1, "optimizer": 0, "scheduler": None, "group": 0, "step": 2}


def test_waits_for_a_rank_that_closes_late(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    _status(tmp_path / "rank=0", findings=[F_INFO])
    _status(tmp_path / "rank=1", state="running")

    def close_later():
        time.sleep(0.4)
        _status(tmp_path / "rank=1", findings=[F_WARN, F_INFO])

    t = threading.Thread(target=close_later)
    t.start()
    text = summary.summary_text(tmp_path, wait_s=20, columns=100)
    t.join()
    assert "lrdebug: 2 findings over ranks 0, 1: 1 warning, 1 info" in text, text
    assert "(x2, rank 1 only)" in text and "not waited for" not in text


def test_waits_for_an_expected_rank_with_no_partition_yet(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    _status(tmp_path / "rank=0", world=2)
    threading.Timer(0.3, lambda: _status(tmp_path / "rank=1", findings=[F_WARN])).start()
    text = summary.summary_text(tmp_path, wait_s=20, columns=100)
    assert "(ranks 0, 1)" in text and "1 finding over ranks 0, 1: 1 warning" in text, text


def test_names_the_ranks_it_did_not_wait_for(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    _status(tmp_path / "rank=0", findings=[F_INFO], world=3)
    _status(tmp_path / "rank=1", state="running", world=3)
    t0 = time.monotonic()
    text = summary.summary_text(tmp_path, wait_s=0.3, columns=100)
    assert time.monotonic() - t0 < 5
    flat = " ".join(text.split())
    assert "not waited for after 0 s, so not counted: rank 2 (no partition yet), rank 1 (still running);" in flat
    assert f"once they end: lrdebug report {tmp_path}" in flat


@pytest.mark.parametrize("env,prints", [({}, True), ({"RANK": "0", "LOCAL_RANK": "0"}, True),
                                        ({"RANK": "1", "LOCAL_RANK": "1"}, False),
                                        ({"RANK": "2", "LOCAL_RANK": "0"}, True), ({"RANK": "3"}, False)])
def test_only_local_rank_zero_prints(monkeypatch, env, prints):
    for k in ("RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert summary.prints_here() is prints


# --------------------------------------------------------------------------- layout (golden)
def test_layout_golden(tmp_path):
    long = ("scheduler 0 (CosineAnnealingLR) stepped at train.py:27 before optimizer 0 (SGD) ever stepped, so the "
            "schedule's first value is skipped: the first optimizer step will use lr=0.0999998, the schedule's "
            "second value, and every later step is one position ahead (warmup loses a step, decays come a step "
            "early). Call optimizer.step() before scheduler.step() in each iteration.")
    findings = [dict(F_INFO, ranks=[0, 1]), dict(F_WARN, ranks=[1]),
                dict(F_WARN, code="scheduler-before-optimizer", message=long, line=27, count=1, ranks=[0, 1]),
                {"code": "rank-divergence", "severity": "error", "message": "ranks disagree at step 4.",
                 "file": "t.py", "line": 5, "count": 3, "ranks": [0, 1]}]
    statuses = {0: {"state": "closed", "complete": True}, 1: {"state": "closed", "complete": False,
                                                              "reason": "interrupted by KeyboardInterrupt"}}
    text = summary.render(Path("runs/job"), statuses, findings, missing=[2], running=[], waited_s=10.2,
                          columns=100)
    expected = (GOLDEN / "end_of_run_summary.txt").read_text()
    assert text + "\n" == expected
    narrow = summary.render(Path("runs/job"), statuses, findings, columns=60)
    assert all(len(line) <= 60 for line in narrow.splitlines())
    assert " ".join(long.split()) in " ".join(narrow.split())  # wrapped, not cut
