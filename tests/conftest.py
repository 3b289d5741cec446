"""Shared fixtures: torch must be pristine (no lrdebug hook or patch) around every test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def _declare_torchvision_ops() -> None:
    """tests/compat imports the frameworks in this process: where torchvision is a CUDA build beside a
    CPU torch, its ops must be declared before they import it (tests/compat/scripts/cpu_torchvision.py)."""
    import importlib.util

    if importlib.util.find_spec("torchvision") is None or importlib.util.find_spec("torch") is None:
        return
    path = Path(__file__).parent / "compat" / "scripts" / "cpu_torchvision.py"
    spec = importlib.util.spec_from_file_location("cpu_torchvision", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["cpu_torchvision"] = module
    spec.loader.exec_module(module)


_declare_torchvision_ops()


@pytest.fixture(autouse=True)
def torch_is_pristine():
    try:
        import torch  # noqa: F401
    except ImportError:  # the reader-only tests run where torch may be blocked
        yield
        return
    from lrdebug.record import patching

    assert patching.is_pristine(), "an lrdebug hook or patch was left installed before this test"
    yield
    assert patching.is_pristine(), "this test left an lrdebug hook or patch installed"


def run_lrdebug(*args: str, cwd: Path | str | None = None, env: dict | None = None, timeout: float = 120,
                module: bool = False) -> subprocess.CompletedProcess:
    """Run the CLI in a subprocess, as the console script or as `python -m lrdebug`."""
    full_env = dict(os.environ)
    full_env.pop("LRDEBUG_RUN_ID", None)
    full_env.pop("LRDEBUG_TRACE_DIR", None)
    full_env["PYTHONUNBUFFERED"] = "1"
    if env:
        full_env.update(env)
    if module:
        cmd = [sys.executable, "-m", "lrdebug", *args]
    else:
        cmd = [str(Path(sys.executable).with_name("lrdebug")), *args]
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def run_python(*args: str, cwd: Path | str | None = None, env: dict | None = None,
               timeout: float = 120) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env.pop("LRDEBUG_RUN_ID", None)
    full_env["PYTHONUNBUFFERED"] = "1"
    if env:
        full_env.update(env)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)


def make_big_trace(out: Path, *flags: str) -> Path:
    """A synthetic trace written by scripts/make_big_trace.py (one job): ``out``."""
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_big_trace.py"), "--jobs", "1", *flags, str(out)],
                   check=True, capture_output=True)
    return out
