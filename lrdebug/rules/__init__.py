"""The misuse rules: the engine (``engine``), one module per family of rules, each rule registered by
its finding code (``registry``), and the offline pass over a stored trace (``offline``).

Families: ``ordering`` (call order and counts), ``schedule`` (the schedule's size and values, other
writers of the LR), ``gradients`` (gradients at each step), ``resume`` (checkpoints), ``ranks`` (ranks
of one job against each other). Imports neither torch nor rich.
"""

from . import ordering, resume, gradients, schedule  # noqa: F401,I001 - registration order is listener order
from .engine import Checker
from .finding import SEVERITIES, SEVERITY_RANK, Finding
from .offline import attach_frameworks, check_trace, events_from_table, findings
from .registry import CODES, RULES

__all__ = ["CODES", "RULES", "SEVERITIES", "SEVERITY_RANK", "Checker", "Finding", "attach_frameworks",
           "check_trace", "events_from_table", "findings"]
