"""lrdebug: record what your optimizers and LR schedulers really did, and find their misuse.

``trace`` and ``effective_lr`` need torch; ``load``, ``findings`` and ``Report`` only read traces,
so they import lazily and work where torch is not installed.
"""

from __future__ import annotations

__version__ = "0.1.0"

# Only the warning classes load eagerly: `python -W error::lrdebug.LRDebugWarning` imports this
# package before pyarrow can be imported.
from .errors import LRDebugError, LRDebugWarning, reapply_warning_options  # noqa: E402

reapply_warning_options()

__all__ = ["trace", "effective_lr", "load", "findings", "Report", "Finding", "LRDebugError",
           "LRDebugWarning", "TraceError", "__version__"]


def __getattr__(name: str):
    if name in ("trace", "effective_lr"):
        from . import recorder

        return getattr(recorder, name)
    if name == "Report":
        from .report import Report

        return Report
    if name == "Finding":
        from .events import Finding

        return Finding
    if name in ("load", "TraceError"):
        from . import storage

        return getattr(storage, name)
    if name == "findings":
        from .checks import findings

        return findings
    raise AttributeError(f"module 'lrdebug' has no attribute {name!r}")
