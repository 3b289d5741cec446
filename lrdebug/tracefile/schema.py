"""The trace format: the Arrow schema of the parts, the event names, the directory layout.

A trace is a directory partitioned by rank::

    <trace>/rank=<r>/part-000000.parquet     complete Parquet files, written atomically (tmp + rename)
    <trace>/rank=<r>/_lrdebug_status.json    run metadata, state (running/closed), completeness, findings
    <trace>/_lrdebug_run.json                 the run id that owns the directory (ranks of one run share it)

The rank is the Hive partition key: the files do not repeat it as a column (pandas and Spark refuse a
column that is also a partition key); readers take it from ``rank=<r>``. Every part also carries the
run metadata as JSON in its schema metadata, so the parts alone describe the run when a process was
killed before writing its status.

Shared by the recorder (inside training), the rules and the report: imports neither torch nor rich.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
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


# ------------------------------------------------------------------------------ directory layout
# ASCII digits, and ranks that fit an int32: a trace is untrusted input.
# part-000007.parquet, or part-000000-000063.parquet: parts 0..63 merged into one file
PART_RE = re.compile(r"^part-([0-9]{1,18})(?:-([0-9]{1,18}))?\.parquet$")
RANK_RE = re.compile(r"^rank=([0-9]{1,9})$")
STATUS_MAX_BYTES = 64 << 20
RUN_FILE = "_lrdebug_run.json"
RUN_TMP_RE = re.compile(r"^\._lrdebug_run\.json\.[0-9a-f]+\.tmp$")


class TraceError(Exception):
    """Unusable trace input; the CLI prints it as one line and exits 2."""


def write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, default=str))
    os.replace(tmp, path)


def read_status(rank_dir: Path) -> dict[str, Any] | None:
    """The status JSON of one rank, or None when missing or unreadable (not a regular file, too big,
    not JSON, nested too deep)."""
    path = rank_dir / STATUS_FILE
    try:
        if not path.is_file():  # a FIFO would block, /dev/zero would never end
            return None
        with open(path, "rb") as f:
            raw = f.read(STATUS_MAX_BYTES + 1)
        if len(raw) > STATUS_MAX_BYTES:
            return None
        data = json.loads(raw)
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None




def check_version(version: Any, where: Path) -> None:
    """Refuse a newer major version (TraceError); an unreadable one is damage (ValueError)."""
    text = str(version)[:20]
    try:
        major = int(text.split(".")[0])
    except ValueError:
        raise ValueError(f"unreadable schema version {text!r}") from None
    if major > SCHEMA_MAJOR:
        raise TraceError(
            f"{where}: trace schema version {text} is newer than this lrdebug reads "
            f"({SCHEMA_VERSION}); upgrade lrdebug"
        )

