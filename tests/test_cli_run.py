"""``lrdebug run`` runs a script or module exactly as python would, and records it.

Each target prints what it sees (``__name__``, ``__file__``, ``sys.argv``, ``sys.path[0]``, cwd) and is
run once under plain python (no torch import: fast) and once under ``lrdebug run``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_lrdebug, run_python

import lrdebug

PROBE = """
import json
import os
import sys

print(json.dumps({"name": __name__, "file": __file__, "argv": sys.argv, "path0": sys.path[0], "cwd": os.getcwd()}))
if os.environ.get("PROBE_TRAIN"):
    import torch

    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.randn(8, 4)).sum().backward()
        optimizer.step()
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """proj/probe.py exits 3; proj/pkg/mod.py raises; both are run from another directory or proj/."""
    root = tmp_path_factory.mktemp("cli")
    (root / "proj" / "pkg").mkdir(parents=True)
    (root / "work").mkdir()
    (root / "proj" / "probe.py").write_text(PROBE + "sys.exit(3)\n")
    (root / "proj" / "pkg" / "__init__.py").write_text("")
    (root / "proj" / "pkg" / "mod.py").write_text(PROBE + "raise ValueError('probe failed on purpose')\n")
    return root


@pytest.fixture(scope="module")
def script_run(project):
    """Without --out: the trace goes to ./lrdebug-traces/<time>-<pid>/."""
    args = ["../proj/probe.py", "a", "--flag", "b c"]
    plain = run_python(*args, cwd=project / "work")
    traced = run_lrdebug("run", *args, cwd=project / "work", env={"PROBE_TRAIN": "1", "OMP_NUM_THREADS": "1"})
    traces = list((project / "work" / "lrdebug-traces").iterdir())
    assert len(traces) == 1, traced.stderr
    return plain, traced, traces[0]


@pytest.fixture(scope="module")
def module_run(project):
    out = project / "module-trace"
    plain = run_python("-m", "pkg.mod", "x", "-y", cwd=project / "proj")
    traced = run_lrdebug("run", "--out", str(out), "-m", "pkg.mod", "x", "-y", cwd=project / "proj",
                         env={"PROBE_TRAIN": "1", "OMP_NUM_THREADS": "1"}, module=True)
    return plain, traced, out


def seen(proc) -> dict:
    """What the target printed; ``__file__`` as the file it names (runpy keeps it as given, python makes
    it absolute)."""
    got = json.loads(proc.stdout.splitlines()[0])
    got["file"] = str((Path(got["cwd"]) / got["file"]).resolve())
    return got


def test_script_sees_what_plain_python_shows_it(script_run):
    plain, traced, _ = script_run
    assert seen(traced) == seen(plain)
    assert seen(traced)["name"] == "__main__" and seen(traced)["argv"][1:] == ["a", "--flag", "b c"]


def test_script_exit_status_and_trace_path_printed_at_the_end(script_run):
    plain, traced, out = script_run
    assert plain.returncode == traced.returncode == 3
    last = traced.stderr.rstrip().splitlines()[-3:]
    assert f"lrdebug: trace written to {out.relative_to(out.parent.parent)}" in last, traced.stderr
    df = lrdebug.load(out)
    assert df[df["event"] == "optimizer_step"]["step"].tolist() == [1, 2]
    status = json.loads((out / "rank=0" / "_lrdebug_status.json").read_text())
    assert status["complete"] is True and status["meta"]["argv"][1:] == ["a", "--flag", "b c"]


def test_module_sees_what_python_dash_m_shows_it(module_run):
    plain, traced, _ = module_run
    assert seen(traced) == seen(plain)
    assert seen(traced)["name"] == "__main__" and seen(traced)["argv"][1:] == ["x", "-y"]


def test_uncaught_exception_exits_1_with_traceback_and_trace_written(module_run):
    plain, traced, out = module_run
    assert plain.returncode == traced.returncode == 1
    for proc in (plain, traced):
        assert "Traceback (most recent call last)" in proc.stderr
        assert "ValueError: probe failed on purpose" in proc.stderr
    assert f"lrdebug: trace written to {out}" in traced.stderr.splitlines()
    df = lrdebug.load(out)
    assert df[df["event"] == "optimizer_step"]["step"].tolist() == [1, 2]


def test_existing_output_directory_is_refused_with_one_line(script_run, project):
    _, _, out = script_run  # holds the trace of the earlier run
    before = sorted(p.name for p in out.rglob("*"))
    again = run_lrdebug("run", "--out", str(out), "../proj/probe.py", cwd=project / "work")
    assert again.returncode == 2
    assert again.stdout == ""  # the script did not run
    lines = again.stderr.splitlines()
    assert len(lines) == 1 and str(out) in lines[0] and "Traceback" not in again.stderr
    assert sorted(p.name for p in out.rglob("*")) == before


def test_bad_command_lines_exit_2_with_one_line(tmp_path):
    missing = run_lrdebug("run", str(tmp_path / "nope.py"), cwd=tmp_path)
    assert missing.returncode == 2
    assert len(missing.stderr.splitlines()) == 1 and "nope.py" in missing.stderr
    nothing = run_lrdebug("run", cwd=tmp_path, module=True)
    assert nothing.returncode == 2 and len(nothing.stderr.splitlines()) == 1



CONSOLE_SCRIPT = """#!{python}
# -*- coding: utf-8 -*-
import re
import sys
from pkg.entry import main
if __name__ == '__main__':
    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])
    sys.exit(main())
"""
ENTRY = """
import json, os, sys


def main():
    print(json.dumps({"name": __name__, "argv": sys.argv, "path0": sys.path[0]}))
    if os.environ.get("PROBE_TRAIN"):
        import torch

        model = torch.nn.Linear(4, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(3):
            optimizer.zero_grad()
            model(torch.randn(8, 4)).sum().backward()
            optimizer.step()
    return 4
"""


@pytest.fixture(scope="module")
def console(tmp_path_factory):
    """A project's console script on PATH (pip's form: a shebang to python, importing an entry point)."""
    import os
    import sys

    root = tmp_path_factory.mktemp("console")
    (root / "bin").mkdir()
    (root / "site" / "pkg").mkdir(parents=True)
    (root / "site" / "pkg" / "__init__.py").write_text("")
    (root / "site" / "pkg" / "entry.py").write_text(ENTRY)
    script = root / "bin" / "my-train"
    script.write_text(CONSOLE_SCRIPT.format(python=sys.executable))
    script.chmod(0o755)
    shell = root / "bin" / "shell-tool"
    shell.write_text("#!/bin/sh\necho hi\n")
    shell.chmod(0o755)
    env = {"PATH": f"{root / 'bin'}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(root / "site")])),
           "OMP_NUM_THREADS": "1"}
    return root, env


@pytest.mark.parametrize("dashdash", [False, True])
def test_console_script_on_path_runs_as_python_would(console, dashdash):
    import subprocess

    root, env = console
    import os

    plain = subprocess.run(["my-train", "a", "--b"], cwd=root, env={**os.environ, **env}, capture_output=True,
                           text=True)
    assert plain.returncode == 4, plain.stderr
    out = root / f"trace-{dashdash}"
    traced = run_lrdebug("run", "--out", str(out), *(["--"] if dashdash else []), "my-train", "a", "--b", cwd=root,
                         env={**env, "PROBE_TRAIN": "1"})
    assert traced.returncode == 4, traced.stderr
    assert json.loads(traced.stdout.splitlines()[0]) == json.loads(plain.stdout.splitlines()[0])
    assert json.loads(traced.stdout)["argv"] == [str(root / "bin" / "my-train"), "a", "--b"]
    df = lrdebug.load(out)
    assert df[df["event"] == "optimizer_step"]["step"].tolist() == [1, 2, 3]


def test_not_a_python_executable_or_nothing_on_path_exit_2_with_one_line(console):
    root, env = console
    shell = run_lrdebug("run", "shell-tool", cwd=root, env=env)
    assert shell.returncode == 2 and shell.stdout == ""
    assert len(shell.stderr.splitlines()) == 1 and "is not a Python script" in shell.stderr
    assert "lrdebug run -m MODULE" in shell.stderr
    missing = run_lrdebug("run", "no-such-tool-xyz", cwd=root, env=env)
    assert missing.returncode == 2
    assert missing.stderr.splitlines() == ["lrdebug run: error: no-such-tool-xyz: no such file nor executable on PATH"]
