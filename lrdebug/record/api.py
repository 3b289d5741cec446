"""``lrdebug.trace``: the context manager and decorator users wrap their training in."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Iterable

from ..errors import LRDebugError
from ..rules import Finding
from ..tracefile.schema import TraceError
from ..tracefile.writer import FLUSH_ROWS, FLUSH_SECONDS
from .objects import _weak, effective_lr  # noqa: F401 - lrdebug.effective_lr
from .recorder import Recorder


class trace:  # noqa: N801 - used like a function: `with lrdebug.trace(...)` / `@lrdebug.trace()`
    """Record what the optimizers and schedulers do inside a block (or a decorated function).

    ``trace(opt, sched, ...)`` records just those objects; ``trace()`` records every optimizer and
    scheduler used in the block, including ones created inside it. Leaving the block flushes and
    closes the trace and removes every hook and patch; exceptions propagate unchanged.
    """

    def __init__(self, *objects: Any, out: str | os.PathLike | None = None, strict: bool = False,
                 ignore: Iterable[str] = (), sample_updates: int = 0, cuda_timing: bool = False,
                 flush_rows: int = FLUSH_ROWS, flush_seconds: float = FLUSH_SECONDS, summary: bool = True) -> None:
        if isinstance(ignore, str):
            ignore = [c.strip() for c in ignore.split(",") if c.strip()]
        self._kwargs = dict(out=out, strict=strict, ignore=tuple(ignore), sample_updates=sample_updates,
                            cuda_timing=cuda_timing, flush_rows=flush_rows, flush_seconds=flush_seconds,
                            summary=summary)
        self._objects = tuple(_weak(o) for o in objects)  # the handle must not keep them alive
        self.recorder: Recorder | None = None

    def _live_objects(self) -> tuple:
        objects = tuple(ref() for ref in self._objects)
        if any(o is None for o in objects):
            raise LRDebugError("an optimizer or scheduler passed to lrdebug.trace() no longer exists")
        return objects

    def __enter__(self) -> trace:
        if self.recorder is not None and not self.recorder.closed:
            raise LRDebugError("this lrdebug.trace block is already active")
        try:
            self.recorder = Recorder(self._live_objects(), **self._kwargs).start()
        except TraceError as e:
            raise LRDebugError(str(e)) from None
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        rec = self.recorder
        if rec is not None:
            rec.close(exc)
        return None

    def __call__(self, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with trace(*self._live_objects(), **self._kwargs) as t:
                wrapper.last_trace = t
                return fn(*args, **kwargs)

        return wrapper

    # live access
    @property
    def path(self) -> Path | None:
        return self.recorder.path if self.recorder else None

    @property
    def findings(self) -> list[Finding]:
        return self.recorder.findings if self.recorder else []

    def effective_lr(self, optimizer=None) -> list[float]:
        return self.recorder.effective_lr(optimizer) if self.recorder else []

    def dataframe(self):
        return self.recorder.dataframe() if self.recorder else None
