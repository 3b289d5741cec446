"""The intended schedule of a finding equals, step for step, the LRs of the same script with the misuse
fixed (tests/gallery/fixed/), recorded for real; the damage figures follow from the two; correct
scripts get no intended curve; a lambda scheduler says why it has none."""

from __future__ import annotations

import json
import runpy
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import run_lrdebug

import lrdebug

GALLERY = Path(__file__).parent / "gallery"
CASES = [  # bug script, the finding whose intended schedule the fixed copy runs
    ("bug_scheduler_before_optimizer", "scheduler-before-optimizer"),
    ("bug_accumulation_sched_per_microbatch", "scheduler-multiple-steps"),
    ("bug_epoch_scheduler_per_batch", "epoch-scheduler-stepped-per-batch"),
    ("bug_epoch_steplr_trainer_config", "epoch-scheduler-stepped-per-batch"),
    ("bug_scheduler_never_stepped", "scheduler-never-stepped"),
    ("bug_scheduler_past_horizon", "scheduler-past-horizon"),
]


def _record(script: Path, out: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with lrdebug.trace(out=out, summary=False):
            runpy.run_path(str(script), run_name="__main__")
    return out


def _lrs(trace: Path) -> tuple[np.ndarray, np.ndarray]:
    df = lrdebug.load(trace)
    steps = df[(df.event == "optimizer_step") & (df.group == 0)].sort_values("step")
    return steps.step.to_numpy(dtype=np.int64), steps.lr.to_numpy(dtype=np.float64)


@pytest.mark.parametrize("name, code", CASES)
def test_intended_schedule_is_what_the_fixed_script_runs(tmp_path, name, code):
    report = lrdebug.Report(_record(GALLERY / f"{name}.py", tmp_path / "bug"))
    index = next(i for i, f in enumerate(report.findings) if f["code"] == code)
    finding = report.to_dict()["findings"][index]
    assert "unavailable" not in finding["intended"], finding["intended"]
    assert finding["intended"]["assumption"]
    steps, intended = report.intended[index][0]
    fixed_steps, fixed = _lrs(_record(GALLERY / "fixed" / f"{name}.py", tmp_path / "fixed"))
    assert steps.tolist() == fixed_steps.tolist()
    np.testing.assert_allclose(intended, fixed, rtol=1e-12, atol=0)

    actual_steps, actual = _lrs(tmp_path / "bug")
    damage = finding["intended"]["groups"][0]
    off = np.abs(actual - fixed) > 1e-12 * np.maximum(np.abs(actual), np.abs(fixed))
    assert damage["first_diff_step"] == int(actual_steps[np.argmax(off)])
    assert damage["lr_sum_actual"] == pytest.approx(actual.sum()) and damage["lr_sum_intended"] == pytest.approx(
        fixed.sum())
    # off by more than 1 %: relative to the intended LR; where that is 0, any other LR is off
    off_1pct = [(i == 0 and a != 0) or (i != 0 and abs(a / i - 1) > 0.01) for a, i in zip(actual, fixed)]
    assert damage["share_off"] == pytest.approx(np.mean(off_1pct))


def test_a_lambda_scheduler_says_why_it_has_no_intended_schedule(tmp_path):
    report = lrdebug.Report(_record(GALLERY / "bug_scheduler_multiple_steps.py", tmp_path / "t"))
    finding = report.to_dict()["findings"][0]
    assert finding["code"] == "scheduler-multiple-steps"
    assert "lambda cannot be stored" in finding["intended"]["unavailable"]


def test_correct_scripts_have_no_intended_curve(tmp_path):
    for name in ("good_steplr_per_epoch", "good_cosine_in_steps", "good_onecycle_per_batch"):
        report = lrdebug.Report(_record(GALLERY / f"{name}.py", tmp_path / name))
        assert report.intended == {} and all("intended" not in f for f in report.to_dict()["findings"])


def test_the_report_shows_the_damage_in_text_json_and_markdown(tmp_path):
    trace = _record(GALLERY / "bug_epoch_scheduler_per_batch.py", tmp_path / "t")
    as_json = run_lrdebug("report", str(trace), "--format", "json")
    assert as_json.returncode == 0, as_json.stderr
    finding = json.loads(as_json.stdout)["findings"][0]
    assert finding["intended"]["assumption"] == "one scheduler step per epoch, at the recorded epoch boundaries"
    text = run_lrdebug("report", str(trace), env={"COLUMNS": "200"})
    assert "differs from step 2" in text.stdout and "intended: one scheduler step per epoch" in text.stdout
    markdown = run_lrdebug("report", str(trace), "--format", "markdown")
    assert "differs from step 2" in markdown.stdout


def test_the_plot_draws_the_intended_schedule_dashed(tmp_path):
    pytest.importorskip("matplotlib")
    from lrdebug.report.renderers.image import figure

    report = lrdebug.Report(_record(GALLERY / "bug_epoch_scheduler_per_batch.py", tmp_path / "t"))
    steps, intended = report.intended[0][0]
    lines = [line for ax in figure(report).axes for line in ax.get_lines() if "intended" in line.get_label()]
    assert len(lines) == 1 and lines[0].get_linestyle() == "--"
    drawn = lines[0].get_ydata()
    np.testing.assert_array_equal(drawn[:-1], intended)  # one level per step, the last one held


def test_the_end_of_run_summary_gives_the_damage(tmp_path):
    proc = run_lrdebug("run", "--out", str(tmp_path / "t"), str(GALLERY / "bug_epoch_scheduler_per_batch.py"))
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stderr.split())  # the summary wraps its lines
    assert "vs intended: SGD/pg1: differs from step 2, 80 % of steps off by > 1 %" in text


def test_the_terminal_chart_draws_the_intended_schedule(tmp_path):
    trace = _record(GALLERY / "bug_epoch_scheduler_per_batch.py", tmp_path / "t")
    text = run_lrdebug("report", str(trace), env={"COLUMNS": "120"}).stdout
    chart = text[text.index("LR schedule"):]
    assert "x SGD/pg1 intended (epoch-scheduler-stepped-per-batch)" in chart  # its own marker in the legend
    assert chart.count("x") > 60  # and drawn: a level per epoch across the chart
