"""The pytest plugin, as a user runs it: ``pytest --lrdebug`` in a project whose tests train.

Each run is a real pytest in a subprocess (pytester) over the same test file: a correct loop, a
loop that steps its scheduler before its optimizer, the same with a marker that ignores the code or
raises the threshold, objects built by a fixture, and a test that trains nothing.
"""

from __future__ import annotations

import pytest

import lrdebug

pytest_plugins = ["pytester"]

TESTS = '''
import pytest
import torch


def build():
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.9 ** s)


def train(model, opt, sched, scheduler_first=False):
    for _ in range(3):
        if scheduler_first:
            sched.step()
        opt.zero_grad()
        model(torch.ones(4, 2)).sum().backward()
        opt.step()
        if not scheduler_first:
            sched.step()


@pytest.fixture
def built():
    return build()


def test_good():
    train(*build())


def test_bad():
    train(*build(), scheduler_first=True)


@pytest.mark.lrdebug(ignore=["scheduler-before-optimizer"])
def test_bad_ignored():
    train(*build(), scheduler_first=True)


@pytest.mark.lrdebug(fail_on="error")
def test_bad_error_only():
    train(*build(), scheduler_first=True)


def test_built_by_fixture(built):
    train(*built, scheduler_first=True)


def test_trains_nothing():
    assert torch.ones(1).item() == 1
'''

# Other installed plugins (hypothesis takes seconds to import) play no part here.
QUIET = ("-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-p", "no:anyio")
BAD = {"test_bad", "test_built_by_fixture"}
TRAINING = {"test_good", "test_bad", "test_bad_ignored", "test_bad_error_only", "test_built_by_fixture"}


def outcomes(result) -> dict[str, str]:
    """test name -> outcome, from the run's report lines (-rA)."""
    found = {}
    for line in result.outlines:
        for outcome in ("PASSED", "FAILED", "ERROR"):
            if line.startswith(outcome + " ") and "::" in line:
                found[line.split("::")[1].split()[0]] = outcome
    return found


@pytest.fixture
def project(pytester):
    pytester.makepyfile(test_training=TESTS)
    return pytester


def test_a_finding_fails_the_test_that_caused_it_and_each_training_test_leaves_a_trace(project):
    result = project.runpytest_subprocess("--lrdebug", "--lrdebug-dir", "traces", "-rA", *QUIET)
    got = outcomes(result)
    assert {name for name, outcome in got.items() if outcome == "FAILED"} == BAD
    assert {name for name, outcome in got.items() if outcome == "PASSED"} == {
        "test_good", "test_bad_ignored", "test_bad_error_only", "test_trains_nothing"}
    text = result.stdout.str()
    assert "scheduler-before-optimizer" in text
    assert "test_training.py:" in text  # the finding names the user's line
    folders = {p.name: p for p in (project.path / "traces").iterdir()}
    assert set(folders) == {f"test_training.py_{name}" for name in TRAINING}
    for name in TRAINING:
        df = lrdebug.load(folders[f"test_training.py_{name}"])
        assert (df.event == "optimizer_step").sum() == 3


def test_the_option_chooses_the_threshold(project):
    result = project.runpytest_subprocess("--lrdebug", "--lrdebug-fail-on", "error", "-rA", *QUIET)
    assert outcomes(result) == {name: "PASSED" for name in TRAINING | {"test_trains_nothing"}}
    default_root = project.path / "lrdebug-traces"
    assert [p.name.startswith("pytest-") for p in default_root.iterdir()] == [True]


def test_without_the_flag_nothing_is_traced(project):
    result = project.runpytest_subprocess("-rA", *QUIET)
    assert outcomes(result) == {name: "PASSED" for name in TRAINING | {"test_trains_nothing"}}
    assert not (project.path / "lrdebug-traces").exists()


@pytest.mark.parametrize("args, message", [
    (["--lrdebug-ignore", "no-such-code"], "unknown finding code(s): no-such-code"),
    (["--lrdebug-dir", "test_training.py"], "an existing trace is never overwritten"),
])
def test_bad_options_are_usage_errors(project, args, message):
    result = project.runpytest_subprocess("--lrdebug", *args, *QUIET)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()
