"""A step made by a framework's loop: the finding names the user's line and the framework frame."""

from __future__ import annotations

import json
import os
import sys
import warnings

import pytest

import lrdebug

FRAMEWORK = '''\
import torch


def fit(model, optimizer, scheduler, steps):
    for _ in range(steps):
        optimizer.zero_grad()
        model(torch.ones(4, 2)).sum().backward()
        optimizer.step()
        scheduler.step()
        scheduler.step()  # the framework's bug: two scheduler steps per optimizer step
'''


@pytest.fixture
def fakefw(tmp_path, monkeypatch):
    """A package that counts as installed code, as site-packages does."""
    from lrdebug.record import callsites

    root = tmp_path / "site"
    (root / "fakefw").mkdir(parents=True)
    (root / "fakefw" / "__init__.py").write_text("")
    (root / "fakefw" / "trainer.py").write_text(FRAMEWORK)
    monkeypatch.syspath_prepend(str(root))
    installed = callsites._installed_prefixes()
    monkeypatch.setattr(callsites, "_installed_prefixes", lambda: (str(root) + os.sep,) + installed)
    yield
    sys.modules.pop("fakefw.trainer", None)
    sys.modules.pop("fakefw", None)


def test_finding_names_the_users_line_and_the_framework_frame(fakefw, tmp_path, capsys):
    import torch
    from fakefw.trainer import fit

    from lrdebug.cli import main

    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=100)
    out = tmp_path / "trace"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with lrdebug.trace(opt, sched, out=out, summary=False) as t:
            fit(model, opt, sched, 5); user_line = sys._getframe().f_lineno  # noqa: E702
    live = [f for f in t.findings if f.code == "scheduler-multiple-steps"]
    assert len(live) == 1
    assert (live[0].file, live[0].line) == (__file__, user_line)
    assert live[0].framework == "fakefw/trainer.py:10"
    warned = [w for w in caught if issubclass(w.category, lrdebug.LRDebugWarning)]
    assert [(w.filename, w.lineno) for w in warned] == [(__file__, user_line)]
    assert "called from fakefw/trainer.py:10" in str(warned[0].message)

    offline = [f for f in lrdebug.findings(out) if f.code == "scheduler-multiple-steps"]
    assert [(f.file, f.line, f.framework) for f in offline] == [(__file__, user_line, "fakefw/trainer.py:10")]

    assert main(["report", str(out), "--format", "json"]) == 0
    reported = [f for f in json.loads(capsys.readouterr().out)["findings"] if f["code"] == "scheduler-multiple-steps"]
    assert reported[0]["framework"] == "fakefw/trainer.py:10"
    assert main(["report", str(out), "--width", "200"]) == 0
    assert f"{os.path.basename(__file__)}:{user_line} via fakefw/trainer.py:10" in capsys.readouterr().out.replace("\n", "")
