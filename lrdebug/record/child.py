"""Recording the processes that ``lrdebug run`` starts: subprocesses, multiprocessing, torchrun workers.

Lightning's DDP launcher re-runs ``python script.py ...`` for the other ranks, torchrun starts its
workers, ``multiprocessing`` spawns fresh interpreters: a recorder living in the first process sees
none of them. As coverage.py and ddtrace-run do, ``lrdebug run`` hands its children a start-up hook
through the environment: a temporary folder holding a ``sitecustomize.py`` goes first on
``PYTHONPATH`` and ``LRDEBUG_CHILD`` carries the run's options (JSON). In a child, that file does
nothing until the process imports torch (a process that never does pays for nothing), then starts a
recorder for the rest of the process's life; the sitecustomize it hides is run as before. A Python
without lrdebug, or a child that cannot record for any reason, runs as it would have, silently.

Where a child writes, decided when it writes its first part:

- a distributed child (torch.distributed initialised, or ``RANK``/``LOCAL_RANK`` set) writes
  ``<trace>/rank=<r>/``: the ranks of a Lightning DDP run or of torchrun meet in one trace;
- any other child is a run of its own: ``<trace>/child-<pid>/rank=0/``, a complete trace in a
  sub-folder (readable alone with ``lrdebug report``), so it neither collides with the parent's
  ``rank=0`` nor takes part in the cross-rank comparison of the parent's trace.

A process that records no event (a launcher, a DataLoader worker, ``python -c 'print(1)'``) leaves
no partition; the ``lrdebug run`` process itself keeps its empty one only when no child wrote
anything, so a torchrun agent does not take ``rank=0`` from worker 0.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

ENV = "LRDEBUG_CHILD"
CHILD_PREFIX = "child-"

_suppressed = False  # this process records through its own `lrdebug run` / trace()
_config: dict[str, Any] | None = None  # the options children of this process record with
_current: Any = None  # the recorder this module started in this process
_fork_hooks = False

_SITECUSTOMIZE = '''\
"""Written by `lrdebug run` for the Python processes it starts, so that they are recorded too.

Nothing happens unless LRDEBUG_CHILD is set and this Python can import lrdebug: then recording
starts once the process imports torch (see lrdebug/record/child.py). The sitecustomize that this file hides
on sys.path is run afterwards, as it would have been.
"""

import os as _os
import sys as _sys


def _lrdebug_watch_torch():
    import importlib.util
    import types

    if not _os.environ.get("LRDEBUG_CHILD") or "_lrdebug_child_hook" in _sys.modules:
        return
    if importlib.util.find_spec("lrdebug") is None:
        return
    _sys.modules["_lrdebug_child_hook"] = types.ModuleType("_lrdebug_child_hook")

    def start():
        try:
            from lrdebug.record.child import start_from_env

            start_from_env()
        except Exception:
            pass

    if "torch" in _sys.modules:
        start()
        return

    class Loader:
        def __init__(self, loader):
            self.loader = loader

        def __getattr__(self, name):
            return getattr(self.loader, name)

        def create_module(self, spec):
            return self.loader.create_module(spec)

        def exec_module(self, module):
            try:
                self.loader.exec_module(module)
            finally:
                module.__loader__ = self.loader
                if getattr(module, "__spec__", None) is not None:
                    module.__spec__.loader = self.loader
            start()

    class Finder:
        def find_spec(self, name, path=None, target=None):
            if name != "torch":
                return None
            if self in _sys.meta_path:
                _sys.meta_path.remove(self)
            for finder in _sys.meta_path:
                find = getattr(finder, "find_spec", None)
                spec = find(name, path, target) if find is not None else None
                if spec is not None:
                    if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                        spec.loader = Loader(spec.loader)
                    return spec
            return None

    _sys.meta_path.insert(0, Finder())


def _lrdebug_chain():
    import importlib.machinery
    import importlib.util

    here = _os.path.dirname(_os.path.abspath(__file__))
    path = [p for p in _sys.path if _os.path.abspath(p or _os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    _sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)


try:
    _lrdebug_watch_torch()
except Exception:
    pass
_lrdebug_chain()
'''


def suppress() -> None:
    """This process records by itself (a nested ``lrdebug run``): the inherited hook stays idle."""
    global _suppressed
    _suppressed = True


def _read_config() -> dict[str, Any] | None:
    try:
        cfg = json.loads(os.environ.get(ENV, ""))
    except ValueError:
        return None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("out"), str) or not isinstance(cfg.get("run_id"), str):
        return None
    return cfg


def _distributed(rec: Any) -> bool:
    """True when this process is one rank of a distributed run, as far as it can tell on its own."""
    if getattr(rec, "_dist", None) is not None:
        return True
    from .environment import _dist_rank_world

    if _dist_rank_world() is not None:
        return True
    return any(os.environ.get(v, "").strip().isdigit() for v in ("RANK", "LOCAL_RANK"))


def _lazy_writer_class():
    from ..tracefile.writer import PartWriter

    class LazyWriter(PartWriter):
        """Writes nothing until there is a row; then picks the shared trace or the child's own."""

        def __init__(self, *args: Any, shared_root: Path | None = None, recorder: Any = None, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.keep_empty = False
            self.shared_root = shared_root
            self.recorder = recorder

        def _ensure_rank_dir(self) -> Path:
            if self.rank_dir is None and self.shared_root is not None and _distributed(self.recorder):
                self.root = self.shared_root
                if self.recorder is not None:
                    self.recorder.path = self.root
            return super()._ensure_rank_dir()

    return LazyWriter


def start_recorder(out: str | os.PathLike, shared_root: str | os.PathLike | None = None,
                   run_id: str | None = None, **options: Any) -> Any:
    """A started recorder that leaves no partition unless it records something.

    With ``shared_root``, a distributed process moves from ``out`` to ``shared_root`` when it writes.
    """
    from .recorder import Recorder

    rec = Recorder(out=out, **options)
    if run_id:
        rec.run_id = run_id
    rec.writer_class = functools.partial(_lazy_writer_class(), recorder=rec,
                                         shared_root=Path(shared_root) if shared_root is not None else None)
    return rec.start()


def _options(cfg: dict[str, Any]) -> dict[str, Any]:
    return {
        "strict": bool(cfg.get("strict", False)),
        "ignore": tuple(str(c) for c in cfg.get("ignore") or ()),
        "sample_updates": int(cfg.get("sample_updates") or 0),
        "cuda_timing": bool(cfg.get("cuda_timing", False)),
        "summary": False,
    }


def _start(cfg: dict[str, Any]) -> None:
    global _current
    out = Path(cfg["out"])
    _current = start_recorder(out / f"{CHILD_PREFIX}{os.getpid()}", shared_root=out, run_id=cfg["run_id"],
                              **_options(cfg))


def start_from_env() -> None:
    """Called by the start-up hook once a child imports torch: record until the process ends."""
    global _config
    if _suppressed or _current is not None:
        return
    cfg = _read_config()
    if cfg is None:
        return
    _config = cfg
    _install_fork_hooks()
    _start(cfg)


def _close_current() -> None:
    rec = _current
    if rec is not None and not rec.closed and rec._pid == os.getpid():
        rec.close()


_held: list[Any] = []  # writer locks held across a fork
_fork_unsafe = False  # a writer could not be stopped before the fork: the child does not record
_FORK_WAIT_S = 10.0


def _before_fork() -> None:
    """Let no writer thread be inside pyarrow at the fork: a lock it held (pyarrow's pandas shim
    takes one on first use) would stay locked forever in the child, which writes with pyarrow too."""
    global _fork_unsafe
    _fork_unsafe = False
    if _config is None:
        return
    from . import sink

    for rec in sink._SINK.active:
        lock = getattr(getattr(rec, "writer", None), "_lock", None)
        if lock is not None:
            if lock.acquire(timeout=_FORK_WAIT_S):
                _held.append(lock)
            else:
                _fork_unsafe = True


def _after_fork_in_parent() -> None:
    while _held:
        _held.pop().release()


def _after_fork_in_child() -> None:
    """A forked child (Hogwild workers, forkserver children, DataLoader workers) records afresh:
    the recorder it inherited is switched off by the sink module's own fork handler."""
    global _current
    _after_fork_in_parent()  # the inherited writers are dead here: free their locks all the same
    if _config is None or _fork_unsafe:
        return
    _current = None
    try:
        import threading

        from . import sink

        sink._SINK.lock = threading.Lock()  # another thread may have held it at the fork
        _start(_config)
    except Exception:  # noqa: BLE001 - a child that cannot record runs as it would have
        _current = None


class _Token:
    """multiprocessing keeps after-fork callbacks by weak reference to an object: this one."""


_TOKEN = _Token()


def _register_mp_exit() -> None:
    # Processes started by multiprocessing with fork or forkserver end with os._exit(), which skips
    # atexit; they run multiprocessing's own exit finalizers first, so the trace is closed there.
    import multiprocessing.util as mp_util

    mp_util.Finalize(None, _close_current, exitpriority=0)


def _install_fork_hooks() -> None:
    global _fork_hooks
    if _fork_hooks:
        return
    from . import sink  # noqa: F401 - its fork handler must run before ours

    if hasattr(os, "register_at_fork"):
        os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                            after_in_child=_after_fork_in_child)
    import multiprocessing.util as mp_util

    mp_util.register_after_fork(_TOKEN, lambda _token: _register_mp_exit())
    _fork_hooks = True


class Launch:
    """What ``lrdebug run`` sets up, as a ``with`` block inside the trace's, so that every Python
    process the target starts is recorded into the same trace."""

    def __init__(self, trace: Any, **options: Any) -> None:
        self.trace = trace
        self.options = options
        self.rec: Any = None
        self.out: Path | None = None
        self.hook_dir: str | None = None
        self._saved: dict[str, str | None] = {}

    def __enter__(self) -> Launch:
        global _config
        self.rec = self.trace.recorder
        self.out = Path(self.rec.path).resolve()
        config = {"out": str(self.out), "run_id": self.rec.run_id, **self.options}
        self.hook_dir = tempfile.mkdtemp(prefix="lrdebug-child-")
        Path(self.hook_dir, "sitecustomize.py").write_text(_SITECUSTOMIZE)
        for name in (ENV, "PYTHONPATH"):
            self._saved[name] = os.environ.get(name)
        old = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = self.hook_dir + (os.pathsep + old if old else "")
        os.environ[ENV] = json.dumps(config)
        _config = config
        _install_fork_hooks()
        return self

    def __exit__(self, *exc: Any) -> None:
        """The target is done: stop handing the hook out; the trace keeps an empty partition for
        this process only if no child wrote one."""
        global _config
        _config = None
        for name, value in self._saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if self.hook_dir is not None:
            shutil.rmtree(self.hook_dir, ignore_errors=True)
            self.hook_dir = None
        writer = getattr(self.rec, "writer", None)
        if writer is not None and self.children():
            writer.keep_empty = False

    def children(self) -> list[str]:
        """Partitions and child traces written by the other processes of this run."""
        if self.out is None:
            return []
        own = getattr(getattr(self.rec, "writer", None), "rank_dir", None)
        try:
            entries = sorted(self.out.iterdir())
        except OSError:
            return []
        found = []
        for entry in entries:
            if not entry.is_dir() or (own is not None and entry.resolve() == Path(own).resolve()):
                continue
            if entry.name.startswith("rank=") or entry.name.startswith(CHILD_PREFIX):
                found.append(entry.name)
        return found
