"""The compiled hot path and the pure-Python one record the same trace.

Every gallery script and example loop runs once under each implementation (one child process each,
``LRDEBUG_PURE_PYTHON=1`` for the reference); the traces must hold the same rows, apart from the times,
and the same findings, live and recomputed from the trace.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import lrdebug
from lrdebug.record import hotpath

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(p for p in (ROOT / "tests" / "gallery").glob("*.py") if p.name.startswith(("bug_", "good_")))
SCRIPTS += sorted((ROOT / "tests" / "gallery" / "fixed").glob("*.py"))
SCRIPTS += [ROOT / "examples" / name for name in ("train_steplr.py", "train_mlp.py", "read_lr_sgd.py",
                                                  "handwritten_scheduler.py")]

# Runs each script under lrdebug.trace() in this one process, as tests/test_checks_gallery.py does, and
# prints the live findings of each as JSON lines.
DRIVER = textwrap.dedent("""
    import json, runpy, sys, warnings
    from pathlib import Path
    import lrdebug
    from lrdebug.record import hotpath

    out = Path(sys.argv[1])
    print(json.dumps({"implementation": hotpath.IMPLEMENTATION}), flush=True)
    for i, script in enumerate(sys.argv[2:]):
        sys.argv = [script]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                with lrdebug.trace(out=out / f"{i:02d}", summary=False) as t:
                    runpy.run_path(script, run_name="__main__")
                live = [(f.code, f.line, f.step, f.count) for f in t.findings]
            except BaseException as e:  # a script that cannot run here (fused Adam on this CPU) is compared too
                live = [("raised", type(e).__name__)]
        print(json.dumps({"script": script, "live": live}), flush=True)
""")


def _run_all(out: Path, pure: bool) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONHASHSEED="0")
    env.pop("LRDEBUG_PURE_PYTHON", None)
    env.pop("LRDEBUG_RUN_ID", None)
    if pure:
        env["LRDEBUG_PURE_PYTHON"] = "1"
    return subprocess.Popen([sys.executable, "-c", DRIVER, str(out), *map(str, SCRIPTS)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    if hotpath.IMPLEMENTATION != "compiled":
        pytest.skip(f"the compiled hot path is not in use here: {hotpath.DESCRIPTION}")
    base = tmp_path_factory.mktemp("hotpath")
    procs = {name: _run_all(base / name, pure=name == "python") for name in ("compiled", "python")}
    out = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-3000:]
        lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
        assert lines[0] == {"implementation": name}
        out[name] = (base / name, [d["live"] for d in lines[1:]])
    return out


def test_compiled_hot_path_is_built_where_required():
    """CI sets LRDEBUG_REQUIRE_COMPILED=1: there, a failed build must not pass silently as the fallback."""
    if os.environ.get("LRDEBUG_REQUIRE_COMPILED") != "1":
        pytest.skip("LRDEBUG_REQUIRE_COMPILED is not set")
    assert hotpath.IMPLEMENTATION == "compiled", hotpath.DESCRIPTION


def _differences(both, index: int) -> str | None:
    """How the two traces of script ``index`` differ (None: the same rows apart from times, same findings)."""
    (c_dir, c_live), (p_dir, p_live) = both["compiled"], both["python"]
    if c_live[index] != p_live[index]:
        return f"live findings {c_live[index]} != {p_live[index]}"
    if not (p_dir / f"{index:02d}").exists():
        return "only the compiled run wrote a trace" if (c_dir / f"{index:02d}").exists() else None
    c, p = lrdebug.load(c_dir / f"{index:02d}"), lrdebug.load(p_dir / f"{index:02d}")
    times = [col for col in p.columns if col.endswith("_ns")]
    c, p = c.drop(columns=times).astype(str), p.drop(columns=times).astype(str)
    if list(c.columns) != list(p.columns) or len(c) != len(p):
        return f"columns or row counts differ: {len(c)} rows != {len(p)}"
    rows = c.values.tolist(), p.values.tolist()
    for k, (a, b) in enumerate(zip(*rows)):
        if a != b:
            return f"row {k}: {a} != {b}"
    offline = [[(f.code, f.file, f.line, f.step, f.count) for f in lrdebug.findings(d / f"{index:02d}")]
               for d in (c_dir, p_dir)]
    return None if offline[0] == offline[1] else f"stored findings {offline[0]} != {offline[1]}"


def test_same_rows_and_findings_under_both(both):
    """One test over every script (the runs are shared: one pair of child processes for all)."""
    (_, compiled), (_, python) = both["compiled"], both["python"]
    assert len(compiled) == len(python) == len(SCRIPTS)
    assert sum(bool(live) for live in compiled) >= 20  # the gallery's findings were raised
    differences = {str(p.relative_to(ROOT)): _differences(both, k) for k, p in enumerate(SCRIPTS)}
    assert {name: d for name, d in differences.items() if d} == {}


def _counting_python_callbacks(monkeypatch) -> dict[str, int]:
    """Count the calls that reach the Python implementation of each hot callback."""
    from lrdebug.record.recorder import Recorder

    calls = dict.fromkeys(hotpath.CALLBACKS, 0)

    def counting(name, original):
        def callback(self, *args):
            calls[name] += 1
            return original(self, *args)

        return callback

    for name in hotpath.CALLBACKS:
        monkeypatch.setattr(Recorder, name, counting(name, getattr(Recorder, name)))
    return calls


def _loop(tmp_path, lr, steps=40):
    import torch

    model = torch.nn.Linear(3, 1)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5)
    with lrdebug.trace(out=tmp_path / "t", summary=False):
        for _ in range(steps):
            opt.zero_grad()
            model(torch.ones(2, 3)).sum().backward()
            opt.step()
            sched.step()
    return lrdebug.load(tmp_path / "t")


def test_compiled_callbacks_record_the_common_steps(tmp_path, monkeypatch):
    if hotpath.IMPLEMENTATION != "compiled":
        pytest.skip(hotpath.DESCRIPTION)
    calls = _counting_python_callbacks(monkeypatch)
    df = _loop(tmp_path, lr=0.1)
    steps = df[df.event == "optimizer_step"]
    assert len(steps) == 40 and steps.lr.tolist()[9:11] == [0.1, 0.05]
    assert (df.event == "scheduler_step").sum() == 40 and (df.event == "zero_grad").sum() == 40
    # Only the first zero_grad (which registers the optimizer) and the first scheduler step (which
    # looks its optimizer up) reach Python.
    assert calls == {"optimizer_pre": 0, "optimizer_post": 0, "scheduler_step": 1, "zero_grad": 1}


def test_compiled_path_reads_every_per_event_attribute_at_its_slot():
    """Each attribute the compiled callbacks touch per event is a slot of its class (a field that lost
    its slot would silently cost a dictionary lookup per event again)."""
    if hotpath.IMPLEMENTATION != "compiled":
        pytest.skip(hotpath.DESCRIPTION)
    import lrdebug.record.recorder  # noqa: F401 - binds the extension
    from lrdebug.record import _hot

    assert _hot.slow_fields() == []


def test_optimizers_at_a_reused_address_are_told_apart(tmp_path):
    """Optimizers made and dropped one after another often get the address of the one before (the
    compiled path keeps the last state it found per registry, checked by its weak reference): each is
    recorded as its own optimizer with its own LR."""
    import gc

    import torch

    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(40)]
    for p in params:
        p.grad = torch.ones(1)
    addresses = []
    with lrdebug.trace(out=tmp_path / "t", summary=False, ignore=["grads-not-cleared"]):
        opt = None
        for i, p in enumerate(params):
            opt = None
            gc.collect()
            opt = torch.optim.SGD([p], lr=0.01 * (i + 1))
            addresses.append(id(opt))
            opt.step()
            opt.step()
    if len(set(addresses)) == len(addresses):
        pytest.skip("no address was reused in this run")
    steps = lrdebug.load(tmp_path / "t", columns=["event", "optimizer", "lr"])
    steps = steps[steps.event == "optimizer_step"]
    by_opt = steps.groupby("optimizer")["lr"].agg(list)
    assert len(by_opt) == 40
    assert [lrs for lrs in by_opt] == [[0.01 * (i + 1)] * 2 for i in range(40)]


def test_zero_grad_wrapper_keeps_the_calls_meaning(tmp_path):
    """Under either hot path: zero_grad's signature and docstring are the original's, set_to_none=False is
    recorded as in place, and an exception from zero_grad reaches the caller and records nothing."""
    import inspect

    import torch

    class Failing(torch.optim.SGD):
        def zero_grad(self, set_to_none: bool = True) -> None:
            raise RuntimeError("zero_grad failed")

    model = torch.nn.Linear(2, 1)
    opt, bad = torch.optim.SGD(model.parameters(), lr=0.1), Failing(model.parameters(), lr=0.1)
    with lrdebug.trace(out=tmp_path / "t", summary=False):
        assert "set_to_none" in inspect.signature(opt.zero_grad).parameters
        assert opt.zero_grad.__doc__ == torch.optim.Optimizer.zero_grad.__doc__
        opt.zero_grad()
        opt.zero_grad(set_to_none=False)
        model.zero_grad()
        with pytest.raises(RuntimeError, match="zero_grad failed"):
            bad.zero_grad()
    zg = lrdebug.load(tmp_path / "t").query("event == 'zero_grad'")
    assert zg.origin.tolist() == ["optimizer", "optimizer", "module"]
    assert zg.value.fillna(0).tolist() == [0.0, 1.0, 0.0]


def test_unusual_steps_are_handed_to_the_python_implementation(tmp_path, monkeypatch):
    if hotpath.IMPLEMENTATION != "compiled":
        pytest.skip(hotpath.DESCRIPTION)
    import torch

    calls = _counting_python_callbacks(monkeypatch)
    df = _loop(tmp_path, lr=torch.tensor(0.1))  # a tensor LR: converted by the Python implementation
    assert calls["optimizer_pre"] == 40 and calls["scheduler_step"] >= 40
    steps = df[df.event == "optimizer_step"]
    assert len(steps) == 40 and steps.lr.tolist()[9:11] == [pytest.approx(0.1), pytest.approx(0.05)]


def test_version_and_metadata_name_the_hot_path(tmp_path):
    from conftest import run_lrdebug

    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent("""
        import torch
        p = torch.nn.Parameter(torch.zeros(1)); p.grad = torch.ones(1)
        opt = torch.optim.SGD([p], lr=0.1)
        for _ in range(3):
            opt.step()
    """))
    for env, expected in (({}, hotpath.IMPLEMENTATION), ({"LRDEBUG_PURE_PYTHON": "1"}, "python")):
        env = {"LRDEBUG_PURE_PYTHON": "", **env}
        version = run_lrdebug("--version", env=env)
        assert version.returncode == 0 and f"(hot path: {expected}" in version.stdout
        out = tmp_path / f"trace-{expected}"
        run = run_lrdebug("run", "--out", str(out), str(script), env=env)
        assert run.returncode == 0, run.stderr
        from lrdebug.tracefile import read_trace

        assert read_trace(out).meta[0]["hot_path"] == expected
