"""The trace on disk: its schema and layout (``schema``), turning buffered rows into Arrow columns
(``columns``), writing parts (``writer``) and reading them back (``reader``).

Imports neither torch nor rich: a trace is read where torch is not installed.
"""

from .reader import Trace, load, read_trace
from .schema import TraceError

__all__ = ["Trace", "TraceError", "load", "read_trace"]
