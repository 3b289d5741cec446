"""Part summaries (issue 20): each part's footer carries the reduction of its rows, and a report made
from the footers is the report made from the rows, to the last figure; parts without a usable summary
are read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import make_big_trace as make

from lrdebug.cli import main
from lrdebug.report import crossrank, scan
from lrdebug.tracefile.summary import SUMMARY_KEY, load_summary, summarize



@pytest.fixture(scope="module")
def long_run(tmp_path_factory) -> Path:
    """300,000 steps in 150 parts: long enough that the footers say everything a scan would."""
    return make(tmp_path_factory.mktemp("summaries") / "long", "--rows", "300000", "--part-events", "6000")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> Path:
    return make(tmp_path_factory.mktemp("summaries") / "ranks", "--ranks", "4", "--rows", "2000", "--groups", "2",
                "--diverge", "1:300", "--short", "2:900", "--slow", "3:2")


def report(path: Path, capsys, monkeypatch, summaries: bool, fmt: str = "json") -> str:
    monkeypatch.setenv("LRDEBUG_SUMMARIES", "1" if summaries else "0")
    args = ["report", str(path), "--format", fmt] if fmt != "text" else ["report", str(path), "--width", "100"]
    assert main(args) == 0
    return capsys.readouterr().out


def no_rows_read(monkeypatch) -> None:
    def refuse(*a, **k):
        raise AssertionError("a part's rows were read")

    monkeypatch.setattr(scan, "read_part", refuse)


def test_report_from_footers_equals_report_from_rows(long_run, capsys, monkeypatch):
    rows_json = report(long_run, capsys, monkeypatch, summaries=False)
    rows_text = report(long_run, capsys, monkeypatch, summaries=False, fmt="text")
    no_rows_read(monkeypatch)
    assert report(long_run, capsys, monkeypatch, summaries=True) == rows_json
    assert report(long_run, capsys, monkeypatch, summaries=True, fmt="text") == rows_text  # curves, timing
    d = json.loads(rows_json)
    assert d["optimizers"][0]["groups"][0]["steps"] == 300_000 and d["timing"]["optimizers"][0]["slowest"]


def test_ranks_are_compared_from_footers_as_from_rows(ranks, capsys, monkeypatch):
    rows_json = report(ranks, capsys, monkeypatch, summaries=False)

    def refuse(self):
        raise AssertionError("ranks compared in DuckDB although every part has a summary")

    monkeypatch.setattr(crossrank.CrossRank, "run", refuse)
    assert report(ranks, capsys, monkeypatch, summaries=True) == rows_json
    d = json.loads(rows_json)
    assert [g["ranks"] for g in d["rank_groups"]] == [[0, 3], [1], [2]]
    assert d["stragglers"]["slowest"][0]["rank"] == 3
    assert {f["code"] for f in d["findings"]} >= {"rank-divergence"}


def rewrite(part: Path, summary: bytes | None) -> None:
    table = pq.read_table(part)
    with pq.ParquetWriter(part, table.schema) as writer:
        writer.write_table(table)
        if summary is not None:
            writer.add_key_value_metadata({SUMMARY_KEY: summary})


@pytest.mark.parametrize("summary", [None, b"{not json", b'{"version": 1, "rows": 5}'])
def test_a_part_without_a_usable_summary_is_read(long_run, tmp_path, capsys, monkeypatch, summary):
    copy = tmp_path / "t"
    shutil.copytree(long_run, copy)
    part = sorted((copy / "rank=0").glob("part-*.parquet"))[7]
    rewrite(part, summary)
    rows_json = report(copy, capsys, monkeypatch, summaries=False)
    read = []
    real = scan.read_part
    monkeypatch.setattr(scan, "read_part", lambda p, *a: read.append(p) or real(p, *a))
    assert report(copy, capsys, monkeypatch, summaries=True) == rows_json
    assert read and json.loads(rows_json)["trace"]["skipped_parts"] == []


def test_a_merged_part_carries_the_summary_of_its_rows(tmp_path):
    torch = pytest.importorskip("torch")
    import lrdebug

    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 100)
    out = tmp_path / "run"
    with lrdebug.trace(opt, sched, out=out, flush_rows=64):
        for _ in range(1000):
            opt.zero_grad()
            model(torch.ones(4, 2)).sum().backward()
            opt.step()
            sched.step()
    merged = [p for p in (out / "rank=0").glob("part-*-*.parquet")]
    assert merged
    for part in merged:
        stored = pq.read_metadata(part).metadata[SUMMARY_KEY]
        assert load_summary(stored).state() == load_summary(summarize(pq.read_table(part))).state()
