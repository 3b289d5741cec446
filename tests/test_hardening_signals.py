"""SIGTERM and SIGINT during training: the trace is saved, then the process ends as it would have."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch
from conftest import run_lrdebug, run_python

import lrdebug

# Trains until stopped. MODE=trace wraps the loop in lrdebug.trace(); plain runs it as it is (also
# what `lrdebug run` runs). KILL_AT=n sends SIG to itself after step n; without it, the parent sends it.
SCRIPT = textwrap.dedent('''
    import os, signal, sys, time
    import torch

    sig = getattr(signal, os.environ["SIG"])
    kill_at = int(os.environ.get("KILL_AT", "0"))
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)

    def train():
        for step in range(1, 10**6):
            opt.zero_grad()
            model(torch.ones(2, 4)).sum().backward()
            opt.step()
            sched.step()
            print(f"step {step}", flush=True)
            if step == kill_at:
                os.kill(os.getpid(), sig)
            if not kill_at:
                time.sleep(0.002)

    if os.environ.get("MODE") == "trace":
        import lrdebug
        with lrdebug.trace(out=sys.argv[1]):
            train()
    else:
        train()
''')


@pytest.fixture(scope="module")
def script(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("signals") / "train_signal.py"
    path.write_text(SCRIPT)
    return path


def _status(trace: Path) -> dict:
    return json.loads((trace / "rank=0" / "_lrdebug_status.json").read_text())


def _steps(trace: Path) -> list[int]:
    df = lrdebug.load(trace)
    return df[df.event == "optimizer_step"]["step"].tolist()


def _last_printed_step(stdout: str) -> int:
    return max(int(line.split()[1]) for line in stdout.splitlines() if line.startswith("step "))


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_signal_under_trace_saves_and_dies_by_the_same_signal(script, tmp_path, name):
    out = tmp_path / "trace"
    proc = run_python(str(script), str(out), env={"MODE": "trace", "SIG": name, "KILL_AT": "37"})
    sig = getattr(signal, name)
    assert proc.returncode == -sig, proc.stderr
    status = _status(out)
    assert status["state"] == "closed" and status["complete"] is False
    expected = "terminated by SIGTERM" if name == "SIGTERM" else "interrupted by KeyboardInterrupt"
    assert status["reason"] == expected
    assert _steps(out) == list(range(1, 38))
    assert status["rows"] == len(lrdebug.load(out))
    if name == "SIGINT":  # Python's own ending: the KeyboardInterrupt traceback
        assert proc.stderr.splitlines().count("KeyboardInterrupt") == 1


def test_lrdebug_run_sigterm_from_outside(script, tmp_path):
    """What torchrun, SLURM and Kubernetes do: SIGTERM from another process mid-training."""
    out = tmp_path / "trace"
    env = dict(os.environ, SIG="SIGTERM", PYTHONUNBUFFERED="1")
    env.pop("LRDEBUG_RUN_ID", None)
    cmd = [str(Path(sys.executable).with_name("lrdebug")), "run", "--out", str(out), str(script)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("step 20"):
            proc.send_signal(signal.SIGTERM)
            break
    rest, stderr = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGTERM, stderr
    status = _status(out)
    assert (status["state"], status["complete"], status["reason"]) == ("closed", False, "terminated by SIGTERM")
    steps = _steps(out)
    assert steps == list(range(1, len(steps) + 1))
    assert len(steps) >= _last_printed_step("".join(lines) + rest) >= 20
    assert "incomplete: terminated by SIGTERM" in stderr and "Traceback" not in stderr


def test_lrdebug_run_sigint_ends_like_python(script, tmp_path):
    out = tmp_path / "trace"
    env = {"SIG": "SIGINT", "KILL_AT": "12"}
    plain = run_python(str(script), cwd=tmp_path, env=env)
    traced = run_lrdebug("run", "--out", str(out), str(script), cwd=tmp_path, env=env)
    assert plain.returncode == traced.returncode == -signal.SIGINT
    assert traced.stdout == plain.stdout
    assert traced.stderr.strip().endswith("KeyboardInterrupt")
    assert _steps(out) == list(range(1, 13))
    assert _status(out)["reason"] == "interrupted by KeyboardInterrupt"


# ----------------------------------------------------------------------------------- in-process


def _train(opt, model, steps):
    for _ in range(steps):
        opt.zero_grad()
        model(torch.ones(2, 3)).sum().backward()
        opt.step()


def test_handlers_installed_for_the_block_and_restored(tmp_path):
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    assert before[signal.SIGINT] is signal.default_int_handler
    with lrdebug.trace(out=tmp_path / "t", summary=False):
        assert signal.getsignal(signal.SIGTERM) is not before[signal.SIGTERM]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # KeyboardInterrupt as usual
    assert {s: signal.getsignal(s) for s in before} == before


def test_user_handler_gets_the_signal_after_the_rows_are_on_disk(tmp_path):
    """A user's handler may end the process in ways no `with` sees (os._exit): the rows are saved first."""
    seen = []

    def handler(signum, frame):
        seen.append(len(_steps(tmp_path / "t")))

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        model = torch.nn.Linear(3, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with lrdebug.trace(out=tmp_path / "t", summary=False, flush_seconds=3600):
            _train(opt, model, 11)
            os.kill(os.getpid(), signal.SIGTERM)
            _train(opt, model, 2)
        assert seen == [11]
        assert signal.getsignal(signal.SIGTERM) is handler
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert _steps(tmp_path / "t") == list(range(1, 14))
    assert _status(tmp_path / "t")["complete"] is True


def test_handler_installed_during_the_block_runs_and_is_kept(tmp_path):
    seen = []

    def mine(signum, frame):
        seen.append(signum)

    previous = signal.getsignal(signal.SIGTERM)
    try:
        with lrdebug.trace(out=tmp_path / "t", summary=False):
            signal.signal(signal.SIGTERM, mine)
            os.kill(os.getpid(), signal.SIGTERM)
        assert seen == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert _status(tmp_path / "t")["complete"] is True


def test_trace_in_another_thread_leaves_handlers_alone(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    seen, errors = [], []

    def work():
        try:
            model = torch.nn.Linear(3, 1)
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            with lrdebug.trace(out=tmp_path / "t", summary=False):
                _train(opt, model, 4)
                seen.append(signal.getsignal(signal.SIGTERM))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    assert errors == [] and seen == [before]
    assert signal.getsignal(signal.SIGTERM) is before
    assert _steps(tmp_path / "t") == [1, 2, 3, 4]
