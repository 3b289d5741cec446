"""Distributed training: real multi-process runs on CPU with gloo, two ranks each.

Three launches run side by side (module fixture), each serving several tests:
- ``ddp``: ``torchrun -m lrdebug run --out DIR examples/ddp_train.py`` (DDP, same LR everywhere);
- ``diverge``: a torchrun script calling ``lrdebug.trace()`` itself, default output directory,
  rank 1 started with twice the LR;
- ``dead``: two processes started by hand, rank 0 exits hard (``os._exit``) mid-run.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pyarrow.dataset as ds
import pytest
from conftest import EXAMPLES, ROOT

import lrdebug
from lrdebug.rules.ranks import rank_findings, rank_list
from lrdebug.tracefile import TraceError, read_trace
from lrdebug.tracefile.writer import check_output_dir, claim_rank_dir, read_run_id

SCRIPTS = Path(__file__).resolve().parent / "dist_scripts"
DDP_STEPS, DIVERGE_STEPS, DEAD_STEPS, DIE_AFTER = 20, 12, 30, 5


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LRDEBUG_", "TORCHELASTIC_"))}
    env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Start the three launches at once (they mostly wait on imports), then collect them."""
    base = tmp_path_factory.mktemp("dist")
    ddp_out, diverge_cwd, dead_out = base / "ddp", base / "diverge", base / "dead"
    diverge_cwd.mkdir()
    procs = {
        "ddp": subprocess.Popen(
            _torchrun("-m", "lrdebug", "run", "--out", str(ddp_out), str(EXAMPLES / "ddp_train.py"),
                      "--steps", str(DDP_STEPS)),
            cwd=base, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
        "diverge": subprocess.Popen(
            _torchrun(str(SCRIPTS / "trace_inside.py"), "--steps", str(DIVERGE_STEPS), "--lr", "0.1",
                      "--lr-on-rank", "1=0.2"),
            cwd=diverge_cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
    }
    dead_env = _env() | {"LRDEBUG_RUN_ID": "dead-rank-test"}
    for rank in (0, 1):
        procs[f"dead{rank}"] = subprocess.Popen(
            [sys.executable, str(SCRIPTS / "dead_rank.py"), "--rank", str(rank), "--store", str(base / "store"),
             "--out", str(dead_out), "--steps", str(DEAD_STEPS), "--die-rank", "0", "--die-after", str(DIE_AFTER)],
            cwd=base, env=dead_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = {}
    try:
        for name, p in procs.items():
            out, err = p.communicate(timeout=240)
            results[name] = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    return {"ddp_out": ddp_out, "diverge_cwd": diverge_cwd, "dead_out": dead_out, **results}


def _steps(df: pd.DataFrame, rank: int) -> list[int]:
    rows = df[(df["rank"] == rank) & (df["event"] == "optimizer_step")]
    return sorted(rows["step"].astype(int).unique().tolist())


# --------------------------------------------------------------------------- DDP under lrdebug run
def test_ddp_two_partitions_merged(runs):
    r = runs["ddp"]
    assert r.returncode == 0, r.stderr
    out = runs["ddp_out"]
    assert sorted(p.name for p in out.iterdir()) == ["_lrdebug_run.json", "rank=0", "rank=1"]
    assert r.stderr.count("lrdebug: trace written to") == 1  # one summary per job: local rank 0's
    assert f"lrdebug: trace written to {out} (ranks 0, 1)" in r.stderr.splitlines()
    df = lrdebug.load(out)
    assert sorted(df["rank"].unique()) == [0, 1]
    trace = read_trace(out)
    for rank in (0, 1):
        assert _steps(df, rank) == list(range(1, DDP_STEPS + 1))
        assert any((out / f"rank={rank}").glob("part-*.parquet"))
        assert trace.status[rank]["state"] == "closed" and trace.status[rank]["complete"] is True
        assert trace.meta[rank]["rank"] == rank and trace.meta[rank]["world_size"] == 2


def test_ddp_ranks_agree_and_no_divergence(runs):
    out = runs["ddp_out"]
    df = lrdebug.load(out)
    steps = df[df["event"] == "optimizer_step"]
    by_rank = steps.pivot_table(index=["optimizer", "group", "step"], columns="rank", values="lr")
    assert by_rank[0].nunique() > 5  # OneCycleLR: the LR really moves
    assert (by_rank[0] == by_rank[1]).all()
    assert rank_findings(read_trace(out)) == []


def test_ddp_report_lists_ranks(runs, capsys):
    pytest.importorskip("lrdebug.report")
    from lrdebug.cli import main

    assert main(["report", str(runs["ddp_out"]), "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ranks"] == [0, 1]
    assert not [f for f in report["findings"] if f["code"] == "rank-divergence"]


def test_parquet_readers_agree_with_load(runs):
    """DuckDB, pandas and pyarrow read the dataset as it is; the rank comes from `rank=<r>/`."""
    duckdb = pytest.importorskip("duckdb")
    out = runs["ddp_out"]
    df = lrdebug.load(out)
    expected = df.groupby("rank").size().to_dict()
    glob = (out / "*" / "*.parquet").as_posix()
    total = duckdb.sql(f"select count(*) from read_parquet('{glob}', hive_partitioning=true)").fetchall()[0][0]
    assert total == len(df)
    per_rank = duckdb.sql(
        f"select rank, count(*) from read_parquet('{glob}', hive_partitioning=true) group by rank").fetchall()
    assert dict(per_rank) == expected
    assert pd.read_parquet(out)["rank"].astype(int).value_counts().to_dict() == expected
    table = ds.dataset(out, format="parquet", partitioning="hive").to_table()
    assert table.num_rows == len(df)
    assert sorted(set(table.column("rank").to_pylist())) == [0, 1]


# --------------------------------------------------------------------------- trace() inside torchrun
def _diverge_trace(runs) -> Path:
    r = runs["diverge"]
    assert r.returncode == 0, r.stderr
    paths = set(re.findall(r"^TRACE \d (.+)$", r.stdout, re.M))
    assert len(paths) == 1, r.stdout  # both ranks chose the same default directory
    return runs["diverge_cwd"] / paths.pop()


def test_trace_inside_torchrun_shares_default_dir(runs):
    out = _diverge_trace(runs)
    assert out.parent == runs["diverge_cwd"] / "lrdebug-traces"
    assert [p.name for p in out.parent.iterdir()] == [out.name]
    assert sorted(p.name for p in out.glob("rank=*")) == ["rank=0", "rank=1"]
    df = lrdebug.load(out)
    for rank in (0, 1):
        assert _steps(df, rank) == list(range(1, DIVERGE_STEPS + 1))


def test_rank_started_with_other_lr_is_named(runs):
    out = _diverge_trace(runs)
    found = [f for f in rank_findings(read_trace(out)) if "learning rate" in f.message]
    assert len(found) == 1
    f = found[0]
    assert (f.code, f.severity, f.optimizer, f.group, f.step) == ("rank-divergence", "error", 0, 0, 1)
    # OneCycleLR starts at max_lr / div_factor (25): 0.1 / 25 on rank 0, 0.2 / 25 on rank 1.
    assert f"rank 0 used {0.1 / 25:.6g}" in f.message and f"rank 1 used {0.2 / 25:.6g}" in f.message
    assert f.count == DIVERGE_STEPS
    assert f.file and f.file.endswith("trace_inside.py")


def test_check_trace_includes_rank_divergence(runs):
    from lrdebug.rules import check_trace

    out = _diverge_trace(runs)
    codes = [f.code for f in check_trace(read_trace(out))]
    assert "rank-divergence" in codes


# --------------------------------------------------------------------------- a rank dies hard
def test_dead_rank_does_not_block_the_other(runs):
    assert runs["dead0"].returncode == 3, runs["dead0"].stderr
    assert runs["dead1"].returncode == 0, runs["dead1"].stderr
    trace = read_trace(runs["dead_out"])
    assert trace.status[1]["state"] == "closed" and trace.status[1]["complete"] is True
    assert trace.status[0]["state"] != "closed"  # killed: no close, but its parts stay
    assert any((runs["dead_out"] / "rank=0").glob("part-*.parquet"))


def test_dead_rank_parts_loaded_and_rank_from_process_group(runs):
    df = lrdebug.load(runs["dead_out"])
    assert _steps(df, 0) == list(range(1, DIE_AFTER + 1))  # steps after the last flush died with it
    assert _steps(df, 1) == list(range(1, DEAD_STEPS + 1))
    # No RANK variable: rank 1 learnt its rank from init_process_group (after the trace started) and
    # kept it after destroy_process_group, when its last part was written.
    meta = read_trace(runs["dead_out"]).meta[1]
    assert (meta["rank"], meta["world_size"]) == (1, 2)


def test_dead_rank_last_step_is_named(runs):
    found = rank_findings(read_trace(runs["dead_out"]))
    assert [f.code for f in found] == ["rank-divergence"]
    f = found[0]
    assert f.step == DIE_AFTER and f.optimizer == 0
    assert "rank 0 (its trace was never closed" in f.message
    assert f"stopped after step {DIE_AFTER}" in f.message and f"rank 1 reached step {DEAD_STEPS}" in f.message


# --------------------------------------------------------------------------- no communication
_LOCAL_DIST_CALLS = {"is_available", "is_initialized", "get_rank", "get_world_size"}


def test_lrdebug_makes_no_collective_or_store_call():
    """lrdebug asks torch.distributed only local questions, so a dead or hung rank cannot block it."""
    used = set()
    for path in (ROOT / "lrdebug").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("torch.distributed"):
                used.add(f"from {node.module} import")
            if isinstance(node, ast.Import):
                used.update(a.name for a in node.names if a.name.startswith("torch.distributed."))
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "dist":
                used.add(node.attr)
            if isinstance(node, ast.Attribute) and node.attr == "distributed":
                used.add("torch.distributed attribute")
    assert used <= _LOCAL_DIST_CALLS, used - _LOCAL_DIST_CALLS
    assert "get_rank" in used  # the scan does see the calls that are there


# --------------------------------------------------------------------------- sharing one directory
def test_ranks_starting_together_share_the_directory(tmp_path):
    """Another rank's directory may exist before its status does; this run's marker vouches for it."""
    root = tmp_path / "trace"
    claim_rank_dir(root / "rank=0", "run-a")  # rank 0 has started: no status written yet
    check_output_dir(root, "run-a", rank=1)  # rank 1 starting now is welcome
    with pytest.raises(TraceError, match="rank=0"):
        claim_rank_dir(root / "rank=0", "run-a")
    with pytest.raises(TraceError, match="another run"):
        check_output_dir(root, "run-b", rank=1)
    with pytest.raises(TraceError, match="another run"):
        claim_rank_dir(root / "rank=1", "run-b")
    with pytest.raises(TraceError, match="never overwritten"):
        check_output_dir(root, "run-a", rank=0)  # this rank written twice


def test_only_one_run_claims_a_directory(tmp_path):
    root = tmp_path / "trace"
    results: dict[int, str] = {}

    def claim(i: int) -> None:
        try:
            claim_rank_dir(root / f"rank={i}", f"run-{i % 2}")
            results[i] = "ok"
        except TraceError:
            results[i] = "refused"

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    owner = read_run_id(root)
    assert owner in ("run-0", "run-1")
    winners = {i for i, r in results.items() if r == "ok"}
    assert winners == {i for i in range(16) if f"run-{i % 2}" == owner}
    assert sorted(p.name for p in root.iterdir()) == sorted(["_lrdebug_run.json"] + [f"rank={i}" for i in winners])


def test_rank_list_compacts_ranges():
    assert rank_list([5, 0, 1, 2, 7, 8]) == "0-2, 5, 7-8"
