"""``lrdebug run`` records the Python processes the target starts (``lrdebug.record.child``).

Two real runs: a script that starts children every way training code does (subprocess,
multiprocessing spawn / forkserver / fork, a plain Python with and without the variable, and a
Python without lrdebug), and ``lrdebug run -m torch.distributed.run --nproc-per-node 2`` wrapping
torchrun itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import EXAMPLES, run_lrdebug

import lrdebug

SCRIPT = Path(__file__).resolve().parent / "child_scripts" / "start_children.py"
USER_SITECUSTOMIZE = "import os\nos.environ['USER_SITE_RAN'] = 'yes'\n"


@pytest.fixture(scope="module")
def children(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("children")
    (tmp / "usersite").mkdir()
    (tmp / "usersite" / "sitecustomize.py").write_text(USER_SITECUSTOMIZE)
    proc = run_lrdebug("run", "--out", "trace", str(SCRIPT), cwd=tmp, timeout=600,
                       env={"PYTHONPATH": str(tmp / "usersite"), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("REPORT "))
    return proc, json.loads(line[len("REPORT "):]), tmp / "trace"


def step_lrs(path) -> list[float]:
    df = lrdebug.load(path)
    return df[df.event == "optimizer_step"].lr.tolist()


def test_every_python_child_that_trains_records_its_own_trace(children):
    _, report, trace = children
    kids = report["children"]
    assert {k: v.get("exitcode", 0) for k, v in kids.items()} == dict.fromkeys(kids, 0)
    # Not distributed: each child is a run of its own, in child-<pid>/, beside the parent's rank=0.
    assert sorted(p.name for p in trace.iterdir() if p.is_dir()) == sorted(
        ["rank=0"] + [f"child-{k['pid']}" for k in kids.values()])
    assert step_lrs(trace) == [0.1, 0.1, 0.05]
    for name, kid in kids.items():
        lr = kid["lr"]
        assert step_lrs(trace / f"child-{kid['pid']}") == [lr, lr, lr / 2, lr / 2], name


def test_children_that_cannot_or_need_not_record_run_as_they_would(children):
    _, report, _ = children
    modules, path, user_site = json.loads(report["plain"]["stdout"])
    assert report["hook_path"] in path  # the hook was offered ...
    assert modules == ["_lrdebug_child_hook"]  # ... waits for torch, which never came: lrdebug not imported
    assert user_site == "yes"  # the user's own sitecustomize still ran
    assert report["plain"]["stderr"] == ""
    modules, path, user_site = json.loads(report["unhooked"]["stdout"])
    assert (modules, user_site) == ([], "yes")  # without LRDEBUG_CHILD the hook does nothing at all
    if report["no_lrdebug"] is None:
        pytest.skip("no base interpreter beside the virtual environment")
    modules, path, user_site = json.loads(report["no_lrdebug"]["stdout"])
    assert report["hook_path"] in path
    assert (modules, user_site, report["no_lrdebug"]["stderr"]) == ([], "yes", "")


def test_nothing_is_left_behind(children):
    proc, report, _ = children
    assert not Path(report["hook_path"]).exists()
    assert "lrdebug: processes started by the target recorded traces of their own: child-" in proc.stderr
    assert proc.stderr.count("lrdebug: trace written to") == 1  # one summary for the whole run


@pytest.fixture(scope="module")
def torchrun(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("torchrun")
    proc = run_lrdebug("run", "--out", "trace", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                       "2", str(EXAMPLES / "ddp_train.py"), "--steps", "6", cwd=tmp, timeout=600,
                       env={"OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc, tmp / "trace"


def test_wrapping_torchrun_records_each_worker_as_its_rank(torchrun):
    proc, trace = torchrun
    df = lrdebug.load(trace)
    steps = df[df.event == "optimizer_step"]
    assert sorted(steps["rank"].unique()) == [0, 1]
    per_rank = {r: rows.lr.tolist() for r, rows in steps.groupby("rank")}
    assert len(per_rank[0]) == 6 and per_rank[0] == per_rank[1]
    # The launcher itself trained nothing: it left no partition to collide with worker 0's.
    assert sorted(p.name for p in trace.iterdir() if p.is_dir()) == ["rank=0", "rank=1"]
    assert "cannot write" not in proc.stderr
    assert "lrdebug: trace written to trace (ranks 0, 1)" in proc.stderr.splitlines()
    assert proc.stderr.count("lrdebug: trace written to") == 1
