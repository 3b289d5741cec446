"""pytest plugin: ``pytest --lrdebug`` traces every test and fails the ones whose training misuses an
optimizer or LR scheduler.

Each test is recorded from the start of its setup (so optimizers and schedulers built by fixtures are
seen) to the end of its call. A test that stepped no optimizer leaves no trace; the others leave one
under ``--lrdebug-dir`` (default ``lrdebug-traces/pytest-<time>/``), one folder per test. A test whose
trace has a finding at or above ``--lrdebug-fail-on`` (default ``warning``) fails with the findings
in its report; ``@pytest.mark.lrdebug(fail_on="error", ignore=["code", ...])`` sets the threshold and
the codes to ignore for one test.

Without ``--lrdebug`` the plugin only registers its options and marker: torch is not imported.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

THRESHOLDS = ("error", "warning", "info", "never")
_RANK = {"error": 3, "warning": 2, "info": 1, "never": 99}
_recorder_key = pytest.StashKey[Any]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("lrdebug", "lrdebug: record optimizers and LR schedulers, fail on their misuse")
    group.addoption("--lrdebug", action="store_true", default=False,
                    help="trace each test's optimizers and schedulers; fail a test with a finding at or above "
                         "--lrdebug-fail-on")
    group.addoption("--lrdebug-dir", default=None, metavar="DIR",
                    help="folder for the traces, one sub-folder per test that trains "
                         "(default: lrdebug-traces/pytest-<time>)")
    group.addoption("--lrdebug-fail-on", choices=THRESHOLDS, default="warning",
                    help="lowest finding severity that fails a test (default: warning)")
    group.addoption("--lrdebug-ignore", default="", metavar="CODES",
                    help="comma-separated finding codes that never fail a test")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "lrdebug(fail_on=None, ignore=()): under --lrdebug, the lowest finding severity that fails this test "
        "(error, warning, info, never) and finding codes to ignore",
    )
    if not config.getoption("lrdebug"):
        return
    try:
        ignore = _codes(config.getoption("lrdebug_ignore"))
    except ValueError as e:
        raise pytest.UsageError(f"--lrdebug-ignore: {e}") from None
    try:
        import torch  # noqa: F401
    except ImportError:
        raise pytest.UsageError("--lrdebug needs torch, which is not installed") from None
    config.pluginmanager.register(_Tracing(config, _root(config), ignore), "lrdebug-tracing")


def _codes(value: Any) -> tuple[str, ...]:
    from .rules import CODES

    if isinstance(value, str):
        value = [c.strip() for c in value.split(",") if c.strip()]
    codes = tuple(str(c) for c in value or ())
    unknown = [c for c in codes if c not in CODES]
    if unknown:
        raise ValueError(f"unknown finding code(s): {', '.join(unknown)}")
    return codes


def _root(config: pytest.Config) -> Path:
    base = Path(config.invocation_params.dir)
    chosen = config.getoption("lrdebug_dir")
    if chosen:
        root = base / chosen
        if root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise pytest.UsageError(f"--lrdebug-dir {chosen}: already exists and is not empty; an existing trace "
                                    "is never overwritten: choose another folder")
        return root
    root = base / "lrdebug-traces" / time.strftime("pytest-%Y%m%d-%H%M%S")
    n = 1
    while root.exists():
        n += 1
        root = root.with_name(time.strftime("pytest-%Y%m%d-%H%M%S") + f"-{n}")
    return root


def _folder_name(nodeid: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.=\[\]-]+", "_", nodeid).strip("._") or "test"
    return name[:150]


class _Tracing:
    """The hooks active under ``--lrdebug``."""

    def __init__(self, config: pytest.Config, root: Path, ignore: tuple[str, ...]) -> None:
        self.root = root
        self.fail_on = config.getoption("lrdebug_fail_on")
        self.ignore = ignore
        self.kept: list[Path] = []
        self.failed: list[str] = []
        self._names: set[str] = set()

    def _settings(self, item: pytest.Item) -> tuple[str, tuple[str, ...]]:
        marker = item.get_closest_marker("lrdebug")
        fail_on, ignore = self.fail_on, self.ignore
        if marker is not None:
            fail_on = marker.kwargs.get("fail_on") or fail_on
            try:
                if marker.args or set(marker.kwargs) - {"fail_on", "ignore"}:
                    raise ValueError("use @pytest.mark.lrdebug(fail_on=..., ignore=[...])")
                if fail_on not in THRESHOLDS:
                    raise ValueError(f"fail_on must be one of {', '.join(THRESHOLDS)}, not {fail_on!r}")
                ignore = ignore + _codes(marker.kwargs.get("ignore", ()))
            except ValueError as e:
                pytest.fail(f"lrdebug marker: {e}", pytrace=False)
        return fail_on, ignore

    def _start(self, item: pytest.Item) -> None:
        from .record.child import start_recorder

        fail_on, ignore = self._settings(item)
        name = _folder_name(item.nodeid)
        unique, n = name, 1
        while unique in self._names or (self.root / unique).exists():
            n += 1
            unique = f"{name}-{n}"
        self._names.add(unique)
        rec = start_recorder(self.root / unique, ignore=ignore, summary=False)
        item.stash[_recorder_key] = (rec, fail_on, ignore)

    def _stop(self, item: pytest.Item, check: bool = False) -> None:
        entry = item.stash.get(_recorder_key, None)
        if entry is None:
            return
        del item.stash[_recorder_key]
        rec, fail_on, ignore = entry
        rec.close()
        path = Path(rec.path)
        stepped = any(o.get("steps", 0) or o.get("skipped", 0) for o in rec.metadata().get("optimizers", []))
        bad = [f for f in rec.findings
               if f.code not in ignore and _RANK.get(f.severity, 0) >= _RANK[fail_on]] if check else []
        if not stepped and not bad:
            shutil.rmtree(path, ignore_errors=True)
            return
        if path.exists():
            self.kept.append(path)
        if bad:
            self.failed.append(item.nodeid)
            lines = [f"lrdebug: {len(bad)} finding(s) at or above {fail_on!r} in this test's training "
                     f"(trace: {path}):"]
            for f in bad:
                where = f" at {f.file}:{f.line}" if f.file else ""
                lines.append(f"  {f.severity} [{f.code}]{where}: {f.message}")
            lines.append("Fix the loop, or allow it: @pytest.mark.lrdebug(ignore=[...]) / "
                         "@pytest.mark.lrdebug(fail_on='error').")
            pytest.fail("\n".join(lines), pytrace=False)

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item):
        self._start(item)
        try:
            return (yield)
        except BaseException:
            self._stop(item)
            raise

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_call(self, item: pytest.Item):
        try:
            result = yield
        except BaseException:
            self._stop(item)
            raise
        self._stop(item, check=True)
        return result

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> None:
        self._stop(item)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.root.is_dir() and not any(self.root.iterdir()):
            self.root.rmdir()
        if not self.kept:
            terminalreporter.write_line("lrdebug: no test stepped an optimizer; no trace written")
            return
        verdict = f"; {len(self.failed)} failed on findings" if self.failed else ""
        terminalreporter.write_line(f"lrdebug: {len(self.kept)} test trace(s) under {self.root}{verdict}")
