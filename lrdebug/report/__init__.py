"""Reading a trace back for people: the report model (``model.Report``, built from one streaming
``scan`` of the parts), ``diff`` of two traces, and one renderer per output format (``renderers``).

Never imports torch: a trace is read where PyTorch is not installed.
"""

from .diff import diff_traces
from .model import DEFAULT_DIR, Report, newest_trace

__all__ = ["DEFAULT_DIR", "Report", "diff_traces", "newest_trace"]
