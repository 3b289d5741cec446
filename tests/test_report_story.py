"""The report reads as one story: one naming of groups everywhere, one finding per write to several
groups, a chart and a plot that drop no step, and a header that names what ran the loop.

Golden renderings (tests/golden/) pin the text and Markdown layout at a fixed width with no colour;
``LRDEBUG_UPDATE_GOLDEN=1`` rewrites them. What varies between runs (paths, times, durations, timings,
versions) is replaced in the report's data before rendering, so a diff is a layout change.
"""

from __future__ import annotations

import io
import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import run_lrdebug
from rich.console import Console

import lrdebug
from lrdebug.report.renderers import termchart
from lrdebug.report.renderers.base import last_lrs_text

GOLDEN = Path(__file__).parent / "golden"

# nanoGPT's way: a hand-written warmup (from LR 0) then decay, written into both param groups.
HANDWRITTEN = textwrap.dedent('''
    import torch

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW([{"params": [model.weight], "weight_decay": 0.1},
                                   {"params": [model.bias], "weight_decay": 0.0}], lr=1e-3)
    for it in range(12):
        lr = 1e-3 * it / 4 if it < 4 else 1e-3 * 0.5 ** (it - 4)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.zero_grad()
        model(torch.randn(3, 4)).sum().backward()
        optimizer.step()
''')

# Layer-wise LR decay: 12 groups, each 0.8x the one above, one LambdaLR (warmup from 0) over all.
LLRD = textwrap.dedent('''
    import sys
    import torch

    torch.manual_seed(0)
    layers = torch.nn.ModuleList(torch.nn.Linear(2, 2) for _ in range(12))
    optimizer = torch.optim.AdamW([{"params": l.parameters(), "lr": 1e-3 * 0.8 ** (11 - i)}
                                   for i, l in enumerate(layers)])
    handwritten = sys.argv[1:] == ["handwritten"]
    scheduler = None if handwritten else torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, s / 3))
    for step in range(8):
        if handwritten:
            for i, group in enumerate(optimizer.param_groups):
                group["lr"] = 1e-3 * 0.8 ** (11 - i) * min(1.0, step / 3)
        optimizer.zero_grad()
        x = torch.randn(1, 2)
        for l in layers:
            x = l(x)
        x.sum().backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
''')

# step(closure), as Lightning calls it; one DataLoader epoch.
CLOSURE = textwrap.dedent('''
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for x, y in DataLoader(TensorDataset(torch.randn(8, 3), torch.randn(8, 1)), batch_size=2):
        def closure():
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss
        optimizer.step(closure)
''')


def _record(tmp_path_factory, name: str, script: str, *args: str) -> Path:
    d = tmp_path_factory.mktemp(name)
    (d / "train.py").write_text(script)
    proc = run_lrdebug("run", "--out", "trace", "train.py", *args, cwd=d)
    assert proc.returncode == 0, proc.stderr
    return d / "trace"


@pytest.fixture(scope="module")
def handwritten(tmp_path_factory) -> Path:
    return _record(tmp_path_factory, "handwritten", HANDWRITTEN)


@pytest.fixture(scope="module")
def llrd(tmp_path_factory) -> Path:
    return _record(tmp_path_factory, "llrd", LLRD)


@pytest.fixture(scope="module")
def llrd_handwritten(tmp_path_factory) -> Path:
    return _record(tmp_path_factory, "llrdhw", LLRD, "handwritten")


@pytest.fixture(scope="module")
def closure(tmp_path_factory) -> Path:
    return _record(tmp_path_factory, "closure", CLOSURE)


def render(report, width: int = 100) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None, record=True)
    console.print(report)
    return console.export_text()


def _steady(report) -> lrdebug.Report:
    """The report with everything that varies between two runs of one script made fixed."""
    d = report._data
    t = d["trace"]
    t.update(path="runs/lr", argv=["train.py"], script="train.py", cwd="/work", host="host", start="2025-01-01 00:00:00",
             start_unix_ns=0, duration_s=1.5, torch_version="2.x", lrdebug_version="0.x", python_version="3.x")
    for f in d["findings"]:
        f["file"] = os.path.basename(f["file"]) if f.get("file") else f.get("file")
    dist = {"n": 12, "p50": 1500.0, "p95": 2500.0, "max": 3000.0, "exact": True}
    for tm in d["timing"]["optimizers"]:
        for k in ("dur_ns", "iter_ns", "data_wait_ns", "cuda_ns"):
            if tm[k]:
                tm[k] = dict(dist)
        tm["step_share"] = 0.25
        tm["slowest"] = [{"step": 2, "iter_ns": 3000.0, "dur_ns": 2000.0, "data_wait_ns": None}]
    for k in ("scheduler_step_ns", "zero_grad_ns"):
        if d["timing"][k]:
            d["timing"][k] = dict(dist)
    return report


def _golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("LRDEBUG_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"no golden file {path} (LRDEBUG_UPDATE_GOLDEN=1 writes it)"
    assert text == path.read_text(), f"rendering differs from {path}; LRDEBUG_UPDATE_GOLDEN=1 to accept"


# ------------------------------------------------------------------------------------------ golden
def test_golden_text(handwritten):
    _golden("handwritten.txt", render(_steady(lrdebug.Report(handwritten))))


def test_golden_markdown(handwritten):
    _golden("handwritten.md", _steady(lrdebug.Report(handwritten)).to_markdown())


def test_golden_text_llrd(llrd):
    _golden("llrd.txt", render(_steady(lrdebug.Report(llrd))))


# ------------------------------------------------------------------------------------------ items
def test_one_finding_names_every_group_written(handwritten):
    """#17.4: one lr-changed-outside-scheduler naming both groups, as the tables name them, live and offline."""
    report = lrdebug.Report(handwritten)
    found = [f for f in report.findings if f["code"] == "lr-changed-outside-scheduler"]
    assert len(found) == 1, found
    msg = found[0]["message"]
    assert "AdamW/pg1 and AdamW/pg2" in msg and "group 0" not in msg and "optimizer 0" not in msg
    labels = [g["label"] for o in report.to_dict()["optimizers"] for g in o["groups"]]
    assert labels == ["AdamW/pg1", "AdamW/pg2"]
    live = report.trace.status[0]["findings"]
    offline = [f.to_dict() for f in lrdebug.findings(handwritten)]
    assert [(f["code"], f["message"], f["count"]) for f in live] == [
        (f["code"], f["message"], f["count"]) for f in offline]


def test_twelve_groups_written_by_hand_are_one_finding(llrd_handwritten):
    """#17.16: layer-wise decay written by hand: one finding covering the 12 groups."""
    report = lrdebug.Report(llrd_handwritten)
    found = [f for f in report.findings if f["code"] == "lr-changed-outside-scheduler"]
    assert len(found) == 1
    assert "12 groups (AdamW/pg1, AdamW/pg2, … AdamW/pg12)" in found[0]["message"]
    assert len(found[0]["message"]) < 400


def test_twelve_groups_chart_and_scheduler_cells(llrd):
    """#17.16: every group in the legend with its own marker; the scheduler cell on every row."""
    text = render(lrdebug.Report(llrd), width=140)
    rows = [line for line in text.splitlines() if line.startswith("│ AdamW/pg")]
    assert len(rows) == 12 and all("LambdaLR #0" in r for r in rows)
    for i in range(12):
        assert f"{termchart.MARKERS[i]} AdamW/pg{i + 1} " in text
    assert "not drawn" not in text


def test_groups_beyond_the_markers_are_named():
    curves = [(f"g{i}", (np.array([1, 2]), np.array([1.0, 2.0 + i]), np.array([1.0, 2.0 + i]), 1)) for i in range(20)]
    chart = termchart.draw(curves, [], 80)
    text = chart.text.plain
    assert "(4 more group(s) not drawn: g16, g17, g18, g19)" in text
    assert f"{termchart.MARKERS[15]} g15" in text


def test_call_site_files_are_absolute(handwritten):
    """#17.5: `lrdebug run train.py` (a relative path) still records an absolute file."""
    files = {f for f in lrdebug.load(handwritten)["file"].dropna()}
    assert files and all(os.path.isabs(f) and f.endswith("train.py") for f in files)
    assert all(os.path.isabs(f["file"]) for f in lrdebug.Report(handwritten).findings)


def test_chart_keeps_the_lr_zero_step_and_step_one(handwritten):
    """#17.6: log scale, yet step 1 (LR 0) is drawn on a row labelled 0, and the x axis starts at 1."""
    chart = termchart.draw([(lab, c) for lab, c in [("AdamW/pg1", lrdebug.Report(handwritten).curves()[(0, 0)])]],
                           [], 80)
    lines = chart.text.plain.splitlines()
    zero_row = next(line for line in lines if line.strip().startswith("0 ┤"))
    assert "•" in zero_row.split("┤", 1)[1][:8]  # the first step's level, at the left edge
    ticks = lines[lines.index(next(line for line in lines if "└" in line)) + 1]
    assert ticks.split()[0] == "1" and ticks.split()[-1] == "12"
    assert chart.log and "LR 0 is drawn on the bottom row" in chart.text.plain


def test_chart_groups_differ_without_colour_and_legend_is_under_the_chart(handwritten):
    text = render(lrdebug.Report(handwritten))
    chart = text[text.index("LR schedule"):text.index("Findings")]
    assert "• AdamW/pg1" in chart and "x AdamW/pg2 (= AdamW/pg1, drawn over it)" in chart
    legend_at = chart.index("• AdamW/pg1")
    assert chart.index("└") < legend_at  # under the axis, not over the warmup


def test_one_epoch_run_mentions_no_epoch_lines(closure):
    text = render(lrdebug.Report(closure))
    assert "LR schedule: SGD" in text and "vertical lines" not in text and "epochs" not in text


def test_png_keeps_lr_zero_integer_ticks_and_last_level(handwritten):
    """#17.7: symlog keeps the LR-0 step; ticks are whole steps; the last step is a level to 12.5."""
    pytest.importorskip("matplotlib")
    from lrdebug.report.renderers.image import figure

    fig = figure(lrdebug.Report(handwritten))
    ax = fig.axes[0]
    assert ax.get_yscale() == "symlog"
    line = ax.get_lines()[0]
    xs, ys = line.get_xdata(), line.get_ydata()
    assert xs[0] == 0.5 and ys[0] == 0.0  # step 1, LR 0, drawn
    assert xs[-1] == 12.5 and ys[-1] == ys[-2]  # the last step's LR is a level, not only a drop
    fig.canvas.draw()
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)


def test_plot_command_writes_the_png(handwritten, tmp_path):
    pytest.importorskip("matplotlib")
    proc = run_lrdebug("plot", str(handwritten), "-o", str(tmp_path / "lr.png"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "lr.png").read_bytes()[:4] == b"\x89PNG"


def test_step_with_a_closure_says_its_time_includes_forward_and_backward(closure, handwritten):
    """#17.8"""
    d = lrdebug.Report(closure).to_dict()
    assert d["timing"]["optimizers"][0]["step_closure"] is True
    assert "includes the forward and backward passes" in " ".join(render(lrdebug.Report(closure)).split())
    assert "includes the forward and backward" in lrdebug.Report(closure).to_markdown()
    assert lrdebug.Report(handwritten).to_dict()["timing"]["optimizers"][0]["step_closure"] is False
    assert "closure" not in render(lrdebug.Report(handwritten))


def test_header_names_the_framework_that_called_step(tmp_path):
    """#17.9: a package installed in a site-packages folder calls optimizer.step(): named with its version."""
    site = tmp_path / "site-packages"
    (site / "fakefw").mkdir(parents=True)
    (site / "fakefw" / "__init__.py").write_text(textwrap.dedent('''
        def fit(model, optimizer, steps):
            for _ in range(steps):
                optimizer.zero_grad()
                model(__import__("torch").randn(2, 3)).sum().backward()
                optimizer.step()
    '''))
    (site / "fakefw-1.2.3.dist-info").mkdir()
    (site / "fakefw-1.2.3.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: fakefw\nVersion: 1.2.3\n")
    (tmp_path / "train.py").write_text(
        "import torch, fakefw\nm = torch.nn.Linear(3, 1)\nfakefw.fit(m, torch.optim.SGD(m.parameters(), lr=0.1), 3)\n")
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    proc = run_lrdebug("run", "--out", "trace", "train.py", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    report = lrdebug.Report(tmp_path / "trace")
    assert report.to_dict()["trace"]["frameworks"] == {"fakefw": "1.2.3"}
    assert "Framework  fakefw 1.2.3 (called optimizer.step())" in render(report)
    assert "**Framework:** fakefw 1.2.3" in report.to_markdown()


def test_markdown_header_and_data_wait(handwritten):
    """#17.10: the Python version; no "waiting for data —."."""
    md = lrdebug.Report(handwritten).to_markdown()
    assert f"Python {sys.version.split()[0]}" in md
    assert "waiting for data —" not in md and "data wait not measured" in md
    assert "waiting for data —" not in render(lrdebug.Report(handwritten))


def test_no_optimizer_says_so_once(tmp_path):
    """#17.10: a manual SGD loop (no optimizer) says "no optimizer steps were recorded" once per format."""
    (tmp_path / "train.py").write_text(textwrap.dedent('''
        import torch
        w = torch.zeros(3, requires_grad=True)
        for _ in range(3):
            (w - 1).pow(2).sum().backward()
            with torch.no_grad():
                w -= 0.1 * w.grad
                w.grad = None
    '''))
    proc = run_lrdebug("run", "--out", "trace", "train.py", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = lrdebug.Report(tmp_path / "trace")
    assert render(report).lower().count("no optimizer steps were recorded") == 1
    assert report.to_markdown().lower().count("no optimizer steps were recorded") == 1
    assert "no optimizer steps were recorded" in report.to_dict()["notes"]  # the JSON keeps its note


def test_ranks_last_lr_names_each_group():
    """#17.11"""
    groups = [{"label": "AdamW/pg1"}, {"label": "decay"}]
    assert last_lrs_text(groups, [1e-4, 1e-3], "AdamW") == "pg1 0.0001\ndecay 0.001"
    assert last_lrs_text(groups, [1e-4, 1e-4], "AdamW") == "0.0001 (all 2 groups)"
    many = [{"label": f"AdamW/pg{i + 1}"} for i in range(6)]
    assert last_lrs_text(many, [float(i) for i in range(6)], "AdamW").endswith("… 2 more")


def test_chart_needs_no_plotting_package(handwritten, monkeypatch):
    """#17.14: plotext 6 changed its whole API; the chart is drawn by lrdebug, with or without plotext."""
    monkeypatch.setitem(sys.modules, "plotext", None)  # `import plotext` now fails
    text = render(lrdebug.Report(handwritten))
    assert "LR schedule: AdamW" in text and "no LR chart" not in text
