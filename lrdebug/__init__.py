"""lrdebug: record what your optimizers and LR schedulers really did, and find their misuse.

``trace`` and ``effective_lr`` need torch; ``load``, ``findings`` and ``Report`` only read traces,
so they import lazily and work where torch is not installed.
"""

from __future__ import annotations

from ._version import __version__  # noqa: E402,F401

# Only the warning classes load eagerly: `python -W error::lrdebug.LRDebugWarning` imports this
# package before pyarrow can be imported.
from .errors import LRDebugError, LRDebugWarning, reapply_warning_options  # noqa: E402

reapply_warning_options()

__all__ = ["trace", "effective_lr", "load", "findings", "Report", "Finding", "LRDebugError",
           "LRDebugWarning", "TraceError", "__version__"]


def __getattr__(name: str):
    if name in ("trace", "effective_lr"):
        from . import record

        return getattr(record, name)
    if name == "Report":
        from .report import Report

        return Report
    if name in ("Finding", "findings"):
        from . import rules

        return getattr(rules, name)
    if name in ("load", "TraceError"):
        from . import tracefile

        return getattr(tracefile, name)
    raise AttributeError(f"module 'lrdebug' has no attribute {name!r}")
