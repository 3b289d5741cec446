"""`lrdebug report|diff --format html`: one self-contained page, checked as text and in headless Chromium.

The browser tests use the system Chromium and chromium-driver (tests/browser.py), network off; without
them they skip, saying why. Each keeps a screenshot under its tmp dir and prints the path.
"""

from __future__ import annotations

import os
import re
import subprocess
import warnings
import sys
import time
from pathlib import Path

import pytest
from browser import PAGE_STATE_JS, BrowserUnavailable, open_browser
from conftest import run_lrdebug

import lrdebug
from lrdebug import cli

plotly = pytest.importorskip("plotly", reason="the html extra (plotly) is not installed")

from lrdebug.report import Report  # noqa: E402
from lrdebug.report.renderers.html import MAX_POINTS, page_summary, render_html  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCHED_LINE = "scheduler.step()  # per batch: the bug this page shows"


def record_bug(out: Path) -> Path:
    """CosineAnnealingLR sized in epochs, stepped per batch (LR reaches 0), DataLoader epochs, sampled
    updates, a group name that is HTML."""
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    loader = DataLoader(TensorDataset(torch.randn(64, 4), torch.randn(64, 1)), batch_size=8)
    model = nn.Linear(4, 1)
    optimizer = torch.optim.SGD([{"params": model.parameters(), "name": "<b>head</b>"}], lr=0.1)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=3)
    with warnings.catch_warnings(), lrdebug.trace(optimizer, scheduler, out=out, summary=False, sample_updates=2):
        warnings.simplefilter("ignore", lrdebug.LRDebugWarning)  # the finding is the point
        for _ in range(3):
            for x, y in loader:
                optimizer.zero_grad()
                nn.functional.mse_loss(model(x), y).backward()
                optimizer.step()
                scheduler.step()  # per batch: the bug this page shows
    return out


@pytest.fixture(scope="module")
def traces(tmp_path_factory):
    from test_diff_plot import record, record_ranks

    d = tmp_path_factory.mktemp("html")
    return {
        "bug": record_bug(d / "bug"),
        "a": record(d / "a", 0.1),
        "b": record(d / "b", 0.5),
        "ranks": record_ranks(d / "ranks", {0: 0.1, 1: 0.5}),  # rank 1 decays slower from step 4
    }


@pytest.fixture(scope="module")
def pages(traces, tmp_path_factory):
    d = tmp_path_factory.mktemp("html-pages")
    out = {}
    for name in ("bug", "ranks"):
        out[name] = d / f"{name}.html"
        assert cli.main(["report", str(traces[name]), "--format", "html", "-o", str(out[name])]) == 0
    out["diff"] = d / "diff.html"
    assert cli.main(["diff", str(traces["a"]), str(traces["b"]), "--format", "html", "-o", str(out["diff"])]) == 1
    return out


@pytest.fixture(scope="module")
def browser():
    try:
        drv = open_browser()
    except BrowserUnavailable as exc:
        pytest.skip(f"no browser for the HTML tests: {exc}")
    yield drv
    drv.quit()


def load(drv, page: Path, timeout: float = 90) -> dict:
    drv.get("about:blank")
    drv.get(page.as_uri())
    t0 = time.time()
    while drv.execute_script("return document.body && document.body.getAttribute('data-ready')") != "1":
        assert time.time() - t0 < timeout, "the page did not finish loading"
        time.sleep(0.05)
    return drv.execute_script(PAGE_STATE_JS)


def screenshot(drv, path: Path) -> Path:
    height = drv.execute_script("return document.body.scrollHeight")
    drv.set_window_size(1366, min(height + 40, 8000))
    drv.save_screenshot(str(path))
    drv.set_window_size(1366, 900)
    print(f"screenshot: {path}")
    return path


# ------------------------------------------------------------------------------------- the command
def test_html_needs_an_output_file(traces, capsys):
    assert cli.main(["report", str(traces["a"]), "--format", "html"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "-o FILE" in err
    assert cli.main(["diff", str(traces["a"]), str(traces["b"]), "--format", "html"]) == 2
    assert "-o FILE" in capsys.readouterr().err


def test_an_existing_output_is_replaced_as_plot_does(traces, tmp_path, capsys):
    out = tmp_path / "r.html"
    out.write_text("old")
    assert cli.main(["report", str(traces["a"]), "--format", "html", "-o", str(out)]) == 0
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert f"wrote {out}" in capsys.readouterr().err


def test_without_plotly_one_line_names_the_extra(traces, tmp_path):
    blocker = tmp_path / "blocked" / "plotly"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('plotly is blocked in this test')\n")
    proc = run_lrdebug("report", str(traces["a"]), "--format", "html", "-o", str(tmp_path / "r.html"),
                       env={"PYTHONPATH": os.pathsep.join(filter(None, [str(blocker.parent),
                                                                         os.environ.get("PYTHONPATH")]))})
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "pip install 'lrdebug[html]'" in proc.stderr
    assert not (tmp_path / "r.html").exists()


# ------------------------------------------------------------------------------------- the page as text
def test_the_page_is_self_contained(pages):
    from plotly.offline import get_plotlyjs

    for page in pages.values():
        text = page.read_text(encoding="utf-8")
        assert text.count(get_plotlyjs()) == 1  # plotly.js inlined once
        rest = text.replace(get_plotlyjs(), "")
        # outside the library's own (inert) strings, not one URL; nothing refers to a file or a host
        assert not re.search(r"https?://|//cdn|<script[^>]+src=|<link|@import|url\(", rest, re.I), page


def test_call_site_lines_are_stored_once_per_site_and_shown(traces, pages):
    from lrdebug.tracefile import read_trace

    meta = next(iter(read_trace(traces["bug"], columns=[]).meta.values()))
    lines = meta["site_lines"]
    assert SCHED_LINE in lines.values()
    (key,) = [k for k, v in lines.items() if v == SCHED_LINE]
    assert key.startswith(str(Path(__file__).resolve()) + ":")
    report = Report(traces["bug"])
    finding = next(f for f in report.to_dict()["findings"] if f["code"] == "epoch-scheduler-stepped-per-batch")
    assert finding["source_line"] == SCHED_LINE
    text = pages["bug"].read_text()
    assert "scheduler.step()  # per batch: the bug this page shows" in text


def test_header_findings_and_escaping(traces, pages):
    text = pages["bug"].read_text()
    d = Report(traces["bug"]).to_dict()
    for needle in (d["trace"]["torch_version"], d["trace"]["python_version"], d["trace"]["lrdebug_version"],
                   "epoch-scheduler-stepped-per-batch", "Step time", "Sampled update"):
        assert needle in text
    assert "<b>head</b>" not in text and "&lt;b&gt;head&lt;/b&gt;" in text


def test_chart_points_match_the_model(traces, pages):
    report = Report(traces["bug"])
    charts = page_summary(pages["bug"].read_text())["charts"]
    ((x, lo, hi, per),) = report.curves(MAX_POINTS).values()
    intended = sum(len(s) for per_group in report.intended.values() for s, _ in per_group.values())
    assert per == 1 and charts["lr-0"] == len(x) + intended  # every step, exact, and the intended schedule
    assert {"lr-0", "time-0", "updates-eff-0", "updates-ratio-0"} <= set(charts)


def test_a_million_steps_stays_small(tmp_path):
    big = tmp_path / "big"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_big_trace.py"), "--rows", "400000", "--groups", "4",
                    str(big)], check=True, capture_output=True)
    report = Report(big)
    text = render_html(report)
    summary = page_summary(text)
    assert summary["bytes"] < 6 * 2**20
    assert summary["charts"]["lr-0"] <= 4 * 2 * MAX_POINTS  # min and max per bucket, 4 groups
    assert "the 64 steps from step" in text  # the hover names each bucket's steps


# ------------------------------------------------------------------------------------- in a browser
def test_report_in_chromium(browser, traces, pages, tmp_path):
    state = load(browser, pages["bug"])
    errors = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
    assert not errors, errors
    assert state["resources"] == []  # nothing fetched: the page is all there is
    assert state["charts"] and all(c["rendered"] and c["drawn"] == c["expected"] > 0 for c in state["charts"]), state
    assert state["findings"] == len(Report(traces["bug"]).findings) >= 1
    shot = screenshot(browser, tmp_path / "report.png")
    assert shot.stat().st_size > 10_000

    # the log view keeps the steps at LR 0: drawn at the floor, same number of points
    lr = next(c for c in state["charts"] if c["id"] == "lr-0")
    browser.execute_script("""
        const b = Array.from(document.querySelectorAll('#lr-0 .updatemenu-button'))
            .find(function (e) { return e.textContent.trim() === 'log'; });
        b.dispatchEvent(new MouseEvent('click', {bubbles: true}));""")
    time.sleep(0.5)
    after = browser.execute_script(PAGE_STATE_JS)
    assert browser.execute_script("return document.getElementById('lr-0')._fullLayout.yaxis.type") == "log"
    assert next(c for c in after["charts"] if c["id"] == "lr-0")["drawn"] == lr["drawn"]
    assert "drawn at" in browser.execute_script("return document.getElementById('lr-0').textContent")


def test_ranks_and_diff_in_chromium(browser, pages, tmp_path):
    state = load(browser, pages["ranks"])
    assert [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"] == []
    ids = {c["id"]: c for c in state["charts"]}
    assert ids["ranks-0"]["drawn"] == ids["ranks-0"]["expected"] == 20  # two ranks x 10 steps
    assert "Ranks differ from step 4" in browser.execute_script("return document.body.textContent")
    screenshot(browser, tmp_path / "ranks.png")
    state = load(browser, pages["diff"])
    assert [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"] == []
    assert state["findingsBlock"] and state["charts"] and all(c["drawn"] == c["expected"] for c in state["charts"])
    assert "differ from step 4" in browser.execute_script("return document.body.textContent")
    screenshot(browser, tmp_path / "diff.png")


def test_dark_mode(pages, tmp_path):
    try:
        drv = open_browser(dark=True)
    except BrowserUnavailable as exc:
        pytest.skip(f"no browser for the HTML tests: {exc}")
    try:
        state = load(drv, pages["bug"])
        assert state["dark"] and state["bg"] == "rgb(13, 17, 23)"
        assert drv.execute_script("return document.getElementById('lr-0')._fullLayout.font.color") == "#e6edf3"
        screenshot(drv, tmp_path / "dark.png")
    finally:
        drv.quit()
