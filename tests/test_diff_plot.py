"""`lrdebug diff` and `lrdebug plot` on traces recorded in this process, and the streaming summary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_lrdebug

import lrdebug
from lrdebug import cli
from lrdebug.report.scan import Dist, Envelope


def record(out: Path, gamma: float, steps: int = 10, groups: int = 1) -> Path:
    """SGD(lr=0.1) with StepLR(step_size=3, gamma), stepped once per optimizer step."""
    import torch

    torch.manual_seed(0)
    layers = [torch.nn.Linear(3, 1) for _ in range(groups)]
    opt = torch.optim.SGD([{"params": m.parameters()} for m in layers], lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=gamma)
    with lrdebug.trace(opt, sched, out=out, summary=False):
        for _ in range(steps):
            opt.zero_grad()
            sum(m(torch.ones(2, 3)).sum() for m in layers).backward()
            opt.step()
            sched.step()
    return out


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    d = tmp_path_factory.mktemp("diff")
    return {
        "a": record(d / "a", 0.1),
        "a2": record(d / "a2", 0.1),
        "b": record(d / "b", 0.5),
        "longer": record(d / "longer", 0.1, steps=12),
        "two": record(d / "two", 0.1, groups=2),
    }


def diff(capsys, a, b, *extra):
    status = cli.main(["diff", str(a), str(b), *extra])
    out, err = capsys.readouterr()
    return status, out, err


def test_identical_schedules(traces, capsys):
    status, out, _ = diff(capsys, traces["a"], traces["a2"])
    assert status == 0
    assert "SGD/pg1: identical over 10 steps" in out


def test_first_differing_step_with_context(traces, capsys):
    status, out, _ = diff(capsys, traces["a"], traces["b"], "--format", "json")
    assert status == 1
    d = json.loads(out)
    [g] = d["groups"]
    # StepLR(3): steps 1-3 use 0.1 in both; step 4 uses 0.1*0.1 in A and 0.1*0.5 in B.
    assert g["first_diff_step"] == 4
    assert g["lr_a"] == pytest.approx(0.01) and g["lr_b"] == pytest.approx(0.05)
    assert [c["step"] for c in g["context"]] == [2, 3, 4, 5, 6]
    assert [c["differs"] for c in g["context"]] == [False, False, True, True, True]
    status, text, _ = diff(capsys, traces["a"], traces["b"])
    assert status == 1
    assert "differs from step 4: A 0.01, B 0.05" in text and "the learning rates differ" in text


def test_different_lengths_compare_the_common_prefix(traces, capsys):
    status, out, _ = diff(capsys, traces["a"], traces["longer"], "--format", "json")
    assert status == 1
    [g] = json.loads(out)["groups"]
    assert (g["steps_a"], g["steps_b"], g["compared"], g["first_diff_step"]) == (10, 12, 10, None)
    status, text, _ = diff(capsys, traces["a"], traces["longer"])
    assert "equal over the 10 common steps" in text and "A has 10 steps, B has 12" in text


def test_a_group_only_in_one_trace(traces, capsys):
    status, out, _ = diff(capsys, traces["a"], traces["two"])
    assert status == 1
    assert "SGD/pg1: identical over 10 steps" in out and "SGD/pg2: only in B (10 steps)" in out


def test_diff_of_unusable_input(traces, capsys, tmp_path):
    status, _, err = diff(capsys, traces["a"], tmp_path / "missing")
    assert status == 2 and "no such trace" in err and len(err.strip().splitlines()) == 1


def test_plot_writes_png_and_svg(traces, capsys, tmp_path):
    png = tmp_path / "lr.png"
    assert cli.main(["plot", str(traces["two"]), "-o", str(png)]) == 0
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    svg = tmp_path / "lr.svg"
    assert cli.main(["plot", str(traces["a"]), "-o", str(svg)]) == 0
    text = svg.read_text()
    assert "<svg" in text and "SGD/pg1" in text
    capsys.readouterr()
    assert cli.main(["plot", str(traces["a"]), "-o", str(tmp_path / "lr.gif")]) == 2
    assert ".png, .svg or .pdf" in capsys.readouterr().err


def test_plot_without_matplotlib_names_the_extra(traces, tmp_path):
    blocker = tmp_path / "blocked" / "matplotlib"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('matplotlib is blocked in this test')\n")
    proc = run_lrdebug("plot", str(traces["a"]), "-o", str(tmp_path / "lr.png"),
                       env={"PYTHONPATH": str(blocker.parent)})
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "pip install 'lrdebug[plot]'" in proc.stderr
    assert not (tmp_path / "lr.png").exists()


# ------------------------------------------------------------------------------------------ streaming
def test_dist_is_exact_when_small_and_within_a_percent_when_large(monkeypatch):
    rng = np.random.default_rng(1)
    values = rng.lognormal(13, 1.0, 50_000).astype(np.int64)
    exact = Dist()
    for chunk in np.array_split(values, 7):
        exact.add(chunk)
    assert exact.quantile(0.5) == np.quantile(values, 0.5, method="inverted_cdf") and exact.max == values.max()
    monkeypatch.setattr(Dist, "EXACT", 1000)
    approx = Dist()
    for chunk in np.array_split(values, 7):
        approx.add(chunk)
    assert approx.raw is None
    for q in (0.5, 0.95, 0.99):
        assert approx.quantile(q) == pytest.approx(np.quantile(values, q), rel=0.01)
    assert approx.to_dict()["n"] == len(values) and approx.to_dict()["mean"] == pytest.approx(values.mean())


def test_envelope_keeps_every_extreme(monkeypatch):
    monkeypatch.setattr(Envelope, "LIMIT", 64)
    steps = np.arange(1, 10_001)
    lrs = 0.1 * np.cos(steps / 500.0) ** 2
    lrs[7_777] = 5.0  # one spike must survive the downsampling
    env = Envelope()
    for chunk in np.array_split(np.arange(len(steps)), 13):
        env.add(steps[chunk], lrs[chunk])
    x, lo, hi, size = env.points()
    assert len(x) <= 64 and size > 1
    assert hi.max() == 5.0 and lo.min() == lrs.min() and x[0] == 1
    for first, a, b in zip(x, lo, hi):  # each bucket's range is exactly that of its steps
        chunk = lrs[first - 1: first - 1 + size]
        assert (a, b) == (chunk.min(), chunk.max())


def test_summary_of_a_synthetic_multi_part_trace_matches_pandas(tmp_path):
    """The streaming figures equal those pandas computes from the whole table."""
    from conftest import ROOT, run_python

    out = tmp_path / "synthetic"
    proc = run_python(str(ROOT / "scripts" / "make_big_trace.py"), "--rows", "20000", "--groups", "2",
                      "--epoch", "700", "--part-events", "6000", str(out))
    assert proc.returncode == 0, proc.stderr
    report = lrdebug.Report(out)
    d = report.to_dict()
    assert d["trace"]["parts"] > 1
    df = lrdebug.load(out)
    steps = df[df.event == "optimizer_step"]
    for g in d["optimizers"][0]["groups"]:
        rows = steps[steps.group == g["index"]].sort_values("seq")
        assert g["steps"] == len(rows) == 10_000
        assert (g["first_lr"], g["last_lr"]) == (rows.lr.iloc[0], rows.lr.iloc[-1])
        assert (g["min_lr"], g["max_lr"]) == (rows.lr.min(), rows.lr.max())
        sampled = rows[rows.eff_lr.notna()]
        assert g["updates"]["samples"] == len(sampled)
        assert g["updates"]["eff_lr"]["median"] == pytest.approx(sampled.eff_lr.median())
    assert d["optimizers"][0]["groups"][0]["label"] == "backbone"
    assert d["optimizers"][0]["groups"][1]["label"] == "AdamW/pg2"
    sched = df[(df.event == "scheduler_step") & (df.group == 0)]
    assert d["schedulers"][0]["steps"] == len(sched)
    assert d["epochs"]["count"] == (df.event == "epoch_start").sum()
    assert report.epoch_steps(0)[:3] == [0, 700, 1400]
    first = steps[steps.group == 0]
    t = d["timing"]["optimizers"][0]
    assert t["iter_ns"]["p95"] == pytest.approx(np.quantile(first.iter_ns.dropna().astype(float), 0.95, method="inverted_cdf"))
    assert t["data_wait_ns"]["max"] == first.data_wait_ns.max()
    assert [s["step"] for s in t["slowest"]] == first.sort_values("iter_ns", ascending=False).step.head(5).tolist()


# --------------------------------------------------------------------------- ranks and optimizer classes
GOLDEN = Path(__file__).resolve().parent / "golden"


def record_ranks(out: Path, gammas: dict[int, float], opt_class: str = "SGD") -> Path:
    """One trace with a partition per rank, recorded here one rank after the other."""
    import torch

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LRDEBUG_RUN_ID", f"ranks-{out.name}")
        mp.setenv("WORLD_SIZE", str(len(gammas)))
        for rank, gamma in sorted(gammas.items()):
            mp.setenv("RANK", str(rank))
            torch.manual_seed(0)
            model = torch.nn.Linear(3, 1)
            opt = getattr(torch.optim, opt_class)(model.parameters(), lr=0.1)
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=gamma)
            with lrdebug.trace(opt, sched, out=out, summary=False):
                for _ in range(10):
                    opt.zero_grad()
                    model(torch.ones(2, 3)).sum().backward()
                    opt.step()
                    sched.step()
    return out


@pytest.fixture(scope="module")
def rank_traces(tmp_path_factory):
    d = tmp_path_factory.mktemp("diff-ranks")
    return {
        "two": record_ranks(d / "two", {0: 0.1, 1: 0.1}),
        "two_r1": record_ranks(d / "two_r1", {0: 0.1, 1: 0.5}),  # rank 1 decays slower
        "adam": record_ranks(d / "adam", {0: 0.1}, opt_class="Adam"),
    }


def test_one_process_against_two_ranks_says_which_ranks(traces, rank_traces, capsys):
    status, out, _ = diff(capsys, traces["a"], rank_traces["two"])
    assert status == 0
    lines = out.splitlines()
    assert lines[0].endswith("(rank 0)") and lines[1].endswith("(ranks 0, 1)")
    assert "compared rank 0 (in both traces); rank 1 of B not compared" in out
    status, out, _ = diff(capsys, traces["a"], rank_traces["two"], "--format", "json")
    result = json.loads(out)
    assert (result["ranks_a"], result["ranks_b"], result["ranks_compared"]) == ([0], [0, 1], [0])


def test_every_common_rank_is_compared_and_rank_selects_one(rank_traces, capsys):
    status, out, _ = diff(capsys, rank_traces["two"], rank_traces["two_r1"], "--format", "json")
    result = json.loads(out)
    assert status == 1 and result["ranks_compared"] == [0, 1]
    assert [(g["rank"], g["identical"]) for g in result["groups"]] == [(0, True), (1, False)]
    assert result["groups"][1]["first_diff_step"] == 4
    status, out, _ = diff(capsys, rank_traces["two"], rank_traces["two_r1"], "--rank", "0")
    assert status == 0 and out.rstrip().endswith("identical on rank 0")
    status, out, _ = diff(capsys, rank_traces["two"], rank_traces["two_r1"], "--rank", "1")
    assert status == 1 and "differs from step 4" in out


def test_rank_missing_on_one_side_is_unusable_input(traces, rank_traces, capsys):
    status, _, err = diff(capsys, traces["a"], rank_traces["two"], "--rank", "1")
    assert status == 2
    assert err.strip().splitlines() == ["lrdebug diff: error: --rank 1: trace A has rank 0"]


def test_optimizers_of_different_classes_are_named(traces, rank_traces, capsys):
    status, out, _ = diff(capsys, traces["a"], rank_traces["adam"])
    assert "optimizer 0 is SGD in A and Adam in B: optimizers are matched by position" in out
    assert "SGD/pg1 vs Adam/pg1: identical over 10 steps" in out


def test_diff_layout_golden(rank_traces):
    import io

    from rich.console import Console

    from lrdebug.report import diff_traces
    from lrdebug.report.renderers.text import diff_renderables

    result = diff_traces(str(rank_traces["two"]), str(rank_traces["two_r1"]))
    result["a"], result["b"] = "runs/two", "runs/two_r1"
    console = Console(file=io.StringIO(), width=100, color_system=None, record=True)
    for r in diff_renderables(result):
        console.print(r)
    text = "\n".join(line.rstrip() for line in console.export_text().splitlines()) + "\n"
    assert text == (GOLDEN / "diff_two_ranks.txt").read_text()
