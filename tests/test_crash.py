"""A crashed run keeps its trace: every rank, every step up to the failure (issue #16).

Real processes die at chosen moments — killed without warning (SIGKILL, os._exit, abort, a
segfault) early and mid-run, during the save after an exception, during a merge, and one rank of a
torchrun job — and what reads back from the Parquet on disk is checked: the steps that ran minus at
most the bounded tail, no duplicate, no unreadable part, and how each rank ended (status ``ended``).

Every process is started at once by one fixture (they mostly wait on importing torch), then checked.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import lrdebug
from lrdebug.tracefile import read_trace
from lrdebug.tracefile.schema import STATUS_FILE

SCRIPTS = Path(__file__).resolve().parent / "crash_scripts"
LOOP = SCRIPTS / "crash_loop.py"
# A process killed without warning keeps every event older than about one second (the part cadence)
# plus one write; the tests allow BOUND_S, for a loaded machine.
BOUND_S = 2.0
DIE_AFTER = 60  # torchrun: rank 1 dies after this many steps (~0.04 s each)


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LRDEBUG_", "TORCHELASTIC_"))}
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", PYTHONFAULTHANDLER="")
    env.update(extra)
    return env


def _scenarios(base: Path) -> dict[str, tuple[list[str], dict]]:
    """name -> (argv, environment) of each process forked by the zygote (crash_loop.py --zygote)."""
    def loop(name: str, **env: str) -> tuple[list[str], dict]:
        return [str(LOOP), str(base / name)], dict(LOG=str(base / f"{name}.log"), **env)

    def run(name: str, **env: str) -> tuple[list[str], dict]:
        return (["lrdebug", "run", "--out", str(base / name), str(LOOP)],
                dict(LOG=str(base / f"{name}.log"), TRACE="lrdebug run", **env))

    return dict([
        # killed without warning, mid-run: a slow loop and a fast one
        ("sigkill_slow", loop("sigkill_slow", STEPS="80", SLEEP="0.04", DEATH="sigkill")),
        ("exit_fast", loop("exit_fast", SECONDS="3", DEATH="exit")),
        # ... in its first second, before any time-based part
        ("segv_early", loop("segv_early", STEPS="25", SLEEP="0.02", DEATH="segv")),
        # an exception, then SIGTERM while the trace is saved (torchrun tearing a job down)
        ("exc_term_10ms", run("exc_term_10ms", STEPS="12", DEATH="raise", TERM_AFTER="0.01")),
        ("exc_term_in_save", run("exc_term_in_save", STEPS="12", DEATH="raise", HOOK="term_in_close")),
        # a signal at normal exit, in the middle of the save
        ("int_in_save", loop("int_in_save", STEPS="12", HOOK="int_in_close")),
        # during a merge: the final one at close, one in the writer thread, killed between its steps
        ("term_in_final_merge", loop("term_in_final_merge", STEPS="30", SLEEP="0.01", FLUSH_SECONDS="0.05",
                                     HOOK="term_in_final_merge")),
        ("term_in_merge", loop("term_in_merge", STEPS="200", SLEEP="0.01", FLUSH_SECONDS="0.05",
                               MERGE_PARTS="3", HOOK="term_in_merge")),
        ("kill_in_merge_of_merges", loop("kill_in_merge_of_merges", STEPS="200", SLEEP="0.01",
                                         FLUSH_SECONDS="0.05", MERGE_PARTS="2", MERGE_MERGED="2",
                                         HOOK="kill_after_merge_3")),
    ])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The zygote's scenarios and the torchrun job, started together; -> (base, {name: exit})."""
    base = tmp_path_factory.mktemp("crash")
    specs = base / "specs.json"
    specs.write_text(json.dumps(_scenarios(base)))
    zygote = subprocess.Popen([sys.executable, str(LOOP), "--zygote", str(base), str(specs)], cwd=base,
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ddp = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                            "-m", "lrdebug", "run", "--out", str(base / "ddp"), str(SCRIPTS / "ddp_rank_dies.py")],
                           cwd=base, env=_env(LOG=str(base / "ddp.log"), DIE_AFTER=str(DIE_AFTER)),
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        zout, _ = zygote.communicate(timeout=180)
        dout, _ = ddp.communicate(timeout=180)
    finally:
        for p in (zygote, ddp):
            if p.poll() is None:
                p.kill()
    assert zygote.returncode == 0, zout
    results = {name: subprocess.CompletedProcess(name, code, "", (base / f"{name}.out").read_text())
               for name, code in json.loads((base / "results.json").read_text()).items()}
    results["ddp"] = subprocess.CompletedProcess("ddp", ddp.returncode, "", dout)
    return base, results


def _log(path: Path) -> tuple[list[tuple[int, int]], int | None]:
    """(step, time_ns) pairs the loop logged, and the time it died (None: it did not get there)."""
    steps, death = [], None
    for line in path.read_text().splitlines():
        a, b = line.split()
        if a == "death":
            death = int(b)
        else:
            steps.append((int(a), int(b)))
    return steps, death


def _read(out: Path) -> tuple[object, dict[int, list[int]]]:
    """The trace, and per rank its optimizer steps in seq order; fails on an unreadable part or a
    duplicated seq."""
    trace = read_trace(out)
    assert trace.skipped == []
    df = lrdebug.load(out)
    assert not df.duplicated(["rank", "seq"]).any()
    steps = {}
    for rank, rows in df[df["event"] == "optimizer_step"].groupby("rank"):
        steps[int(rank)] = [int(s) for s in rows.sort_values("seq")["step"]]
    for rank in trace.ranks:  # every part of the rank is a complete Parquet file
        for part in (out / f"rank={rank}").glob("part-*.parquet"):
            assert pq.ParquetFile(part).metadata.num_rows > 0
    return trace, steps


def _assert_kept_all_but_the_tail(steps: list[int], log: Path) -> None:
    logged, death = _log(log)
    assert death is not None
    ran = logged[-1][0]
    older = [s for s, t in logged if t <= death - BOUND_S * 1e9]
    assert steps == list(range(1, len(steps) + 1))  # from the first step on, none twice, none missing
    assert len(steps) <= ran
    assert len(steps) >= max(older, default=1), f"kept {len(steps)} of {ran} steps; {max(older, default=1)} were older than {BOUND_S} s"


@pytest.mark.parametrize("name", ["sigkill_slow", "exit_fast"])
def test_killed_without_warning_loses_at_most_the_last_second(runs, name):
    base, results = runs
    r = results[name]
    assert r.returncode == {"sigkill_slow": -signal.SIGKILL, "exit_fast": 7}[name], r.stderr[-2000:]
    trace, steps = _read(base / name)
    _assert_kept_all_but_the_tail(steps[0], base / f"{name}.log")
    status = trace.status[0]
    assert status["state"] == "running" and "ended" not in status  # ended without closing


def test_killed_in_its_first_second_keeps_its_first_steps(runs):
    """25 steps of 20 ms, then a segfault: before any time-based part; the first step wakes the writer."""
    base, results = runs
    assert results["segv_early"].returncode == -signal.SIGSEGV
    trace, steps = _read(base / "segv_early")
    assert 1 <= len(steps[0]) <= 25 and steps[0] == list(range(1, len(steps[0]) + 1))
    assert trace.status[0]["state"] == "running"


@pytest.mark.parametrize("name", ["exc_term_10ms", "exc_term_in_save"])
def test_sigterm_during_the_save_after_an_exception(runs, name):
    """Repro of issue #16: an exception, then SIGTERM within milliseconds: the save finishes, then
    the process dies by SIGTERM."""
    base, results = runs
    r = results[name]
    assert r.returncode == -signal.SIGTERM, r.stderr[-2000:]
    trace, steps = _read(base / name)
    assert steps[0] == list(range(1, 13))
    status = trace.status[0]
    assert status["state"] == "closed"
    assert status["ended"] == "exception: RuntimeError"
    assert f"lrdebug: trace written to {base / name}" in r.stderr


def test_sigint_during_the_save_at_normal_exit(runs):
    """Python's own SIGINT handler would raise KeyboardInterrupt inside the save: it is held until
    the save is done, then raised."""
    base, results = runs
    r = results["int_in_save"]
    assert r.returncode == 1, r.stderr[-2000:]  # the zygote's child: KeyboardInterrupt printed, status 1
    assert "KeyboardInterrupt" in r.stderr
    trace, steps = _read(base / "int_in_save")
    assert steps[0] == list(range(1, 13))
    assert trace.status[0]["state"] == "closed" and trace.status[0]["ended"] == "normally"


def test_sigterm_during_the_final_merge(runs):
    base, results = runs
    r = results["term_in_final_merge"]
    assert r.returncode == -signal.SIGTERM, r.stderr[-2000:]
    trace, steps = _read(base / "term_in_final_merge")
    assert steps[0] == list(range(1, 31))
    assert trace.status[0]["state"] == "closed" and trace.status[0]["ended"] == "normally"
    assert trace.status[0]["parts"] >= 3  # there were small parts to merge


def test_sigterm_during_a_merge_in_the_writer_thread(runs):
    """The handler closes the trace: it waits for the merge, writes the rest, then the process dies."""
    base, results = runs
    r = results["term_in_merge"]
    assert r.returncode == -signal.SIGTERM, r.stderr[-2000:]
    trace, steps = _read(base / "term_in_merge")
    logged, death = _log(base / "term_in_merge.log")
    assert death is None  # it did not reach the end of its loop
    assert steps[0] == list(range(1, logged[-1][0] + 1))  # every step that ran: it closed
    status = trace.status[0]
    assert status["state"] == "closed" and status["ended"] == "signal: SIGTERM"
    assert status["reason"] == "terminated by SIGTERM"


def test_killed_between_writing_a_merge_and_deleting_its_parts(runs):
    """Both the merged file and the parts it replaces are on disk: each row is read once."""
    base, results = runs
    name = "kill_in_merge_of_merges"
    assert results[name].returncode == -signal.SIGKILL, results[name].stderr[-2000:]
    files = sorted(p.name for p in (base / name / "rank=0").glob("part-*.parquet"))
    # the merge of merged files (parts 0-3) was written; the merged files it replaces are still there
    assert {"part-000000-000003.parquet", "part-000000-000001.parquet", "part-000002-000003.parquet"} <= set(files)
    trace, steps = _read(base / name)
    assert steps[0] and steps[0] == list(range(1, len(steps[0]) + 1))


def test_torchrun_one_rank_dies(runs):
    """Rank 1 os._exit()s; rank 0 fails in backward or is torn down by torchrun. Both ranks' traces
    are there, and the report tells the story."""
    base, results = runs
    r = results["ddp"]
    assert r.returncode != 0
    trace, steps = _read(base / "ddp")
    assert set(steps) == {0, 1}
    _assert_kept_all_but_the_tail(steps[1], base / "ddp.log.1")
    logged0, _ = _log(base / "ddp.log.0")
    assert steps[0] == list(range(1, logged0[-1][0] + 1))  # rank 0 saved every step it ran
    assert len(steps[0]) >= DIE_AFTER
    s0, s1 = trace.status[0], trace.status.get(1, {})
    assert s0["state"] == "closed" and s0["ended"] in ("exception: RuntimeError", "signal: SIGTERM")
    assert s1.get("state") == "running" and "ended" not in s1
    assert f"lrdebug: trace written to {base / 'ddp'}" in r.stderr

    d = lrdebug.Report(base / "ddp").to_dict()
    ending = d["trace"]["ending"]
    assert f"rank 1 ended without closing its trace (killed, crashed, or still running); its record stops at step {len(steps[1])}" in ending
    assert any(line.startswith(f"rank 0 ended by {s0['ended']}; its record stops at step {len(steps[0])}") for line in ending)
    assert any(line.startswith("rank 1 stopped first") for line in ending)
    by_rank = {s["rank"]: s for s in d["trace"]["status"]}
    assert by_rank[0]["ended"] == s0["ended"] and by_rank[1]["ended"] is None
    assert by_rank[1]["last_step"] == len(steps[1])


# ------------------------------------------------------------------------------ in-process
def test_status_says_how_the_trace_ended(tmp_path):
    import torch

    p = torch.nn.Parameter(torch.zeros(()))
    opt = torch.optim.SGD([p], lr=0.1)
    with lrdebug.trace(opt, out=tmp_path / "ok", summary=False, ignore=["grads-not-cleared"]):
        p.grad = torch.ones(())
        opt.step()
    with pytest.raises(ValueError):
        with lrdebug.trace(opt, out=tmp_path / "exc", summary=False, ignore=["grads-not-cleared"]):
            opt.step()
            raise ValueError("boom")
    with pytest.raises(SystemExit):
        with lrdebug.trace(opt, out=tmp_path / "exit0", summary=False, ignore=["grads-not-cleared"]):
            opt.step()
            sys.exit(0)
    ended = {name: json.loads((tmp_path / name / "rank=0" / STATUS_FILE).read_text())["ended"]
             for name in ("ok", "exc", "exit0")}
    assert ended == {"ok": "normally", "exc": "exception: ValueError", "exit0": "normally"}
    assert lrdebug.Report(tmp_path / "exc").to_dict()["trace"]["ending"] == [
        "rank 0 ended by exception: ValueError; its record stops at step 1"]
    assert lrdebug.Report(tmp_path / "ok").to_dict()["trace"]["ending"] == []


def test_status_of_an_older_trace_without_ended_reads(tmp_path):
    import torch

    p = torch.nn.Parameter(torch.zeros(()))
    opt = torch.optim.SGD([p], lr=0.1)
    with lrdebug.trace(opt, out=tmp_path / "t", summary=False, ignore=["grads-not-cleared"]):
        p.grad = torch.ones(())
        opt.step()
    status_path = tmp_path / "t" / "rank=0" / STATUS_FILE
    status = json.loads(status_path.read_text())
    del status["ended"]
    status_path.write_text(json.dumps(status))
    d = lrdebug.Report(tmp_path / "t").to_dict()
    assert d["trace"]["complete"] and d["trace"]["ending"] == [] and d["trace"]["status"][0]["ended"] is None


def test_a_long_slow_run_leaves_few_files(tmp_path, monkeypatch):
    """A part per flush; small parts merged by MERGE_PARTS, small merged files again by MERGE_MERGED
    (here 4 and 4, for speed): 200 one-row parts leave about 200/16 files, each row read once."""
    from lrdebug.tracefile import writer as W

    monkeypatch.setattr(W, "MERGE_PARTS", 4)
    monkeypatch.setattr(W, "MERGE_MERGED", 4)
    seq = iter(range(10**6))

    def drain():
        i = next(seq)
        return {"seq": [i], "event": ["optimizer_step"], "step": [i + 1], "optimizer": [0], "group": [0],
                "lr": [0.1]}, 1

    w = W.PartWriter(tmp_path / "t", drain, lambda: {"schema_version": "1.0"}, lambda: 0, "run", print,
                     interval_s=3600)
    for _ in range(200):
        w.flush()
    files = sorted((tmp_path / "t" / "rank=0").glob("part-*.parquet"))
    assert len(files) <= 200 // 16 + 4 + 4, [f.name for f in files]
    w.close(None, [])
    files = sorted((tmp_path / "t" / "rank=0").glob("part-*.parquet"))
    assert len(files) <= 200 // 16 + 1
    df = lrdebug.load(tmp_path / "t")
    assert df["seq"].tolist() == list(range(201))  # and the close's own part
