"""Event and finding types, the Arrow schema of a trace, and the format version.

This module is shared by the recorder (inside training) and the readers (report, checks), so it
imports neither torch nor rich.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import pyarrow as pa

# Major.minor. Readers refuse a newer major; a newer minor only adds columns or metadata keys.
SCHEMA_VERSION = "1.0"
SCHEMA_MAJOR = 1
METADATA_KEY = b"lrdebug"
STATUS_FILE = "_lrdebug_status.json"

# Event names (the `event` column).
OPTIMIZER_STEP = "optimizer_step"
OPTIMIZER_STEP_SKIPPED = "optimizer_step_skipped"
SCHEDULER_STEP = "scheduler_step"
SCHEDULER_INIT = "scheduler_init"
ZERO_GRAD = "zero_grad"
EPOCH_START = "epoch_start"
ADD_PARAM_GROUP = "add_param_group"
OPTIMIZER_LOAD_STATE = "optimizer_load_state"
SCHEDULER_LOAD_STATE = "scheduler_load_state"
GET_LR_CALL = "get_lr_call"

EVENTS = (
    OPTIMIZER_STEP,
    OPTIMIZER_STEP_SKIPPED,
    SCHEDULER_STEP,
    SCHEDULER_INIT,
    ZERO_GRAD,
    EPOCH_START,
    ADD_PARAM_GROUP,
    OPTIMIZER_LOAD_STATE,
    SCHEDULER_LOAD_STATE,
    GET_LR_CALL,
)

# `origin` values: who made a scheduler step / zero_grad.
ORIGIN_USER = "user"  # the user's code (or a framework) called scheduler.step()
ORIGIN_INIT = "init"  # the scheduler's constructor stepped it once
ORIGIN_CHILD = "child"  # SequentialLR / ChainedScheduler stepped it
ORIGIN_OPTIMIZER = "optimizer"  # optimizer.zero_grad()
ORIGIN_MODULE = "module"  # nn.Module.zero_grad()

# `grad` column for optimizer steps, per group.
GRAD_NONE = 0  # no parameter of the group had a gradient
GRAD_FRESH = 1  # gradients present, in tensors new since the previous step
GRAD_SAME = 2  # gradients present in the very tensor of the previous step (not cleared, or zeroed in place)

_dict_str = pa.dictionary(pa.int32(), pa.string())

# Column order and types of every part file. `lr` is float64 whatever the user passed (int, float,
# tensor). Nullable everywhere a column does not apply to an event.
SCHEMA = pa.schema(
    [
        ("rank", pa.int32()),
        ("seq", pa.int64()),
        ("t_ns", pa.int64()),
        ("event", _dict_str),
        ("optimizer", pa.int32()),
        ("scheduler", pa.int32()),
        ("group", pa.int32()),
        ("step", pa.int64()),
        ("lr", pa.float64()),
        ("dur_ns", pa.int64()),
        ("file", _dict_str),
        ("line", pa.int32()),
        ("func", _dict_str),
        ("origin", _dict_str),
        ("parent", pa.int32()),
        ("value", pa.float64()),
        ("grad", pa.int8()),
        ("loader", pa.int32()),
        ("iter_ns", pa.int64()),
        ("data_wait_ns", pa.int64()),
        ("cuda_ns", pa.int64()),
        ("grad_norm", pa.float64()),
        ("param_norm", pa.float64()),
        ("update_norm", pa.float64()),
        ("update_ratio", pa.float64()),
        ("eff_lr", pa.float64()),
        ("thread", pa.int64()),
        # The installed package's frame ("lightning/pytorch/core/optimizer.py:153") that made the call
        # when file/line name the user's frame that led there (trainer.fit(...)); null otherwise.
        ("framework_site", _dict_str),
    ]
)
COLUMNS = tuple(SCHEMA.names)


class Event(NamedTuple):
    """One logical event as the rule engine sees it, live or rebuilt from a trace.

    Per-group values (`lrs`, `grads`) are tuples indexed by param group; an optimizer step is one
    Event here and one row per group in the trace.
    """

    event: str
    seq: int
    optimizer: int | None = None
    scheduler: int | None = None
    step: int | None = None
    lrs: tuple = ()
    grads: tuple = ()
    file: str | None = None
    line: int | None = None
    origin: str | None = None
    parent: int | None = None
    value: float | None = None
    loader: int | None = None
    rank: int = 0
    t_ns: int = 0


SEVERITIES = ("error", "warning", "info")
SEVERITY_RANK = {"error": 3, "warning": 2, "info": 1, "never": 99}

# The finding codes of the design contract and their severities.
CODES = {
    "scheduler-before-optimizer": "warning",
    "scheduler-multiple-steps": "warning",
    "scheduler-never-stepped": "warning",
    "epoch-scheduler-stepped-per-batch": "warning",
    "scheduler-past-horizon": "warning",
    "lr-conflict": "warning",
    "scheduler-orphaned": "error",
    "step-without-gradients": "warning",
    "grads-not-cleared": "warning",
    "scheduler-state-not-restored": "warning",
    "param-group-added-after-scheduler": "warning",
    "lr-nonfinite-or-negative": "error",
    "multiple-schedulers": "warning",
    "get-lr-called": "warning",
    "lr-changed-outside-scheduler": "info",
    "step-skipped": "info",
    "rank-divergence": "error",
}


@dataclasses.dataclass
class Finding:
    """A misuse found in the event stream, with the first place and step it happened."""

    code: str
    severity: str
    message: str
    optimizer: int | None = None
    scheduler: int | None = None
    group: int | None = None
    step: int | None = None
    file: str | None = None
    line: int | None = None
    count: int = 1
    framework: str | None = None  # the framework frame that made the call at file:line (Lightning, HF, ...)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Finding:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


from .errors import LRDebugError, LRDebugWarning  # noqa: E402,F401 - defined where pyarrow is not needed
